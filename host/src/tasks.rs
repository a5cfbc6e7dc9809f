//! The replica's long-lived tasks, owned in one place. Each has a name and says what its end
//! means ([`OnEnd`]): a task that ends or panics is logged by name and counted, then either
//! started again after a backoff, or — for one the replica cannot serve correctly without —
//! it turns the replica unready, so the Service stops sending it reviews and the rollout or an
//! operator sees why in `/readyz`. On stop, tasks with something to finish (the admission port
//! drains its requests, the controller gives up its Lease) are told and waited for; the rest —
//! side ports, watches and loops that hold nothing — keep running until then, and are dropped
//! after.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use crate::health::Readiness;
use crate::metrics::Metrics;

/// What a task's end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEnd {
    /// Started again, after a backoff that doubles from one second to a minute while it keeps
    /// ending.
    Restart,
    /// The replica turns unready and stays so.
    Unready,
}

/// A task's body, made again for each start from the stop signal.
type Make = Arc<dyn Fn(watch::Receiver<bool>) -> BoxedTask + Send + Sync>;
type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send>>;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A task that ran this long before it ended starts again at the first backoff.
const STEADY: Duration = Duration::from_secs(300);

struct Entry {
    name: &'static str,
    on_end: OnEnd,
    /// Whether the body ends itself on stop (else it is dropped once those that do have ended).
    graceful: bool,
    make: Make,
    backoff: Duration,
    started: tokio::time::Instant,
}

impl Entry {
    fn new(name: &'static str, on_end: OnEnd, graceful: bool, make: Make) -> Self {
        Self {
            name,
            on_end,
            graceful,
            make,
            backoff: FIRST_BACKOFF,
            started: tokio::time::Instant::now(),
        }
    }
}

/// The tasks, and the stop signal they share.
pub struct Tasks {
    set: JoinSet<()>,
    entries: HashMap<Id, Entry>,
    stop: watch::Sender<bool>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

impl Tasks {
    pub fn new(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Self {
        Self {
            set: JoinSet::new(),
            entries: HashMap::new(),
            stop: watch::Sender::new(false),
            readiness,
            metrics,
        }
    }

    /// Starts task `name`, which runs once: its end turns the replica unready. It is dropped on
    /// stop.
    pub fn spawn_once<Fut>(&mut self, name: &'static str, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.once(name, false, |_| task);
    }

    /// Starts task `name`, which runs once and ends itself when its stop signal turns true
    /// (the replica waits for it); any other end turns the replica unready.
    pub fn spawn_once_graceful<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.once(name, true, task);
    }

    fn once<F, Fut>(&mut self, name: &'static str, graceful: bool, task: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let once = std::sync::Mutex::new(Some(task));
        let make: Make = Arc::new(move |stop| {
            let taken = once.lock().unwrap_or_else(|p| p.into_inner()).take();
            match taken {
                Some(task) => Box::pin(task(stop)),
                None => Box::pin(async {}),
            }
        });
        self.start(
            Entry::new(name, OnEnd::Unready, graceful, make),
            Duration::ZERO,
        );
    }

    /// Starts task `name`, made again by `make` for each start; on stop it is dropped once the
    /// graceful tasks have ended.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, on_end: OnEnd, make: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let make: Make = Arc::new(move |_| Box::pin(make()));
        self.start(Entry::new(name, on_end, false, make), Duration::ZERO);
    }

    /// Starts task `name`, whose body `make` builds from the stop signal and which ends itself
    /// when it turns true; the replica waits for it.
    pub fn spawn_graceful<F, Fut>(&mut self, name: &'static str, on_end: OnEnd, make: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let make: Make = Arc::new(move |stop| Box::pin(make(stop)));
        self.start(Entry::new(name, on_end, true, make), Duration::ZERO);
    }

