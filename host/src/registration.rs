//! The webhook's life in a cluster: its certificate Secret (`init-certs`) and its
//! MutatingWebhookConfiguration (`register`, `unregister`, and `serve` keeping it applied).
//!
//! Replicas share one Secret and converge on one CA: the Secret is created only if absent, and
//! renewed with the resourceVersion it was read at, so of two racing writers one wins and the
//! other re-reads. The MutatingWebhookConfiguration is written by server-side apply with field
//! manager `secrets-webhook`, owned by labels rather than ownerReferences (Flyte #6692).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::certs::{self, Bundle};
use crate::health::Readiness;
use crate::metrics::Metrics;

pub const FIELD_MANAGER: &str = "secrets-webhook";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "secrets-webhook");

/// Where the API server should send reviews, and how.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The MutatingWebhookConfiguration's name.
    pub name: String,
    pub namespace: String,
    pub service_name: String,
    pub service_port: i32,
    /// A URL outside the cluster instead of the Service.
    pub url: Option<String>,
    pub failure_policy: String,
    pub timeout_seconds: i32,
    /// Added to the built-in exclusion of our namespace and kube-system.
    pub namespace_selector: Option<LabelSelector>,
    /// `<namespace>/<Certificate>` when cert-manager's cainjector owns the `caBundle`: the
    /// configuration then carries its `inject-ca-from` annotation and never a bundle of ours.
    pub ca_injected_from: Option<String>,
}

/// The annotation cert-manager's cainjector follows to fill in a webhook's `caBundle`.
pub const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

/// The configuration we apply: pods, CREATE, opted-in by label, never our namespace.
pub fn webhook_configuration(
    target: &WebhookTarget,
    ca_bundle: Option<&[u8]>,
) -> MutatingWebhookConfiguration {
    // Leaving the field out of our apply leaves it to cainjector's field manager.
    let ca_bundle = ca_bundle.filter(|_| target.ca_injected_from.is_none());
    let client_config = WebhookClientConfig {
        ca_bundle: ca_bundle.map(|ca| ByteString(ca.to_vec())),
        service: target.url.is_none().then(|| ServiceReference {
            name: target.service_name.clone(),
            namespace: target.namespace.clone(),
            path: Some("/mutate".to_owned()),
            port: Some(target.service_port),
        }),
        url: target.url.clone(),
    };
    let mut namespace_selector = target.namespace_selector.clone().unwrap_or_default();
    namespace_selector
        .match_expressions
        .get_or_insert_with(Vec::new)
        .push(LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(vec![target.namespace.clone(), "kube-system".to_owned()]),
        });
    let object_selector = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            secrets_policy::annotations::POD_LABEL.to_owned(),
            secrets_policy::annotations::POD_LABEL_VALUE.to_owned(),
        )])),
        ..LabelSelector::default()
    };
    let webhook = MutatingWebhook {
        name: "secrets.secrets-webhook.flyte.org".to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config,
        failure_policy: Some(target.failure_policy.clone()),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector: Some(namespace_selector),
        object_selector: Some(object_selector),
        reinvocation_policy: Some("IfNeeded".to_owned()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(vec!["CREATE".to_owned()]),
            resources: Some(vec!["pods".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(target.timeout_seconds),
        match_conditions: None,
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (
                    "app.kubernetes.io/name".to_owned(),
                    "secrets-webhook".to_owned(),
                ),
            ])),
            annotations: target
                .ca_injected_from
                .as_ref()
                .map(|from| BTreeMap::from([(INJECT_CA_FROM.to_owned(), from.clone())])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![webhook]),
    }
}

/// Applies the configuration (server-side apply, forcing ownership of our fields).
pub async fn register(
    client: kube::Client,
    target: &WebhookTarget,
    ca_bundle: Option<&[u8]>,
) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let desired = webhook_configuration(target, ca_bundle);
    api.patch(
        &target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .with_context(|| format!("applying MutatingWebhookConfiguration {}", target.name))?;
    Ok(())
}

