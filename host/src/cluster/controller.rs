//! The elected replica's work: keep the certificate Secret fresh and the webhook configuration
//! as it should be. One replica at a time holds a `coordination.k8s.io` Lease and does the
//! writing, so replicas never undo each other (one with a stale view of the Secret would put an
//! old `caBundle` back); the others follow and take over within the Lease's duration.
//!
//! Each pass runs when something changed (the Secret or the configuration, through the
//! watches), when a certificate is about to enter its renewal window, or on a slow tick.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::registration::{self, WebhookTarget};
use crate::certs::secret::{self, CertSecret, Outcome, Trust};
use crate::certs::{self, Bundle};
use crate::metrics::Metrics;
use crate::tasks::stopped;

/// Even with nothing to do, look again this often.
const TICK: Duration = Duration::from_secs(300);
/// Without a webhook configuration of ours to look at, a new CA is trusted after this long in
/// `ca.crt` (kubelet volume refreshes and outside tools catch up by then).
const UNSEEN_TRUST: time::Duration = time::Duration::minutes(2);
/// A Lease holder renews every few seconds; another replica takes over after `LEASE_SECONDS` of
/// silence.
const LEASE_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

/// The task that holds or waits for the Lease; it releases it when its receiver is dropped.
type Lease = tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// Where the `caBundle` comes from.
pub enum CaSource {
    /// The certificate Secret: from what this replica wrote, or the followed Secret.
    Secret(watch::Receiver<Option<Bundle>>),
    /// `ca.crt` in a directory (certificates from files).
    Dir(PathBuf),
    /// cert-manager's cainjector fills it in.
    Injected,
}

pub struct Controller {
    pub client: kube::Client,
    /// The Lease's namespace and name.
    pub lease: (String, String),
    pub identity: String,
    /// Set when this replica may renew the Secret (not when cert-manager or files own it).
    pub secret: Option<CertSecret>,
    /// Set when this replica keeps the webhook configuration.
    pub target: Option<WebhookTarget>,
    pub ca: CaSource,
    pub metrics: Arc<Metrics>,
    pub leadership: crate::leadership::Leadership,
}

impl Controller {
    /// Runs until `stop`; `pokes` are the watches saying "something changed" (shared with the
    /// next start, should this one end). On stop the Lease is released: no replica waits for a
    /// holder that is gone (those already waiting look again when the old term would have
    /// ended, at most `LEASE_SECONDS` later).
    pub async fn run(
        self: Arc<Self>,
        pokes: Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>,
        stop: watch::Receiver<bool>,
    ) {
        let mut pokes = pokes.lock().await;
        let (leading, lease) = tokio::select! {
            elected = self.elect() => elected,
            () = stopped(stop.clone()) => return,
        };
        tokio::select! {
            () = self.lead(leading, &mut pokes) => {}
            () = stopped(stop) => {}
        }
        // `lead` is gone and its receiver with it: the lease task releases the Lease and ends.
        self.set_leader(false);
        match tokio::time::timeout(Duration::from_secs(3), lease).await {
            Ok(Ok(Ok(_))) => tracing::info!(identity = self.identity, "left the election"),
            Ok(Ok(Err(err))) => {
                tracing::warn!(identity = self.identity, error = %err, "releasing the Lease")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(
                    identity = self.identity,
                    "the Lease was not released in time"
                )
            }
        }
    }

    fn set_leader(&self, leading: bool) {
        self.metrics.set_leader(leading);
        self.leadership.set(leading);
    }

