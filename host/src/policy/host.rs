//! What a guest may call — global secrets, the Embedded manager's store and the cluster, each
//! answered for the review's own pod — and what the host writes after the call: the mirrors and
//! image pull Secret copies the patch relies on, only of what it handed the policy.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use super::{Call, Outcome, PolicyFailure, Review, UserInfo, bindings, creator};
use crate::global_secrets::GlobalSecrets;
use crate::secrets::embedded::{Asker, Embedded};

/// What the host offers a policy: global secrets, and the Embedded manager's store when the
/// settings use it.
#[derive(Clone, Default)]
pub struct Services {
    pub globals: Arc<GlobalSecrets>,
    pub embedded: Option<Arc<Embedded>>,
}

/// The answers both front doors give the policy (the component's imports here, the native
/// baseline's traits in `native`), and the words they refuse with.
impl Services {
    pub(super) fn store(&self) -> Result<&Embedded, String> {
        match &self.embedded {
            Some(embedded) => Ok(embedded),
            None => Err("this host has no secret store for the Embedded manager".to_owned()),
        }
    }

    pub(super) fn namespace_labels(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        match &self.embedded {
            Some(embedded) => embedded.namespace_labels(name),
            None => Err("this host does not follow namespaces".to_owned()),
        }
    }

    pub(super) fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        self.store()?.image_pull_secret(name)
    }
}

/// Per-request state: the memory cap, the services, the pod asked about, and what the policy
/// looked up.
pub(super) struct GuestState {
    pub(super) cap: MemoryCap,
    pub(super) services: Services,
    /// The review's namespace and creator: the store is read only for what they may read.
    pub(super) namespace: String,
    pub(super) creator: UserInfo,
    /// The call's deadline and progress.
    pub(super) call: Call,
    /// Values the policy was given, by secret id: the only ones it may have mirrored.
    pub(super) looked_up: Lookups,
}

/// Secret values handed to the policy in one call, and the image pull Secrets it was told
/// exist. Never printed.
#[derive(Default)]
pub struct Lookups(
    std::collections::HashMap<String, Vec<u8>>,
    std::collections::HashSet<String>,
);

impl Lookups {
    pub(super) fn record(&mut self, id: &str, value: &Result<Option<Vec<u8>>, String>) {
        if let Ok(Some(value)) = value {
            self.0.insert(id.to_owned(), value.clone());
        }
    }

    pub(super) fn record_pull(&mut self, name: &str, exists: &Result<bool, String>) {
        if let Ok(true) = exists {
            self.1.insert(name.to_owned());
        }
    }

    /// The image pull Secrets `outcome` asks to copy, unless it names one the host never said
    /// exists, or one that is not the pull Secret of a secret it read (whose scope the pod may
    /// read, or the host would not have read it).
    fn pull_secrets(&self, outcome: &Outcome) -> Result<Vec<String>, String> {
        let Outcome::Patched(patched) = outcome else {
            return Ok(Vec::new());
        };
        if patched.pull_secrets.is_empty() {
            return Ok(Vec::new());
        }
        let read: std::collections::HashSet<String> = self
            .0
            .keys()
            .filter_map(|id| crate::secrets::scope::parse_secret_id(id))
            .map(|(scope, key)| secrets_policy::scope::pull_secret_name(&scope, &key))
            .collect();
        let unasked = patched
            .pull_secrets
            .iter()
            .find(|name| !self.1.contains(*name) || !read.contains(*name));
        match unasked {
            Some(name) => Err(format!(
                "asks to copy image pull Secret {name:?}, which it did not look up for a secret \
                 it read"
            )),
            None => Ok(patched.pull_secrets.clone()),
        }
    }

    /// The mirrors `outcome` asks for, with their values, unless it names one the policy never
    /// looked up (a policy asks for what it resolved, nothing else).
    fn mirrors(&self, outcome: &Outcome) -> Result<Vec<(String, Vec<u8>)>, String> {
        let Outcome::Patched(patched) = outcome else {
            return Ok(Vec::new());
        };
        patched
            .mirrors
            .iter()
            .map(|id| match self.0.get(id) {
                Some(value) => Ok((id.clone(), value.clone())),
                None => Err(format!(
                    "asks for a mirror of {id:?}, which it did not look up"
                )),
            })
            .collect()
    }
}

/// Writes the mirrors and copies the image pull Secrets `outcome` relies on — with what the
/// policy looked up (`looked_up`), through `services` — before the pod is admitted, within the
/// call's deadline; nothing on a dry run.
pub(super) async fn write_mirrors(
    review: &Review,
    outcome: &Outcome,
    looked_up: &Lookups,
    services: &Services,
    digest: &str,
    call: &Call,
) -> Result<(), PolicyFailure> {
    let refused = |reason| PolicyFailure::Error {
        digest: digest.to_owned(),
        reason,
    };
    let mirrors = looked_up.mirrors(outcome).map_err(refused)?;
    let pulls = looked_up.pull_secrets(outcome).map_err(refused)?;
    if (mirrors.is_empty() && pulls.is_empty()) || review.dry_run {
        return Ok(());
    }
    let Some(embedded) = &services.embedded else {
        return Err(PolicyFailure::Mirrors {
            reason: "this host has no secret store".to_owned(),
        });
    };
    let failed = |err: anyhow::Error| PolicyFailure::Mirrors {
        reason: format!("{err:#}"),
    };
    let namespace = &review.namespace;
    call.progress
        .set(format!("writing the pod's mirror Secrets in {namespace}"));
    let written = async {
        embedded.write_mirrors(namespace, &mirrors).await?;
        embedded.copy_pull_secrets(namespace, &pulls).await
    };
    // The review's own deadline (admission) bounds this too, and names it from the progress.
    let result = written.await;
    call.progress.clear();
    result.map_err(failed)
}

/// Refuses growth past the limit and remembers that it did: the guest's allocator then aborts
/// with a bare `unreachable` trap, which alone would not say why.
pub(super) struct MemoryCap {
    pub(super) limit: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let fits = desired <= self.limit;
        self.hit |= !fits;
        Ok(fits)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let fits = desired <= MAX_TABLE_ELEMENTS;
        self.hit |= !fits;
        Ok(fits)
    }
}

/// Tables hold function references; no honest policy needs more.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl bindings::secrets_webhook::policy::types::Host for GuestState {}

impl bindings::secrets_webhook::policy::global_secrets::Host for GuestState {
    fn lookup(&mut self, group: String, key: String) -> Option<String> {
        self.services
            .globals
            .lookup(&group, &key)
            .map(str::to_owned)
    }
}

impl bindings::secrets_webhook::policy::secret_store::Host for GuestState {
    async fn lookup(&mut self, secret_id: String) -> Result<Option<Vec<u8>>, String> {
        let embedded = self.services.store()?;
        let asker = Asker {
            namespace: &self.namespace,
            creator: creator(&self.creator),
        };
        self.call.progress.set(format!(
            "reading secret {secret_id} from the {} store",
            embedded.store_name()
        ));
        let value = embedded
            .lookup(&asker, &secret_id, self.call.deadline)
            .await;
        self.call.progress.clear();
        self.looked_up.record(&secret_id, &value);
        value
    }
}

impl bindings::secrets_webhook::policy::cluster::Host for GuestState {
    fn namespace_labels(&mut self, name: String) -> Result<Option<Vec<(String, String)>>, String> {
        self.services.namespace_labels(&name)
    }

    fn image_pull_secret(&mut self, name: String) -> Result<bool, String> {
        let exists = self.services.image_pull_secret(&name);
        self.looked_up.record_pull(&name, &exists);
        exists
    }
}
