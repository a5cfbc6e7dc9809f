//! Inputs that once broke the policy, kept so that CI keeps checking them:
//!
//! * every file under `fuzz/regressions/<target>/` (crashes of the cargo-fuzz targets, see
//!   fuzz/README.md) is replayed through the same checks as the fuzz target makes, as far as they
//!   concern this library (the host's part of `admission_review` is replayed by
//!   `cargo fuzz run admission_review fuzz/regressions/admission_review -- -runs=0`);
//! * the minimal counterexamples the property tests (tests/properties.rs) found.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use secrets_policy::annotations::{ANNOTATION_PREFIX, base32_encode, decode_value, encode_value};
use secrets_policy::{
    Decision, MountRequirement, Outcome, Secret, Settings, annotations, decide, mutate_json,
    prototext,
};

// ---------------------------------------------------------------------------------------------
// Replaying fuzz/regressions. This mirrors fuzz/src/lib.rs and fuzz/fuzz_targets/*.rs, which
// cannot be used from here (the fuzz crate depends on the host); keep the two in step.
// ---------------------------------------------------------------------------------------------

const FUZZ_SETTINGS: &[&str] = &[
    "",
    r#"{"secretManagerType": "Global"}"#,
    r#"{"secretManagerType": "K8s", "secretEnvVarPrefix": "_UNION_"}"#,
    r#"{"secretManagerType": "Vault", "vaultSecretManager": {"role": "flyte-tasks", "kvVersion": "1",
        "annotations": {"vault.hashicorp.com/agent-pre-populate-only": "false"}}}"#,
    r#"{"secretManagerType": "AWS"}"#,
    r#"{"secretManagerType": "GCP"}"#,
    r#"{"secretManagerType": "Azure"}"#,
    r#"{"secretManagerTypes": ["Vault", "K8s"]}"#,
    r#"{"secretManagerTypes": ["AWS", "GCP"]}"#,
    r#"{"secretManagerTypes": ["AWS", "K8s"]}"#,
    r#"{"secretManagerTypes": ["Azure", "GCP", "AWS", "Vault", "K8s"]}"#,
];

fn fuzz_globals(group: &str, key: &str) -> Option<String> {
    match (group, key) {
        ("db", "password") => Some("hunter2-global".to_owned()),
        ("api", "token") => Some("tok-123".to_owned()),
        ("MyGroup", "k") => Some("v\n\"é".to_owned()),
        ("projects/p1/secrets/tok", "latest") => Some(String::new()),
        _ => None,
    }
}

fn fuzz_settings(data: &[u8], pod: Option<&Value>) -> (String, Settings) {
    let own = pod
        .and_then(|pod| pod.pointer("/metadata/annotations/fuzz~1settings"))
        .and_then(Value::as_str);
    if let Some(json) = own
        && let Ok(settings) = Settings::from_json(json)
    {
        return (json.to_owned(), settings);
    }
    let hash = data.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let index = hash as usize % FUZZ_SETTINGS.len();
    let settings = Settings::from_json(FUZZ_SETTINGS[index]).unwrap();
    (format!("#{index}"), settings)
}

fn expand_plain_annotations(pod: &mut Value) {
    let Some(annotations) = pod
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let plain: Vec<(String, String)> = annotations
        .iter()
        .filter_map(|(key, value)| {
            let suffix = key.strip_prefix("fuzz/plain-s")?;
            Some((suffix.to_owned(), value.as_str()?.to_owned()))
        })
        .collect();
    for (suffix, text) in plain {
        annotations.remove(&format!("fuzz/plain-s{suffix}"));
        annotations.insert(
            format!("{ANNOTATION_PREFIX}{suffix}"),
            Value::String(base32_encode(text.as_bytes())),
        );
    }
}

