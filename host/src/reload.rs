//! Hot swap: the policy file and the configuration are watched (a directory watch sees the
//! `..data` symlink swap of ConfigMap and Secret volumes), polled as a fallback, and reloaded on
//! SIGHUP. A new policy is compiled off the request path and put in service only after it passes
//! the same checks as at start; anything that fails keeps the policy in service.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::policy::{self, Active, Runtime};
use crate::watch::Changes;

pub struct Reloader {
    pub runtime: Runtime,
    pub active: Arc<Active>,
    /// The policy file; `None` serves the embedded policy.
    pub policy: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    pub metrics: Arc<Metrics>,
    /// The (digest, settings) last rejected, so a bad file is reported once, not every poll.
    rejected: Mutex<Option<(String, String)>>,
    /// Whether clients must present a certificate (`--client-ca`), for the settings' warnings.
    pub client_ca: bool,
    /// The configuration the server started with: keys only a restart applies (the Embedded
    /// manager's store among them) are compared to it.
    started: Config,
    /// The keys last reported as changed but not applied, so each change is reported once.
    unapplied: Mutex<Vec<&'static str>>,
}

/// What one reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Swapped { digest: String },
}

impl Reloader {
    /// Watches `policy` and `config` (read with `overrides`) for the server that `started` with
    /// that configuration.
    pub fn new(
        runtime: Runtime,
        active: Arc<Active>,
        policy: Option<PathBuf>,
        config: Option<PathBuf>,
        overrides: Overrides,
        started: Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            runtime,
            active,
            policy,
            config,
            overrides,
            metrics,
            rejected: Mutex::new(None),
            client_ca: false,
            started,
            unapplied: Mutex::new(Vec::new()),
        }
    }

    /// Reads the files and swaps if they changed and pass. Blocking: compiles.
    pub fn reload(&self) -> Result<Reloaded> {
        let config = Config::load(self.config.as_deref(), &self.overrides)?;
        self.report_unapplied(&config);
        if config.embedded != self.started.embedded {
            anyhow::bail!(
                "the Embedded manager's store settings changed (secretManagerTypes, \
                 embeddedSecretManagerConfig.type or k8sConfig, cacheInvalidationPort): \
                 restart the webhook to apply them"
            );
        }
        let settings = config.settings.clone();
        let wasm = match &self.policy {
            Some(path) => Cow::Owned(policy::source::read(path)?),
            None => Cow::Borrowed(policy::EMBEDDED),
        };
        let digest = format!("{:x}", Sha256::digest(&wasm));
        let serving = self.active.serving();
        let same_policy = serving.policy.digest() == digest;
        if same_policy && *serving.settings == *settings {
            return Ok(Reloaded::Unchanged);
        }
        let key = (digest.clone(), settings.clone());
        let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if rejected.as_ref() == Some(&key) {
            return Ok(Reloaded::Unchanged);
        }
        let candidate = if same_policy {
            Ok(serving.policy.clone())
        } else {
            self.runtime.compile(&wasm).map(Arc::new)
        };
        let parsed = config.library_settings.as_ref();
        match candidate.and_then(|policy| self.active.replace(policy, &settings, parsed)) {
            Ok(()) => {
                for warning in crate::config::warnings(parsed, self.client_ca) {
                    tracing::warn!("{warning}");
                }
                *rejected = None;
                Ok(Reloaded::Swapped { digest })
            }
            Err(err) => {
                *rejected = Some(key);
                Err(err)
            }
        }
    }

    /// Says, once per change, which keys of `config` the running server keeps at their old value.
    fn report_unapplied(&self, config: &Config) {
        let keys = self.started.unapplied_in(config);
        let mut reported = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        if *reported == keys {
            return;
        }
        for key in &keys {
            tracing::warn!(
                key,
                "the configuration changed a key the running server cannot change: it keeps \
                 the value it started with until restarted"
            );
            self.metrics.reload_unapplied(key);
        }
        *reported = keys;
    }

    /// Reloads on file events, every `poll`, and on SIGHUP, until the process ends.
    pub async fn run(self: Arc<Self>, poll: Duration) {
        let files: Vec<&Path> = [&self.policy, &self.config]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        let mut changes = Changes::new(&files, poll).on_hangup();
        changes.next().await;
        loop {
            changes.next().await;
            let reloader = self.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(Reloaded::Unchanged)) => {}
                Ok(Ok(Reloaded::Swapped { digest })) => {
                    tracing::info!(policy = digest, "policy and settings swapped in");
                    self.metrics.reload(true);
                    self.metrics.policy_in_service(&digest);
                }
                Ok(Err(err)) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "reload rejected; keeping the policy in service"
                    );
                    self.metrics.reload(false);
                }
                Err(err) => tracing::error!(error = %err, "reload task failed"),
            }
        }
    }
}
