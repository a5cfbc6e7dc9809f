//! Property tests of the whole policy on arbitrary-but-plausible pods and secret lists.
//!
//! For every pod, secret list (encoded onto the pod with the opt-in label exactly as Flyte does)
//! and settings:
//!
//! 1. for a `Mutated` decision, both `mutate_json`'s patch (recorded while editing) and
//!    `mutation::diff(original, mutated)` apply to the original pod and give the mutated pod, and
//!    every operation of them is an `add`;
//! 2. `decide` on the mutated pod gives `Unchanged` (the API server may reinvoke the webhook);
//! 3. nothing of the original pod is lost or changed: every field keeps its value, and the only
//!    arrays that grow (containers' `env` and `volumeMounts`, `spec.volumes`,
//!    `spec.initContainers`, a secret volume's `items`) grow at the end;
//! 4. the same input twice gives byte-identical outputs;
//! 5. what the webhook adds does not clash with what the pod has: no second container, volume,
//!    env var or mount path of a taken name, and every added mount names a volume of the pod.
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES=10000 cargo test
//! -p secrets-policy --test properties` for a longer run.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};

use secrets_policy::annotations::{POD_LABEL, encode_requests};
use secrets_policy::{
    Decision, ManagerType, MountRequirement, Outcome, Secret, Settings, decide, mutate_json,
};

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// The settings every case runs under: each manager alone, ordered lists, another env prefix.
const SETTINGS: &[&str] = &[
    "",
    r#"{"secretManagerType": "Global"}"#,
    r#"{"secretManagerType": "K8s", "secretEnvVarPrefix": "_UNION_"}"#,
    r#"{"secretManagerType": "Vault"}"#,
    r#"{"secretManagerType": "Vault", "vaultSecretManager": {"role": "flyte-tasks", "kvVersion": "1",
        "annotations": {"vault.hashicorp.com/auth-config-type": "gce",
                        "vault.hashicorp.com/agent-pre-populate-only": "false"}}}"#,
    r#"{"secretManagerType": "AWS"}"#,
    r#"{"secretManagerType": "AWS", "awsSecretManager": {"sidecarImage": "example/aws:1",
        "resources": {"limits": {"cpu": "1"}}}}"#,
    r#"{"secretManagerType": "GCP"}"#,
    r#"{"secretManagerType": "Azure"}"#,
    r#"{"secretManagerTypes": ["Vault", "K8s"]}"#,
    r#"{"secretManagerTypes": ["AWS", "GCP"]}"#,
    r#"{"secretManagerTypes": ["AWS", "K8s"]}"#,
    r#"{"secretManagerTypes": ["Azure", "GCP", "AWS", "Vault", "K8s"], "secretManagerType": "Global"}"#,
];

/// The webhook's own secrets: some valid env names, one that cannot be an env var name.
fn globals(group: &str, key: &str) -> Option<String> {
    match (group, key) {
        ("db", "password") => Some("hunter2-global".to_owned()),
        ("api", "token") => Some("tok-123".to_owned()),
        ("MyGroup", "k") => Some("v\n\"é".to_owned()),
        ("tls.certs", "ca.pem") => Some(String::new()),
        ("projects/p1/secrets/tok", "latest") => Some("not an env name".to_owned()),
        _ => None,
    }
}

/// Short strings over an alphabet rich in what the managers treat specially.
fn odd_string() -> impl Strategy<Value = String> + Clone {
    let chars = select(vec![
        'a', 'b', 'Z', '0', '9', '-', '_', '.', '/', ':', ' ', '"', '\'', '\\', '\n', '$', ';',
        'é', 'İ', 'ß', '\u{0}', '😀',
    ]);
    prop::collection::vec(chars, 0..8).prop_map(String::from_iter)
}

