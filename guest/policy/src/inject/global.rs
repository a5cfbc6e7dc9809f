//! Global: secrets the webhook itself holds, injected as plain env vars (Flyte's `Global` type).

use super::{
    Context, ENV_ENV_PREFIX, InjectError, check_custom_env_var, env_value, refuse, require,
    secret_env_name,
};
use crate::names::check_env_var_name;
use crate::pod::Pod;
use crate::secret::{MountRequirement, Secret};

pub fn inject(cx: &Context<'_>, pod: &mut Pod, secret: &Secret) -> Result<(), InjectError> {
    require(secret, true, true, "Global")?;
    let Some(value) = cx.globals.lookup(&secret.group, &secret.key) else {
        return refuse("not among the webhook's global secrets");
    };
    if secret.mount_requirement == MountRequirement::File {
        return refuse("found, but global secrets can only be injected as environment variables");
    }
    let prefix = &cx.settings.secret_env_var_prefix;
    let name = secret_env_name(prefix, secret);
    check_env_var_name(&name).or_else(refuse)?;
    check_custom_env_var(secret)?;

    let mut vars = vec![env_value(ENV_ENV_PREFIX, prefix), env_value(&name, &value)];
    // Flyte ignores env_var for Global secrets; honouring it is what the task asked for.
    if !secret.env_var.is_empty() {
        vars.push(env_value(&secret.env_var, &value));
    }
    for slot in pod.containers()? {
        pod.append_env(slot, &vars)?;
    }
    Ok(())
}
