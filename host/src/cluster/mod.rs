//! The webhook's life in a cluster: its MutatingWebhookConfiguration ([`registration`]) and the
//! elected replica that keeps it and the certificate Secret as they should be ([`controller`]).

pub mod controller;
pub mod registration;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::{mpsc, oneshot, watch};

use crate::certs::secret::CertSecret;
use crate::certs::{self, Followers};
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::tls::CertStore;
use controller::{CaSource, Controller};
use registration::WebhookTarget;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum Certs {
    /// The Secret, created and renewed by the elected replica.
    Managed,
    /// The Secret, written by someone else (cert-manager).
    External,
    /// Files in a directory.
    Files(PathBuf),
}

/// Whether this replica is the elected one, for work one replica should do for all (the
/// Embedded manager's mirror upkeep). A replica that runs no election leads itself.
#[derive(Clone)]
pub struct Leadership(Arc<watch::Sender<bool>>);

impl Leadership {
    pub fn new(leading: bool) -> Self {
        Self(Arc::new(watch::Sender::new(leading)))
    }

    pub fn set(&self, leading: bool) {
        self.0.send_replace(leading);
    }

    pub fn leads(&self) -> bool {
        *self.0.borrow()
    }

    /// Tells of every change of leadership from now on.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// What `serve` runs in a cluster.
pub struct Setup {
    pub client: kube::Client,
    /// The certificate Secret (its lifetimes and names matter only when managed).
    pub secret: CertSecret,
    pub certs: Certs,
    /// The Lease that elects the replica doing the writing.
    pub lease: String,
    /// Set when this webhook keeps its configuration.
    pub target: Option<WebhookTarget>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Set by the election.
    pub leadership: Leadership,
}

/// The serving certificate is ready; [`Prepared::launch`] starts the watches and the controller
/// once the server listens, so the configuration never points at a webhook not yet serving.
pub struct Prepared {
    setup: Setup,
    pub store: Arc<CertStore>,
    latest: Option<watch::Sender<Option<certs::Bundle>>>,
    ca: CaSource,
}

impl Setup {
    pub async fn prepare(self) -> Result<Prepared> {
        let dir = match &self.certs {
            Certs::Files(dir) => dir.clone(),
            Certs::Managed | Certs::External => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
                let managed = matches!(self.certs, Certs::Managed);
                let bundle = certs::initial(&api, &self.secret, managed).await?;
                let store =
                    CertStore::from_pem(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())?;
                let (latest, receiver) = watch::channel(Some(bundle));
                let injected = self
                    .target
                    .as_ref()
                    .is_some_and(|target| target.ca_injected_from.is_some());
                let ca = if injected {
                    CaSource::Injected
                } else {
                    CaSource::Secret(receiver)
                };
                return Ok(Prepared {
                    setup: self,
                    store,
                    latest: Some(latest),
                    ca,
                });
            }
        };
        let store = CertStore::open(&dir)?;
        Ok(Prepared {
            setup: self,
            store,
            latest: None,
            ca: CaSource::Dir(dir),
        })
    }
}

/// The watches and the controller, running; [`Running::stop`] releases the Lease.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the controller and waits (briefly) until it has left the election.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(controller) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
        }
    }
}

impl Prepared {
    pub fn launch(self) -> Running {
        let Prepared {
            setup,
            store,
            latest,
            ca,
        } = self;
        let (poke, pokes) = mpsc::channel(1);
        match latest {
            Some(latest) => {
                let api: Api<Secret> =
                    Api::namespaced(setup.client.clone(), &setup.secret.namespace);
                let to = Followers {
                    store,
                    metrics: setup.metrics.clone(),
                    latest,
                    poke: poke.clone(),
                };
                tokio::spawn(certs::follow(api, setup.secret.name.clone(), to));
            }
            None => {
                tokio::spawn(store.watch(Duration::from_secs(10), setup.metrics.clone()));
            }
        }
        if let Some(target) = &setup.target {
            tokio::spawn(registration::watch(
                setup.client.clone(),
                target.name.clone(),
                setup.readiness.clone(),
                poke,
            ));
        }
        let managed = matches!(setup.certs, Certs::Managed);
        if !managed && setup.target.is_none() {
            // No election: this replica does its share of the upkeep itself.
            setup.leadership.set(true);
            return Running {
                stop: None,
                controller: None,
            };
        }
        let controller = Controller {
            client: setup.client,
            lease: (setup.secret.namespace.clone(), setup.lease),
            identity: setup.secret.identity.clone(),
            secret: managed.then_some(setup.secret),
            target: setup.target,
            ca,
            metrics: setup.metrics,
            leadership: setup.leadership,
        };
        let (stop, stopped) = oneshot::channel();
        Running {
            stop: Some(stop),
            controller: Some(tokio::spawn(controller.run(pokes, stopped))),
        }
    }
}
