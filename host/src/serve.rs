//! `serve`: one replica of the webhook. [`run`] builds every part once from [`Options`] — one
//! Kubernetes client, the settings as [`Config`] parsed them, the global secrets read once —
//! registers each long-lived task with [`Tasks`], which restarts or fails them as their
//! [`OnEnd`] says, and on SIGTERM turns `/readyz` to draining and stops them all.
//!
//! | task                          | owner                  | on its end                  |
//! |-------------------------------|------------------------|-----------------------------|
//! | admission server              | [`server`]             | unready (drains on stop)    |
//! | metrics port, invalidation port | [`server`]           | restarted                   |
//! | certificate follower / files watch | [`crate::certs`]  | restarted                   |
//! | registration watch, controller | [`crate::cluster`]    | restarted (Lease released on stop) |
//! | namespace / image pull Secret reflectors, K8s store watch | [`crate::secrets`] | unready |
//! | mirror follower, mirror sweep | [`crate::secrets`]     | restarted                   |
//! | policy reloader, global secrets refresh | here         | restarted                   |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::certs::CertStore;
use crate::certs::secret::CertSecret;
use crate::cluster::registration::WebhookTarget;
use crate::config::{Config, Overrides};
use crate::global_secrets::{self, GlobalSecrets};
use crate::health::{Describe, Readiness};
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::policy::{self, Active, Mutator};
use crate::reload::Reloader;
use crate::secrets::embedded::Embedded;
use crate::server::{self, budget, connections::ConnectionLimits, invalidation_port, metrics_port};
use crate::tasks::{OnEnd, Tasks};
use crate::{certs, cluster, tls};

/// How often the global secrets are read again: mounted Secrets change without a restart.
const GLOBALS_REFRESH: Duration = Duration::from_secs(30);

/// What `serve` was asked for, as plain values.
pub struct Options {
    /// The configuration file (Flyte's `webhook:` and `secrets:` sections).
    pub config: Option<PathBuf>,
    /// Flags that win over the file; `local` runs without a cluster (also chosen when none is
    /// reachable).
    pub overrides: Overrides,
    pub policy: policy::Source,
    /// Call the policy library natively: the benchmarks' baseline.
    pub native_policy: bool,
    /// The CA clients (the API server) must present a certificate from.
    pub client_ca: Option<PathBuf>,
    /// The plain-HTTP port of `/metrics` and the probes.
    pub metrics_listen: Option<SocketAddr>,
    pub reload_poll: Duration,
    /// The memory the process keeps, whatever clients send.
    pub memory_budget: u64,
    /// Connections the admission port keeps open; `None`: from the budget.
    pub max_connections: Option<usize>,
    pub first_request: Duration,
    pub idle: Duration,
    /// The registered `timeoutSeconds`, of which a review may take most.
    pub timeout_seconds: u32,
    pub cluster: InCluster,
}

/// What a replica keeps in a cluster.
pub struct InCluster {
    pub certs: cluster::Certs,
    pub secret: CertSecret,
    /// The Lease that elects the replica doing the writing.
    pub lease: String,
    /// The webhook configuration to keep; `None` when it is managed another way. Its
    /// `namespace_selector` comes from the configuration file.
    pub target: Option<WebhookTarget>,
}

/// Whether a Kubernetes API server can be found the usual ways: in-cluster, `KUBECONFIG`, or
/// `~/.kube/config`.
fn cluster_configured() -> bool {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return true;
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG") {
        return std::env::split_paths(&paths).any(|p| p.is_file());
    }
    std::env::var_os("HOME").is_some_and(|home| Path::new(&home).join(".kube/config").is_file())
}

/// What every part of a replica shares: its metrics, its readiness, who leads, and the tasks.
struct Replica {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    leadership: Leadership,
    tasks: Tasks,
}

