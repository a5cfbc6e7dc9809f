//! Every fixture through the real server over TLS, running the real embedded mutation.wasm, and
//! through the `mutate` command. The server run also checks the injections it counted by manager.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Options, TestServer, fixtures, patch_of};
use serde_json::Value;

struct Fixture {
    name: String,
    review: Value,
    expected: Value,
    config: Option<PathBuf>,
}

fn load_fixtures() -> Vec<Fixture> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("review.json").exists() {
            continue;
        }
        let read = |name: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap())
                .unwrap_or_else(|err| panic!("{}/{name}: {err}", dir.display()))
        };
        let config = dir.join("config.yaml");
        all.push(Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            review: read("review.json"),
            expected: read("expected.json"),
            config: config.exists().then_some(config),
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        all.len() >= 15,
        "expected at least 15 fixtures, found {}",
        all.len()
    );
    all
}

/// Checks one AdmissionReview response against a fixture's expectation; returns what is wrong.
fn check(fixture: &Fixture, response: &Value) -> Result<(), String> {
    let expected = &fixture.expected;
    let answer = &response["response"];
    if response["apiVersion"] != "admission.k8s.io/v1" || response["kind"] != "AdmissionReview" {
        return Err(format!("not an AdmissionReview: {response}"));
    }
    if answer["uid"] != fixture.review["request"]["uid"] {
        return Err(format!("uid not echoed: {}", answer["uid"]));
    }
    if answer["allowed"] != expected["allowed"] {
        return Err(format!(
            "allowed is {}, expected {}: {answer}",
            answer["allowed"], expected["allowed"]
        ));
    }
    if let Some(code) = expected.get("code")
        && &answer["status"]["code"] != code
    {
        return Err(format!(
            "status code {}, expected {code}",
            answer["status"]["code"]
        ));
    }
    let message = answer["status"]["message"].as_str().unwrap_or("");
    for needle in expected["messageContains"].as_array().into_iter().flatten() {
        let needle = needle.as_str().unwrap();
        if !message.contains(needle) {
            return Err(format!("message {message:?} lacks {needle:?}"));
        }
    }
    let warnings: Vec<&str> = answer["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for needle in expected["warningsContain"].as_array().into_iter().flatten() {
        let needle = needle.as_str().unwrap();
        if !warnings.iter().any(|w| w.contains(needle)) {
            return Err(format!("warnings {warnings:?} lack {needle:?}"));
        }
    }
    match (expected.get("pod"), patch_of(response)) {
        (Some(pod), Some(patch)) => {
            if answer["patchType"] != "JSONPatch" {
                return Err(format!("patchType is {}", answer["patchType"]));
            }
            for op in &patch.0 {
                if !matches!(op, json_patch::PatchOperation::Add(_)) {
                    return Err(format!("the patch does more than add: {op:?}"));
                }
            }
            let mut patched = fixture.review["request"]["object"].clone();
            json_patch::patch(&mut patched, &patch)
                .map_err(|err| format!("patch does not apply: {err}"))?;
            if &patched != pod {
                return Err(format!(
                    "patched pod differs\n--- got\n{}\n--- expected\n{}",
                    serde_json::to_string_pretty(&patched).unwrap(),
                    serde_json::to_string_pretty(pod).unwrap()
                ));
            }
        }
        (Some(_), None) => return Err("expected a patch, got none".to_owned()),
        (None, Some(patch)) => return Err(format!("expected no patch, got {patch:?}")),
        (None, None) => {
            if !answer["patchType"].is_null() {
                return Err("patchType without a patch".to_owned());
            }
        }
    }
    Ok(())
}

/// Checks injections by manager against the fixture's `injected` (none when absent).
fn check_injected(
    fixture: &Fixture,
    source: &str,
    got: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let expected: BTreeMap<String, u64> =
        serde_json::from_value(fixture.expected["injected"].clone()).unwrap_or_default();
    if got == &expected {
        return Ok(());
    }
    Err(format!(
        "{}: {source} injections {got:?}, expected {expected:?}",
        fixture.name
    ))
}

