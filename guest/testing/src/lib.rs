//! A policy that misbehaves on purpose, chosen by its settings `{"hostile": "<how>"}`, so the host's
//! tests can check that the sandbox holds: `loop`, `memory`, `trap`, `huge`, `many-injections`,
//! `bad-patch`, or nothing (a well-behaved policy that changes nothing).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../wit",
    world: "mutation",
});

use exports::secrets_webhook::policy::policy::Guest;
use secrets_webhook::policy::types::{Injection, Outcome, Patched, Review};

struct Hostile;

fn behaviour(settings: &str) -> &str {
    [
        "loop",
        "memory",
        "trap",
        "huge",
        "many-injections",
        "bad-patch",
    ]
    .into_iter()
    .find(|how| settings.contains(&format!("\"hostile\":\"{how}\"")))
    .unwrap_or("")
}

impl Guest for Hostile {
    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn mutate(settings: String, review: Review) -> Result<Outcome, String> {
        // The self-check probe must pass, or the host would never put this policy in service.
        if review.uid == "secrets-webhook-probe" {
            return Ok(Outcome::Unchanged(Vec::new()));
        }
        match behaviour(&settings) {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => core::arch::wasm32::unreachable(),
            "huge" => Ok(Outcome::Patched(Patched {
                patch: " ".repeat(12 << 20),
                warnings: Vec::new(),
                injections: Vec::new(),
            })),
            // Small in the guest (24 bytes each), three Strings each once lifted into the host.
            "many-injections" => {
                let mut injections = Vec::with_capacity(500_000);
                injections.resize_with(500_000, || Injection {
                    group: String::new(),
                    key: String::new(),
                    manager: String::new(),
                });
                Ok(Outcome::Patched(Patched {
                    patch: "[]".to_owned(),
                    warnings: Vec::new(),
                    injections,
                }))
            }
            "bad-patch" => Ok(Outcome::Patched(Patched {
                patch: "{\"not\": \"a patch\"}".to_owned(),
                warnings: Vec::new(),
                injections: Vec::new(),
            })),
            _ => Ok(Outcome::Unchanged(Vec::new())),
        }
    }
}

export!(Hostile);
