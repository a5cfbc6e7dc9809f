//! Mirrors: in the Embedded manager's Mirror mode no secret value is written into a pod. The
//! webhook keeps, in the pod's namespace, one Secret per resolved secret id — a deterministic
//! name, labelled as ours — and the pod refers to it (`secretKeyRef`, a secret volume). Mirrors
//! follow their source (updated or deleted with it), and a sweep removes those no pod refers to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};

use time::OffsetDateTime;

use super::scope::{id_hash as source_hash, mirror_name};

use crate::{FIELD_MANAGER, MANAGED_BY};

/// Marks a Secret as a mirror; only such Secrets are ever updated or deleted here.
pub const MIRROR_LABEL: (&str, &str) = ("secrets-webhook.flyte.org/mirror", "true");
/// The source's hash, to find every mirror of one source.
pub const SOURCE_LABEL: &str = "secrets-webhook.flyte.org/source";
/// The source's secret id, for people.
pub const SOURCE_ID: &str = "secrets-webhook.flyte.org/source-id";
/// When a pod last asked for it (RFC 3339): the sweep spares mirrors used recently, whose pod
/// may still be on its way through admission.
pub const LAST_USED: &str = "secrets-webhook.flyte.org/last-used";
/// The key a mirror holds its value under (the policy's `secretKeyRef`s name it).
pub const VALUE_KEY: &str = secrets_policy::scope::MIRROR_KEY;

/// The mirror of secret `id`, the same in every namespace: the name the policy refers to.
pub fn name(id: &str) -> String {
    mirror_name(id)
}

/// One mirror to write.
pub struct Mirror<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub value: &'a [u8],
}

fn secret(id: &str, value: &[u8], last_used: OffsetDateTime) -> Result<Secret> {
    let last_used = last_used.format(&time::format_description::well_known::Rfc3339)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name(id)),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (MIRROR_LABEL.0.to_owned(), MIRROR_LABEL.1.to_owned()),
                (SOURCE_LABEL.to_owned(), source_hash(id)),
            ])),
            annotations: Some(BTreeMap::from([
                (SOURCE_ID.to_owned(), id.to_owned()),
                (LAST_USED.to_owned(), last_used),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            VALUE_KEY.to_owned(),
            ByteString(value.to_vec()),
        )])),
        ..Secret::default()
    })
}

/// Creates or updates the mirror (server-side apply, so it is the same call either way).
pub async fn apply(client: &kube::Client, mirror: &Mirror<'_>) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), mirror.namespace);
    let desired = secret(mirror.id, mirror.value, OffsetDateTime::now_utc())?;
    let name = name(mirror.id);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .with_context(|| format!("writing mirror Secret {}/{name}", mirror.namespace))?;
    Ok(())
}

/// The name a pull copy records its source under (`SOURCE_ID`): `<namespace>/<name>`.
fn pull_source(source: &Secret) -> String {
    let meta = &source.metadata;
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Copies image pull Secret `source` (Flyte 2's `img-pull-<hash>`, in the store's namespace)
/// into `namespace` under its own name, type and data, as Flyte 2 does. Labelled as a mirror:
/// the mirror policy lets the webhook write only those, and the sweep removes it once no pod
/// lists it. Written by server-side apply, so a rotated source reaches the copy with the next pod.
pub async fn apply_pull_copy(
    client: &kube::Client,
    namespace: &str,
    source: &Secret,
) -> Result<()> {
    let name = source.metadata.name.clone().unwrap_or_default();
    let last_used =
        OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let mut labels = source.metadata.labels.clone().unwrap_or_default();
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    labels.insert(MIRROR_LABEL.0.to_owned(), MIRROR_LABEL.1.to_owned());
    let desired = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (SOURCE_ID.to_owned(), pull_source(source)),
                (LAST_USED.to_owned(), last_used),
            ])),
            ..ObjectMeta::default()
        },
        type_: source.type_.clone(),
        data: source.data.clone(),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .with_context(|| {
        format!(
            "copying image pull Secret {} to {namespace}",
            pull_source(source)
        )
    })?;
    Ok(())
}

/// JSON Patch operations that only apply to a Secret carrying the mirror label: the API server
/// checks the `test` and the change in one step, so a Secret that is not ours is never changed,
/// and nothing needs to be read first (the webhook may not read Secrets outside the source
/// namespace).
fn guarded(then: serde_json::Value) -> Result<json_patch::Patch> {
    let label = MIRROR_LABEL.0.replace('~', "~0").replace('/', "~1");
    let mut ops = vec![serde_json::json!(
        {"op": "test", "path": format!("/metadata/labels/{label}"), "value": MIRROR_LABEL.1}
    )];
    ops.extend(then.as_array().cloned().unwrap_or_default());
    Ok(serde_json::from_value(serde_json::Value::Array(ops))?)
}

