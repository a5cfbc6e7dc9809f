//! Embedded (Flyte 2): the webhook itself resolves the secret by the pod's scope — project, then
//! domain, then organization — through the host's store, after checking that the scope the pod's
//! labels name is the one its namespace stands for.
//!
//! Mirror mode (ours, the default) puts no value in the pod: it refers to a Secret the host keeps
//! in the pod's namespace (`secretKeyRef`, a projected volume). Plaintext mode is Flyte 2's, byte
//! for byte: plain env values, and for files an init container whose env carries the values.
//! Both place env vars as Flyte 2 does: first in the list, replacing one of the same name.

use data_encoding::BASE64;

use super::{
    Context, ENV_DEFAULT_DIR, ENV_ENV_PREFIX, ENV_FILE_PREFIX, MOUNT_ROOT, Refused,
    check_custom_env_var, refuse,
};
use crate::names::{check_env_var_name, check_secret_key};
use crate::pod::Pod;
use crate::pod::objects::{
    Container, EmptyDir, EnvVar, KeyToPath, ProjectedSecret, ProjectedVolume, Projection, Volume,
    VolumeMount,
};
use crate::scope::{MIRROR_KEY, Scope, mirror_name, pull_secret_name};
use crate::secret::{MountRequirement, Secret};
use crate::settings::{EmbeddedMode, EmbeddedSettings};

/// Flyte 2's volume for FILE secrets; Mirror mode gives the same name to its projected volume.
pub const VOLUME: &str = "embedded-secret-vol";
/// The init container's env var holding `<key>=<base64 value>` lines (Plaintext mode).
pub const SECRETS_ENV: &str = "SECRETS";

/// Flyte 2's script: writes each `SECRETS` line's decoded value to `/etc/flyte/secrets/<key>`.
/// Kept to the byte, tabs included, so the init container is the one Flyte 2 writes.
const FILE_SCRIPT: &str = "\n\t\t\t\tprintf \"%s\" \"$SECRETS\" \\\n\t\t\t\t| awk '/^.+=/ {\n\t\t\t\t\ti = index($0, \"=\");\n\t\t\t\t\tname = substr($0, 0, i - 1);\n\t\t\t\t\tvalue = substr($0, i + 1);\n\t\t\t\t\toutput_file = \"/etc/flyte/secrets/\" name;\n\t\t\t\t\tprint value | \"base64 -d > \" output_file;\n\t\t\t\t}'\n\t\t\t\t";

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    if secret.key.is_empty() {
        return refuse("Embedded requires a key");
    }
    check_custom_env_var(secret)?;
    let settings = &cx.settings.embedded_secret_manager_config;
    let scope = Scope::from_labels(|name| pod.label(name)).or_else(refuse)?;
    grant(cx, &scope, settings)?;
    let file = secret.mount_requirement == MountRequirement::File;
    if file {
        check_secret_key(&secret.key).or_else(refuse)?;
        if let Some(other) = pod.volume_mounted_at(MOUNT_ROOT).filter(|v| v != VOLUME) {
            return refuse(format!(
                "volume {other:?} is already mounted at {MOUNT_ROOT}, where Embedded puts files"
            ));
        }
    }
    let (found, id, value) = resolve(cx, &scope, &secret.key)?;
    let pull = match settings.image_pull_secrets.enabled {
        true => pull_secret(cx, &found, &secret.key)?,
        false => None,
    };
    match (settings.mode, file) {
        (EmbeddedMode::Mirror, false) => mirror_env(cx, pod, secret, &id, &value)?,
        (EmbeddedMode::Mirror, true) => mirror_file(pod, secret, &id)?,
        (EmbeddedMode::Plaintext, false) => plaintext_env(cx, pod, secret, &value)?,
        (EmbeddedMode::Plaintext, true) => plaintext_file(settings, pod, secret, &value),
    }
    if settings.mode == EmbeddedMode::Mirror {
        push_once(&cx.mirrors, id);
    }
    if let Some(name) = pull {
        pod.add_image_pull_secret(&name);
        push_once(&cx.pull_secrets, name);
    }
    Ok(())
}