    async fn lead(&self, mut leading: watch::Receiver<bool>, pokes: &mut mpsc::Receiver<()>) {
        loop {
            while !*leading.borrow_and_update() {
                tokio::select! {
                    changed = leading.changed() => if changed.is_err() { return },
                    _ = pokes.recv() => {}
                }
            }
            self.set_leader(true);
            tracing::info!(
                identity = self.identity,
                "elected: this replica keeps the certificates and the webhook configuration"
            );
            let mut backoff = Duration::from_secs(1);
            while *leading.borrow_and_update() {
                let wait = match self.pass().await {
                    Ok(wait) => {
                        backoff = Duration::from_secs(1);
                        wait
                    }
                    Err(err) => {
                        tracing::error!(
                            identity = self.identity,
                            error = format!("{err:#}"),
                            retry_in = ?backoff,
                            "keeping the certificates or the webhook configuration failed"
                        );
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        wait
                    }
                };
                tokio::select! {
                    _ = leading.changed() => {}
                    _ = pokes.recv() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            self.set_leader(false);
            tracing::info!(identity = self.identity, "no longer elected");
        }
    }

    /// Joins the election; the receiver says whether this replica leads. Creating the Lease
    /// is retried until it works: without it nothing is renewed, but serving goes on.
    async fn elect(&self) -> (watch::Receiver<bool>, Lease) {
        let (namespace, name) = &self.lease;
        let mut backoff = Duration::from_secs(1);
        loop {
            let built = LeaseManagerBuilder::new(self.client.clone(), name)
                .with_namespace(namespace)
                .with_identity(&self.identity)
                .with_duration(LEASE_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                // The field manager stays the crate's own, one per identity: taking the Lease is a
                // server-side apply that conflicts only between different field managers.
                .build()
                .await;
            match built {
                Ok(manager) => return manager.watch().await,
                Err(err) => {
                    tracing::error!(lease = name, namespace, error = %err, retry_in = ?backoff, "joining the election");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// One pass; returns how long to sleep before the next. A rotation takes up to three
    /// rounds: the new CA goes into the Secret, then into the `caBundle`, then it signs.
    async fn pass(&self) -> Result<Duration> {
        let mut wait = TICK;
        for _ in 0..3 {
            // One read of the configuration a round: what it trusts, and whether it drifted.
            let observed = match &self.target {
                Some(target) => registration::observe(self.client.clone(), &target.name).await?,
                None => None,
            };
            let trusted = observed.as_ref().and_then(registration::ca_bundle_of);
            let outcome = self.renew(trusted.as_deref()).await?;
            let bundle = self.ca_bundle(outcome.as_ref());
            let restored = match &self.target {
                Some(target) => registration::reconcile(
                    self.client.clone(),
                    target,
                    observed.as_ref(),
                    bundle.as_deref(),
                )
                .await
                .inspect_err(|_| self.metrics.registration(false))?,
                None => None,
            };
            if let (Some(reason), Some(target)) = (&restored, &self.target) {
                self.metrics.registration(true);
                tracing::info!(
                    name = target.name,
                    identity = self.identity,
                    why = reason,
                    "MutatingWebhookConfiguration applied"
                );
            }
            let Some(outcome) = outcome else { break };
            let now = OffsetDateTime::now_utc();
            let lifetimes = self
                .secret
                .as_ref()
                .map(|spec| spec.lifetimes)
                .unwrap_or_default();
            // Zero: nothing in the bundle is due any more, so only the tick wakes it.
            let deadline = certs::plan::next_deadline(&outcome.bundle, &lifetimes, now);
            if let Ok(deadline) = Duration::try_from(deadline)
                && !deadline.is_zero()
            {
                wait = wait.min(deadline);
            }
            match &outcome.waiting {
                // The configuration now holds the new CA: let it sign.
                Some(_) if restored.is_some() => continue,
                Some(waiting) => {
                    tracing::info!(
                        identity = self.identity,
                        waiting,
                        "certificate rotation paused"
                    );
                    wait = wait.min(Duration::from_secs(10));
                    break;
                }
                None => break,
            }
        }
        Ok(wait)
    }

    /// Renews the Secret when this replica owns it; logs and counts every change.
    async fn renew(&self, observed: Option<&[u8]>) -> Result<Option<Outcome>> {
        let Some(spec) = &self.secret else {
            return Ok(None);
        };
        let trust = match (&self.target, observed) {
            (Some(_), Some(bundle)) => Trust::Bundle(bundle),
            (Some(_), None) => Trust::Bundle(&[]),
            (None, _) => Trust::After(UNSEEN_TRUST),
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &spec.namespace);
        let outcome = match secret::reconcile(&api, spec, trust).await {
            Ok(outcome) => outcome,
            Err(err) => {
                self.metrics.renewal("serving", false);
                return Err(err).context("renewing the certificate Secret");
            }
        };
        for change in &outcome.changes {
            self.metrics.renewal(change.what(), true);
            tracing::info!(
                secret = spec.name,
                namespace = spec.namespace,
                identity = self.identity,
                change = %change,
                certificate = secret::describe(&outcome.bundle),
                "certificate Secret renewed"
            );
        }
        Ok(Some(outcome))
    }

    fn ca_bundle(&self, renewed: Option<&Outcome>) -> Option<Vec<u8>> {
        match &self.ca {
            CaSource::Injected => None,
            CaSource::Secret(_) if renewed.is_some() => {
                renewed.map(|outcome| outcome.bundle.ca_pem.clone().into_bytes())
            }
            CaSource::Secret(latest) => latest
                .borrow()
                .as_ref()
                .map(|bundle| bundle.ca_pem.clone().into_bytes()),
            CaSource::Dir(dir) => std::fs::read(dir.join(certs::CA_FILE)).ok(),
        }
        .filter(|bundle| !bundle.is_empty())
    }
}

/// This replica's name in the election and in the Secret: the pod's name where the Deployment
/// passes it, else the host's name and the process id (replicas on one host stay apart).
pub fn identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "secrets-webhook".to_owned());
    format!("{host}-{}", std::process::id())
}