/// Patches mirror `name` with `then`; the mirror's metadata after it, or `None` when there is
/// no such Secret, it is not a mirror, or a `test` failed.
async fn patch_mirror(
    api: &Api<Secret>,
    name: &str,
    then: serde_json::Value,
) -> Result<Option<ObjectMeta>> {
    let patch = Patch::<()>::Json(guarded(then)?);
    match api.patch(name, &PatchParams::default(), &patch).await {
        Ok(secret) => Ok(Some(secret.metadata)),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 422 => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Brings the mirror of `id` in `namespace` in line with its source, in one request: whether
/// there is such a mirror. A mirror already in line is left as it is (the API server writes
/// nothing for a patch that changes nothing).
async fn follow_in(
    client: &kube::Client,
    namespace: &str,
    id: &str,
    value: Option<&[u8]>,
) -> Result<bool> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = name(id);
    match value {
        Some(value) => {
            let encoded = serde_json::to_value(ByteString(value.to_vec()))?;
            let path = format!("/data/{VALUE_KEY}");
            let set = serde_json::json!([{"op": "add", "path": path, "value": encoded}]);
            Ok(patch_mirror(&api, &name, set).await?.is_some())
        }
        None => {
            let Some(current) = patch_mirror(&api, &name, serde_json::json!([])).await? else {
                return Ok(false);
            };
            // Deleted only as the labelled Secret just seen, not one recreated since.
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: current.resource_version,
                    uid: current.uid,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {
                    Ok(false)
                }
                Err(err) => Err(err).with_context(|| format!("deleting mirror {namespace}/{name}")),
            }
        }
    }
}

/// Brings every mirror of `id` in `namespaces` in line with its source: the new value, or gone
/// with it. Returns how many mirrors there were.
pub async fn follow_source(
    client: &kube::Client,
    namespaces: &[String],
    id: &str,
    value: Option<&[u8]>,
) -> Result<usize> {
    use futures::StreamExt as _;
    let mut follows: Vec<futures::future::BoxFuture<'_, Result<bool>>> = Vec::new();
    for namespace in namespaces {
        follows.push(Box::pin(follow_in(client, namespace, id, value)));
    }
    let results: Vec<Result<bool>> = futures::stream::iter(follows)
        .buffer_unordered(16)
        .collect()
        .await;
    let mut changed = 0;
    for result in results {
        changed += usize::from(result?);
    }
    Ok(changed)
}

/// The Secrets a pod refers to: env and envFrom of every container, volumes (projected too),
/// image pull Secrets.
fn referenced(pod: &Pod) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return names;
    };
    for pull in spec.image_pull_secrets.iter().flatten() {
        names.insert(pull.name.clone());
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        for env in container.env.iter().flatten() {
            if let Some(name) = env
                .value_from
                .as_ref()
                .and_then(|from| from.secret_key_ref.as_ref())
                .map(|key| key.name.clone())
            {
                names.insert(name);
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                names.insert(secret.name.clone());
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            names.insert(name);
        }
        let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in sources.into_iter().flatten() {
            if let Some(secret) = &source.secret {
                names.insert(secret.name.clone());
            }
        }
    }
    names
}

/// Deletes the mirrors no pod in their namespace refers to and no pod asked for within
/// `grace`. Returns how many went.
pub async fn sweep(client: &kube::Client, grace: Duration) -> Result<usize> {
    let all: Api<Secret> = Api::all(client.clone());
    let selector = format!("{}={}", MIRROR_LABEL.0, MIRROR_LABEL.1);
    let mirrors = all
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .context("listing mirrors")?;
    let now = OffsetDateTime::now_utc();
    let mut in_use: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut swept = 0;
    for mirror in mirrors {
        let (Some(namespace), Some(name)) = (mirror.metadata.namespace, mirror.metadata.name)
        else {
            continue;
        };
        let last_used = mirror
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAST_USED))
            .and_then(|at| {
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            });
        if last_used.is_some_and(|at| now - at < grace) {
            continue;
        }
        if !in_use.contains_key(&namespace) {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let names = pods
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing pods in {namespace}"))?
                .items
                .iter()
                .flat_map(referenced)
                .collect();
            in_use.insert(namespace.clone(), names);
        }
        if in_use[&namespace].contains(&name) {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => swept += 1,
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => {
                return Err(err).with_context(|| format!("deleting mirror {namespace}/{name}"));
            }
        }
        tracing::info!(namespace, name, "unused mirror removed");
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_valid() {
        let id = "u__org__acme__domain__development__project__ml__key__db";
        assert_eq!(name(id), name(id));
        assert_ne!(name(id), name(&id.replace("db", "dc")));
        let name = name(id);
        assert_eq!(name.len(), "flyte-secret-".len() + 32);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn every_way_a_pod_refers_to_a_secret_counts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from-init"}}]}],
                "containers": [{"name": "c", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-ref", "key": "value"}}},
                    {"name": "B", "value": "plain"}]}],
                "volumes": [
                    {"name": "v", "secret": {"secretName": "volume"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "projected"}}]}}],
                "imagePullSecrets": [{"name": "img-pull-0123456789abcdef"}]
            }
        }))
        .unwrap();
        assert_eq!(
            referenced(&pod).into_iter().collect::<Vec<_>>(),
            [
                "env-ref",
                "from-init",
                "img-pull-0123456789abcdef",
                "projected",
                "volume"
            ]
        );
    }
}
