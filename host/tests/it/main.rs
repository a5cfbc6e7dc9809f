//! The host's integration tests in one binary: one module per suite, the helpers in [`common`]
//! compiled once, the dependencies linked once. The suites that start a real kube-apiserver
//! (envtest) are in e2e/tests/cluster.

mod common;

mod aws_store;
mod bad_input;
mod cert_reload;
mod cli;
mod cloud_stores;
mod cluster;
mod fixtures;
mod fuzz_checks;
mod kubewarden;
mod operations;
mod sandbox;
