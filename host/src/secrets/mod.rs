//! Where Flyte 2's Embedded manager gets secret values. A secret is named by its scope
//! (organization, domain, project) and key ([`scope`]); a [`store::Store`] looks it up project →
//! domain → organization in a backend — a Kubernetes namespace followed by a reflector
//! ([`k8s`]), or a cloud's secret manager (`aws`, `gcp`, `azure`) — and drops cached values on
//! Flyte 2's invalidation call ([`invalidation`]). In Mirror mode the values reach pods through
//! Secrets kept in their namespaces ([`mirror`]), which follow their source ([`follow`]).
//!
//! The policy reaches it through its `secret-store` and `cluster` imports ([`embedded`]).

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod embedded;
pub mod follow;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(any(feature = "gcp", feature = "azure"))]
pub mod https;
pub mod invalidation;
pub mod k8s;
pub mod mirror;
pub mod scope;
pub mod store;
