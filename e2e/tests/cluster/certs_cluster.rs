//! Certificates nobody touches, against a real kube-apiserver + etcd (envtest): `serve`
//! replicas run as the webhook's ServiceAccount with deploy/base's RBAC, the API server calls
//! them through a round-robin balancer (a stand-in for the Service), and pods are created
//! through the API server while certificates and CAs renew.
//!
//! The rotation run lasts `ROTATION_SECONDS` (CI: 200); `host/benches/rotation.sh` runs it
//! longer for humans.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use secrets_webhook::certs::{self, Bundle, secret};
use tokio::net::{TcpListener, TcpStream};

use crate::common;
use crate::envtest::ApiServer;
use crate::replica::{NAMESPACE, Replica, SERVICE_ACCOUNT, balance, impersonating, install_rbac};

const TASKS: &str = "tasks";
const SECRET: &str = "secrets-webhook-tls";
const CONFIGURATION: &str = "secrets-webhook";

/// A cluster with the webhook's namespace, its RBAC and a task namespace, and a balancer in
/// front of the replicas to come.
struct Cluster {
    api: ApiServer,
    /// A kubeconfig that acts as the webhook's ServiceAccount.
    as_webhook: PathBuf,
    balancer: u16,
    backends: Arc<std::sync::Mutex<Vec<u16>>>,
}

impl Cluster {
    async fn start(test: &str) -> Option<Cluster> {
        let api = ApiServer::start(test).await?;
        api.create_namespace(NAMESPACE, &[]).await;
        api.create_namespace(TASKS, &[]).await;
        install_rbac(
            &api.client(),
            &[
                "deploy/base/serviceaccount.yaml",
                "deploy/base/rbac.yaml",
                "deploy/base/identity-policy.yaml",
                "deploy/components/init-certs/rbac.yaml",
            ],
        )
        .await;
        let as_webhook = impersonating(&api, SERVICE_ACCOUNT);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let balancer = listener.local_addr().unwrap().port();
        let backends = Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn(balance(listener, backends.clone()));
        Some(Cluster {
            api,
            as_webhook,
            balancer,
            backends,
        })
    }

    fn client(&self) -> kube::Client {
        self.api.client()
    }

    /// Starts a replica and puts it behind the balancer.
    async fn replica(&self, name: &str, extra: &[&str]) -> Replica {
        let url = format!("https://localhost:{}/mutate", self.balancer);
        let dir = self.api.dir();
        let replica = Replica::start(dir, &self.as_webhook, &url, name, extra).await;
        self.backends.lock().unwrap().push(replica.port);
        replica
    }

    async fn secret(&self) -> Option<Bundle> {
        let api: Api<Secret> = Api::namespaced(self.client(), NAMESPACE);
        secret::read(&api, SECRET).await.unwrap()
    }

    async fn configuration(&self) -> Option<MutatingWebhookConfiguration> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client());
        api.get_opt(CONFIGURATION).await.unwrap()
    }

    async fn ca_bundle(&self) -> Vec<u8> {
        self.configuration()
            .await
            .and_then(|config| config.webhooks?.into_iter().next()?.client_config.ca_bundle)
            .map(|bundle| bundle.0)
            .unwrap_or_default()
    }
}

/// A minutes-long CA, a 90-second serving certificate renewed 45 s before its end.
const SHORT_LIFETIMES: [&str; 6] = [
    "--ca-validity",
    "4m",
    "--cert-validity",
    "90s",
    "--renew-before",
    "45s",
];

/// Accepts any certificate: the test wants to see what is served, not to trust it.
#[derive(Debug)]
struct SeeAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SeeAnything {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn served_certificate(port: u16) -> Option<Vec<u8>> {
    let provider = secrets_webhook::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAnything(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.ok()?;
    let (_, connection) = tls.get_ref();
    Some(connection.peer_certificates()?.first()?.to_vec())
}

fn leaf_der(bundle: &Bundle) -> Vec<u8> {
    certs::certificates(&bundle.cert_pem).remove(0).der
}

fn ca_ders(pem: &[u8]) -> Vec<Vec<u8>> {
    certs::certificates(std::str::from_utf8(pem).unwrap())
        .into_iter()
        .map(|ca| ca.der)
        .collect()
}

/// Creates one labelled pod through the API server; the stored pod must carry the injection.
async fn create_pod(client: &kube::Client) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), TASKS);
    let mut pod = common::labelled_pod();
    pod["metadata"]["namespace"] = TASKS.into();
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let stored = pods
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|err| err.to_string())?;
    let env = stored.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    // The labelled pod asks for a file: the webhook mounts it and points the SDK at it.
    match env
        .iter()
        .any(|var| var.name == "FLYTE_SECRETS_DEFAULT_DIR")
    {
        true => Ok(()),
        false => Err(format!("stored unmutated: {env:?}")),
    }
}

