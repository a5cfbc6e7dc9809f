//! What the fuzz targets share: the settings they run under, the global secrets, a native
//! [`Mutator`] for the host's admission code, and the invariants every mutation must keep.

use secrets_policy::annotations::{ANNOTATION_PREFIX, base32_encode};
use secrets_policy::{Decision, Outcome, Settings, decide, mutate_json};
use secrets_webhook::admission::Mutator;
use secrets_webhook::policy::{self, PolicyFailure, Review};
use serde_json::Value;

/// Every manager alone, ordered lists, another env prefix.
pub const SETTINGS: &[&str] = &[
    "",
    r#"{"secretManagerType": "Global"}"#,
    r#"{"secretManagerType": "K8s", "secretEnvVarPrefix": "_UNION_"}"#,
    r#"{"secretManagerType": "Vault", "vaultSecretManager": {"role": "flyte-tasks", "kvVersion": "1",
        "annotations": {"vault.hashicorp.com/agent-pre-populate-only": "false"}}}"#,
    r#"{"secretManagerType": "AWS"}"#,
    r#"{"secretManagerType": "GCP"}"#,
    r#"{"secretManagerType": "Azure"}"#,
    r#"{"secretManagerTypes": ["Vault", "K8s"]}"#,
    r#"{"secretManagerTypes": ["AWS", "GCP"]}"#,
    r#"{"secretManagerTypes": ["AWS", "K8s"]}"#,
    r#"{"secretManagerTypes": ["Azure", "GCP", "AWS", "Vault", "K8s"]}"#,
];

/// The pod annotation that picks the settings: their JSON, as the host hands them to the policy.
/// The seeds carry their fixture's config.yaml there.
pub const SETTINGS_ANNOTATION: &str = "fuzz/settings";

/// The settings for an input and a label for messages: the pod's `fuzz/settings` annotation when
/// it holds valid settings, else one of [`SETTINGS`] picked by a hash of the input, so that a seed
/// keeps its settings while libFuzzer's mutations wander across all of them.
pub fn settings_for(data: &[u8], pod: Option<&Value>) -> (String, Settings) {
    let own = pod
        .and_then(|pod| pod.pointer("/metadata/annotations/fuzz~1settings"))
        .and_then(Value::as_str);
    if let Some(json) = own
        && let Ok(settings) = Settings::from_json(json)
    {
        return (json.to_owned(), settings);
    }
    let hash = data.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let index = hash as usize % SETTINGS.len();
    let settings = Settings::from_json(SETTINGS[index]).expect("the fuzz settings are valid");
    (format!("#{index}"), settings)
}

/// The fixtures' global secrets (fixtures/global-secrets), and a few with awkward names.
pub fn globals(group: &str, key: &str) -> Option<String> {
    match (group, key) {
        ("db", "password") => Some("hunter2-global".to_owned()),
        ("api", "token") => Some("tok-123".to_owned()),
        ("MyGroup", "k") => Some("v\n\"é".to_owned()),
        ("projects/p1/secrets/tok", "latest") => Some(String::new()),
        _ => None,
    }
}

/// Annotations `fuzz/plain-s<N>` hold a secret descriptor in plain protobuf text; they become
/// `flyte.secrets/s<N>` (base32) before the policy sees the pod, so that libFuzzer can mutate
/// descriptors directly instead of through base32.
pub fn expand_plain_annotations(pod: &mut Value) {
    let Some(annotations) = pod
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let plain: Vec<(String, String)> = annotations
        .iter()
        .filter_map(|(key, value)| {
            let suffix = key.strip_prefix("fuzz/plain-s")?;
            Some((suffix.to_owned(), value.as_str()?.to_owned()))
        })
        .collect();
    for (suffix, text) in plain {
        annotations.remove(&format!("fuzz/plain-s{suffix}"));
        annotations.insert(
            format!("{ANNOTATION_PREFIX}{suffix}"),
            Value::String(base32_encode(text.as_bytes())),
        );
    }
}

/// Checks what must hold of any decision on `pod`: `mutate_json` agrees with `decide`; a
/// mutation's patch only adds, applies to the pod and gives the mutated pod; running the policy
/// on its own output changes nothing; the same input gives the same output.
pub fn check_decision(settings: &Settings, label: &str, pod: &Value, pod_json: &str) {
    let decision = decide(settings, pod, &globals);
    assert_eq!(
        decision,
        decide(settings, pod, &globals),
        "decide is not deterministic"
    );
    let outcome = mutate_json(settings, pod_json, &globals);
    assert_eq!(
        outcome,
        mutate_json(settings, pod_json, &globals),
        "mutate_json is not deterministic"
    );
    match (&decision, &outcome) {
        (Decision::Unchanged, Outcome::Unchanged) => {}
        (Decision::Denied(a), Outcome::Denied(b)) => assert_eq!(a, b),
        (Decision::Mutated(mutated), Outcome::Patched(patched)) => {
            assert!(
                !patched.injections.is_empty(),
                "settings {label}: a patch that injects nothing"
            );
            // The patch is recorded while editing; the diff is there for policies built on
            // `decide`. Both must hold.
            check_patch(settings, label, pod, &patched.patch, mutated);
            let diff = secrets_policy::mutation::diff(pod, mutated);
            check_patch(settings, label, pod, &diff, mutated);
        }
        _ => panic!("decide and mutate_json disagree: {decision:?} vs {outcome:?}"),
    }
}

/// `patch` only adds, applies to `pod`, gives `mutated`, and the policy leaves `mutated` alone.
pub fn check_patch(
    settings: &Settings,
    label: &str,
    pod: &Value,
    patch: &json_patch::Patch,
    mutated: &Value,
) {
    for op in &patch.0 {
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)),
            "settings {label}: the patch does more than add: {op}"
        );
    }
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch.0)
        .unwrap_or_else(|err| panic!("settings {label}: the patch does not apply: {err}"));
    assert_eq!(
        &patched, mutated,
        "settings {label}: the patch does not give the mutated pod"
    );
    let again = decide(settings, mutated, &globals);
    assert!(
        again == Decision::Unchanged,
        "settings {label}: not idempotent; the second run gave {again:?}"
    );
}

/// The library called natively behind the host's [`Mutator`] interface, translated exactly as the
/// wasm component (guest/component) translates it.
pub struct NativeMutator {
    pub settings: Settings,
}

impl Mutator for NativeMutator {
    fn mutate(&self, review: &Review) -> Result<policy::Outcome, PolicyFailure> {
        policy::outcome_of(mutate_json(&self.settings, &review.object, &globals)).map_err(|err| {
            PolicyFailure::Error {
                digest: "native".to_owned(),
                reason: err.to_string(),
            }
        })
    }
}
