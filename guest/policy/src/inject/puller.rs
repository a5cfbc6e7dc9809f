//! The cloud managers (AWS, GCP, Azure): one init container per secret pulls it into a
//! memory-backed volume, which every other container mounts read-only at `/etc/flyte/secrets`.
//!
//! Pullers are numbered by the init containers before them (`aws-pull-secret-<N>`), as in Flyte;
//! a reinvocation finds a secret's puller by what it pulls, not by its number, and adds nothing.

use super::{MOUNT_ROOT, Refused, file_env, refuse};
use crate::pod::objects::{Container, EmptyDir, EnvVar, Volume, VolumeMount};
use crate::pod::{Pod, is_same_env, view};
use crate::secret::Secret;
use crate::settings::PullerSettings;

/// The volumes pullers write into.
const PULLER_VOLUMES: [&str; 3] = ["aws-secret-vol", "gcp-secret-vol", "azure-secret-vol"];

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
    pub env: Vec<EnvVar<'a>>,
    pub command: Option<Vec<String>>,
    /// The file the secret lands in, for the custom `env_var`.
    pub path: String,
}

impl Puller<'_> {
    /// Whether `container` is this puller from an earlier invocation.
    fn is_same(&self, container: &view::Container<'_>) -> bool {
        let named = container
            .name()
            .is_some_and(|name| name.starts_with(self.name_prefix));
        let env = container.env.as_deref().unwrap_or_default();
        let has_env = self
            .env
            .iter()
            .all(|var| env.iter().any(|existing| is_same_env(existing, var)));
        let command = container
            .command
            .as_ref()
            .map(|command| command.iter().map(view::Str::as_str));
        let same_command = match (command, &self.command) {
            (None, None) => true,
            (Some(theirs), Some(ours)) => theirs.eq(ours.iter().map(String::as_str)),
            _ => false,
        };
        named && has_env && same_command
    }

    /// `<prefix>-<N>` with N the number of init containers before it, as in Flyte, or the next
    /// number whose name no container of the pod has yet.
    fn free_name(&self, pod: &Pod<'_>) -> String {
        (pod.init_containers().len()..)
            .map(|n| format!("{}-{n}", self.name_prefix))
            .find(|name| !pod.has_container_named(name))
            .unwrap_or_else(|| self.name_prefix.to_owned())
    }

    pub fn inject(mut self, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
        // Pullers of different managers share whichever puller volume is already at the mount
        // root: two volumes cannot both be mounted there.
        match pod.volume_mounted_at(MOUNT_ROOT) {
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
        pod.add_volume(&Volume {
            empty_dir: Some(EmptyDir { medium: "Memory" }),
            name: self.volume.into(),
            projected: None,
            secret: None,
        });
        let path = self.path.clone();
        let shared = file_env(secret, &path);
        let read_only = VolumeMount {
            mount_path: MOUNT_ROOT.into(),
            name: self.volume.into(),
            read_only: Some(true),
        };
        for slot in pod.containers() {
            pod.append_mount(slot, &read_only);
            pod.append_env(slot, &shared);
        }
        let present = pod.init_containers().iter().any(|c| self.is_same(c));
        if present {
            return Ok(());
        }
        let name = self.free_name(pod);
        // The puller's own variables win over a custom env_var of the same name.
        let mut env = self.env;
        for var in shared {
            if !env.iter().any(|own| own.name == var.name) {
                env.push(var);
            }
        }
        pod.append_init_container(&Container {
            command: self.command,
            env,
            image: &self.settings.sidecar_image,
            name,
            resources: &self.settings.resources,
            volume_mounts: vec![VolumeMount {
                mount_path: self.mount_path.into(),
                name: self.volume.into(),
                read_only: None,
            }],
        });
        Ok(())
    }
}
