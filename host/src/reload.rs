//! Hot swap: the policy file and the configuration are watched (a directory watch sees the
//! `..data` symlink swap of ConfigMap and Secret volumes), polled as a fallback, and reloaded on
//! SIGHUP. A new policy is compiled off the request path and put in service only after it passes
//! the same checks as at start; anything that fails keeps the policy in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::policy::{self, Active, Runtime};

/// Files change in several steps; wait for them to settle before reading.
const SETTLE: Duration = Duration::from_millis(200);

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
}

/// What one reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Swapped { digest: String },
}

impl Reloader {
    pub fn new(
        runtime: Runtime,
        active: Arc<Active>,
        policy: Option<PathBuf>,
        config: Option<PathBuf>,
        overrides: Overrides,
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
        }
    }

    /// Reads the files and swaps if they changed and pass. Blocking: compiles.
    pub fn reload(&self) -> Result<Reloaded> {
        let settings = Config::load(self.config.as_deref(), &self.overrides)?.settings;
        let wasm = match &self.policy {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
            }
            None => policy::EMBEDDED.to_vec(),
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
        match candidate.and_then(|policy| self.active.replace(policy, &settings)) {
            Ok(()) => {
                *rejected = None;
                Ok(Reloaded::Swapped { digest })
            }
            Err(err) => {
                *rejected = Some(key);
                Err(err)
            }
        }
    }

    /// Reloads on file events, every `poll`, and on SIGHUP, until the process ends.
    pub async fn run(self: Arc<Self>, poll: Duration) {
        let (wake, mut woken) = mpsc::channel::<()>(1);
        let _watcher = self.watch(wake.clone());
        spawn_sighup(wake);
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticks.tick().await;
        loop {
            tokio::select! {
                Some(()) = woken.recv() => tokio::time::sleep(SETTLE).await,
                _ = ticks.tick() => {}
            }
            while woken.try_recv().is_ok() {}
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

    /// Watches the directories holding the policy and the configuration.
    fn watch(&self, wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let dirs: Vec<PathBuf> = [&self.policy, &self.config]
            .into_iter()
            .flatten()
            .map(|file| parent_dir(file))
            .collect();
        if dirs.is_empty() {
            return None;
        }
        let handler = move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = wake.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch files; polling only");
                return None;
            }
        };
        for dir in dirs {
            if let Err(err) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot watch; polling only");
            }
        }
        Some(watcher)
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn spawn_sighup(wake: mpsc::Sender<()>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the policy and settings");
            let _ = wake.try_send(());
        }
    });
}
