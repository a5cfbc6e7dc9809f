//! The certificate Secret's writes and registration against an in-process fake API server that
//! speaks the few endpoints they use, with the API's semantics (resourceVersion checks,
//! AlreadyExists, Conflict, server-side apply content type and field manager) — and that can
//! lose a race on cue, which a real API server cannot be made to do deterministically. The same
//! behaviour against a real kube-apiserver is in e2e/tests/cluster/certs_cluster.rs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrets_webhook::certs::plan::Change;
use secrets_webhook::certs::secret::{self, CertSecret, Outcome, Trust};
use secrets_webhook::certs::{self, Lifetimes};
use secrets_webhook::cluster::registration::{self, WebhookTarget};
use serde_json::{Value, json};

#[derive(Default)]
struct Store {
    secrets: HashMap<String, Value>,
    webhooks: HashMap<String, Value>,
    version: u64,
    /// Requests seen: "METHOD path?query content-type".
    log: Vec<String>,
    /// Before answering the next create, store this Secret as if another replica won the race.
    competitor_on_create: Option<Value>,
    /// Before answering the next update, change the stored Secret as if another writer had.
    bump_on_update: bool,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn handle(
    store: &mut Store,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    store
        .log
        .push(format!("{method} {path}?{query} {content_type}"));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method, segments.as_slice()) {
        ("GET", ["api", "v1", "namespaces", _, "secrets", name]) => {
            match store.secrets.get(*name) {
                Some(secret) => (200, secret.clone()),
                None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
            }
        }
        ("POST", ["api", "v1", "namespaces", _, "secrets"]) => {
            let name = body["metadata"]["name"].as_str().unwrap().to_owned();
            if let Some(mut competitor) = store.competitor_on_create.take() {
                competitor["metadata"]["resourceVersion"] = json!(store.next_version());
                store.secrets.insert(name.clone(), competitor);
            }
            if store.secrets.contains_key(&name) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("secrets \"{name}\" already exists"),
                );
            }
            let mut secret = body;
            secret["metadata"]["resourceVersion"] = json!(store.next_version());
            store.secrets.insert(name, secret.clone());
            (201, secret)
        }
        ("PUT", ["api", "v1", "namespaces", _, "secrets", name]) => {
            if store.bump_on_update {
                store.bump_on_update = false;
                let version = store.next_version();
                if let Some(secret) = store.secrets.get_mut(*name) {
                    secret["metadata"]["resourceVersion"] = json!(version);
                }
            }
            let Some(stored) = store.secrets.get(*name) else {
                return status(404, "NotFound", "not found");
            };
            if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version",
                );
            }
            let mut secret = body;
            secret["metadata"]["resourceVersion"] = json!(store.next_version());
            store.secrets.insert((*name).to_owned(), secret.clone());
            (200, secret)
        }
        (
            "PATCH",
            [
                "apis",
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
                name,
            ],
        ) => {
            if content_type != "application/apply-patch+yaml" {
                return status(415, "UnsupportedMediaType", content_type);
            }
            if !query.contains("fieldManager=secrets-webhook") {
                return status(422, "Invalid", "fieldManager is required for apply");
            }
            let created = !store.webhooks.contains_key(*name);
            let mut applied = body;
            applied["metadata"]["resourceVersion"] = json!(store.next_version());
            store.webhooks.insert((*name).to_owned(), applied.clone());
            (if created { 201 } else { 200 }, applied)
        }
        (
            "DELETE",
            [
                "apis",
                "admissionregistration.k8s.io",
                "v1",
                "mutatingwebhookconfigurations",
                name,
            ],
        ) => match store.webhooks.remove(*name) {
            Some(_) => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            ),
            None => status(404, "NotFound", "not found"),
        },
        _ => status(404, "NotFound", &format!("no route for {method} {path}")),
    }
}

struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    client: kube::Client,
}

impl FakeApiServer {
    async fn start() -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = store.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let store = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let method = request.method().to_string();
                            let path = request.uri().path().to_owned();
                            let query = request.uri().query().unwrap_or_default().to_owned();
                            let content_type = request
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let (code, value) = handle(
                                &mut store.lock().unwrap(),
                                &method,
                                &path,
                                &query,
                                &content_type,
                                &body,
                            );
                            let response = http::Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Self { store, client }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }
}

