//! `kubewarden.wasm`: secrets-policy as a Kubewarden policy (waPC, protocol v1), for kwctl and
//! policy-server. Like `guest/component`, only translation lives here; every decision is the
//! library's, so the webhook and Kubewarden mutate a pod identically.
//!
//! The metadata Kubewarden reads (`metadata.yml`) is compiled into the module by `build.rs`, so
//! the file cargo builds is the policy to deploy: no `kwctl annotate` step.
#![cfg(target_arch = "wasm32")]

mod admission;
mod settings;

use kubewarden_policy_sdk::wapc_guest::register_function;

/// waPC hosts call this once per instance, before any operation; the handlers must be registered
/// by then. Kubewarden keeps an instance for many requests, so the handlers keep no state.
#[unsafe(no_mangle)]
pub extern "C" fn wapc_init() {
    register_function("validate", admission::validate);
    register_function("validate_settings", settings::validate_settings);
    register_function(
        "protocol_version",
        kubewarden_policy_sdk::protocol_version_guest,
    );
}

/// `metadata.yml` as JSON, in the custom section kwctl and policy-server read (the one
/// `kwctl annotate` would write). `#[used]` keeps the otherwise unreferenced bytes in the module.
#[used]
#[unsafe(link_section = "io.kubewarden.metadata")]
static METADATA: [u8; include_bytes!(concat!(env!("OUT_DIR"), "/metadata.json")).len()] =
    *include_bytes!(concat!(env!("OUT_DIR"), "/metadata.json"));
