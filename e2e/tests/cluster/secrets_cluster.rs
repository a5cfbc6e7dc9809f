//! The Embedded manager's K8s backend against a real kube-apiserver + etcd (envtest): Flyte 2's
//! source layout (a Secret named by the md5 of the secret id, in the source namespace), the
//! project → domain → organization cascade, changes seen through the reflector, mirrors in task
//! namespaces (written, following their source, swept), and the cache invalidation endpoint over
//! HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use secrets_webhook::secrets::k8s::K8sBackend;
use secrets_webhook::secrets::mirror::{self, Mirror};
use secrets_webhook::secrets::scope::{Scope, k8s_secret_name};
use secrets_webhook::secrets::store::Store;

use crate::common;
use crate::envtest::ApiServer;

const SOURCE: &str = "flyte";

fn scope() -> Scope {
    Scope {
        org: "acme".into(),
        domain: "development".into(),
        project: "ml".into(),
    }
}

/// A source Secret as Flyte 2's secret service writes it.
fn source(scope: &Scope, key: &str, value: &str) -> Secret {
    let id = scope.secret_id(key);
    Secret {
        metadata: ObjectMeta {
            name: Some(k8s_secret_name(&id)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            id,
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Resolves `key` until `expected` comes back (the reflector sees a change within moments);
/// returns how long that took.
async fn wait_for_value(store: &Store, key: &str, expected: Option<&str>) -> Duration {
    let started = Instant::now();
    loop {
        let value = store
            .resolve(&scope(), key)
            .await
            .unwrap()
            .map(|found| found.value);
        if value.as_deref() == expected.map(str::as_bytes) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k8s_backend_follows_its_namespace_through_the_cascade() {
    let Some(api) =
        ApiServer::start("the_k8s_backend_follows_its_namespace_through_the_cascade").await
    else {
        return;
    };
    api.create_namespace(SOURCE, &[]).await;
    let secrets: Api<Secret> = Api::namespaced(api.client(), SOURCE);
    let [project, domain, org] = scope().cascade();
    let post = PostParams::default();
    secrets
        .create(&post, &source(&org, "db", "org value"))
        .await
        .unwrap();
    secrets
        .create(&post, &source(&project, "db", "project value"))
        .await
        .unwrap();

    let (backend, follow) = K8sBackend::start(api.client(), SOURCE, |_| {});
    tokio::spawn(follow);
    backend.ready().await.unwrap();
    let store = Store::new(backend, None);
    let found = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(
        (found.scope, found.value),
        (project.clone(), b"project value".to_vec())
    );
    assert_eq!(store.resolve(&scope(), "absent").await.unwrap(), None);

    // A changed source reaches the next lookup.
    secrets
        .replace(
            &k8s_secret_name(&project.secret_id("db")),
            &post,
            &source(&project, "db", "rotated"),
        )
        .await
        .unwrap();
    let changed_in = wait_for_value(&store, "db", Some("rotated")).await;
    // A deleted project-scope source falls back to the organization's.
    secrets
        .delete(
            &k8s_secret_name(&project.secret_id("db")),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    wait_for_value(&store, "db", Some("org value")).await;
    // A domain-scope source now wins over the organization's.
    secrets
        .create(&post, &source(&domain, "db", "domain value"))
        .await
        .unwrap();
    wait_for_value(&store, "db", Some("domain value")).await;

    // A Secret of the right name without the id is an error, not a fall-through.
    let mut wrong = source(&project, "db", "x");
    wrong.data = Some(BTreeMap::from([(
        "value".to_owned(),
        ByteString(b"x".to_vec()),
    )]));
    secrets.create(&post, &wrong).await.unwrap();
    let started = Instant::now();
    let err = loop {
        match store.resolve(&scope(), "db").await {
            Err(err) => break err,
            Ok(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(found) => panic!("still {found:?}"),
        }
    };
    assert!(
        err.to_string().contains("holds no key u__org__acme"),
        "{err}"
    );
    eprintln!("a changed source reached a lookup after {changed_in:?}");
}

async fn request(port: u16, method: &str, body: &str) -> String {
    common::plain_http(port, method, "/invalidate-secret", body)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn the_invalidation_endpoint_speaks_flyte_2s_protocol() {
    struct Nothing;
    impl secrets_webhook::secrets::store::Backend for Nothing {
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> futures::future::BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
            Box::pin(async { Ok(None) })
        }
    }
    let store = Arc::new(Store::new(Arc::new(Nothing), Some(Duration::from_secs(60))));
    let (told, mut invalidated) = tokio::sync::mpsc::unbounded_channel();
    // The followers' queue, full once `full` is set.
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let full_now = full.clone();
    let queue: secrets_webhook::secrets::invalidation::Queue = Arc::new(move |ids| {
        if full_now.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(secrets_webhook::secrets::follow::QueueFull);
        }
        let _ = told.send(ids);
        Ok(())
    });
    let metrics = Arc::new(secrets_webhook::metrics::Metrics::default());
    // The port runs as a task of the replica's; it lives as long as `tasks`.
    let readiness = Arc::new(secrets_webhook::health::Readiness::default());
    let mut tasks = secrets_webhook::tasks::Tasks::new(readiness, metrics.clone());
    let addr = secrets_webhook::server::invalidation_port::start(
        &mut tasks,
        "127.0.0.1:0".parse().unwrap(),
        store,
        queue,
        metrics.clone(),
    )
    .await
    .unwrap();
    let ok = r#"{"org":"acme","domain":"development","project":"ml","name":"db"}"#;
    assert!(
        request(addr.port(), "POST", ok)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The three scopes' ids are passed on (mirrors are brought in line with what is read next).
    assert_eq!(invalidated.recv().await.unwrap().len(), 3);
    assert!(
        request(addr.port(), "POST", ok)
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        request(addr.port(), "GET", "")
            .await
            .starts_with("HTTP/1.1 405")
    );
    assert!(
        request(addr.port(), "POST", "{")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let unnamed = r#"{"org":"acme","domain":"development","project":"ml"}"#;
    assert!(
        request(addr.port(), "POST", unnamed)
            .await
            .starts_with("HTTP/1.1 400")
    );
    // A full queue takes nothing more, and says so.
    full.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        request(addr.port(), "POST", ok)
            .await
            .starts_with("HTTP/1.1 503")
    );
    // One address posting on and on is slowed down: Flyte 2's secret service posts once a write.
    let mut answers = Vec::new();
    for _ in 0..100 {
        answers.push(request(addr.port(), "POST", unnamed).await);
    }
    let slowed = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429"))
        .count();
    assert!((40..=60).contains(&slowed), "{slowed} of 100 slowed down");
    let text = metrics.encode();
    assert!(
        text.contains("secrets_webhook_requests_rejected_total{reason=\"pending\"} 1"),
        "{text}"
    );
}

async fn mirror_value(api: &ApiServer, namespace: &str, id: &str) -> Option<Vec<u8>> {
    let secrets: Api<Secret> = Api::namespaced(api.client(), namespace);
    let found = secrets.get_opt(&mirror::name(id)).await.unwrap()?;
    Some(found.data.unwrap()[mirror::VALUE_KEY].0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_follow_their_source_and_unused_ones_are_swept() {
    let Some(api) = ApiServer::start("mirrors_follow_their_source_and_unused_ones_are_swept").await
    else {
        return;
    };
    let client = api.client();
    for namespace in ["ml-development", "ml-production"] {
        api.create_namespace(namespace, &[]).await;
    }
    let namespaces: Vec<String> = ["ml-development", "ml-production", "default"]
        .map(str::to_owned)
        .to_vec();
    let [project, _, org] = scope().cascade();
    let (db, token) = (project.secret_id("db"), org.secret_id("token"));
    for (namespace, id, value) in [
        ("ml-development", &db, "one"),
        ("ml-production", &db, "one"),
        ("ml-development", &token, "t"),
    ] {
        let mirror = Mirror {
            namespace,
            id,
            value: value.as_bytes(),
        };
        mirror::apply(&client, &mirror).await.unwrap();
    }
    // Applying again is idempotent: one Secret per id and namespace.
    let again = Mirror {
        namespace: "ml-development",
        id: &db,
        value: b"one",
    };
    mirror::apply(&client, &again).await.unwrap();
    assert_eq!(
        mirror_value(&api, "ml-development", &db).await.as_deref(),
        Some(&b"one"[..])
    );

    // A changed source updates its mirrors in every namespace, and only its own.
    assert_eq!(
        mirror::follow_source(&client, &namespaces, &db, Some(b"two"))
            .await
            .unwrap(),
        2
    );
    // Following the same value again finds them, and the API server writes nothing.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ml-production");
    let version = |secret: Secret| secret.metadata.resource_version.unwrap();
    let before = version(secrets.get(&mirror::name(&db)).await.unwrap());
    assert_eq!(
        mirror::follow_source(&client, &namespaces, &db, Some(b"two"))
            .await
            .unwrap(),
        2
    );
    let after = version(secrets.get(&mirror::name(&db)).await.unwrap());
    assert_eq!(before, after, "a mirror in line was written");
    for namespace in ["ml-development", "ml-production"] {
        assert_eq!(
            mirror_value(&api, namespace, &db).await.as_deref(),
            Some(&b"two"[..])
        );
    }
    assert_eq!(
        mirror_value(&api, "ml-development", &token)
            .await
            .as_deref(),
        Some(&b"t"[..])
    );

    // A pod refers to the db mirror; nothing refers to the token one.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ml-development");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "task"},
        "spec": {"containers": [{"name": "main", "image": "busybox", "env": [{"name": "_UNION_DB",
            "valueFrom": {"secretKeyRef": {"name": mirror::name(&db), "key": mirror::VALUE_KEY}}}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // Within the grace period nothing goes; after it, only unreferenced mirrors do.
    assert_eq!(
        mirror::sweep(&client, Duration::from_secs(600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        mirror::sweep(&client, Duration::ZERO).await.unwrap(),
        2,
        "token here, db in production"
    );
    assert!(mirror_value(&api, "ml-development", &db).await.is_some());
    assert!(mirror_value(&api, "ml-development", &token).await.is_none());
    assert!(mirror_value(&api, "ml-production", &db).await.is_none());

    // A deleted source takes its mirrors with it.
    assert_eq!(
        mirror::follow_source(&client, &namespaces, &db, None)
            .await
            .unwrap(),
        1
    );
    assert!(mirror_value(&api, "ml-development", &db).await.is_none());
    // A Secret that is not a mirror is never touched, whatever its name.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ml-development");
    let own = Secret {
        metadata: ObjectMeta {
            name: Some(mirror::name(&token)),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &own).await.unwrap();
    assert_eq!(mirror::sweep(&client, Duration::ZERO).await.unwrap(), 0);
    assert_eq!(
        mirror::follow_source(&client, &namespaces, &token, None)
            .await
            .unwrap(),
        0
    );
    assert!(
        secrets
            .get_opt(&mirror::name(&token))
            .await
            .unwrap()
            .is_some()
    );
}
