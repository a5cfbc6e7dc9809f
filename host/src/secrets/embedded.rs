//! The host's side of Flyte 2's Embedded manager: what the policy's `secret-store` and `cluster`
//! imports answer, and the mirrors its patches ask for. The policy decides; this only reads the
//! store and the namespaces, and writes the mirrors.
//!
//! Every read and every mirror is held to the scope authority the policy's settings describe
//! (`secrets_policy::authority`): a store value is read only for a pod whose namespace and
//! creator may read its scope, and a source's change reaches only the mirrors in namespaces
//! entitled to it. A policy that asks for more, or a Secret planted under a mirror's name
//! elsewhere, gets nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

use secrets_policy::authority::{Authority, Creator};

use super::follow::Pending;
use super::k8s::K8sBackend;
use super::mirror::{self, Mirror};
use super::scope::{Scope, parse_secret_id};
use super::store::{Backend, Store};
use crate::config::{EmbeddedConfig, StoreType};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::tasks::{OnEnd, Tasks};

/// What a lookup leaves of its review's deadline, for the policy to answer with what it learnt
/// (which store, which secret) before the review itself runs out.
const ANSWER_MARGIN: Duration = Duration::from_millis(100);
/// How often unused mirrors are looked for, and how long a mirror asked for is spared: its pod
/// may still be on its way through admission.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
const SWEEP_GRACE: Duration = Duration::from_secs(600);

pub struct Embedded {
    store: Arc<Store>,
    /// Source ids waiting for the follower.
    pub(super) pending: Arc<Pending>,
    store_name: &'static str,
    /// Who may read which scope: the settings in service say (they change on reload).
    authority: arc_swap::ArcSwap<Authority>,
    namespaces: reflector::Store<Namespace>,
    /// The store namespace and its Secrets, for Flyte 2's image pull Secrets; `None` unless
    /// `imagePullSecrets.enabled`. A pod in that namespace refers to them where they are.
    pulls: Option<(String, reflector::Store<Secret>)>,
    /// `None` for one held in memory: it writes no mirrors.
    client: Option<kube::Client>,
    written: Written,
}

/// The pod a review asks about: where it is created, and by whom.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub namespace: &'a str,
    pub creator: Creator<'a>,
}

/// A mirror written a moment ago with the same value is not written again for each pod: every
/// write is an etcd write (its last-used time changes). After `REWRITE_AFTER` it is, so a mirror
/// deleted by hand comes back and the sweep sees it in use.
const REWRITE_AFTER: Duration = Duration::from_secs(60);

/// Mirrors this replica wrote: (namespace, id) → (hash of the value, when).
#[derive(Default)]
struct Written(std::sync::Mutex<std::collections::HashMap<(String, String), (u64, Instant)>>);

impl Written {
    fn key(namespace: &str, id: &str, value: &[u8]) -> ((String, String), u64) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        value.hash(&mut hasher);
        ((namespace.to_owned(), id.to_owned()), hasher.finish())
    }

    fn fresh(&self, namespace: &str, id: &str, value: &[u8]) -> bool {
        let (key, hash) = Self::key(namespace, id, value);
        let written = self.0.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(&key)
            .is_some_and(|(h, at)| *h == hash && at.elapsed() < REWRITE_AFTER)
    }

    fn record(&self, namespace: &str, id: &str, value: &[u8]) {
        let (key, hash) = Self::key(namespace, id, value);
        let mut written = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Old entries only cost a rewrite; keep the map from growing without bound.
        if written.len() > 100_000 {
            written.retain(|_, (_, at)| at.elapsed() < REWRITE_AFTER);
        }
        written.insert(key, (hash, Instant::now()));
    }
}

