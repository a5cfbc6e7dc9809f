//! secrets-webhook: a Kubernetes mutating admission webhook that injects Flyte secrets into pods.
//!
//! A review flows one way: [`server`] (TLS from [`tls`], HTTP, the memory budget) → [`admission`]
//! (AdmissionReview v1) → [`policy`] (the wasm guest; its imports read [`global_secrets`] and the
//! Embedded manager's store in [`secrets`], and the mirrors its patch refers to are written before
//! the answer) → [`patch`] (checked) → AdmissionResponse. Everything else runs beside it as a
//! task of [`serve`]'s, supervised by [`tasks`]. docs/architecture.md has the map.

pub mod admission;

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod global_secrets;
pub mod health;
pub mod leadership;
pub mod metrics;
pub mod patch;
pub mod policy;
pub mod reload;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod tasks;
pub mod tls;
pub mod watch;

/// Field manager of every server-side apply we make, so ownership of our fields is ours.
pub const FIELD_MANAGER: &str = "secrets-webhook";
/// The label on every object the webhook creates (configuration, certificate Secret, mirrors):
/// owned by label rather than ownerReferences (Flyte #6692).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "secrets-webhook");
