//! Mirrors follow their source. Changes the K8s store's watch reports and ids Flyte 2's secret
//! service invalidates wait in one queue, each id once however often it is named ([`Pending`]);
//! one follower takes them in turn, reads an invalidated id again, and patches that id's mirror
//! in every namespace entitled to its scope — unless the value is the one it followed last, so a
//! burst of changes or invalidations costs one store read and at most one patch per mirror.
//!
//! Every replica sees the K8s store's watch, so only the elected one follows what it reports
//! (else each change costs a patch per namespace per replica). An invalidation reaches only the
//! replicas it is posted to: each follows it, elected or not. A replica elected follows again
//! what it left to the previous one lately: that one may have gone before following it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::embedded::Embedded;
use super::k8s::SourceChange;
use super::mirror;
use super::scope::parse_secret_id;
use crate::leadership::Leadership;
use crate::metrics::Metrics;

/// Invalidated ids that may wait at once; a caller naming more is told to come back.
pub const MAX_PENDING: usize = 10_000;

/// What a waiting id asks for: read it again (invalidated, or left by a previous leader), and
/// the value the watch saw.
#[derive(Default)]
struct Wanted {
    refetch: bool,
    invalidated: bool,
    /// `Some(None)`: deleted; `None`: the watch said nothing.
    seen: Option<Option<Vec<u8>>>,
}

/// The queue has no room for more ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Source ids waiting to be followed.
#[derive(Default)]
pub struct Pending {
    ids: Mutex<BTreeMap<String, Wanted>>,
    ready: Notify,
}

impl Pending {
    /// A change the watch saw: always taken (the source namespace is Flyte's own); a later one
    /// of the same id replaces it. One found by a relisting carries no value: it is read again.
    pub fn changed(&self, change: SourceChange) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = ids.entry(change.id).or_default();
        match change.refetch {
            true => wanted.refetch = true,
            false => wanted.seen = Some(change.value),
        }
        drop(ids);
        self.ready.notify_one();
    }

    /// Ids an invalidation names: how many were already waiting, or `Err` (nothing taken) when
    /// they would not fit.
    pub fn invalidated(&self, invalidated: Vec<String>) -> Result<usize, QueueFull> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = invalidated
            .iter()
            .filter(|id| !ids.contains_key(*id))
            .count();
        if ids.len() + fresh > MAX_PENDING {
            return Err(QueueFull);
        }
        for id in invalidated {
            let wanted = ids.entry(id).or_default();
            (wanted.refetch, wanted.invalidated) = (true, true);
        }
        drop(ids);
        self.ready.notify_one();
        Ok(fresh)
    }

    /// Every id waiting, once there is one.
    async fn take(&self) -> BTreeMap<String, Wanted> {
        loop {
            let waiting = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|p| p.into_inner()));
            if !waiting.is_empty() {
                return waiting;
            }
            self.ready.notified().await;
        }
    }
}

/// The value each id's mirrors were last brought in line with, by this replica.
#[derive(Default)]
struct Followed(HashMap<String, u64>);

impl Followed {
    /// Ids remembered; beyond, all are forgotten (a forgotten id only costs its patches again).
    const MAX: usize = 100_000;

    fn hash(value: Option<&[u8]>) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    fn is_current(&self, id: &str, value: Option<&[u8]>) -> bool {
        self.0.get(id) == Some(&Self::hash(value))
    }

    /// Another replica brings `id`'s mirrors in line now: what this one followed says nothing
    /// of them any more.
    fn forget(&mut self, id: &str) {
        self.0.remove(id);
    }

    fn record(&mut self, id: &str, value: Option<&[u8]>) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(id.to_owned(), Self::hash(value));
    }
}

/// Follows what `embedded`'s queue holds, writing through `client`, until the process ends.
pub async fn run(
    client: kube::Client,
    embedded: Arc<Embedded>,
    leadership: Leadership,
    metrics: Arc<Metrics>,
) {
    let pending = embedded.pending.clone();
    let mut elections = leadership.subscribe();
    let mut left = LeftToLeader::default();
    let mut followed = Followed::default();
    let follower = Follower {
        client: &client,
        embedded: &embedded,
        metrics: &metrics,
    };
    loop {
        tokio::select! {
            waiting = pending.take() => {
                for (id, wanted) in waiting {
                    if !wanted.refetch && !leadership.leads() {
                        tracing::debug!(id, "not elected: the elected replica follows this source");
                        followed.forget(&id);
                        left.note(id);
                        continue;
                    }
                    follower.follow(&id, wanted, &mut followed).await;
                }
            }
            Ok(()) = elections.changed() => {
                let elected = *elections.borrow_and_update();
                let ids = if elected { left.take() } else { Default::default() };
                if !ids.is_empty() {
                    tracing::info!(
                        sources = ids.len(),
                        "elected: following the source changes left to the previous leader"
                    );
                }
                for id in ids {
                    let wanted = Wanted { refetch: true, ..Wanted::default() };
                    follower.follow(&id, wanted, &mut followed).await;
                }
            }
        }
    }
}

