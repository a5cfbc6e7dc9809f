//! Flyte 2's Embedded manager in both modes, through the library's front door with a store and
//! namespaces held in memory (the host's are tested against a real API server in the host's
//! `embedded_cluster` tests). Expected pods follow Flyte 2's injector (`embedded_secret_manager.go`
//! and its tests) field by field.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::{Value, json};

use secrets_policy::annotations::encode_requests;
use secrets_policy::{
    Admission, Cluster, Decision, Host, MountRequirement, Outcome, Secret, SecretStore, Settings,
    decide_review, mutate_review,
};

/// Secret values by id, ids that fail to read, and every id asked for.
#[derive(Default)]
struct Memory {
    values: BTreeMap<String, Vec<u8>>,
    broken: Vec<String>,
    asked: RefCell<Vec<String>>,
    namespaces: BTreeMap<String, Vec<(String, String)>>,
    /// Image pull Secrets in the store's namespace; `None` when they cannot be read.
    pull_secrets: Option<Vec<String>>,
    pulls_asked: RefCell<usize>,
}

impl SecretStore for Memory {
    fn lookup(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        self.asked.borrow_mut().push(id.to_owned());
        if self.broken.iter().any(|b| b == id) {
            return Err("AccessDenied".to_owned());
        }
        Ok(self.values.get(id).cloned())
    }
}

impl Cluster for Memory {
    fn labels(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        Ok(self.namespaces.get(name).cloned())
    }

    fn image_pull_secret(&self, name: &str) -> Result<bool, String> {
        *self.pulls_asked.borrow_mut() += 1;
        match &self.pull_secrets {
            Some(names) => Ok(names.iter().any(|n| n == name)),
            None => Err("forbidden".to_owned()),
        }
    }
}

const NAMESPACE: &str = "flytesnacks-development";
const PROJECT_ID: &str = "u__org__acme__domain__development__project__flytesnacks__key__secret1";
const DOMAIN_ID: &str = "u__org__acme__domain__development__project____key__secret1";
const ORG_ID: &str = "u__org__acme__domain____project____key__secret1";

impl Memory {
    fn with(values: &[(&str, &str)]) -> Self {
        let mut memory = Memory {
            values: values
                .iter()
                .map(|(id, value)| ((*id).to_owned(), value.as_bytes().to_vec()))
                .collect(),
            ..Memory::default()
        };
        let org = ("organization".to_owned(), "acme".to_owned());
        memory.namespaces.insert(NAMESPACE.to_owned(), vec![org]);
        memory.pull_secrets = Some(Vec::new());
        memory
    }

    fn host(&self) -> Host<'_> {
        Host {
            globals: &(),
            store: self,
            cluster: self,
        }
    }
}

fn settings(mode: &str, extra: Value) -> Settings {
    let mut settings = json!({
        "secretManagerTypes": ["Embedded"],
        "secretEnvVarPrefix": "_UNION_",
        "embeddedSecretManagerConfig": {"mode": mode},
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    Settings::from_json(&settings.to_string()).unwrap()
}

fn secret(key: &str, mount: MountRequirement, env_var: &str) -> Secret {
    Secret {
        key: key.to_owned(),
        mount_requirement: mount,
        env_var: env_var.to_owned(),
        ..Secret::default()
    }
}

/// A Flyte 2 task pod asking for `secrets`, with the scope labels the executor sets.
fn pod(secrets: &[Secret], labels: Value) -> Value {
    let mut annotations = serde_json::Map::new();
    for (key, value) in encode_requests(secrets).unwrap() {
        annotations.insert(key, Value::String(value));
    }
    let mut all_labels = json!({"inject-flyte-secrets": "true"});
    for (key, value) in labels.as_object().unwrap() {
        all_labels[key] = value.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a1-n0-0", "namespace": NAMESPACE, "labels": all_labels,
                     "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": "python:3.12",
                                 "env": [{"name": "A", "value": "a"}]}]}
    })
}

fn scope_labels() -> Value {
    json!({"organization": "acme", "project": "flytesnacks", "domain": "development"})
}

