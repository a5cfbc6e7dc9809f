//! The policy's settings: the `webhook:` section of the configuration, with Flyte's key names.
//!
//! The host hands the whole section over as JSON, so keys that only the host reads (listenPort,
//! certDir, …) are ignored here, and a new policy can take new settings without a new host.

use std::fmt;

use serde::Deserialize;

/// A secret manager (Flyte's `secretManagerType` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagerType {
    /// The webhook's own mounted secrets; always tried first.
    Global,
    /// Kubernetes Secrets in the pod's namespace.
    K8s,
    /// HashiCorp Vault, through the Vault Agent Injector's annotations.
    Vault,
    /// AWS Secrets Manager, through a puller init container.
    Aws,
    /// GCP Secret Manager, through a puller init container.
    Gcp,
    /// Azure Key Vault, through a puller init container.
    Azure,
    /// Flyte 2's Embedded manager: the host looks the value up by the pod's scope.
    Embedded,
}

impl ManagerType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Global => "Global",
            Self::K8s => "K8s",
            Self::Vault => "Vault",
            Self::Aws => "AWS",
            Self::Gcp => "GCP",
            Self::Azure => "Azure",
            Self::Embedded => "Embedded",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        let all = [
            Self::Global,
            Self::K8s,
            Self::Vault,
            Self::Aws,
            Self::Gcp,
            Self::Azure,
            Self::Embedded,
        ];
        all.into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "unknown secret manager {name:?}; expected one of Global, K8s, Vault, AWS, \
                     GCP, Azure, Embedded"
                )
            })
    }
}

impl fmt::Display for ManagerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ManagerType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// CPU and memory, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// `resources:` of a puller init container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    // Alphabetical, as the patch has always printed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
}

impl Resources {
    /// Flyte's default for puller containers: requests = limits = 200m CPU, 500Mi memory.
    fn puller_default() -> Self {
        let list = ResourceList {
            cpu: Some("200m".to_owned()),
            memory: Some("500Mi".to_owned()),
        };
        Self {
            requests: Some(list.clone()),
            limits: Some(list),
        }
    }
}

/// Settings of a secret manager that runs a puller init container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullerSettings {
    pub sidecar_image: String,
    pub resources: Resources,
}

impl PullerSettings {
    fn with_image(image: &str) -> Self {
        Self {
            sidecar_image: image.to_owned(),
            resources: Resources::puller_default(),
        }
    }
}

/// Which Vault KV engine version a secret lives in when its `group_version` does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KvVersion {
    #[serde(rename = "1")]
    V1,
    #[serde(rename = "2")]
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VaultSettings {
    pub role: String,
    pub kv_version: KvVersion,
    /// Extra pod annotations; they override the webhook's defaults but not the pod's own.
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            role: "flyte".to_owned(),
            kv_version: KvVersion::V2,
            annotations: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Flyte 1's single manager; `secretManagerTypes` wins when both are set.
    pub secret_manager_type: Option<ManagerType>,
    /// Flyte 2's ordered list; the first manager that injects a secret wins.
    pub secret_manager_types: Option<Vec<ManagerType>>,
    /// The env var prefix of injected secrets as configured; [`Settings::secret_env_var_prefix`]
    /// is the one in use.
    #[serde(rename = "secretEnvVarPrefix")]
    pub configured_env_var_prefix: Option<String>,
    /// How the Global manager places its env vars, as configured; [`Settings::global_style`] is
    /// the one in use.
    #[serde(rename = "globalSecretsStyle")]
    pub configured_global_style: Option<GlobalStyle>,
    pub vault_secret_manager: VaultSettings,
    #[serde(deserialize_with = "puller_or_default::aws")]
    pub aws_secret_manager: PullerSettings,
    #[serde(deserialize_with = "puller_or_default::gcp")]
    pub gcp_secret_manager: PullerSettings,
    #[serde(deserialize_with = "puller_or_default::azure")]
    pub azure_secret_manager: PullerSettings,
    pub embedded_secret_manager_config: EmbeddedSettings,
    /// The env var prefix in use: as configured, else Flyte 2's `_UNION_` when Embedded is
    /// enabled and Flyte 1's `_FSEC_` otherwise.
    #[serde(skip)]
    pub secret_env_var_prefix: String,
    /// The Global manager's placement in use: as configured, else Flyte 2's when Embedded is
    /// enabled and Flyte 1's otherwise.
    #[serde(skip)]
    pub global_style: GlobalStyle,
}

