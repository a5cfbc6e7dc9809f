//! One pod in, one decision out: decode the requests, inject each secret with the first manager
//! that can, and express the result as a JSON Patch against the pod exactly as it arrived.

use serde_json::{Map, Value};

use crate::annotations::{self, Request};
use crate::inject::{self, Context, GlobalSecrets, InjectError};
use crate::pod::{self, MalformedPod};
use crate::settings::Settings;

/// What should happen to a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to inject, or everything already injected.
    Unchanged,
    /// The pod with its secrets injected.
    Mutated(Value),
    /// The pod's secrets cannot be injected.
    Denied(Denial),
}

/// A pod the policy refuses, with a message for its creator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: u16,
    pub message: String,
}

impl Denial {
    fn bad_request(message: String) -> Self {
        Self { code: 400, message }
    }
}

impl From<MalformedPod> for Denial {
    fn from(err: MalformedPod) -> Self {
        Self::bad_request(err.to_string())
    }
}

/// The same decision as a JSON Patch, the form an AdmissionResponse carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Unchanged,
    Patched(json_patch::Patch),
    Denied(Denial),
}

/// Decides what to do with `pod` (a Pod object).
pub fn decide(settings: &Settings, pod: &Value, globals: &dyn GlobalSecrets) -> Decision {
    let Some(object) = pod.as_object() else {
        return Decision::Denied(MalformedPod("the object is not a JSON object".to_owned()).into());
    };
    if !annotations::has_opt_in_label(pod::metadata_map(object, "labels")) {
        return Decision::Unchanged;
    }
    let Some(annotations) = pod::metadata_map(object, "annotations") else {
        return Decision::Unchanged;
    };
    let requests = match annotations::decode_requests(annotations) {
        Ok(requests) if requests.is_empty() => return Decision::Unchanged,
        Ok(requests) => requests,
        Err(err) => {
            return Decision::Denied(Denial::bad_request(format!(
                "failed to unmarshal secrets from pod annotations: {err}"
            )));
        }
    };
    let mut mutated = object.clone();
    let cx = Context { settings, globals };
    for request in &requests {
        if let Err(denial) = inject_one(&cx, &mut mutated, request) {
            return Decision::Denied(denial);
        }
    }
    if &mutated == object {
        Decision::Unchanged
    } else {
        Decision::Mutated(Value::Object(mutated))
    }
}

/// Injects one request with the first manager that accepts it, or explains every refusal.
fn inject_one(
    cx: &Context<'_>,
    pod: &mut Map<String, Value>,
    request: &Request,
) -> Result<(), Denial> {
    let mut refusals = Vec::new();
    for manager in cx.settings.managers() {
        match inject::inject(manager, cx, pod, &request.secret) {
            Ok(()) => return Ok(()),
            Err(InjectError::Refused(reason)) => refusals.push(format!("{manager}: {reason}")),
            Err(InjectError::Malformed(err)) => return Err(err.into()),
        }
    }
    Err(Denial::bad_request(format!(
        "none of the secret managers injected secret [{}] ({}): {}",
        request.annotation,
        request.secret,
        refusals.join("; ")
    )))
}

/// Decides what to do with the pod in `pod_json`, as a patch against that pod.
pub fn mutate_json(settings: &Settings, pod_json: &str, globals: &dyn GlobalSecrets) -> Outcome {
    let pod: Value = match serde_json::from_str(pod_json) {
        Ok(pod) => pod,
        Err(err) => {
            return Outcome::Denied(Denial::bad_request(format!(
                "the pod is not valid JSON: {err}"
            )));
        }
    };
    match decide(settings, &pod, globals) {
        Decision::Unchanged => Outcome::Unchanged,
        Decision::Denied(denial) => Outcome::Denied(denial),
        Decision::Mutated(mutated) => Outcome::Patched(diff(&pod, &mutated)),
    }
}

/// The JSON Patch from `before` to `after`. Our edits only add, so this is a list of `add`s.
pub fn diff(before: &Value, after: &Value) -> json_patch::Patch {
    json_patch::diff(before, after)
}
