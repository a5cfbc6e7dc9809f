//! The command line: annotate → mutate round trips, policy export and check.

use std::process::{Command, Output};

use serde_json::{Value, json};

fn webhook(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_secrets-webhook"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    match input.write_all(stdin.unwrap_or_default().as_bytes()) {
        // A command that refuses its arguments exits before it reads stdin.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

const POD_YAML: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: task\nspec:\n  containers:\n  - name: main\n    image: python:3.12\n";

#[test]
fn annotate_output_round_trips_through_mutate() {
    let annotated = stdout(&webhook(
        &[
            "annotate",
            "--secret",
            "group=db,key=password,mount=ENV_VAR",
            "--secret",
            "group=tls,key=CA.pem,mount=FILE,env_var=CA_FILE",
            "-",
        ],
        Some(POD_YAML),
    ));
    assert!(
        annotated.contains("inject-flyte-secrets: 'true'"),
        "{annotated}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, &annotated).unwrap();
    let pod: Value = serde_json::from_str(&stdout(&webhook(
        &[
            "mutate",
            "--output",
            "pod",
            "--global-secrets-dir",
            "/nonexistent",
            file.to_str().unwrap(),
        ],
        None,
    )))
    .unwrap();
    let env = &pod["spec"]["containers"][0]["env"];
    assert_eq!(
        env[0],
        json!({"name": "_FSEC_DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password", "optional": true}}})
    );
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "CA_FILE", "value": "/etc/flyte/secrets/tls/ca.pem"}))
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["secret"]["items"],
        json!([{"key": "CA.pem", "path": "ca.pem"}])
    );
}

#[test]
fn annotate_marks_pod_templates_and_refuses_bad_specs() {
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {"spec": {"containers": []}}}});
    let out: Value = serde_json::from_str(&stdout(&webhook(
        &["annotate", "--secret", "group=g,key=k", "-"],
        Some(&deployment.to_string()),
    )))
    .unwrap();
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"]["inject-flyte-secrets"],
        "true"
    );
    // The Flyte encoder's own test vector.
    let out: Value = serde_json::from_str(&stdout(&webhook(
        &["annotate", "--secret", "key=my_key", "-"],
        Some(r#"{"kind": "Pod"}"#),
    )))
    .unwrap();
    assert_eq!(
        out["metadata"]["annotations"]["flyte.secrets/s0"],
        "nnsxsoraejwxsx2lmv3secq"
    );

    let bad = webhook(
        &["annotate", "--secret", "group=g,mount=SOMETIMES", "-"],
        Some(POD_YAML),
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mount must be ANY, ENV_VAR or FILE"));
    let service = webhook(
        &["annotate", "--secret", "group=g,key=k", "-"],
        Some(r#"{"kind": "Service"}"#),
    );
    assert!(String::from_utf8_lossy(&service.stderr).contains("cannot annotate a Service"));
}

#[test]
fn policy_export_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("mutation.wasm");
    stdout(&webhook(
        &["policy", "export", exported.to_str().unwrap()],
        None,
    ));
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        secrets_webhook::policy::EMBEDDED
    );
    let checked = stdout(&webhook(
        &["policy", "check", exported.to_str().unwrap()],
        None,
    ));
    assert!(
        checked.starts_with("ok: ") && checked.contains(secrets_webhook::policy::WORLD),
        "{checked}"
    );

    // A policy built for the previous world is refused, naming both.
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/world-0.2.0.wasm");
    let output = webhook(&["policy", "check", old.to_str().unwrap()], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("built for secrets-webhook:policy/mutation@0.2.0")
            && stderr.contains(&format!(
                "this host runs {}",
                secrets_webhook::policy::WORLD
            )),
        "{stderr}"
    );

    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").unwrap();
    let output = webhook(&["policy", "check", broken.to_str().unwrap()], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a valid wasm component"));

    let version = stdout(&webhook(&["version"], None));
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
}
