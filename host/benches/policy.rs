//! The policy alone: one review through the wasm component (a fresh instance + the call, as the
//! server does it) against the same library called natively, for three pod sizes; and Flyte 2's
//! Embedded manager in both modes, its store and namespaces held in memory (the host calls, not
//! the API server behind them; dry runs, so no mirror is written).
//!
//! `cargo bench -p secrets-webhook --bench policy`; the ratio wasm/native is what to read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use secrets_webhook::secrets::embedded::Embedded;
use secrets_webhook::secrets::store::Backend;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use secrets_webhook::global_secrets::GlobalSecrets;
use secrets_webhook::policy::Mutator;
use secrets_webhook::policy::{self, Active, Limits, Native, Review, Runtime, UserInfo};

fn review(name: &str) -> Review {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/bench")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    Review {
        uid: "bench".into(),
        namespace: "proj-development".into(),
        operation: "CREATE".into(),
        dry_run: false,
        object: value["request"]["object"].to_string(),
        creator: executor(),
    }
}

/// Flyte's executor, as the API server names it in a review.
fn executor() -> UserInfo {
    UserInfo {
        username: "system:serviceaccount:flyte:flytepropeller".into(),
        groups: vec!["system:serviceaccounts".into()],
    }
}

fn policies(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default()).unwrap();
    // Off the server: no deadline, the runtime's own memory cap.
    let call = policy::Call::unbounded();
    let wasm = Active::new(
        runtime.compile(policy::EMBEDDED).unwrap(),
        "null",
        GlobalSecrets::default(),
    )
    .unwrap();
    let native = Native::new("null", policy::Services::default()).unwrap();
    let implementations: [(&str, Arc<dyn Mutator>); 2] =
        [("wasm", Arc::new(wasm)), ("native", Arc::new(native))];
    let mut group = c.benchmark_group("mutate");
    for pod in ["small", "typical", "large"] {
        let review = review(pod);
        group.throughput(Throughput::Bytes(review.object.len() as u64));
        for (name, mutator) in &implementations {
            // Same answer from both, or the comparison means nothing.
            assert!(matches!(
                policy::block_on(mutator.mutate(&review, &call)).unwrap(),
                policy::Outcome::Patched(_)
            ));
            group.bench_with_input(BenchmarkId::new(*name, pod), &review, |b, review| {
                b.iter(|| policy::block_on(mutator.mutate(review, &call)).unwrap())
            });
        }
    }
    group.finish();
}

/// Source values by id, in memory.
struct Memory(BTreeMap<String, Vec<u8>>);

impl Backend for Memory {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
        Box::pin(std::future::ready(Ok(self.0.get(id).cloned())))
    }
}

/// An Embedded fixture's review (dry run) and its sources.
fn embedded_review(fixture: &str) -> (Review, BTreeMap<String, Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(fixture);
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let review = read("review.json");
    let sources: BTreeMap<String, String> = serde_json::from_value(read("sources.json")).unwrap();
    let review = Review {
        uid: "bench".into(),
        namespace: review["request"]["namespace"].as_str().unwrap().into(),
        operation: "CREATE".into(),
        dry_run: true,
        object: review["request"]["object"].to_string(),
        creator: executor(),
    };
    let sources = sources
        .into_iter()
        .map(|(id, value)| (id, value.into_bytes()))
        .collect();
    (review, sources)
}

fn embedded(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default()).unwrap();
    let call = policy::Call::unbounded();
    let mut group = c.benchmark_group("embedded");
    for (mode, fixture) in [
        ("Mirror", "98-embedded-mirror-any-and-file"),
        ("Plaintext", "84-embedded-plaintext-two-files"),
    ] {
        let (review, sources) = embedded_review(fixture);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": review.namespace, "labels": {"organization": "acme"}}
        }))
        .unwrap();
        let settings = serde_json::json!({
            "secretManagerTypes": ["Embedded"],
            "secretEnvVarPrefix": "_UNION_",
            "embeddedSecretManagerConfig": {"mode": mode},
        })
        .to_string();
        let authority = policy::authority(&settings).unwrap();
        let store = Embedded::in_memory(Arc::new(Memory(sources)), vec![namespace], authority);
        let wasm = Active::new(
            runtime.compile(policy::EMBEDDED).unwrap(),
            &settings,
            GlobalSecrets::default(),
        )
        .unwrap()
        .with_embedded(Some(store.clone()));
        let services = policy::Services {
            globals: Arc::default(),
            embedded: Some(store),
        };
        let native = Native::new(&settings, services).unwrap();
        let implementations: [(&str, Arc<dyn Mutator>); 2] =
            [("wasm", Arc::new(wasm)), ("native", Arc::new(native))];
        for (name, mutator) in &implementations {
            let outcome = policy::block_on(mutator.mutate(&review, &call)).unwrap();
            assert!(
                matches!(outcome, policy::Outcome::Patched(_)),
                "{outcome:?}"
            );
            group.bench_with_input(BenchmarkId::new(*name, mode), &review, |b, review| {
                b.iter(|| policy::block_on(mutator.mutate(review, &call)).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policies, embedded);
criterion_main!(benches);
