//! The host's side of Flyte 2's Embedded manager: what the policy's `secret-store` and `cluster`
//! imports answer, and the mirrors its patches ask for. The policy decides; this only reads the
//! store and the namespaces, and writes the mirrors.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use super::k8s::{K8sBackend, SourceChange};
use super::mirror::{self, Mirror};
use super::store::{Backend, Store};
use crate::config::{EmbeddedConfig, StoreType};

/// A lookup that takes longer than this fails the pod rather than the API server's call.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// How often unused mirrors are looked for, and how long a mirror asked for is spared: its pod
/// may still be on its way through admission.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
const SWEEP_GRACE: Duration = Duration::from_secs(600);

pub struct Embedded {
    store: Arc<Store>,
    namespaces: reflector::Store<Namespace>,
    /// `None` for one held in memory: it writes no mirrors.
    client: Option<kube::Client>,
}

impl Embedded {
    /// Starts the store's backend, the namespace reflector, the mirrors' upkeep and, when
    /// configured, the invalidation endpoint. Returns once the store and the namespaces are
    /// listed: before that every secret would look missing.
    pub async fn start(client: kube::Client, config: &EmbeddedConfig) -> Result<Arc<Self>> {
        if config.store != StoreType::K8s {
            bail!(
                "embeddedSecretManagerConfig.type {:?} is not supported by this build yet; use K8s",
                config.store
            );
        }
        let (changed, changes) = mpsc::unbounded_channel();
        let (backend, follow) =
            K8sBackend::start(client.clone(), &config.k8s_namespace, move |change| {
                let _ = changed.send(change);
            });
        tokio::spawn(follow);
        let (namespaces, writer) = reflector::store();
        let api: Api<Namespace> = Api::all(client.clone());
        let reflect = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|event| {
                if let Err(err) = event {
                    tracing::warn!(error = %err, "watching namespaces");
                }
                std::future::ready(())
            });
        tokio::spawn(reflect);
        let ready = async {
            backend.ready().await?;
            namespaces.wait_until_ready().await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .context("listing the secrets source and the namespaces took over a minute")?
            .with_context(|| {
                format!(
                    "listing Secrets in {} and the namespaces",
                    config.k8s_namespace
                )
            })?;
        let embedded = Arc::new(Self {
            store: Arc::new(Store::new(backend, None)),
            namespaces,
            client: Some(client.clone()),
        });
        tokio::spawn(follow_sources(
            client.clone(),
            embedded.namespaces.clone(),
            changes,
        ));
        tokio::spawn(sweep(client));
        if let Some(port) = config.invalidation_port {
            let listen = std::net::SocketAddr::from(([0, 0, 0, 0], port));
            let addr = super::invalidation::serve(listen, embedded.store.clone()).await?;
            tracing::info!(%addr, "serving Flyte 2's POST /invalidate-secret over plain HTTP");
        }
        tracing::info!(
            source = config.k8s_namespace,
            "Embedded manager ready: secrets from Kubernetes Secrets"
        );
        Ok(embedded)
    }

    /// A store and namespaces held in memory, with no cluster to write mirrors to: the request
    /// path alone, for benchmarks.
    pub fn in_memory(backend: Arc<dyn Backend>, namespaces: Vec<Namespace>) -> Arc<Self> {
        let (reader, mut writer) = reflector::store();
        for namespace in namespaces {
            writer.apply_watcher_event(&watcher::Event::Apply(namespace));
        }
        Arc::new(Self {
            store: Arc::new(Store::new(backend, None)),
            namespaces: reader,
            client: None,
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// `secret-store.lookup`: one id in one scope.
    pub async fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.store.get(id)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(format!("{err:#}")),
            Err(_) => Err(format!(
                "the store did not answer within {LOOKUP_TIMEOUT:?}"
            )),
        }
    }

    /// `cluster.namespace-labels`, from the reflector: no API call per pod.
    pub fn namespace_labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        let Some(namespace) = self.namespaces.get(&ObjectRef::new(name)) else {
            return Ok(None);
        };
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        Ok(Some(labels.into_iter().collect()))
    }

    /// Writes the mirrors a patch refers to, all at once; the first failure is the answer.
    pub async fn write_mirrors(
        &self,
        namespace: &str,
        mirrors: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let Some(client) = &self.client else {
            bail!("this store has no cluster to write mirrors to");
        };
        let writes = mirrors.iter().map(|(id, value)| {
            let mirror = Mirror {
                namespace,
                id,
                value,
            };
            async move { mirror::apply(client, &mirror).await }
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
        Ok(())
    }
}

/// Brings the mirrors of every changed source in line, in every namespace (a mirror is looked
/// for by name: the webhook may not list Secrets outside the source namespace). Every replica
/// does it: a mirror already in line is not written again.
async fn follow_sources(
    client: kube::Client,
    namespaces: reflector::Store<Namespace>,
    mut changes: mpsc::UnboundedReceiver<SourceChange>,
) {
    while let Some(change) = changes.recv().await {
        let names: Vec<String> = namespaces
            .state()
            .iter()
            .filter_map(|namespace| namespace.metadata.name.clone())
            .collect();
        let value = change.value.as_deref();
        match mirror::follow_source(&client, &names, &change.id, value).await {
            Ok(0) => {}
            Ok(changed) => tracing::info!(id = change.id, changed, "mirrors follow their source"),
            Err(err) => {
                tracing::warn!(
                    id = change.id,
                    error = format!("{err:#}"),
                    "following a source"
                )
            }
        }
    }
}

/// Removes mirrors no pod refers to. Finding them takes listing Secrets in every namespace,
/// which deploy/ grants only with the `embedded-sweep` component: without it the sweep stops
/// after saying so once, and mirrors live until their source goes.
async fn sweep(client: kube::Client) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        match mirror::sweep(&client, SWEEP_GRACE).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "unused mirrors removed"),
            Err(err) if forbidden(&err) => {
                tracing::info!("mirror sweep off: this ServiceAccount may not list Secrets");
                return;
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "sweeping mirrors"),
        }
    }
}

fn forbidden(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(cause.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 403)
    })
}
