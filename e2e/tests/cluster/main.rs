//! The envtest suites in one binary: secrets-webhook against a real kube-apiserver and etcd
//! (`../shared/tools`), its replicas the `secrets-webhook-e2e` binary (the shipped entry point).
//! The host's test helpers (host/tests/it/common) are compiled in from there; the API server
//! harness ([`envtest`]) and the replicas ([`replica`]) are only needed here.

#[path = "../../../host/tests/it/common/mod.rs"]
mod common;
mod envtest;
mod replica;

mod apiserver;
mod certs_cluster;
mod embedded_cluster;
mod secrets_cluster;
