//! Edits on a Pod, recorded as the JSON Patch that makes them.
//!
//! The pod is read once into a borrowed [`view`] of the fields the managers consult; every edit
//! appends to that view (so later edits see earlier ones) and writes its `add` operation straight
//! into the patch text. The pod itself is never copied or printed again, and fields the view does
//! not know, including ones newer than any Kubernetes binding, stay as the API server sent them.
//!
//! Every edit only adds: arrays grow at the end and existing entries win, so an edit applied twice
//! changes nothing the second time (the API server may reinvoke the webhook).

pub mod objects;
pub mod patch;
pub mod view;

use serde::Serialize;

use self::objects::{EnvVar, KeyToPath, VolumeMount};
use self::patch::{Patch, token};
use self::view::{Container, Env, Mount, PodView, SecretSource, Spec, Str};

/// Name prefixes of the init containers the cloud managers add to pull secrets. They are ours,
/// not the task's: no other secret is injected into them.
pub const PULLER_PREFIXES: [&str; 3] =
    ["aws-pull-secret-", "gcp-pull-secret-", "azure-pull-secret-"];

/// A container of the pod: `spec.<field>[<index>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    init: bool,
    index: usize,
}

impl Slot {
    fn field(self) -> &'static str {
        if self.init {
            "initContainers"
        } else {
            "containers"
        }
    }
}

/// `/spec/<field>/<index>`: the JSON Pointer of a container, printed without allocating.
impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/spec/{}/{}", self.field(), self.index)
    }
}

/// `{}`, for parents the pod lacks.
#[derive(Serialize)]
struct EmptyObject {}

/// A pod being edited, with the patch of every edit so far.
pub struct Pod<'a> {
    view: PodView<'a>,
    /// Whether `spec` exists in the pod as patched so far.
    has_spec: bool,
    spec: Spec<'a>,
    patch: Patch,
}

impl<'a> Pod<'a> {
    pub fn new(mut view: PodView<'a>) -> Self {
        let spec = view.spec.take();
        Self {
            has_spec: spec.is_some(),
            spec: spec.unwrap_or_default(),
            view,
            patch: Patch::default(),
        }
    }