fn pick(pool: &[&'static str]) -> impl Strategy<Value = String> + Clone + use<> {
    select(pool.to_vec()).prop_map(str::to_owned)
}

/// Mostly names that collide with each other and with what the webhook injects, sometimes noise.
fn from_pool_or_odd(pool: &[&'static str]) -> impl Strategy<Value = String> + Clone + use<> {
    prop_oneof![6 => pick(pool), 1 => odd_string()]
}

/// ENV_VAR less often: only Global and K8s take it.
fn mount_requirement() -> impl Strategy<Value = MountRequirement> {
    prop_oneof![
        3 => Just(MountRequirement::Any),
        2 => Just(MountRequirement::File),
        1 => Just(MountRequirement::EnvVar),
    ]
}

fn secret_from(
    group: impl Strategy<Value = String>,
    group_version: impl Strategy<Value = String>,
    key: impl Strategy<Value = String>,
    env_var: impl Strategy<Value = String>,
) -> impl Strategy<Value = Secret> {
    (group, group_version, key, mount_requirement(), env_var).prop_map(
        |(group, group_version, key, mount_requirement, env_var)| Secret {
            group,
            group_version,
            key,
            mount_requirement,
            env_var,
        },
    )
}

/// Requests `manager` accepts (most of the time: the pools also hold a few it
/// refuses, e.g. a FILE request for a global secret).
fn served_by(manager: ManagerType) -> BoxedStrategy<Secret> {
    let env_var = || pick(&["", "", "", "PGPASSWORD", "API_TOKEN", "CA_FILE"]);
    let file_mount = || {
        prop_oneof![
            3 => Just(MountRequirement::Any),
            2 => Just(MountRequirement::File),
        ]
    };
    let with_mount = |secret: BoxedStrategy<Secret>, mount: BoxedStrategy<MountRequirement>| {
        (secret, mount)
            .prop_map(|(secret, mount_requirement)| Secret {
                mount_requirement,
                ..secret
            })
            .boxed()
    };
    match manager {
        ManagerType::Global => with_mount(
            secret_from(
                pick(&["db", "api", "MyGroup", "tls.certs"]),
                pick(&["", "", "v1"]),
                Just(String::new()),
                env_var(),
            )
            .prop_map(|secret| Secret {
                key: match secret.group.as_str() {
                    "db" => "password",
                    "api" => "token",
                    "MyGroup" => "k",
                    _ => "ca.pem",
                }
                .to_owned(),
                ..secret
            })
            .boxed(),
            prop_oneof![
                3 => Just(MountRequirement::Any),
                3 => Just(MountRequirement::EnvVar),
                1 => Just(MountRequirement::File),
            ]
            .boxed(),
        ),
        ManagerType::K8s => secret_from(
            pick(&["db", "minio", "postgres", "tls.certs", "gcp-sa", "api"]),
            pick(&["", "", "", "v2", "snowflake"]),
            pick(&[
                "password",
                "username",
                "ca.pem",
                "credentials.json",
                "k",
                "Private_Key",
            ]),
            env_var(),
        )
        .boxed(),
        ManagerType::Vault => with_mount(
            secret_from(
                pick(&["secret/data/ml", "kv/team-a/snowflake", "db", "MyGroup"]),
                pick(&["", "kv1", "kv2", "db", "v2"]),
                pick(&["password", "Private_Key", "HuggingFace/Token", "k"]),
                env_var(),
            )
            .boxed(),
            file_mount().boxed(),
        ),
        ManagerType::Aws => with_mount(
            secret_from(
                pick(&[
                    "arn:aws:secretsmanager:us-east-1:123:secret:",
                    "arn:aws:secretsmanager:us-east-1:123:secret:db",
                    "db",
                ]),
                pick(&["", "", "v1"]),
                pick(&["password", "Token-AbC", "k"]),
                env_var(),
            )
            .boxed(),
            file_mount().boxed(),
        ),
        ManagerType::Gcp => with_mount(
            secret_from(
                pick(&["TestSecret", "projects/p1/secrets/tok", "slack_bot_token"]),
                pick(&["2", "latest", "7"]),
                pick(&["", "", "k"]),
                env_var(),
            )
            .boxed(),
            file_mount().boxed(),
        ),
        ManagerType::Azure => with_mount(
            secret_from(
                pick(&[
                    "https://kv1.vault.azure.net/secrets/db-password",
                    "https://kv1.vault.azure.net/secrets/Api-Key/",
                ]),
                pick(&["", "", "abc123", "7"]),
                pick(&["", "", "k"]),
                env_var(),
            )
            .boxed(),
            file_mount().boxed(),
        ),
        // Needs a secret store, which these properties do not give (tests/embedded.rs does).
        ManagerType::Embedded => secret_from(
            pick(&["", ""]),
            pick(&[""]),
            pick(&["db", "api_key"]),
            env_var(),
        )
        .boxed(),
    }
}

/// Anything, from pools of odd values and noise.
fn wild_secret() -> impl Strategy<Value = Secret> {
    secret_from(
        from_pool_or_odd(&[
            "db",
            "MyGroup",
            "tls.certs",
            "https://kv1.vault.azure.net/secrets/db-password/",
            "http://kv1.vault.azure.net/secrets/x",
            "projects/p1/secrets/tok",
            "arn:aws:secretsmanager:us-east-1:123:secret:",
            "secret/data/ml",
            "",
        ]),
        from_pool_or_odd(&["", "", "kv1", "v1", "1.0", "7"]),
        from_pool_or_odd(&["password", "k", "Private_Key", "path/to/key", "..", ""]),
        from_pool_or_odd(&[
            "",
            "",
            "1BAD",
            "FLYTE_SECRETS_ENV_PREFIX",
            "FLYTE_SECRETS_DEFAULT_DIR",
            "_FSEC_DB_PASSWORD",
            "SECRET_ARN",
        ]),
    )
}

/// Secret lists for the settings: mostly requests one of its managers serves, sometimes anything.
fn secrets_for(managers: &[ManagerType]) -> impl Strategy<Value = Vec<Secret>> + use<> {
    let served = proptest::strategy::Union::new(managers.iter().map(|m| served_by(*m)));
    let one = prop_oneof![8 => served, 1 => wild_secret()];
    prop_oneof![
        1 => Just(Vec::new()),
        8 => prop::collection::vec(one, 1..4),
    ]
}

/// Small JSON values for fields the webhook knows nothing about.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        odd_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(pick(&["a", "name", "value", "x"]), inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

const MOUNT_PATHS: &[&str] = &[
    "/data",
    "/tmp",
    "/etc/flyte/secrets",
    "/etc/flyte/secrets/db",
    "/etc/flyte/secrets/minio",
    "/etc/flyte/secrets/api",
];

const VOLUME_NAMES: &[&str] = &[
    "data",
    "local-tls",
    "aws-secret-vol",
    "gcp-secret-vol",
    "azure-secret-vol",
    // base32("db_") and base32("minio_"): the K8s manager's names for those groups.
    "mrrf5",
    "nvuw31lpl3",
];

fn env_var() -> impl Strategy<Value = Value> {
    let name = from_pool_or_odd(&[
        "A",
        "PGPASSWORD",
        "API_TOKEN",
        "FLYTE_SECRETS_ENV_PREFIX",
        "FLYTE_SECRETS_DEFAULT_DIR",
        "FLYTE_SECRETS_FILE_PREFIX",
        "_FSEC_DB_PASSWORD",
        "_FSEC_DB_USERNAME",
    ]);
    prop_oneof![
        (name.clone(), odd_string())
            .prop_map(|(name, value)| json!({"name": name, "value": value})),
        name.clone().prop_map(|name| json!({
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}},
        })),
        name.prop_map(|name| json!({"name": name})),
    ]
}

