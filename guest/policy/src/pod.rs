//! Edits on a Pod held as JSON. Working on `serde_json::Value` instead of typed structs keeps every
//! field the API server sent, including ones newer than any Kubernetes binding we could compile in.
//!
//! Every edit only adds: arrays grow at the end and existing entries win, so an edit applied twice
//! changes nothing the second time (the API server may reinvoke the webhook).

use serde_json::{Map, Value};

/// The pod does not have the shape of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedPod(pub String);

impl std::fmt::Display for MalformedPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed pod: {}", self.0)
    }
}

impl std::error::Error for MalformedPod {}

type Object = Map<String, Value>;

fn object_field<'a>(
    parent: &'a mut Object,
    field: &str,
    path: &str,
) -> Result<&'a mut Object, MalformedPod> {
    parent
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| MalformedPod(format!("{path} is not an object")))
}

fn array_field<'a>(
    parent: &'a mut Object,
    field: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, MalformedPod> {
    parent
        .entry(field)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| MalformedPod(format!("{path} is not a list")))
}

fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// A read-only look at the pod for the checks injectors make before they edit anything.
pub fn metadata_map<'a>(pod: &'a Object, field: &str) -> Option<&'a Object> {
    pod.get("metadata")?.get(field)?.as_object()
}

/// Name prefixes of the init containers the cloud managers add to pull secrets. They are ours,
/// not the task's: no other secret is injected into them.
pub const PULLER_PREFIXES: [&str; 3] =
    ["aws-pull-secret-", "gcp-pull-secret-", "azure-pull-secret-"];

fn is_puller(container: &Object) -> bool {
    container
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|name| {
            PULLER_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
}

/// Every init container (native sidecars included) and container of the task, as objects;
/// secret pullers are left out.
pub fn containers(pod: &mut Object) -> Result<Vec<&mut Object>, MalformedPod> {
    let spec = object_field(pod, "spec", "spec")?;
    let mut all = Vec::new();
    for (field, list) in spec.iter_mut() {
        if field != "initContainers" && field != "containers" {
            continue;
        }
        if list.is_null() {
            continue;
        }
        let Some(list) = list.as_array_mut() else {
            return Err(MalformedPod(format!("spec.{field} is not a list")));
        };
        for (index, container) in list.iter_mut().enumerate() {
            let container = container
                .as_object_mut()
                .ok_or_else(|| MalformedPod(format!("spec.{field}[{index}] is not an object")))?;
            if !is_puller(container) {
                all.push(container);
            }
        }
    }
    Ok(all)
}

/// Appends each env var whose name the container does not have yet. The pod's own value wins,
/// as in Flyte 1.
pub fn append_env(container: &mut Object, vars: &[Value]) -> Result<(), MalformedPod> {
    let env = array_field(container, "env", "a container's env")?;
    for var in vars {
        let name = name_of(var);
        if !env.iter().any(|existing| name_of(existing) == name) {
            env.push(var.clone());
        }
    }
    Ok(())
}

/// The volume mounted at `path` in the first container that mounts anything there.
pub fn volume_mounted_at(pod: &mut Object, path: &str) -> Result<Option<String>, MalformedPod> {
    for container in containers(pod)? {
        let Some(mounts) = container.get("volumeMounts").and_then(Value::as_array) else {
            continue;
        };
        let found = mounts
            .iter()
            .find(|mount| mount.get("mountPath").and_then(Value::as_str) == Some(path));
        if let Some(mount) = found {
            return Ok(name_of(mount).map(str::to_owned));
        }
    }
    Ok(None)
}

/// Appends `mount` unless the container already mounts something at its path.
pub fn append_mount(container: &mut Object, mount: &Value) -> Result<(), MalformedPod> {
    let path = mount.get("mountPath");
    let mounts = array_field(container, "volumeMounts", "a container's volumeMounts")?;
    if !mounts
        .iter()
        .any(|existing| existing.get("mountPath") == path)
    {
        mounts.push(mount.clone());
    }
    Ok(())
}

/// The pod's volumes.
pub fn volumes(pod: &mut Object) -> Result<&mut Vec<Value>, MalformedPod> {
    let spec = object_field(pod, "spec", "spec")?;
    array_field(spec, "volumes", "spec.volumes")
}

/// The volume called `name`, if the pod has one.
pub fn volume_named<'a>(
    pod: &'a mut Object,
    name: &str,
) -> Result<Option<&'a mut Object>, MalformedPod> {
    Ok(volumes(pod)?
        .iter_mut()
        .find(|volume| name_of(volume) == Some(name))
        .and_then(Value::as_object_mut))
}