    /// The value of pod label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.view.labels.as_ref()?.get(name).map(Str::as_str)
    }

    /// How many patch operations the edits so far took.
    pub fn edits(&self) -> usize {
        self.patch.len()
    }

    /// The patch from the original pod to the edited one, as JSON text.
    pub fn into_patch(self) -> String {
        self.patch.finish()
    }

    /// Records `add` of an empty list at `parent/field` unless `list` exists, and returns it.
    fn list<'l, T>(
        patch: &mut Patch,
        list: &'l mut Option<Vec<T>>,
        parent: &dyn std::fmt::Display,
        field: &str,
    ) -> &'l mut Vec<T> {
        list.get_or_insert_with(|| {
            patch.add(format_args!("{parent}/{field}"), &[(); 0]);
            Vec::new()
        })
    }

    /// Appends `value` to `list`, the array at `parent/field`, recording the add; `seen` is how
    /// later edits see it.
    fn push<T>(
        patch: &mut Patch,
        list: &mut Vec<T>,
        (parent, field): (&dyn std::fmt::Display, &str),
        value: &impl Serialize,
        seen: T,
    ) {
        patch.add(format_args!("{parent}/{field}/{}", list.len()), value);
        list.push(seen);
    }

    fn spec_mut(&mut self) -> (&mut Spec<'a>, &mut Patch) {
        if !self.has_spec {
            self.patch.add(format_args!("/spec"), &EmptyObject {});
            self.has_spec = true;
        }
        (&mut self.spec, &mut self.patch)
    }

    fn entries(&self, init: bool) -> &[Container<'a>] {
        let list = if init {
            &self.spec.init_containers
        } else {
            &self.spec.containers
        };
        list.as_deref().unwrap_or_default()
    }

    /// Every init container (native sidecars included) and container of the task; secret pullers
    /// are left out.
    pub fn containers(&self) -> Vec<Slot> {
        [true, false]
            .into_iter()
            .flat_map(|init| {
                let entries = self.entries(init).iter().enumerate();
                entries
                    .filter(|(_, c)| {
                        !c.name()
                            .is_some_and(|name| PULLER_PREFIXES.iter().any(|p| name.starts_with(p)))
                    })
                    .map(move |(index, _)| Slot { init, index })
            })
            .collect()
    }

    fn container_mut(&mut self, slot: Slot) -> (&mut Container<'a>, &mut Patch) {
        let list = if slot.init {
            &mut self.spec.init_containers
        } else {
            &mut self.spec.containers
        };
        // Slots come from `containers()`, and containers are never removed.
        let container = &mut list.as_mut().expect("slot of an existing list")[slot.index];
        (container, &mut self.patch)
    }

    /// Appends each env var whose name the container does not have yet. The pod's own value wins,
    /// as in Flyte 1.
    pub fn append_env(&mut self, slot: Slot, vars: &[EnvVar<'_>]) {
        let (container, patch) = self.container_mut(slot);
        let existing = container.env.as_deref().unwrap_or_default();
        let mut fresh: Vec<&EnvVar<'_>> = Vec::with_capacity(vars.len());
        for var in vars {
            let named = |name: Option<&str>| name == Some(var.name.as_ref());
            // A name given twice in `vars` is added once: the first wins.
            if !existing.iter().any(|e| named(e.name()))
                && !fresh.iter().any(|f| f.name == var.name)
            {
                fresh.push(var);
            }
        }
        if fresh.is_empty() {
            return;
        }
        let env = Self::list(patch, &mut container.env, &slot, "env");
        for var in fresh {
            Self::push(patch, env, (&slot, "env"), var, seen_env(var));
        }
    }

    /// Puts each of `vars` first in the container's env, in turn (so the last ends up first),
    /// removing a variable of the same name: Flyte 2's `AppendEnvVars`, where the webhook's value
    /// wins and a variable already there moves to the front again. A container that has every
    /// one of `vars` exactly is left as it is, so a second pass changes nothing.
    pub fn prepend_env(&mut self, slot: Slot, vars: &[EnvVar<'_>]) {
        if self.has_env(slot, vars) {
            return;
        }
        for var in vars {
            let (container, patch) = self.container_mut(slot);
            let existing = container.env.as_deref().unwrap_or_default();
            if existing
                .first()
                .is_some_and(|first| is_same_env(first, var))
            {
                continue;
            }
            let clash = existing
                .iter()
                .position(|e| e.name() == Some(var.name.as_ref()));
            let env = Self::list(patch, &mut container.env, &slot, "env");
            if let Some(index) = clash {
                patch.remove(format_args!("{slot}/env/{index}"));
                env.remove(index);
            }
            patch.add(format_args!("{slot}/env/0"), var);
            env.insert(0, seen_env(var));
        }
    }

    /// Whether the container has each of `vars` exactly.
    pub fn has_env(&self, slot: Slot, vars: &[EnvVar<'_>]) -> bool {
        let container = &self.entries(slot.init)[slot.index];
        let existing = container.env.as_deref().unwrap_or_default();
        vars.iter()
            .all(|var| existing.iter().any(|e| is_same_env(e, var)))
    }

    /// The name of the container in `slot`.
    pub fn container_name(&self, slot: Slot) -> Option<&str> {
        self.entries(slot.init)[slot.index].name()
    }

    /// Sets plain env var `name` of init container `index` to `value`, adding it at the end of
    /// its env if it has none.
    pub fn set_init_env(&mut self, index: usize, name: &str, value: &str) {
        let slot = Slot { init: true, index };
        let (container, patch) = self.container_mut(slot);
        let env = Self::list(patch, &mut container.env, &slot, "env");
        match env.iter().position(|e| e.name() == Some(name)) {
            Some(at) => {
                patch.replace(format_args!("{slot}/env/{at}/value"), &value);
                env[at].value = Some(Str::from(value));
            }
            None => {
                let var = EnvVar::plain(name, value);
                Self::push(patch, env, (&slot, "env"), &var, seen_env(&var));
            }
        }
    }

    /// Lists image pull Secret `name` in `spec.imagePullSecrets` unless it is there. The list is
    /// then sorted by name, as Flyte 2 sorts it (stable: the pod's own order among equal names).
    pub fn add_image_pull_secret(&mut self, name: &str) {
        let name_of = |r: &view::LocalRef<'_>| {
            r.name
                .as_ref()
                .map(Str::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let listed = self.spec.image_pull_secrets.iter().flatten();
        if listed.map(name_of).any(|listed| listed == name) {
            return;
        }
        let (spec, patch) = self.spec_mut();
        let seen = view::LocalRef {
            name: Some(Str::from(name)),
        };
        let Some(list) = &mut spec.image_pull_secrets else {
            patch.add(
                format_args!("/spec/imagePullSecrets"),
                &[objects::LocalRef { name }],
            );
            spec.image_pull_secrets = Some(vec![seen]);
            return;
        };
        list.push(seen);
        list.sort_by_key(name_of);
        let names: Vec<String> = list.iter().map(name_of).collect();
        let refs: Vec<objects::LocalRef<'_>> = names
            .iter()
            .map(|name| objects::LocalRef { name })
            .collect();
        patch.replace(format_args!("/spec/imagePullSecrets"), &refs);
    }

    /// The plain value of env var `name` of init container `index`.
    pub fn init_env(&self, index: usize, name: &str) -> Option<&str> {
        let container = self.entries(true).get(index)?;
        let env = container
            .env
            .as_deref()?
            .iter()
            .find(|e| e.name() == Some(name))?;
        env.value.as_ref().map(Str::as_str)
    }

    /// The index of the init container called `name`.
    pub fn init_container_index(&self, name: &str) -> Option<usize> {
        self.entries(true)
            .iter()
            .position(|c| c.name() == Some(name))
    }

    /// The Secrets projected volume `name` holds, if it is a projected volume.
    pub fn projected_secrets(&self, name: &str) -> Option<(usize, Vec<String>)> {
        let (index, _) = self.volume_named(name)?;
        let volume = &self.spec.volumes.as_deref()?[index];
        let sources = volume
            .projected
            .as_ref()?
            .sources
            .as_deref()
            .unwrap_or_default();
        let names = sources
            .iter()
            .filter_map(|source| source.secret.as_ref()?.name.as_ref())
            .map(|name| name.as_str().to_owned())
            .collect();
        Some((index, names))
    }

    /// Appends `projection` to the sources of projected volume `index`.
    pub fn add_projection(&mut self, index: usize, projection: &objects::Projection<'_>) {
        let Some(volume) = self.spec.volumes.as_mut().and_then(|v| v.get_mut(index)) else {
            return;
        };
        let Some(projected) = volume.projected.as_mut() else {
            return;
        };
        let parent = format_args!("/spec/volumes/{index}/projected").to_string();
        let sources = Self::list(&mut self.patch, &mut projected.sources, &parent, "sources");
        let seen = seen_projection(projection);
        Self::push(
            &mut self.patch,
            sources,
            (&parent, "sources"),
            projection,
            seen,
        );
    }

    /// Appends `mount` unless the container already mounts something at its path.
    pub fn append_mount(&mut self, slot: Slot, mount: &VolumeMount<'_>) {
        let (container, patch) = self.container_mut(slot);
        let path = mount.mount_path.as_ref();
        let taken = container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.as_ref().map(Str::as_str) == Some(path));
        if taken {
            return;
        }
        let mounts = Self::list(patch, &mut container.volume_mounts, &slot, "volumeMounts");
        let seen = seen_mount(mount);
        Self::push(patch, mounts, (&slot, "volumeMounts"), mount, seen);
    }

    /// The volume mounted at `path` in the first container that mounts anything there.
    pub fn volume_mounted_at(&self, path: &str) -> Option<String> {
        let mount = self.containers().into_iter().find_map(|slot| {
            let container = &self.entries(slot.init)[slot.index];
            container
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path.as_ref().map(Str::as_str) == Some(path))
        })?;
        mount.name.as_ref().map(|name| name.as_str().to_owned())
    }

    /// The index and the secret source of the volume called `name`, if the pod has one; the
    /// source is `None` for a volume of another kind.
    pub fn volume_named(&self, name: &str) -> Option<(usize, Option<&SecretSource<'a>>)> {
        let volumes = self.spec.volumes.as_deref()?;
        let (index, volume) = volumes
            .iter()
            .enumerate()
            .find(|(_, volume)| volume.name() == Some(name))?;
        Some((index, volume.secret.as_ref()))
    }

    /// Adds `volume` unless one of the same name exists.
    pub fn add_volume(&mut self, volume: &objects::Volume<'_>) {
        if self.volume_named(&volume.name).is_some() {
            return;
        }
        let (spec, patch) = self.spec_mut();
        let volumes = Self::list(patch, &mut spec.volumes, &"/spec", "volumes");
        let seen = view::Volume {
            name: Some(Str::from(volume.name.as_ref())),
            secret: volume.secret.as_ref().map(|secret| SecretSource {
                secret_name: Some(Str::from(secret.secret_name)),
                items: Some(secret.items.iter().map(seen_item).collect()),
            }),
            projected: volume.projected.as_ref().map(|projected| view::Projected {
                sources: Some(projected.sources.iter().map(seen_projection).collect()),
            }),
        };
        Self::push(patch, volumes, (&"/spec", "volumes"), volume, seen);
    }

    /// Adds `item` to the projection of secret volume `index` unless its key is there. A volume
    /// without `items` already projects every key.
    pub fn add_secret_item(&mut self, index: usize, item: &KeyToPath<'_>) {
        let Some(volume) = self.spec.volumes.as_mut().and_then(|v| v.get_mut(index)) else {
            return;
        };
        let Some(items) = volume.secret.as_mut().and_then(|s| s.items.as_mut()) else {
            return;
        };
        let key = Some(item.key);
        if !items.iter().any(|i| i.key.as_ref().map(Str::as_str) == key) {
            let volume = format_args!("/spec/volumes/{index}/secret");
            Self::push(
                &mut self.patch,
                items,
                (&volume, "items"),
                item,
                seen_item(item),
            );
        }
    }

    /// Sets a pod annotation unless the pod already has it: the pod's own value wins.
    pub fn add_annotation(&mut self, key: &str, value: &str) {
        if !self.view.has_metadata {
            self.patch.add(format_args!("/metadata"), &EmptyObject {});
            self.view.has_metadata = true;
        }
        let patch = &mut self.patch;
        let annotations = self.view.annotations.get_or_insert_with(|| {
            patch.add(format_args!("/metadata/annotations"), &EmptyObject {});
            Default::default()
        });
        if !annotations.contains_key(key) {
            patch.add(format_args!("/metadata/annotations/{}", token(key)), &value);
            annotations.insert(Str::from(key), Str::from(value));
        }
    }

    /// Appends `container` to `spec.initContainers`, after the ones already there.
    pub fn append_init_container(&mut self, container: &objects::Container<'_>) {
        let (spec, patch) = self.spec_mut();
        let list = Self::list(patch, &mut spec.init_containers, &"/spec", "initContainers");
        let seen = Container {
            name: Some(Str::from(container.name.as_str())),
            env: Some(container.env.iter().map(seen_env).collect()),
            volume_mounts: Some(container.volume_mounts.iter().map(seen_mount).collect()),
            command: container
                .command
                .as_ref()
                .map(|command| command.iter().map(|c| Str::from(c.as_str())).collect()),
        };
        Self::push(patch, list, (&"/spec", "initContainers"), container, seen);
    }

    /// The init containers the pod has now.
    pub fn init_containers(&self) -> &[Container<'a>] {
        self.entries(true)
    }

    /// Whether any init container or container is called `name`.
    pub fn has_container_named(&self, name: &str) -> bool {
        [true, false]
            .into_iter()
            .any(|init| self.entries(init).iter().any(|c| c.name() == Some(name)))
    }
}

fn seen_env(var: &EnvVar<'_>) -> Env<'static> {
    Env {
        name: Some(Str::from(var.name.as_ref())),
        value: var.value.as_deref().map(Str::from),
        value_from: var.value_from.as_ref().map(|from| view::ValueFrom {
            secret_key_ref: Some(view::SecretKeyRef {
                name: Some(Str::from(from.secret_key_ref.name)),
            }),
        }),
    }
}

fn seen_projection(projection: &objects::Projection<'_>) -> view::Projection<'static> {
    view::Projection {
        secret: Some(view::SecretKeyRef {
            name: Some(Str::from(projection.secret.name)),
        }),
    }
}

fn seen_mount(mount: &VolumeMount<'_>) -> Mount<'static> {
    Mount {
        name: Some(Str::from(mount.name.as_ref())),
        mount_path: Some(Str::from(mount.mount_path.as_ref())),
    }
}

fn seen_item(item: &KeyToPath<'_>) -> view::KeyToPath<'static> {
    view::KeyToPath {
        key: Some(Str::from(item.key)),
    }
}

/// Whether an env var of the pod is exactly `var`: the same name, and the same plain value or
/// the same Secret.
pub fn is_same_env(existing: &Env<'_>, var: &EnvVar<'_>) -> bool {
    // An empty value and none are the same variable (the API server stores them alike).
    fn value(value: Option<&str>) -> &str {
        value.unwrap_or_default()
    }
    existing.name() == Some(var.name.as_ref())
        && value(existing.value.as_ref().map(Str::as_str)) == value(var.value.as_deref())
        && match &var.value_from {
            Some(from) => existing.secret_ref() == Some(from.secret_key_ref.name),
            None => existing.value_from.is_none(),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::objects::{SecretVolume, Volume};
    use serde_json::{Value, json};

    fn edit(original: &Value, edits: impl FnOnce(&mut Pod<'_>)) -> Value {
        let text = original.to_string();
        let mut pod = Pod::new(view::parse(&text).unwrap_or_else(|err| panic!("{err}")));
        edits(&mut pod);
        let patch: json_patch::Patch = serde_json::from_str(&pod.into_patch()).unwrap();
        let mut patched = original.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        patched
    }

    fn labelled(spec: Value) -> Value {
        json!({
            "metadata": {"labels": {"inject-flyte-secrets": "true"}, "annotations": {"flyte.secrets/s0": "x"}},
            "spec": spec,
        })
    }

    #[test]
    fn env_is_appended_once_and_the_pods_value_wins() {
        let original = labelled(
            json!({"containers": [{"name": "c", "env": [{"name": "A", "value": "mine"}]}, {"name": "d"}]}),
        );
        let vars = [EnvVar::plain("A", "webhook"), EnvVar::plain("B", "b")];
        let edited = edit(&original, |pod| {
            for slot in pod.containers() {
                pod.append_env(slot, &vars);
                pod.append_env(slot, &vars);
            }
        });
        assert_eq!(
            edited["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "mine"}, {"name": "B", "value": "b"}])
        );
        assert_eq!(
            edited["spec"]["containers"][1]["env"],
            json!([{"name": "A", "value": "webhook"}, {"name": "B", "value": "b"}])
        );
    }

    #[test]
    fn containers_cover_init_containers_and_skip_pullers() {
        let original = labelled(
            json!({"initContainers": [{"name": "i"}, {"name": "aws-pull-secret-1"}], "containers": [{"name": "c"}]}),
        );
        let text = original.to_string();
        let pod = Pod::new(view::parse(&text).unwrap());
        assert_eq!(pod.containers().len(), 2);
        assert!(pod.has_container_named("aws-pull-secret-1"));
    }

    #[test]
    fn mounts_are_keyed_by_path() {
        let original = labelled(json!({"containers": [{"name": "c"}]}));
        let mount = VolumeMount {
            mount_path: "/p".into(),
            name: "v".into(),
            read_only: Some(true),
        };
        let other = VolumeMount {
            mount_path: "/p".into(),
            name: "w".into(),
            read_only: None,
        };
        let edited = edit(&original, |pod| {
            let slot = pod.containers()[0];
            pod.append_mount(slot, &mount);
            pod.append_mount(slot, &other);
            assert_eq!(pod.volume_mounted_at("/p").as_deref(), Some("v"));
        });
        assert_eq!(
            edited["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "v", "mountPath": "/p", "readOnly": true}])
        );
    }

    #[test]
    fn annotations_keep_the_pods_value_and_keys_are_escaped() {
        let original = labelled(json!({}));
        let edited = edit(&original, |pod| {
            pod.add_annotation("flyte.secrets/s0", "webhook");
            pod.add_annotation("vault.hashicorp.com/role", "x");
            pod.add_annotation("odd~key", "y");
        });
        assert_eq!(
            edited["metadata"]["annotations"],
            json!({"flyte.secrets/s0": "x", "vault.hashicorp.com/role": "x", "odd~key": "y"})
        );
    }

    #[test]
    fn missing_parents_are_created_first() {
        let original =
            json!({"spec": {}, "metadata": {"labels": {"inject-flyte-secrets": "true"}}});
        let volume = Volume {
            empty_dir: Some(objects::EmptyDir { medium: "Memory" }),
            name: "v".into(),
            projected: None,
            secret: None,
        };
        let edited = edit(&original, |pod| {
            pod.add_annotation("k", "v");
            pod.add_volume(&volume);
            pod.add_volume(&volume);
        });
        assert_eq!(edited["metadata"]["annotations"], json!({"k": "v"}));
        assert_eq!(
            edited["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {"medium": "Memory"}}])
        );
        let edited = edit(&json!({}), |pod| pod.add_volume(&volume));
        assert_eq!(edited["spec"]["volumes"][0]["name"], "v");
    }

    #[test]
    fn secret_items_are_added_once() {
        let original = labelled(
            json!({"volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "a", "path": "a"}]}}]}),
        );
        let item = KeyToPath {
            key: "b",
            path: "b".into(),
        };
        let edited = edit(&original, |pod| {
            let (index, source) = pod.volume_named("v").unwrap();
            assert!(source.is_some());
            pod.add_secret_item(index, &item);
            pod.add_secret_item(index, &item);
        });
        assert_eq!(
            edited["spec"]["volumes"][0]["secret"]["items"],
            json!([{"key": "a", "path": "a"}, {"key": "b", "path": "b"}])
        );
        // A volume added in the same review takes items too.
        let edited = edit(&labelled(json!({})), |pod| {
            pod.add_volume(&Volume {
                empty_dir: None,
                name: "n".into(),
                projected: None,
                secret: Some(SecretVolume {
                    items: vec![item.clone()],
                    optional: true,
                    secret_name: "s",
                }),
            });
            let (index, _) = pod.volume_named("n").unwrap();
            pod.add_secret_item(
                index,
                &KeyToPath {
                    key: "c",
                    path: "c".into(),
                },
            );
        });
        assert_eq!(
            edited["spec"]["volumes"][0]["secret"]["items"],
            json!([{"key": "b", "path": "b"}, {"key": "c", "path": "c"}])
        );
    }
}
