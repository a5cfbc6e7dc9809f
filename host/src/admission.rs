//! AdmissionReview `admission.k8s.io/v1` in, AdmissionResponse out.
//!
//! The wire types are our own rather than kube-core's: the pod stays a borrowed [`RawValue`], so its
//! bytes go to the policy without being parsed into typed structs and printed again, and the patch
//! is the base64 string the API contract asks for (kube-core writes an array of numbers,
//! kube-rs#1781).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::OnError;
use crate::policy::{Call, Injection, Mutator, Outcome, Review, UserInfo};

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    // Cow: borrowed when the JSON string has no escapes, owned when it does (`"admission.k8s.io\/v1"`).
    #[serde(borrow)]
    api_version: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    sub_resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    dry_run: bool,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
    #[serde(default)]
    user_info: UserInfoIn,
}

/// Who asked the API server for the request: the Embedded manager's scope authority may honour
/// a pod's labels only for some creators.
#[derive(Deserialize, Default)]
struct UserInfoIn {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// How a review ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a Pod CREATE, or nothing to inject.
    Unchanged,
    Patched,
    /// The policy refused the pod.
    Denied,
    /// The policy failed (trap, deadline, memory, bad output).
    Failed,
    /// Not an AdmissionReview we can answer.
    Invalid,
}

impl Verdict {
    /// As the `outcome` label of `secrets_webhook_reviews_total` names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Patched => "patched",
            Self::Unchanged => "unchanged",
            Self::Denied => "denied",
            Self::Failed => "error",
            Self::Invalid => "invalid",
        }
    }
}

/// The answer to one HTTP request carrying an AdmissionReview.
#[derive(Debug)]
pub struct Reply {
    /// 200 for every review we could read, 400 otherwise.
    pub http_status: u16,
    pub body: Vec<u8>,
    pub verdict: Verdict,
    pub uid: String,
    /// Who the review was about, for logs. Filled in only when it will be logged (a refusal or an
    /// injection; anything at debug level), to keep the fast path fast.
    pub pod: PodRef,
    /// Why the pod was refused: names of secrets and managers, never values.
    pub reason: Option<String>,
    /// What a patched reply injects, as the policy reported it.
    pub injections: Vec<Injection>,
    /// The review ran out of its deadline.
    pub timed_out: bool,
}

/// A pod as logs name it. A pod created with `generateName` (a ReplicaSet's, a Job's) gets its
/// name only after admission, so then `name` is empty and `generate_name` identifies it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    #[serde(skip)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub generate_name: String,
}

/// Answers one AdmissionReview by `call`'s deadline: one that runs out is refused (or admitted,
/// with `on_error: allow`), naming what it was waiting on.
pub async fn review(body: &[u8], mutator: &dyn Mutator, on_error: OnError, call: &Call) -> Reply {
    let parsed: ReviewIn<'_> = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(err) => return invalid(String::new(), format!("malformed AdmissionReview: {err}")),
    };
    let request = match check(&parsed) {
        Ok(request) => request,
        Err((uid, message)) => return invalid(uid, message),
    };
    let uid = request.uid.clone().unwrap_or_default();
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    if !is_pod || request.operation != "CREATE" || !request.sub_resource.is_empty() {
        return answer(uid, Verdict::Unchanged, allowed());
    }
    let Some(object) = request.object else {
        return invalid(
            uid,
            "request.object is missing from a Pod CREATE".to_owned(),
        );
    };
    let review = Review {
        uid: uid.clone(),
        namespace: request.namespace.clone(),
        operation: request.operation.clone(),
        dry_run: request.dry_run,
        object: object.get().to_owned(),
        creator: UserInfo {
            username: request.user_info.username.clone(),
            groups: request.user_info.groups.clone(),
        },
    };
    let answered = crate::deadline::by_deadline(call.deadline, mutator.mutate(&review, call)).await;
    let mut reply = match answered {
        Some(Ok(outcome)) => outcome_response(uid, outcome, on_error),
        Some(Err(failure)) => refusal(uid, Verdict::Failed, 500, failure.to_string(), on_error),
        None => {
            let message = format!(
                "the review ran out of its {:?} (the webhook's timeoutSeconds less a margin) \
                 while {}",
                call.budget,
                call.progress.now()
            );
            let mut reply = refusal(uid, Verdict::Failed, 500, message, on_error);
            reply.timed_out = true;
            reply
        }
    };
    let logged = match reply.verdict {
        _ if reply.reason.is_some() => true,
        Verdict::Patched => tracing::enabled!(tracing::Level::INFO),
        _ => tracing::enabled!(tracing::Level::DEBUG),
    };
    if logged {
        reply.pod = describe_pod(&request.namespace, object);
    }
    reply
}

/// The pod's namespace, name and generateName; empty names when the object has none.
fn describe_pod(namespace: &str, object: &RawValue) -> PodRef {
    #[derive(Deserialize)]
    struct Object {
        metadata: Option<PodRef>,
    }
    let mut pod = serde_json::from_str::<Object>(object.get())
        .ok()
        .and_then(|object| object.metadata)
        .unwrap_or_default();
    pod.namespace = namespace.to_owned();
    pod
}

