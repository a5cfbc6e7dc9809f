//! Edits on a Pod held as JSON, recorded as the JSON Patch that makes them.
//!
//! Working on `serde_json::Value` instead of typed structs keeps every field the API server sent,
//! including ones newer than any Kubernetes binding we could compile in. Recording each edit as an
//! `add` while making it saves copying the pod and diffing the copy afterwards, which cost more
//! than the edits themselves.
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

/// Name prefixes of the init containers the cloud managers add to pull secrets. They are ours,
/// not the task's: no other secret is injected into them.
pub const PULLER_PREFIXES: [&str; 3] =
    ["aws-pull-secret-", "gcp-pull-secret-", "azure-pull-secret-"];

/// One `add` operation of the patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    /// An RFC 6901 JSON Pointer.
    pub path: String,
    pub value: Value,
}

/// A container of the pod: `spec.<field>[<index>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    field: &'static str,
    index: usize,
}

/// A pod being edited, with the patch of every edit so far.
pub struct Pod {
    root: Object,
    ops: Vec<Add>,
}

fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// Escapes one JSON Pointer reference token (RFC 6901).
fn token(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

impl Pod {
    pub fn new(root: Object) -> Self {
        Self {
            root,
            ops: Vec::new(),
        }
    }

    /// The pod as edited so far.
    pub fn object(&self) -> &Object {
        &self.root
    }

    /// How many patch operations the edits so far took.
    pub fn edits(&self) -> usize {
        self.ops.len()
    }

    /// The edited pod and the patch from the original to it.
    pub fn into_parts(self) -> (Object, Vec<Add>) {
        (self.root, self.ops)
    }

    /// The object at `parent.field`, created (and recorded) if absent.
    fn object_at<'a>(
        parent: &'a mut Object,
        ops: &mut Vec<Add>,
        base: &str,
        field: &str,
    ) -> Result<&'a mut Object, MalformedPod> {
        if !parent.contains_key(field) {
            ops.push(Add {
                path: format!("{base}/{}", token(field)),
                value: Value::Object(Map::new()),
            });
        }
        parent
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| MalformedPod(format!("{}{field} is not an object", dotted(base))))
    }

    /// The array at `parent.field`, created (and recorded) if absent.
    fn array_at<'a>(
        parent: &'a mut Object,
        ops: &mut Vec<Add>,
        base: &str,
        field: &str,
    ) -> Result<&'a mut Vec<Value>, MalformedPod> {
        if !parent.contains_key(field) || parent[field].is_null() {
            ops.push(Add {
                path: format!("{base}/{}", token(field)),
                value: Value::Array(Vec::new()),
            });
            parent.insert(field.to_owned(), Value::Array(Vec::new()));
        }
        parent
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .ok_or_else(|| MalformedPod(format!("{}{field} is not a list", dotted(base))))
    }

    /// Appends `value` to `list`, the array at JSON Pointer `path`, and records the add.
    fn push(list: &mut Vec<Value>, ops: &mut Vec<Add>, path: &str, value: Value) {
        ops.push(Add {
            path: format!("{path}/{}", list.len()),
            value: value.clone(),
        });
        list.push(value);
    }

    fn spec(&mut self) -> Result<(&mut Object, &mut Vec<Add>), MalformedPod> {
        let spec = Self::object_at(&mut self.root, &mut self.ops, "", "spec")?;
        Ok((spec, &mut self.ops))
    }

    /// Every init container (native sidecars included) and container of the task; secret pullers
    /// are left out.
    pub fn containers(&self) -> Result<Vec<Slot>, MalformedPod> {
        let Some(spec) = self.root.get("spec") else {
            return Ok(Vec::new());
        };
        let spec = spec
            .as_object()
            .ok_or_else(|| MalformedPod("spec is not an object".to_owned()))?;
        let mut slots = Vec::new();
        for field in ["initContainers", "containers"] {
            let list = match spec.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(list)) => list,
                Some(_) => return Err(MalformedPod(format!("spec.{field} is not a list"))),
            };
            for (index, container) in list.iter().enumerate() {
                let container = container.as_object().ok_or_else(|| {
                    MalformedPod(format!("spec.{field}[{index}] is not an object"))
                })?;
                let puller = container
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| PULLER_PREFIXES.iter().any(|p| name.starts_with(p)));
                if !puller {
                    slots.push(Slot { field, index });
                }
            }
        }
        Ok(slots)
    }

    /// The container in `slot`, and the pointer to it.
    fn container(
        &mut self,
        slot: Slot,
    ) -> Result<(&mut Object, &mut Vec<Add>, String), MalformedPod> {
        let (spec, ops) = self.spec()?;
        let container = spec
            .get_mut(slot.field)
            .and_then(Value::as_array_mut)
            .and_then(|list| list.get_mut(slot.index))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| MalformedPod(format!("spec.{}[{}] is gone", slot.field, slot.index)))?;
        Ok((
            container,
            ops,
            format!("/spec/{}/{}", slot.field, slot.index),
        ))
    }

    /// Appends each env var whose name the container does not have yet. The pod's own value wins,
    /// as in Flyte 1.
    pub fn append_env(&mut self, slot: Slot, vars: &[Value]) -> Result<(), MalformedPod> {
        let (container, ops, base) = self.container(slot)?;
        let existing = container.get("env").and_then(Value::as_array);
        let mut fresh: Vec<&Value> = Vec::with_capacity(vars.len());
        for var in vars {
            let present =
                existing.is_some_and(|env| env.iter().any(|e| name_of(e) == name_of(var)));
            // A name given twice in `vars` is added once: the first wins.
            if !present && !fresh.iter().any(|f| name_of(f) == name_of(var)) {
                fresh.push(var);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let env = Self::array_at(container, ops, &base, "env")?;
        let path = format!("{base}/env");
        for var in fresh {
            Self::push(env, ops, &path, var.clone());
        }
        Ok(())
    }

    /// Appends `mount` unless the container already mounts something at its path.
    pub fn append_mount(&mut self, slot: Slot, mount: &Value) -> Result<(), MalformedPod> {
        let (container, ops, base) = self.container(slot)?;
        let path = mount.get("mountPath");
        let taken = container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|mounts| mounts.iter().any(|m| m.get("mountPath") == path));
        if taken {
            return Ok(());
        }
        let mounts = Self::array_at(container, ops, &base, "volumeMounts")?;
        Self::push(mounts, ops, &format!("{base}/volumeMounts"), mount.clone());
        Ok(())
    }

    /// The volume mounted at `path` in the first container that mounts anything there.
    pub fn volume_mounted_at(&self, path: &str) -> Result<Option<String>, MalformedPod> {
        for slot in self.containers()? {
            let mounts = self.root["spec"][slot.field][slot.index]
                .get("volumeMounts")
                .and_then(Value::as_array);
            let found = mounts
                .into_iter()
                .flatten()
                .find(|mount| mount.get("mountPath").and_then(Value::as_str) == Some(path));
            if let Some(mount) = found {
                return Ok(name_of(mount).map(str::to_owned));
            }
        }
        Ok(None)
    }

    /// The index and the object of the volume called `name`, if the pod has one.
    pub fn volume_named(&self, name: &str) -> Option<(usize, &Object)> {
        let volumes = self.root.get("spec")?.get("volumes")?.as_array()?;
        volumes
            .iter()
            .enumerate()
            .find(|(_, volume)| name_of(volume) == Some(name))
            .and_then(|(index, volume)| Some((index, volume.as_object()?)))
    }

    /// Adds `volume` unless one of the same name exists.
    pub fn add_volume(&mut self, volume: Value) -> Result<(), MalformedPod> {
        if name_of(&volume).is_some_and(|name| self.volume_named(name).is_some()) {
            return Ok(());
        }
        let (spec, ops) = self.spec()?;
        let volumes = Self::array_at(spec, ops, "/spec", "volumes")?;
        Self::push(volumes, ops, "/spec/volumes", volume);
        Ok(())
    }

    /// Adds `item` to the projection of secret volume `index` unless its key is there. A volume
    /// without `items` already projects every key.
    pub fn add_secret_item(&mut self, index: usize, item: Value) -> Result<(), MalformedPod> {
        let (spec, ops) = self.spec()?;
        let Some(items) = spec
            .get_mut("volumes")
            .and_then(|volumes| volumes.get_mut(index))
            .and_then(|volume| volume.get_mut("secret"))
            .and_then(|secret| secret.get_mut("items"))
        else {
            return Ok(());
        };
        let items = items
            .as_array_mut()
            .ok_or_else(|| MalformedPod("a secret volume's items is not a list".to_owned()))?;
        if !items
            .iter()
            .any(|existing| existing.get("key") == item.get("key"))
        {
            Self::push(
                items,
                ops,
                &format!("/spec/volumes/{index}/secret/items"),
                item,
            );
        }
        Ok(())
    }

    /// Sets a pod annotation unless the pod already has it: the pod's own value wins.
    pub fn add_annotation(&mut self, key: &str, value: &str) -> Result<(), MalformedPod> {
        let metadata = Self::object_at(&mut self.root, &mut self.ops, "", "metadata")?;
        let annotations = Self::object_at(metadata, &mut self.ops, "/metadata", "annotations")?;
        if !annotations.contains_key(key) {
            self.ops.push(Add {
                path: format!("/metadata/annotations/{}", token(key)),
                value: Value::String(value.to_owned()),
            });
            annotations.insert(key.to_owned(), Value::String(value.to_owned()));
        }
        Ok(())
    }

    /// Appends `container` to `spec.initContainers`, after the ones already there.
    pub fn append_init_container(&mut self, container: Value) -> Result<(), MalformedPod> {
        let (spec, ops) = self.spec()?;
        let list = Self::array_at(spec, ops, "/spec", "initContainers")?;
        Self::push(list, ops, "/spec/initContainers", container);
        Ok(())
    }

    /// The init containers the pod has now.
    pub fn init_containers(&self) -> &[Value] {
        self.root
            .get("spec")
            .and_then(|spec| spec.get("initContainers"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

/// `/spec/containers/0` → `spec.containers.0.`, for messages.
fn dotted(pointer: &str) -> String {
    let mut out: String = pointer.trim_start_matches('/').replace('/', ".");
    if !out.is_empty() {
        out.push('.');
    }
    out
}

/// A read-only look at the pod for the checks made before anything is edited.
pub fn metadata_map<'a>(pod: &'a Object, field: &str) -> Option<&'a Object> {
    pod.get("metadata")?.get(field)?.as_object()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        Pod::new(value.as_object().cloned().unwrap())
    }

    /// The recorded patch must turn the original into the edited pod.
    fn check_patch(original: &Value, pod: Pod) -> Value {
        let (edited, ops) = pod.into_parts();
        let mut patched = original.clone();
        for op in ops {
            let patch: json_patch::Patch =
                serde_json::from_value(json!([{"op": "add", "path": op.path, "value": op.value}]))
                    .unwrap();
            json_patch::patch(&mut patched, &patch).unwrap();
        }
        assert_eq!(patched, Value::Object(edited.clone()));
        Value::Object(edited)
    }

    #[test]
    fn env_is_appended_once_and_the_pods_value_wins() {
        let original = json!({"spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "mine"}]}, {"name": "d"}]}});
        let mut edit = pod(original.clone());
        let vars = [
            json!({"name": "A", "value": "webhook"}),
            json!({"name": "B", "value": "b"}),
        ];
        for slot in edit.containers().unwrap() {
            edit.append_env(slot, &vars).unwrap();
            edit.append_env(slot, &vars).unwrap();
        }
        let edited = check_patch(&original, edit);
        assert_eq!(
            edited["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "mine"}, {"name": "B", "value": "b"}])
        );
        assert_eq!(edited["spec"]["containers"][1]["env"], json!(vars));
    }

    #[test]
    fn containers_cover_init_containers_skip_pullers_and_reject_bad_shapes() {
        let edit = pod(
            json!({"spec": {"initContainers": [{"name": "i"}, {"name": "aws-pull-secret-1"}], "containers": [{"name": "c"}]}}),
        );
        assert_eq!(edit.containers().unwrap().len(), 2);
        let edit = pod(json!({"spec": {"containers": {"name": "c"}}}));
        assert_eq!(
            edit.containers().unwrap_err().to_string(),
            "malformed pod: spec.containers is not a list"
        );
        assert!(
            pod(json!({"spec": {"containers": [3]}}))
                .containers()
                .is_err()
        );
        assert!(pod(json!({"spec": []})).containers().is_err());
        let mut edit = pod(json!({"spec": {"containers": [{"name": "c", "env": 3}]}}));
        let slot = edit.containers().unwrap()[0];
        assert!(edit.append_env(slot, &[json!({"name": "A"})]).is_err());
    }

    #[test]
    fn mounts_are_keyed_by_path() {
        let original = json!({"spec": {"containers": [{"name": "c"}]}});
        let mut edit = pod(original.clone());
        let slot = edit.containers().unwrap()[0];
        let mount = json!({"name": "v", "mountPath": "/p", "readOnly": true});
        edit.append_mount(slot, &mount).unwrap();
        edit.append_mount(slot, &json!({"name": "w", "mountPath": "/p"}))
            .unwrap();
        assert_eq!(edit.volume_mounted_at("/p").unwrap().as_deref(), Some("v"));
        assert_eq!(
            check_patch(&original, edit)["spec"]["containers"][0]["volumeMounts"],
            json!([mount])
        );
    }

    #[test]
    fn annotations_keep_the_pods_value_and_keys_are_escaped() {
        let original = json!({"metadata": {"annotations": {"a": "mine"}}});
        let mut edit = pod(original.clone());
        edit.add_annotation("a", "webhook").unwrap();
        edit.add_annotation("vault.hashicorp.com/role", "x")
            .unwrap();
        edit.add_annotation("odd~key", "y").unwrap();
        let edited = check_patch(&original, edit);
        assert_eq!(
            edited["metadata"]["annotations"],
            json!({"a": "mine", "vault.hashicorp.com/role": "x", "odd~key": "y"})
        );
        // Missing parents are created first.
        let original = json!({"spec": {}});
        let mut edit = pod(original.clone());
        edit.add_annotation("k", "v").unwrap();
        edit.add_volume(json!({"name": "v", "emptyDir": {}}))
            .unwrap();
        edit.add_volume(json!({"name": "v", "emptyDir": {}}))
            .unwrap();
        edit.append_init_container(json!({"name": "i"})).unwrap();
        let edited = check_patch(&original, edit);
        assert_eq!(
            edited["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}])
        );
    }

    #[test]
    fn secret_items_are_added_once() {
        let original = json!({"spec": {"volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "a", "path": "a"}]}}]}});
        let mut edit = pod(original.clone());
        let (index, _) = edit.volume_named("v").unwrap();
        edit.add_secret_item(index, json!({"key": "b", "path": "b"}))
            .unwrap();
        edit.add_secret_item(index, json!({"key": "b", "path": "b"}))
            .unwrap();
        let edited = check_patch(&original, edit);
        assert_eq!(
            edited["spec"]["volumes"][0]["secret"]["items"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
