//! The running binary as an operator meets it: graceful shutdown, logs without secret values,
//! mutual TLS, old TLS versions, and HTTP/2 stream floods.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    self, Options, TestServer, fixtures, labelled_pod, labelled_review, review_with,
};

/// A `secrets-webhook serve` process in local mode on ephemeral ports, logging JSON.
struct Process {
    child: Child,
    addr: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    ca_pem: String,
    logs: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_secrets-webhook"))
            .args([
                "--log-format",
                "json",
                "serve",
                "--local",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(match args.contains(&"--policy-cache-dir") {
                true => &[][..],
                false => &["--policy-cache-dir", "none"][..],
            })
            .arg("--cert-dir")
            .arg(dir.path())
            .args(args)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics: "0.0.0.0:0".parse().unwrap(),
            ca_pem: String::new(),
            logs,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while process.addr.port() == 0 || process.metrics.port() == 0 {
            let line = process
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the server starts and logs its addresses");
            let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let addr = entry["fields"]["addr"]
                .as_str()
                .and_then(|a| a.parse().ok());
            let message = entry["fields"]["message"].as_str().unwrap_or_default();
            match addr {
                Some(addr) if message.starts_with("serving AdmissionReviews") => {
                    process.addr = addr
                }
                Some(addr) if message.starts_with("serving /metrics") => process.metrics = addr,
                _ => {}
            }
        }
        process.ca_pem = std::fs::read_to_string(process._dir.path().join("ca.crt")).unwrap();
        process
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit and returns its code and every log line.
    fn wait(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        (code, self.logs.try_iter().collect())
    }

    async fn post(&self, body: Vec<u8>) -> (u16, Value) {
        post_to(self.addr, self.ca_pem.clone(), body).await
    }

    async fn readyz(&self) -> u16 {
        self.get("/readyz").await.0
    }

    /// Polls `/metrics` until it has `line`, for up to 30 s.
    async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = self.get("/metrics").await;
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{line}` in\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/metrics` until a line starts with `prefix` and does not end in ` 0`.
    async fn wait_for_metric_prefix(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = self.get("/metrics").await;
            if text
                .lines()
                .any(|l| l.starts_with(prefix) && !l.ends_with(" 0"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{prefix}` above 0 in\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the plain-HTTP metrics port: the status and the body.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut tcp = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

async fn post_to(addr: std::net::SocketAddr, ca_pem: String, body: Vec<u8>) -> (u16, Value) {
    {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = common::connector(&ca_pem, &[b"http/1.1"])
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::post("/mutate")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// A failed test must not leave its server running.
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fields` of each JSON log line.
fn log_fields(logs: &[String]) -> Vec<Value> {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|entry| entry["fields"].clone())
        .collect()
}

fn policy_file(name: &str) -> PathBuf {
    Path::new(env!("SECRETS_WEBHOOK_POLICY_DIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "webhook:\n  hostile: loop\n").unwrap();
    let hostile = policy_file("hostile.wasm");
    let process = Process::start(
        &[
            "--policy",
            hostile.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--policy-timeout-ms",
            "1500",
        ],
        &[],
    );
    assert_eq!(process.readyz().await, 200);
    let body = labelled_review();
    let in_flight = tokio::spawn(post_to(process.addr, process.ca_pem.clone(), body));
    process
        .wait_for_metric("secrets_webhook_reviews_in_flight 1")
        .await;
    process.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(process.readyz().await, 503, "/readyz fails while draining");
    assert!(
        tokio::net::TcpStream::connect(process.addr).await.is_err(),
        "no new connections are accepted"
    );
    let (status, response) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight got its answer");
    assert!(
        response["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline")
    );
    let (code, _) = tokio::task::spawn_blocking(move || process.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_reviews_but_never_secret_values() {
    let globals = fixtures().join("global-secrets");
    let process = Process::start(
        &["--global-secrets-dir", globals.to_str().unwrap()],
        &[("FLYTE_SECRET_ENVGROUP_TOKEN", "env-secret-value-42")],
    );
    let mut uids = Vec::new();
    for fixture in [
        "10-global-env-var",
        "11-global-any-env-var",
        "02-k8s-file",
        "08-k8s-group-capitals-denied",
    ] {
        let review: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(fixture).join("review.json")).unwrap(),
        )
        .unwrap();
        uids.push(review["request"]["uid"].as_str().unwrap().to_owned());
        let (status, _) = process.post(serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, 200);
    }
    // A secret that only the process environment holds.
    let env_secret = secrets_policy::annotations::encode_value(&secrets_policy::Secret {
        group: "envgroup".into(),
        key: "token".into(),
        mount_requirement: secrets_policy::MountRequirement::EnvVar,
        ..Default::default()
    })
    .unwrap();
    let mut pod = labelled_pod();
    pod["metadata"]["annotations"]["flyte.secrets/s0"] = json!(env_secret);
    let (_, response) = process
        .post(serde_json::to_vec(&review_with(pod)).unwrap())
        .await;
    let patch = common::patch_of(&response).unwrap();
    assert!(
        serde_json::to_string(&patch)
            .unwrap()
            .contains("env-secret-value-42"),
        "the value was injected"
    );

    process.terminate();
    let (code, logs) = tokio::task::spawn_blocking(move || process.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let all = logs.join("\n");
    for value in ["hunter2-global", "tok-123", "env-secret-value-42"] {
        assert!(!all.contains(value), "a secret value reached the logs");
    }
    for uid in &uids {
        assert!(all.contains(uid.as_str()), "the log names review {uid}");
    }
    let fields = log_fields(&logs);
    assert!(
        fields
            .iter()
            .any(|f| f["namespace"] == "flytesnacks-development"),
        "the log names the pod's namespace (the fixtures')"
    );
    assert!(
        fields
            .iter()
            .any(|f| f["namespace"] == "default" && f["generate_name"] == "task-"),
        "the log names the pod's generateName (the labelled pod's, in the request's namespace)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_reviews_and_injections_and_name_the_policy() {
    let globals = fixtures().join("global-secrets");
    let process = Process::start(
        &[
            "--global-secrets-dir",
            globals.to_str().unwrap(),
            "--max-body-bytes",
            "65536",
        ],
        &[("RUST_LOG", "info")],
    );
    let review = |fixture: &str| -> Vec<u8> {
        std::fs::read(fixtures().join(fixture).join("review.json")).unwrap()
    };
    // Global db/password, K8s tls-certs/client.crt and stripe/api-key.
    let (_, response) = process.post(review("25-mixed-global-and-k8s")).await;
    let patch = common::patch_of(&response).expect("fixture 25 is patched");
    let original: Value = serde_json::from_slice(&review("25-mixed-global-and-k8s")).unwrap();
    let mut injected = original["request"]["object"].clone();
    json_patch::patch(&mut injected, &patch).unwrap();
    // The injected pod again (a reinvocation): unchanged, and nothing counted twice.
    let (_, again) = process
        .post(serde_json::to_vec(&review_with(injected)).unwrap())
        .await;
    assert!(common::patch_of(&again).is_none());
    process.post(review("08-k8s-group-capitals-denied")).await;
    process.post(b"{not json".to_vec()).await;
    let mut oversized = review("01-k8s-env-var");
    oversized.resize(70_000, b' ');
    assert_eq!(process.post(oversized).await.0, 413);

    let (status, text) = process.get("/metrics").await;
    assert_eq!(status, 200);
    let (_, ready) = process.get("/readyz").await;
    let digest = ready
        .trim()
        .strip_prefix("ready policy=")
        .unwrap()
        .to_owned();
    for line in [
        "secrets_webhook_reviews_total{outcome=\"patched\"} 1".to_owned(),
        "secrets_webhook_reviews_total{outcome=\"unchanged\"} 1".to_owned(),
        "secrets_webhook_reviews_total{outcome=\"denied\"} 1".to_owned(),
        "secrets_webhook_reviews_total{outcome=\"invalid\"} 2".to_owned(),
        "secrets_webhook_review_duration_seconds_count 5".to_owned(),
        "secrets_webhook_reviews_in_flight 0".to_owned(),
        "secrets_webhook_injections_total{manager=\"global\"} 1".to_owned(),
        "secrets_webhook_injections_total{manager=\"k8s\"} 2".to_owned(),
        "secrets_webhook_injections_total{manager=\"vault\"} 0".to_owned(),
        format!("secrets_webhook_policy_info{{digest=\"{digest}\"}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    let expiry: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("secrets_webhook_cert_expiry_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("the cert expiry is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expiry - now) / 86_400.0;
    assert!(
        (300.0..=366.0).contains(&days),
        "the local leaf expires in {days} days"
    );
    process.terminate();
    let (_, logs) = tokio::task::spawn_blocking(move || process.wait())
        .await
        .unwrap();
    // At the default level: one line per injection and per refusal, none for the rest.
    let fields = log_fields(&logs);
    let about = |message: &str| -> Vec<&Value> {
        fields.iter().filter(|f| f["message"] == message).collect()
    };
    let injected = about("secrets injected");
    assert_eq!(injected.len(), 1, "{logs:#?}");
    assert_eq!(injected[0]["uid"], original["request"]["uid"]);
    assert_eq!(injected[0]["namespace"], "flytesnacks-development");
    assert_eq!(injected[0]["name"], "a7x2q9z4k1m8w3v0r5ts-n0-0");
    assert_eq!(
        injected[0]["injected"],
        "db/password (Global), tls-certs/client.crt (K8s), stripe/api-key (K8s)"
    );
    assert_eq!(
        about("review refused").len(),
        2,
        "the denial and the bad body"
    );
    let refused = about("request refused");
    assert_eq!(refused.len(), 1, "the oversized body: {logs:#?}");
    assert_eq!(refused[0]["status"], 413);
    assert_eq!(
        refused[0]["reason"],
        "request body exceeds the limit of 65536 bytes"
    );
    assert!(about("review answered").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    // The API server's client certificate, from a CA of its own.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params =
        rcgen::CertificateParams::new(vec!["kube-apiserver".to_owned()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params
        .signed_by(&client_key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("client-ca.crt");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let server = TestServer::start(Options {
        client_ca: Some(ca_path),
        ..Options::default()
    })
    .await;

    // Without a certificate the handshake is refused (TLS 1.3 reports it on first use).
    let refused = match server.try_tls_stream(&server.ca_pem, &[b"http/1.1"]).await {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let read = stream.read_to_end(&mut buf).await;
            read.is_err() || buf.is_empty()
        }
    };
    assert!(refused, "a client without a certificate is refused");

    // With one signed by the client CA it is served.
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = vec![client_cert.der().clone()];
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes())
            .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(secrets_webhook::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.stop().await;
}

/// A ClientHello that offers TLS 1.1 and nothing newer.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend([0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((hello.len() as u16).to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_older_than_1_2_is_refused() {
    let server = TestServer::start(Options::default()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "an alert, not a ServerHello: {answer:02x?}"
    );
    // A fatal alert: protocol_version or handshake_failure, depending on what rustls notices first.
    assert_eq!(answer.get(5), Some(&2), "fatal: {answer:02x?}");
    assert!(matches!(answer.get(6), Some(70 | 40)), "{answer:02x?}");
    let (status, _) = server
        .client()
        .await
        .post("/mutate", labelled_review())
        .await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_bounded() {
    let server = TestServer::start(Options::default()).await;
    let tls = server.tls_stream(&[b"h2"]).await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let attacker = tokio::spawn(connection);
    let started = Instant::now();
    let mut client = client;
    let mut sent = 0;
    // Bounded: 10,000 streams opened and cancelled at once, or until the server closes the door.
    for _ in 0..10_000 {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let request = http::Request::post("https://localhost/mutate")
            .body(())
            .unwrap();
        let Ok((_response, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), attacker).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(sent > 0);
    // Whatever happened to the attacking connection, everyone else is served.
    let (status, _) = server
        .client_h2()
        .await
        .post("/mutate", labelled_review())
        .await;
    assert_eq!(status, 200);
    // The server cuts the flood off (GOAWAY, then it closes the connection) long before 10,000.
    assert!(
        sent < 10_000,
        "the server let {sent} cancelled streams through"
    );
    assert!(
        closed.is_ok(),
        "the attacking connection was closed by the server"
    );
    server.stop().await;
}

/// The process's resident memory now, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

/// An HTTP/2 connection to `process`.
async fn h2_to(process: &Process) -> H2 {
    h2_connect(process.addr, &process.ca_pem).await
}

type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn h2_connect(addr: std::net::SocketAddr, ca_pem: &str) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = common::connector(ca_pem, &[b"h2"])
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// One POST /mutate on an HTTP/2 connection: its status (0 when the stream failed).
async fn post_h2(sender: &mut H2, body: bytes::Bytes) -> (u16, Value) {
    use http_body_util::BodyExt;
    if let Err(err) = sender.ready().await {
        return (0, json!(format!("not ready: {err}")));
    }
    let request = http::Request::post("https://localhost/mutate")
        .body(http_body_util::Full::new(body))
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(err) => return (0, json!(format!("send: {err}"))),
    };
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return (0, json!(format!("body: {err}"))),
    };
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Four HTTP/2 connections each keep 32 streams of 2.5 MB reviews going (the most the server
/// lets a connection have open) for ten seconds, against a server with the shipped Deployment's 128 MiB budget: its resident
/// memory stays under the budget throughout, reviews it has no room for get a quick 503 naming
/// the budget, and a normal review sent meanwhile on its own connection is answered every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_reviews_stays_within_the_memory_budget() {
    let budget: u64 = 128 << 20;
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    // A first start compiles the policy into the cache, so the measured one starts as a
    // restarted replica does, without compiling.
    let warm = Process::start(&["--policy-cache-dir", cache_dir], &[("RUST_LOG", "info")]);
    warm.terminate();
    let _ = warm.wait();
    let budget_flag = budget.to_string();
    let process = Process::start(
        &[
            "--policy-cache-dir",
            cache_dir,
            "--memory-budget",
            &budget_flag,
        ],
        &[("RUST_LOG", "info")],
    );
    let pid = process.child.id();
    let at_rest = rss_bytes(pid);

    let mut large = labelled_pod();
    large["metadata"]["annotations"]["example.com/notes"] = json!("x".repeat(2_500_000));
    let large = bytes::Bytes::from(serde_json::to_vec(&review_with(large)).unwrap());
    let normal = bytes::Bytes::from(std::fs::read(fixtures().join("bench/typical.json")).unwrap());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(at_rest));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut flood = Vec::new();
    for _ in 0..4 {
        // One connection, shared by its streams, and opened again when the server closes it
        // (it does, after a thousand streams it had to refuse: HTTP/2's reset flood guard).
        let shared = std::sync::Arc::new(tokio::sync::Mutex::new(h2_to(&process).await));
        // As many streams as the server lets a connection have.
        for _ in 0..32 {
            let (shared, body, stop) = (shared.clone(), large.clone(), stop.clone());
            let (addr, ca) = (process.addr, process.ca_pem.clone());
            flood.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut sender = shared.lock().await.clone();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, _) = post_h2(&mut sender, body.clone()).await;
                    statuses.push(status);
                    if status == 0 {
                        let mut connection = shared.lock().await;
                        if connection.is_closed() {
                            *connection = h2_connect(addr, &ca).await;
                        }
                        sender = connection.clone();
                    }
                    // Refused at once: without a pause, this client would only flood itself.
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                statuses
            }));
        }
    }
    let mut own = h2_to(&process).await;
    let mut normal_answers = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let sent = Instant::now();
        let (status, response) = post_h2(&mut own, normal.clone()).await;
        normal_answers.push((
            status,
            response["response"]["allowed"].clone(),
            sent.elapsed(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for task in flood {
        statuses.extend(task.await.unwrap());
    }
    sampler.await.unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    println!(
        "at rest {} MiB, peak {} MiB of a {} MiB budget; flood: {} answered 200, {} refused 503, \
         {} failed; normal: {} answered, slowest {:?}",
        at_rest >> 20,
        peak >> 20,
        budget >> 20,
        count(200),
        count(503),
        count(0),
        normal_answers.len(),
        normal_answers.iter().map(|(_, _, took)| *took).max()
    );
    assert!(peak < budget, "RSS peaked at {} MiB", peak >> 20);
    assert!(count(200) > 0, "the flood's reviews that fit were answered");
    assert!(
        count(503) > 0,
        "the flood was over the budget: {statuses:?}"
    );
    assert!(
        normal_answers
            .iter()
            .all(|(status, allowed, _)| *status == 200 && *allowed == json!(true)),
        "{normal_answers:?}"
    );
    process
        .wait_for_metric_prefix("secrets_webhook_requests_rejected_total{reason=\"memory\"} ")
        .await;
}