impl Embedded {
    /// Starts the store's backend, the namespace reflector and the mirrors' upkeep, registered
    /// with `tasks`. Returns once the store and the namespaces are listed: before that every
    /// secret would look missing.
    pub async fn start(
        client: kube::Client,
        config: &EmbeddedConfig,
        authority: Authority,
        tasks: &mut Tasks,
    ) -> Result<Arc<Self>> {
        // Source ids seen to change: by the K8s store's watch, or named by an invalidation.
        let pending = Arc::new(Pending::default());
        let (store, listed) = store(&client, config, pending.clone(), tasks).await?;
        let namespaces = reflect(
            Api::<Namespace>::all(client.clone()),
            "namespace reflector",
            tasks,
        );
        let pulls = config.image_pull_secrets.then(|| {
            let api = Api::<Secret>::namespaced(client.clone(), &config.k8s_namespace);
            (
                config.k8s_namespace.clone(),
                reflect(api, "image pull Secret reflector", tasks),
            )
        });
        let ready = async {
            if let Some(listed) = listed {
                listed.ready().await?;
            }
            namespaces.wait_until_ready().await?;
            if let Some((_, pulls)) = &pulls {
                pulls.wait_until_ready().await?;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .context("listing the secrets source and the namespaces took over a minute")?
            .context("listing the secrets source and the namespaces")?;
        let embedded = Arc::new(Self {
            store,
            pending,
            store_name: config.store.name(),
            authority: arc_swap::ArcSwap::from_pointee(authority),
            namespaces,
            pulls,
            client: Some(client.clone()),
            written: Written::default(),
        });
        tracing::info!(store = ?config.store, "Embedded manager ready");
        Ok(embedded)
    }

    /// Registers with `tasks` the mirrors' upkeep: the follower that carries source changes to
    /// mirrors, and the elected replica's sweep of unused ones. Both are restarted if they end.
    pub fn start_upkeep(
        self: &Arc<Self>,
        leadership: Leadership,
        metrics: Arc<Metrics>,
        tasks: &mut Tasks,
    ) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let (embedded, swept) = (self.clone(), client.clone());
        let elected = leadership.clone();
        tasks.spawn("mirror follower", OnEnd::Restart, move || {
            let (client, leadership) = (client.clone(), leadership.clone());
            super::follow::run(client, embedded.clone(), leadership, metrics.clone())
        });
        tasks.spawn("mirror sweep", OnEnd::Restart, move || {
            sweep(swept.clone(), elected.clone())
        });
    }

    /// A store and namespaces held in memory, with no cluster to write mirrors to: the request
    /// path alone, for benchmarks.
    pub fn in_memory(
        backend: Arc<dyn Backend>,
        namespaces: Vec<Namespace>,
        authority: Authority,
    ) -> Arc<Self> {
        let (reader, mut writer) = reflector::store();
        for namespace in namespaces {
            writer.apply_watcher_event(&watcher::Event::Apply(namespace));
        }
        Arc::new(Self {
            store: Arc::new(Store::new(backend, None)),
            pending: Arc::default(),
            store_name: "in-memory",
            authority: arc_swap::ArcSwap::from_pointee(authority),
            namespaces: reader,
            pulls: None,
            client: None,
            written: Written::default(),
        })
    }

    /// Puts the scope authority of newly swapped-in settings in service.
    pub fn set_authority(&self, authority: Authority) {
        self.authority.store(Arc::new(authority));
    }

    /// Whether `namespace` may hold `scope`'s secrets for a pod `creator` makes (`None`: for a
    /// pod already admitted), as the settings in service say.
    fn grant(
        &self,
        namespace: &str,
        creator: Option<Creator<'_>>,
        scope: &Scope,
    ) -> Result<(), String> {
        let org_label = || match self.namespaces.get(&ObjectRef::new(namespace)) {
            Some(found) => Ok(organization_label(&found)),
            None => Err(format!("namespace {namespace:?} does not exist")),
        };
        self.authority
            .load()
            .grant(namespace, creator, scope, org_label)
            .map(drop)
    }

    /// The namespaces whose pods may read `scope`'s secrets, as the settings in service say: where
    /// its mirrors may be, and the only places they are kept in line.
    pub fn entitled_namespaces(&self, scope: &Scope) -> Vec<String> {
        let authority = self.authority.load();
        self.namespaces
            .state()
            .iter()
            .filter_map(|namespace| {
                let name = namespace.metadata.name.as_deref()?;
                let org_label = || Ok(organization_label(namespace));
                let granted = authority.grant(name, None, scope, org_label).is_ok();
                granted.then(|| name.to_owned())
            })
            .collect()
    }

    /// A source's current value, for a follower (no review, no deadline of its own).
    pub async fn read_source(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(id).await
    }

    /// The store, whose cached values an invalidation drops.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Where invalidated ids go: the follower's queue, each id once however often it is named
    /// (counted as coalesced in `metrics`).
    pub fn invalidation_queue(&self, metrics: Arc<Metrics>) -> super::invalidation::Queue {
        let pending = self.pending.clone();
        Arc::new(move |ids: Vec<String>| {
            let named = ids.len() as u64;
            let fresh = pending.invalidated(ids)?;
            metrics.invalidation("coalesced", named - fresh as u64);
            Ok(())
        })
    }

    /// Which store this is, for messages: K8s, AWS, GCP or Azure.
    pub fn store_name(&self) -> &'static str {
        self.store_name
    }

