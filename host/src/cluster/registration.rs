//! The MutatingWebhookConfiguration: what it should be, applying it (server-side apply with
//! field manager `secrets-webhook`, owned by labels rather than ownerReferences, Flyte #6692),
//! noticing drift, and watching it so that a deleted or edited one is restored within seconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::health::Readiness;

pub use crate::{FIELD_MANAGER, MANAGED_BY};

/// The name of our one webhook inside the configuration.
pub const WEBHOOK_NAME: &str = "secrets.secrets-webhook.flyte.org";

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
        name: WEBHOOK_NAME.to_owned(),
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
        // The Embedded manager writes mirror Secrets, never on a dry run.
        side_effects: "NoneOnDryRun".to_owned(),
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

/// Why `observed` is not what we apply (`desired`), or `None` when every field we set holds.
/// Fields others add (API server defaults, other webhooks in the list) are not drift.
pub fn drift(
    observed: Option<&MutatingWebhookConfiguration>,
    desired: &MutatingWebhookConfiguration,
) -> Option<String> {
    let Some(observed) = observed else {
        return Some("it does not exist".to_owned());
    };
    let observed = serde_json::to_value(observed).ok()?;
    let desired = serde_json::to_value(desired).ok()?;
    for field in ["labels", "annotations"] {
        if let Some(path) = differs(&desired["metadata"][field], &observed["metadata"][field]) {
            return Some(format!("metadata.{field}{path} changed"));
        }
    }
    let ours = |config: &Value| {
        config["webhooks"]
            .as_array()
            .and_then(|hooks| hooks.iter().find(|hook| hook["name"] == WEBHOOK_NAME))
            .cloned()
    };
    let Some(observed_hook) = ours(&observed) else {
        return Some(format!("webhook {WEBHOOK_NAME} is missing"));
    };
    let desired_hook = ours(&desired)?;
    differs(&desired_hook, &observed_hook)
        .map(|path| format!("webhooks[{WEBHOOK_NAME}]{path} changed"))
}

/// The first place where `observed` lacks or alters what `desired` holds, as a path.
fn differs(desired: &Value, observed: &Value) -> Option<String> {
    match (desired, observed) {
        (Value::Null, _) => None,
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(key, value)| {
            differs(value, have.get(key).unwrap_or(&Value::Null))
                .map(|path| format!(".{key}{path}"))
        }),
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => want
            .iter()
            .zip(have)
            .enumerate()
            .find_map(|(at, (want, have))| differs(want, have).map(|path| format!("[{at}]{path}"))),
        _ if desired == observed => None,
        _ => Some(String::new()),
    }
}

/// The configuration as the API server has it now, if any.
pub async fn observe(
    client: kube::Client,
    name: &str,
) -> Result<Option<MutatingWebhookConfiguration>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    api.get_opt(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))
}

/// The `caBundle` of our webhook in `config`, if any.
pub fn ca_bundle_of(config: &MutatingWebhookConfiguration) -> Option<Vec<u8>> {
    config
        .webhooks
        .iter()
        .flatten()
        .find(|hook| hook.name == WEBHOOK_NAME)
        .and_then(|hook| hook.client_config.ca_bundle.as_ref())
        .map(|bundle| bundle.0.clone())
}

/// Makes the configuration what it should be, given what was `observed`: applies it when absent
/// or drifted, and says why (`None` when it was right).
pub async fn reconcile(
    client: kube::Client,
    target: &WebhookTarget,
    observed: Option<&MutatingWebhookConfiguration>,
    ca_bundle: Option<&[u8]>,
) -> Result<Option<String>> {
    let desired = webhook_configuration(target, ca_bundle);
    let Some(reason) = drift(observed, &desired) else {
        return Ok(None);
    };
    register(client, target, ca_bundle).await?;
    Ok(Some(reason))
}

/// Watches the configuration until the process ends: every change wakes the controller (which,
/// on the elected replica, restores drift), and readiness waits until our webhook is there.
pub async fn watch(
    client: kube::Client,
    name: String,
    readiness: Arc<Readiness>,
    poke: mpsc::Sender<()>,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitApply(config) | watcher::Event::Apply(config)) => {
                let ours = config
                    .webhooks
                    .iter()
                    .flatten()
                    .any(|hook| hook.name == WEBHOOK_NAME);
                if ours {
                    readiness.set_registered();
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(name, "the MutatingWebhookConfiguration was deleted");
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(name, error = %err, "watching the MutatingWebhookConfiguration");
                continue;
            }
        }
        let _ = poke.try_send(());
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
                "sideEffects": "NoneOnDryRun",
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

    #[test]
    fn drift_is_what_we_set_and_nothing_else() {
        let desired = webhook_configuration(&target(), Some(b"CA"));
        assert_eq!(drift(None, &desired).as_deref(), Some("it does not exist"));
        // The API server's defaults and other webhooks in the list are not drift.
        let mut observed = serde_json::to_value(&desired).unwrap();
        observed["metadata"]["resourceVersion"] = "7".into();
        observed["webhooks"][0]["matchConditions"] = serde_json::json!([]);
        observed["webhooks"][0]["rules"][0]["scope"] = "Namespaced".into();
        let other = serde_json::json!({"name": "other.example.com", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://x"}});
        observed["webhooks"].as_array_mut().unwrap().push(other);
        let parse = |value: &Value| {
            serde_json::from_value::<MutatingWebhookConfiguration>(value.clone()).unwrap()
        };
        assert_eq!(drift(Some(&parse(&observed)), &desired), None);

        let mut edited = observed.clone();
        edited["webhooks"][0]["clientConfig"]["caBundle"] = "T0xE".into();
        assert_eq!(
            drift(Some(&parse(&edited)), &desired).as_deref(),
            Some("webhooks[secrets.secrets-webhook.flyte.org].clientConfig.caBundle changed")
        );
        let mut edited = observed.clone();
        edited["webhooks"][0]["rules"][0]["operations"] = serde_json::json!(["CREATE", "UPDATE"]);
        assert_eq!(
            drift(Some(&parse(&edited)), &desired).as_deref(),
            Some("webhooks[secrets.secrets-webhook.flyte.org].rules[0].operations changed")
        );
        let mut edited = observed.clone();
        edited["webhooks"][0]["objectSelector"] = serde_json::json!({});
        assert!(
            drift(Some(&parse(&edited)), &desired)
                .unwrap()
                .contains("objectSelector.matchLabels")
        );
        let mut edited = observed.clone();
        edited["metadata"]["labels"] = serde_json::json!({});
        assert!(
            drift(Some(&parse(&edited)), &desired)
                .unwrap()
                .starts_with("metadata.labels")
        );
        let mut edited = observed;
        edited["webhooks"].as_array_mut().unwrap().remove(0);
        assert!(
            drift(Some(&parse(&edited)), &desired)
                .unwrap()
                .contains("is missing")
        );
    }
}