/// Serves until SIGTERM (or Ctrl-C), then drains: configuration → the parts, built once → the
/// admission port → the cluster's upkeep → wait → drain.
pub async fn run(mut options: Options) -> Result<()> {
    // Without a cluster to reach, local mode whatever the flags say.
    options.overrides.local |= !cluster_configured();
    let local = options.overrides.local;
    let config = Config::load(options.config.as_deref(), &options.overrides)?;
    for warning in crate::config::warnings(
        config.library_settings.as_ref(),
        options.client_ca.is_some(),
    ) {
        tracing::warn!("{warning}");
    }
    let limits = limits(&options, &config)?;
    if local {
        local_certs(&config)?;
    }
    let metrics = Arc::new(Metrics::default());
    let registering = !local && options.cluster.target.is_some();
    let readiness = Arc::new(Readiness::new(registering));
    let mut replica = Replica {
        tasks: Tasks::new(readiness.clone(), metrics.clone()),
        metrics,
        readiness,
        // Alone in local mode; in a cluster, the election decides.
        leadership: Leadership::new(local),
    };
    let client = client(&options, &config).await?;
    let embedded = match &client {
        Some(client) => start_embedded(&mut replica, client, &config).await?,
        None => None,
    };

    let runtime = options.policy.runtime(limits.plan.guest_slots)?;
    let globals =
        Arc::new(GlobalSecrets::load(&config.global_secrets).context("reading global secrets")?);
    let active = active_policy(&options, &config, &runtime, &globals, &embedded)?;
    replica.metrics.policy_in_service(&active.digest());
    let describe: Describe = {
        let active = active.clone();
        Arc::new(move || active.digest())
    };
    if let Some(listen) = options.metrics_listen {
        let addr = metrics_port::start(
            &mut replica.tasks,
            listen,
            replica.metrics.clone(),
            replica.readiness.clone(),
            describe.clone(),
        )
        .await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz over plain HTTP");
    }

    let cluster = match (&client, local) {
        (Some(client), false) => {
            Some(prepare_cluster(&replica, client.clone(), &options.cluster, &config).await?)
        }
        _ => None,
    };
    let certs = match &cluster {
        Some(cluster) => cluster.store.clone(),
        None => local_cert_store(&mut replica, &config)?,
    };
    start_refresh(
        &mut replica.tasks,
        active.clone(),
        config.global_secrets.clone(),
    );
    start_reloader(&mut replica, runtime, active.clone(), &options, &config);

    let app = server::App {
        mutator: mutator(&options, &config, active, globals, embedded.clone())?,
        describe_policy: describe,
        on_error: config.on_error,
        limits,
        readiness: replica.readiness.clone(),
        metrics: replica.metrics.clone(),
    };
    let tls = tls::server_config(certs, options.client_ca.as_deref())?;
    let server = server::bind(config.listen, tls, app).await?;
    let addr = server.local_addr()?;
    server.start(&mut replica.tasks);
    replica.readiness.set_serving();
    if let Some(cluster) = cluster {
        cluster.launch(&mut replica.tasks);
    }
    if let Some(embedded) = &embedded {
        embedded.start_upkeep(
            replica.leadership.clone(),
            replica.metrics.clone(),
            &mut replica.tasks,
        );
    }
    tracing::info!(%addr, "serving AdmissionReviews on /mutate and /mutate--v1-pod");
    wait_then_drain(replica, limits.drain_timeout).await
}

/// Runs the tasks until the stop signal (or until none is left), then drains them.
async fn wait_then_drain(mut replica: Replica, drain_timeout: Duration) -> Result<()> {
    let ended = tokio::select! {
        () = stop_signal() => false,
        () = replica.tasks.supervise() => true,
    };
    tracing::info!("stopping: draining requests in flight");
    replica.readiness.set_draining();
    replica
        .tasks
        .stop(drain_timeout + Duration::from_secs(5))
        .await;
    tracing::info!("stopped");
    match ended {
        true => bail!("every task of the replica ended"),
        false => Ok(()),
    }
}

/// The policy in service: `--policy` (or the embedded default) compiled, with the settings.
fn active_policy(
    options: &Options,
    config: &Config,
    runtime: &policy::Runtime,
    globals: &Arc<GlobalSecrets>,
    embedded: &Option<Arc<Embedded>>,
) -> Result<Arc<Active>> {
    let compiled = options.policy.compile(runtime)?;
    tracing::info!(
        policy = compiled.digest(),
        global_secrets = globals.len(),
        "policy ready"
    );
    let active = Active::new(compiled, &config.settings, globals.clone())?;
    Ok(Arc::new(active.with_embedded(embedded.clone())))
}

/// Outside a cluster: the certificate files in `--cert-dir`, reloaded when they change.
fn local_cert_store(replica: &mut Replica, config: &Config) -> Result<Arc<CertStore>> {
    let certs = CertStore::open(&config.cert_dir)?;
    certs
        .clone()
        .start_watch(&mut replica.tasks, replica.metrics.clone());
    Ok(certs)
}

/// The Embedded manager, when configured: its store, its watches, and Flyte 2's invalidation
/// port.
async fn start_embedded(
    replica: &mut Replica,
    client: &kube::Client,
    config: &Config,
) -> Result<Option<Arc<Embedded>>> {
    let Some(store) = &config.embedded else {
        return Ok(None);
    };
    // Set with the Embedded store: the library read the settings to find it.
    let settings = config
        .library_settings
        .as_ref()
        .context("reading the settings")?;
    let authority = settings.embedded_secret_manager_config.authority();
    let embedded = Embedded::start(client.clone(), store, authority, &mut replica.tasks).await?;
    if let Some(port) = store.invalidation_port {
        let listen = SocketAddr::from(([0, 0, 0, 0], port));
        let queue = embedded.invalidation_queue(replica.metrics.clone());
        let addr = invalidation_port::start(
            &mut replica.tasks,
            listen,
            embedded.store(),
            queue,
            replica.metrics.clone(),
        )
        .await?;
        tracing::info!(%addr, "serving Flyte 2's POST /invalidate-secret over plain HTTP");
    }
    Ok(Some(embedded))
}