/// Deletes the configuration. Returns whether there was one.
pub async fn unregister(client: kube::Client, name: &str) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
        Err(err) => {
            Err(err).with_context(|| format!("deleting MutatingWebhookConfiguration {name}"))
        }
    }
}

/// What `init-certs` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertAction {
    Created,
    Kept,
    Renewed { reason: String },
}

/// The certificate Secret.
#[derive(Debug, Clone)]
pub struct CertSecret {
    pub namespace: String,
    pub name: String,
    /// Names the serving certificate must carry.
    pub names: Vec<String>,
    pub renew_before: time::Duration,
}

fn bundle_of(secret: &Secret) -> Bundle {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .unwrap_or_default()
    };
    Bundle {
        ca_pem: field(certs::CA_FILE),
        cert_pem: field(certs::CERT_FILE),
        key_pem: field(certs::KEY_FILE),
    }
}

fn data_of(bundle: &Bundle) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (
            certs::CA_FILE.to_owned(),
            ByteString(bundle.ca_pem.clone().into_bytes()),
        ),
        (
            certs::CERT_FILE.to_owned(),
            ByteString(bundle.cert_pem.clone().into_bytes()),
        ),
        (
            certs::KEY_FILE.to_owned(),
            ByteString(bundle.key_pem.clone().into_bytes()),
        ),
    ])
}

/// Makes sure the Secret holds a valid bundle for `spec.names`: creates it if absent, renews it if
/// it is incomplete, for other names, or near expiry, and otherwise leaves it alone.
pub async fn init_certs(client: kube::Client, spec: &CertSecret) -> Result<(Bundle, CertAction)> {
    let api: Api<Secret> = Api::namespaced(client, &spec.namespace);
    let what = format!("Secret {}/{}", spec.namespace, spec.name);
    // Each pass either finishes or lost a race and re-reads what the winner wrote.
    for _ in 0..5 {
        let existing = api
            .get_opt(&spec.name)
            .await
            .with_context(|| format!("reading {what}"))?;
        let Some(mut existing) = existing else {
            let bundle = certs::renew(None, &spec.names, certs::Validity::default())?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(spec.name.clone()),
                    namespace: Some(spec.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        MANAGED_BY.0.to_owned(),
                        MANAGED_BY.1.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(data_of(&bundle)),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok((bundle, CertAction::Created)),
                Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
                Err(err) => return Err(err).with_context(|| format!("creating {what}")),
            }
        };
        let old = bundle_of(&existing);
        let Some(reason) = certs::renewal_reason(&old, &spec.names, spec.renew_before) else {
            return Ok((old, CertAction::Kept));
        };
        if existing.immutable == Some(true) {
            bail!(
                "{what} must be renewed ({reason}) but is immutable; delete it and run init-certs again"
            );
        }
        let bundle = certs::renew(Some(&old), &spec.names, certs::Validity::default())?;
        existing.data = Some(data_of(&bundle));
        existing.string_data = None;
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a Conflict.
        match api
            .replace(&spec.name, &PostParams::default(), &existing)
            .await
        {
            Ok(_) => return Ok((bundle, CertAction::Renewed { reason })),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(err) => return Err(err).with_context(|| format!("renewing {what}")),
        }
    }
    bail!("{what} kept changing while init-certs tried to update it")
}

