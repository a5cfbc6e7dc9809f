//! The webhook's life in a cluster: its MutatingWebhookConfiguration ([`registration`]) and the
//! elected replica that keeps it and the certificate Secret as they should be ([`controller`]),
//! which also sets whether this replica leads ([`Leadership`]) for the rest of the process.

pub mod controller;
pub mod registration;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::{mpsc, watch};

use crate::certs::CertStore;
use crate::certs::secret::CertSecret;
use crate::certs::{self, Followers};
use crate::health::Readiness;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::tasks::{OnEnd, Tasks};
use controller::{CaSource, Controller};
use registration::WebhookTarget;

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certs {
    /// The Secret, created and renewed by the elected replica.
    Managed,
    /// The Secret, written by someone else (cert-manager).
    External,
    /// Files in the configuration's certificate directory.
    Files,
}

/// What `serve` runs in a cluster.
pub struct Setup {
    pub client: kube::Client,
    /// The certificate Secret (its lifetimes and names matter only when managed).
    pub secret: CertSecret,
    pub certs: Certs,
    /// Where [`Certs::Files`] reads them.
    pub cert_dir: PathBuf,
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
            Certs::Files => self.cert_dir.clone(),
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

impl Prepared {
    /// Registers the certificate's follower, the configuration's watch and (when something is
    /// elected) the controller with `tasks`. Each is restarted if it ends; the controller gives
    /// up its Lease on stop.
    pub fn launch(self, tasks: &mut Tasks) {
        let Prepared {
            setup,
            store,
            latest,
            ca,
        } = self;
        let (poke, pokes) = mpsc::channel(1);
        let metrics = setup.metrics.clone();
        match latest {
            Some(latest) => {
                let api: Api<Secret> =
                    Api::namespaced(setup.client.clone(), &setup.secret.namespace);
                let to = Followers {
                    store,
                    metrics,
                    latest,
                    poke: poke.clone(),
                };
                let name = setup.secret.name.clone();
                tasks.spawn("certificate follower", OnEnd::Restart, move || {
                    certs::follow(api.clone(), name.clone(), to.clone())
                });
            }
            None => store.start_watch(tasks, metrics),
        }
        if let Some(target) = &setup.target {
            let (client, name) = (setup.client.clone(), target.name.clone());
            let readiness = setup.readiness.clone();
            tasks.spawn("registration watch", OnEnd::Restart, move || {
                registration::watch(
                    client.clone(),
                    name.clone(),
                    readiness.clone(),
                    poke.clone(),
                )
            });
        }
        let managed = matches!(setup.certs, Certs::Managed);
        if !managed && setup.target.is_none() {
            // No election: this replica does its share of the upkeep itself.
            setup.leadership.set(true);
            return;
        }
        let controller = Arc::new(Controller {
            client: setup.client,
            lease: (setup.secret.namespace.clone(), setup.lease),
            identity: setup.secret.identity.clone(),
            secret: managed.then_some(setup.secret),
            target: setup.target,
            ca,
            metrics: setup.metrics,
            leadership: setup.leadership,
        });
        let pokes = Arc::new(tokio::sync::Mutex::new(pokes));
        tasks.spawn_graceful("controller", OnEnd::Restart, move |stop| {
            controller.clone().run(pokes.clone(), stop)
        });
    }
}
