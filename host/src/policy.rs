//! Runs the mutation policy, a wasm component of world `secrets-webhook:policy/mutation`.
//!
//! One [`Engine`] compiles components off the request path into a [`Policy`] holding a
//! pre-instantiated component. Each request gets a fresh [`Store`] (nothing leaks between pods),
//! capped in memory, with an epoch deadline: a trap, a loop or a memory bomb becomes a
//! [`PolicyFailure`], never a crash. The policy imports three interfaces: global secrets, and for
//! Flyte 2's Embedded manager the secret store (read only for scopes the review's pod may read)
//! and the cluster (namespace labels, image pull Secrets); every other import (the WASI
//! interfaces Rust's std links) traps if called. Mirrors a patch refers to are written here, after
//! the call and before the answer, only with values the policy looked up.
//!
//! Calls are async and run on the caller's task: a review costs tens of microseconds, less than
//! handing it to another thread and back, and a guest that runs long yields to the executor at
//! every epoch tick until its deadline, so it never holds a runtime thread.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};

use crate::global_secrets::GlobalSecrets;
use crate::secrets::embedded::{Asker, Embedded};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "mutation",
        imports: { "secrets-webhook:policy/secret-store.lookup": async },
        exports: { default: async },
    });
}

pub use bindings::secrets_webhook::policy::types::{
    Denied, Injection, Outcome, Patched, Review, UserInfo,
};

/// The world this host speaks, for messages.
pub const WORLD: &str = "secrets-webhook:policy/mutation@0.5.0";
/// The interface a policy exports, whose version says which world it was built for.
const POLICY_INTERFACE: &str = "secrets-webhook:policy/policy@";

/// The policy built from `guest/` and embedded in this binary.
pub const EMBEDDED: &[u8] = include_bytes!(env!("SECRETS_WEBHOOK_EMBEDDED_POLICY"));

/// The most a policy may answer with. A patch for a real pod is kilobytes; the API server refuses
/// responses far smaller than this anyway.
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;

/// How long an epoch tick lasts; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(1);

/// What a policy may use per request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory per instance.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call.
    pub deadline: Duration,
    /// Instances alive at once; callers wait for a slot beyond that.
    pub max_concurrent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(1),
            max_concurrent: 64,
        }
    }
}

/// What one review's call may use, and what it is doing: the server sets its deadline (the
/// registered `timeoutSeconds` less a margin) and what its guest may allocate (what the memory
/// budget charged it); the host's functions say what they wait on, for a review that runs out.
#[derive(Clone)]
pub struct Call {
    pub deadline: tokio::time::Instant,
    /// The whole budget the deadline came from, for messages.
    pub budget: Duration,
    /// The most linear memory its guest instance may have.
    pub guest_memory: usize,
    pub progress: Progress,
}

impl Call {
    /// A call bounded by `budget` from now, its guest by `guest_memory`.
    pub fn new(budget: Duration, guest_memory: usize) -> Self {
        Self {
            deadline: tokio::time::Instant::now() + budget,
            budget,
            guest_memory,
            progress: Progress::default(),
        }
    }

    /// A call off the request path (the self-check, the CLI): the runtime's own limits only.
    pub fn unbounded() -> Self {
        Self::new(Duration::from_secs(3600), usize::MAX)
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// `future`'s output, unless `deadline` passes first. Outside a runtime (the CLI, benchmarks,
/// offline checks: callers with no deadline to keep) there is no timer, and it just runs.
pub async fn by_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    future: F,
) -> Option<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::time::timeout_at(deadline, future).await.ok(),
        Err(_) => Some(future.await),
    }
}

/// What a call is waiting on: "running the policy", or a host function's own words.
#[derive(Clone, Default)]
pub struct Progress(Arc<std::sync::Mutex<Option<String>>>);

impl Progress {
    pub fn set(&self, what: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    }

    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn now(&self) -> String {
        let what = self.0.lock().unwrap_or_else(|p| p.into_inner());
        what.clone()
            .unwrap_or_else(|| "running the policy".to_owned())
    }
}

