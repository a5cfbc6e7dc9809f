//! K8s: Kubernetes Secrets in the pod's namespace, as `secretKeyRef` env vars or a secret volume.
//! The Secret is named after the group; `optional: true` so a missing Secret never blocks a pod.

use serde_json::{Value, json};

use super::{
    Context, ENV_ENV_PREFIX, InjectError, MOUNT_ROOT, check_custom_env_var, env_value, file_env,
    refuse, require, secret_env_name,
};
use crate::annotations::base32_encode;
use crate::names::{
    check_dns1123_label, check_dns1123_subdomain, check_env_var_name, check_secret_key, stable_id,
};
use crate::pod::Pod;
use crate::secret::{MountRequirement, Secret};

pub fn inject(cx: &Context<'_>, pod: &mut Pod, secret: &Secret) -> Result<(), InjectError> {
    require(secret, true, true, "K8s")?;
    check_dns1123_subdomain(&secret.group).or_else(refuse)?;
    check_secret_key(&secret.key).or_else(refuse)?;
    check_custom_env_var(secret)?;
    match secret.mount_requirement {
        MountRequirement::EnvVar => inject_env(cx, pod, secret),
        MountRequirement::Any | MountRequirement::File => inject_file(pod, secret),
    }
}

fn inject_env(cx: &Context<'_>, pod: &mut Pod, secret: &Secret) -> Result<(), InjectError> {
    let prefix = &cx.settings.secret_env_var_prefix;
    let name = secret_env_name(prefix, secret);
    check_env_var_name(&name).or_else(refuse)?;
    let reference =
        json!({"secretKeyRef": {"name": secret.group, "key": secret.key, "optional": true}});
    let mut vars = vec![json!({"name": name, "valueFrom": reference})];
    if !secret.env_var.is_empty() {
        vars.push(json!({"name": secret.env_var, "valueFrom": reference}));
    }
    vars.push(env_value(ENV_ENV_PREFIX, prefix));
    for slot in pod.containers()? {
        pod.append_env(slot, &vars)?;
    }
    Ok(())
}

/// Flyte's volume name, base32(group + "_" + group_version); a hash where that would exceed the
/// 63 characters Kubernetes allows (Flyte's pod would be rejected by the API server).
fn volume_name(secret: &Secret) -> String {
    let flyte = base32_encode(format!("{}_{}", secret.group, secret.group_version).as_bytes());
    if check_dns1123_label(&flyte).is_ok() {
        return flyte;
    }
    format!("flyte-secret-{}", stable_id(&[&secret.group]))
}

/// Mounts the group's Secret at `/etc/flyte/secrets/<group>`. All keys of a group share one volume
/// and one mount, whatever their group_version, found again through the mount path, so a second
/// key, a second version or a reinvocation only adds what is missing.
fn inject_file(pod: &mut Pod, secret: &Secret) -> Result<(), InjectError> {
    let dir = format!("{MOUNT_ROOT}/{}", secret.group.to_lowercase());
    let path = format!("{dir}/{}", secret.key.to_lowercase());
    let item = json!({"key": secret.key, "path": secret.key.to_lowercase()});

    let volume = match pod.volume_mounted_at(&dir)? {
        Some(existing) => existing,
        None => volume_name(secret),
    };
    let existing = pod.volume_named(&volume).map(|(index, existing)| {
        let secret_name = existing.get("secret").and_then(|s| s.get("secretName"));
        (
            index,
            secret_name.and_then(Value::as_str) == Some(secret.group.as_str()),
        )
    });
    match existing {
        Some((_, false)) => {
            return refuse(format!(
                "{dir} is already taken by volume {volume:?}, which is not Secret {:?}",
                secret.group
            ));
        }
        Some((index, true)) => pod.add_secret_item(index, item)?,
        None => pod.add_volume(json!({
            "name": volume,
            "secret": {"secretName": secret.group, "items": [item], "optional": true},
        }))?,
    }
    let mount = json!({"name": volume, "mountPath": dir, "readOnly": true});
    let vars = file_env(secret, &path);
    for slot in pod.containers()? {
        pod.append_mount(slot, &mount)?;
        pod.append_env(slot, &vars)?;
    }
    Ok(())
}
