//! The policy library called directly, without wasm: the baseline the benchmarks compare the
//! component against (`serve --native-policy`), with the same host answers and writes.

use anyhow::Result;

use super::host::write_mirrors;
use super::{
    Call, Denied, Injection, Lookups, Mutation, Mutator, Outcome, Patched, Review, Services,
    block_on, creator,
};
use crate::secrets::embedded::Asker;

/// The policy library called directly, without wasm: the baseline the benchmarks compare the
/// component against (`serve --native-policy`). Same settings, same global secrets.
pub struct Native {
    settings: secrets_policy::Settings,
    services: Services,
}

impl Native {
    pub fn new(settings: &str, services: Services) -> Result<Self> {
        let settings = secrets_policy::Settings::from_json(settings).map_err(anyhow::Error::msg)?;
        Ok(Self::with_settings(settings, services))
    }

    /// With settings already parsed.
    pub fn with_settings(settings: secrets_policy::Settings, services: Services) -> Self {
        Self { settings, services }
    }
}

/// The services as the library asks for them, recording lookups as the component's imports do.
struct NativeHost<'a> {
    services: &'a Services,
    deadline: tokio::time::Instant,
    asker: Asker<'a>,
    looked_up: std::cell::RefCell<Lookups>,
}

impl secrets_policy::GlobalSecrets for NativeHost<'_> {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        self.services.globals.lookup(group, key).map(str::to_owned)
    }
}

impl secrets_policy::SecretStore for NativeHost<'_> {
    fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let embedded = self.services.store()?;
        // The K8s store answers from memory, so this does not wait; benchmarks only.
        let value = block_on(embedded.lookup(&self.asker, id, self.deadline));
        self.looked_up.borrow_mut().record(id, &value);
        value
    }
}

impl secrets_policy::Cluster for NativeHost<'_> {
    fn labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        self.services.namespace_labels(name)
    }

    fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        let exists = self.services.image_pull_secret(name);
        self.looked_up.borrow_mut().record_pull(name, &exists);
        exists
    }
}

impl Mutator for Native {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a Call) -> Mutation<'a> {
        let host = NativeHost {
            services: &self.services,
            deadline: call.deadline,
            asker: Asker {
                namespace: &review.namespace,
                creator: creator(&review.creator),
            },
            looked_up: Default::default(),
        };
        let admission = secrets_policy::Admission {
            namespace: &review.namespace,
            creator: creator(&review.creator),
        };
        let library = secrets_policy::Host {
            globals: &host,
            store: &host,
            cluster: &host,
        };
        let outcome = outcome_of(secrets_policy::mutate_review(
            &self.settings,
            &admission,
            &review.object,
            library,
        ));
        let looked_up = host.looked_up.into_inner();
        Box::pin(async move {
            write_mirrors(review, &outcome, &looked_up, &self.services, "native", call).await?;
            Ok(outcome)
        })
    }
}

/// The library's outcome in the world's terms, exactly as guest/component translates it.
pub fn outcome_of(outcome: secrets_policy::Outcome) -> Outcome {
    match outcome {
        secrets_policy::Outcome::Unchanged => Outcome::Unchanged(Vec::new()),
        secrets_policy::Outcome::Patched(patched) => Outcome::Patched(Patched {
            patch: patched.patch,
            warnings: Vec::new(),
            injections: patched
                .injections
                .into_iter()
                .map(|injection| Injection {
                    group: injection.group,
                    key: injection.key,
                    manager: injection.manager.name().to_owned(),
                })
                .collect(),
            mirrors: patched.mirrors,
            pull_secrets: patched.pull_secrets,
        }),
        secrets_policy::Outcome::Denied(denial) => Outcome::Denied(Denied {
            code: denial.code,
            message: denial.message,
        }),
    }
}
