//! The policy's settings: the webhook's `webhook:` section, read by the library exactly as the
//! component reads it, plus `globalSecrets`.
//!
//! The webhook's Global manager reads its secrets from the host's files and env vars; a
//! Kubewarden policy has no such host capability, so the values can only come in the settings
//! (see docs/kubewarden.md for what that costs). Without `globalSecrets`, Global holds nothing and
//! every secret falls through to the configured managers.

use std::collections::BTreeMap;

use kubewarden_policy_sdk::settings::SettingsValidationResponse;
use kubewarden_policy_sdk::wapc_guest::CallResult;
use secrets_policy::Settings;
use serde_json::{Map, Value};

/// The settings key holding the Global manager's secrets: `{<group>: {<key>: <value>}}`.
pub const GLOBAL_SECRETS: &str = "globalSecrets";

pub struct PolicySettings {
    pub core: Settings,
    pub globals: SettingsGlobals,
}

/// Global secrets from the settings. Looked up by exact group and key, like the webhook's
/// `<dir>/<group>/<key>` files.
#[derive(Default)]
pub struct SettingsGlobals(BTreeMap<String, BTreeMap<String, String>>);

impl secrets_policy::GlobalSecrets for SettingsGlobals {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        self.0.get(group)?.get(key).cloned()
    }
}

impl PolicySettings {
    /// Reads and checks the settings; `null` (no settings at all) means all defaults.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let mut object = match value {
            Value::Null => Map::new(),
            Value::Object(object) => object.clone(),
            other => return Err(format!("invalid settings: expected an object, got {other}")),
        };
        // Removed before the library sees the rest, so it never depends on tolerating the key.
        let globals = match object.remove(GLOBAL_SECRETS) {
            None | Some(Value::Null) => SettingsGlobals::default(),
            Some(globals) => read_globals(globals)?,
        };
        let core = Settings::from_json(&Value::Object(object).to_string())?;
        if core.uses_embedded() {
            // A waPC policy cannot reach a secret store, and Plaintext through Kubewarden's
            // context-aware lookups would put values in the pod spec and read Secrets across
            // namespaces with the policy-server's rights: refused rather than half done.
            return Err(
                "invalid settings: secret manager \"Embedded\" needs the secrets-webhook \
                 host (it looks secrets up and keeps mirror Secrets); the Kubewarden policy \
                 supports Global, K8s, Vault, AWS, GCP and Azure"
                    .to_owned(),
            );
        }
        Ok(Self { core, globals })
    }
}

fn read_globals(value: Value) -> Result<SettingsGlobals, String> {
    let groups: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_value(value)
        .map_err(|err| {
            format!(
                "invalid settings: {GLOBAL_SECRETS} must map groups to {{key: value}} maps of \
                 strings: {err}"
            )
        })?;
    for (group, keys) in &groups {
        // The webhook never finds a secret with an empty group or key; refuse what cannot match.
        if group.is_empty() || keys.keys().any(String::is_empty) {
            return Err(format!(
                "invalid settings: {GLOBAL_SECRETS} has an empty group or key (group {group:?})"
            ));
        }
    }
    Ok(SettingsGlobals(groups))
}

/// waPC `validate_settings`: the settings JSON in, a `SettingsValidationResponse` out. Bad input
/// is an invalid answer, never a waPC error, so kwctl and policy-server show our message.
pub fn validate_settings(payload: &[u8]) -> CallResult {
    let checked = serde_json::from_slice::<Value>(payload)
        .map_err(|err| format!("invalid settings: not JSON: {err}"))
        .and_then(|value| PolicySettings::from_value(&value));
    let response = match checked {
        Ok(_) => SettingsValidationResponse {
            valid: true,
            message: None,
        },
        Err(message) => SettingsValidationResponse {
            valid: false,
            message: Some(message),
        },
    };
    Ok(serde_json::to_vec(&response)?)
}
