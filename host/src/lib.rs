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
pub mod request_body;
pub mod secrets;
pub mod server;
pub mod side_port;
pub mod tls;
pub mod watch;
