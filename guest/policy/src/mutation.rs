//! One pod in, one decision out: decode the requests, inject each secret with the first manager
//! that can, and express the result as a JSON Patch against the pod exactly as it arrived.

use serde_json::Value;

use crate::annotations::{self, Request};
use crate::authority::Creator;
use crate::inject::{self, Context, GlobalSecrets, Host, Refused};
use crate::pod::{Pod, view};
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
    /// An RFC 6902 JSON Patch, as JSON text: only `add` operations.
    pub patch: String,
    /// In annotation order; secrets the pod already had are not listed.
    pub injections: Vec<Injection>,
    /// Secret ids whose mirrors in the pod's namespace the patch refers to (Embedded manager,
    /// Mirror mode); the host writes them before the pod is admitted.
    pub mirrors: Vec<String>,
    /// Image pull Secrets the patch lists in `spec.imagePullSecrets` (Embedded manager,
    /// `imagePullSecrets.enabled`); the host copies them into the pod's namespace first.
    pub pull_secrets: Vec<String>,
}

/// What the policy knows of the admission request besides the pod.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admission<'a> {
    /// The namespace the pod is created in; "" to take the pod's own `metadata.namespace`.
    pub namespace: &'a str,
    /// Who asks the API server to create it (`userInfo`); nobody when unknown.
    pub creator: Creator<'a>,
}

/// One secret a patch injects: names only, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub group: String,
    pub key: String,
    pub manager: ManagerType,
}

/// Decides what to do with `pod` (a Pod object), returning the pod as it would be stored. For
/// front doors that hold the pod as a tree already (Kubewarden); the webhook uses [`mutate_json`].
pub fn decide(settings: &Settings, pod: &Value, globals: &dyn GlobalSecrets) -> Decision {
    decide_review(
        settings,
        &Admission::default(),
        pod,
        Host::globals_only(globals),
    )
}

/// [`decide`] with everything the host offers, for a pod created as `admission` says.
pub fn decide_review(
    settings: &Settings,
    admission: &Admission<'_>,
    pod: &Value,
    host: Host<'_>,
) -> Decision {
    let text = pod.to_string();
    match edit(settings, admission, &text, host) {
        Ok(None) => Decision::Unchanged,
        Ok(Some(edited)) => {
            let mut mutated = pod.clone();
            let applied = serde_json::from_str::<json_patch::Patch>(&edited.patch)
                .map_err(|err| err.to_string())
                .and_then(|patch| {
                    json_patch::patch(&mut mutated, &patch).map_err(|err| err.to_string())
                });
            match applied {
                Ok(()) => Decision::Mutated(mutated),
                Err(err) => Decision::Denied(Denial {
                    code: 500,
                    message: format!("internal error: the patch does not apply: {err}"),
                }),
            }
        }
        Err(denial) => Decision::Denied(denial),
    }
}

/// The patch that injects a pod's secrets, and what it injects.
struct Edited {
    /// JSON Patch text.
    patch: String,
    injections: Vec<Injection>,
    mirrors: Vec<String>,
    pull_secrets: Vec<String>,
}

/// Injects every requested secret into the pod in `pod_json`, returning the patch that does it,
/// `None` when there is nothing to do, or why the pod is refused.
fn edit(
    settings: &Settings,
    admission: &Admission<'_>,
    pod_json: &str,
    host: Host<'_>,
) -> Result<Option<Edited>, Denial> {
    let view = view::parse(pod_json).map_err(Denial::bad_request)?;
    if !view.opted_in() {
        return Ok(None);
    }
    let Some(annotations) = &view.annotations else {
        return Ok(None);
    };
    let pairs = annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let requests = match annotations::decode_requests(pairs) {
        Ok(requests) if requests.is_empty() => return Ok(None),
        Ok(requests) => requests,
        Err(err) => {
            return Err(Denial::bad_request(format!(
                "failed to unmarshal secrets from pod annotations: {err}"
            )));
        }
    };
    // The request's namespace is the one the pod is created in; the pod's own, when the request
    // names none (`decide`, the `mutate` command).
    let namespace = match (admission.namespace, &view.namespace) {
        ("", Some(own)) => own.as_str().to_owned(),
        (request, _) => request.to_owned(),
    };
    let mut pod = Pod::new(view);
    let cx = Context {
        settings,
        globals: host.globals,
        host,
        namespace: &namespace,
        creator: admission.creator,
        mirrors: Default::default(),
        pull_secrets: Default::default(),
    };
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
    Ok((pod.edits() > 0).then(|| Edited {
        patch: pod.into_patch(),
        injections,
        mirrors: cx.mirrors.into_inner(),
        pull_secrets: cx.pull_secrets.into_inner(),
    }))
}

/// Injects one request with the first manager that accepts it, or explains every refusal.
fn inject_one(
    cx: &Context<'_>,
    pod: &mut Pod<'_>,
    request: &Request,
) -> Result<ManagerType, Denial> {
    let mut refusals = Vec::new();
    for manager in cx.settings.managers() {
        match inject::inject(manager, cx, pod, &request.secret) {
            Ok(()) => return Ok(manager),
            Err(Refused(reason)) => refusals.push(format!("{manager}: {reason}")),
        }
    }
    Err(Denial::bad_request(format!(
        "none of the secret managers injected secret [{}] ({}): {}",
        request.annotation,
        request.secret,
        refusals.join("; ")
    )))
}

/// Decides what to do with the pod in `pod_json`, as a patch against that pod, with global
/// secrets as the only thing the host offers.
pub fn mutate_json(settings: &Settings, pod_json: &str, globals: &dyn GlobalSecrets) -> Outcome {
    mutate_review(
        settings,
        &Admission::default(),
        pod_json,
        Host::globals_only(globals),
    )
}

/// Decides what to do with the pod in `pod_json`, created as `admission` says, asking `host` for
/// what the pod's secrets need.
pub fn mutate_review(
    settings: &Settings,
    admission: &Admission<'_>,
    pod_json: &str,
    host: Host<'_>,
) -> Outcome {
    match edit(settings, admission, pod_json, host) {
        Ok(None) => Outcome::Unchanged,
        Ok(Some(Edited {
            patch,
            injections,
            mirrors,
            pull_secrets,
        })) => Outcome::Patched(Patched {
            patch,
            injections,
            mirrors,
            pull_secrets,
        }),
        Err(denial) => Outcome::Denied(denial),
    }
}

/// The JSON Patch from `before` to `after`, for policies built on [`decide`] that change the pod
/// further. Our own edits produce their patch as they go.
pub fn diff(before: &Value, after: &Value) -> json_patch::Patch {
    json_patch::diff(before, after)
}
