//! Every replica follows the certificate Secret through the API — a watch, not the kubelet's
//! volume refresh, which can lag by a minute or more — and swaps the certificate it serves as
//! soon as the Secret changes. Connections stay up: rustls asks for the certificate per
//! handshake.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{mpsc, watch};

use super::CertStore;
use super::issue::Bundle;
use super::secret::{self, CertSecret, Trust};
use crate::metrics::Metrics;

/// The bundle to start serving with. A replica that finds no Secret makes it (a create: of
/// racing replicas one wins and the others read its bundle); renewing an existing one is the
/// elected replica's job, so this only waits while the Secret holds nothing usable.
pub async fn initial(api: &Api<Secret>, spec: &CertSecret, create: bool) -> Result<Bundle> {
    let mut logged = false;
    loop {
        let bundle = match secret::read(api, &spec.name).await? {
            None if create => secret::reconcile(api, spec, Trust::Never).await?.bundle,
            found => found.unwrap_or_default(),
        };
        if crate::tls::load_certified_key(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())
            .is_ok()
        {
            return Ok(bundle);
        }
        if !logged {
            tracing::warn!(
                secret = spec.name,
                namespace = spec.namespace,
                "no usable certificate in the Secret yet; waiting for it"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Where a followed Secret's news goes.
#[derive(Clone)]
pub struct Followers {
    pub store: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    /// The bundle as last seen (`None`: there is no Secret).
    pub latest: watch::Sender<Option<Bundle>>,
    /// Wakes the elected replica's controller.
    pub poke: mpsc::Sender<()>,
}

/// Watches Secret `name`; the watcher retries with backoff on errors, so it never ends.
pub async fn follow(api: Api<Secret>, name: String, to: Followers) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut found_in_listing = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => found_in_listing = false,
            Ok(watcher::Event::InitApply(found) | watcher::Event::Apply(found)) => {
                found_in_listing = true;
                seen(&name, secret::bundle_of(&found), &to);
            }
            Ok(watcher::Event::InitDone) if !found_in_listing => gone(&name, &to),
            Ok(watcher::Event::InitDone) => {}
            Ok(watcher::Event::Delete(_)) => gone(&name, &to),
            Err(err) => {
                tracing::warn!(secret = name, error = %err, "watching the certificate Secret")
            }
        }
    }
}

fn seen(name: &str, bundle: Bundle, to: &Followers) {
    match to
        .store
        .install(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())
    {
        Ok(true) => tracing::info!(
            secret = name,
            certificate = secret::describe(&bundle),
            "serving the Secret's new certificate"
        ),
        Ok(false) => {}
        Err(err) => tracing::warn!(
            secret = name,
            error = format!("{err:#}"),
            "the Secret's certificate is unusable; serving the previous one"
        ),
    }
    to.store.report_expiry(&to.metrics);
    let cas = super::certificates(&bundle.ca_pem).into_iter();
    to.metrics
        .trusted_cas(cas.map(|ca| (ca.subject, ca.serial, ca.not_after)));
    to.latest.send_replace(Some(bundle));
    let _ = to.poke.try_send(());
}

fn gone(name: &str, to: &Followers) {
    tracing::warn!(
        secret = name,
        "the certificate Secret is gone; serving the last certificate until it is made again"
    );
    to.latest.send_replace(None);
    let _ = to.poke.try_send(());
}
