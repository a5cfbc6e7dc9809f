//! waPC `validate`: a Kubewarden `ValidationRequest` (`{"request": <AdmissionRequest>,
//! "settings": {...}}`) in, a `ValidationResponse` out. The pod goes back whole as
//! `mutated_object`; Kubewarden diffs it against the request's object into the JSON Patch, the
//! same diff the component's host-facing patch is made with.

use kubewarden_policy_sdk::request::{KubernetesAdmissionRequest, ValidationRequest};
use kubewarden_policy_sdk::wapc_guest::CallResult;
use kubewarden_policy_sdk::{accept_request, mutate_request, reject_request};
use secrets_policy::Decision;
use serde_json::Value;

use crate::settings::PolicySettings;

pub fn validate(payload: &[u8]) -> CallResult {
    let validation: ValidationRequest<Value> = serde_json::from_slice(payload)
        .map_err(|err| format!("invalid ValidationRequest: {err}"))?;
    // policy-server checked the settings at start-up; failing here means a host bug, so it is an
    // error (a 500 for the API server), not a verdict on the pod.
    let settings = PolicySettings::from_value(&validation.settings)?;
    let request = validation.request;
    // The metadata's rules send only Pod CREATEs; anything else (a ClusterAdmissionPolicy with
    // wider rules, kwctl run on another request) is let through as the webhook does.
    if !is_pod_create(&request) {
        return accept_request();
    }
    match secrets_policy::decide(&settings.core, &request.object, &settings.globals) {
        Decision::Unchanged => accept_request(),
        Decision::Mutated(pod) => mutate_request(pod),
        Decision::Denied(denial) => {
            reject_request(Some(denial.message), Some(denial.code), None, None)
        }
    }
}

fn is_pod_create(request: &KubernetesAdmissionRequest) -> bool {
    request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE"
        && request.sub_resource.is_empty()
}
