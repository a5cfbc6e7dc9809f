//! The envtest harness (`envtest`) against the real kube-apiserver and etcd from
//! `../shared/tools`: it starts, its admin client is `system:masters`, pods are stored with the
//! API server's defaults, service-account tokens are signed and verified with the harness's ECDSA
//! key, and both processes are gone once the harness is dropped, even by a panic. One test on purpose: each `ApiServer` costs a real etcd and apiserver.

use std::panic::AssertUnwindSafe;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;

use crate::envtest::ApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_stores_pods_and_dies_with_the_harness() {
    let started = std::time::Instant::now();
    let Some(server) = ApiServer::start("apiserver::a_real_api_server_stores_pods").await else {
        return;
    };
    eprintln!(
        "envtest ready in {:?} at {}",
        started.elapsed(),
        server.url()
    );

    assert_admin_is_system_masters(&server).await;
    assert_kubeconfig_is_self_contained(&server);
    server
        .create_namespace("smoke", &[("inject-flyte-secrets", "enabled")])
        .await;
    assert_pod_round_trip(&server).await;
    assert_namespaces_listed(&server).await;
    assert_service_account_tokens_verify(&server).await;

    assert_processes_die_on_panic(server);
}

async fn assert_admin_is_system_masters(server: &ApiServer) {
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
    }))
    .unwrap();
    let answer = Api::<SelfSubjectReview>::all(server.client())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let user = answer.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some("admin"));
    assert!(
        user.groups
            .unwrap_or_default()
            .contains(&"system:masters".to_owned()),
        "the admin certificate's O is its group"
    );
}

/// A subprocess gets only the path: everything it needs must be inside the file.
fn assert_kubeconfig_is_self_contained(server: &ApiServer) {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(server.url().as_str()));
    assert!(cluster.certificate_authority_data.is_some());
    assert!(cluster.certificate_authority.is_none());
    let user = kubeconfig.auth_infos[0].auth_info.as_ref().unwrap();
    assert!(user.client_certificate_data.is_some() && user.client_key_data.is_some());
    assert!(user.client_certificate.is_none() && user.client_key.is_none());
}

async fn assert_pod_round_trip(server: &ApiServer) {
    let pods: Api<Pod> = Api::namespaced(server.client(), "smoke");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = created
        .metadata
        .uid
        .clone()
        .expect("the API server assigns a uid");

    let read = pods.get("probe").await.unwrap();
    assert_eq!(read.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(read.metadata.namespace.as_deref(), Some("smoke"));
    let spec = read.spec.unwrap();
    assert_eq!(spec.containers[0].image.as_deref(), Some("busybox"));
    // Defaults only a real API server fills in; no scheduler, so it never leaves Pending.
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        spec.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(read.status.unwrap().phase.as_deref(), Some("Pending"));
}

async fn assert_namespaces_listed(server: &ApiServer) {
    let namespaces = Api::<Namespace>::all(server.client())
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: Vec<&str> = namespaces
        .items
        .iter()
        .filter_map(|namespace| namespace.metadata.name.as_deref())
        .collect();
    for expected in ["default", "kube-system", "smoke"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let smoke = namespaces
        .items
        .iter()
        .find(|namespace| namespace.metadata.name.as_deref() == Some("smoke"))
        .unwrap();
    let labels = smoke.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("inject-flyte-secrets").map(String::as_str),
        Some("enabled")
    );
    // Set by the API server itself: what namespaceSelectors usually match on.
    assert_eq!(
        labels
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("smoke")
    );
}

/// The signing key (`--service-account-signing-key-file`) and the verifying one
/// (`--service-account-key-file`) are halves of one ECDSA pair.
async fn assert_service_account_tokens_verify(server: &ApiServer) {
    let accounts: Api<ServiceAccount> = Api::namespaced(server.client(), "smoke");
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap();
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {},
    }))
    .unwrap();
    let token = accounts
        .create_token_request("probe", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");

    let review: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token},
    }))
    .unwrap();
    let status = Api::<TokenReview>::all(server.client())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:smoke:probe")
    );
}

/// A test that panics while holding the harness must not leave etcd or kube-apiserver behind.
fn assert_processes_die_on_panic(server: ApiServer) {
    let pids = server.pids();
    let address = server.url().trim_start_matches("https://").to_owned();
    // Quiet: the panic is expected, its message and backtrace would only mislead a reader.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let unwound = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _held = server;
        panic!("a deliberate panic, to check the harness's Drop on unwind");
    }));
    std::panic::set_hook(hook);
    assert!(unwound.is_err());
    for pid in pids {
        // Drop waited for them, so not even a zombie is left.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the harness"
        );
    }
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "{address} still accepts connections"
    );
}
