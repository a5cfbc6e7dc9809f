//! The configuration file (`--config`, YAML) and the flags that override it.
//!
//! The file keeps Flyte's layout: a `webhook:` section with Flyte's key names, and a `secrets:`
//! section saying where global secrets live. The whole `webhook:` section is also the policy's
//! settings, so a policy can take keys this host does not know.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::global_secrets;

/// Flyte's default certificate directory.
pub const DEFAULT_CERT_DIR: &str = "/etc/webhook/certs";
/// Where local mode keeps its certificates.
pub const LOCAL_CERT_DIR: &str = "certs";
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 << 20;

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    webhook: Option<serde_json::Value>,
    #[serde(default)]
    secrets: SecretsSection,
}

/// Flyte's `secrets:` section (the Global manager's source).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
struct SecretsSection {
    secrets_prefix: PathBuf,
    env_prefix: String,
}

impl Default for SecretsSection {
    fn default() -> Self {
        Self {
            secrets_prefix: "/etc/secrets".into(),
            env_prefix: "FLYTE_SECRET_".to_owned(),
        }
    }
}

/// The keys of `webhook:` the host itself reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct HostKeys {
    listen_port: Option<u16>,
    cert_dir: Option<PathBuf>,
    on_error: Option<OnError>,
    max_request_bytes: Option<usize>,
    namespace_selector: Option<LabelSelector>,
    cache_invalidation_port: Option<u16>,
    embedded_secret_manager_config: EmbeddedKeys,
}

/// The keys of `embeddedSecretManagerConfig` that say where values live (the policy reads the
/// rest).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct EmbeddedKeys {
    #[serde(rename = "type")]
    store: Option<StoreType>,
    k8s_config: K8sKeys,
    aws_config: AwsKeys,
    gcp_config: GcpKeys,
    azure_config: AzureKeys,
    image_pull_secrets: ImagePullKeys,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImagePullKeys {
    enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GcpKeys {
    project: Option<String>,
    endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct AzureKeys {
    #[serde(rename = "vaultURI")]
    vault_uri: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AwsKeys {
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct K8sKeys {
    namespace: Option<String>,
}

/// Where the Embedded manager's values live (Flyte 2's `embeddedSecretManagerConfig.type`, in
/// any case, as Flyte's enum parser reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreType {
    K8s,
    Aws,
    Gcp,
    Azure,
}

impl StoreType {
    /// As Flyte 2 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::K8s => "K8s",
            Self::Aws => "AWS",
            Self::Gcp => "GCP",
            Self::Azure => "Azure",
        }
    }
}

impl<'de> Deserialize<'de> for StoreType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let known = [Self::K8s, Self::Aws, Self::Gcp, Self::Azure];
        known
            .into_iter()
            .find(|store| store.name().eq_ignore_ascii_case(&name))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown embeddedSecretManagerConfig.type {name:?}; expected K8s, AWS, GCP \
                     or Azure"
                ))
            })
    }
}

/// What the host needs to serve Flyte 2's Embedded manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    pub store: StoreType,
    /// The K8s store's namespace (Flyte 2's `k8sConfig.namespace`, default `flyte`).
    pub k8s_namespace: String,
    /// The AWS store's region (`awsConfig.region`); the SDK's own lookup when unset.
    pub aws_region: Option<String>,
    /// The GCP store's project (`gcpConfig.project`), required for that store.
    pub gcp_project: Option<String>,
    /// Ours: Secret Manager's endpoint (`gcpConfig.endpoint`), for a regional or Private Service
    /// Connect endpoint; `https://secretmanager.googleapis.com` when unset.
    pub gcp_endpoint: Option<String>,
    /// The Azure store's Key Vault (`azureConfig.vaultURI`), required for that store.
    pub azure_vault_uri: Option<String>,
    /// Flyte 2's `imagePullSecrets.enabled`: image pull Secrets are read in `k8s_namespace` and
    /// copied into pods' namespaces.
    pub image_pull_secrets: bool,
    /// Flyte 2's `cacheInvalidationPort` (default 9444); `None` when 0 turns it off.
    pub invalidation_port: Option<u16>,
}

/// Everything `serve` and `mutate` need, after the file and the flags are merged.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cert_dir: PathBuf,
    pub on_error: OnError,
    pub max_body_bytes: usize,
    /// The `webhook:` section as JSON: the policy's settings.
    pub settings: String,
    /// The same, as the policy library reads them, parsed once here for the host's own use
    /// (the Embedded store, the scope authority, warnings); `None` when the library does not
    /// read them (a policy of one's own may take other keys).
    pub library_settings: Option<secrets_policy::Settings>,
    pub global_secrets: global_secrets::Source,
    /// Which namespaces the webhook serves (Flyte's `namespaceSelector`), besides the built-in
    /// exclusion of its own namespace and kube-system.
    pub namespace_selector: Option<LabelSelector>,
    /// Set when the settings send secrets to the Embedded manager.
    pub embedded: Option<EmbeddedConfig>,
}

