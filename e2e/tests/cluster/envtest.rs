//! envtest for Rust: a real etcd and kube-apiserver on loopback (no scheduler, no
//! controller-manager), with a CA made for the run and an admin (`system:masters`) client.
//! Pods stay Pending and deleted namespaces stay Terminating: nothing reconciles them.
//!
//! Both processes die when the [`ApiServer`] is dropped, panics included. A watchdog per process
//! also kills it when the test binary itself dies without unwinding (SIGKILL, a timeout, or an
//! `ApiServer` left in a `static`, which is never dropped), so no stray apiserver eats the CPU.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::free_port;

/// How long etcd and kube-apiserver together may take to become ready (≈ 3 s when idle; a
/// 2-core machine running many tests at once is far slower).
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// Launches with fresh ports before giving up: a port from [`free_port`] can be taken by another
/// test between our probe and the server's bind.
const ATTEMPTS: u32 = 3;
const POLL: Duration = Duration::from_millis(100);

pub struct ApiServer {
    apiserver: Process,
    etcd: Process,
    config: kube::Config,
    kubeconfig: PathBuf,
    port: u16,
    // Declared last so it is removed after the processes using it are gone.
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// `None` after `tools::find` said loudly that `test` is skipped (under CI it panics instead).
    pub async fn start(test: &str) -> Option<ApiServer> {
        let programs = Programs {
            apiserver: crate::common::tools::find("TEST_KUBE_APISERVER", test)?,
            etcd: crate::common::tools::find("TEST_ETCD", test)?,
        };
        let dir = tempfile::Builder::new()
            .prefix("envtest-")
            .tempdir()
            .expect("a temporary directory");
        let pki = Pki::write(dir.path());
        for attempt in 1..=ATTEMPTS {
            match launch(&programs, &pki, dir.path(), attempt).await {
                Ok(running) => {
                    return Some(ApiServer {
                        apiserver: running.apiserver,
                        etcd: running.etcd,
                        config: running.config,
                        kubeconfig: running.kubeconfig,
                        port: running.port,
                        dir,
                    });
                }
                Err(Failed::PortTaken(_)) if attempt < ATTEMPTS => continue,
                Err(Failed::PortTaken(why) | Failed::Broken(why)) => {
                    panic!("{test}: envtest did not start: {why}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// An admin (`system:masters`) client, built from [`ApiServer::kubeconfig`].
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone()).expect("a client from the kubeconfig")
    }

    /// A kubeconfig with the certificates embedded (`*-data`), for subprocesses (`KUBECONFIG=`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The run's own directory (certificates, logs, etcd data), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of kube-apiserver and etcd, for tests that check they are gone after a drop.
    pub fn pids(&self) -> [u32; 2] {
        [self.apiserver.child.id(), self.etcd.child.id()]
    }

    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        kube::Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| {
                panic!("creating namespace {name}: {err}\n{}", self.log_tail(20))
            });
    }

    /// The last `lines` lines of the kube-apiserver log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The API server first: it would only log etcd's disappearance.
        self.apiserver.stop();
        self.etcd.stop();
    }
}

struct Programs {
    apiserver: PathBuf,
    etcd: PathBuf,
}

struct Running {
    apiserver: Process,
    etcd: Process,
    config: kube::Config,
    kubeconfig: PathBuf,
    port: u16,
}

/// Why a launch failed: a port clash is retried with new ports, anything else is shown.
enum Failed {
    PortTaken(String),
    Broken(String),
}

async fn launch(
    programs: &Programs,
    pki: &Pki,
    dir: &Path,
    attempt: u32,
) -> Result<Running, Failed> {
    let deadline = Instant::now() + READY_DEADLINE;
    let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
    let mut etcd = Process::spawn(
        "etcd",
        &programs.etcd,
        &etcd_args(
            &dir.join(format!("etcd-data-{attempt}")),
            etcd_port,
            peer_port,
        ),
        &dir.join("etcd.log"),
    );
    if let Err(why) = wait_for_etcd(&mut etcd, etcd_port, deadline).await {
        return Err(failed(why, &etcd, None));
    }
    let mut apiserver = Process::spawn(
        "kube-apiserver",
        &programs.apiserver,
        &apiserver_args(pki, etcd_port, port),
        &dir.join("kube-apiserver.log"),
    );
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, pki, port);
    let config = kube_config(&kubeconfig).await;
    if let Err(why) = wait_for_apiserver(&mut apiserver, &config, deadline).await {
        return Err(failed(why, &etcd, Some(&apiserver)));
    }
    Ok(Running {
        apiserver,
        etcd,
        config,
        kubeconfig,
        port,
    })
}

/// The failure with both log tails; a bind error means the port went to someone else.
fn failed(why: String, etcd: &Process, apiserver: Option<&Process>) -> Failed {
    let logs = [Some(etcd), apiserver]
        .into_iter()
        .flatten()
        .map(|process| format!("\n--- {} log ---\n{}", process.name, process.log_tail(30)))
        .collect::<String>();
    let report = format!("{why}{logs}");
    if logs.contains("address already in use") {
        Failed::PortTaken(report)
    } else {
        Failed::Broken(report)
    }
}

fn etcd_args(data_dir: &Path, port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        // The defaults name localhost:2380, which another etcd may hold.
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        "--log-level=warn".to_owned(),
        "--logger=zap".to_owned(),
    ]
}

