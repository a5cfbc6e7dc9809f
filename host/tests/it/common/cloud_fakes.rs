//! Local stand-ins for Google Secret Manager and Azure Key Vault, each with its token endpoint,
//! speaking the published REST APIs as far as the stores use them: paths, bearer tokens, JSON
//! bodies and error shapes. The stores' auth crates (google-cloud-auth, azure_identity) fetch
//! real tokens from them; a request without the token issued is refused, as the clouds do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpListener;

type Handler =
    Arc<dyn Fn(&str, &str, &[(String, String)], &[u8]) -> (StatusCode, Value) + Send + Sync>;

/// What a fake was asked, for tests to count calls.
#[derive(Default)]
pub struct Calls(Mutex<Vec<String>>);

impl Calls {
    pub fn count(&self, prefix: &str) -> usize {
        let calls = self.0.lock().unwrap();
        calls.iter().filter(|c| c.starts_with(prefix)).count()
    }
}

/// Serves `handler` on a loopback port, over TLS when `tls` is given. Ends with the runtime.
async fn serve(tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, hyper::Error>(answer(&handler, request).await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

async fn answer(
    handler: &Handler,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let (status, json) = handler(&method, &target, &headers, &body);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Google Secret Manager (`v1 …/versions/latest:access`) and Google's OAuth token endpoint, over
/// plain HTTP as a Private Service Connect endpoint might be.
pub struct FakeGcp {
    pub addr: SocketAddr,
    pub project: String,
    /// Secret id → latest version's payload; an id in `denied` answers 403.
    pub secrets: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub denied: Arc<Mutex<Vec<String>>>,
    pub calls: Arc<Calls>,
}

const GCP_REFRESH_TOKEN: &str = "refresh-from-adc";
const GCP_ACCESS_TOKEN: &str = "ya29.fake-access-token";

impl FakeGcp {
    pub async fn start(project: &str) -> FakeGcp {
        let secrets: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let denied: Arc<Mutex<Vec<String>>> = Arc::default();
        let calls: Arc<Calls> = Arc::default();
        let handler: Handler = {
            let (secrets, denied, calls, project) = (
                secrets.clone(),
                denied.clone(),
                calls.clone(),
                project.to_owned(),
            );
            Arc::new(move |method, target, headers, body| {
                calls.0.lock().unwrap().push(format!("{method} {target}"));
                gcp_answer(&project, &secrets, &denied, method, target, headers, body)
            })
        };
        let addr = serve(None, handler).await;
        FakeGcp {
            addr,
            project: project.to_owned(),
            secrets,
            denied,
            calls,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An `authorized_user` ADC file, as `gcloud auth application-default login` writes, whose
    /// token endpoint is this fake.
    pub fn credentials_json(&self) -> Value {
        json!({
            "type": "authorized_user",
            "client_id": "fake-client.apps.googleusercontent.com",
            "client_secret": "fake-client-secret",
            "refresh_token": GCP_REFRESH_TOKEN,
            "token_uri": format!("{}/token", self.endpoint()),
        })
    }

    pub fn set(&self, id: &str, value: &[u8]) {
        self.secrets
            .lock()
            .unwrap()
            .insert(id.to_owned(), value.to_vec());
    }
}

fn gcp_answer(
    project: &str,
    secrets: &Mutex<HashMap<String, Vec<u8>>>,
    denied: &Mutex<Vec<String>>,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (StatusCode, Value) {
    if method == "POST" && target == "/token" {
        // Google's endpoint takes the grant as a form or as JSON (google-cloud-auth sends JSON).
        let form = match serde_json::from_slice::<HashMap<String, String>>(body) {
            Ok(json) => json,
            Err(_) => form(body),
        };
        if form.get("grant_type").map(String::as_str) != Some("refresh_token")
            || form.get("refresh_token").map(String::as_str) != Some(GCP_REFRESH_TOKEN)
        {
            return (StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
        }
        return (
            StatusCode::OK,
            json!({"access_token": GCP_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        );
    }
    let status_error = |code: StatusCode, status: &str, message: String| {
        (
            code,
            json!({"error": {"code": code.as_u16(), "message": message, "status": status}}),
        )
    };
    if header(headers, "authorization") != Some(&format!("Bearer {GCP_ACCESS_TOKEN}")) {
        return status_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.".into(),
        );
    }
    let Some(rest) = target.strip_prefix("/v1/projects/") else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route {target}"),
        );
    };
    let Some((asked, rest)) = rest.split_once("/secrets/") else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route {target}"),
        );
    };
    let Some(id) = rest.strip_suffix("/versions/latest:access") else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route {target}"),
        );
    };
    if method != "GET" {
        return status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_ARGUMENT",
            method.into(),
        );
    }
    let name = format!("projects/{asked}/secrets/{id}");
    if asked != project || denied.lock().unwrap().iter().any(|d| d == id) {
        return status_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "Permission 'secretmanager.versions.access' denied for resource '{name}/versions/latest'"
            ),
        );
    }
    match secrets.lock().unwrap().get(id) {
        Some(value) => (
            StatusCode::OK,
            json!({
                "name": format!("{name}/versions/1"),
                "payload": {"data": base64::engine::general_purpose::STANDARD.encode(value)},
            }),
        ),
        None => status_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Secret [{name}] not found or has no versions."),
        ),
    }
}

