//! The fixtures of `fixtures/`: loading them, and checking an AdmissionReview response against
//! what each expects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use super::{fixtures, patch_of};

pub struct Fixture {
    pub name: String,
    pub review: Value,
    pub expected: Value,
    pub config: Option<PathBuf>,
    /// Source secrets by Flyte 2 secret id (Embedded manager fixtures only).
    pub sources: Option<BTreeMap<String, String>>,
    /// Image pull Secrets in the source namespace, as v1 Secrets (Embedded manager fixtures only).
    pub pull_secrets: Vec<Secret>,
}

pub fn load_fixtures() -> Vec<Fixture> {
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
        let sources = dir
            .join("sources.json")
            .exists()
            .then(|| serde_json::from_value(read("sources.json")).unwrap());
        let pull_secrets = match dir.join("pull-secrets.json").exists() {
            true => serde_json::from_value(read("pull-secrets.json")).unwrap(),
            false => Vec::new(),
        };
        all.push(Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            review: read("review.json"),
            expected: read("expected.json"),
            config: config.exists().then_some(config),
            sources,
            pull_secrets,
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
pub fn check(fixture: &Fixture, response: &Value) -> Result<(), String> {
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
            // Only Flyte 2's Embedded manager moves and replaces env vars, as Flyte 2 does.
            for op in &patch.0 {
                if fixture.sources.is_none() && !matches!(op, json_patch::PatchOperation::Add(_)) {
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
pub fn check_injected(
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
pub fn injections(exposition: &str) -> BTreeMap<String, u64> {
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
pub fn counted_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(manager, n)| (manager.clone(), n - before.get(manager).unwrap_or(&0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