impl Config {
    /// The keys the running server cannot change that differ in `newer`: they take a restart.
    pub fn unapplied_in(&self, newer: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let differs = [
            ("listenPort", self.listen != newer.listen),
            ("certDir", self.cert_dir != newer.cert_dir),
            ("onError", self.on_error != newer.on_error),
            (
                "maxRequestBytes",
                self.max_body_bytes != newer.max_body_bytes,
            ),
            (
                "namespaceSelector",
                self.namespace_selector != newer.namespace_selector,
            ),
            ("secrets", self.global_secrets != newer.global_secrets),
        ];
        for (key, changed) in differs {
            if changed {
                keys.push(key);
            }
        }
        keys
    }
}

/// What to do with a pod whose secrets cannot be injected, or when the policy fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the pod with a message naming the secret and the reason.
    #[default]
    Deny,
    /// Admit the pod unchanged with a warning (Flyte 1's behaviour).
    Allow,
}

/// Flag values; `None` means "not given", so the file or the default applies.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub cert_dir: Option<PathBuf>,
    pub on_error: Option<OnError>,
    pub max_body_bytes: Option<usize>,
    pub global_secrets_dir: Option<PathBuf>,
    pub local: bool,
}

impl Config {
    /// Reads `path` (if any) and applies `flags` on top.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Self> {
        let file: File = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_yaml::from_str::<Option<File>>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
                    .unwrap_or_default()
            }
            None => File::default(),
        };
        let webhook = file.webhook.unwrap_or(serde_json::Value::Null);
        let host: HostKeys = if webhook.is_null() {
            HostKeys::default()
        } else {
            serde_json::from_value(webhook.clone()).context("reading the webhook: section")?
        };
        let settings = serde_json::to_string(&webhook)?;
        let library_settings = match webhook.is_object() {
            true => secrets_policy::Settings::from_json(&settings).ok(),
            false => None,
        };
        let embedded = embedded_config(library_settings.as_ref(), &host)?;
        let default_cert_dir = if flags.local {
            LOCAL_CERT_DIR
        } else {
            DEFAULT_CERT_DIR
        };
        let listen = flags
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], host.listen_port.unwrap_or(9443))));
        Ok(Self {
            listen,
            cert_dir: flags
                .cert_dir
                .clone()
                .or(host.cert_dir)
                .unwrap_or_else(|| default_cert_dir.into()),
            on_error: flags.on_error.or(host.on_error).unwrap_or_default(),
            max_body_bytes: flags
                .max_body_bytes
                .or(host.max_request_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            settings,
            library_settings,
            namespace_selector: host.namespace_selector,
            embedded,
            global_secrets: global_secrets::Source {
                env_prefix: file.secrets.env_prefix,
                dir: Some(
                    flags
                        .global_secrets_dir
                        .clone()
                        .unwrap_or(file.secrets.secrets_prefix),
                ),
            },
        })
    }
}

/// What an operator must hear about settings that are valid but weaken the webhook, at start and
/// on every reload that puts them in service.
pub fn warnings(settings: Option<&secrets_policy::Settings>, client_ca: bool) -> Vec<&'static str> {
    let Some(settings) = settings else {
        return Vec::new();
    };
    if !settings.uses_embedded() {
        return Vec::new();
    }
    let embedded = &settings.embedded_secret_manager_config;
    let mut warnings = Vec::new();
    if !embedded.bind_scope_to_namespace {
        warnings.push(
            "embeddedSecretManagerConfig.bindScopeToNamespace is false: a pod's scope labels are \
             trusted in every namespace, so whoever may create a pod anywhere may read any \
             project's secrets by naming its scope",
        );
    }
    if embedded.mode == secrets_policy::settings::EmbeddedMode::Plaintext && !client_ca {
        warnings.push(
            "embeddedSecretManagerConfig.mode is Plaintext and --client-ca is not set: secret \
             values travel in AdmissionReview responses, so anything that reaches the webhook's \
             port can ask for them with a forged review; require the API server's client \
             certificate (docs/operations.md)",
        );
    }
    warnings
}