/// How the Global manager adds its env vars: the one thing Flyte 1 and Flyte 2 do differently
/// with the same secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum GlobalStyle {
    /// Appended; the pod's own variable of the same name wins; `env_var` adds a variable holding
    /// the value (Flyte 1 ignores it; a task that sets it asked for it).
    #[default]
    Flyte1,
    /// Prepended, replacing the pod's variable of the same name; `env_var` ignored.
    Flyte2,
}

/// How the Embedded manager hands a value to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum EmbeddedMode {
    /// The pod refers to a Secret the host keeps in its namespace: no value in the pod spec.
    #[default]
    Mirror,
    /// Flyte 2's way, byte for byte: values in plain env vars and in an init container's env.
    Plaintext,
}

/// Flyte 2's `fileMountInitContainer`: the init container that writes FILE secrets in
/// Plaintext mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileMountInitContainer {
    pub image: String,
    pub resources: Resources,
    pub container_name: String,
}

impl Default for FileMountInitContainer {
    fn default() -> Self {
        let list = ResourceList {
            cpu: Some("100m".to_owned()),
            memory: Some("100Mi".to_owned()),
        };
        Self {
            image: "public.ecr.aws/docker/library/busybox:latest".to_owned(),
            resources: Resources {
                requests: Some(list.clone()),
                limits: Some(list),
            },
            container_name: "init-embedded-secret".to_owned(),
        }
    }
}

/// Flyte 2's `imagePullSecrets`: when a secret is found, the store namespace's image pull Secret
/// of the same scope and key, if there is one, is listed in the pod's `imagePullSecrets` (the
/// host copies it into the pod's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct ImagePullSecrets {
    pub enabled: bool,
}

/// Flyte 2's `embeddedSecretManagerConfig`, plus ours: `mode` and the scope authority
/// (`namespaceTemplate`, `organization`, `flyteNamespaces`, `flyteNamespaceCreators`,
/// `bindScopeToNamespace`). Which store holds the values (`type`, `awsConfig`…) is the host's
/// business; the policy only asks it for ids, and reads `k8sConfig.namespace` as Flyte's own
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EmbeddedSettings {
    pub mode: EmbeddedMode,
    /// The namespace of a project's pods when each project has its own (Flyte 1's layout):
    /// `{{ project }}` and `{{ domain }}` (and `{{ organization }}`) stand for the scope. Empty:
    /// no namespace is a project's own.
    pub namespace_template: String,
    /// The organization every project namespace belongs to, for clusters of one organization
    /// whose namespaces carry no `organization` label.
    pub organization: Option<String>,
    /// Namespaces where every project's pods run (Flyte 2's layout), whose pods' scope labels
    /// are honoured; `k8sConfig.namespace` when unset.
    pub flyte_namespaces: Option<Vec<String>>,
    /// When set, only pods created by these users or groups have their labels honoured in
    /// `flyteNamespaces`.
    pub flyte_namespace_creators: Creators,
    /// Off only where every pod creator may read every secret: then a pod's labels alone name
    /// its scope, in any namespace.
    pub bind_scope_to_namespace: bool,
    pub k8s_config: K8sConfig,
    pub file_mount_init_container: FileMountInitContainer,
    pub image_pull_secrets: ImagePullSecrets,
}

/// Flyte 2's `k8sConfig`: the namespace its secret service writes to, where every task pod of
/// Flyte 2 OSS also runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct K8sConfig {
    pub namespace: String,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            namespace: "flyte".to_owned(),
        }
    }
}

/// Users and groups, as the API server names them in an AdmissionReview's `userInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Creators {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            mode: EmbeddedMode::Mirror,
            namespace_template: "{{ project }}-{{ domain }}".to_owned(),
            organization: None,
            flyte_namespaces: None,
            flyte_namespace_creators: Creators::default(),
            bind_scope_to_namespace: true,
            k8s_config: K8sConfig::default(),
            file_mount_init_container: FileMountInitContainer::default(),
            image_pull_secrets: ImagePullSecrets::default(),
        }
    }
}

impl EmbeddedSettings {
    /// Who may read which scope, as these settings say.
    pub fn authority(&self) -> crate::authority::Authority {
        crate::authority::Authority {
            enforced: self.bind_scope_to_namespace,
            template: self.namespace_template.clone(),
            organization: self.organization.clone().filter(|org| !org.is_empty()),
            flyte_namespaces: self
                .flyte_namespaces
                .clone()
                .unwrap_or_else(|| vec![self.k8s_config.namespace.clone()]),
            creators: self.flyte_namespace_creators.clone(),
        }
    }
}

/// Flyte 1's env var prefix, and Flyte 2's.
pub const FLYTE_1_PREFIX: &str = "_FSEC_";
pub const FLYTE_2_PREFIX: &str = "_UNION_";