/// A secret encodes to a value that decodes to it, unless the value would pass the size limit
/// (the printed text escapes each non-ASCII byte as four, so a descriptor that decodes may not
/// encode).
fn check_encodes(secret: &Secret) {
    match encode_value(secret) {
        Ok(encoded) => assert_eq!(decode_value(&encoded).as_ref(), Ok(secret), "{encoded}"),
        Err(err) => assert!(err.contains("cannot exceed"), "{err}"),
    }
}

/// fuzz_targets/decode_annotation.rs
fn replay_decode_annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secret) = decode_value(text) {
        check_encodes(&secret);
    }
    if let Ok(secret) = prototext::parse(text) {
        let printed = prototext::print(&secret);
        assert_eq!(
            prototext::parse(&printed).as_ref(),
            Ok(&secret),
            "{printed:?}"
        );
        check_encodes(&secret);
    }
}

/// fuzz_targets/mutate.rs (with fuzz/src/lib.rs's check_decision and check_patch)
fn replay_mutate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        let (_, settings) = fuzz_settings(data, None);
        let _ = mutate_json(&settings, &String::from_utf8_lossy(data), &fuzz_globals);
        return;
    };
    let Ok(mut pod) = serde_json::from_str::<Value>(text) else {
        let (_, settings) = fuzz_settings(data, None);
        let outcome = mutate_json(&settings, text, &fuzz_globals);
        assert!(matches!(outcome, Outcome::Denied(_)), "{outcome:?}");
        return;
    };
    let (label, settings) = fuzz_settings(data, Some(&pod));
    expand_plain_annotations(&mut pod);
    check_decision(&settings, &label, &pod);
}

/// The policy's part of fuzz_targets/admission_review.rs: the review's object, under the same
/// settings.
fn replay_admission_review(data: &[u8]) {
    // Lossily, as the fuzz target does: the host skips unknown fields without checking UTF-8.
    let Ok(review) = serde_json::from_str::<Value>(&String::from_utf8_lossy(data)) else {
        return;
    };
    let object = &review["request"]["object"];
    if object.is_null() {
        return;
    }
    let (label, settings) = fuzz_settings(data, Some(object));
    check_decision(&settings, &label, object);
}

fn check_decision(settings: &Settings, label: &str, pod: &Value) {
    let pod_json = pod.to_string();
    let decision = decide(settings, pod, &fuzz_globals);
    assert_eq!(decision, decide(settings, pod, &fuzz_globals));
    let outcome = mutate_json(settings, &pod_json, &fuzz_globals);
    assert_eq!(outcome, mutate_json(settings, &pod_json, &fuzz_globals));
    match (&decision, &outcome) {
        (Decision::Unchanged, Outcome::Unchanged) => {}
        (Decision::Denied(a), Outcome::Denied(b)) => assert_eq!(a, b),
        (Decision::Mutated(mutated), Outcome::Patched(patched)) => {
            let diff = secrets_policy::mutation::diff(pod, mutated);
            for patch in [&patched.patch, &diff] {
                for op in &patch.0 {
                    assert!(
                        matches!(op, json_patch::PatchOperation::Add(_)),
                        "settings {label}: the patch does more than add: {op}"
                    );
                }
                let mut patched = pod.clone();
                json_patch::patch(&mut patched, &patch.0).unwrap_or_else(|err| {
                    panic!("settings {label}: the patch does not apply: {err}")
                });
                assert_eq!(&patched, mutated, "settings {label}");
            }
            let again = decide(settings, mutated, &fuzz_globals);
            assert!(
                again == Decision::Unchanged,
                "settings {label}: not idempotent; the second run gave {again:?}"
            );
        }
        _ => panic!("decide and mutate_json disagree: {decision:?} vs {outcome:?}"),
    }
}

fn regression_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    // A target without crashes has no folder (git keeps no empty ones).
    let Ok(entries) = std::fs::read_dir(&dir) else {
        assert!(
            dir.parent().is_some_and(Path::is_dir),
            "{} is missing",
            dir.display()
        );
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for file in regression_files(target) {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails again", file.display());
    }
}

#[test]
fn fuzz_regressions_decode_annotation() {
    replay("decode_annotation", replay_decode_annotation);
}