/// Adds `volume` unless one of the same name exists.
pub fn add_volume(pod: &mut Object, volume: Value) -> Result<(), MalformedPod> {
    let volumes = volumes(pod)?;
    if !volumes
        .iter()
        .any(|existing| name_of(existing) == name_of(&volume))
    {
        volumes.push(volume);
    }
    Ok(())
}

/// Sets a pod annotation unless the pod already has it: the pod's own value wins.
pub fn add_annotation(pod: &mut Object, key: &str, value: &str) -> Result<(), MalformedPod> {
    let metadata = object_field(pod, "metadata", "metadata")?;
    let annotations = object_field(metadata, "annotations", "metadata.annotations")?;
    annotations
        .entry(key)
        .or_insert_with(|| Value::String(value.to_owned()));
    Ok(())
}

/// Appends `container` to `spec.initContainers`, after the ones already there.
pub fn append_init_container(pod: &mut Object, container: Value) -> Result<(), MalformedPod> {
    let spec = object_field(pod, "spec", "spec")?;
    array_field(spec, "initContainers", "spec.initContainers")?.push(container);
    Ok(())
}

/// How many init containers the pod has now.
pub fn init_container_count(pod: &Object) -> usize {
    pod.get("spec")
        .and_then(|spec| spec.get("initContainers"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// Whether the pod has an init container called `name`.
pub fn has_init_container(pod: &Object, name: &str) -> bool {
    pod.get("spec")
        .and_then(|spec| spec.get("initContainers"))
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|c| name_of(c) == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Object {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn env_is_appended_once_and_the_pods_value_wins() {
        let mut container = object(json!({"name": "c", "env": [{"name": "A", "value": "mine"}]}));
        let vars = [
            json!({"name": "A", "value": "webhook"}),
            json!({"name": "B", "value": "b"}),
        ];
        append_env(&mut container, &vars).unwrap();
        append_env(&mut container, &vars).unwrap();
        assert_eq!(
            container["env"],
            json!([{"name": "A", "value": "mine"}, {"name": "B", "value": "b"}])
        );
    }

    #[test]
    fn containers_cover_init_containers_and_reject_bad_shapes() {
        let mut pod = object(
            json!({"spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "c"}]}}),
        );
        assert_eq!(containers(&mut pod).unwrap().len(), 2);
        let mut pod = object(json!({"spec": {"containers": {"name": "c"}}}));
        assert_eq!(
            containers(&mut pod).unwrap_err().to_string(),
            "malformed pod: spec.containers is not a list"
        );
        let mut pod = object(json!({"spec": {"containers": [3]}}));
        assert!(containers(&mut pod).is_err());
        let mut pod = object(json!({"spec": []}));
        assert!(containers(&mut pod).is_err());
    }

    #[test]
    fn mounts_are_keyed_by_path() {
        let mut container = object(json!({"name": "c"}));
        let mount = json!({"name": "v", "mountPath": "/p", "readOnly": true});
        append_mount(&mut container, &mount).unwrap();
        append_mount(&mut container, &json!({"name": "w", "mountPath": "/p"})).unwrap();
        assert_eq!(container["volumeMounts"], json!([mount]));
    }

    #[test]
    fn annotations_keep_the_pods_value() {
        let mut pod = object(json!({"metadata": {"annotations": {"a": "mine"}}}));
        add_annotation(&mut pod, "a", "webhook").unwrap();
        add_annotation(&mut pod, "b", "webhook").unwrap();
        assert_eq!(
            pod["metadata"]["annotations"],
            json!({"a": "mine", "b": "webhook"})
        );
    }
}
