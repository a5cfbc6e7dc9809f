//! Every fixture through the real server over TLS, running the real embedded mutation.wasm, and
//! through the `mutate` command. The server run also checks the injections it counted by manager.
//! The Embedded manager's fixtures (those with a `sources.json`) need an API server: they run in
//! e2e/tests/cluster/embedded_cluster.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::fixture::{
    Fixture, check, check_injected, counted_since, injections, load_fixtures,
};
use crate::common::{Options, TestServer, fixtures};

/// The fixtures that need no secret store.
fn storeless() -> Vec<Fixture> {
    load_fixtures()
        .into_iter()
        .filter(|fixture| fixture.sources.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_through_the_server_over_tls() {
    let all = storeless();
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
    for fixture in storeless() {
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
