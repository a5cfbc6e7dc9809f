//! Turns `metadata.yml` into the JSON that `src/lib.rs` places in the module's
//! `io.kubewarden.metadata` custom section: the encoding kwctl's `annotate` writes and
//! policy-evaluator reads (serde JSON of its `Metadata`, camelCase keys).
//!
//! The file is checked here against what Kubewarden refuses or silently ignores, so a typo fails
//! the build instead of surfacing as a policy that policy-server will not load or will not let
//! mutate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The fields of Kubewarden's metadata this policy uses. Unknown keys are refused: Kubewarden
/// would ignore them, and an ignored `mutating` is a policy whose patches are rejected.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    protocol_version: String,
    execution_mode: String,
    mutating: bool,
    #[serde(default)]
    #[allow(dead_code)] // Read only for the unknown-field check.
    background_audit: Option<bool>,
    rules: Vec<Rule>,
    #[serde(default)]
    #[allow(dead_code)] // Read only to check that every value is a string.
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    api_groups: Vec<String>,
    api_versions: Vec<String>,
    resources: Vec<String>,
    operations: Vec<String>,
}

fn main() {
    let path = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("metadata.yml");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|err| panic!("{}: not YAML: {err}", path.display()));
    let metadata =
        Metadata::deserialize(&yaml).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    if let Err(problem) = check(&metadata) {
        panic!("{}: {problem}", path.display());
    }
    // The YAML as written, not re-serialized from the struct, so the section holds exactly what
    // the file says (including keys this check does not model in detail).
    let json = serde_json::to_vec(&yaml).expect("YAML with string keys converts to JSON");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("metadata.json"), json).expect("OUT_DIR is writable");
}

fn check(metadata: &Metadata) -> Result<(), String> {
    // waPC policies must declare protocol v1, and must answer `protocol_version` with the same.
    if metadata.protocol_version != "v1" {
        return Err(format!(
            "protocolVersion is {:?}; this policy speaks \"v1\"",
            metadata.protocol_version
        ));
    }
    if metadata.execution_mode != "kubewarden-wapc" {
        return Err(format!(
            "executionMode is {:?}; this policy is a waPC module (\"kubewarden-wapc\")",
            metadata.execution_mode
        ));
    }
    if !metadata.mutating {
        return Err("mutating must be true: the policy's answer is a mutated pod".to_owned());
    }
    if metadata.rules.is_empty() {
        return Err("rules is empty".to_owned());
    }
    for rule in &metadata.rules {
        let lists = [
            ("apiGroups", &rule.api_groups),
            ("apiVersions", &rule.api_versions),
            ("resources", &rule.resources),
            ("operations", &rule.operations),
        ];
        if let Some((name, _)) = lists.iter().find(|(_, list)| list.is_empty()) {
            return Err(format!("a rule has no {name}"));
        }
        if let Some(op) = rule
            .operations
            .iter()
            .find(|op| !["CREATE", "UPDATE", "DELETE", "CONNECT", "*"].contains(&op.as_str()))
        {
            return Err(format!("unknown operation {op:?} in a rule"));
        }
    }
    Ok(())
}