fn volume_mount() -> impl Strategy<Value = Value> {
    (pick(VOLUME_NAMES), pick(MOUNT_PATHS), any::<bool>()).prop_map(|(name, path, read_only)| {
        let mut mount = json!({"name": name, "mountPath": path});
        if read_only {
            mount["readOnly"] = json!(true);
        }
        mount
    })
}

fn volume() -> impl Strategy<Value = Value> {
    let source = prop_oneof![
        Just(json!({"emptyDir": {}})),
        Just(json!({"emptyDir": {"medium": "Memory"}})),
        Just(json!({"configMap": {"name": "cm"}})),
        (
            pick(&["db", "minio", "api", "other"]),
            prop::option::of(prop::collection::vec(
                pick(&["password", "username", "k"])
                    .prop_map(|key| json!({"key": key, "path": key})),
                0..3
            ))
        )
            .prop_map(|(secret_name, items)| {
                let mut secret = json!({"secretName": secret_name});
                if let Some(items) = items {
                    secret["items"] = Value::from(items);
                }
                json!({"secret": secret})
            }),
    ];
    (pick(VOLUME_NAMES), source).prop_map(|(name, mut source)| {
        source["name"] = json!(name);
        source
    })
}

fn container() -> impl Strategy<Value = Value> {
    (
        pick(&[
            "main",
            "sidecar",
            "wait-for-db",
            "aws-pull-secret-0",
            "gcp-pull-secret-1",
        ]),
        prop::option::of(prop::collection::vec(env_var(), 0..4)),
        prop::option::of(prop::collection::vec(volume_mount(), 0..3)),
        prop::collection::btree_map(
            pick(&[
                "args",
                "command",
                "workingDir",
                "resources",
                "restartPolicy",
                "x-extension",
            ]),
            json_value(),
            0..3,
        ),
    )
        .prop_map(|(name, env, mounts, extra)| {
            let mut container = Map::new();
            container.insert("name".into(), json!(name));
            container.insert("image".into(), json!("example/task:1"));
            container.extend(extra);
            if let Some(env) = env {
                container.insert("env".into(), Value::from(env));
            }
            if let Some(mounts) = mounts {
                container.insert("volumeMounts".into(), Value::from(mounts));
            }
            Value::Object(container)
        })
}

