//! `secrets-webhook serve` as a process against an envtest API server, acting as the webhook's
//! ServiceAccount with deploy/'s RBAC installed: what a replica in a cluster gets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use tokio::net::{TcpListener, TcpStream};

use crate::common;
use crate::envtest::ApiServer;

/// The webhook's namespace, as deploy/ names it.
pub const NAMESPACE: &str = "secrets-webhook";
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:secrets-webhook:secrets-webhook";

/// Creates the RBAC objects, admission policies and ServiceAccounts of a deploy/ file,
/// namespaced ones in the webhook's namespace unless they name another, as kustomize would place
/// them. (The admission policies take the ServiceAccount as their parameter: impersonation alone
/// needs none, the policies do.)
pub async fn install_roles(client: &kube::Client, text: &str) {
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut object: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
        if let Some(subjects) = object["subjects"].as_array_mut() {
            for subject in subjects {
                subject["namespace"] = NAMESPACE.into();
            }
        }
        install_object(client, object, &[]).await;
    }
}

/// The objects `kubectl kustomize <overlay>` renders that decide what the webhook may do (RBAC,
/// admission policies, ServiceAccounts), created as rendered; `None` after saying loudly that
/// `test` is skipped when kubectl is not on the PATH.
pub async fn install_rendered(client: &kube::Client, overlay: &Path, test: &str) -> Option<()> {
    let kubectl = common::tools::on_path("kubectl", test)?;
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(overlay)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        overlay.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let others = [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ResourceQuota",
        "NetworkPolicy",
    ];
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: serde_json::Value = serde::Deserialize::deserialize(document).unwrap();
        install_object(client, object, &others).await;
    }
    Some(())
}

/// Creates `object` unless its kind is one of `skipped`.
async fn install_object(client: &kube::Client, mut object: serde_json::Value, skipped: &[&str]) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    if skipped.contains(&kind.as_str()) {
        return;
    }
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(NAMESPACE)
        .to_owned();
    // kustomize does not know that admission policies are cluster-scoped.
    if kind.starts_with("ValidatingAdmissionPolicy") || kind.starts_with("Cluster") {
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
    }
    let namespaced = || client.clone();
    match kind.as_str() {
        "Role" => create::<Role>(Api::namespaced(namespaced(), &namespace), object).await,
        "RoleBinding" => {
            create::<RoleBinding>(Api::namespaced(namespaced(), &namespace), object).await
        }
        "ServiceAccount" => {
            create::<ServiceAccount>(Api::namespaced(namespaced(), &namespace), object).await
        }
        "ClusterRole" => create::<ClusterRole>(Api::all(client.clone()), object).await,
        "ClusterRoleBinding" => {
            create::<ClusterRoleBinding>(Api::all(client.clone()), object).await
        }
        "ValidatingAdmissionPolicy" => {
            create::<ValidatingAdmissionPolicy>(Api::all(client.clone()), object).await
        }
        "ValidatingAdmissionPolicyBinding" => {
            create::<ValidatingAdmissionPolicyBinding>(Api::all(client.clone()), object).await
        }
        other => panic!("unexpected {other} in a deploy/ file"),
    }
}

async fn create<K>(api: Api<K>, object: serde_json::Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

/// Installs the RBAC and admission-policy files of deploy/ named relative to the workspace.
pub async fn install_rbac(client: &kube::Client, files: &[&str]) {
    for file in files {
        let text = std::fs::read_to_string(common::workspace().join(file)).unwrap();
        install_roles(client, &text).await;
    }
}

/// The admin kubeconfig, acting as `user`: the API server authorizes every request as that
/// user, so RBAC is what a pod with that ServiceAccount would get.
pub fn impersonating(api: &ApiServer, user: &str) -> PathBuf {
    let text = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for entry in config["users"].as_sequence_mut().unwrap() {
        entry["user"]["as"] = user.into();
    }
    let path = api
        .dir()
        .join(format!("kubeconfig-{}", user.replace(':', "-")));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Round-robin over the backends, skipping one that refuses: what a Service does for the API
/// server, which calls one URL.
pub async fn balance(listener: TcpListener, backends: Arc<std::sync::Mutex<Vec<u16>>>) {
    let next = AtomicUsize::new(0);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let ports = backends.lock().unwrap().clone();
        let first = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            for at in 0..ports.len() {
                let port = ports[(first + at) % ports.len()];
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                    // As a Service's kernel forwarding would: no Nagle delays (40 ms stalls).
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

/// One `secrets-webhook serve` process.
pub struct Replica {
    pub name: String,
    pub child: Child,
    pub port: u16,
    pub metrics: u16,
    log: PathBuf,
}

impl Replica {
    /// Starts `serve` in `dir` with `kubeconfig`, registering `url`, on ports the system picks
    /// (a port probed free beforehand can be taken by a parallel test before the replica binds
    /// it) and reads them from its log.
    pub async fn start(
        dir: &Path,
        kubeconfig: &Path,
        url: &str,
        name: &str,
        extra: &[&str],
    ) -> Replica {
        Self::start_with_env(dir, kubeconfig, url, name, extra, &[]).await
    }

    /// [`Replica::start`] with more environment variables.
    pub async fn start_with_env(
        dir: &Path,
        kubeconfig: &Path,
        url: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        let log = dir.join(format!("{name}.log"));
        let output = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_secrets-webhook-e2e"))
            .args(["serve", "--namespace", NAMESPACE, "--webhook-url", url])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--ip-address", "127.0.0.1"])
            .arg("--policy-cache-dir")
            .arg(dir.join(format!("{name}-cache")))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut replica = Replica {
            name: name.to_owned(),
            child,
            port: 0,
            metrics: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = replica.log();
            let port_of = |marker: &str| {
                text.lines()
                    .find(|line| line.contains(marker))
                    .and_then(|line| line.rsplit(':').next())
                    .and_then(|port| port.trim().parse::<u16>().ok())
            };
            if let (Some(port), Some(metrics)) = (
                port_of("serving AdmissionReviews"),
                port_of("/readyz over plain HTTP addr="),
            ) {
                (replica.port, replica.metrics) = (port, metrics);
                return replica;
            }
            if let Ok(Some(status)) = replica.child.try_wait() {
                panic!("{name} exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "{name} never listened:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `line`: a replica logs what it did after doing it, so a
    /// test that saw the effect can still be ahead of the line.
    pub async fn wait_for_log(&self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(line) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {line:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process neither serves nor renews its Lease, as a replica on a node that
    /// froze or lost its network; it is killed when dropped.
    pub fn freeze(&self) {
        let status = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, as the kubelet stops a pod, and waits for the process to end.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if common::plain_http(self.metrics, "GET", "/readyz", "")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} never became ready:\n{}", self.name, self.log());
    }

    pub async fn metrics(&self) -> String {
        common::plain_http(self.metrics, "GET", "/metrics", "")
            .await
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