/// Why a policy call produced no outcome.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFailure {
    #[error("policy {digest} exceeded its {deadline:?} deadline")]
    Deadline { digest: String, deadline: Duration },
    #[error("policy {digest} ran out of memory (limit {limit} bytes)")]
    OutOfMemory { digest: String, limit: usize },
    #[error("policy {digest} trapped: {reason}")]
    Trap { digest: String, reason: String },
    #[error("policy {digest} returned an error: {reason}")]
    Error { digest: String, reason: String },
    #[error("policy {digest} returned {bytes} bytes, more than the {limit} allowed")]
    OutputTooLarge {
        digest: String,
        bytes: usize,
        limit: usize,
    },
    #[error("writing the pod's mirror Secrets failed: {reason}")]
    Mirrors { reason: String },
}

/// The wasm engine shared by every policy, with its epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    cache: Option<Arc<PathBuf>>,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self> {
        let engine = match Engine::new(&config(limits, true)) {
            Ok(engine) => engine,
            Err(err) => {
                // Pooling reserves address space up front; some sandboxes forbid that.
                tracing::warn!(error = %err, "pooling allocator unavailable; allocating on demand");
                Engine::new(&config(limits, false))?
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = engine.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self {
            engine,
            limits,
            cache: None,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles `wasm` and checks that it implements our world. Slow (tens of milliseconds):
    /// never on the request path.
    pub fn compile(&self, wasm: &[u8]) -> Result<Policy> {
        let digest = hex(&Sha256::digest(wasm));
        let short = digest[..12].to_owned();
        let component = self
            .load_component(wasm, &digest)
            .with_context(|| format!("policy {short} is not a valid wasm component"))?;
        let mut linker = Linker::<GuestState>::new(&self.engine);
        bindings::Mutation::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        linker.define_unknown_imports_as_traps(&component)?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::MutationPre::new)
            .map_err(anyhow::Error::from)
            .map_err(|err| match other_world(&exports) {
                Some(version) => err.context(format!(
                    "policy {short} was built for secrets-webhook:policy/mutation@{version}; \
                     this host runs {WORLD}: rebuild the policy against this release's wit/"
                )),
                None => err.context(format!("policy {short} does not implement world {WORLD}")),
            })?;
        Ok(Policy {
            runtime: self.clone(),
            pre,
            digest,
            exports,
        })
    }

    /// Keeps compiled components in `dir`, keyed by the wasm digest and the engine's compatibility
    /// hash, so a restart skips compilation (tens of milliseconds to a fraction of one).
    pub fn with_cache(mut self, dir: PathBuf) -> Self {
        self.cache = Some(Arc::new(dir));
        self
    }

    fn load_component(&self, wasm: &[u8], digest: &str) -> Result<Component> {
        let Some(dir) = &self.cache else {
            return Ok(Component::new(&self.engine, wasm)?);
        };
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        // Read, not mapped: a mapped file truncated by someone else would crash the process.
        if let Ok(cached) = std::fs::read(&path) {
            // SAFETY: the file is one this program wrote below for an engine with this
            // compatibility hash (it is in the name); wasmtime also checks the header and refuses
            // an incompatible or truncated artifact, which we then recompile.
            match unsafe { Component::deserialize(&self.engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cached policy unusable; recompiling")
                }
            }
        }
        let compiled = self.engine.precompile_component(wasm)?;
        if let Err(err) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %err, "cannot cache the compiled policy");
        }
        // SAFETY: these bytes were produced by this engine a moment ago.
        Ok(unsafe { Component::deserialize(&self.engine, &compiled)? })
    }
}

