//! K8s: Kubernetes Secrets in the pod's namespace, as `secretKeyRef` env vars or a secret volume.
//! The Secret is named after the group; `optional: true` so a missing Secret never blocks a pod.

use super::{
    Context, ENV_ENV_PREFIX, MOUNT_ROOT, Refused, check_custom_env_var, file_env, refuse, require,
    secret_env_name,
};
use crate::annotations::base32_encode;
use crate::names::{
    check_dns1123_label, check_dns1123_subdomain, check_env_var_name, check_secret_key, stable_id,
};
use crate::pod::Pod;
use crate::pod::objects::{EnvVar, KeyToPath, SecretVolume, Volume, VolumeMount};
use crate::secret::{MountRequirement, Secret};

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    require(secret, true, true, "K8s")?;
    check_dns1123_subdomain(&secret.group).or_else(refuse)?;
    check_secret_key(&secret.key).or_else(refuse)?;
    check_custom_env_var(secret)?;
    match secret.mount_requirement {
        MountRequirement::EnvVar => inject_env(cx, pod, secret),
        MountRequirement::Any | MountRequirement::File => inject_file(pod, secret),
    }
}

fn inject_env(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    let prefix = cx.settings.secret_env_var_prefix.as_str();
    let name = secret_env_name(prefix, secret);
    check_env_var_name(&name).or_else(refuse)?;
    let mut vars = vec![EnvVar::secret_key(name, &secret.group, &secret.key)];
    if !secret.env_var.is_empty() {
        let custom = secret.env_var.as_str();
        vars.push(EnvVar::secret_key(custom, &secret.group, &secret.key));
    }
    vars.push(EnvVar::plain(ENV_ENV_PREFIX, prefix));
    for slot in pod.containers() {
        pod.append_env(slot, &vars);
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
fn inject_file(pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    let dir = format!("{MOUNT_ROOT}/{}", secret.group.to_lowercase());
    let path = format!("{dir}/{}", secret.key.to_lowercase());
    let item = KeyToPath {
        key: &secret.key,
        path: secret.key.to_lowercase().into(),
    };

    let volume = match pod.volume_mounted_at(&dir) {
        Some(existing) => existing,
        None => volume_name(secret),
    };
    let existing = pod.volume_named(&volume).map(|(index, source)| {
        let secret_name = source.and_then(|s| s.secret_name.as_ref());
        (
            index,
            secret_name.is_some_and(|name| name.as_str() == secret.group),
        )
    });
    match existing {
        Some((_, false)) => {
            return refuse(format!(
                "{dir} is already taken by volume {volume:?}, which is not Secret {:?}",
                secret.group
            ));
        }
        Some((index, true)) => pod.add_secret_item(index, &item),
        None => pod.add_volume(&Volume {
            empty_dir: None,
            name: volume.as_str().into(),
            projected: None,
            secret: Some(SecretVolume {
                items: vec![item],
                optional: true,
                secret_name: &secret.group,
            }),
        }),
    }
    let mount = VolumeMount {
        mount_path: dir.as_str().into(),
        name: volume.as_str().into(),
        read_only: Some(true),
    };
    let vars = file_env(secret, &path);
    for slot in pod.containers() {
        pod.append_mount(slot, &mount);
        pod.append_env(slot, &vars);
    }
    Ok(())
}