pub const AWS_IMAGE: &str = "docker.io/amazon/aws-secrets-manager-secret-sidecar:v0.1.4";
pub const GCP_IMAGE: &str = "gcr.io/google.com/cloudsdktool/cloud-sdk:alpine";
pub const AZURE_IMAGE: &str = "mcr.microsoft.com/azure-cli:cbl-mariner2.0";

/// Partial puller sections (`awsSecretManager: {sidecarImage: x}`) keep the other defaults.
mod puller_or_default {
    use super::{PullerSettings, Resources};
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Partial {
        sidecar_image: Option<String>,
        resources: Option<Resources>,
    }

    fn read<'de, D: Deserializer<'de>>(d: D, image: &str) -> Result<PullerSettings, D::Error> {
        let partial = Partial::deserialize(d)?;
        let mut settings = PullerSettings::with_image(image);
        if let Some(image) = partial.sidecar_image {
            settings.sidecar_image = image;
        }
        if let Some(resources) = partial.resources {
            settings.resources = resources;
        }
        Ok(settings)
    }

    pub fn aws<'de, D: Deserializer<'de>>(d: D) -> Result<PullerSettings, D::Error> {
        read(d, super::AWS_IMAGE)
    }
    pub fn gcp<'de, D: Deserializer<'de>>(d: D) -> Result<PullerSettings, D::Error> {
        read(d, super::GCP_IMAGE)
    }
    pub fn azure<'de, D: Deserializer<'de>>(d: D) -> Result<PullerSettings, D::Error> {
        read(d, super::AZURE_IMAGE)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            secret_manager_type: None,
            secret_manager_types: None,
            configured_env_var_prefix: None,
            configured_global_style: None,
            secret_env_var_prefix: FLYTE_1_PREFIX.to_owned(),
            global_style: GlobalStyle::Flyte1,
            vault_secret_manager: VaultSettings::default(),
            aws_secret_manager: PullerSettings::with_image(AWS_IMAGE),
            gcp_secret_manager: PullerSettings::with_image(GCP_IMAGE),
            azure_secret_manager: PullerSettings::with_image(AZURE_IMAGE),
            embedded_secret_manager_config: EmbeddedSettings::default(),
        }
    }
}

