//! `mutation.wasm`: secrets-policy behind the `secrets-webhook:policy/mutation` world.
//! Only translation lives here; every decision is the library's.
#![cfg(target_arch = "wasm32")]

use secrets_policy::authority::Creator;
use secrets_policy::{Admission, Host, Outcome, Settings};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Bump = allocator::Bump::new();

wit_bindgen::generate!({
    path: "../../wit",
    world: "mutation",
});

use exports::secrets_webhook::policy::policy::Guest;
use secrets_webhook::policy::types::{self, Review};
use secrets_webhook::policy::{cluster, global_secrets, secret_store};

struct Policy;

/// The host's capabilities, as the library asks for them.
struct Imports;

impl secrets_policy::GlobalSecrets for Imports {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        global_secrets::lookup(group, key)
    }
}

impl secrets_policy::SecretStore for Imports {
    fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        secret_store::lookup(id)
    }
}

impl secrets_policy::Cluster for Imports {
    fn labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        cluster::namespace_labels(name)
    }

    fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        cluster::image_pull_secret(name)
    }
}

impl Guest for Policy {
    fn validate_settings(settings: String) -> Result<(), String> {
        Settings::from_json(&settings).map(drop)
    }

    fn mutate(settings: String, review: Review) -> Result<types::Outcome, String> {
        let settings = Settings::from_json(&settings)?;
        let admission = Admission {
            namespace: &review.namespace,
            creator: Creator {
                username: &review.creator.username,
                groups: &review.creator.groups,
            },
        };
        let host = Host {
            globals: &Imports,
            store: &Imports,
            cluster: &Imports,
        };
        Ok(
            match secrets_policy::mutate_review(&settings, &admission, &review.object, host) {
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
                    mirrors: patched.mirrors,
                    pull_secrets: patched.pull_secrets,
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
