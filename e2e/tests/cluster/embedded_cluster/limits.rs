//! No store or caller takes the Embedded manager down: a store that never answers is named in a
//! denial before the review's deadline, and a burst of invalidations of one id costs one store
//! read and at most one patch per mirror (counted at the API server).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use super::{Flyte2, TASKS, requests, scope, scope_labels, wait_until_injecting};
use crate::common;
use crate::envtest::ApiServer;
use crate::replica::Replica;

/// PATCH requests to Secrets the API server has served, by its own metrics.
async fn secret_patches(client: &kube::Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains("resource=\"secrets\"")
                && line.contains("verb=\"PATCH\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// POSTs `body` to `/invalidate-secret` on `port` from source address `from`: the status.
async fn invalidate_from(from: std::net::Ipv4Addr, port: u16, body: &str) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let request = format!(
        "POST /invalidate-secret HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer).await;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The sum of the replica's `secrets_webhook_invalidations_total` over its results.
async fn invalidations_counted(replica: &Replica) -> u64 {
    let text = replica.metrics().await;
    text.lines()
        .filter(|line| line.starts_with("secrets_webhook_invalidations_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// 1,000 invalidations of one secret, from 20 addresses at once (each within its rate limit):
/// the follower reads it once and patches each of its ids' mirrors at most once, in the
/// namespaces entitled to them; the rest is coalesced or found unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_burst_patches_each_mirror_at_most_once() {
    let test = "an_invalidation_burst_patches_each_mirror_at_most_once";
    let Some((flyte, port)) = Flyte2::start_with_invalidation(test).await else {
        return;
    };
    let id = scope().secret_id("db");
    flyte.set_source(&id, Some("v1")).await;
    wait_until_injecting(&flyte).await;
    flyte
        .create_pod("task", scope_labels(), requests(&["db"]), false)
        .await
        .unwrap();
    flyte.wait_for_mirror(&id, Some("v1")).await;
    let admin = flyte.client();
    let before = secret_patches(&admin).await;

    let body = r#"{"org":"acme","domain":"development","project":"flytesnacks","name":"db"}"#;
    let mut posts = Vec::new();
    for address in 2..22u8 {
        posts.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..50 {
                let from = std::net::Ipv4Addr::new(127, 0, 0, address);
                statuses.push(invalidate_from(from, port, body).await);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for post in posts {
        statuses.extend(post.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert!(accepted >= 950, "{accepted} of 1000 accepted: {statuses:?}");
    // Each accepted post names three ids; wait until the follower has accounted for them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while invalidations_counted(&flyte.replica).await < 3 * accepted {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            flyte.replica.metrics().await,
            flyte.replica.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let patches = secret_patches(&admin).await - before;
    // Three ids (project, domain, organization), each entitled to TASKS and Flyte's own
    // namespace: at most one patch each.
    println!("{accepted} invalidations, {patches} Secret PATCHes at the API server");
    assert!(patches <= 6, "{patches} PATCHes for one burst");
    let text = flyte.replica.metrics().await;
    assert!(
        text.lines().any(|l| l
            .starts_with("secrets_webhook_invalidations_total{result=\"coalesced\"}")
            && !l.ends_with(" 0")),
        "{text}"
    );

    // A real change still reaches the mirror.
    flyte.set_source(&id, Some("v2")).await;
    assert_eq!(
        invalidate_from([127, 0, 0, 30].into(), port, body).await,
        200
    );
    flyte.wait_for_mirror(&id, Some("v2")).await;
}

/// A store that accepts connections and never answers (here as AWS Secrets Manager's endpoint),
/// with the webhook registered for 2 s: the pod is denied before the API server gives up, and
/// the denial names the store and the secret.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_answers_is_named_before_the_deadline() {
    let test = "a_store_that_never_answers_is_named_before_the_deadline";
    let Some(api) = ApiServer::start(test).await else {
        return;
    };
    api.create_namespace(TASKS, &[("organization", "acme")])
        .await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let config = api.dir().join("silent.yaml");
    std::fs::write(
        &config,
        "webhook:\n  secretManagerTypes: [Embedded]\n  cacheInvalidationPort: 0\n  \
         embeddedSecretManagerConfig:\n    type: AWS\n    awsConfig: {region: us-east-1}\n",
    )
    .unwrap();
    let certs = api.dir().join("certs");
    let replica = Replica::start_with_env(
        api.dir(),
        api.kubeconfig(),
        "https://unused.invalid/mutate",
        "silent",
        &[
            "--local",
            "--config",
            config.to_str().unwrap(),
            "--cert-dir",
            certs.to_str().unwrap(),
            "--timeout-seconds",
            "2",
        ],
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
    .await;
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "task", "namespace": TASKS,
                     "labels": {"inject-flyte-secrets": "true", "organization": "acme",
                                "project": "flytesnacks", "domain": "development"},
                     "annotations": requests(&["db"])},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]}
    });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "silent-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": TASKS, "operation": "CREATE", "object": pod}
    });
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    let mut https = common::client_to(([127, 0, 0, 1], replica.port).into(), &ca).await;
    let started = Instant::now();
    let (status, response) = https
        .post("/mutate", serde_json::to_vec(&review).unwrap())
        .await;
    let took = started.elapsed();
    println!("a silent store's review was answered in {took:?}");
    assert_eq!(status, 200);
    assert_eq!(response["response"]["allowed"], false, "{response}");
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("the AWS store did not answer")
            && message.contains(&scope().secret_id("db")),
        "{message}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
}
