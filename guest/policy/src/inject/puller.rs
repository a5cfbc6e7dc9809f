//! The cloud managers (AWS, GCP, Azure): one init container per secret pulls it into a
//! memory-backed volume, which every other container mounts read-only at `/etc/flyte/secrets`.
//!
//! Pullers are numbered by the init containers before them (`aws-pull-secret-<N>`), as in Flyte;
//! a reinvocation finds a secret's puller by what it pulls, not by its number, and adds nothing.

use serde_json::{Value, json};

use super::{InjectError, MOUNT_ROOT, file_env, refuse};

/// The volumes pullers write into.
const PULLER_VOLUMES: [&str; 3] = ["aws-secret-vol", "gcp-secret-vol", "azure-secret-vol"];
use crate::pod::Pod;
use crate::secret::Secret;
use crate::settings::PullerSettings;

/// One manager's puller for one secret.
pub struct Puller<'a> {
    /// `aws-pull-secret`, …; the container is `<prefix>-<N>`.
    pub name_prefix: &'static str,
    /// `aws-secret-vol`, …
    pub volume: &'static str,
    /// Where the puller itself mounts the volume (read-write).
    pub mount_path: &'static str,
    pub settings: &'a PullerSettings,
    /// The puller's own env vars, before the ones every container gets.
    pub env: Vec<Value>,
    pub command: Option<Vec<String>>,
    /// The file the secret lands in, for the custom `env_var`.
    pub path: String,
}

impl Puller<'_> {
    /// Whether `container` is this puller from an earlier invocation.
    fn is_same(&self, container: &Value) -> bool {
        let named = container
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| name.starts_with(self.name_prefix));
        let env = container.get("env").and_then(Value::as_array);
        let has_env = self
            .env
            .iter()
            .all(|var| env.is_some_and(|env| env.contains(var)));
        let command = self.command.as_ref().map(|c| json!(c));
        named && has_env && container.get("command") == command.as_ref()
    }

    /// `<prefix>-<N>` with N the number of init containers before it, as in Flyte, or the next
    /// number whose name no container of the pod has yet.
    fn free_name(&self, pod: &Pod) -> String {
        let taken = |name: &str| {
            ["initContainers", "containers"].iter().any(|field| {
                pod.object()
                    .get("spec")
                    .and_then(|spec| spec.get(*field))
                    .and_then(Value::as_array)
                    .is_some_and(|list| {
                        list.iter()
                            .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
                    })
            })
        };
        (pod.init_containers().len()..)
            .map(|n| format!("{}-{n}", self.name_prefix))
            .find(|name| !taken(name))
            .unwrap_or_else(|| self.name_prefix.to_owned())
    }

    pub fn inject(mut self, pod: &mut Pod, secret: &Secret) -> Result<(), InjectError> {
        // Pullers of different managers share whichever puller volume is already at the mount
        // root: two volumes cannot both be mounted there.
        match pod.volume_mounted_at(MOUNT_ROOT)? {
            Some(name) if PULLER_VOLUMES.contains(&name.as_str()) => {
                self.volume = PULLER_VOLUMES
                    .into_iter()
                    .find(|v| *v == name)
                    .unwrap_or(self.volume);
            }
            Some(other) => {
                return refuse(format!("{MOUNT_ROOT} is already taken by volume {other:?}"));
            }
            None => {}
        }
        pod.add_volume(json!({"name": self.volume, "emptyDir": {"medium": "Memory"}}))?;
        let shared = file_env(secret, &self.path);
        let read_only = json!({"name": self.volume, "mountPath": MOUNT_ROOT, "readOnly": true});
        for slot in pod.containers()? {
            pod.append_mount(slot, &read_only)?;
            pod.append_env(slot, &shared)?;
        }
        let present = pod.init_containers().iter().any(|c| self.is_same(c));
        if present {
            return Ok(());
        }
        let name = self.free_name(pod);
        // The puller's own variables win over a custom env_var of the same name.
        let mut env = self.env;
        for var in shared {
            if !env.iter().any(|own| own.get("name") == var.get("name")) {
                env.push(var);
            }
        }
        let mut container = json!({
            "name": name,
            "image": self.settings.sidecar_image,
            "env": env,
            "resources": self.settings.resources,
            "volumeMounts": [{"name": self.volume, "mountPath": self.mount_path}],
        });
        if let Some(command) = self.command {
            container["command"] = json!(command);
        }
        pod.append_init_container(container)?;
        Ok(())
    }
}