/// A pod marked with `secrets` the way Flyte marks it.
fn pod_with(secrets: impl Strategy<Value = Vec<Secret>>) -> impl Strategy<Value = Value> {
    (
        secrets,
        prop_oneof![8 => Just(Some("true")), 1 => Just(Some("false")), 1 => Just(None)],
        prop::collection::btree_map(
            pick(&[
                "other/annotation",
                "vault.hashicorp.com/role",
                "vault.hashicorp.com/agent-inject",
                "flyte.secrets/x",
            ]),
            pick(&["custom", "false", "true"]),
            0..3,
        ),
        prop::collection::vec(container(), 1..4),
        prop::option::of(prop::collection::vec(container(), 0..3)),
        prop::option::of(prop::collection::vec(volume(), 0..3)),
        prop::option::of(json_value()),
    )
        .prop_map(
            |(secrets, label, extra_annotations, containers, init_containers, volumes, extra)| {
                let mut annotations: Map<String, Value> = extra_annotations
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect();
                // `encode_requests` fails only above 256 KiB, which these secrets never reach.
                for (key, value) in encode_requests(&secrets).expect("small secrets encode") {
                    annotations.insert(key, Value::from(value));
                }
                let mut labels = json!({"app": "task"});
                if let Some(label) = label {
                    labels[POD_LABEL] = json!(label);
                }
                let mut spec = json!({"containers": containers, "restartPolicy": "Never"});
                if let Some(init) = init_containers {
                    spec["initContainers"] = Value::from(init);
                }
                if let Some(volumes) = volumes {
                    spec["volumes"] = Value::from(volumes);
                }
                if let Some(extra) = extra {
                    spec["x-extension"] = extra;
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": "task-n0-0",
                        "namespace": "flytesnacks-development",
                        "labels": labels,
                        "annotations": annotations,
                    },
                    "spec": spec,
                })
            },
        )
}

/// A case: settings (with their index in [`SETTINGS`], for messages) and a pod for them.
fn case() -> impl Strategy<Value = (Value, (usize, Settings))> {
    (0..SETTINGS.len()).prop_flat_map(|index| {
        let settings = Settings::from_json(SETTINGS[index])
            .unwrap_or_else(|err| panic!("settings #{index}: {err}"));
        // Mostly requests the settings' own managers (Global first) can serve.
        let secrets = secrets_for(&settings.managers());
        (pod_with(secrets), Just((index, settings)))
    })
}