struct Follower<'a> {
    client: &'a kube::Client,
    embedded: &'a Embedded,
    metrics: &'a Metrics,
}

impl Follower<'_> {
    /// Brings one source's mirrors in line with its value, read again when it was invalidated.
    async fn follow(&self, id: &str, wanted: Wanted, followed: &mut Followed) {
        let value = match (wanted.refetch, wanted.seen) {
            (false, Some(seen)) => seen,
            _ => match self.embedded.read_source(id).await {
                Ok(value) => value,
                Err(err) => {
                    tracing::warn!(id, error = format!("{err:#}"), "reading a source again");
                    return;
                }
            },
        };
        let count = |result| {
            if wanted.invalidated {
                self.metrics.invalidation(result, 1);
            }
        };
        if followed.is_current(id, value.as_deref()) {
            count("unchanged");
            return;
        }
        let Some((scope, _)) = parse_secret_id(id) else {
            return;
        };
        // Only where the scope's pods may run: a Secret named like a mirror anywhere else is
        // never filled, whoever labelled it.
        let namespaces = self.embedded.entitled_namespaces(&scope);
        let result = mirror::follow_source(self.client, &namespaces, id, value.as_deref()).await;
        match result {
            Ok(patched) => {
                count("followed");
                followed.record(id, value.as_deref());
                if patched > 0 {
                    tracing::info!(id, patched, "mirrors follow their source");
                }
            }
            Err(err) => {
                tracing::warn!(id, error = format!("{err:#}"), "following a source")
            }
        }
    }
}

/// The source ids a replica left to the elected one in the last [`LeftToLeader::WINDOW`]: a
/// leader that goes keeps its Lease for up to 20 s, and what it saw in its last moments may not
/// have been followed.
#[derive(Default)]
struct LeftToLeader(VecDeque<(Instant, String)>);

impl LeftToLeader {
    const WINDOW: Duration = Duration::from_secs(120);

    fn note(&mut self, id: String) {
        while self
            .0
            .front()
            .is_some_and(|(seen, _)| seen.elapsed() >= Self::WINDOW)
        {
            self.0.pop_front();
        }
        self.0.push_back((Instant::now(), id));
    }

    /// The ids left within the window, each once.
    fn take(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.0)
            .into_iter()
            .filter(|(seen, _)| seen.elapsed() < Self::WINDOW)
            .map(|(_, id)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_one_id_waits_once() {
        let pending = Pending::default();
        let id = "u__org__acme__domain____project____key__db".to_owned();
        assert_eq!(pending.invalidated(vec![id.clone()]), Ok(1));
        for _ in 0..999 {
            assert_eq!(pending.invalidated(vec![id.clone()]), Ok(0));
        }
        pending.changed(SourceChange {
            id: id.clone(),
            value: Some(b"v".to_vec()),
            refetch: false,
        });
        let waiting = pending.take().await;
        assert_eq!(waiting.len(), 1);
        let wanted = &waiting[&id];
        assert!(wanted.refetch && wanted.seen == Some(Some(b"v".to_vec())));
    }

    /// A relisting names the ids that changed while the watch was away, without their value:
    /// they are read again, never taken for deleted.
    #[tokio::test]
    async fn a_change_found_by_a_relisting_is_read_again() {
        let pending = Pending::default();
        pending.changed(SourceChange {
            id: "a".to_owned(),
            value: None,
            refetch: true,
        });
        let waiting = pending.take().await;
        let wanted = &waiting["a"];
        assert!(wanted.refetch && wanted.seen.is_none() && !wanted.invalidated);
    }

    #[test]
    fn the_queue_is_bounded() {
        let pending = Pending::default();
        let ids = |from: usize, n: usize| (from..from + n).map(|i| format!("id{i}")).collect();
        assert_eq!(pending.invalidated(ids(0, MAX_PENDING)), Ok(MAX_PENDING));
        assert_eq!(pending.invalidated(ids(MAX_PENDING, 1)), Err(QueueFull));
        // Ids already waiting still fit.
        assert_eq!(pending.invalidated(ids(0, 3)), Ok(0));
    }

    #[test]
    fn a_value_followed_is_not_followed_again() {
        let mut followed = Followed::default();
        assert!(!followed.is_current("a", Some(b"v")));
        followed.record("a", Some(b"v"));
        assert!(followed.is_current("a", Some(b"v")));
        assert!(!followed.is_current("a", Some(b"w")));
        assert!(!followed.is_current("a", None), "a deletion is a change");
        followed.forget("a");
        assert!(
            !followed.is_current("a", Some(b"v")),
            "left to another replica"
        );
    }
}
