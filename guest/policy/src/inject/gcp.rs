//! GCP Secret Manager: a gcloud init container pulls `<group>` at version `<group_version>` into
//! `/etc/flyte/secrets/<group>/<group_version>` (lower-cased).

use super::puller::Puller;
use super::{Context, MOUNT_ROOT, Refused, check_custom_env_var, refuse};
use crate::pod::Pod;
use crate::secret::{MountRequirement, Secret};

/// GCP secret names and resource names (`projects/p/secrets/s`); versions are numbers or aliases.
/// Both go into a shell script, so nothing else is let through.
fn shell_safe(text: &str, extra: &[u8]) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || extra.contains(&b))
}

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    if secret.group.is_empty() || secret.group_version.is_empty() {
        return refuse("GCP requires both group and group_version");
    }
    if secret.mount_requirement == MountRequirement::EnvVar {
        return refuse("unrecognized mount requirement [ENV_VAR] for GCP Secret Manager");
    }
    if !shell_safe(&secret.group, b"/.") || !shell_safe(&secret.group_version, b"") {
        return refuse(
            "group must be a GCP secret or resource name ([A-Za-z0-9_./-]) and group_version a version ([A-Za-z0-9_-])",
        );
    }
    check_custom_env_var(secret)?;
    let dir = format!("{MOUNT_ROOT}/{}", secret.group).to_lowercase();
    let path = format!("{dir}/{}", secret.group_version).to_lowercase();
    let (group, version) = (&secret.group, &secret.group_version);
    // The first form takes full resource names (cross-project); gcloud writes 0600 files, which a
    // non-root task could not read without the chmod.
    let script = format!(
        "gcloud secrets versions access {group}/versions/{version} --out-file={path} || \
         gcloud secrets versions access {version} --secret={group} --out-file={path}; \
         chmod +rX {dir} {path}"
    );
    Puller {
        name_prefix: "gcp-pull-secret",
        volume: "gcp-secret-vol",
        mount_path: MOUNT_ROOT,
        settings: &cx.settings.gcp_secret_manager,
        env: Vec::new(),
        command: Some(vec!["sh".into(), "-ec".into(), script]),
        path,
    }
    .inject(pod, secret)
}
