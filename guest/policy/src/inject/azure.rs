//! Azure Key Vault: an Azure CLI init container logs in with workload identity and writes the
//! secret `<group>` (its full URI) to `/etc/flyte/secrets/<name>[/<version>]` (lower-cased).

use super::puller::Puller;
use super::{Context, MOUNT_ROOT, Refused, check_custom_env_var, refuse, require};
use crate::pod::Pod;
use crate::secret::{MountRequirement, Secret};

/// `https://<vault>.vault.azure.net/secrets/<name>`: returns the name. The URI goes into a shell
/// script, so only the characters Key Vault allows are let through.
fn secret_name(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/')?;
    let name = path.strip_prefix("secrets/")?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (host_ok && name_ok).then_some(name)
}

pub fn inject(cx: &Context<'_>, pod: &mut Pod<'_>, secret: &Secret) -> Result<(), Refused> {
    require(secret, true, false, "Azure")?;
    if secret.mount_requirement == MountRequirement::EnvVar {
        return refuse("unrecognized mount requirement [ENV_VAR] for Azure Key Vault");
    }
    let uri = secret.group.trim_end_matches('/');
    let Some(name) = secret_name(uri) else {
        return refuse(
            "group must be a Key Vault secret URI, https://<vault>.vault.azure.net/secrets/<name>",
        );
    };
    let version = &secret.group_version;
    if !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return refuse("group_version must be a Key Vault secret version (letters and digits)");
    }
    check_custom_env_var(secret)?;
    let login = "az login --service-principal -u $AZURE_CLIENT_ID -t $AZURE_TENANT_ID \
                 --federated-token \"$(cat $AZURE_FEDERATED_TOKEN_FILE)\"";
    let dir = format!("{MOUNT_ROOT}/{}", name.to_lowercase());
    let (script, path) = if version.is_empty() {
        let script = format!(
            "{login}; az keyvault secret show --id \"{uri}\" --query \"value\" -o tsv > {dir}"
        );
        (script, dir)
    } else {
        let path = format!("{dir}/{}", version.to_lowercase());
        let script = format!(
            "{login}; mkdir -p {dir}; az keyvault secret show --id \"{uri}/{version}\" --query \"value\" -o tsv > {path}"
        );
        (script, path)
    };
    Puller {
        name_prefix: "azure-pull-secret",
        volume: "azure-secret-vol",
        mount_path: MOUNT_ROOT,
        settings: &cx.settings.azure_secret_manager,
        env: Vec::new(),
        command: Some(vec!["sh".into(), "-ec".into(), script]),
        path,
    }
    .inject(pod, secret)
}