fn rotation_seconds() -> u64 {
    std::env::var("ROTATION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

/// What the observer saw of one serving certificate.
struct Generation {
    leaf: Vec<u8>,
    in_secret_at: Instant,
    /// When each replica first served it.
    served_at: Vec<Option<Instant>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_renew_certificates_while_pods_are_created() {
    let Some(cluster) =
        Cluster::start("two_replicas_renew_certificates_while_pods_are_created").await
    else {
        return;
    };
    let replicas = [
        cluster.replica("replica-a", &SHORT_LIFETIMES).await,
        cluster.replica("replica-b", &SHORT_LIFETIMES).await,
    ];
    for replica in &replicas {
        replica.wait_ready().await;
    }
    let client = cluster.client();
    let run = Duration::from_secs(rotation_seconds());
    let started = Instant::now();

    // Pods, continuously, from their own task.
    let creator = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut created, mut failures) = (0usize, Vec::new());
            while started.elapsed() < run {
                match create_pod(&client).await {
                    Ok(()) => created += 1,
                    Err(err) => failures.push(format!("{:?}: {err}", started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (created, failures)
        })
    };

    // The observer: the Secret, the configuration's caBundle, and what each replica serves.
    let mut generations: Vec<Generation> = Vec::new();
    let mut cas_seen: Vec<Vec<u8>> = Vec::new();
    let mut most_cas_in_bundle = 0;
    let mut untrusted: Vec<String> = Vec::new();
    while started.elapsed() < run {
        let bundle = cluster.secret().await.expect("the Secret exists");
        let leaf = leaf_der(&bundle);
        if generations.last().is_none_or(|last| last.leaf != leaf) {
            generations.push(Generation {
                leaf: leaf.clone(),
                in_secret_at: Instant::now(),
                served_at: vec![None; replicas.len()],
            });
        }
        let trusted = ca_ders(&cluster.ca_bundle().await);
        most_cas_in_bundle = most_cas_in_bundle.max(trusted.len());
        for ca in &trusted {
            if !cas_seen.contains(ca) {
                cas_seen.push(ca.clone());
            }
        }
        let current = generations.last_mut().unwrap();
        for (at, replica) in replicas.iter().enumerate() {
            let Some(served) = served_certificate(replica.port).await else {
                continue;
            };
            if served == current.leaf && current.served_at[at].is_none() {
                current.served_at[at] = Some(Instant::now());
            }
            // Whatever a replica serves, the API server must be able to verify.
            let served = certs::certificates(&certs::certificate_pem(&served)).remove(0);
            let verifiable = trusted.iter().any(|ca| {
                served.signed_by(&certs::certificates(&certs::certificate_pem(ca)).remove(0))
            });
            if !verifiable {
                untrusted.push(format!(
                    "{:?}: {} serves {}",
                    started.elapsed(),
                    replica.name,
                    served.serial
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (created, failures) = creator.await.unwrap();
    let logs = || {
        replicas
            .iter()
            .map(|r| format!("--- {}\n{}", r.name, r.log()))
            .collect::<String>()
    };

    assert!(
        failures.is_empty(),
        "{} of {} creations failed: {failures:#?}\n{}",
        failures.len(),
        created + failures.len(),
        logs()
    );
    assert!(created >= 100, "only {created} pods created");
    assert!(
        untrusted.is_empty(),
        "served certificates the caBundle could not verify: {untrusted:#?}"
    );
    let renewals = generations.len() - 1;
    assert!(
        renewals >= 3,
        "the serving certificate was renewed {renewals} times\n{}",
        logs()
    );
    assert!(cas_seen.len() >= 2, "the CA was never replaced\n{}", logs());
    assert!(
        most_cas_in_bundle >= 2,
        "the caBundle never held both CAs during a switch"
    );
    // Every generation but the newest (which may have just arrived) was served by both
    // replicas, within seconds of reaching the Secret.
    for generation in &generations[..generations.len() - 1] {
        for (at, served_at) in generation.served_at.iter().enumerate() {
            let lag = served_at
                .map(|served| served.saturating_duration_since(generation.in_secret_at))
                .unwrap_or_else(|| {
                    panic!(
                        "{} never served a renewed certificate\n{}",
                        replicas[at].name,
                        logs()
                    )
                });
            assert!(
                lag < Duration::from_secs(10),
                "{} took {lag:?} to serve a renewal",
                replicas[at].name
            );
        }
    }
    // One replica wrote; the metrics say what and the logs say who.
    let mut serving_renewals = 0.0;
    for replica in &replicas {
        let metrics = replica.metrics().await;
        serving_renewals += metric(
            &metrics,
            "secrets_webhook_cert_renewals_total{what=\"serving\",outcome=\"renewed\"}",
        );
        assert!(
            metrics.contains("secrets_webhook_ca_expiry_timestamp_seconds{"),
            "{metrics}"
        );
    }
    assert!(serving_renewals >= 3.0, "{serving_renewals}");
    let all = logs();
    assert!(all.contains("certificate Secret renewed"), "{all}");
    assert!(all.contains("identity=\"replica-"), "{all}");
    eprintln!(
        "rotation: {run:?}, {created} pods, {renewals} serving renewals, {} CAs, up to {most_cas_in_bundle} CAs in the caBundle",
        cas_seen.len()
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_init_certs_and_serve_converge_on_one_ca() {
    let Some(cluster) = Cluster::start("racing_init_certs_and_serve_converge_on_one_ca").await
    else {
        return;
    };
    // The init-certs Job's ServiceAccount, with its own Role.
    let as_job = impersonating(
        &cluster.api,
        "system:serviceaccount:secrets-webhook:secrets-webhook-init-certs",
    );
    // The jobs and the replica start together; the replica's start returns once it listens.
    let jobs: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_secrets-webhook-e2e"))
                .args([
                    "init-certs",
                    "--namespace",
                    NAMESPACE,
                    "--ip-address",
                    "127.0.0.1",
                ])
                .args([
                    "--webhook-url",
                    &format!("https://localhost:{}/mutate", cluster.balancer),
                ])
                .env("KUBECONFIG", &as_job)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let replica = cluster.replica("replica-a", &[]).await;
    for job in jobs {
        let output = job.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "init-certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    replica.wait_ready().await;
    let bundle = cluster.secret().await.unwrap();
    let cas = certs::certificates(&bundle.ca_pem);
    assert_eq!(cas.len(), 1, "one CA, not one per writer");
    let leaf = certs::certificates(&bundle.cert_pem).remove(0);
    assert!(leaf.signed_by(&cas[0]));
    assert_eq!(ca_ders(&cluster.ca_bundle().await), [cas[0].der.clone()]);
    wait_for("the replica to serve the Secret's certificate", || async {
        served_certificate(replica.port).await == Some(leaf.der.clone())
    })
    .await;
    create_pod(&cluster.client()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_edited_configuration_is_restored_within_seconds() {
    let Some(cluster) =
        Cluster::start("a_deleted_or_edited_configuration_is_restored_within_seconds").await
    else {
        return;
    };
    let replica = cluster.replica("replica-a", &[]).await;
    replica.wait_ready().await;
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client());
    let ca = cluster.secret().await.unwrap().ca_pem.into_bytes();

    api.delete(CONFIGURATION, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    wait_for("the configuration to come back", || async {
        cluster.ca_bundle().await == ca
    })
    .await;
    let restored_in = deleted.elapsed();

    let edit = serde_json::json!([
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "Tk9UIEEgQ0E="},
        {"op": "replace", "path": "/webhooks/0/rules/0/operations", "value": ["CREATE", "UPDATE"]},
        {"op": "replace", "path": "/webhooks/0/objectSelector", "value": {}},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(edit).unwrap();
    api.patch(
        CONFIGURATION,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .unwrap();
    let edited = Instant::now();
    wait_for("the edited configuration to be restored", || async {
        let Some(config) = cluster.configuration().await else {
            return false;
        };
        let hook = &config.webhooks.unwrap()[0];
        hook.client_config.ca_bundle.as_ref().map(|b| b.0.clone()) == Some(ca.clone())
            && hook.rules.as_ref().unwrap()[0].operations.as_deref()
                == Some(&["CREATE".to_owned()][..])
            && hook
                .object_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .is_some()
    })
    .await;
    let repaired_in = edited.elapsed();
    assert!(restored_in < Duration::from_secs(10), "{restored_in:?}");
    assert!(repaired_in < Duration::from_secs(10), "{repaired_in:?}");
    create_pod(&cluster.client()).await.unwrap();
    let log = replica.log();
    assert!(log.contains("why=\"it does not exist\""), "{log}");
    assert!(log.contains("caBundle changed"), "{log}");
    eprintln!(
        "configuration restored {restored_in:?} after deletion, {repaired_in:?} after an edit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_takes_over_when_the_elected_one_stops() {
    let Some(cluster) =
        Cluster::start("another_replica_takes_over_when_the_elected_one_stops").await
    else {
        return;
    };
    let mut first = cluster.replica("replica-a", &[]).await;
    first.wait_ready().await;
    let second = cluster.replica("replica-b", &[]).await;
    second.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), NAMESPACE);
    let holder = || async {
        leases
            .get("secrets-webhook-leader")
            .await
            .ok()
            .and_then(|lease| lease.spec?.holder_identity)
    };
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    first.terminate();
    let stopped = Instant::now();
    assert!(first.log().contains("left the election"), "{}", first.log());
    let deadline = stopped + Duration::from_secs(30);
    while holder().await.as_deref() != Some("replica-b") {
        assert!(
            Instant::now() < deadline,
            "replica-b never took over\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = stopped.elapsed();
    // The new holder does the work: a deleted configuration comes back.
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client());
    api.delete(CONFIGURATION, &DeleteParams::default())
        .await
        .unwrap();
    let ca = cluster.secret().await.unwrap().ca_pem.into_bytes();
    wait_for("the new holder to restore the configuration", || async {
        cluster.ca_bundle().await == ca
    })
    .await;
    assert!(
        took <= Duration::from_secs(17),
        "took {took:?}, the Lease lasts 15 s"
    );
    eprintln!("replica-b held the Lease {took:?} after replica-a stopped");
}

/// cert-manager's Secret as cert-manager writes it (no `ca.key`), for the external mode.
fn issued_by_cert_manager(bundle: &Bundle) -> Secret {
    use k8s_openapi::ByteString;
    let data = [
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
    ]
    .into_iter()
    .map(|(key, pem)| (key.to_owned(), ByteString(pem.clone().into_bytes())))
    .collect();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SECRET.to_owned()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cert_manager_the_webhook_follows_and_never_writes() {
    let Some(cluster) =
        Cluster::start("with_cert_manager_the_webhook_follows_and_never_writes").await
    else {
        return;
    };
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let first = certs::generate(&names, certs::Lifetimes::default()).unwrap();
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), NAMESPACE);
    secrets
        .create(&PostParams::default(), &issued_by_cert_manager(&first))
        .await
        .unwrap();
    let replica = cluster
        .replica(
            "replica-a",
            &["--ca-injected-from", "secrets-webhook/secrets-webhook"],
        )
        .await;
    replica.wait_ready().await;
    let config = cluster.configuration().await.unwrap();
    assert_eq!(
        config.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
        "secrets-webhook/secrets-webhook"
    );
    assert_eq!(
        cluster.ca_bundle().await,
        b"",
        "the caBundle is cainjector's"
    );
    assert_eq!(
        served_certificate(replica.port).await,
        Some(leaf_der(&first))
    );

    // A renewal by cert-manager is served within seconds; the webhook writes nothing back.
    let renewed = certs::generate(&names, certs::Lifetimes::default()).unwrap();
    let written = secrets
        .replace(SECRET, &PostParams::default(), &{
            let mut secret = issued_by_cert_manager(&renewed);
            secret.metadata.resource_version =
                secrets.get(SECRET).await.unwrap().metadata.resource_version;
            secret
        })
        .await
        .unwrap();
    wait_for("the replica to serve cert-manager's renewal", || async {
        served_certificate(replica.port).await == Some(leaf_der(&renewed))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = secrets.get(SECRET).await.unwrap();
    assert_eq!(
        now.metadata.resource_version, written.metadata.resource_version,
        "the webhook wrote the Secret"
    );
    assert!(!now.data.unwrap().contains_key("ca.key"));
}

async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