fn run(settings: &Settings, memory: &Memory, pod: &Value) -> Decision {
    let admission = Admission {
        namespace: NAMESPACE,
        ..Admission::default()
    };
    decide_review(settings, &admission, pod, memory.host())
}

fn mutated(decision: Decision) -> Value {
    match decision {
        Decision::Mutated(pod) => pod,
        other => panic!("expected a mutated pod, got {other:?}"),
    }
}

fn denied(decision: Decision) -> String {
    match decision {
        Decision::Denied(denial) => {
            assert_eq!(denial.code, 400);
            denial.message
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn every_scope_label_is_required_and_named() {
    let memory = Memory::with(&[(PROJECT_ID, "banana")]);
    let settings = settings("Plaintext", json!({}));
    let request = [secret("secret1", MountRequirement::EnvVar, "")];
    for missing in ["organization", "project", "domain"] {
        let mut labels = scope_labels();
        labels.as_object_mut().unwrap().remove(missing);
        let message = denied(run(&settings, &memory, &pod(&request, labels)));
        assert!(
            message.contains(&format!(
                "secret read requirements not met due to empty {missing} field in the pod labels"
            )),
            "{message}"
        );
    }
}

#[test]
fn plaintext_env_is_flyte_2s_pod() {
    let memory = Memory::with(&[(PROJECT_ID, "banana")]);
    let settings = settings("Plaintext", json!({}));
    let request = [secret("secret1", MountRequirement::EnvVar, "")];
    let pod = mutated(run(&settings, &memory, &pod(&request, scope_labels())));
    // Prepended one at a time: the prefix var first, then the value in front of it.
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "_UNION_SECRET1", "value": "banana"},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
            {"name": "A", "value": "a"},
        ])
    );
    // env_var names the variable instead, and a variable of that name gives way.
    let request = [secret("secret1", MountRequirement::Any, "A")];
    let pod = mutated(run(
        &settings,
        &memory,
        &self::pod(&request, scope_labels()),
    ));
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "A", "value": "banana"},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
        ])
    );
}

/// Flyte 2 takes requests in map order and prepends each variable in turn, removing one of the
/// same name: with two ENV secrets the prefix variable moves in front of the first. Either order
/// of the two is a pod Flyte 2 produces; ours takes them in annotation order.
#[test]
fn two_env_secrets_come_in_an_order_flyte_2_produces() {
    let secret2 = PROJECT_ID.replace("secret1", "secret2");
    let memory = Memory::with(&[(PROJECT_ID, "banana"), (secret2.as_str(), "kiwi")]);
    let settings = settings("Plaintext", json!({}));
    let request = [
        secret("secret1", MountRequirement::EnvVar, ""),
        secret("secret2", MountRequirement::EnvVar, ""),
    ];
    let pod = mutated(run(&settings, &memory, &pod(&request, scope_labels())));
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "_UNION_SECRET2", "value": "kiwi"},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
            {"name": "_UNION_SECRET1", "value": "banana"},
            {"name": "A", "value": "a"},
        ])
    );
    // The API server's reinvocation changes nothing.
    assert_eq!(run(&settings, &memory, &pod), Decision::Unchanged);
}

