//! The policy in service: a compiled policy with the settings it was checked against, swapped
//! whole on reload (a request keeps the one it started with), and the checks a policy passes
//! before it serves.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Call, Mutation, Mutator, Policy, Review, Services, block_on, probe_review};
use crate::global_secrets::GlobalSecrets;
use crate::secrets::embedded::Embedded;

/// A policy with the settings it was checked against: they change together.
pub struct Serving {
    pub policy: Arc<Policy>,
    pub settings: Arc<str>,
}

/// The policy in service, with its settings and the global secrets. Each request loads the
/// current [`Serving`] once, so a swap never changes a request midway.
pub struct Active {
    serving: arc_swap::ArcSwap<Serving>,
    globals: arc_swap::ArcSwap<GlobalSecrets>,
    embedded: Option<Arc<Embedded>>,
}

impl Active {
    /// Puts `policy` in service after it accepts `settings` and answers the probe.
    pub fn new(
        policy: Policy,
        settings: &str,
        globals: impl Into<Arc<GlobalSecrets>>,
    ) -> Result<Self> {
        admit(&policy, settings)?;
        Ok(Self {
            serving: arc_swap::ArcSwap::from_pointee(Serving {
                policy: Arc::new(policy),
                settings: settings.into(),
            }),
            globals: arc_swap::ArcSwap::new(globals.into()),
            embedded: None,
        })
    }

    /// Gives the policy the Embedded manager's store.
    pub fn with_embedded(mut self, embedded: Option<Arc<Embedded>>) -> Self {
        self.embedded = embedded;
        self
    }

    /// The digest of the policy in service.
    pub fn digest(&self) -> String {
        self.serving.load().policy.digest.clone()
    }

    /// The policy and settings in service.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Swaps in `policy` with `settings` if it passes [`admit`]; otherwise nothing changes.
    /// The Embedded manager's scope authority follows the new settings (`parsed`: the same, as
    /// the policy library reads them).
    pub fn replace(
        &self,
        policy: Arc<Policy>,
        settings: &str,
        parsed: Option<&secrets_policy::Settings>,
    ) -> Result<()> {
        admit(&policy, settings)?;
        let authority = match (&self.embedded, parsed) {
            (Some(_), Some(parsed)) => Some(parsed.embedded_secret_manager_config.authority()),
            (Some(_), None) => anyhow::bail!("the policy library cannot read these settings"),
            (None, _) => None,
        };
        self.serving.store(Arc::new(Serving {
            policy,
            settings: settings.into(),
        }));
        if let (Some(embedded), Some(authority)) = (&self.embedded, authority) {
            embedded.set_authority(authority);
        }
        Ok(())
    }

    /// Replaces the global secrets snapshot.
    pub fn set_globals(&self, globals: GlobalSecrets) {
        self.globals.store(Arc::new(globals));
    }
}

/// The scope authority `settings` describe, as the policy library reads them: the host holds
/// every store read and mirror to it, whatever the policy in service.
pub fn authority(settings: &str) -> Result<secrets_policy::authority::Authority> {
    let settings = secrets_policy::Settings::from_json(settings).map_err(anyhow::Error::msg)?;
    Ok(settings.embedded_secret_manager_config.authority())
}

/// The checks a policy passes before it serves: settings accepted, probe answered. Off the request
/// path: waits on this thread.
pub fn admit(policy: &Policy, settings: &str) -> Result<()> {
    policy.validate_settings(settings)?;
    let call = Call::unbounded();
    block_on(policy.mutate(settings, &probe_review(), Services::default(), &call))
        .map_err(anyhow::Error::from)
        .context("the policy failed its self-check")?;
    Ok(())
}

impl Mutator for Active {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a Call) -> Mutation<'a> {
        Box::pin(async move {
            let serving = self.serving.load_full();
            let services = Services {
                globals: self.globals.load_full(),
                embedded: self.embedded.clone(),
            };
            serving
                .policy
                .mutate(&serving.settings, review, services, call)
                .await
        })
    }
}