/// The Embedded manager's store, when the settings (as the policy library reads them) use it.
fn embedded_config(
    settings: Option<&secrets_policy::Settings>,
    host: &HostKeys,
) -> Result<Option<EmbeddedConfig>> {
    if !settings.is_some_and(secrets_policy::Settings::uses_embedded) {
        return Ok(None);
    }
    let keys = &host.embedded_secret_manager_config;
    let store = keys.store.unwrap_or(StoreType::K8s);
    let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
    let (gcp_project, azure_vault_uri) = (
        set(&keys.gcp_config.project),
        set(&keys.azure_config.vault_uri),
    );
    if store == StoreType::Gcp && gcp_project.is_none() {
        bail!("embeddedSecretManagerConfig.gcpConfig.project is required with type GCP");
    }
    if store == StoreType::Azure {
        match &azure_vault_uri {
            Some(uri) if uri.starts_with("https://") => {}
            Some(uri) => bail!(
                "embeddedSecretManagerConfig.azureConfig.vaultURI {uri:?} must be an https:// URI"
            ),
            None => bail!(
                "embeddedSecretManagerConfig.azureConfig.vaultURI is required with type Azure"
            ),
        }
    }
    Ok(Some(EmbeddedConfig {
        store,
        k8s_namespace: keys
            .k8s_config
            .namespace
            .clone()
            .unwrap_or_else(|| "flyte".to_owned()),
        aws_region: keys.aws_config.region.clone(),
        gcp_project,
        gcp_endpoint: set(&keys.gcp_config.endpoint),
        azure_vault_uri,
        image_pull_secrets: keys.image_pull_secrets.enabled,
        invalidation_port: match host.cache_invalidation_port {
            Some(0) => None,
            Some(port) => Some(port),
            None => Some(9444),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "webhook:\n  listenPort: 8443\n  certDir: /certs\n  onError: allow\n  secretManagerType: K8s\n\
             secrets:\n  secrets-prefix: /s\n  env-prefix: MY_\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 8443);
        assert_eq!(config.cert_dir, Path::new("/certs"));
        assert_eq!(config.on_error, OnError::Allow);
        assert_eq!(config.global_secrets.env_prefix, "MY_");
        assert!(config.settings.contains("\"secretManagerType\":\"K8s\""));

        let flags = Overrides {
            on_error: Some(OnError::Deny),
            cert_dir: Some("/other".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &flags).unwrap();
        assert_eq!(config.on_error, OnError::Deny);
        assert_eq!(config.cert_dir, Path::new("/other"));
    }

    #[test]
    fn no_file_means_defaults() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 9443);
        assert_eq!(config.settings, "null");
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let local = Config::load(
            None,
            &Overrides {
                local: true,
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(local.cert_dir, Path::new(LOCAL_CERT_DIR));
    }

    #[test]
    fn embedded_store_settings_take_flyte_2s_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "webhook:\n  secretManagerTypes: [Embedded]\n").unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(
            config.embedded,
            Some(EmbeddedConfig {
                store: StoreType::K8s,
                k8s_namespace: "flyte".to_owned(),
                aws_region: None,
                gcp_project: None,
                gcp_endpoint: None,
                azure_vault_uri: None,
                image_pull_secrets: false,
                invalidation_port: Some(9444),
            })
        );
        std::fs::write(
            &path,
            "webhook:\n  secretManagerType: Embedded\n  cacheInvalidationPort: 0\n  \
             embeddedSecretManagerConfig:\n    type: aws\n    k8sConfig:\n      namespace: s\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        let embedded = config.embedded.unwrap();
        assert_eq!(
            (embedded.store, embedded.invalidation_port),
            (StoreType::Aws, None)
        );
        assert_eq!(embedded.k8s_namespace, "s");
        std::fs::write(&path, "webhook:\n  secretManagerType: K8s\n").unwrap();
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.embedded, None);
    }

    #[test]
    fn cloud_stores_say_what_they_lack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let load = |store: &str| {
            let yaml = format!(
                "webhook:\n  secretManagerTypes: [Embedded]\n  embeddedSecretManagerConfig:\n{store}"
            );
            std::fs::write(&path, yaml).unwrap();
            Config::load(Some(&path), &Overrides::default()).map_err(|err| format!("{err:#}"))
        };
        let err = load("    type: GCP\n").unwrap_err();
        assert!(err.contains("gcpConfig.project is required"), "{err}");
        let err =
            load("    type: Azure\n    azureConfig:\n      vaultURI: http://kv\n").unwrap_err();
        assert!(err.contains("must be an https:// URI"), "{err}");
        let gcp =
            load("    type: GCP\n    gcpConfig:\n      project: p\n      endpoint: https://e\n")
                .unwrap()
                .embedded
                .unwrap();
        assert_eq!(
            (gcp.gcp_project.as_deref(), gcp.gcp_endpoint.as_deref()),
            (Some("p"), Some("https://e"))
        );
        let azure = load(
            "    type: Azure\n    azureConfig:\n      vaultURI: https://kv.vault.azure.net/\n",
        )
        .unwrap()
        .embedded
        .unwrap();
        assert_eq!(
            azure.azure_vault_uri.as_deref(),
            Some("https://kv.vault.azure.net/")
        );
    }

    #[test]
    fn a_bad_value_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "webhook:\n  onError: sometimes\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("sometimes"), "{err:#}");
    }
}