fn push_once(list: &std::cell::RefCell<Vec<String>>, item: String) {
    let mut list = list.borrow_mut();
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Flyte 2's image pull Secret for `key` in the scope it was found in, when the store's
/// namespace has one. Asked before any edit: a refusal leaves the pod untouched.
fn pull_secret(cx: &Context<'_>, found: &Scope, key: &str) -> Result<Option<String>, Refused> {
    let name = pull_secret_name(found, key);
    match cx.host.cluster.image_pull_secret(&name) {
        Ok(true) => Ok(Some(name)),
        Ok(false) => Ok(None),
        Err(err) => refuse(format!("reading image pull Secret {name}: {err}")),
    }
}

/// Refuses a scope the pod's namespace and creator are not entitled to: a pod's labels are
/// written by whoever creates it, and must not open another project's secrets.
fn grant(cx: &Context<'_>, scope: &Scope, settings: &EmbeddedSettings) -> Result<(), Refused> {
    let namespace = cx.namespace;
    let org_label = || match cx.host.cluster.labels(namespace) {
        Ok(Some(labels)) => Ok(labels
            .into_iter()
            .find(|(name, _)| name == "organization")
            .map(|(_, value)| value)),
        Ok(None) => Err(format!("namespace {namespace:?} does not exist")),
        Err(err) => Err(format!("cannot read namespace {namespace:?}: {err}")),
    };
    let authority = settings.authority();
    authority
        .grant(namespace, Some(cx.creator), scope, org_label)
        .map(drop)
        .or_else(refuse)
}

/// The narrowest scope's id and value of `key`. Only "no such secret" widens the search; a store
/// that cannot be read stops it, so a broader scope's value never stands in for the task's own.
fn resolve(
    cx: &Context<'_>,
    scope: &Scope,
    key: &str,
) -> Result<(Scope, String, Vec<u8>), Refused> {
    for scope in scope.cascade() {
        let id = scope.secret_id(key);
        match cx.host.store.lookup(&id) {
            Ok(Some(value)) => return Ok((scope, id, value)),
            Ok(None) => {}
            Err(err) => return refuse(format!("reading secret {id}: {err}")),
        }
    }
    refuse(format!(
        "secret {key:?} not found across all scopes ({})",
        scope.describe()
    ))
}

/// The env var that carries the value: `env_var`, or Flyte 2's `<prefix><KEY>` (no group).
fn env_name(cx: &Context<'_>, secret: &Secret) -> Result<String, Refused> {
    if !secret.env_var.is_empty() {
        return Ok(secret.env_var.clone());
    }
    let name = format!(
        "{}{}",
        cx.settings.secret_env_var_prefix,
        secret.key.to_uppercase()
    );
    check_env_var_name(&name).or_else(refuse)?;
    Ok(name)
}

fn utf8<'v>(secret: &Secret, value: &'v [u8]) -> Result<&'v str, Refused> {
    std::str::from_utf8(value).or_else(|_| {
        refuse(format!(
            "secret {:?} is attempted to be mounted as an environment variable, but has a binary \
             value that is not a valid UTF-8 string; mount as a file instead",
            secret.key
        ))
    })
}

fn mirror_env(
    cx: &Context<'_>,
    pod: &mut Pod<'_>,
    secret: &Secret,
    id: &str,
    value: &[u8],
) -> Result<(), Refused> {
    utf8(secret, value)?;
    let name = env_name(cx, secret)?;
    let mirror = mirror_name(id);
    let vars = [
        EnvVar::plain(ENV_ENV_PREFIX, cx.settings.secret_env_var_prefix.as_str()),
        EnvVar::required_secret_key(name, &mirror, MIRROR_KEY),
    ];
    prepend_everywhere(cx, pod, &vars);
    Ok(())
}