/// Keeps the configuration applied while `serve` runs: at start (readiness waits for it), again
/// whenever `ca.crt` in `cert_dir` changes (a renewal), and every few minutes against drift.
/// Failures are retried with backoff, logged at error level and counted.
pub async fn keep_registered(
    client: kube::Client,
    target: WebhookTarget,
    cert_dir: std::path::PathBuf,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) {
    const CHECK: Duration = Duration::from_secs(15);
    const REAPPLY: Duration = Duration::from_secs(300);
    let mut applied: Option<(Option<Vec<u8>>, std::time::Instant)> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        let ca = match target.ca_injected_from {
            Some(_) => None,
            None => read_ca(&cert_dir),
        };
        let due = match &applied {
            None => true,
            Some((bundle, at)) => *bundle != ca || at.elapsed() >= REAPPLY,
        };
        if !due {
            tokio::time::sleep(CHECK).await;
            continue;
        }
        match register(client.clone(), &target, ca.as_deref()).await {
            Ok(()) => {
                if applied.is_none() {
                    tracing::info!(name = target.name, "MutatingWebhookConfiguration applied");
                }
                applied = Some((ca, std::time::Instant::now()));
                metrics.registration(true);
                readiness.set_registered();
                backoff = Duration::from_secs(1);
            }
            Err(err) => {
                tracing::error!(
                    name = target.name,
                    error = format!("{err:#}"),
                    retry_in = ?backoff,
                    "registering the webhook failed; pods that ask for secrets may be created without them or be refused"
                );
                metrics.registration(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

fn read_ca(cert_dir: &Path) -> Option<Vec<u8>> {
    match std::fs::read(cert_dir.join(certs::CA_FILE)) {
        Ok(bytes) if !bytes.is_empty() => Some(bytes),
        _ => {
            tracing::warn!(dir = %cert_dir.display(), "no ca.crt: registering without a caBundle");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> WebhookTarget {
        WebhookTarget {
            name: "secrets-webhook".into(),
            namespace: "sw".into(),
            service_name: "secrets-webhook".into(),
            service_port: 443,
            url: None,
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("flyte".to_owned(), "enabled".to_owned())])),
                ..LabelSelector::default()
            }),
            ca_injected_from: None,
        }
    }

    #[test]
    fn the_configuration_we_apply() {
        let mwc = serde_json::to_value(webhook_configuration(&target(), Some(b"CA"))).unwrap();
        let expected = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "secrets-webhook", "labels": {
                "app.kubernetes.io/managed-by": "secrets-webhook", "app.kubernetes.io/name": "secrets-webhook"}},
            "webhooks": [{
                "name": "secrets.secrets-webhook.flyte.org",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {"caBundle": "Q0E=", "service": {"name": "secrets-webhook", "namespace": "sw", "path": "/mutate", "port": 443}},
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "namespaceSelector": {
                    "matchLabels": {"flyte": "enabled"},
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["sw", "kube-system"]}]},
                "objectSelector": {"matchLabels": {"inject-flyte-secrets": "true"}},
                "reinvocationPolicy": "IfNeeded",
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
                "sideEffects": "None",
                "timeoutSeconds": 5
            }]
        });
        assert_eq!(mwc, expected);
    }

    #[test]
    fn a_url_replaces_the_service() {
        let target = WebhookTarget {
            url: Some("https://hooks.example.com:8443/mutate".into()),
            ..target()
        };
        let mwc = serde_json::to_value(webhook_configuration(&target, None)).unwrap();
        assert_eq!(
            mwc["webhooks"][0]["clientConfig"],
            serde_json::json!({"url": "https://hooks.example.com:8443/mutate"})
        );
    }

    #[test]
    fn with_cert_manager_the_bundle_is_left_to_cainjector() {
        let target = WebhookTarget {
            ca_injected_from: Some("sw/secrets-webhook".into()),
            ..target()
        };
        let mwc = serde_json::to_value(webhook_configuration(&target, Some(b"CA"))).unwrap();
        assert_eq!(
            mwc["metadata"]["annotations"],
            serde_json::json!({"cert-manager.io/inject-ca-from": "sw/secrets-webhook"})
        );
        assert_eq!(
            mwc["webhooks"][0]["clientConfig"],
            serde_json::json!({"service": {"name": "secrets-webhook", "namespace": "sw", "path": "/mutate", "port": 443}})
        );
    }
}