/// A configuration that enables Embedded is a Flyte 2 one: without a prefix of its own it gets
/// `_UNION_`, and Global secrets are placed as Flyte 2's Global manager places them (prepended,
/// the webhook's value winning, `env_var` ignored) unless `globalSecretsStyle` says otherwise.
#[test]
fn flyte_2_configurations_get_flyte_2s_defaults() {
    let flyte_2 = Settings::from_json(r#"{"secretManagerTypes": ["Embedded"]}"#).unwrap();
    assert_eq!(flyte_2.secret_env_var_prefix, "_UNION_");
    let flyte_1 = Settings::from_json(r#"{"secretManagerTypes": ["K8s"]}"#).unwrap();
    assert_eq!(flyte_1.secret_env_var_prefix, "_FSEC_");
    let own = Settings::from_json(
        r#"{"secretManagerTypes": ["Embedded"], "secretEnvVarPrefix": "_FSEC_"}"#,
    )
    .unwrap();
    assert_eq!(own.secret_env_var_prefix, "_FSEC_");

    let memory = Memory::with(&[]);
    let globals =
        |group: &str, key: &str| (group == "db" && key == "password").then(|| "hunter2".to_owned());
    let host = Host {
        globals: &globals,
        ..memory.host()
    };
    let request = [Secret {
        group: "db".to_owned(),
        key: "password".to_owned(),
        env_var: "IGNORED".to_owned(),
        mount_requirement: MountRequirement::EnvVar,
        ..Secret::default()
    }];
    let mut asking = pod(&request, scope_labels());
    asking["spec"]["containers"][0]["env"] =
        json!([{"name": "A", "value": "a"}, {"name": "_UNION_DB_PASSWORD", "value": "mine"}]);
    let admission = Admission {
        namespace: NAMESPACE,
        ..Admission::default()
    };
    let pod = mutated(decide_review(&flyte_2, &admission, &asking, host));
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "_UNION_DB_PASSWORD", "value": "hunter2"},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
            {"name": "A", "value": "a"},
        ])
    );
    assert_eq!(
        decide_review(&flyte_2, &admission, &pod, host),
        Decision::Unchanged
    );
    // Flyte 1's placement on request: appended, the pod's own value kept, env_var honoured.
    let appending = Settings::from_json(
        r#"{"secretManagerTypes": ["Embedded"], "globalSecretsStyle": "Flyte1"}"#,
    )
    .unwrap();
    let pod = mutated(decide_review(&appending, &admission, &asking, host));
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "A", "value": "a"},
            {"name": "_UNION_DB_PASSWORD", "value": "mine"},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
            {"name": "IGNORED", "value": "hunter2"},
        ])
    );
}

#[test]
fn plaintext_file_is_one_init_container_with_base64_lines() {
    let memory = Memory::with(&[
        (PROJECT_ID, "banana"),
        (ORG_ID.replace("secret1", "secret2").as_str(), "kiwi"),
    ]);
    let settings = settings("Plaintext", json!({}));
    let request = [
        secret("secret1", MountRequirement::File, "MY_FILE"),
        secret("secret2", MountRequirement::File, "DROPPED"),
    ];
    let pod = mutated(run(&settings, &memory, &pod(&request, scope_labels())));
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["name"], "init-embedded-secret");
    assert_eq!(
        init["image"],
        "public.ecr.aws/docker/library/busybox:latest"
    );
    assert_eq!(
        init["resources"],
        json!({"limits": {"cpu": "100m", "memory": "100Mi"},
               "requests": {"cpu": "100m", "memory": "100Mi"}})
    );
    assert_eq!(init["command"][0], "sh");
    assert_eq!(init["command"][1], "-c");
    let script = init["command"][2].as_str().unwrap();
    assert!(
        script.starts_with("\n\t\t\t\tprintf \"%s\" \"$SECRETS\" \\\n"),
        "{script:?}"
    );
    assert!(script.contains("output_file = \"/etc/flyte/secrets/\" name;"));
    assert_eq!(
        init["volumeMounts"],
        json!([{"name": "embedded-secret-vol", "mountPath": "/etc/flyte/secrets"}])
    );
    // The second secret only adds its line: Flyte 2 returns early once the container exists.
    let file_env = json!([
        {"name": "MY_FILE", "value": "/etc/flyte/secrets/secret1"},
        {"name": "FLYTE_SECRETS_FILE_PREFIX"},
        {"name": "FLYTE_SECRETS_DEFAULT_DIR", "value": "/etc/flyte/secrets"},
    ]);
    let mut init_env = file_env.as_array().unwrap().clone();
    init_env.push(json!({"name": "SECRETS", "value": "secret1=YmFuYW5h\nsecret2=a2l3aQ==\n"}));
    assert_eq!(init["env"], Value::Array(init_env));
    let mut main_env = file_env.as_array().unwrap().clone();
    main_env.push(json!({"name": "A", "value": "a"}));
    assert_eq!(pod["spec"]["containers"][0]["env"], Value::Array(main_env));
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": "embedded-secret-vol", "mountPath": "/etc/flyte/secrets", "readOnly": true}])
    );
    assert_eq!(
        pod["spec"]["volumes"],
        json!([{"name": "embedded-secret-vol", "emptyDir": {"medium": "Memory"}}])
    );
}