/// The world version a component's exports were built for, when it is not ours.
fn other_world(exports: &[String]) -> Option<&str> {
    let ours = WORLD.rsplit_once('@').map(|(_, version)| version);
    exports
        .iter()
        .find_map(|name| name.strip_prefix(POLICY_INTERFACE))
        .filter(|version| Some(*version) != ours)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// How much of each pooled memory stays resident between instances: what a guest touches for a
/// typical pod. Each slot keeps it while idle, so it is counted in the memory budget.
pub const RESIDENT_BYTES: usize = 1 << 20;

fn config(limits: Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if pooling {
        let slots = limits.max_concurrent.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .max_memory_size(limits.memory_bytes)
            // A slot's pages stay mapped between instances and only the pages an instance
            // dirtied are reset to the image (PAGEMAP_SCAN, Linux 6.7+; else a memset of the
            // resident part). Without this every instance page-faults its stack, data and heap
            // in afresh, which cost more than the guest's own work.
            .total_stacks(slots)
            .linear_memory_keep_resident(RESIDENT_BYTES.min(limits.memory_bytes))
            .table_keep_resident(RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the host offers a policy: global secrets, and the Embedded manager's store when the
/// settings use it.
#[derive(Clone, Default)]
pub struct Services {
    pub globals: Arc<GlobalSecrets>,
    pub embedded: Option<Arc<Embedded>>,
}

/// Per-request state: the memory cap, the services, the pod asked about, and what the policy
/// looked up.
struct GuestState {
    cap: MemoryCap,
    services: Services,
    /// The review's namespace and creator: the store is read only for what they may read.
    namespace: String,
    creator: UserInfo,
    /// The call's deadline and progress.
    call: Call,
    /// Values the policy was given, by secret id: the only ones it may have mirrored.
    looked_up: Lookups,
}

/// Secret values handed to the policy in one call, and the image pull Secrets it was told
/// exist. Never printed.
#[derive(Default)]
pub struct Lookups(
    std::collections::HashMap<String, Vec<u8>>,
    std::collections::HashSet<String>,
);

impl Lookups {
    fn record(&mut self, id: &str, value: &Result<Option<Vec<u8>>, String>) {
        if let Ok(Some(value)) = value {
            self.0.insert(id.to_owned(), value.clone());
        }
    }

    fn record_pull(&mut self, name: &str, exists: &Result<bool, String>) {
        if let Ok(true) = exists {
            self.1.insert(name.to_owned());
        }
    }

    /// The image pull Secrets `outcome` asks to copy, unless it names one the host never said
    /// exists, or one that is not the pull Secret of a secret it read (whose scope the pod may
    /// read, or the host would not have read it).
    fn pull_secrets(&self, outcome: &Outcome) -> Result<Vec<String>, String> {
        let Outcome::Patched(patched) = outcome else {
            return Ok(Vec::new());
        };
        let read: std::collections::HashSet<String> = self
            .0
            .keys()
            .filter_map(|id| crate::secrets::scope::parse_secret_id(id))
            .map(|(scope, key)| secrets_policy::scope::pull_secret_name(&scope, &key))
            .collect();
        let unasked = patched
            .pull_secrets
            .iter()
            .find(|name| !self.1.contains(*name) || !read.contains(*name));
        match unasked {
            Some(name) => Err(format!(
                "asks to copy image pull Secret {name:?}, which it did not look up for a secret \
                 it read"
            )),
            None => Ok(patched.pull_secrets.clone()),
        }
    }

    /// The mirrors `outcome` asks for, with their values, unless it names one the policy never
    /// looked up (a policy asks for what it resolved, nothing else).
    fn mirrors(&self, outcome: &Outcome) -> Result<Vec<(String, Vec<u8>)>, String> {
        let Outcome::Patched(patched) = outcome else {
            return Ok(Vec::new());
        };
        patched
            .mirrors
            .iter()
            .map(|id| match self.0.get(id) {
                Some(value) => Ok((id.clone(), value.clone())),
                None => Err(format!(
                    "asks for a mirror of {id:?}, which it did not look up"
                )),
            })
            .collect()
    }
}

/// What a patch relies on the host to write: the review, its outcome, what the policy looked up
/// and the services that write.
type Writes<'a> = (&'a Review, &'a Outcome, &'a Lookups, &'a Services);

/// Writes the mirrors and copies the image pull Secrets `outcome` relies on, before the pod is
/// admitted, within the call's deadline; nothing on a dry run.
async fn write_mirrors(
    (review, outcome, looked_up, services): Writes<'_>,
    digest: &str,
    call: &Call,
) -> Result<(), PolicyFailure> {
    let refused = |reason| PolicyFailure::Error {
        digest: digest.to_owned(),
        reason,
    };
    let mirrors = looked_up.mirrors(outcome).map_err(refused)?;
    let pulls = looked_up.pull_secrets(outcome).map_err(refused)?;
    if (mirrors.is_empty() && pulls.is_empty()) || review.dry_run {
        return Ok(());
    }
    let Some(embedded) = &services.embedded else {
        return Err(PolicyFailure::Mirrors {
            reason: "this host has no secret store".to_owned(),
        });
    };
    let failed = |err: anyhow::Error| PolicyFailure::Mirrors {
        reason: format!("{err:#}"),
    };
    let namespace = &review.namespace;
    call.progress
        .set(format!("writing the pod's mirror Secrets in {namespace}"));
    let written = async {
        embedded.write_mirrors(namespace, &mirrors).await?;
        embedded.copy_pull_secrets(namespace, &pulls).await
    };
    let result = by_deadline(call.deadline, written).await;
    call.progress.clear();
    match result {
        Some(written) => written.map_err(failed),
        None => Err(PolicyFailure::Mirrors {
            reason: format!(
                "the API server did not take the pod's mirror Secrets in {namespace} within the \
                 review's {:?}",
                call.budget
            ),
        }),
    }
}

/// Refuses growth past the limit and remembers that it did: the guest's allocator then aborts
/// with a bare `unreachable` trap, which alone would not say why.
struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let fits = desired <= self.limit;
        self.hit |= !fits;
        Ok(fits)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let fits = desired <= MAX_TABLE_ELEMENTS;
        self.hit |= !fits;
        Ok(fits)
    }
}

/// Tables hold function references; no honest policy needs more.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl bindings::secrets_webhook::policy::types::Host for GuestState {}

impl bindings::secrets_webhook::policy::global_secrets::Host for GuestState {
    fn lookup(&mut self, group: String, key: String) -> Option<String> {
        self.services
            .globals
            .lookup(&group, &key)
            .map(str::to_owned)
    }
}

impl bindings::secrets_webhook::policy::secret_store::Host for GuestState {
    async fn lookup(&mut self, secret_id: String) -> Result<Option<Vec<u8>>, String> {
        let Some(embedded) = self.services.embedded.clone() else {
            return Err("this host has no secret store for the Embedded manager".to_owned());
        };
        let asker = Asker {
            namespace: &self.namespace,
            creator: creator(&self.creator),
        };
        self.call.progress.set(format!(
            "reading secret {secret_id} from the {} store",
            embedded.store_name()
        ));
        let value = embedded
            .lookup(&asker, &secret_id, self.call.deadline)
            .await;
        self.call.progress.clear();
        self.looked_up.record(&secret_id, &value);
        value
    }
}

impl bindings::secrets_webhook::policy::cluster::Host for GuestState {
    fn namespace_labels(&mut self, name: String) -> Result<Option<Vec<(String, String)>>, String> {
        match &self.services.embedded {
            Some(embedded) => embedded.namespace_labels(&name),
            None => Err("this host does not follow namespaces".to_owned()),
        }
    }

    fn image_pull_secret(&mut self, name: String) -> Result<bool, String> {
        let exists = match &self.services.embedded {
            Some(embedded) => embedded.image_pull_secret(&name),
            None => Err("this host has no secret store for the Embedded manager".to_owned()),
        };
        self.looked_up.record_pull(&name, &exists);
        exists
    }
}

/// A compiled, checked policy, ready to instantiate per request.
pub struct Policy {
    runtime: Runtime,
    pre: bindings::MutationPre<GuestState>,
    digest: String,
    exports: Vec<String>,
}

impl Policy {
    /// The hex SHA-256 of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The names the component exports.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }

    fn short_digest(&self) -> String {
        self.digest[..12].to_owned()
    }

    fn store(&self, services: Services, review: Option<&Review>, call: &Call) -> Store<GuestState> {
        let limits = self.runtime.limits;
        let state = GuestState {
            cap: MemoryCap {
                limit: limits.memory_bytes.min(call.guest_memory),
                hit: false,
            },
            call: call.clone(),
            services,
            namespace: review.map(|r| r.namespace.clone()).unwrap_or_default(),
            creator: review.map(|r| r.creator.clone()).unwrap_or(UserInfo {
                username: String::new(),
                groups: Vec::new(),
            }),
            looked_up: Lookups::default(),
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| &mut state.cap);
        // Yield at every tick, and trap once the deadline's ticks have passed.
        let budget =
            u64::try_from(limits.deadline.as_millis() / TICK.as_millis()).unwrap_or(u64::MAX);
        let mut ticks = 0u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks += 1;
            Ok(if ticks >= budget.max(1) {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store
    }

    /// Checks settings with the policy's own `validate-settings`. Off the request path: waits on
    /// this thread.
    pub fn validate_settings(&self, settings: &str) -> Result<()> {
        let mut store = self.store(Services::default(), None, &Call::unbounded());
        let result = block_on(async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .secrets_webhook_policy_policy()
                .call_validate_settings(&mut store, settings)
                .await
        })
        .map_err(|err| self.failure(&store, err))?;
        result.map_err(|reason| {
            anyhow!(
                "policy {} rejects the settings: {reason}",
                self.short_digest()
            )
        })
    }

    /// Runs `mutate` on one review in a fresh instance, then writes the mirrors its patch
    /// relies on. Dropping the future ends the call.
    pub async fn mutate(
        &self,
        settings: &str,
        review: &Review,
        services: Services,
        call: &Call,
    ) -> Result<Outcome, PolicyFailure> {
        let mut store = self.store(services, Some(review), call);
        let called = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .secrets_webhook_policy_policy()
                .call_mutate(&mut store, settings, review)
                .await
        };
        let result = called.await.map_err(|err| self.failure(&store, err))?;
        let outcome = result.map_err(|reason| PolicyFailure::Error {
            digest: self.short_digest(),
            reason,
        })?;
        let bytes = output_bytes(&outcome);
        if bytes > MAX_OUTPUT_BYTES {
            return Err(PolicyFailure::OutputTooLarge {
                digest: self.short_digest(),
                bytes,
                limit: MAX_OUTPUT_BYTES,
            });
        }
        let state = store.data();
        let digest = self.short_digest();
        let writes = (review, &outcome, &state.looked_up, &state.services);
        write_mirrors(writes, &digest, call).await?;
        Ok(outcome)
    }

    fn failure(&self, store: &Store<GuestState>, err: wasmtime::Error) -> PolicyFailure {
        let digest = self.short_digest();
        let limits = self.runtime.limits;
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PolicyFailure::Deadline {
                digest,
                deadline: limits.deadline,
            },
            _ if store.data().cap.hit => PolicyFailure::OutOfMemory {
                digest,
                limit: store.data().cap.limit,
            },
            _ => PolicyFailure::Trap {
                digest,
                reason: format!("{err:#}"),
            },
        }
    }
}

/// What an outcome takes in the host: each string's bytes and its header, so that a list of a
/// million empty strings counts for what it costs, not for nothing.
fn output_bytes(outcome: &Outcome) -> usize {
    let string = |s: &String| std::mem::size_of::<String>() + s.len();
    let strings = |list: &[String]| list.iter().map(string).sum::<usize>();
    match outcome {
        Outcome::Unchanged(warnings) => strings(warnings),
        Outcome::Patched(patched) => {
            let injections = patched.injections.iter();
            string(&patched.patch)
                + strings(&patched.warnings)
                + strings(&patched.mirrors)
                + strings(&patched.pull_secrets)
                + injections
                    .map(|i| string(&i.group) + string(&i.key) + string(&i.manager))
                    .sum::<usize>()
        }
        Outcome::Denied(denied) => string(&denied.message),
    }
}

/// The review every policy must answer before it is put in service.
pub fn probe_review() -> Review {
    Review {
        uid: "secrets-webhook-probe".to_owned(),
        namespace: "default".to_owned(),
        operation: "CREATE".to_owned(),
        dry_run: true,
        object: PROBE_POD.to_owned(),
        creator: UserInfo {
            username: "secrets-webhook-probe".to_owned(),
            groups: Vec::new(),
        },
    }
}

/// A review's creator as the policy library names it.
pub fn creator(user: &UserInfo) -> secrets_policy::authority::Creator<'_> {
    secrets_policy::authority::Creator {
        username: &user.username,
        groups: &user.groups,
    }
}

