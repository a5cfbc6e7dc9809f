//! Vault: pod annotations for HashiCorp's Vault Agent Injector, which adds the agent that writes
//! each secret to `/etc/flyte/secrets/<group>/<key>`. We add no containers or volumes ourselves.

use std::collections::BTreeMap;

use super::{Context, MOUNT_ROOT, Refused, check_custom_env_var, file_env, refuse, require};
use crate::names::stable_id;
use crate::pod::Pod;
use crate::secret::{MountRequirement, Secret};
use crate::settings::KvVersion;

const PREFIX: &str = "vault.hashicorp.com/";

/// Which secrets engine a secret lives in.
enum Engine {
    Kv(KvVersion),
    /// Database engine: the agent writes the raw response, no template.
    Database,
}

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    require(secret, true, true, "Vault")?;
    if secret.mount_requirement == MountRequirement::EnvVar {
        return refuse("Env_Var is not a supported mount requirement for Vault Secret Manager");
    }
    check_custom_env_var(secret)?;
    if secret.key.contains('"') || secret.group.contains('"') {
        return refuse("group and key must not contain '\"' (they go into a Vault template)");
    }
    let settings = &cx.settings.vault_secret_manager;
    let engine = match secret.group_version.as_str() {
        "kv1" => Engine::Kv(KvVersion::V1),
        "kv2" => Engine::Kv(KvVersion::V2),
        "db" => Engine::Database,
        _ => Engine::Kv(settings.kv_version),
    };

    // Later entries win: per-secret < common < configured; the pod's own annotations win over all.
    let id = stable_id(&[&secret.group, &secret.group_version, &secret.key]);
    let mut annotations = BTreeMap::new();
    let mut set = |name: &str, value: String| {
        annotations.insert(format!("{PREFIX}{name}"), value);
    };
    set(&format!("agent-inject-secret-{id}"), secret.group.clone());
    set(
        &format!("agent-inject-file-{id}"),
        format!("{}/{}", secret.group, secret.key),
    );
    if let Engine::Kv(version) = engine {
        let data = match version {
            KvVersion::V1 => ".Data",
            KvVersion::V2 => ".Data.data",
        };
        // `index` rather than `.Data.<key>`: keys with '-' or '.' break the dotted form.
        let template = format!(
            "{{{{- with secret \"{}\" -}}}}{{{{ index {data} \"{}\" }}}}{{{{- end -}}}}",
            secret.group, secret.key
        );
        set(&format!("agent-inject-template-{id}"), template);
    }
    set("agent-inject", "true".to_owned());
    set("secret-volume-path", MOUNT_ROOT.to_owned());
    set("role", settings.role.clone());
    set("agent-pre-populate-only", "true".to_owned());
    for (key, value) in &settings.annotations {
        annotations.insert(key.clone(), value.clone());
    }
    for (key, value) in &annotations {
        pod.add_annotation(key, value);
    }

    // The agent keeps the group's case in the path, unlike the K8s and cloud managers.
    let path = format!("{MOUNT_ROOT}/{}/{}", secret.group, secret.key);
    let vars = file_env(secret, &path);
    for slot in pod.containers() {
        pod.append_env(slot, &vars);
    }
    Ok(())
}
