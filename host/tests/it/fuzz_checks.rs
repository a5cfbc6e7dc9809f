//! The fuzz targets' checks in `cargo test`: fuzz/src/lib.rs (the targets' bodies) is compiled
//! here as a module and run, without libFuzzer, on the inputs that once broke a target
//! (fuzz/regressions/<target>/) and on every fixture. The fuzz crate is its own workspace that CI
//! does not build; this keeps its checks compiling and passing.

#[path = "../../../fuzz/src/lib.rs"]
mod fuzz;

use std::path::{Path, PathBuf};

use secrets_webhook::config::{Config, Overrides};
use serde_json::Value;

use crate::common::{self, fixtures};

fn regression_files(target: &str) -> Vec<PathBuf> {
    let dir = common::workspace().join("fuzz/regressions").join(target);
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

/// Runs `check` on each input; returns the ones it panics on.
fn failing(inputs: Vec<(String, Vec<u8>)>, check: fn(&[u8])) -> Vec<String> {
    inputs
        .into_iter()
        .filter(|(_, data)| std::panic::catch_unwind(|| check(data)).is_err())
        .map(|(name, _)| name)
        .collect()
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = regression_files(target)
        .into_iter()
        .map(|file| (file.display().to_string(), std::fs::read(&file).unwrap()))
        .collect();
    let failed = failing(inputs, check);
    assert!(failed.is_empty(), "failing again: {failed:?}");
}

#[test]
fn regressions_decode_annotation() {
    replay("decode_annotation", fuzz::decode_annotation);
}

#[test]
fn regressions_mutate() {
    replay("mutate", fuzz::mutate);
}

#[test]
fn regressions_admission_review() {
    replay("admission_review", fuzz::admission_review);
}

/// Every fixture's review, with its settings in the pod's `fuzz/settings` annotation as the seed
/// corpus carries them (fuzz/seed_corpus.py).
fn fixture_reviews() -> Vec<(String, Value)> {
    let mut reviews = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("review.json")) else {
            continue;
        };
        let mut review: Value = serde_json::from_str(&text).unwrap();
        let config = dir.join("config.yaml");
        let config = config.exists().then_some(config.as_path());
        let settings = Config::load(config, &Overrides::default())
            .unwrap()
            .settings;
        if let Some(annotations) = review
            .pointer_mut("/request/object/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.insert(fuzz::SETTINGS_ANNOTATION.to_owned(), settings.into());
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        reviews.push((name, review));
    }
    assert!(reviews.len() >= 15, "{} fixtures", reviews.len());
    reviews.sort_by(|a, b| a.0.cmp(&b.0));
    reviews
}

#[test]
fn every_fixture_passes_the_fuzz_checks() {
    let reviews = fixture_reviews();
    let bodies = reviews
        .iter()
        .map(|(name, review)| (name.clone(), serde_json::to_vec(review).unwrap()))
        .collect();
    let pods = reviews
        .iter()
        .map(|(name, review)| {
            let pod = serde_json::to_vec(&review["request"]["object"]).unwrap();
            (name.clone(), pod)
        })
        .collect();
    let values = reviews
        .iter()
        .flat_map(|(name, review)| {
            let annotations = review["request"]["object"]["metadata"]["annotations"].as_object();
            annotations
                .into_iter()
                .flatten()
                .filter_map(|(key, value)| Some((format!("{name} {key}"), value.as_str()?)))
                .map(|(name, value)| (name, value.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let failed = [
        failing(bodies, fuzz::admission_review),
        failing(pods, fuzz::mutate),
        failing(values, fuzz::decode_annotation),
    ]
    .concat();
    assert!(
        failed.is_empty(),
        "fixtures failing the fuzz checks: {failed:?}"
    );
}