/// A pod asking for one K8s secret: every policy must answer it without failing.
const PROBE_POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe","namespace":"default","labels":{"inject-flyte-secrets":"true"},"annotations":{"flyte.secrets/s0":"m4zg54lqhiqce3dsn4rgkiqknnsxsoraej1g512fnyrau"}},"spec":{"containers":[{"name":"main","image":"busybox"}]}}"#;

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
    pub fn new(policy: Policy, settings: &str, globals: GlobalSecrets) -> Result<Self> {
        admit(&policy, settings)?;
        Ok(Self {
            serving: arc_swap::ArcSwap::from_pointee(Serving {
                policy: Arc::new(policy),
                settings: settings.into(),
            }),
            globals: arc_swap::ArcSwap::from_pointee(globals),
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
    /// The Embedded manager's scope authority follows the new settings.
    pub fn replace(&self, policy: Arc<Policy>, settings: &str) -> Result<()> {
        admit(&policy, settings)?;
        let authority = match &self.embedded {
            Some(_) => Some(authority(settings)?),
            None => None,
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

impl crate::admission::Mutator for Active {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a Call) -> crate::admission::Mutation<'a> {
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

/// Runs `future` to completion on this thread, for callers outside the server: the CLI, the
/// self-check, tests. A guest that yields at a tick is polled again at once.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => return output,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

/// The policy library called directly, without wasm: the baseline the benchmarks compare the
/// component against (`serve --native-policy`). Same settings, same global secrets.
pub struct Native {
    settings: secrets_policy::Settings,
    services: Services,
}

impl Native {
    pub fn new(settings: &str, services: Services) -> Result<Self> {
        Ok(Self {
            settings: secrets_policy::Settings::from_json(settings).map_err(anyhow::Error::msg)?,
            services,
        })
    }
}

/// The services as the library asks for them, recording lookups as the component's imports do.
struct NativeHost<'a> {
    services: &'a Services,
    deadline: tokio::time::Instant,
    asker: Asker<'a>,
    looked_up: std::cell::RefCell<Lookups>,
}

impl secrets_policy::GlobalSecrets for NativeHost<'_> {
    fn lookup(&self, group: &str, key: &str) -> Option<String> {
        self.services.globals.lookup(group, key).map(str::to_owned)
    }
}

impl secrets_policy::SecretStore for NativeHost<'_> {
    fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(embedded) = &self.services.embedded else {
            return Err("this host has no secret store for the Embedded manager".to_owned());
        };
        // The K8s store answers from memory, so this does not wait; benchmarks only.
        let value = block_on(embedded.lookup(&self.asker, id, self.deadline));
        self.looked_up.borrow_mut().record(id, &value);
        value
    }
}

impl secrets_policy::Cluster for NativeHost<'_> {
    fn labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        match &self.services.embedded {
            Some(embedded) => embedded.namespace_labels(name),
            None => Err("this host does not follow namespaces".to_owned()),
        }
    }

    fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        let exists = match &self.services.embedded {
            Some(embedded) => embedded.image_pull_secret(name),
            None => Err("this host has no secret store for the Embedded manager".to_owned()),
        };
        self.looked_up.borrow_mut().record_pull(name, &exists);
        exists
    }
}

