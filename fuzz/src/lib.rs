//! The fuzz targets' bodies ([`decode_annotation`], [`mutate`], [`admission_review`]) and what
//! they share: the settings they run under, the global secrets, a native [`Mutator`] for the
//! host's admission code, and the invariants every mutation must keep.
//!
//! `fuzz_targets/*.rs` only hand libFuzzer's bytes to these functions; host/tests/it/fuzz_checks.rs
//! includes this file to replay fuzz/regressions and the fixtures through the same checks in
//! `cargo test`, so the checks cannot drift from CI.

use base64::Engine as _;
use secrets_policy::annotations::{ANNOTATION_PREFIX, base32_encode, decode_value, encode_value};
use secrets_policy::{Decision, Outcome, Secret, Settings, decide, mutate_json, prototext};
use secrets_webhook::admission::{Verdict, review};
use secrets_webhook::config::OnError;
use secrets_webhook::policy::{self, Mutation, Mutator, Review};
use serde_json::Value;

/// The annotation decoder, base32 → UTF-8 → protobuf text → `Secret`, on arbitrary bytes. Besides
/// not panicking: whatever decodes re-encodes to a value that decodes to the same secret, and
/// whatever parses as text prints to text that parses to the same secret.
pub fn decode_annotation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same bytes as an annotation value (mostly base32) and as descriptor text.
    if let Ok(secret) = decode_value(text) {
        check_encodes(&secret);
    }
    if let Ok(secret) = prototext::parse(text) {
        let printed = prototext::print(&secret);
        assert_eq!(
            prototext::parse(&printed).as_ref(),
            Ok(&secret),
            "{printed:?}"
        );
        check_encodes(&secret);
    }
}

/// A secret encodes to a value that decodes to it, unless the value would pass the size limit
/// (the printed text escapes each non-ASCII byte as four, so a descriptor that decodes may not
/// encode).
fn check_encodes(secret: &Secret) {
    match encode_value(secret) {
        Ok(encoded) => assert_eq!(decode_value(&encoded).as_ref(), Ok(secret), "{encoded}"),
        Err(err) => assert!(err.contains("cannot exceed"), "{err}"),
    }
}

/// The whole policy on an arbitrary pod: `decide` and `mutate_json` on any JSON, under the
/// settings in the pod's `fuzz/settings` annotation or picked by the input's hash. Annotations
/// `fuzz/plain-s<N>` carry descriptors in plain text ([`expand_plain_annotations`]). A mutation's
/// patch must only add, apply, give the mutated pod, be idempotent and deterministic
/// ([`check_decision`]).
pub fn mutate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        let (_, settings) = settings_for(data, None);
        // Not even text: mutate_json must still answer (a denial).
        let lossy = String::from_utf8_lossy(data);
        let _ = mutate_json(&settings, &lossy, &globals);
        return;
    };
    let Ok(mut pod) = serde_json::from_str::<Value>(text) else {
        let (_, settings) = settings_for(data, None);
        let outcome = mutate_json(&settings, text, &globals);
        assert!(matches!(outcome, Outcome::Denied(_)), "{outcome:?}");
        return;
    };
    let (label, settings) = settings_for(data, Some(&pod));
    expand_plain_annotations(&mut pod);
    let pod_json = pod.to_string();
    check_decision(&settings, &label, &pod, &pod_json);
}