/// Registers the policy reloader: `--policy` and the configuration file, swapped whole.
fn start_reloader(
    replica: &mut Replica,
    runtime: policy::Runtime,
    active: Arc<Active>,
    options: &Options,
    config: &Config,
) {
    let mut reloader = Reloader::new(
        runtime,
        active,
        options.policy.file.clone(),
        options.config.clone(),
        options.overrides.clone(),
        config.clone(),
        replica.metrics.clone(),
    );
    reloader.client_ca = options.client_ca.is_some();
    let reloader = Arc::new(reloader);
    let poll = options.reload_poll;
    replica
        .tasks
        .spawn("policy reloader", OnEnd::Restart, move || {
            reloader.clone().run(poll)
        });
}

/// What answers the reviews: the policy in service, or with `--native-policy` the library
/// called directly (the benchmarks' baseline), over the same global secrets and store.
fn mutator(
    options: &Options,
    config: &Config,
    active: Arc<Active>,
    globals: Arc<GlobalSecrets>,
    embedded: Option<Arc<Embedded>>,
) -> Result<Arc<dyn Mutator>> {
    if !options.native_policy {
        return Ok(active);
    }
    tracing::warn!("--native-policy: the library runs unsandboxed; for benchmarks only");
    let settings = config
        .library_settings
        .clone()
        .context("--native-policy: the policy library cannot read these settings")?;
    let services = policy::Services { globals, embedded };
    Ok(Arc::new(policy::Native::with_settings(settings, services)))
}

/// The server's limits: the memory budget divided, the connections' timeouts, the review's
/// deadline from the registered `timeoutSeconds`.
fn limits(options: &Options, config: &Config) -> Result<server::Limits> {
    let plan = budget::Plan::new(options.memory_budget)?;
    let limits = server::Limits {
        max_body_bytes: config.max_body_bytes,
        plan,
        connections: ConnectionLimits {
            max: options.max_connections.unwrap_or(plan.max_connections),
            first_request: options.first_request,
            idle: options.idle,
        },
        review_deadline: server::review_deadline(options.timeout_seconds),
        guest_memory: options.policy.memory_bytes,
        ..server::Limits::default()
    };
    if options.policy.timeout >= limits.review_deadline {
        bail!(
            "--policy-timeout-ms ({}) must be below the review's deadline ({:?}: the webhook's \
             --timeout-seconds {} less a margin)",
            options.policy.timeout.as_millis(),
            limits.review_deadline,
            options.timeout_seconds
        );
    }
    tracing::info!(
        budget_mib = plan.total >> 20,
        connections = limits.connections.max,
        reviews_mib = plan.reviews >> 20,
        guest_slots = plan.guest_slots,
        review_deadline = ?limits.review_deadline,
        "memory budget divided"
    );
    Ok(limits)
}

/// Local mode: a CA and a localhost certificate, made once.
fn local_certs(config: &Config) -> Result<()> {
    if certs::ensure_local(&config.cert_dir)? {
        tracing::info!(dir = %config.cert_dir.display(), "made a local CA and a certificate for localhost");
    }
    let ca = config.cert_dir.join(certs::CA_FILE);
    tracing::info!(ca = %ca.display(), "local mode: no registration; clients should trust this CA");
    Ok(())
}

/// The one Kubernetes client, when something needs it: the cluster's upkeep, or the Embedded
/// manager (whose values live in the cluster even in local mode).
async fn client(options: &Options, config: &Config) -> Result<Option<kube::Client>> {
    let local = options.overrides.local;
    if local && config.embedded.is_none() {
        return Ok(None);
    }
    let context = match local {
        true => {
            "the Embedded manager reads secrets from the cluster: no Kubernetes API server found \
             (in-cluster, KUBECONFIG or ~/.kube/config)"
        }
        false => "connecting to the Kubernetes API",
    };
    Ok(Some(kube::Client::try_default().await.context(context)?))
}

/// Where the serving certificate comes from in a cluster, ready to serve.
async fn prepare_cluster(
    replica: &Replica,
    client: kube::Client,
    wanted: &InCluster,
    config: &Config,
) -> Result<cluster::Prepared> {
    let target = wanted.target.clone().map(|target| WebhookTarget {
        namespace_selector: config.namespace_selector.clone(),
        ..target
    });
    let setup = cluster::Setup {
        client,
        secret: wanted.secret.clone(),
        certs: wanted.certs,
        cert_dir: config.cert_dir.clone(),
        lease: wanted.lease.clone(),
        target,
        readiness: replica.readiness.clone(),
        metrics: replica.metrics.clone(),
        leadership: replica.leadership.clone(),
    };
    setup.prepare().await
}

/// Registers the periodic re-read of the global secrets.
fn start_refresh(tasks: &mut Tasks, active: Arc<Active>, source: global_secrets::Source) {
    tasks.spawn("global secrets refresh", OnEnd::Restart, move || {
        refresh_globals(active.clone(), source.clone())
    });
}

async fn refresh_globals(active: Arc<Active>, source: global_secrets::Source) {
    let mut ticks = tokio::time::interval(GLOBALS_REFRESH);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let source = source.clone();
        match tokio::task::spawn_blocking(move || GlobalSecrets::load(&source)).await {
            Ok(Ok(globals)) => active.set_globals(globals),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "re-reading global secrets failed; keeping the old ones")
            }
            Err(err) => tracing::warn!(error = %err, "re-reading global secrets failed"),
        }
    }
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