impl crate::admission::Mutator for Native {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a Call) -> crate::admission::Mutation<'a> {
        let host = NativeHost {
            services: &self.services,
            deadline: call.deadline,
            asker: Asker {
                namespace: &review.namespace,
                creator: creator(&review.creator),
            },
            looked_up: Default::default(),
        };
        let admission = secrets_policy::Admission {
            namespace: &review.namespace,
            creator: creator(&review.creator),
        };
        let library = secrets_policy::Host {
            globals: &host,
            store: &host,
            cluster: &host,
        };
        let outcome = outcome_of(secrets_policy::mutate_review(
            &self.settings,
            &admission,
            &review.object,
            library,
        ));
        let looked_up = host.looked_up.into_inner();
        Box::pin(async move {
            let writes = (review, &outcome, &looked_up, &self.services);
            write_mirrors(writes, "native", call).await?;
            Ok(outcome)
        })
    }
}

/// The library's outcome in the world's terms, exactly as guest/component translates it.
pub fn outcome_of(outcome: secrets_policy::Outcome) -> Outcome {
    match outcome {
        secrets_policy::Outcome::Unchanged => Outcome::Unchanged(Vec::new()),
        secrets_policy::Outcome::Patched(patched) => Outcome::Patched(Patched {
            patch: patched.patch,
            warnings: Vec::new(),
            injections: patched
                .injections
                .into_iter()
                .map(|injection| Injection {
                    group: injection.group,
                    key: injection.key,
                    manager: injection.manager.name().to_owned(),
                })
                .collect(),
            mirrors: patched.mirrors,
            pull_secrets: patched.pull_secrets,
        }),
        secrets_policy::Outcome::Denied(denial) => Outcome::Denied(Denied {
            code: denial.code,
            message: denial.message,
        }),
    }
}
