//! The certificate Secret in the API. Every write carries the resourceVersion it was planned
//! from (or is a create), so of racing writers — replicas, `init-certs` — one wins and the
//! others plan again from what it wrote: they converge on one CA.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use time::{Duration, OffsetDateTime};

use super::issue::{
    Bundle, CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE, Lifetimes, certificates, public_key_of,
};
use super::plan::{self, Change, Request};
use crate::MANAGED_BY;

/// Who wrote the Secret last (a pod name), for whoever wonders.
pub const RENEWED_BY: &str = "secrets-webhook.flyte.org/renewed-by";
/// When the signing CA joined the bundle (Unix seconds).
pub const CA_ADDED_AT: &str = "secrets-webhook.flyte.org/ca-added-at";

/// The Secret and what must be in it.
#[derive(Debug, Clone)]
pub struct CertSecret {
    pub namespace: String,
    pub name: String,
    /// Names the serving certificate must carry.
    pub names: Vec<String>,
    pub lifetimes: Lifetimes,
    /// Who is writing (the pod's name), recorded in the Secret.
    pub identity: String,
}

/// How we know that the API server trusts a new CA.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// It trusts these CAs (PEM): the webhook configuration's `caBundle`.
    Bundle(&'a [u8]),
    /// We cannot see: a CA is trusted once it has been in `ca.crt` this long.
    After(Duration),
    /// A new CA never signs in this pass (someone else finishes the rotation).
    Never,
}

/// What a reconcile did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub bundle: Bundle,
    pub changes: Vec<Change>,
    pub waiting: Option<String>,
}

pub fn bundle_of(secret: &Secret) -> Bundle {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .unwrap_or_default()
    };
    Bundle {
        ca_pem: field(CA_FILE),
        ca_key_pem: field(CA_KEY_FILE),
        cert_pem: field(CERT_FILE),
        key_pem: field(KEY_FILE),
    }
}

fn data_of(bundle: &Bundle) -> BTreeMap<String, ByteString> {
    [
        (CA_FILE, &bundle.ca_pem),
        (CA_KEY_FILE, &bundle.ca_key_pem),
        (CERT_FILE, &bundle.cert_pem),
        (KEY_FILE, &bundle.key_pem),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_owned(), ByteString(pem.clone().into_bytes())))
    .collect()
}

/// The DER of the CA whose key the bundle holds.
fn signer_der(bundle: &Bundle) -> Option<Vec<u8>> {
    let key = public_key_of(&bundle.ca_key_pem)?;
    certificates(&bundle.ca_pem)
        .into_iter()
        .find(|ca| ca.public_key == key)
        .map(|ca| ca.der)
}

fn trusted(secret: Option<&Secret>, bundle: &Bundle, trust: Trust<'_>, now: i64) -> bool {
    let Some(signer) = signer_der(bundle) else {
        return false;
    };
    match trust {
        Trust::Never => false,
        Trust::Bundle(pem) => std::str::from_utf8(pem)
            .map(|pem| certificates(pem).iter().any(|ca| ca.der == signer))
            .unwrap_or(false),
        Trust::After(wait) => {
            let added = secret
                .and_then(|secret| secret.metadata.annotations.as_ref()?.get(CA_ADDED_AT))
                .and_then(|at| at.parse::<i64>().ok());
            added.is_none_or(|added| now - added >= wait.whole_seconds())
        }
    }
}

/// Brings the Secret up to date with the plan: creates it when absent, renews what must be,
/// and leaves a good one alone.
pub async fn reconcile(api: &Api<Secret>, spec: &CertSecret, trust: Trust<'_>) -> Result<Outcome> {
    let what = format!("Secret {}/{}", spec.namespace, spec.name);
    // Each pass either finishes or lost a race and plans again from what the winner wrote.
    for _ in 0..5 {
        let existing = api
            .get_opt(&spec.name)
            .await
            .with_context(|| format!("reading {what}"))?;
        let current = existing.as_ref().map(bundle_of).unwrap_or_default();
        let now = OffsetDateTime::now_utc();
        let request = Request {
            names: &spec.names,
            lifetimes: spec.lifetimes,
            now,
            signer_trusted: trusted(existing.as_ref(), &current, trust, now.unix_timestamp()),
        };
        let plan = plan::plan(&current, &request)?;
        let outcome = Outcome {
            bundle: plan.bundle,
            changes: plan.changes,
            waiting: plan.waiting,
        };
        if outcome.changes.is_empty() {
            return Ok(outcome);
        }
        let new_ca = outcome
            .changes
            .iter()
            .any(|change| matches!(change, Change::NewCa { .. }));
        let written = match existing {
            None => create(api, spec, &outcome.bundle, now).await,
            Some(secret) if secret.immutable == Some(true) => bail!(
                "{what} must change ({}) but is immutable; delete it and it is made again",
                outcome.changes[0]
            ),
            Some(secret) => replace(api, spec, secret, &outcome.bundle, new_ca, now).await,
        };
        match written {
            Ok(()) => return Ok(outcome),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("writing {what}")),
        }
    }
    bail!("{what} kept changing while we tried to update it")
}

fn annotations(spec: &CertSecret, ca_added_at: Option<OffsetDateTime>) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([(RENEWED_BY.to_owned(), spec.identity.clone())]);
    if let Some(at) = ca_added_at {
        annotations.insert(CA_ADDED_AT.to_owned(), at.unix_timestamp().to_string());
    }
    annotations
}

async fn create(
    api: &Api<Secret>,
    spec: &CertSecret,
    bundle: &Bundle,
    now: OffsetDateTime,
) -> kube::Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            annotations: Some(annotations(spec, Some(now))),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data_of(bundle)),
        ..Secret::default()
    };
    api.create(&PostParams::default(), &secret).await.map(drop)
}

/// `replace` sends the resourceVersion we read: a concurrent writer makes this a Conflict.
async fn replace(
    api: &Api<Secret>,
    spec: &CertSecret,
    mut secret: Secret,
    bundle: &Bundle,
    new_ca: bool,
    now: OffsetDateTime,
) -> kube::Result<()> {
    secret.data = Some(data_of(bundle));
    secret.string_data = None;
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(annotations(spec, new_ca.then_some(now)));
    api.replace(&spec.name, &PostParams::default(), &secret)
        .await
        .map(drop)
}

/// Reads the bundle without changing anything.
pub async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Bundle>> {
    Ok(api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?
        .as_ref()
        .map(bundle_of))
}

/// The serving certificate's expiry and subject, for logs.
pub fn describe(bundle: &Bundle) -> String {
    match certificates(&bundle.cert_pem).first() {
        Some(cert) => format!(
            "serial {} valid until {}",
            cert.serial,
            plan::at_time(cert.not_after)
        ),
        None => "no certificate".to_owned(),
    }
}
