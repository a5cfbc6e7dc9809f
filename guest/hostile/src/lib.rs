//! A policy that misbehaves on purpose, chosen by its settings `{"hostile": "<how>"}`, so the host's
//! tests can check that the sandbox holds: `loop`, `memory`, `trap`, `huge`, `many-injections`,
//! `bad-patch`, `remember` (tries to carry state from one review to the next), `mirror-unasked`
//! (asks for a mirror of a secret it never looked up), `pull-unasked` (asks to copy an image pull
//! Secret it was never told of), `other-scope` (reads another project's secret and puts its
//! value in the answer, as a Plaintext policy would), or nothing (a well-behaved policy that
//! changes nothing).
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../wit",
    world: "mutation",
});

use exports::secrets_webhook::policy::policy::Guest;
use secrets_webhook::policy::types::{self, Injection, Outcome, Patched, Review};

struct Hostile;

fn behaviour(settings: &str) -> &str {
    [
        "loop",
        "memory",
        "trap",
        "huge",
        "many-injections",
        "bad-patch",
        "mirror-unasked",
        "pull-unasked",
        "other-scope",
        "remember-and-look",
        "remember",
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
                mirrors: Vec::new(),
                pull_secrets: Vec::new(),
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
                    mirrors: Vec::new(),
                    pull_secrets: Vec::new(),
                }))
            }
            "remember" => Ok(remember(&review.namespace, false)),
            "remember-and-look" => Ok(remember(&review.namespace, true)),
            "bad-patch" => Ok(Outcome::Patched(Patched {
                patch: "{\"not\": \"a patch\"}".to_owned(),
                warnings: Vec::new(),
                injections: Vec::new(),
                mirrors: Vec::new(),
                pull_secrets: Vec::new(),
            })),
            "mirror-unasked" => Ok(Outcome::Patched(Patched {
                patch: "[]".to_owned(),
                warnings: Vec::new(),
                injections: Vec::new(),
                mirrors: vec!["u__org__acme__domain____project____key__db".to_owned()],
                pull_secrets: Vec::new(),
            })),
            "pull-unasked" => Ok(Outcome::Patched(Patched {
                patch: "[]".to_owned(),
                warnings: Vec::new(),
                injections: Vec::new(),
                mirrors: Vec::new(),
                pull_secrets: vec!["img-pull-0123456789abcdef".to_owned()],
            })),
            "other-scope" => Ok(other_scope()),
            _ => Ok(Outcome::Unchanged(Vec::new())),
        }
    }
}

/// Project `payroll`'s secret, asked for whatever the review's namespace: a value read ends up
/// in the answer (a warning), an error in a denial.
fn other_scope() -> Outcome {
    let id = "u__org__acme__domain__development__project__payroll__key__db";
    match secrets_webhook::policy::secret_store::lookup(id) {
        Ok(Some(value)) => Outcome::Unchanged(vec![format!(
            "read {id}: {}",
            String::from_utf8_lossy(&value)
        )]),
        Ok(None) => Outcome::Unchanged(vec![format!("no {id}")]),
        Err(reason) => Outcome::Denied(types::Denied {
            code: 403,
            message: reason,
        }),
    }
}

/// Where `remember` leaves its marker in static memory; the heap gets a copy too.
static mut MARK: [u8; 256] = [0; 256];

/// Looks for the marker an earlier review left (the review's namespace reversed) anywhere in linear
/// memory, then leaves it in a static and on the heap for the next review to find. Denies, naming
/// where, if it found one. The marker is never built before the search (the search reads the
/// namespace backwards), so the search cannot find its own needle; `look_after_leaving` searches
/// after leaving it, to show that the search finds what is there.
fn remember(namespace: &str, look_after_leaving: bool) -> Outcome {
    let needle = namespace.as_bytes();
    let found = if look_after_leaving {
        None
    } else {
        search(needle)
    };
    let marker: Vec<u8> = needle.iter().rev().copied().collect();
    let length = marker.len().min(256);
    // SAFETY: one call at a time in this instance, and nothing else touches MARK.
    unsafe {
        (&raw mut MARK)
            .cast::<u8>()
            .copy_from(marker.as_ptr(), length)
    };
    let kept = std::hint::black_box(Box::leak(marker.into_boxed_slice()));
    let found = found.or_else(|| look_after_leaving.then(|| search(needle)).flatten());
    std::hint::black_box(kept);
    match found {
        Some(address) => Outcome::Denied(types::Denied {
            code: 409,
            message: format!("found an earlier review's marker at address {address:#x}"),
        }),
        None => Outcome::Unchanged(Vec::new()),
    }
}

/// The first address where linear memory holds `needle` reversed.
fn search(needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let size = core::arch::wasm32::memory_size(0) * 65536;
    let byte = |address: usize| {
        // SAFETY: every address below memory.size is readable linear memory in wasm.
        unsafe { core::ptr::read_volatile(address as *const u8) }
    };
    (0..size.saturating_sub(needle.len()))
        .find(|&start| (0..needle.len()).all(|i| byte(start + i) == needle[needle.len() - 1 - i]))
}

export!(Hostile);