    fn start(&mut self, entry: Entry, delay: Duration) {
        let body = (entry.make)(self.stop.subscribe());
        let stop = self.stop.subscribe();
        let handle = self.set.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(stop) => return,
            }
            body.await;
        });
        let entry = Entry {
            started: tokio::time::Instant::now() + delay,
            ..entry
        };
        self.entries.insert(handle.id(), entry);
    }

    /// Waits for tasks to end, restarting or failing each as its [`OnEnd`] says, until none is
    /// left (never, while the replica runs: call it in a `select!` with the stop signal).
    pub async fn supervise(&mut self) {
        while let Some(ended) = self.set.join_next_with_id().await {
            let (id, panic) = match ended {
                Ok((id, ())) => (id, None),
                Err(err) => (err.id(), err.is_panic().then(|| panic_text(err))),
            };
            if let Some(entry) = self.entries.remove(&id) {
                self.ended(entry, panic);
            }
        }
    }

    fn ended(&mut self, entry: Entry, panic: Option<String>) {
        let how = match &panic {
            Some(_) => "panicked",
            None => "ended",
        };
        match entry.on_end {
            OnEnd::Restart => {
                let ran = entry.started.elapsed();
                let backoff = match ran >= STEADY {
                    true => FIRST_BACKOFF,
                    false => entry.backoff,
                };
                tracing::error!(
                    task = entry.name,
                    panic,
                    ?ran,
                    ?backoff,
                    "task {how}; starting it again"
                );
                self.metrics.task_ended(entry.name, "restarted");
                let next = Entry {
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                    ..entry
                };
                self.start(next, backoff);
            }
            OnEnd::Unready => {
                tracing::error!(
                    task = entry.name,
                    panic,
                    "task {how}; this replica cannot serve correctly without it and turns unready"
                );
                self.metrics.task_ended(entry.name, "unready");
                self.readiness.set_failed(entry.name);
            }
        }
    }

    /// Tells every task to stop and waits, up to `within`, for those that end themselves (the
    /// admission port drains its requests, the controller gives up its Lease); the others — the
    /// side ports, watches, followers — keep running until then, so `/readyz` says "draining"
    /// and the certificate stays fresh while requests finish, and are dropped after.
    pub async fn stop(mut self, within: Duration) {
        self.stop.send_replace(true);
        let graceful = async {
            while self.entries.values().any(|entry| entry.graceful) {
                let Some(ended) = self.set.join_next_with_id().await else {
                    break;
                };
                let id = ended.map_or_else(|err| err.id(), |(id, ())| id);
                self.entries.remove(&id);
            }
        };
        if tokio::time::timeout(within, graceful).await.is_err() {
            let left: Vec<&str> = self
                .entries
                .values()
                .filter(|entry| entry.graceful)
                .map(|entry| entry.name)
                .collect();
            tracing::warn!(?left, "tasks still running after the stop; aborting them");
        }
        self.set.shutdown().await;
    }
}

/// Returns once `stop` is true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn panic_text(err: tokio::task::JoinError) -> String {
    let payload = err.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The two documented outcomes, with real tasks: one that panics on its first two starts is
    /// started again (and the replica stays ready); a vital one that ends turns it unready,
    /// naming the task. On stop, a graceful task finishes its work and the others are dropped.
    #[tokio::test]
    async fn a_task_that_ends_is_restarted_or_turns_the_replica_unready() {
        let readiness = Arc::new(Readiness::new(false));
        readiness.set_serving();
        let metrics = Arc::new(Metrics::default());
        let mut tasks = Tasks::new(readiness.clone(), metrics.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        tasks.spawn("flaky", OnEnd::Restart, move || {
            let start = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(start >= 2, "failing start {start}");
                std::future::pending::<()>().await;
            }
        });
        let finished = Arc::new(AtomicUsize::new(0));
        let counted = finished.clone();
        tasks.spawn_once_graceful("draining", move |stop| async move {
            stopped(stop).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            counted.fetch_add(1, Ordering::SeqCst);
        });
        // Backoffs of 1 s and 2 s before the third start.
        let supervised = tokio::time::timeout(Duration::from_secs(4), tasks.supervise()).await;
        assert!(supervised.is_err(), "the tasks keep running");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(readiness.is_ready());
        tasks.spawn_once("admission server", async {});
        let _ = tokio::time::timeout(Duration::from_millis(200), tasks.supervise()).await;
        assert!(!readiness.is_ready());
        assert!(
            readiness.reason().contains("admission server"),
            "{}",
            readiness.reason()
        );
        let text = metrics.encode();
        for line in [
            "secrets_webhook_task_ends_total{task=\"flaky\",outcome=\"restarted\"} 2",
            "secrets_webhook_task_ends_total{task=\"admission server\",outcome=\"unready\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // Stopping waits for the graceful task, drops the pending one, restarts nothing.
        let stopping = std::time::Instant::now();
        tasks.stop(Duration::from_secs(5)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert!(stopping.elapsed() < Duration::from_secs(1));
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