fn apiserver_args(pki: &Pki, etcd_port: u16, port: u16) -> Vec<String> {
    let path = |path: &PathBuf| path.display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--tls-cert-file={}", path(&pki.serving_cert)),
        format!("--tls-private-key-file={}", path(&pki.serving_key)),
        format!("--client-ca-file={}", path(&pki.ca)),
        "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
        format!(
            "--service-account-key-file={}",
            path(&pki.service_account_public)
        ),
        format!(
            "--service-account-signing-key-file={}",
            path(&pki.service_account_key)
        ),
        "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
        "--authorization-mode=RBAC".to_owned(),
        // No controller-manager creates the default ServiceAccount this plugin would demand.
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        "--allow-privileged=true".to_owned(),
        "--profiling=false".to_owned(),
    ]
}

async fn wait_for_etcd(etcd: &mut Process, port: u16, deadline: Instant) -> Result<(), String> {
    loop {
        if let Some(status) = etcd.exited() {
            return Err(format!("etcd exited ({status}) before it was healthy"));
        }
        if etcd_healthy(port).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("etcd not healthy within {READY_DEADLINE:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /health` on etcd's client port says `"health":"true"`.
async fn etcd_healthy(port: u16) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        std::io::Result::Ok(response)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(response)) => response.contains(r#""health":"true""#),
        _ => false,
    }
}

async fn wait_for_apiserver(
    apiserver: &mut Process,
    config: &kube::Config,
    deadline: Instant,
) -> Result<(), String> {
    let client = kube::Client::try_from(config.clone()).expect("a client from the kubeconfig");
    loop {
        if let Some(status) = apiserver.exited() {
            return Err(format!(
                "kube-apiserver exited ({status}) before it was ready"
            ));
        }
        let readyz = http::Request::get("/readyz").body(Vec::new()).unwrap();
        let last = match client.request_text(readyz).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "kube-apiserver not ready within {READY_DEADLINE:?}; last /readyz: {last}"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn kube_config(kubeconfig: &Path) -> kube::Config {
    let file = Kubeconfig::read_from(kubeconfig).expect("reading our kubeconfig");
    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("a kube config from our kubeconfig")
}

/// Everything inlined (`*-data`), so the file works from any directory and outlives nothing.
fn write_kubeconfig(path: &Path, pki: &Pki, port: u16) {
    let data = |path: &PathBuf| {
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(path).expect("reading a certificate we wrote"))
    };
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority-data": data(&pki.ca),
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": data(&pki.admin_cert),
            "client-key-data": data(&pki.admin_key),
        }}],
        "contexts": [{"name": "envtest", "context": {
            "cluster": "envtest", "user": "admin", "namespace": "default",
        }}],
        "current-context": "envtest",
    });
    let yaml = serde_yaml::to_string(&kubeconfig).unwrap();
    std::fs::write(path, yaml).expect("writing the kubeconfig");
}

/// The run's certificates and keys, as files in its directory.
struct Pki {
    /// Signs the serving certificate and, as `--client-ca-file`, the admin's.
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    /// Signs service-account tokens: ECDSA P-256, PKCS#8.
    service_account_key: PathBuf,
    /// Verifies them. kube-apiserver reads an ECDSA private key only as SEC1 (`EC PRIVATE KEY`)
    /// there, so it gets the public half (`PUBLIC KEY`) instead of the PKCS#8 signing key.
    service_account_public: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name = name("envtest CA", None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let mut serving =
            CertificateParams::new(["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (serving_cert, serving_key) = sign(serving, &issuer);

        // The API server takes CN as the user name and O as the groups.
        let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin.distinguished_name = name("admin", Some("system:masters"));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (admin_cert, admin_key) = sign(admin, &issuer);

        let service_account = KeyPair::generate().unwrap();
        let file = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("writing a certificate or key");
            path
        };
        Pki {
            ca: file("ca.crt", &ca_cert.pem()),
            serving_cert: file("apiserver.crt", &serving_cert),
            serving_key: file("apiserver.key", &serving_key),
            admin_cert: file("admin.crt", &admin_cert),
            admin_key: file("admin.key", &admin_key),
            service_account_key: file("service-account.key", &service_account.serialize_pem()),
            service_account_public: file("service-account.pub", &service_account.public_key_pem()),
        }
    }
}

/// A new key and its certificate from `params`, signed by `issuer`, both PEM.
fn sign(params: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name
}

/// A child process logging to a file, with a watchdog that kills it if the test binary dies
/// without running our `Drop`.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
    watchdog: Option<Child>,
    stopped: bool,
}

impl Process {
    fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Process {
        let out = File::create(log).expect("creating a log file");
        let err = out.try_clone().expect("sharing the log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let watchdog = watchdog(child.id());
        Process {
            name,
            child,
            log: log.to_owned(),
            watchdog,
            stopped: false,
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("polling a child process")
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // kill fails only when the process already exited; wait reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its pid is free for reuse now: the watchdog must not fire at it.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A shell blocked reading a pipe only we hold: when this process dies in any way, the kernel
/// closes the pipe, `read` sees end-of-file and the shell kills `pid`. No polling, no CPU.
fn watchdog(pid: u32) -> Option<Child> {
    Command::new("sh")
        .args(["-c", r#"read line; kill -9 "$1" 2>/dev/null"#, "watchdog"])
        .arg(pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