fn check<'r, 'a>(parsed: &'r ReviewIn<'a>) -> Result<&'r RequestIn<'a>, (String, String)> {
    let uid = parsed
        .request
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    if parsed.api_version.as_deref() != Some(API_VERSION) || parsed.kind.as_deref() != Some(KIND) {
        let message = format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, got {} {}",
            parsed.api_version.as_deref().unwrap_or("(none)"),
            parsed.kind.as_deref().unwrap_or("(none)")
        );
        return Err((uid, message));
    }
    let Some(request) = &parsed.request else {
        return Err((uid, "AdmissionReview has no request".to_owned()));
    };
    if uid.is_empty() {
        return Err((uid, "request.uid is missing".to_owned()));
    }
    Ok(request)
}

fn outcome_response(uid: String, outcome: Outcome, on_error: OnError) -> Reply {
    match outcome {
        Outcome::Unchanged(warnings) => answer(
            uid,
            Verdict::Unchanged,
            ResponseOut {
                warnings,
                ..allowed()
            },
        ),
        Outcome::Patched(patched) => match crate::patch::check(&patched.patch) {
            Ok(0) => answer(
                uid,
                Verdict::Unchanged,
                ResponseOut {
                    warnings: patched.warnings,
                    ..allowed()
                },
            ),
            Ok(_) => {
                let mut reply = answer(
                    uid,
                    Verdict::Patched,
                    ResponseOut {
                        patch: Some(
                            base64::engine::general_purpose::STANDARD.encode(&patched.patch),
                        ),
                        patch_type: Some("JSONPatch"),
                        warnings: patched.warnings,
                        ..allowed()
                    },
                );
                reply.injections = patched.injections;
                reply
            }
            Err(err) => refusal(
                uid,
                Verdict::Failed,
                500,
                format!("policy returned an invalid JSON Patch: {err}"),
                on_error,
            ),
        },
        Outcome::Denied(denied) => {
            refusal(uid, Verdict::Denied, denied.code, denied.message, on_error)
        }
    }
}

/// A pod we cannot inject: refused, or with `on_error: allow` admitted unchanged with a warning.
fn refusal(uid: String, verdict: Verdict, code: u16, message: String, on_error: OnError) -> Reply {
    let reason = message.clone();
    let mut reply = match on_error {
        OnError::Deny => answer(
            uid,
            verdict,
            ResponseOut {
                allowed: false,
                status: Some(Status { code, message }),
                ..allowed()
            },
        ),
        OnError::Allow => answer(
            uid,
            verdict,
            ResponseOut {
                warnings: vec![format!("secrets were not injected: {message}")],
                ..allowed()
            },
        ),
    };
    reply.reason = Some(reason);
    reply
}

fn allowed() -> ResponseOut {
    ResponseOut {
        uid: String::new(),
        allowed: true,
        status: None,
        patch: None,
        patch_type: None,
        warnings: Vec::new(),
    }
}

fn answer(uid: String, verdict: Verdict, response: ResponseOut) -> Reply {
    encode(200, uid, verdict, response)
}

fn invalid(uid: String, message: String) -> Reply {
    let response = ResponseOut {
        allowed: false,
        status: Some(Status {
            code: 400,
            message: message.clone(),
        }),
        ..allowed()
    };
    let mut reply = encode(400, uid, Verdict::Invalid, response);
    reply.reason = Some(message);
    reply
}

fn encode(http_status: u16, uid: String, verdict: Verdict, mut response: ResponseOut) -> Reply {
    response.uid = uid.clone();
    let review = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response,
    };
    // Serialising plain strings, bools and numbers cannot fail.
    let body = serde_json::to_vec(&review).unwrap_or_default();
    Reply {
        http_status,
        body,
        verdict,
        uid,
        pod: PodRef::default(),
        reason: None,
        injections: Vec::new(),
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mutation;
    use std::time::Duration;

    /// A policy whose store never answers: it says what it waits on, then waits.
    struct Stuck;

    impl Mutator for Stuck {
        fn mutate<'a>(&'a self, _: &'a Review, call: &'a Call) -> Mutation<'a> {
            Box::pin(async move {
                call.progress.set(
                    "reading secret u__org__acme__domain____project____key__db from the AWS store"
                        .into(),
                );
                std::future::pending().await
            })
        }
    }

    #[tokio::test]
    async fn a_review_that_runs_out_names_what_it_waited_on() {
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "n", "operation": "CREATE",
                        "object": {"metadata": {"name": "p"}}}
        });
        let body = serde_json::to_vec(&body).unwrap();
        let call = Call::new(Duration::from_millis(200), 1 << 20);
        let started = std::time::Instant::now();
        let reply = review(&body, &Stuck, OnError::Deny, &call).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(reply.timed_out);
        let reason = reply.reason.unwrap();
        assert!(
            reason.contains("ran out of its 200ms")
                && reason.contains("from the AWS store")
                && reason.contains("u__org__acme"),
            "{reason}"
        );
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        // With onError: allow the pod goes through, with the same words as a warning.
        let call = Call::new(Duration::from_millis(50), 1 << 20);
        let reply = review(&body, &Stuck, OnError::Allow, &call).await;
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            answer["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("AWS store")
        );
    }
}
