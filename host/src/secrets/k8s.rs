//! The K8s backend: Flyte 2's layout, one Secret per secret id in a source namespace, named by
//! the id's md5, holding the value under the id. A reflector follows the namespace, so a changed
//! source reaches the next lookup within a watch event and lookups make no API calls.

use std::sync::Arc;

use anyhow::{Result, bail};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};

use super::scope::k8s_secret_name;
use super::store::Backend;

pub struct K8sBackend {
    namespace: String,
    secrets: reflector::Store<Secret>,
}

/// A source secret seen to change: its id, and its value (`None`: deleted), or a request to
/// read it again (`refetch`: an invalidation said it changed).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceChange {
    pub id: String,
    pub value: Option<Vec<u8>>,
    pub refetch: bool,
}

/// Every id a source Secret holds, with its value, or with none when the Secret went.
fn changes(secret: &Secret, deleted: bool) -> impl Iterator<Item = SourceChange> + '_ {
    secret
        .data
        .iter()
        .flatten()
        .map(move |(id, value)| SourceChange {
            id: id.clone(),
            value: (!deleted).then(|| value.0.clone()),
            refetch: false,
        })
}

/// What the watch has seen of the source, to tell what a relisting changed: a relisting (after
/// the watch lost its place) reports every Secret again, and only the differences may reach the
/// mirrors — one change per id and namespace otherwise, for every secret.
#[derive(Default)]
struct Seen {
    /// id → hash of its value.
    values: std::collections::HashMap<String, u64>,
    /// Being relisted: what the relisting has reported so far.
    relisting: Option<std::collections::HashMap<String, u64>>,
    /// The first listing is done: before it there is nothing to compare with.
    listed: bool,
}

fn hash(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Seen {
    /// The changes `event` makes, in the order to pass them on.
    fn changes(&mut self, event: Event<Secret>) -> Vec<SourceChange> {
        match event {
            Event::Apply(secret) => {
                let changed = changes(&secret, false).collect::<Vec<_>>();
                for change in &changed {
                    let value = change.value.as_deref().unwrap_or_default();
                    self.values.insert(change.id.clone(), hash(value));
                }
                changed
            }
            Event::Delete(secret) => {
                let gone = changes(&secret, true).collect::<Vec<_>>();
                for change in &gone {
                    self.values.remove(&change.id);
                }
                gone
            }
            Event::Init => {
                self.relisting = Some(Default::default());
                Vec::new()
            }
            Event::InitApply(secret) => {
                let relisting = self.relisting.get_or_insert_with(Default::default);
                for change in changes(&secret, false) {
                    let value = change.value.as_deref().unwrap_or_default();
                    relisting.insert(change.id, hash(value));
                }
                Vec::new()
            }
            Event::InitDone => self.relisted(),
        }
    }

    /// The ids a finished relisting shows changed or gone (none after the first listing).
    fn relisted(&mut self) -> Vec<SourceChange> {
        let now = self.relisting.take().unwrap_or_default();
        let before = std::mem::replace(&mut self.values, now);
        if !std::mem::replace(&mut self.listed, true) {
            return Vec::new();
        }
        let changed = self
            .values
            .iter()
            .filter(|(id, value)| before.get(*id) != Some(value))
            .map(|(id, _)| SourceChange {
                id: id.clone(),
                value: None,
                refetch: true,
            });
        let gone = before
            .keys()
            .filter(|id| !self.values.contains_key(*id))
            .map(|id| SourceChange {
                id: id.clone(),
                value: None,
                refetch: false,
            });
        changed.chain(gone).collect()
    }
}

impl K8sBackend {
    /// The backend for `namespace`, and the future that keeps it in step (spawn it); each
    /// secret seen to change (written, deleted, or different after a relisting) is passed to
    /// `on_change`.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        on_change: impl Fn(SourceChange) + Send + 'static,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (secrets, writer) = reflector::store();
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let name = namespace.to_owned();
        let mut seen = Seen::default();
        let follow = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(event) => seen.changes(event).into_iter().for_each(&on_change),
                    Err(err) => {
                        tracing::warn!(namespace = name, error = %err, "watching the secrets source")
                    }
                }
                std::future::ready(())
            });
        let backend = Arc::new(Self {
            namespace: namespace.to_owned(),
            secrets,
        });
        (backend, follow)
    }

    /// Waits until the first listing is in: before it, every secret would look missing.
    pub async fn ready(&self) -> Result<()> {
        self.secrets.wait_until_ready().await?;
        Ok(())
    }
}

impl Backend for K8sBackend {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let name = k8s_secret_name(id);
            let Some(secret) = self
                .secrets
                .get(&ObjectRef::new(&name).within(&self.namespace))
            else {
                return Ok(None);
            };
            // A Secret of the right name without the id is a misconfigured source, not an
            // absent secret: falling through would hand out a broader scope's value.
            match secret.data.as_ref().and_then(|data| data.get(id)) {
                Some(value) => Ok(Some(value.0.clone())),
                None => bail!("Secret {}/{name} holds no key {id}", self.namespace),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn source(name: &str, values: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(
                values
                    .iter()
                    .map(|(id, v)| ((*id).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn ids(changes: &[SourceChange]) -> Vec<(&str, bool)> {
        changes.iter().map(|c| (c.id.as_str(), c.refetch)).collect()
    }

    #[test]
    fn only_what_a_relisting_changed_is_passed_on() {
        let mut seen = Seen::default();
        // The first listing: nothing to compare with, nothing passed on.
        assert!(seen.changes(Event::Init).is_empty());
        assert!(
            seen.changes(Event::InitApply(source("a", &[("a", "1")])))
                .is_empty()
        );
        assert!(
            seen.changes(Event::InitApply(source("b", &[("b", "1")])))
                .is_empty()
        );
        assert!(seen.changes(Event::InitDone).is_empty());
        // Watch events pass on at once.
        let written = seen.changes(Event::Apply(source("c", &[("c", "1")])));
        assert_eq!(written[0].value.as_deref(), Some(&b"1"[..]));
        // A relisting: a unchanged, b changed, c gone, d new.
        seen.changes(Event::Init);
        seen.changes(Event::InitApply(source("a", &[("a", "1")])));
        seen.changes(Event::InitApply(source("b", &[("b", "2")])));
        seen.changes(Event::InitApply(source("d", &[("d", "1")])));
        let mut relisted = seen.changes(Event::InitDone);
        relisted.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(ids(&relisted), [("b", true), ("c", false), ("d", true)]);
        assert!(relisted.iter().all(|c| c.value.is_none()));
    }
}
