//! The secret-injection policy of secrets-webhook, free of I/O so that it runs the same natively,
//! as a wasm component, and as a Kubewarden policy.
//!
//! Flow: [`annotations`] decodes the pod's `flyte.secrets/s<N>` requests (protobuf text in
//! [`prototext`]), [`mutation::decide`] hands each one to the managers in [`settings::Settings`]
//! order ([`inject`]), which edit the pod through [`pod`]; [`mutation::mutate_json`] turns the
//! result into a JSON Patch.

pub mod annotations;
pub mod authority;
pub mod inject;
pub mod mutation;
pub mod names;
pub mod pod;
pub mod prototext;
pub mod scope;
pub mod secret;
pub mod settings;

pub use inject::{Cluster, GlobalSecrets, Host, NoStore, SecretStore};
pub use mutation::{
    Admission, Decision, Denial, Injection, Outcome, Patched, decide, decide_review, mutate_json,
    mutate_review,
};
pub use secret::{MountRequirement, Secret};
pub use settings::{ManagerType, Settings};