#[test]
fn mirror_mode_puts_no_value_in_the_pod() {
    let memory = Memory::with(&[
        (PROJECT_ID, "banana"),
        (ORG_ID.replace("secret1", "Token").as_str(), "kiwi"),
    ]);
    let settings = settings("Mirror", json!({}));
    let request = [
        secret("secret1", MountRequirement::EnvVar, ""),
        secret("Token", MountRequirement::File, "TOKEN_PATH"),
    ];
    let text = pod(&request, scope_labels()).to_string();
    let admission = Admission {
        namespace: NAMESPACE,
        ..Admission::default()
    };
    let Outcome::Patched(patched) = mutate_review(&settings, &admission, &text, memory.host())
    else {
        panic!("expected a patch");
    };
    let org_token = ORG_ID.replace("secret1", "Token");
    assert_eq!(patched.mirrors, [PROJECT_ID.to_owned(), org_token.clone()]);
    assert!(!patched.patch.contains("banana") && !patched.patch.contains("kiwi"));
    let env_mirror = secrets_policy::scope::mirror_name(PROJECT_ID);
    let file_mirror = secrets_policy::scope::mirror_name(&org_token);
    let pod = mutated(run(
        &settings,
        &memory,
        &self::pod(&request, scope_labels()),
    ));
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([
            {"name": "TOKEN_PATH", "value": "/etc/flyte/secrets/token"},
            {"name": "FLYTE_SECRETS_FILE_PREFIX"},
            {"name": "FLYTE_SECRETS_DEFAULT_DIR", "value": "/etc/flyte/secrets"},
            {"name": "_UNION_SECRET1", "valueFrom": {"secretKeyRef": {"name": env_mirror, "key": "value"}}},
            {"name": "FLYTE_SECRETS_ENV_PREFIX", "value": "_UNION_"},
            {"name": "A", "value": "a"},
        ])
    );
    // Flyte 2's file name keeps the key's case; flytekit and env_var read it lower-cased.
    assert_eq!(
        pod["spec"]["volumes"],
        json!([{"name": "embedded-secret-vol", "projected": {"sources": [{"secret": {
            "name": file_mirror,
            "items": [{"key": "value", "path": "Token"}, {"key": "value", "path": "token"}]}}]}}])
    );
    assert!(pod["spec"].get("initContainers").is_none());
}

#[test]
fn the_narrowest_scope_wins_and_only_not_found_widens() {
    let settings = settings("Mirror", json!({}));
    let request = [secret("secret1", MountRequirement::EnvVar, "")];
    let mirror_of = |memory: &Memory| {
        let text = pod(&request, scope_labels()).to_string();
        let admission = Admission {
            namespace: NAMESPACE,
            ..Admission::default()
        };
        match mutate_review(&settings, &admission, &text, memory.host()) {
            Outcome::Patched(patched) => patched.mirrors,
            other => panic!("{other:?}"),
        }
    };
    let all = Memory::with(&[(PROJECT_ID, "p"), (DOMAIN_ID, "d"), (ORG_ID, "o")]);
    assert_eq!(mirror_of(&all), [PROJECT_ID]);
    assert_eq!(all.asked.borrow().as_slice(), [PROJECT_ID]);
    assert_eq!(
        mirror_of(&Memory::with(&[(DOMAIN_ID, "d"), (ORG_ID, "o")])),
        [DOMAIN_ID]
    );
    let org = Memory::with(&[(ORG_ID, "o")]);
    assert_eq!(mirror_of(&org), [ORG_ID]);
    assert_eq!(
        org.asked.borrow().as_slice(),
        [PROJECT_ID, DOMAIN_ID, ORG_ID]
    );

    // A project scope that cannot be read is not a reason to hand out the organization's value.
    let mut broken = Memory::with(&[(ORG_ID, "o")]);
    broken.broken.push(PROJECT_ID.to_owned());
    let message = denied(run(&settings, &broken, &pod(&request, scope_labels())));
    assert!(
        message.contains("AccessDenied") && message.contains(PROJECT_ID),
        "{message}"
    );
    assert_eq!(broken.asked.borrow().as_slice(), [PROJECT_ID]);

    let message = denied(run(
        &settings,
        &Memory::with(&[]),
        &pod(&request, scope_labels()),
    ));
    assert!(
        message.contains("\"secret1\" not found across all scopes"),
        "{message}"
    );
    assert!(message.contains("flyte.secrets/s0"), "{message}");
}

