//! One pod in, one decision out: decode the requests, inject each secret with the first manager
//! that can, and express the result as a JSON Patch against the pod exactly as it arrived.

use serde_json::{Map, Value};

use crate::annotations::{self, Request};
use crate::inject::{self, Context, GlobalSecrets, InjectError};
use crate::pod::{self, Add, MalformedPod, Pod};
use crate::settings::{ManagerType, Settings};

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
    Patched(Patched),
    Denied(Denial),
}

/// A patch, with the secrets it injects.
#[derive(Debug, Clone, PartialEq)]
pub struct Patched {
    pub patch: json_patch::Patch,
    /// In annotation order; secrets the pod already had are not listed.
    pub injections: Vec<Injection>,
}

/// One secret a patch injects: names only, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub group: String,
    pub key: String,
    pub manager: ManagerType,
}

/// Decides what to do with `pod` (a Pod object).
pub fn decide(settings: &Settings, pod: &Value, globals: &dyn GlobalSecrets) -> Decision {
    match edit(settings, pod.clone(), globals) {
        Ok(None) => Decision::Unchanged,
        Ok(Some(Edited { pod: mutated, .. })) => Decision::Mutated(Value::Object(mutated)),
        Err(denial) => Decision::Denied(denial),
    }
}

/// An edited pod, the patch from the original to it, and what it injects.
struct Edited {
    pod: Map<String, Value>,
    ops: Vec<Add>,
    injections: Vec<Injection>,
}

/// Injects every requested secret into `pod`, returning the edited pod and the patch that makes
/// it, `None` when there is nothing to do, or why the pod is refused.
fn edit(
    settings: &Settings,
    pod: Value,
    globals: &dyn GlobalSecrets,
) -> Result<Option<Edited>, Denial> {
    let Value::Object(object) = pod else {
        return Err(MalformedPod("the object is not a JSON object".to_owned()).into());
    };
    if !annotations::has_opt_in_label(pod::metadata_map(&object, "labels")) {
        return Ok(None);
    }
    let Some(annotations) = pod::metadata_map(&object, "annotations") else {
        return Ok(None);
    };
    let requests = match annotations::decode_requests(annotations) {
        Ok(requests) if requests.is_empty() => return Ok(None),
        Ok(requests) => requests,
        Err(err) => {
            return Err(Denial::bad_request(format!(
                "failed to unmarshal secrets from pod annotations: {err}"
            )));
        }
    };
    let mut pod = Pod::new(object);
    let cx = Context { settings, globals };
    let mut injections = Vec::new();
    for request in &requests {
        let before = pod.edits();
        let manager = inject_one(&cx, &mut pod, request)?;
        // A manager that finds the secret already injected accepts it without an edit.
        if pod.edits() > before {
            injections.push(Injection {
                group: request.secret.group.clone(),
                key: request.secret.key.clone(),
                manager,
            });
        }
    }
    let (pod, ops) = pod.into_parts();
    Ok((!ops.is_empty()).then_some(Edited {
        pod,
        ops,
        injections,
    }))
}

/// Injects one request with the first manager that accepts it, or explains every refusal.
fn inject_one(cx: &Context<'_>, pod: &mut Pod, request: &Request) -> Result<ManagerType, Denial> {
    let mut refusals = Vec::new();
    for manager in cx.settings.managers() {
        match inject::inject(manager, cx, pod, &request.secret) {
            Ok(()) => return Ok(manager),
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
    match edit(settings, pod, globals) {
        Ok(None) => Outcome::Unchanged,
        Ok(Some(Edited {
            ops, injections, ..
        })) => match patch_of(ops) {
            Ok(patch) => Outcome::Patched(Patched { patch, injections }),
            Err(denial) => Outcome::Denied(denial),
        },
        Err(denial) => Outcome::Denied(denial),
    }
}

fn patch_of(ops: Vec<Add>) -> Result<json_patch::Patch, Denial> {
    ops.into_iter()
        .map(|Add { path, value }| {
            let path = json_patch::jsonptr::PointerBuf::parse(path).map_err(|err| Denial {
                code: 500,
                message: format!("internal error: bad patch path: {err}"),
            })?;
            Ok(json_patch::PatchOperation::Add(json_patch::AddOperation {
                path,
                value,
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(json_patch::Patch)
}

/// The JSON Patch from `before` to `after`, for policies built on [`decide`] that change the pod
/// further. Our own edits produce their patch as they go.
pub fn diff(before: &Value, after: &Value) -> json_patch::Patch {
    json_patch::diff(before, after)
}
