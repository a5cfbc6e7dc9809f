//! The secret managers. Each one either injects a secret into the pod or refuses it with a reason,
//! and refuses before it edits anything, so the next manager starts from a clean pod.

mod aws;
mod azure;
mod embedded;
mod gcp;
mod global;
mod k8s;
mod puller;
mod vault;

use crate::pod::Pod;
use crate::pod::objects::EnvVar;
use crate::secret::Secret;
use crate::settings::{ManagerType, Settings};

/// Where every file-based manager puts secrets, and the `default_dir` flytekit is pointed at.
pub const MOUNT_ROOT: &str = "/etc/flyte/secrets";
pub const ENV_DEFAULT_DIR: &str = "FLYTE_SECRETS_DEFAULT_DIR";
pub const ENV_FILE_PREFIX: &str = "FLYTE_SECRETS_FILE_PREFIX";
pub const ENV_ENV_PREFIX: &str = "FLYTE_SECRETS_ENV_PREFIX";

/// The webhook's own secrets, looked up by group and key.
pub trait GlobalSecrets {
    fn lookup(&self, group: &str, key: &str) -> Option<String>;
}

/// No global secrets at all.
impl GlobalSecrets for () {
    fn lookup(&self, _group: &str, _key: &str) -> Option<String> {
        None
    }
}

impl<F: Fn(&str, &str) -> Option<String>> GlobalSecrets for F {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        self(group, key)
    }
}

/// Secret values by Flyte 2 secret id: the Embedded manager's store, which only the host can
/// reach.
pub trait SecretStore {
    /// The value stored under `id`, `None` when there is no such secret, or why the store could
    /// not be read.
    fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String>;
}

/// What the policy may know of the cluster: namespaces, for binding a pod's scope to its
/// namespace, and the image pull Secrets beside the store.
pub trait Cluster {
    /// The labels of namespace `name`, `None` when there is no such namespace.
    fn labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String>;
    /// Whether the store's namespace holds image pull Secret `name`.
    fn image_pull_secret(&self, name: &str) -> Result<bool, String>;
}

/// What a host without a secret store answers.
pub struct NoStore;

impl SecretStore for NoStore {
    fn lookup(&self, _id: &str) -> Result<Option<Vec<u8>>, String> {
        Err("this host has no secret store for the Embedded manager".to_owned())
    }
}

impl Cluster for NoStore {
    fn labels(&self, _name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        Err("this host cannot read namespaces".to_owned())
    }

    fn image_pull_secret(&self, _name: &str) -> Result<bool, String> {
        Err("this host cannot read image pull Secrets".to_owned())
    }
}

/// Everything the policy may ask its host.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub globals: &'a dyn GlobalSecrets,
    pub store: &'a dyn SecretStore,
    pub cluster: &'a dyn Cluster,
}

impl<'a> Host<'a> {
    /// A host with global secrets only, as Flyte 1's managers need.
    pub fn globals_only(globals: &'a dyn GlobalSecrets) -> Self {
        Self {
            globals,
            store: &NoStore,
            cluster: &NoStore,
        }
    }
}

/// This manager cannot inject the secret, and why; the pod is untouched and the next manager may
/// try.
#[derive(Debug)]
pub struct Refused(pub String);

fn refuse<T>(reason: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(reason.into()))
}

/// What an injector may consult.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub globals: &'a dyn GlobalSecrets,
    pub host: Host<'a>,
    /// The namespace the pod is created in.
    pub namespace: &'a str,
    /// Who creates it.
    pub creator: crate::authority::Creator<'a>,
    /// Secret ids whose mirrors the edits so far refer to.
    pub mirrors: std::cell::RefCell<Vec<String>>,
    /// Image pull Secrets the edits so far list, for the host to copy into the namespace.
    pub pull_secrets: std::cell::RefCell<Vec<String>>,
}

/// Asks one manager to inject `secret` into `pod`.
pub fn inject(
    manager: ManagerType,
    cx: &Context<'_>,
    pod: &mut Pod<'_>,
    secret: &Secret,
) -> Result<(), Refused> {
    match manager {
        ManagerType::Global => global::inject(cx, pod, secret),
        ManagerType::K8s => k8s::inject(cx, pod, secret),
        ManagerType::Vault => vault::inject(cx, pod, secret),
        ManagerType::Aws => aws::inject(cx, pod, secret),
        ManagerType::Gcp => gcp::inject(cx, pod, secret),
        ManagerType::Azure => azure::inject(cx, pod, secret),
        ManagerType::Embedded => embedded::inject(cx, pod, secret),
    }
}

/// `<prefix><GROUP>_<KEY>`: the variable flytekit's `secrets.get(group, key)` reads.
fn secret_env_name(prefix: &str, secret: &Secret) -> String {
    format!("{prefix}{}_{}", secret.group, secret.key).to_uppercase()
}

/// The env vars that point flytekit at the mounted files, plus the custom path variable.
fn file_env<'s>(secret: &'s Secret, path: &'s str) -> Vec<EnvVar<'s>> {
    let mut vars = vec![
        EnvVar::plain(ENV_DEFAULT_DIR, MOUNT_ROOT),
        EnvVar::empty(ENV_FILE_PREFIX),
    ];
    if !secret.env_var.is_empty() {
        vars.push(EnvVar::plain(secret.env_var.as_str(), path));
    }
    vars
}

/// Refuses when the group or key needed by a manager is missing.
fn require(secret: &Secret, group: bool, key: bool, manager: &str) -> Result<(), Refused> {
    if (group && secret.group.is_empty()) || (key && secret.key.is_empty()) {
        let needs = match (group, key) {
            (true, true) => "both group and key",
            (true, false) => "a group",
            _ => "a key",
        };
        return refuse(format!("{manager} requires {needs}"));
    }
    Ok(())
}

/// Names the webhook itself sets; a secret's `env_var` may not take them over.
const RESERVED_ENV: [&str; 5] = [
    ENV_DEFAULT_DIR,
    ENV_FILE_PREFIX,
    ENV_ENV_PREFIX,
    "SECRET_ARN",
    "SECRET_FILENAME",
];

fn check_custom_env_var(secret: &Secret) -> Result<(), Refused> {
    if secret.env_var.is_empty() {
        return Ok(());
    }
    if RESERVED_ENV.contains(&secret.env_var.as_str()) {
        return refuse(format!(
            "env_var {:?} is reserved for the webhook's own use",
            secret.env_var
        ));
    }
    crate::names::check_env_var_name(&secret.env_var)
        .or_else(|reason| refuse(format!("env_var: {reason}")))
}