#[test]
fn fuzz_regressions_mutate() {
    replay("mutate", replay_mutate);
}

#[test]
fn fuzz_regressions_admission_review() {
    replay("admission_review", replay_admission_review);
}

// ---------------------------------------------------------------------------------------------
// Counterexamples of the property tests
// ---------------------------------------------------------------------------------------------

fn pod_with(secrets: &[Secret], spec: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "task-n0-0", "namespace": "flytesnacks-development"},
        "spec": spec,
    });
    annotations::annotate_object(&mut pod, secrets).unwrap();
    pod
}

fn mutated(settings: &str, pod: &Value) -> Value {
    let settings = Settings::from_json(settings).unwrap();
    match decide(&settings, pod, &()) {
        Decision::Mutated(pod) => pod,
        other => panic!("expected a mutation, got {other:?}"),
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn duplicates<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .copied()
        .filter(|name| !seen.insert(*name))
        .collect()
}

/// Property 5 (additions_do_not_clash). Pullers are named `<prefix>-<number of init containers>`
/// without checking that the name is free; a container already called that (a pod copied from a
/// mutated one after an init container was dropped, or a task container named so) gets a
/// namesake, and the API server rejects the pod ("Duplicate value").
#[test]

fn puller_name_clashes_with_an_existing_container() {
    let secret = Secret {
        group: "arn:aws:secretsmanager:us-east-1:123:secret:".into(),
        key: "password".into(),
        ..Secret::default()
    };
    // The proptest's minimal counterexample, and a more likely way to get there.
    for spec in [
        json!({"containers": [{"name": "aws-pull-secret-0", "image": "example/task:1"}]}),
        json!({
            "initContainers": [{"name": "aws-pull-secret-1", "image": "example/old-puller:1"}],
            "containers": [{"name": "main", "image": "example/task:1"}],
        }),
    ] {
        let pod = mutated(
            r#"{"secretManagerType": "AWS"}"#,
            &pod_with(std::slice::from_ref(&secret), spec),
        );
        let all = [
            names(&pod["spec"]["initContainers"]),
            names(&pod["spec"]["containers"]),
        ]
        .concat();
        assert_eq!(duplicates(&all), Vec::<&str>::new(), "containers {all:?}");
    }
}

/// Property 5 (additions_do_not_clash). A secret whose env_var is one of the names the webhook sets
/// itself (`SECRET_ARN`, `SECRET_FILENAME`, `FLYTE_SECRETS_DEFAULT_DIR`, …) used to put that name in
/// the puller twice; Kubernetes lets the last one win, so with `SECRET_ARN` the AWS puller asked for
/// the ARN `/etc/flyte/secrets/db/k`. Such an env_var is now refused, naming the reason.
#[test]
fn a_reserved_env_var_is_refused_not_duplicated() {
    for env_var in [
        "FLYTE_SECRETS_DEFAULT_DIR",
        "SECRET_ARN",
        "SECRET_FILENAME",
        "FLYTE_SECRETS_FILE_PREFIX",
        "FLYTE_SECRETS_ENV_PREFIX",
    ] {
        let secret = Secret {
            group: "db".into(),
            key: "k".into(),
            mount_requirement: MountRequirement::Any,
            env_var: env_var.into(),
            ..Secret::default()
        };
        let pod = pod_with(
            &[secret],
            json!({"containers": [{"name": "main", "image": "example/task:1"}]}),
        );
        for settings in [
            r#"{"secretManagerType": "AWS"}"#,
            r#"{"secretManagerType": "K8s"}"#,
        ] {
            let settings = Settings::from_json(settings).unwrap();
            match secrets_policy::decide(&settings, &pod, &()) {
                secrets_policy::Decision::Denied(denial) => {
                    assert!(
                        denial.message.contains("is reserved"),
                        "{env_var}: {}",
                        denial.message
                    )
                }
                other => panic!("{env_var}: expected a denial, got {other:?}"),
            }
        }
    }
}
