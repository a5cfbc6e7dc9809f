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

impl K8sBackend {
    /// The backend for `namespace`, and the future that keeps it in step (spawn it); each
    /// secret seen to change (listed, written or deleted) is passed to `on_change`.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        on_change: impl Fn(SourceChange) + Send + 'static,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (secrets, writer) = reflector::store();
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let name = namespace.to_owned();
        let follow = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(Event::Apply(secret) | Event::InitApply(secret)) => {
                        changes(&secret, false).for_each(&on_change)
                    }
                    Ok(Event::Delete(secret)) => changes(&secret, true).for_each(&on_change),
                    Ok(Event::Init | Event::InitDone) => {}
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