fn spec(names: &[&str]) -> CertSecret {
    CertSecret {
        namespace: "sw".into(),
        name: "secrets-webhook-tls".into(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        lifetimes: Lifetimes::default(),
        identity: "test-replica".into(),
    }
}

fn stored_bundle(server: &FakeApiServer) -> certs::Bundle {
    use base64::Engine as _;
    let store = server.store();
    let data = &store.secrets["secrets-webhook-tls"]["data"];
    let field = |key: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(data[key].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    certs::Bundle {
        ca_pem: field("ca.crt"),
        ca_key_pem: field("ca.key"),
        cert_pem: field("tls.crt"),
        key_pem: field("tls.key"),
    }
}

const NAMES: [&str; 4] = [
    "secrets-webhook",
    "secrets-webhook.sw",
    "secrets-webhook.sw.svc",
    "secrets-webhook.sw.svc.cluster.local",
];

async fn reconcile(server: &FakeApiServer, names: &[&str]) -> Outcome {
    let api = kube::Api::namespaced(server.client.clone(), "sw");
    secret::reconcile(&api, &spec(names), Trust::Never)
        .await
        .unwrap()
}

fn whats(outcome: &Outcome) -> Vec<&'static str> {
    outcome.changes.iter().map(Change::what).collect()
}

#[tokio::test]
async fn the_secret_is_created_kept_and_renewed() {
    let server = FakeApiServer::start().await;
    let created = reconcile(&server, &NAMES).await;
    assert_eq!(whats(&created), ["ca", "serving"]);
    assert_eq!(stored_bundle(&server), created.bundle);
    let renewed_by = server.store().secrets["secrets-webhook-tls"]["metadata"]["annotations"]
        [secret::RENEWED_BY]
        .clone();
    assert_eq!(renewed_by, "test-replica");

    // A re-run (or another replica) keeps a valid Secret untouched.
    let kept = reconcile(&server, &NAMES).await;
    assert!(kept.changes.is_empty(), "{:?}", kept.changes);
    assert_eq!(kept.bundle, created.bundle);

    // A new name means a new certificate from the same CA.
    let mut more = NAMES.to_vec();
    more.push("hooks.example.com");
    let renewed = reconcile(&server, &more).await;
    assert!(
        matches!(&renewed.changes[..], [Change::Serving { reason }] if reason.contains("hooks.example.com")),
        "{:?}",
        renewed.changes
    );
    assert_eq!(renewed.bundle.ca_pem, created.bundle.ca_pem);
    assert_ne!(renewed.bundle.cert_pem, created.bundle.cert_pem);
    assert_eq!(stored_bundle(&server), renewed.bundle);

    // A Secret with its keys missing (Flyte's charts pre-create an empty one) is filled in.
    server
        .store()
        .secrets
        .get_mut("secrets-webhook-tls")
        .unwrap()["data"] = json!({});
    let filled = reconcile(&server, &NAMES).await;
    assert_eq!(whats(&filled), ["ca", "serving"]);
    let log = server.store().log.join("\n");
    assert!(
        log.contains("PUT /api/v1/namespaces/sw/secrets/secrets-webhook-tls"),
        "{log}"
    );
}

#[tokio::test]
async fn racing_writers_converge_on_one_ca() {
    let server = FakeApiServer::start().await;
    // Another replica creates the Secret between our read and our create.
    let winner = certs::generate(&NAMES.map(String::from), Lifetimes::default()).unwrap();
    let competitor = {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "secrets-webhook-tls", "namespace": "sw"},
               "type": "Opaque",
               "data": {"ca.crt": b64(&winner.ca_pem), "ca.key": b64(&winner.ca_key_pem),
                        "tls.crt": b64(&winner.cert_pem), "tls.key": b64(&winner.key_pem)}})
    };
    server.store().competitor_on_create = Some(competitor);
    let outcome = reconcile(&server, &NAMES).await;
    assert!(
        outcome.changes.is_empty(),
        "the loser plans again and keeps the winner's certificate: {:?}",
        outcome.changes
    );
    assert_eq!(outcome.bundle, winner);

    // A renewal that loses a race plans again instead of overwriting.
    let mut more = NAMES.to_vec();
    more.push("extra.example.com");
    server.store().bump_on_update = true;
    let renewed = reconcile(&server, &more).await;
    assert_eq!(whats(&renewed), ["serving"]);
    let puts = server
        .store()
        .log
        .iter()
        .filter(|l| l.starts_with("PUT "))
        .count();
    assert_eq!(
        puts, 2,
        "one update hit a Conflict and was retried after a fresh read"
    );
}

#[tokio::test]
async fn an_immutable_secret_is_not_silently_kept_stale() {
    let server = FakeApiServer::start().await;
    server.store().secrets.insert(
        "secrets-webhook-tls".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "immutable": true, "data": {},
               "metadata": {"name": "secrets-webhook-tls", "namespace": "sw", "resourceVersion": "1"}}),
    );
    let api = kube::Api::namespaced(server.client.clone(), "sw");
    let err = secret::reconcile(&api, &spec(&NAMES), Trust::Never)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("is immutable; delete it"),
        "{err:#}"
    );
}

fn target() -> WebhookTarget {
    WebhookTarget {
        name: "secrets-webhook".into(),
        namespace: "sw".into(),
        service_name: "secrets-webhook".into(),
        service_port: 443,
        url: None,
        failure_policy: "Fail".into(),
        timeout_seconds: 5,
        namespace_selector: None,
        ca_injected_from: None,
    }
}

#[tokio::test]
async fn register_applies_and_unregister_deletes() {
    let server = FakeApiServer::start().await;
    registration::register(server.client.clone(), &target(), Some(b"CA PEM"))
        .await
        .unwrap();
    registration::register(server.client.clone(), &target(), Some(b"NEW CA PEM"))
        .await
        .unwrap();
    {
        let store = server.store();
        let applied = &store.webhooks["secrets-webhook"];
        let mut expected = serde_json::to_value(registration::webhook_configuration(
            &target(),
            Some(b"NEW CA PEM"),
        ))
        .unwrap();
        expected["metadata"]["resourceVersion"] = applied["metadata"]["resourceVersion"].clone();
        assert_eq!(applied, &expected);
        let patch = store.log.iter().find(|l| l.starts_with("PATCH")).unwrap();
        assert!(patch.contains("fieldManager=secrets-webhook"), "{patch}");
        assert!(patch.contains("force=true"), "{patch}");
        assert!(patch.ends_with("application/apply-patch+yaml"), "{patch}");
    }
    assert!(
        registration::unregister(server.client.clone(), "secrets-webhook")
            .await
            .unwrap()
    );
    assert!(
        !registration::unregister(server.client.clone(), "secrets-webhook")
            .await
            .unwrap()
    );
    assert!(server.store().webhooks.is_empty());
}
