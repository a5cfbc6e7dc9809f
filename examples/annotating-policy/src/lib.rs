//! An alternative policy, to show how operators ship their own: the default injection, plus an
//! annotation `secrets-webhook.io/injected` listing the secret annotations it acted on, so
//! `kubectl get pod -o yaml` shows which requests the webhook handled.
//!
//! Build: `cargo build --release -p annotating-policy --target wasm32-wasip2`, then serve it with
//! `secrets-webhook serve --policy target/wasm32-wasip2/release/annotating_policy.wasm`.
#![cfg(target_arch = "wasm32")]

use secrets_policy::{Decision, Settings};
use serde_json::Value;

wit_bindgen::generate!({
    path: "../../wit",
    world: "mutation",
});

use exports::secrets_webhook::policy::policy::Guest;
use secrets_webhook::policy::global_secrets;
use secrets_webhook::policy::types::{self, Review};

pub const ANNOTATION: &str = "secrets-webhook.io/injected";

struct Annotating;

struct HostGlobals;

impl secrets_policy::GlobalSecrets for HostGlobals {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        global_secrets::lookup(group, key)
    }
}

impl Guest for Annotating {
    fn validate_settings(settings: String) -> Result<(), String> {
        Settings::from_json(&settings).map(drop)
    }

    fn mutate(settings: String, review: Review) -> Result<types::Outcome, String> {
        let settings = Settings::from_json(&settings)?;
        let pod: Value = serde_json::from_str(&review.object).map_err(|err| err.to_string())?;
        Ok(
            match secrets_policy::decide(&settings, &pod, &HostGlobals) {
                Decision::Unchanged => types::Outcome::Unchanged(Vec::new()),
                Decision::Denied(denial) => types::Outcome::Denied(types::Denied {
                    code: denial.code,
                    message: denial.message,
                }),
                Decision::Mutated(mut mutated) => {
                    let names: Vec<&str> = pod["metadata"]["annotations"]
                        .as_object()
                        .into_iter()
                        .flat_map(|a| a.keys())
                        .map(String::as_str)
                        .filter(|k| k.starts_with(secrets_policy::annotations::ANNOTATION_PREFIX))
                        .collect();
                    let list = names.join(",");
                    if let Some(annotations) = mutated["metadata"]["annotations"].as_object_mut() {
                        annotations.insert(ANNOTATION.to_owned(), Value::String(list));
                    }
                    let patch = json_patch_of(&pod, &mutated)?;
                    // `decide` does not say which manager injected what, so none are reported.
                    types::Outcome::Patched(types::Patched {
                        patch,
                        warnings: Vec::new(),
                        injections: Vec::new(),
                        mirrors: Vec::new(),
                        pull_secrets: Vec::new(),
                    })
                }
            },
        )
    }
}

fn json_patch_of(before: &Value, after: &Value) -> Result<String, String> {
    serde_json::to_string(&secrets_policy::mutation::diff(before, after))
        .map_err(|err| err.to_string())
}

export!(Annotating);
