//! Looking a secret up by scope: project, then domain, then organization. Only "no such
//! secret" falls through to the broader scope; any other error stops the lookup, so a store that
//! cannot be read never yields a broader scope's value instead of the task's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::BoxFuture;

use super::scope::Scope;

/// A place secret values live (a Kubernetes namespace, a cloud secret manager).
pub trait Backend: Send + Sync {
    /// The value of secret `id`, or `None` when the backend has no such secret.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
}

/// A secret found, and in which scope.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    pub id: String,
    pub scope: Scope,
    pub value: Vec<u8>,
}

/// Never prints the value.
impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("value_bytes", &self.value.len())
            .finish()
    }
}

/// A backend with the cascade, and for backends that are slow or billed per call (the cloud
/// ones), a cache of found values for `ttl`. Not-found is never cached: a secret created a
/// moment ago must be found by the next pod.
pub struct Store {
    backend: Arc<dyn Backend>,
    ttl: Option<Duration>,
    cache: Mutex<HashMap<String, (Instant, Vec<u8>)>>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>, ttl: Option<Duration>) -> Self {
        Self {
            backend,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The narrowest scope's value of `key`, or `None` when no scope has it. The policy walks
    /// the same cascade itself through [`Store::get`]; this is the host's one-call form, for
    /// checking a backend's layout.
    pub async fn resolve(&self, scope: &Scope, key: &str) -> Result<Option<Resolved>> {
        for scope in scope.cascade() {
            let id = scope.secret_id(key);
            if let Some(value) = self.get(&id).await? {
                return Ok(Some(Resolved { id, scope, value }));
            }
        }
        Ok(None)
    }

    /// The value of secret `id` in one scope: what the policy's `secret-store.lookup` asks.
    pub async fn get(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match self.cached(id) {
            Some(value) => Ok(Some(value)),
            None => self.fetch(id).await,
        }
    }

    fn cached(&self, id: &str) -> Option<Vec<u8>> {
        let ttl = self.ttl?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, value) = cache.get(id)?;
        (at.elapsed() < ttl).then(|| value.clone())
    }

    async fn fetch(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let value = self.backend.get(id).await?;
        if let (Some(value), Some(_)) = (&value, self.ttl) {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(id.to_owned(), (Instant::now(), value.clone()));
        }
        Ok(value)
    }

    /// Forgets secret `key` of `scope` in all three scopes of its cascade, as Flyte 2's
    /// invalidation does. Returns how many cached values went.
    pub fn invalidate(&self, scope: &Scope, key: &str) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        scope
            .cascade()
            .iter()
            .filter(|scope| cache.remove(&scope.secret_id(key)).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values by id; ids in `broken` fail to read. Counts reads.
    #[derive(Default)]
    struct Memory {
        values: Mutex<HashMap<String, Vec<u8>>>,
        broken: Vec<String>,
        reads: Mutex<usize>,
    }

    impl Backend for Memory {
        fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
            Box::pin(async move {
                *self.reads.lock().unwrap() += 1;
                anyhow::ensure!(!self.broken.iter().any(|b| b == id), "permission denied");
                Ok(self.values.lock().unwrap().get(id).cloned())
            })
        }
    }

    fn scope() -> Scope {
        Scope {
            org: "acme".into(),
            domain: "development".into(),
            project: "ml".into(),
        }
    }

    fn memory(pairs: &[(Scope, &str, &str)]) -> Memory {
        let values = pairs
            .iter()
            .map(|(scope, key, value)| (scope.secret_id(key), value.as_bytes().to_vec()))
            .collect();
        Memory {
            values: Mutex::new(values),
            ..Memory::default()
        }
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn the_narrowest_scope_wins_and_only_not_found_falls_through() {
        let [project, domain, org] = scope().cascade();
        let store = Store::new(
            Arc::new(memory(&[
                (org.clone(), "db", "org"),
                (domain.clone(), "db", "domain"),
            ])),
            None,
        );
        let found = block_on(store.resolve(&scope(), "db")).unwrap().unwrap();
        let printed = format!("{found:?}");
        assert!(
            printed.contains("value_bytes: 6") && !printed.contains("[100"),
            "{printed}"
        );
        assert_eq!((found.scope, found.value), (domain, b"domain".to_vec()));
        assert_eq!(block_on(store.resolve(&scope(), "missing")).unwrap(), None);

        let broken = Memory {
            broken: vec![project.secret_id("db")],
            ..memory(&[(org, "db", "org")])
        };
        let store = Store::new(Arc::new(broken), None);
        let err = block_on(store.resolve(&scope(), "db")).unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
    }

    #[test]
    fn a_cached_broad_value_does_not_mask_a_new_narrow_one() {
        let [project, _, org] = scope().cascade();
        let backend = Arc::new(memory(&[(org.clone(), "db", "org")]));
        let store = Store::new(backend.clone(), Some(Duration::from_secs(600)));
        assert_eq!(
            block_on(store.resolve(&scope(), "db"))
                .unwrap()
                .unwrap()
                .value,
            b"org"
        );
        backend
            .values
            .lock()
            .unwrap()
            .insert(project.secret_id("db"), b"project".to_vec());
        // Not-found is not cached: the project scope is asked again and now answers.
        let found = block_on(store.resolve(&scope(), "db")).unwrap().unwrap();
        assert_eq!(
            (found.scope, found.value),
            (project.clone(), b"project".to_vec())
        );
        let reads = *backend.reads.lock().unwrap();
        assert_eq!(
            block_on(store.resolve(&scope(), "db"))
                .unwrap()
                .unwrap()
                .value,
            b"project"
        );
        assert_eq!(
            *backend.reads.lock().unwrap(),
            reads,
            "served from the cache"
        );

        backend
            .values
            .lock()
            .unwrap()
            .insert(project.secret_id("db"), b"rotated".to_vec());
        assert_eq!(
            store.invalidate(&scope(), "db"),
            2,
            "the project and org values were cached"
        );
        assert_eq!(
            block_on(store.resolve(&scope(), "db"))
                .unwrap()
                .unwrap()
                .value,
            b"rotated"
        );
    }
}