fn config() -> Config {
    // PROPTEST_CASES overrides the count; counterexamples are kept as tests in regressions.rs
    // rather than in files beside the sources.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// `a.b[].c`, with `[]` standing for any index.
type Path = Vec<String>;

fn is_container(path: &[String]) -> bool {
    matches!(path, [spec, list, idx] if spec == "spec" && (list == "containers" || list == "initContainers") && idx == "[]")
}

/// Arrays the webhook may append to.
fn may_grow(path: &[String]) -> bool {
    let joined = path.join(".");
    matches!(
        joined.as_str(),
        "spec.volumes" | "spec.initContainers" | "spec.volumes.[].secret.items"
    ) || matches!(path, [prefix @ .., last] if is_container(prefix) && (last == "env" || last == "volumeMounts"))
}

/// Objects the webhook may add fields to.
fn may_add_fields(path: &[String]) -> bool {
    let joined = path.join(".");
    matches!(
        joined.as_str(),
        "metadata" | "metadata.annotations" | "spec"
    ) || is_container(path)
}

/// Checks that `after` keeps all of `before`, growing only where the webhook may.
fn check_kept(before: &Value, after: &Value, path: &mut Path) -> Result<(), String> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, value) in b {
                let Some(new) = a.get(key) else {
                    return Err(format!("{}: field {key:?} was removed", path.join(".")));
                };
                path.push(key.clone());
                let kept = check_kept(value, new, path);
                path.pop();
                kept?;
            }
            if a.len() > b.len() && !may_add_fields(path) {
                let added: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
                return Err(format!("{}: fields {added:?} were added", path.join(".")));
            }
            Ok(())
        }
        (Value::Array(b), Value::Array(a)) => {
            if a.len() < b.len() {
                return Err(format!("{}: array shrank", path.join(".")));
            }
            if a.len() > b.len() && !may_grow(path) {
                return Err(format!("{}: array grew", path.join(".")));
            }
            path.push("[]".into());
            let kept = b.iter().zip(a).enumerate().try_for_each(|(i, (b, a))| {
                check_kept(b, a, path).map_err(|err| format!("[{i}] {err}"))
            });
            path.pop();
            kept
        }
        _ if before == after => Ok(()),
        _ => Err(format!("{}: {before} became {after}", path.join("."))),
    }
}

/// Known bugs that property 5 finds, each with an ignored test in tests/regressions.rs; set to
/// false when fixed. Pullers are named without checking the name is free:
const PULLER_NAME_CLASH_IS_KNOWN: bool = false;
/// and a puller's env may hold a name twice when the secret's env_var is one of its own variables.
const PULLER_ENV_DUPLICATE_IS_KNOWN: bool = false;

