//! Runs the mutation policy, a wasm component of world `secrets-webhook:policy/mutation`.
//!
//! One engine ([`runtime`]) compiles components off the request path into a [`Policy`] holding a
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
//!
//! The rooms: [`runtime`] (the engine, the compile cache), [`host`] (what the guest may call, and
//! the mirror writes after it), [`active`] (the policy in service, swapped on reload), [`native`]
//! (the library called directly: the benchmarks' baseline), [`source`] (which component, with
//! which limits, as the flags say).

pub mod active;
mod host;
pub mod native;
pub mod runtime;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::{Store, Trap, UpdateDeadline};

pub use self::active::{Active, Serving, admit, authority};
use self::host::{GuestState, MemoryCap, write_mirrors};
pub use self::host::{Lookups, Services};
pub use self::native::{Native, outcome_of};
pub use self::runtime::{RESIDENT_BYTES, Runtime};
pub use self::source::Source;

pub(crate) mod bindings {
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
        Self::starting_at(tokio::time::Instant::now(), budget, guest_memory)
    }

    /// A review's call whose `budget` counts from `start` (when its request arrived).
    pub fn starting_at(start: tokio::time::Instant, budget: Duration, guest_memory: usize) -> Self {
        Self {
            deadline: start + budget,
            budget,
            guest_memory,
            progress: Progress::default(),
        }
    }

    /// A call off the request path (the self-check, the CLI): the runtime's own limits only.
    pub fn unbounded() -> Self {
        Self::new(Duration::from_secs(3600), usize::MAX)
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

/// Anything that answers reviews: the wasm policy in service, or the library called natively.
pub trait Mutator: Send + Sync {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a Call) -> Mutation<'a>;
}

/// A review being answered; dropping it ends the policy call.
pub type Mutation<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Outcome, PolicyFailure>> + Send + 'a>>;

/// A compiled, checked policy, ready to instantiate per request.
pub struct Policy {
    runtime: Runtime,
    pre: bindings::MutationPre<GuestState>,
    digest: String,
}

impl Policy {
    /// The hex SHA-256 of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    fn short_digest(&self) -> &str {
        &self.digest[..12]
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
            digest: self.short_digest().to_owned(),
            reason,
        })?;
        let bytes = output_bytes(&outcome);
        if bytes > MAX_OUTPUT_BYTES {
            return Err(PolicyFailure::OutputTooLarge {
                digest: self.short_digest().to_owned(),
                bytes,
                limit: MAX_OUTPUT_BYTES,
            });
        }
        let state = store.data();
        let digest = self.short_digest();
        write_mirrors(
            review,
            &outcome,
            &state.looked_up,
            &state.services,
            digest,
            call,
        )
        .await?;
        Ok(outcome)
    }

    fn failure(&self, store: &Store<GuestState>, err: wasmtime::Error) -> PolicyFailure {
        let digest = self.short_digest().to_owned();
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