#[test]
fn the_scope_must_be_the_namespaces() {
    let settings = settings("Mirror", json!({}));
    let request = [secret("secret1", MountRequirement::EnvVar, "")];
    let mut memory = Memory::with(&[(PROJECT_ID, "p"), (ORG_ID, "o")]);
    // Another project's labels on a pod in this namespace.
    let forged = json!({"organization": "acme", "project": "payroll", "domain": "development"});
    let message = denied(run(&settings, &memory, &pod(&request, forged)));
    assert!(
        message.contains("\"payroll-development\"") && message.contains(NAMESPACE),
        "{message}"
    );
    assert!(
        memory.asked.borrow().is_empty(),
        "looked up {:?}",
        memory.asked.borrow()
    );

    // The namespace names its organization: another one is refused.
    memory.namespaces.insert(
        NAMESPACE.to_owned(),
        vec![("organization".to_owned(), "umbrella".to_owned())],
    );
    let message = denied(run(&settings, &memory, &pod(&request, scope_labels())));
    assert!(message.contains("organization=umbrella"), "{message}");
    memory.namespaces.insert(
        NAMESPACE.to_owned(),
        vec![("organization".to_owned(), "acme".to_owned())],
    );
    mutated(run(&settings, &memory, &pod(&request, scope_labels())));

    // Off, explicitly: labels are trusted as Flyte 2 trusts them.
    let unbound = self::settings(
        "Mirror",
        json!({"embeddedSecretManagerConfig": {"bindScopeToNamespace": false}}),
    );
    let forged = json!({"organization": "acme", "project": "payroll", "domain": "development"});
    let memory = Memory::with(&[(ORG_ID, "o")]);
    mutated(run(&unbound, &memory, &pod(&request, forged)));
}