impl Settings {
    /// Reads and checks settings JSON. `null` or `""` mean all defaults.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let mut settings: Self = if json.trim().is_empty() {
            Self::default()
        } else {
            let value: Option<Self> =
                serde_json::from_str(json).map_err(|err| format!("invalid settings: {err}"))?;
            value.unwrap_or_default()
        };
        settings.resolve();
        settings.validate()?;
        Ok(settings)
    }

    /// Fills in the defaults that depend on other settings: a configuration that enables
    /// Embedded is a Flyte 2 one, and gets Flyte 2's prefix and Global placement unless it says
    /// otherwise.
    fn resolve(&mut self) {
        let flyte_2 = self.uses_embedded();
        self.secret_env_var_prefix = match (&self.configured_env_var_prefix, flyte_2) {
            (Some(prefix), _) => prefix.clone(),
            (None, true) => FLYTE_2_PREFIX.to_owned(),
            (None, false) => FLYTE_1_PREFIX.to_owned(),
        };
        self.global_style = match (self.configured_global_style, flyte_2) {
            (Some(style), _) => style,
            (None, true) => GlobalStyle::Flyte2,
            (None, false) => GlobalStyle::Flyte1,
        };
    }

    fn validate(&self) -> Result<(), String> {
        crate::names::check_env_var_name(&format!("{}X", self.secret_env_var_prefix))
            .map_err(|_| {
                format!(
                    "invalid settings: secretEnvVarPrefix {:?} cannot start an environment variable name",
                    self.secret_env_var_prefix
                )
            })?;
        if self
            .secret_manager_types
            .as_ref()
            .is_some_and(Vec::is_empty)
        {
            return Err("invalid settings: secretManagerTypes is empty".to_owned());
        }
        if self.vault_secret_manager.role.is_empty() {
            return Err("invalid settings: vaultSecretManager.role is empty".to_owned());
        }
        // The webhook reads these as secret requests: one added to a pod would be decoded (and
        // refused) when the pod comes back on reinvocation.
        let prefix = crate::annotations::ANNOTATION_PREFIX;
        if let Some(key) = self
            .vault_secret_manager
            .annotations
            .keys()
            .find(|key| key.starts_with(prefix))
        {
            return Err(format!(
                "invalid settings: vaultSecretManager.annotations may not set {key:?}: \
                 {prefix}* annotations are secret requests"
            ));
        }
        for (name, puller) in [
            ("awsSecretManager", &self.aws_secret_manager),
            ("gcpSecretManager", &self.gcp_secret_manager),
            ("azureSecretManager", &self.azure_secret_manager),
        ] {
            if puller.sidecar_image.trim().is_empty() {
                return Err(format!("invalid settings: {name}.sidecarImage is empty"));
            }
        }
        self.validate_embedded()
    }

    fn validate_embedded(&self) -> Result<(), String> {
        let embedded = &self.embedded_secret_manager_config;
        crate::authority::check_template(&embedded.namespace_template)
            .map_err(|err| format!("invalid settings: embeddedSecretManagerConfig.{err}"))?;
        if embedded
            .flyte_namespaces
            .iter()
            .flatten()
            .any(|namespace| namespace.is_empty())
        {
            return Err(
                "invalid settings: embeddedSecretManagerConfig.flyteNamespaces has an empty name"
                    .to_owned(),
            );
        }
        let init = &embedded.file_mount_init_container;
        if init.image.trim().is_empty() || init.container_name.trim().is_empty() {
            return Err(
                "invalid settings: embeddedSecretManagerConfig.fileMountInitContainer \
                 needs an image and a containerName"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether any secret may go to the Embedded manager.
    pub fn uses_embedded(&self) -> bool {
        self.managers().contains(&ManagerType::Embedded)
    }

    /// The managers to try, in order: Global first, then the configured ones (K8s by default).
    pub fn managers(&self) -> Vec<ManagerType> {
        let configured = match (&self.secret_manager_types, self.secret_manager_type) {
            (Some(list), _) => list.clone(),
            (None, Some(single)) => vec![single],
            (None, None) => vec![ManagerType::K8s],
        };
        let mut managers = vec![ManagerType::Global];
        for manager in configured {
            if !managers.contains(&manager) {
                managers.push(manager);
            }
        }
        managers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_flyte_1() {
        let settings = Settings::from_json("").unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.managers(), [ManagerType::Global, ManagerType::K8s]);
        assert_eq!(settings.secret_env_var_prefix, "_FSEC_");
        assert_eq!(Settings::from_json("null").unwrap(), Settings::default());
    }

    #[test]
    fn ordered_list_wins_over_the_single_type_and_global_comes_first() {
        let settings = Settings::from_json(
            r#"{"secretManagerType": "K8s", "secretManagerTypes": ["vault", "Global", "AWS"],
                "listenPort": 9443, "certDir": "/x"}"#,
        )
        .unwrap();
        assert_eq!(
            settings.managers(),
            [ManagerType::Global, ManagerType::Vault, ManagerType::Aws]
        );
    }

    #[test]
    fn partial_puller_sections_keep_defaults() {
        let settings =
            Settings::from_json(r#"{"gcpSecretManager": {"sidecarImage": "my/gcloud:1"}}"#)
                .unwrap();
        assert_eq!(settings.gcp_secret_manager.sidecar_image, "my/gcloud:1");
        assert_eq!(
            settings.gcp_secret_manager.resources,
            Resources::puller_default()
        );
        assert_eq!(settings.aws_secret_manager.sidecar_image, AWS_IMAGE);
    }

    #[test]
    fn rejects_bad_settings_with_reasons() {
        for (json, reason) in [
            (
                r#"{"embeddedSecretManagerConfig": {"mode": "Copy"}}"#,
                "unknown variant",
            ),
            (
                r#"{"embeddedSecretManagerConfig": {"namespaceTemplate": "{{ team }}"}}"#,
                "namespaceTemplate",
            ),
            (
                r#"{"embeddedSecretManagerConfig": {"imagePullSecrets": {"enabled": "yes"}}}"#,
                "invalid type",
            ),
            (
                r#"{"secretManagerType": "Keychain"}"#,
                "unknown secret manager",
            ),
            (r#"{"secretManagerTypes": []}"#, "is empty"),
            (r#"{"secretEnvVarPrefix": "1X"}"#, "secretEnvVarPrefix"),
            (
                r#"{"vaultSecretManager": {"kvVersion": "3"}}"#,
                "invalid settings",
            ),
            (
                r#"{"awsSecretManager": {"sidecarImage": " "}}"#,
                "sidecarImage is empty",
            ),
            (r#"{"awsSecretManager": {"image": "x"}}"#, "unknown field"),
            (
                r#"{"vaultSecretManager": {"annotations": {"flyte.secrets/s0x": "y"}}}"#,
                "are secret requests",
            ),
            ("[1]", "invalid settings"),
        ] {
            let err = Settings::from_json(json).unwrap_err();
            assert!(err.contains(reason), "{json}: {err}");
        }
    }
}