/// `secrets_webhook_injections_total` by manager, from the Prometheus exposition.
fn injections(exposition: &str) -> BTreeMap<String, u64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("secrets_webhook_injections_total{manager=\""))
        .filter_map(|rest| {
            let (manager, count) = rest.split_once("\"} ")?;
            Some((manager.to_owned(), count.parse().ok()?))
        })
        .collect()
}

/// What each counter grew by, leaving out those that did not.
fn counted_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(manager, n)| (manager.clone(), n - before.get(manager).unwrap_or(&0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_through_the_server_over_tls() {
    let all = load_fixtures();
    let mut by_config: BTreeMap<Option<PathBuf>, Vec<&Fixture>> = BTreeMap::new();
    for fixture in &all {
        by_config
            .entry(fixture.config.clone())
            .or_default()
            .push(fixture);
    }
    let mut failures = Vec::new();
    for (config, fixtures) in by_config {
        let server = TestServer::start(Options {
            config,
            ..Options::default()
        })
        .await;
        let mut h1 = server.client().await;
        let mut h2 = server.client_h2().await;
        for (index, fixture) in fixtures.into_iter().enumerate() {
            let body = serde_json::to_vec(&fixture.review).unwrap();
            // Alternate protocols and Flyte's path so both are exercised by every kind of fixture.
            let (client, path) = if index % 2 == 0 {
                (&mut h1, "/mutate")
            } else {
                (&mut h2, "/mutate--v1-pod")
            };
            let before = injections(&server.metrics.encode());
            let (status, response) = client.post(path, body).await;
            if status != 200 {
                failures.push(format!("{}: HTTP {status}: {response}", fixture.name));
            } else if let Err(why) = check(fixture, &response) {
                failures.push(format!("{}: {why}", fixture.name));
            }
            let counted = counted_since(&before, &injections(&server.metrics.encode()));
            if let Err(why) = check_injected(fixture, "the metric counted", &counted) {
                failures.push(why);
            }
        }
        server.stop().await;
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The same fixtures through `secrets-webhook mutate --output pod`.
#[test]
fn every_fixture_through_the_mutate_command() {
    let binary = Path::new(env!("CARGO_BIN_EXE_secrets-webhook"));
    let mut failures = Vec::new();
    for fixture in load_fixtures() {
        let dir = fixtures().join(&fixture.name);
        let mut command = std::process::Command::new(binary);
        command
            .args(["mutate", "--output", "review", "--global-secrets-dir"])
            .arg(fixtures().join("global-secrets"))
            .arg(dir.join("review.json"))
            .env("RUST_LOG", "warn");
        if let Some(config) = &fixture.config {
            command.arg("--config").arg(config);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let response: Value = match serde_json::from_str(&stdout) {
            Ok(response) => response,
            Err(err) => {
                failures.push(format!(
                    "{}: unreadable output ({err}): {stdout}\n{}",
                    fixture.name,
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
        };
        let denied = fixture.expected["allowed"] == false;
        let code = output.status.code();
        if code != Some(if denied { 2 } else { 0 }) {
            failures.push(format!("{}: exit code {code:?}", fixture.name));
        }
        if let Err(why) = check(&fixture, &response) {
            failures.push(format!("{}: {why}", fixture.name));
        }
        // `injected <group>/<key> (<Manager>)` on stderr, one line per secret.
        let mut injected = BTreeMap::<String, u64>::new();
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            let manager = line
                .strip_prefix("injected ")
                .and_then(|rest| rest.rsplit_once(" ("))
                .and_then(|(_, manager)| manager.strip_suffix(')'));
            if let Some(manager) = manager {
                *injected.entry(manager.to_lowercase()).or_default() += 1;
            }
        }
        if let Err(why) = check_injected(&fixture, "`mutate` reported", &injected) {
            failures.push(why);
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
