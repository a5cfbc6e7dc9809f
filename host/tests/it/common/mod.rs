//! A real server on an ephemeral port, with a CA made for the test, and a client that trusts only
//! that CA.
// Shared with the envtest suites (e2e/tests/cluster), which use only part of it.
#![allow(dead_code)]

pub mod cloud_fakes;
pub mod fixture;
pub mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use secrets_webhook::config::OnError;
use secrets_webhook::config::{Config, Overrides};
use secrets_webhook::global_secrets::GlobalSecrets;
use secrets_webhook::health::Readiness;
use secrets_webhook::metrics::Metrics;
use secrets_webhook::policy::{self, Active, Runtime};
use secrets_webhook::{certs, server, tls};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The workspace root: the parent of the package's directory (host/, or e2e/ for the envtest
/// suites, which include this module too).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn fixtures() -> PathBuf {
    workspace().join("fixtures")
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub cert_dir: tempfile::TempDir,
    pub active: Arc<Active>,
    pub certs: Arc<certs::CertStore>,
    pub metrics: Arc<Metrics>,
    handle: server::Handle,
}

pub struct Options {
    pub config: Option<PathBuf>,
    pub wasm: Vec<u8>,
    pub limits: server::Limits,
    pub policy_limits: policy::Limits,
    pub client_ca: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: None,
            wasm: policy::EMBEDDED.to_vec(),
            limits: server::Limits::default(),
            policy_limits: policy::Limits::default(),
            client_ca: None,
        }
    }
}

impl TestServer {
    pub async fn start(options: Options) -> Self {
        let cert_dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let bundle = certs::generate(&names, certs::Lifetimes::default()).unwrap();
        certs::write_dir(cert_dir.path(), &bundle).unwrap();
        let overrides = Overrides {
            global_secrets_dir: Some(fixtures().join("global-secrets")),
            ..Overrides::default()
        };
        let config = Config::load(options.config.as_deref(), &overrides).unwrap();
        let runtime = Runtime::new(options.policy_limits).unwrap();
        let compiled = runtime.compile(&options.wasm).unwrap();
        let globals = GlobalSecrets::load_from(&config.global_secrets, []).unwrap();
        let active = Arc::new(Active::new(compiled, &config.settings, globals).unwrap());
        let store = certs::CertStore::open(cert_dir.path()).unwrap();
        let describe = active.clone();
        let readiness = Arc::new(Readiness::default());
        readiness.set_serving();
        let metrics = Arc::new(Metrics::default());
        let app = server::App {
            mutator: active.clone(),
            describe_policy: Arc::new(move || describe.digest()),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            on_error: config.on_error,
            limits: server::Limits {
                max_body_bytes: config.max_body_bytes.min(options.limits.max_body_bytes),
                ..options.limits
            },
        };
        let handle = server::spawn(
            "127.0.0.1:0".parse().unwrap(),
            tls::server_config(store.clone(), options.client_ca.as_deref()).unwrap(),
            app,
        )
        .await
        .unwrap();
        Self {
            addr: handle.local_addr(),
            ca_pem: bundle.ca_pem,
            cert_dir,
            active,
            certs: store,
            metrics,
            handle,
        }
    }

    pub async fn stop(self) {
        self.handle.shutdown().await;
    }

    pub fn tls_connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        connector(&self.ca_pem, alpn)
    }

    pub async fn tls_stream(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_tls_stream(&self.ca_pem, alpn).await.unwrap()
    }

    /// A TLS connection from a client that trusts only `ca_pem`.
    pub async fn try_tls_stream(
        &self,
        ca_pem: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        connector(ca_pem, alpn)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// An HTTP/1.1 keep-alive connection.
    pub async fn client(&self) -> Client {
        let tls = self.tls_stream(&[b"http/1.1"]).await;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        Client::H1(sender)
    }

    /// An HTTP/2 connection.
    pub async fn client_h2(&self) -> Client {
        let tls = self.tls_stream(&[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client::H2(sender)
    }
}

/// An HTTP/1.1 keep-alive connection to a server at `addr` that `ca_pem` vouches for as
/// localhost (a `serve` process).
pub async fn client_to(addr: SocketAddr, ca_pem: &str) -> Client {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    Client::H1(sender)
}

/// A TLS client config that trusts only `ca_pem`.
pub fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn request(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = match self {
            Client::H1(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
            Client::H2(sender) => {
                sender.ready().await.unwrap();
                sender.send_request(request).await.unwrap()
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }

    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let (status, body) = self.request("POST", path, body).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        (status, json)
    }
}

/// The AdmissionResponse's status message; empty when there is none.
pub fn message(response: &serde_json::Value) -> &str {
    response["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
}

/// Polls `ready` every 10 ms until it holds; fails after 10 s, naming `what` was awaited.
pub async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Decodes the base64 JSON Patch of an AdmissionResponse.
pub fn patch_of(response: &serde_json::Value) -> Option<json_patch::Patch> {
    use base64::Engine as _;
    let encoded = response["response"]["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// An opted-in pod asking for one K8s secret (group probe, key token), created by generateName.
pub fn labelled_pod() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "task-", "namespace": "flytesnacks-development",
                     "labels": {"inject-flyte-secrets": "true"},
                     "annotations": {"flyte.secrets/s0": "m4zg54lqhiqce3dsn4rgkiqknnsxsoraej1g512fnyrau"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    })
}

/// The AdmissionReview bytes for creating [`labelled_pod`].
pub fn labelled_review() -> Vec<u8> {
    serde_json::to_vec(&review_with(labelled_pod())).unwrap()
}

pub fn review_with(object: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "test-uid",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": object,
        }
    })
}

pub fn on_error_of(config: &Config) -> OnError {
    config.on_error
}

/// One plain-HTTP/1.1 request to a side port on loopback; the whole response as text, or
/// `None` when nothing answers.
pub async fn plain_http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// A free loopback TCP port (bound, read, released; someone else may take it before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral loopback port")
        .port()
}
