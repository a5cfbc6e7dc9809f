//! A bad or hostile policy never takes the webhook down, and policies swap without a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrets_webhook::config::Overrides;
use secrets_webhook::metrics::Metrics;
use secrets_webhook::policy::{self, Limits, Runtime};
use secrets_webhook::reload::{Reloaded, Reloader};
use serde_json::{Value, json};

use crate::common::{self, Options, TestServer, labelled_review, message, patch_of, wait_until};

fn test_policy(file: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("SECRETS_WEBHOOK_POLICY_DIR")).join(file)).unwrap()
}

fn config_file(dir: &tempfile::TempDir, yaml: &str) -> PathBuf {
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A server whose policy misbehaves `how`. Only a loop needs the deadline: the others are given
/// ample time, so on a loaded machine they still fail for their own reason, not the clock's.
async fn hostile_server(how: &str, extra: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, &format!("webhook:\n  hostile: {how}\n{extra}"));
    let deadline = if how == "loop" { 300 } else { 30_000 };
    let server = TestServer::start(Options {
        config: Some(config),
        wasm: test_policy("hostile.wasm"),
        policy_limits: Limits {
            deadline: Duration::from_millis(deadline),
            memory_bytes: 32 << 20,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_are_answered_within_the_deadline() {
    for (how, reason) in [
        ("loop", "exceeded its 300ms deadline"),
        ("memory", "ran out of memory (limit "),
        ("trap", "trapped"),
        // Held to what the memory budget charged the review, the guest cannot even build it.
        ("huge", "ran out of memory (limit "),
        ("many-injections", "ran out of memory (limit "),
        ("bad-patch", "invalid JSON Patch"),
        // The host writes mirrors only of values it handed the policy in that call.
        ("mirror-unasked", "asks for a mirror of \"u__org__acme"),
        // ... and copies only image pull Secrets it told the policy exist.
        (
            "pull-unasked",
            "asks to copy image pull Secret \"img-pull-0123456789abcdef\"",
        ),
    ] {
        let (server, _dir) = hostile_server(how, "").await;
        let digest = server.active.digest()[..12].to_owned();
        let mut client = server.client().await;
        let started = Instant::now();
        let (status, response) = client.post("/mutate", labelled_review()).await;
        let elapsed = started.elapsed();
        assert_eq!(status, 200, "{how}: {response}");
        let answer = &response["response"];
        assert_eq!(answer["allowed"], false, "{how}");
        assert_eq!(answer["status"]["code"], 500, "{how}");
        let message = answer["status"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{how}: {message}");
        if how != "bad-patch" {
            assert!(
                message.contains(&digest),
                "{how}: the message names the policy: {message}"
            );
        }
        if how == "loop" {
            assert!(elapsed < Duration::from_secs(5), "{how} took {elapsed:?}");
        }
        // The next request is served too: nothing leaked from the failed instance.
        let (status, _) = client.post("/mutate", labelled_review()).await;
        assert_eq!(status, 200, "{how}: the server keeps serving");
        server.stop().await;
    }
}

/// With memory enough to build it (off the server, no budget), an answer over the output limit
/// is refused all the same: a string's bytes and every string's header count.
#[test]
fn answers_over_the_output_limit_are_refused() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let hostile = runtime.compile(&test_policy("hostile.wasm")).unwrap();
    let review = policy::Review {
        uid: "big".to_owned(),
        namespace: "default".to_owned(),
        operation: "CREATE".to_owned(),
        dry_run: true,
        object: common::labelled_pod().to_string(),
        creator: policy::UserInfo {
            username: "alice".to_owned(),
            groups: Vec::new(),
        },
    };
    for how in ["huge", "many-injections"] {
        let settings = format!(r#"{{"hostile":"{how}"}}"#);
        let call = policy::Call::unbounded();
        let failure = policy::block_on(hostile.mutate(
            &settings,
            &review,
            policy::Services::default(),
            &call,
        ))
        .unwrap_err();
        assert!(
            failure
                .to_string()
                .contains("more than the 8388608 allowed"),
            "{how}: {failure}"
        );
    }
}

/// Every review gets a fresh guest, however instances are pooled and reset: a policy that leaves a
/// marker in its static data and on its heap never finds an earlier review's marker anywhere in its
/// linear memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_crosses_from_one_review_to_the_next() {
    let mut review = common::review_with(common::labelled_pod());
    // Not a palindrome: the marker is the namespace reversed.
    review["request"]["namespace"] = json!("state-must-not-cross");
    let review = serde_json::to_vec(&review).unwrap();

    // The search finds a marker that is there: the one a review left itself.
    let (server, _dir) = hostile_server("remember-and-look", "").await;
    let (_, response) = server.client().await.post("/mutate", review.clone()).await;
    assert_eq!(response["response"]["status"]["code"], 409, "{response}");
    server.stop().await;

    // Across reviews, sequential (one pooled slot used again and again) and concurrent.
    let (server, _dir) = hostile_server("remember", "").await;
    let mut sequential = server.client().await;
    for round in 0..20 {
        let (status, response) = sequential.post("/mutate", review.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(
            response["response"]["allowed"], true,
            "round {round}: {response}"
        );
    }
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = server.client_h2().await;
        let review = review.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..10 {
                let (_, response) = client.post("/mutate", review.clone()).await;
                assert_eq!(response["response"]["allowed"], true, "{response}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    server.stop().await;
}

/// Waits until `/metrics` says `in_flight` reviews are being handled.
async fn wait_in_flight(server: &TestServer, in_flight: u32) {
    let line = format!("secrets_webhook_reviews_in_flight {in_flight}");
    wait_until(&line, || server.metrics.encode().lines().any(|l| l == line)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_ends_its_guest_call_and_frees_its_slot() {
    // Room for one review in the memory budget, and a policy that loops to its 1.5 s deadline
    // on every pod.
    let dir = tempfile::tempdir().unwrap();
    let mut limits = secrets_webhook::server::Limits::default();
    let one = secrets_webhook::server::budget::cost(labelled_review().len() as u64, 64 << 20);
    limits.plan.reviews = one.bytes + one.bytes / 2;
    limits.plan.large_reviews = 0;
    let server = TestServer::start(Options {
        config: Some(config_file(&dir, "webhook:\n  hostile: loop\n")),
        wasm: test_policy("hostile.wasm"),
        limits,
        policy_limits: Limits {
            deadline: Duration::from_millis(1500),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let mut quitter = server.client_h2().await;
    let first = tokio::spawn(async move { quitter.post("/mutate", labelled_review()).await });
    wait_in_flight(&server, 1).await;
    let sent_first = Instant::now();
    first.abort();
    // The stream is reset and its request handler dropped, and with it the guest call: the one
    // slot is free for the next review, which runs its own call to its deadline.
    wait_in_flight(&server, 0).await;
    let started = Instant::now();
    let (status, response) = server
        .client()
        .await
        .post("/mutate", labelled_review())
        .await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        message(&response).contains("exceeded its 1.5s deadline"),
        "{response}"
    );
    // Had the abandoned call run on to its deadline, this one would end 3 s after the first was
    // sent at the earliest.
    let answered = (started - sent_first) + waited;
    assert!(
        answered < Duration::from_millis(2700),
        "the second review waited for the abandoned one: answered {answered:?} after the first"
    );
    assert!(
        waited >= Duration::from_millis(1400),
        "answered in {waited:?}"
    );
    server.stop().await;
}

/// A guest that loops to its deadline yields at every epoch tick: on a runtime with one thread,
/// the server still answers other requests meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_guest_does_not_hold_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Options {
        config: Some(config_file(
            &dir,
            "webhook:
  hostile: loop
",
        )),
        wasm: test_policy("hostile.wasm"),
        policy_limits: Limits {
            deadline: Duration::from_millis(2000),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let mut looping = server.client().await;
    let stuck = tokio::spawn(async move { looping.post("/mutate", labelled_review()).await });
    wait_in_flight(&server, 1).await;
    let started = Instant::now();
    let (status, _) = server
        .client()
        .await
        .request("GET", "/healthz", Vec::new())
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(1000),
        "/healthz waited {took:?} for the looping guest"
    );
    let (_, response) = stuck.await.unwrap();
    assert!(
        message(&response).contains("exceeded its 2s deadline"),
        "{response}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_allow_admits_when_the_policy_fails() {
    let (server, _dir) = hostile_server("loop", "  onError: allow\n").await;
    let (_, response) = server
        .client()
        .await
        .post("/mutate", labelled_review())
        .await;
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"]["patch"].is_null());
    let warning = response["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("secrets were not injected: policy "),
        "{warning}"
    );
    server.stop().await;
}

#[test]
fn components_of_other_worlds_are_refused_clearly() {
    let runtime = Runtime::new(Limits::default()).unwrap();
    // An empty component: valid, but it exports nothing of our world.
    let empty_component = b"\0asm\x0d\x00\x01\x00";
    let err = format!("{:#}", runtime.compile(empty_component).err().unwrap());
    assert!(
        err.contains(&format!(
            "does not implement world {}",
            secrets_webhook::policy::WORLD
        )),
        "{err}"
    );
    // A policy of the previous world: named, with what to do.
    let old = std::fs::read(common::workspace().join("host/tests/data/world-0.2.0.wasm")).unwrap();
    let err = format!("{:#}", runtime.compile(&old).err().unwrap());
    assert!(
        err.contains("was built for secrets-webhook:policy/mutation@0.2.0")
            && err.contains("rebuild the policy"),
        "{err}"
    );
    // A core module (what Kubewarden runs) is not a component.
    let core_module = b"\0asm\x01\x00\x00\x00";
    let err = format!("{:#}", runtime.compile(core_module).err().unwrap());
    assert!(err.contains("is not a valid wasm component"), "{err}");
    let err = format!("{:#}", runtime.compile(b"hello").err().unwrap());
    assert!(err.contains("is not a valid wasm component"), "{err}");
}

#[test]
fn compiled_policies_are_cached_by_digest() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Limits::default())
        .unwrap()
        .with_cache(cache.path().to_owned());
    let first = runtime.compile(policy::EMBEDDED).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(first.digest())
    );
    // A second runtime (a restart) loads the artifact instead of compiling.
    let again = Runtime::new(Limits::default())
        .unwrap()
        .with_cache(cache.path().to_owned());
    let second = again.compile(policy::EMBEDDED).unwrap();
    assert_eq!(first.digest(), second.digest());
    // A corrupt artifact is replaced, not trusted.
    std::fs::write(&files[0], b"garbage").unwrap();
    let third = again.compile(policy::EMBEDDED).unwrap();
    policy::admit(&third, "null").unwrap();
    assert_ne!(std::fs::read(&files[0]).unwrap(), b"garbage");
}

fn reloader(server: &TestServer, policy_file: PathBuf, metrics: Arc<Metrics>) -> Arc<Reloader> {
    let overrides = Overrides {
        global_secrets_dir: Some(common::fixtures().join("global-secrets")),
        ..Overrides::default()
    };
    let started = secrets_webhook::config::Config::load(None, &overrides).unwrap();
    Arc::new(Reloader::new(
        Runtime::new(Limits::default()).unwrap(),
        server.active.clone(),
        Some(policy_file),
        None,
        overrides,
        started,
        metrics,
    ))
}

/// Replaces `path` the way a ConfigMap volume does: a new file renamed over the old.
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_never_takes_over() {
    let server = TestServer::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mutation.wasm");
    std::fs::write(&file, policy::EMBEDDED).unwrap();
    let metrics = Arc::new(Metrics::default());
    let reloader = reloader(&server, file.clone(), metrics);
    let before = server.active.digest();
    assert_eq!(reloader.reload().unwrap(), Reloaded::Unchanged);

    let annotating = test_policy("annotating.wasm");
    for (what, bytes) in [
        ("garbage", b"definitely not wasm".to_vec()),
        ("truncated", annotating[..annotating.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("wrong world", b"\0asm\x0d\x00\x01\x00".to_vec()),
    ] {
        replace_file(&file, &bytes);
        let err = reloader.reload().expect_err(what);
        assert!(!format!("{err:#}").is_empty());
        assert_eq!(server.active.digest(), before, "{what} must not take over");
        // Reported once, not on every poll.
        assert_eq!(reloader.reload().unwrap(), Reloaded::Unchanged, "{what}");
    }
    let (status, response) = server
        .client()
        .await
        .post("/mutate", labelled_review())
        .await;
    assert_eq!(
        (status, &response["response"]["allowed"]),
        (200, &json!(true))
    );

    replace_file(&file, &annotating);
    assert!(matches!(
        reloader.reload().unwrap(),
        Reloaded::Swapped { .. }
    ));
    assert_ne!(server.active.digest(), before);
    server.stop().await;
}

fn is_annotating(response: &Value) -> bool {
    let patch = patch_of(response).expect("every response carries a patch");
    serde_json::to_string(&patch)
        .unwrap()
        .contains("secrets-webhook.io~1injected")
        || serde_json::to_string(&patch)
            .unwrap()
            .contains("secrets-webhook.io/injected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_loses_no_request() {
    let server = Arc::new(TestServer::start(Options::default()).await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mutation.wasm");
    std::fs::write(&file, policy::EMBEDDED).unwrap();
    let metrics = Arc::new(Metrics::default());
    let reloader = reloader(&server, file.clone(), metrics.clone());
    tokio::spawn(reloader.clone().run(Duration::from_millis(50)));

    let body = labelled_review();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for index in 0..4 {
        let (server, body, stop) = (server.clone(), body.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut client = if index % 2 == 0 {
                server.client().await
            } else {
                server.client_h2().await
            };
            let mut seen = Vec::new();
            // Bounded: at most 2,000 requests or until told to stop.
            for _ in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (status, response) = client.post("/mutate", body.clone()).await;
                assert_eq!(status, 200, "{response}");
                assert_eq!(response["response"]["allowed"], true, "{response}");
                seen.push(is_annotating(&response));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.active.digest();
    replace_file(&file, &test_policy("annotating.wasm"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.active.digest() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(
        server.active.digest(),
        before,
        "the watcher swapped the policy"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut total = 0;
    for client in clients {
        let seen = client.await.unwrap();
        total += seen.len();
        // Each response comes from one policy, and once a client sees the new one it never sees
        // the old one again.
        let first_new = seen.iter().position(|&new| new).unwrap_or(seen.len());
        assert!(
            seen[first_new..].iter().all(|&new| new),
            "a response from the old policy after the new one"
        );
        assert!(first_new > 0, "the old policy answered before the swap");
    }
    assert!(total > 8, "only {total} requests were made");
    assert!(
        metrics
            .encode()
            .contains("secrets_webhook_policy_reloads_total{result=\"swapped\"} 1")
    );
}

/// The host reads the Embedded store only for scopes the review's pod may read, whatever the
/// policy asks: a policy that reads another project's secret (to hand its value out, as a
/// Plaintext policy would) gets a refusal naming the rule, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reads_no_scope_its_pod_may_not() {
    use futures::future::BoxFuture;
    use k8s_openapi::api::core::v1::Namespace;
    use secrets_webhook::secrets::embedded::Embedded;
    use secrets_webhook::secrets::store::Backend;

    struct Values;
    impl Backend for Values {
        fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
            let payroll = "u__org__acme__domain__development__project__payroll__key__db";
            Box::pin(async move { Ok((id == payroll).then(|| b"payroll's password".to_vec())) })
        }
    }
    let namespace = |name: &str| -> Namespace {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"organization": "acme"}}}),
        )
        .unwrap()
    };
    // The hostile policy reads its behaviour from the settings text as the host serialises it.
    let settings = r#"{"hostile":"other-scope","secretManagerTypes":["Embedded"]}"#;
    let namespaces = vec![
        namespace("flytesnacks-development"),
        namespace("payroll-development"),
    ];
    let embedded = Embedded::in_memory(
        Arc::new(Values),
        namespaces,
        policy::authority(settings).unwrap(),
    );
    let runtime = Runtime::new(Limits::default()).unwrap();
    let hostile = runtime.compile(&test_policy("hostile.wasm")).unwrap();
    let services = policy::Services {
        globals: Arc::default(),
        embedded: Some(embedded),
    };
    let review = |namespace: &str| policy::Review {
        uid: format!("in-{namespace}"),
        namespace: namespace.to_owned(),
        operation: "CREATE".to_owned(),
        dry_run: true,
        object: common::labelled_pod().to_string(),
        creator: policy::UserInfo {
            username: "alice".to_owned(),
            groups: vec!["system:authenticated".to_owned()],
        },
    };
    // Payroll's own namespace may read it: the policy does read it there.
    let own = hostile
        .mutate(
            settings,
            &review("payroll-development"),
            services.clone(),
            &policy::Call::unbounded(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&own, policy::Outcome::Unchanged(warnings)
            if warnings.iter().any(|w| w.contains("payroll's password"))),
        "{own:?}"
    );
    // Another project's namespace may not, and its answer holds no value.
    let other = hostile
        .mutate(
            settings,
            &review("flytesnacks-development"),
            services,
            &policy::Call::unbounded(),
        )
        .await
        .unwrap();
    let policy::Outcome::Denied(denied) = &other else {
        panic!("{other:?}");
    };
    assert!(
        denied.message.contains("not read for this pod")
            && denied
                .message
                .contains("namespace \"flytesnacks-development\" grants no scope"),
        "{}",
        denied.message
    );
    assert!(!format!("{other:?}").contains("password"));
}

/// A reload that changes a key only a restart applies (onError, maxRequestBytes,
/// namespaceSelector…) says so, once, in a warning and a metric, while the settings the policy
/// reads are swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_which_keys_wait_for_a_restart() {
    let server = TestServer::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, "webhook:\n  onError: deny\n");
    let overrides = Overrides::default();
    let metrics = Arc::new(Metrics::default());
    let started = secrets_webhook::config::Config::load(Some(&config), &overrides).unwrap();
    let reloader = Reloader::new(
        Runtime::new(Limits::default()).unwrap(),
        server.active.clone(),
        None,
        Some(config.clone()),
        overrides.clone(),
        started,
        metrics.clone(),
    );
    std::fs::write(
        &config,
        "webhook:\n  onError: allow\n  maxRequestBytes: 1024\n  secretManagerType: Vault\n",
    )
    .unwrap();
    assert!(matches!(
        reloader.reload().unwrap(),
        Reloaded::Swapped { .. }
    ));
    assert!(matches!(reloader.reload().unwrap(), Reloaded::Unchanged));
    let text = metrics.encode();
    for key in ["onError", "maxRequestBytes"] {
        let line = format!("secrets_webhook_reload_unapplied_total{{key=\"{key}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(!text.contains("key=\"namespaceSelector\""), "{text}");
    server.stop().await;
}