/// Azure Key Vault (`GET /secrets/<name>`) and Microsoft Entra's token endpoint
/// (`/<tenant>/oauth2/v2.0/token`, the client-assertion grant Workload Identity uses), over TLS:
/// both clients refuse plain HTTP for bearer tokens.
pub struct FakeAzure {
    pub addr: SocketAddr,
    /// The CA its certificate is signed by, PEM.
    pub ca_pem: String,
    pub tenant: String,
    pub client_id: String,
    /// The Kubernetes ServiceAccount token it accepts as the client assertion.
    pub federated_token: String,
    /// Key Vault secret name → stored value (Flyte 2's JSON envelope).
    pub secrets: Arc<Mutex<HashMap<String, String>>>,
    pub calls: Arc<Calls>,
}

const AZURE_ACCESS_TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-entra-token";

impl FakeAzure {
    pub async fn start() -> FakeAzure {
        let bundle = secrets_webhook::certs::generate(
            &["127.0.0.1".to_owned()],
            secrets_webhook::certs::Lifetimes::default(),
        )
        .unwrap();
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(secrets_webhook::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let secrets: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let calls: Arc<Calls> = Arc::default();
        let (tenant, client_id) = (
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "0c1d2e3f-aaaa-bbbb-cccc-1234567890ab",
        );
        let federated_token = "eyJhbGciOiJSUzI1NiJ9.service-account-token.sig".to_owned();
        let handler: Handler = {
            let (secrets, calls) = (secrets.clone(), calls.clone());
            let (tenant, client_id, federated) = (
                tenant.to_owned(),
                client_id.to_owned(),
                federated_token.clone(),
            );
            Arc::new(move |method, target, headers, body| {
                calls.0.lock().unwrap().push(format!("{method} {target}"));
                azure_answer(
                    &tenant, &client_id, &federated, &secrets, method, target, headers, body,
                )
            })
        };
        let addr = serve(Some(Arc::new(tls)), handler).await;
        FakeAzure {
            addr,
            ca_pem: bundle.ca_pem,
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            federated_token,
            secrets,
            calls,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Writes the ServiceAccount token file AKS would project into the pod.
    pub fn write_token_file(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("azure-identity-token");
        std::fs::write(&path, &self.federated_token).unwrap();
        path
    }

    /// Stores `value` under Key Vault name `name` as Flyte 2's secret service does: a string.
    pub fn set_string(&self, name: &str, value: &str) {
        let stored = json!({"type": "STRING", "value": value}).to_string();
        self.secrets.lock().unwrap().insert(name.to_owned(), stored);
    }

    pub fn set_raw(&self, name: &str, stored: &str) {
        self.secrets
            .lock()
            .unwrap()
            .insert(name.to_owned(), stored.to_owned());
    }
}

#[allow(clippy::too_many_arguments)]
fn azure_answer(
    tenant: &str,
    client_id: &str,
    federated: &str,
    secrets: &Mutex<HashMap<String, String>>,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (StatusCode, Value) {
    if method == "POST" && target == format!("/{tenant}/oauth2/v2.0/token") {
        let form = form(body);
        let field = |name: &str| form.get(name).map(String::as_str);
        let valid = field("grant_type") == Some("client_credentials")
            && field("client_id") == Some(client_id)
            && field("client_assertion") == Some(federated)
            && field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            && field("scope") == Some("https://vault.azure.net/.default");
        if !valid {
            return (
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_client", "error_description": "AADSTS700213: no matching federated identity record"}),
            );
        }
        return (
            StatusCode::OK,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": AZURE_ACCESS_TOKEN}),
        );
    }
    let kv_error = |status: StatusCode, code: &str, message: String| {
        (status, json!({"error": {"code": code, "message": message}}))
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(name) = path.strip_prefix("/secrets/") else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
        );
    };
    if method != "GET" {
        return kv_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadParameter",
            method.into(),
        );
    }
    if header(headers, "authorization") != Some(&format!("Bearer {AZURE_ACCESS_TOKEN}")) {
        return kv_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.".into(),
        );
    }
    if !form(query.as_bytes()).contains_key("api-version") {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The api-version query parameter is required".into(),
        );
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            format!("invalid secret name {name}"),
        );
    }
    match secrets.lock().unwrap().get(name) {
        Some(value) => (
            StatusCode::OK,
            json!({"value": value, "id": format!("https://fake.vault.azure.net/secrets/{name}/0123456789abcdef"), "attributes": {"enabled": true}}),
        ),
        None => kv_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            format!("A secret with (name/id) {name} was not found in this key vault."),
        ),
    }
}
