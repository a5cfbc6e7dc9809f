//! `mutation.wasm`: secrets-policy behind the `secrets-webhook:policy/mutation` world.
//! Only translation lives here; every decision is the library's.
#![cfg(target_arch = "wasm32")]

use secrets_policy::{Outcome, Settings};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Bump = allocator::Bump::new();

wit_bindgen::generate!({
    path: "../../wit",
    world: "mutation",
});

use exports::secrets_webhook::policy::policy::Guest;
use secrets_webhook::policy::global_secrets;
use secrets_webhook::policy::types::{self, Review};

struct Policy;

struct HostGlobals;

impl secrets_policy::GlobalSecrets for HostGlobals {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        global_secrets::lookup(group, key)
    }
}

impl Guest for Policy {
    fn validate_settings(settings: String) -> Result<(), String> {
        Settings::from_json(&settings).map(drop)
    }

    fn mutate(settings: String, review: Review) -> Result<types::Outcome, String> {
        let settings = Settings::from_json(&settings)?;
        Ok(
            match secrets_policy::mutate_json(&settings, &review.object, &HostGlobals) {
                Outcome::Unchanged => types::Outcome::Unchanged(Vec::new()),
                Outcome::Patched(patched) => types::Outcome::Patched(types::Patched {
                    patch: patched.patch,
                    warnings: Vec::new(),
                    injections: patched
                        .injections
                        .into_iter()
                        .map(|injection| types::Injection {
                            group: injection.group,
                            key: injection.key,
                            manager: injection.manager.name().to_owned(),
                        })
                        .collect(),
                }),
                Outcome::Denied(denial) => types::Outcome::Denied(types::Denied {
                    code: denial.code,
                    message: denial.message,
                }),
            },
        )
    }
}

export!(Policy);
