//! secrets-webhook: a Kubernetes mutating admission webhook that injects Flyte secrets into pods.
//!
//! A request flows one way: [`server`] (TLS from [`tls`], HTTP) → [`admission`] (AdmissionReview
//! v1) → [`policy`] (the wasm guest, with [`global_secrets`]) → JSON Patch → AdmissionResponse.

pub mod admission;

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod global_secrets;
pub mod health;
pub mod metrics;
pub mod patch;
pub mod policy;
pub mod reload;
pub mod secrets;
pub mod server;
pub mod tls;
pub mod watch;

/// Field manager of every server-side apply we make, so ownership of our fields is ours.
pub const FIELD_MANAGER: &str = "secrets-webhook";
/// The label on every object the webhook creates (configuration, certificate Secret, mirrors):
/// owned by label rather than ownerReferences (Flyte #6692).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "secrets-webhook");
