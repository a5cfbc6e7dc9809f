//! Global: secrets the webhook itself holds, injected as plain env vars (Flyte's `Global` type),
//! placed as Flyte 1 places them or as Flyte 2 does ([`GlobalStyle`]).

use super::{
    Context, ENV_ENV_PREFIX, Refused, check_custom_env_var, refuse, require, secret_env_name,
};
use crate::names::check_env_var_name;
use crate::pod::Pod;
use crate::pod::objects::EnvVar;
use crate::secret::{MountRequirement, Secret};
use crate::settings::GlobalStyle;

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    require(secret, true, true, "Global")?;
    let Some(value) = cx.globals.lookup(&secret.group, &secret.key) else {
        return refuse("not among the webhook's global secrets");
    };
    if secret.mount_requirement == MountRequirement::File {
        return refuse("found, but global secrets can only be injected as environment variables");
    }
    let prefix = cx.settings.secret_env_var_prefix.as_str();
    let name = secret_env_name(prefix, secret);
    check_env_var_name(&name).or_else(refuse)?;
    if cx.settings.global_style == GlobalStyle::Flyte1 {
        check_custom_env_var(secret)?;
    }

    let mut vars = vec![
        EnvVar::plain(ENV_ENV_PREFIX, prefix),
        EnvVar::plain(name, value.as_str()),
    ];
    match cx.settings.global_style {
        GlobalStyle::Flyte1 => {
            // Flyte ignores env_var for Global secrets; honouring it is what the task asked for.
            if !secret.env_var.is_empty() {
                vars.push(EnvVar::plain(secret.env_var.as_str(), value.as_str()));
            }
            for slot in pod.containers() {
                pod.append_env(slot, &vars);
            }
        }
        // Flyte 2's order: each var first in turn, the webhook's value winning; env_var ignored.
        GlobalStyle::Flyte2 => {
            for slot in pod.containers() {
                pod.prepend_env(slot, &vars);
            }
        }
    }
    Ok(())
}
