//! AWS Secrets Manager: the AWS sidecar image as an init container, which writes the secret
//! `SECRET_ARN` to `/tmp/<SECRET_FILENAME>`; the volume at `/tmp` is `/etc/flyte/secrets` elsewhere.

use super::puller::Puller;
use super::{Context, MOUNT_ROOT, Refused, check_custom_env_var, refuse, require};
use crate::pod::Pod;
use crate::pod::objects::EnvVar;
use crate::secret::{MountRequirement, Secret};

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    require(secret, true, true, "AWS")?;
    if secret.mount_requirement == MountRequirement::EnvVar {
        return refuse("unrecognized mount requirement [ENV_VAR] for AWS Secrets Manager");
    }
    check_custom_env_var(secret)?;
    // Convention: group is the ARN up to `secret`, key the secret's name with its suffix.
    let arn = format!(
        "{}:{}",
        secret.group.trim_end_matches(':'),
        secret.key.trim_start_matches(':')
    );
    let file = format!(
        "/{}/{}",
        secret.group.to_lowercase(),
        secret.key.to_lowercase()
    );
    Puller {
        name_prefix: "aws-pull-secret",
        volume: "aws-secret-vol",
        mount_path: "/tmp",
        settings: &cx.settings.aws_secret_manager,
        env: vec![
            EnvVar::plain("SECRET_ARN", arn),
            EnvVar::plain("SECRET_FILENAME", file.clone()),
        ],
        command: None,
        path: format!("{MOUNT_ROOT}{file}"),
    }
    .inject(pod, secret)
}