    /// `secret-store.lookup`: one id in one scope, for the pod `asker` describes, by the review's
    /// `deadline`. An id whose scope that pod may not read is refused before the store is asked,
    /// whatever the policy.
    pub async fn lookup(
        &self,
        asker: &Asker<'_>,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some((scope, _)) = parse_secret_id(id) else {
            return Err(format!("{id:?} is not a secret id"));
        };
        self.grant(asker.namespace, Some(asker.creator), &scope)
            .map_err(|reason| format!("not read for this pod: {reason}"))?;
        let by = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
        let started = tokio::time::Instant::now();
        match crate::deadline::by_deadline(by, self.store.get(id)).await {
            Some(Ok(value)) => Ok(value),
            Some(Err(err)) => Err(format!("{err:#}")),
            None => Err(format!(
                "the {} store did not answer within {:?}, what the review's deadline left",
                self.store_name,
                by.saturating_duration_since(started)
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

    /// `cluster.image-pull-secret`: whether the store's namespace holds `name`, from the
    /// reflector.
    pub fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        match self.pull_source(name) {
            Some(found) => Ok(found.is_some()),
            None => Err("the host's configuration does not enable imagePullSecrets".to_owned()),
        }
    }

    /// Image pull Secret `name` in the store's namespace; `None` when they are not followed.
    fn pull_source(&self, name: &str) -> Option<Option<Arc<Secret>>> {
        let (namespace, pulls) = self.pulls.as_ref()?;
        Some(pulls.get(&ObjectRef::new(name).within(namespace)))
    }

    /// Copies the image pull Secrets a patch lists into `namespace`, all at once; a pod in the
    /// store's own namespace refers to the sources themselves, as in Flyte 2.
    pub async fn copy_pull_secrets(&self, namespace: &str, names: &[String]) -> Result<()> {
        let at_source = self
            .pulls
            .as_ref()
            .is_some_and(|(source, _)| source == namespace);
        if names.is_empty() || at_source {
            return Ok(());
        }
        let Some(client) = &self.client else {
            bail!("this store has no cluster to copy image pull Secrets to");
        };
        let copies = names.iter().map(|name| async move {
            let Some(Some(source)) = self.pull_source(name) else {
                bail!("image pull Secret {name} is gone from the store's namespace");
            };
            let data = serde_json::to_vec(&(&source.type_, &source.data))?;
            let key = format!("image-pull/{name}");
            if !self.written.fresh(namespace, &key, &data) {
                mirror::apply_pull_copy(client, namespace, &source).await?;
                self.written.record(namespace, &key, &data);
            }
            anyhow::Ok(())
        });
        for copied in futures::future::join_all(copies).await {
            copied?;
        }
        Ok(())
    }

    /// Writes the mirrors a patch refers to, all at once; the first failure is the answer.
    pub async fn write_mirrors(
        &self,
        namespace: &str,
        mirrors: &[(String, Vec<u8>)],
    ) -> Result<()> {
        if mirrors.is_empty() {
            return Ok(());
        }
        let Some(client) = &self.client else {
            bail!("this store has no cluster to write mirrors to");
        };
        let stale = mirrors
            .iter()
            .filter(|(id, value)| !self.written.fresh(namespace, id, value));
        let writes = stale.map(|(id, value)| {
            let mirror = Mirror {
                namespace,
                id,
                value,
            };
            async move {
                mirror::apply(client, &mirror).await?;
                self.written.record(namespace, id, value);
                anyhow::Ok(())
            }
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
        Ok(())
    }
}

/// A reflector of `api`'s objects, kept current in the background.
/// A reflector of `api`, registered with `tasks` as `name`: the replica's view goes stale
/// without it, so its end turns the replica unready.
fn reflect<K>(api: Api<K>, name: &'static str, tasks: &mut Tasks) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            if let Err(err) = event {
                tracing::warn!(error = %err, "{name}");
            }
            std::future::ready(())
        });
    tasks.spawn_once(name, events);
    reader
}

/// The configured store, and for the K8s one the backend whose first listing must be awaited.
async fn store(
    client: &kube::Client,
    config: &EmbeddedConfig,
    pending: Arc<Pending>,
    tasks: &mut Tasks,
) -> Result<(Arc<Store>, Option<Arc<K8sBackend>>)> {
    match config.store {
        StoreType::K8s => {
            let (backend, follow) =
                K8sBackend::start(client.clone(), &config.k8s_namespace, move |change| {
                    pending.changed(change)
                });
            tasks.spawn_once("K8s store watch", follow);
            tracing::info!(
                source = config.k8s_namespace,
                "secrets from Kubernetes Secrets"
            );
            // The watch keeps values current: nothing to cache.
            Ok((Arc::new(Store::new(backend.clone(), None)), Some(backend)))
        }
        #[cfg(feature = "aws")]
        StoreType::Aws => {
            let backend = super::aws::AwsBackend::load(config.aws_region.as_deref()).await;
            tracing::info!(region = ?config.aws_region, "secrets from AWS Secrets Manager");
            Ok((cloud(backend), None))
        }
        #[cfg(feature = "gcp")]
        StoreType::Gcp => {
            let project = config.gcp_project.as_deref().unwrap_or_default();
            let endpoint = config.gcp_endpoint.as_deref();
            let backend = super::gcp::GcpBackend::from_environment(project, endpoint)?;
            tracing::info!(project, ?endpoint, "secrets from GCP Secret Manager");
            Ok((cloud(backend), None))
        }
        #[cfg(feature = "azure")]
        StoreType::Azure => {
            let vault = config.azure_vault_uri.as_deref().unwrap_or_default();
            let backend = super::azure::AzureBackend::from_environment(vault)?;
            tracing::info!(vault, "secrets from Azure Key Vault");
            Ok((cloud(backend), None))
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "embeddedSecretManagerConfig.type {other:?} is not supported by this build \
             (built without its cargo feature)"
        ),
    }
}

/// A cloud store: values cached for [`CLOUD_TTL`].
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn cloud(backend: impl Backend + 'static) -> Arc<Store> {
    Arc::new(Store::new(Arc::new(backend), Some(CLOUD_TTL)))
}

/// How long a cloud store's value is used before it is read again; Flyte 2's secret service
/// calls `/invalidate-secret` after every write, which drops it at once.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
const CLOUD_TTL: Duration = Duration::from_secs(300);

/// Removes mirrors no pod refers to; the elected replica only. Finding them takes listing
/// Secrets in every namespace, which deploy/ grants only with the `embedded-sweep` component:
/// without it the sweep says so once and tries again each round (the grant may come), and
/// mirrors live until their source goes.
async fn sweep(client: kube::Client, leadership: Leadership) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    let mut said_forbidden = false;
    loop {
        every.tick().await;
        if !leadership.leads() {
            continue;
        }
        match mirror::sweep(&client, SWEEP_GRACE).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "unused mirrors removed"),
            Err(err) if forbidden(&err) => {
                if !std::mem::replace(&mut said_forbidden, true) {
                    tracing::info!("mirror sweep off: this ServiceAccount may not list Secrets");
                }
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

/// A namespace's `organization` label: the organization its pods' scope binds to, when the
/// settings name none.
fn organization_label(namespace: &Namespace) -> Option<String> {
    let labels = namespace.metadata.labels.as_ref()?;
    labels.get("organization").cloned()
}