/// The host's AdmissionReview handling (`secrets_webhook::admission::review`) on an arbitrary
/// request body, with the policy library called natively behind it. Every answer must be a
/// well-formed AdmissionReview for the request's uid; a patch must be base64 of a JSON Patch
/// that only adds, applies to the pod, and leaves nothing for a second run to do.
pub fn admission_review(data: &[u8]) {
    // The host reads reviews with serde_json's borrowing structs, which skip the fields they do
    // not know without checking their UTF-8 (fuzz/regressions/admission_review/
    // invalid-utf8-in-ignored-field); the object it hands on is valid UTF-8, so reading the body
    // lossily gives the same object.
    let request: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(data)).ok();
    let object = request.as_ref().map(|r| &r["request"]["object"]);
    let (label, settings) = settings_for(data, object);
    let on_error = if data.len().is_multiple_of(2) {
        OnError::Deny
    } else {
        OnError::Allow
    };
    let mutator = NativeMutator { settings };
    let reply = policy::block_on(review(data, &mutator, on_error, &policy::Call::unbounded()));

    let body: Value = serde_json::from_slice(&reply.body).expect("the reply is JSON");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let response = &body["response"];
    assert_eq!(response["uid"], reply.uid.as_str());
    let allowed = response["allowed"].as_bool().expect("allowed is a bool");
    assert_eq!(reply.http_status == 400, reply.verdict == Verdict::Invalid);
    assert_eq!(response.get("status").is_some(), !allowed);
    let patch = response.get("patch");
    assert_eq!(patch.is_some(), reply.verdict == Verdict::Patched);
    assert_eq!(patch.is_some(), response.get("patchType").is_some());
    assert_eq!(patch.is_some(), !reply.injections.is_empty());
    if reply.verdict == Verdict::Invalid {
        assert!(!allowed);
        return;
    }
    assert_eq!(reply.http_status, 200);
    if on_error == OnError::Allow {
        assert!(allowed, "on_error allow refused a pod: {response}");
    }
    let Some(patch) = patch else {
        return;
    };
    assert!(allowed);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("the patch is a string"))
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
    assert!(!patch.0.is_empty(), "an empty patch is sent as no patch");
    // The review parsed, so its object is JSON; the policy saw exactly this text.
    let pod = object.expect("a patched review is JSON");
    let mut mutated = pod.clone();
    json_patch::patch(&mut mutated, &patch.0).expect("the patch applies to the pod");
    check_patch(&mutator.settings, &label, pod, &patch, &mutated);
}

/// `/spec/containers/<n>/env/<m>` or `/spec/initContainers/<n>/env/<m>`.
fn is_env_entry(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["", "spec", "containers" | "initContainers", n, "env", m]
        if n.parse::<usize>().is_ok() && m.parse::<usize>().is_ok())
}

/// Every manager alone, ordered lists, another env prefix, Flyte 2's Global placement.
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
    r#"{"secretManagerType": "K8s", "globalSecretsStyle": "Flyte2"}"#,
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
            // `decide`. Both must hold (a diff of an env prepended to, as Flyte 2 places
            // variables, replaces entries instead of inserting, so it is held to adds only where
            // variables are appended).
            let ours: json_patch::Patch =
                serde_json::from_str(&patched.patch).expect("the patch is a JSON Patch");
            check_patch(settings, label, pod, &ours, mutated);
            let diff = secrets_policy::mutation::diff(pod, mutated);
            let prepends = settings.uses_embedded()
                || settings.global_style == secrets_policy::settings::GlobalStyle::Flyte2;
            if !prepends {
                check_patch(settings, label, pod, &diff, mutated);
            } else {
                let mut applied = pod.clone();
                json_patch::patch(&mut applied, &diff.0).expect("the diff applies");
                assert_eq!(
                    &applied, mutated,
                    "settings {label}: the diff does not give the pod"
                );
            }
        }
        _ => panic!("decide and mutate_json disagree: {decision:?} vs {outcome:?}"),
    }
}

/// `patch` only adds (or moves an env var out of Flyte 2's way), applies to `pod`, gives
/// `mutated`, and the policy leaves `mutated` alone.
pub fn check_patch(
    settings: &Settings,
    label: &str,
    pod: &Value,
    patch: &json_patch::Patch,
    mutated: &Value,
) {
    // Flyte 2's placement (Embedded, Global in `globalSecretsStyle: Flyte2`) moves a variable of
    // the same name out of the way: the only removal a patch may hold, and no name is lost.
    for op in &patch.0 {
        let env_removal = matches!(op, json_patch::PatchOperation::Remove(remove)
            if is_env_entry(&remove.path.to_string()));
        assert!(
            matches!(op, json_patch::PatchOperation::Add(_)) || env_removal,
            "settings {label}: the patch does more than add: {op}"
        );
    }
    for field in ["initContainers", "containers"] {
        let before = pod["spec"][field]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (index, container) in before.iter().enumerate() {
            let names = |container: &Value| -> Vec<Value> {
                let env = container["env"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                env.iter().map(|var| var["name"].clone()).collect()
            };
            let kept = names(&mutated["spec"][field][index]);
            if let Some(lost) = names(container).iter().find(|name| !kept.contains(name)) {
                panic!("settings {label}: {field}[{index}] lost env var {lost}");
            }
        }
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
    fn mutate<'a>(&'a self, review: &'a Review, _call: &'a policy::Call) -> Mutation<'a> {
        let outcome = policy::outcome_of(mutate_json(&self.settings, &review.object, &globals));
        Box::pin(std::future::ready(Ok(outcome)))
    }
}