/// Flyte 2's `imagePullSecrets.enabled`: the pull Secret of the scope the value was found in
/// (names from Python's hashlib: `img-pull-` + sha256("acme:::secret1")[:16]).
#[test]
fn image_pull_secrets_of_the_found_scope_are_listed_sorted() {
    const ORG_PULL: &str = "img-pull-502a47281c2e8f37";
    const PROJECT_PULL: &str = "img-pull-59355c1bc3fbf961";
    let settings = |enabled: bool| {
        let json = json!({
            "secretManagerTypes": ["Embedded"],
            "embeddedSecretManagerConfig": {"imagePullSecrets": {"enabled": enabled}},
        });
        Settings::from_json(&json.to_string()).unwrap()
    };
    let memory = Memory {
        pull_secrets: Some(vec![ORG_PULL.to_owned(), PROJECT_PULL.to_owned()]),
        ..Memory::with(&[(ORG_ID, "banana")])
    };
    let mut asking = pod(
        &[secret("secret1", MountRequirement::EnvVar, "")],
        scope_labels(),
    );
    asking["spec"]["imagePullSecrets"] = json!([{"name": "zz-team"}, {"name": "aa-team"}]);
    let admission = Admission {
        namespace: NAMESPACE,
        ..Admission::default()
    };
    let outcome = mutate_review(
        &settings(true),
        &admission,
        &asking.to_string(),
        memory.host(),
    );
    let Outcome::Patched(patched) = outcome else {
        panic!("{outcome:?}");
    };
    // Found at the organization's scope: its pull Secret, not the project's.
    assert_eq!(patched.pull_secrets, [ORG_PULL]);
    let once = mutated(run(&settings(true), &memory, &asking));
    // Flyte 2 sorts the whole list by name after adding.
    assert_eq!(
        once["spec"]["imagePullSecrets"],
        json!([{"name": "aa-team"}, {"name": ORG_PULL}, {"name": "zz-team"}])
    );
    assert_eq!(run(&settings(true), &memory, &once), Decision::Unchanged);

    // A pod without the list gets one; a scope without a pull Secret gets none.
    let plain = pod(
        &[secret("secret1", MountRequirement::EnvVar, "")],
        scope_labels(),
    );
    let once = mutated(run(&settings(true), &memory, &plain));
    assert_eq!(
        once["spec"]["imagePullSecrets"],
        json!([{"name": ORG_PULL}])
    );
    let without = Memory::with(&[(ORG_ID, "banana")]);
    let once = mutated(run(&settings(true), &without, &plain));
    assert!(once["spec"].get("imagePullSecrets").is_none(), "{once:#}");

    // Unreadable: the pod is refused, naming the Secret; turned off, nothing is asked.
    let unreadable = Memory {
        pull_secrets: None,
        ..Memory::with(&[(ORG_ID, "banana")])
    };
    let message = denied(run(&settings(true), &unreadable, &plain));
    assert!(
        message.contains(&format!("reading image pull Secret {ORG_PULL}: forbidden")),
        "{message}"
    );
    mutated(run(&settings(false), &unreadable, &plain));
    assert_eq!(*unreadable.pulls_asked.borrow(), 1);
}

#[test]
fn a_second_pass_changes_nothing() {
    for mode in ["Mirror", "Plaintext"] {
        let memory = Memory::with(&[
            (PROJECT_ID, "banana"),
            (&*ORG_ID.replace("secret1", "k2"), "kiwi"),
        ]);
        let settings = settings(mode, json!({}));
        let request = [
            secret("secret1", MountRequirement::EnvVar, "S1"),
            secret("k2", MountRequirement::File, "K2_PATH"),
            secret("secret1", MountRequirement::File, ""),
        ];
        let once = mutated(run(&settings, &memory, &pod(&request, scope_labels())));
        assert_eq!(
            run(&settings, &memory, &once),
            Decision::Unchanged,
            "{mode}: {once:#}"
        );
    }
}

#[test]
fn binary_values_go_to_files_only() {
    let mut memory = Memory::with(&[]);
    memory
        .values
        .insert(PROJECT_ID.to_owned(), vec![0xff, 0xfe, 0x00]);
    for mode in ["Mirror", "Plaintext"] {
        let settings = settings(mode, json!({}));
        let env = [secret("secret1", MountRequirement::EnvVar, "")];
        let message = denied(run(&settings, &memory, &pod(&env, scope_labels())));
        assert!(
            message.contains("mount as a file instead"),
            "{mode}: {message}"
        );
        let file = [secret("secret1", MountRequirement::File, "")];
        mutated(run(&settings, &memory, &pod(&file, scope_labels())));
    }
}

#[test]
fn embedded_needs_a_key_and_a_store() {
    let settings = settings("Mirror", json!({}));
    let request = [Secret {
        group: "db".to_owned(),
        ..Secret::default()
    }];
    let memory = Memory::with(&[]);
    let message = denied(run(&settings, &memory, &pod(&request, scope_labels())));
    assert!(message.contains("Embedded requires a key"), "{message}");
    // A host without a store (the CLI's offline `mutate`) says so.
    let request = [secret("secret1", MountRequirement::EnvVar, "")];
    let pod = pod(&request, scope_labels());
    let message = denied(secrets_policy::decide(&settings, &pod, &()));
    assert!(message.contains("cannot read namespaces"), "{message}");
}
