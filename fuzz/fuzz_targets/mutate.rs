//! The whole policy on arbitrary pods: `decide` and `mutate_json` on any JSON, under the settings
//! in the pod's `fuzz/settings` annotation or picked by the input's hash. Annotations
//! `fuzz/plain-s<N>` carry descriptors in plain text (see `expand_plain_annotations`). A
//! mutation's patch must only add, apply, give the mutated pod, be idempotent and deterministic
//! (`check_decision`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_webhook_fuzz::{check_decision, expand_plain_annotations, settings_for};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let (_, settings) = settings_for(data, None);
        // Not even text: mutate_json must still answer (a denial).
        let lossy = String::from_utf8_lossy(data);
        let _ = secrets_policy::mutate_json(&settings, &lossy, &secrets_webhook_fuzz::globals);
        return;
    };
    let Ok(mut pod) = serde_json::from_str::<Value>(text) else {
        let (_, settings) = settings_for(data, None);
        let outcome = secrets_policy::mutate_json(&settings, text, &secrets_webhook_fuzz::globals);
        assert!(
            matches!(outcome, secrets_policy::Outcome::Denied(_)),
            "{outcome:?}"
        );
        return;
    };
    let (label, settings) = settings_for(data, Some(&pod));
    expand_plain_annotations(&mut pod);
    let pod_json = pod.to_string();
    check_decision(&settings, &label, &pod, &pod_json);
});