/// The init containers the cloud managers add (`secrets_policy::pod::PULLER_PREFIXES`).
fn is_puller_name(name: &str) -> bool {
    ["aws-pull-secret-", "gcp-pull-secret-", "azure-pull-secret-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// How often each `field` value occurs among `items`.
fn counts<'a>(items: &'a [Value], field: &str) -> std::collections::BTreeMap<&'a str, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for name in items.iter().filter_map(|item| item.get(field)?.as_str()) {
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// Names the webhook added must not clash with names already there.
fn check_no_new_clash(
    before: &[Value],
    after: &[Value],
    field: &str,
    what: &str,
) -> Result<(), String> {
    let before = counts(before, field);
    for (name, count) in counts(after, field) {
        if count > 1 && count > before.get(name).copied().unwrap_or(0) {
            return Err(format!("the patch adds a second {what} {name:?}"));
        }
    }
    Ok(())
}

/// What the webhook adds makes sense in a pod: no second container, volume, env var or mount path
/// of a name already taken, and every mount it adds names a volume of the pod.
fn check_additions_consistent(before: &Value, after: &Value) -> Result<(), String> {
    let all_containers = |pod: &Value| -> Vec<Value> {
        [
            list(pod, "/spec/initContainers"),
            list(pod, "/spec/containers"),
        ]
        .concat()
    };
    let (old, new) = (all_containers(before), all_containers(after));
    if let Err(err) = check_no_new_clash(&old, &new, "name", "container") {
        // Known bug (tests/regressions.rs, puller_name_clashes_with_an_existing_container):
        // pullers are numbered by the init container count without checking the name is free.
        let known = PULLER_NAME_CLASH_IS_KNOWN
            && old
                .iter()
                .filter_map(|c| c.get("name")?.as_str())
                .any(|name| err.contains(&format!("{name:?}")) && is_puller_name(name));
        if !known {
            return Err(err);
        }
    }
    let (old_volumes, volumes) = (list(before, "/spec/volumes"), list(after, "/spec/volumes"));
    check_no_new_clash(old_volumes, volumes, "name", "volume")?;
    let volume_names = counts(volumes, "name");
    for (pointer, count) in [
        (
            "/spec/initContainers",
            list(before, "/spec/initContainers").len(),
        ),
        ("/spec/containers", list(before, "/spec/containers").len()),
    ] {
        for (index, container) in list(after, pointer).iter().enumerate() {
            let original = (index < count).then(|| &list(before, pointer)[index]);
            let old = |field: &str| original.map_or(&[][..], |c| list(c, &format!("/{field}")));
            let where_ = format!("{pointer}/{index}");
            if let Err(err) =
                check_no_new_clash(old("env"), list(container, "/env"), "name", "env var")
            {
                // Known bug (tests/regressions.rs, puller_env_has_no_duplicate_names): a puller's
                // own variables and the secret's env_var are concatenated without a check.
                let added_puller = original.is_none()
                    && container
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(is_puller_name);
                if !(PULLER_ENV_DUPLICATE_IS_KNOWN && added_puller) {
                    return Err(format!("{where_}: {err}"));
                }
            }
            let mounts = list(container, "/volumeMounts");
            check_no_new_clash(old("volumeMounts"), mounts, "mountPath", "mount at")
                .map_err(|err| format!("{where_}: {err}"))?;
            for mount in &mounts[old("volumeMounts").len()..] {
                let name = mount
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !volume_names.contains_key(name) {
                    return Err(format!(
                        "{where_}: added a mount of missing volume {name:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn decision_bytes(decision: &Decision) -> String {
    match decision {
        Decision::Unchanged => "unchanged".to_owned(),
        Decision::Mutated(pod) => format!("mutated {}", serde_json::to_string(pod).unwrap()),
        Decision::Denied(denial) => format!("denied {} {}", denial.code, denial.message),
    }
}

fn outcome_bytes(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unchanged => "unchanged".to_owned(),
        Outcome::Patched(patched) => format!("patched {} {:?}", patched.patch, patched.injections),
        Outcome::Denied(denial) => format!("denied {} {}", denial.code, denial.message),
    }
}

/// The checkers catch what they are meant to.
#[test]
fn checkers_catch_violations() {
    let before = json!({
        "metadata": {"labels": {"a": "1"}, "annotations": {"x": "1"}},
        "spec": {
            "containers": [{"name": "c", "env": [{"name": "A", "value": "1"}], "args": ["x"]}],
            "volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k"}]}}],
        },
    });
    let ok = json!({
        "metadata": {"labels": {"a": "1"}, "annotations": {"x": "1", "y": "2"}},
        "spec": {
            "containers": [{"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B"}],
                            "args": ["x"], "volumeMounts": [{"name": "v", "mountPath": "/p"}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k"}, {"key": "l"}]}}],
            "initContainers": [{"name": "p"}],
        },
    });
    assert_eq!(check_kept(&before, &ok, &mut Vec::new()), Ok(()));
    assert_eq!(check_additions_consistent(&before, &ok), Ok(()));
    for (pointer, bad) in [
        ("/spec/containers/0/env/0/value", json!("2")),
        (
            "/spec/containers/0/env",
            json!([{"name": "B"}, {"name": "A", "value": "1"}]),
        ),
        ("/spec/containers/0/args", json!(["x", "y"])),
        ("/spec/containers/0/name", json!("d")),
        ("/metadata/labels/b", json!("2")),
        ("/metadata/annotations/x", json!("2")),
        ("/spec/volumes/0/secret/optional", json!(true)),
        ("/spec/containers", json!([{"name": "c"}])),
    ] {
        let mut after = before.clone();
        match after.pointer_mut(pointer) {
            Some(slot) => *slot = bad,
            None => {
                let (parent, field) = pointer.rsplit_once('/').unwrap();
                after.pointer_mut(parent).unwrap()[field] = bad;
            }
        }
        assert!(
            check_kept(&before, &after, &mut Vec::new()).is_err(),
            "{pointer}"
        );
    }
    for (pointer, bad) in [
        (
            "/spec/containers/0/env",
            json!([{"name": "A", "value": "1"}, {"name": "A"}]),
        ),
        ("/spec/initContainers", json!([{"name": "c"}])),
        (
            "/spec/containers/0/volumeMounts",
            json!([{"name": "w", "mountPath": "/p"}]),
        ),
    ] {
        let mut after = ok.clone();
        *after.pointer_mut(pointer).unwrap() = bad;
        assert!(
            check_additions_consistent(&before, &after).is_err(),
            "{pointer}"
        );
    }
}

/// Sanity of the generator: a good share of cases must reach each decision, or the properties
/// test little. Not a property of the policy, so only checked over the whole run.
#[test]
fn generator_reaches_every_decision() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let (mut unchanged, mut mutated, mut denied) = (0, 0, 0);
    for _ in 0..300 {
        let (pod, (_, settings)) = strategy.new_tree(&mut runner).unwrap().current();
        match decide(&settings, &pod, &globals) {
            Decision::Unchanged => unchanged += 1,
            Decision::Mutated(_) => mutated += 1,
            Decision::Denied(_) => denied += 1,
        }
    }
    assert!(
        unchanged >= 30 && mutated >= 100 && denied >= 15,
        "unchanged {unchanged}, mutated {mutated}, denied {denied} of 300"
    );
}

proptest! {
    #![proptest_config(config())]

    /// (1) The patch applies to the original, gives the mutated pod, and only adds.
    #[test]
    fn patch_applies_to_the_original_and_only_adds((pod, (index, settings)) in case()) {
        let decision = decide(&settings, &pod, &globals);
        let outcome = mutate_json(&settings, &pod.to_string(), &globals);
        match (&decision, &outcome) {
            (Decision::Mutated(mutated), Outcome::Patched(patched)) => {
                // Every edit belongs to some secret, and only a configured manager injects.
                prop_assert!(!patched.injections.is_empty(), "a patch that injects nothing (settings #{})", index);
                let managers = settings.managers();
                for injection in &patched.injections {
                    prop_assert!(managers.contains(&injection.manager), "{:?} is not configured (settings #{})", injection, index);
                }
                let diff = secrets_policy::mutation::diff(&pod, mutated);
                let ours: json_patch::Patch = serde_json::from_str(&patched.patch)
                    .map_err(|err| TestCaseError::fail(format!("not a JSON Patch: {err}")))?;
                for (which, patch) in [("mutate_json's", &ours), ("diff's", &diff)] {
                    for op in &patch.0 {
                        prop_assert!(
                            matches!(op, json_patch::PatchOperation::Add(_)),
                            "{} patch has more than adds: {} (settings #{})",
                            which, serde_json::to_string(op).unwrap(), index
                        );
                    }
                    let mut patched = pod.clone();
                    json_patch::patch(&mut patched, &patch.0).map_err(|err| {
                        TestCaseError::fail(format!("{which} patch does not apply: {err}"))
                    })?;
                    prop_assert_eq!(&patched, mutated, "{} patch, settings #{}", which, index);
                }
            }
            (Decision::Unchanged, Outcome::Unchanged) => {}
            (Decision::Denied(a), Outcome::Denied(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "decide and mutate_json disagree: {:?} vs {:?}", decision, outcome),
        }
    }

    /// (2) Running the policy on its own output changes nothing.
    #[test]
    fn mutate_is_idempotent((pod, (index, settings)) in case()) {
        if let Decision::Mutated(mutated) = decide(&settings, &pod, &globals) {
            let again = decide(&settings, &mutated, &globals);
            prop_assert!(
                again == Decision::Unchanged,
                "second run (settings #{}) gave {}\nfirst output: {}",
                index, decision_bytes(&again), serde_json::to_string_pretty(&mutated).unwrap()
            );
        }
    }

    /// (3) Every field of the original pod survives; arrays only grow by appending.
    #[test]
    fn no_existing_field_is_lost((pod, (index, settings)) in case()) {
        if let Decision::Mutated(mutated) = decide(&settings, &pod, &globals) {
            let kept = check_kept(&pod, &mutated, &mut Vec::new());
            prop_assert!(kept.is_ok(), "settings #{}: {}", index, kept.unwrap_err());
        }
    }

    /// (5) What the webhook adds is consistent with the rest of the pod.
    #[test]
    fn additions_do_not_clash((pod, (index, settings)) in case()) {
        if let Decision::Mutated(mutated) = decide(&settings, &pod, &globals) {
            let consistent = check_additions_consistent(&pod, &mutated);
            prop_assert!(
                consistent.is_ok(),
                "settings #{}: {}\noriginal spec: {}",
                index, consistent.unwrap_err(), pod["spec"]
            );
        }
    }

    /// (4) The same input twice gives byte-identical outputs.
    #[test]
    fn output_is_deterministic((pod, (_index, settings)) in case()) {
        let text = pod.to_string();
        let first = decision_bytes(&decide(&settings, &pod, &globals));
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        let second = decision_bytes(&decide(&settings, &reparsed, &globals));
        prop_assert_eq!(first, second);
        let first = outcome_bytes(&mutate_json(&settings, &text, &globals));
        let second = outcome_bytes(&mutate_json(&settings, &text, &globals));
        prop_assert_eq!(first, second);
    }

    /// (6) Flyte 2's placement (Global secrets in `globalSecretsStyle: Flyte2`): the patch applies
    /// to the original and gives the mutated pod, it removes nothing but env vars it puts back
    /// in front (every variable name of the pod survives), and a second run changes nothing.
    #[test]
    fn flyte_2_placement_replaces_variables_but_loses_none((pod, _) in case()) {
        let settings = Settings::from_json(FLYTE_2_GLOBAL).unwrap();
        let Decision::Mutated(mutated) = decide(&settings, &pod, &globals) else {
            return Ok(());
        };
        let Outcome::Patched(patched) = mutate_json(&settings, &pod.to_string(), &globals) else {
            return Err(TestCaseError::fail("decide mutated, mutate_json did not"));
        };
        let ours: json_patch::Patch = serde_json::from_str(&patched.patch)
            .map_err(|err| TestCaseError::fail(format!("not a JSON Patch: {err}")))?;
        for op in &ours.0 {
            let env_removal = matches!(op, json_patch::PatchOperation::Remove(remove)
                if is_env_entry(&remove.path.to_string()));
            prop_assert!(
                matches!(op, json_patch::PatchOperation::Add(_)) || env_removal,
                "the patch has more than adds and env replacements: {}",
                serde_json::to_string(op).unwrap()
            );
        }
        let mut applied = pod.clone();
        json_patch::patch(&mut applied, &ours.0)
            .map_err(|err| TestCaseError::fail(format!("the patch does not apply: {err}")))?;
        prop_assert_eq!(&applied, &mutated);
        for field in ["initContainers", "containers"] {
            let before = list(&pod["spec"], &format!("/{field}"));
            for (index, container) in before.iter().enumerate() {
                let after = &mutated["spec"][field][index];
                for var in list(container, "/env") {
                    let name = &var["name"];
                    prop_assert!(
                        list(after, "/env").iter().any(|kept| &kept["name"] == name),
                        "{field}[{index}] lost env var {name}"
                    );
                }
            }
        }
        prop_assert!(decide(&settings, &mutated, &globals) == Decision::Unchanged);
    }
}

/// Global secrets placed as Flyte 2 places them, beside K8s.
const FLYTE_2_GLOBAL: &str = r#"{"secretManagerType": "K8s", "globalSecretsStyle": "Flyte2"}"#;

/// `/spec/containers/<n>/env/<m>` or `/spec/initContainers/<n>/env/<m>`.
fn is_env_entry(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["", "spec", "containers" | "initContainers", n, "env", m]
        if n.parse::<usize>().is_ok() && m.parse::<usize>().is_ok())
}
