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
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

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
/// The key a mirror holds its value under.
pub const VALUE_KEY: &str = "value";

fn source_hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The mirror of secret `id`, the same in every namespace.
pub fn name(id: &str) -> String {
    format!("flyte-secret-{}", source_hash(id))
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

fn mirrors_of(id: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "{}={},{SOURCE_LABEL}={}",
        MIRROR_LABEL.0,
        MIRROR_LABEL.1,
        source_hash(id)
    ))
}

/// Brings every mirror of `id` in line with its source: the new value, or gone with it.
/// Returns how many mirrors changed.
pub async fn follow_source(client: &kube::Client, id: &str, value: Option<&[u8]>) -> Result<usize> {
    let all: Api<Secret> = Api::all(client.clone());
    let mirrors = all
        .list_metadata(&mirrors_of(id))
        .await
        .context("listing mirrors")?;
    let mut changed = 0;
    for mirror in mirrors {
        let Some(namespace) = mirror.metadata.namespace.as_deref() else {
            continue;
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let name = mirror.metadata.name.unwrap_or_default();
        match value {
            Some(value) => {
                let current = api.get(&name).await.context("reading a mirror")?;
                let same = current
                    .data
                    .as_ref()
                    .and_then(|data| data.get(VALUE_KEY))
                    .is_some_and(|stored| stored.0 == value);
                if same {
                    continue;
                }
                let patch = serde_json::json!({"data": {VALUE_KEY: ByteString(value.to_vec())}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("updating mirror {namespace}/{name}"))?;
            }
            None => {
                api.delete(&name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting mirror {namespace}/{name}"))?;
            }
        }
        changed += 1;
    }
    Ok(changed)
}

/// The Secrets a pod refers to: env and envFrom of every container, volumes (projected too).
fn referenced(pod: &Pod) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return names;
    };
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
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "projected"}}]}}]
            }
        }))
        .unwrap();
        assert_eq!(
            referenced(&pod).into_iter().collect::<Vec<_>>(),
            ["env-ref", "from-init", "projected", "volume"]
        );
    }
}
