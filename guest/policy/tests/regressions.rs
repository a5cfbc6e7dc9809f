//! Counterexamples the property tests (tests/properties.rs) found, kept so that CI keeps
//! checking them. Crashes of the cargo-fuzz targets are kept in fuzz/regressions/ and replayed by
//! host/tests/it/fuzz_checks.rs through the fuzz targets' own checks.

use serde_json::{Value, json};

use secrets_policy::{Decision, MountRequirement, Secret, Settings, annotations, decide};

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
