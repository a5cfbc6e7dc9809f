//! The policy alone: one review through the wasm component (a fresh instance + the call, as the
//! server does it) against the same library called natively, for three pod sizes.
//!
//! `cargo bench -p secrets-webhook --bench policy`; the ratio wasm/native is what to read.

use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use secrets_webhook::admission::Mutator;
use secrets_webhook::global_secrets::GlobalSecrets;
use secrets_webhook::policy::{self, Active, Limits, Native, Review, Runtime};

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
    }
}

fn policies(c: &mut Criterion) {
    let runtime = Runtime::new(Limits::default()).unwrap();
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
                policy::block_on(mutator.mutate(&review)).unwrap(),
                policy::Outcome::Patched(_)
            ));
            group.bench_with_input(BenchmarkId::new(*name, pod), &review, |b, review| {
                b.iter(|| policy::block_on(mutator.mutate(review)).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policies);
criterion_main!(benches);