/// Puts `vars` first in every container's env, unless every container but the Plaintext init
/// container has them already. That one only gets what comes after it (Flyte 2 adds env to the
/// containers there are), so it must not make a second pass add anything.
fn prepend_everywhere(cx: &Context<'_>, pod: &mut Pod<'_>, vars: &[EnvVar<'_>]) {
    let init = &cx
        .settings
        .embedded_secret_manager_config
        .file_mount_init_container;
    let slots = pod.containers();
    let done = slots
        .iter()
        .filter(|slot| pod.container_name(**slot) != Some(init.container_name.as_str()))
        .all(|slot| pod.has_env(*slot, vars));
    if done {
        return;
    }
    for slot in slots {
        pod.prepend_env(slot, vars);
    }
}

fn plaintext_env(
    cx: &Context<'_>,
    pod: &mut Pod<'_>,
    secret: &Secret,
    value: &[u8],
) -> Result<(), Refused> {
    let value = utf8(secret, value)?;
    let name = env_name(cx, secret)?;
    let vars = [
        EnvVar::plain(ENV_ENV_PREFIX, cx.settings.secret_env_var_prefix.as_str()),
        EnvVar::plain(name, value),
    ];
    prepend_everywhere(cx, pod, &vars);
    Ok(())
}

/// The env of every container reading files: where they are, and `env_var` with the path.
fn file_env<'s>(secret: &'s Secret) -> Vec<EnvVar<'s>> {
    let mut vars = vec![
        EnvVar::plain(ENV_DEFAULT_DIR, MOUNT_ROOT),
        EnvVar::empty(ENV_FILE_PREFIX),
    ];
    if !secret.env_var.is_empty() {
        let path = format!("{MOUNT_ROOT}/{}", secret.key.to_lowercase());
        vars.push(EnvVar::plain(secret.env_var.as_str(), path));
    }
    vars
}

fn mount_everywhere(pod: &mut Pod<'_>, vars: &[EnvVar<'_>]) {
    let mount = VolumeMount {
        mount_path: MOUNT_ROOT.into(),
        name: VOLUME.into(),
        read_only: Some(true),
    };
    for slot in pod.containers() {
        pod.append_mount(slot, &mount);
        pod.prepend_env(slot, vars);
    }
}

/// The mirror's value at `/etc/flyte/secrets/<key>` (Flyte 2's file) and, when it differs, at
/// the lower-cased name too (where flytekit's `secrets.get` and Flyte 2's `env_var` path look).
fn mirror_file(pod: &mut Pod<'_>, secret: &Secret, id: &str) -> Result<(), Refused> {
    let mirror = mirror_name(id);
    let lower = secret.key.to_lowercase();
    let mut items = vec![KeyToPath {
        key: MIRROR_KEY,
        path: secret.key.as_str().into(),
    }];
    if lower != secret.key {
        items.push(KeyToPath {
            key: MIRROR_KEY,
            path: lower.into(),
        });
    }
    let projection = Projection {
        secret: ProjectedSecret {
            items,
            name: &mirror,
        },
    };
    match pod.projected_secrets(VOLUME) {
        Some((_, names)) if names.contains(&mirror) => {}
        Some((index, _)) => pod.add_projection(index, &projection),
        None if pod.volume_named(VOLUME).is_some() => {
            return refuse(format!(
                "the pod has a volume {VOLUME:?} that is not a projected volume"
            ));
        }
        None => pod.add_volume(&Volume {
            empty_dir: None,
            name: VOLUME.into(),
            projected: Some(ProjectedVolume {
                sources: vec![projection],
            }),
            secret: None,
        }),
    }
    mount_everywhere(pod, &file_env(secret));
    Ok(())
}

/// Flyte 2's way: the first FILE secret adds the init container, the volume, the mounts and the
/// env; later ones only add their line to the init container's `SECRETS` (so their `env_var` is
/// not set: Flyte 2 does the same).
fn plaintext_file(settings: &EmbeddedSettings, pod: &mut Pod<'_>, secret: &Secret, value: &[u8]) {
    let line = format!("{}={}", secret.key, BASE64.encode(value));
    let init = &settings.file_mount_init_container;
    if let Some(index) = pod.init_container_index(&init.container_name) {
        let current = pod.init_env(index, SECRETS_ENV).unwrap_or_default();
        if !current.lines().any(|existing| existing == line) {
            let value = format!("{current}{line}\n");
            pod.set_init_env(index, SECRETS_ENV, &value);
        }
        return;
    }
    pod.append_init_container(&Container {
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            FILE_SCRIPT.to_owned(),
        ]),
        env: vec![EnvVar::plain(SECRETS_ENV, format!("{line}\n"))],
        image: &init.image,
        name: init.container_name.clone(),
        resources: &init.resources,
        volume_mounts: vec![VolumeMount {
            mount_path: MOUNT_ROOT.into(),
            name: VOLUME.into(),
            read_only: None,
        }],
    });
    pod.add_volume(&Volume {
        empty_dir: Some(EmptyDir { medium: "Memory" }),
        name: VOLUME.into(),
        projected: None,
        secret: None,
    });
    mount_everywhere(pod, &file_env(secret));
}
