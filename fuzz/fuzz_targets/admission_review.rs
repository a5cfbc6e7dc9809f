//! The host's AdmissionReview handling (`secrets_webhook::admission::review`) on arbitrary request
//! bodies, with the policy library called natively behind it. Every answer must be a well-formed
//! AdmissionReview for the request's uid; a patch must be base64 of a JSON Patch that only adds,
//! applies to the pod, and leaves nothing for a second run to do.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use secrets_webhook::admission::{OnError, Verdict, review};
use secrets_webhook_fuzz::{NativeMutator, check_patch, settings_for};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The host reads reviews with serde_json's borrowing structs, which skip the fields they do
    // not know without checking their UTF-8 (fuzz/regressions/admission_review/
    // invalid-utf8-in-ignored-field); the object it hands on is valid UTF-8, so reading the body
    // lossily gives the same object.
    let request: Option<Value> = serde_json::from_str(&String::from_utf8_lossy(data)).ok();
    let object = request.as_ref().map(|r| &r["request"]["object"]);
    let (label, settings) = settings_for(data, object);
    let on_error = if data.len() % 2 == 0 {
        OnError::Deny
    } else {
        OnError::Allow
    };
    let mutator = NativeMutator { settings };
    let reply = review(data, &mutator, on_error);

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
});
