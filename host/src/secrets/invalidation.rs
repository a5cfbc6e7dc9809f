//! Flyte 2's cache invalidation: its secret service calls `POST /invalidate-secret` with
//! `{"org", "domain", "project", "name"}` on every webhook replica after it writes or deletes a
//! secret, so cached values of all three scopes go at once instead of at their TTL. Plain HTTP
//! on `cacheInvalidationPort` (9444), as Flyte 2's webhook serves it.
//!
//! This is what a request means (Flyte 2's answers, and the ids it invalidates); the port that
//! serves it, unauthenticated as Flyte 2's is and so bounded in what a caller can make the
//! webhook do, is the server's invalidation port. The ids wait in the followers' queue once
//! however often they are posted ([`super::follow::Pending`]).

use http::{Method, StatusCode};
use serde::Deserialize;

use super::scope::Scope;
use super::store::Store;

pub const PATH: &str = "/invalidate-secret";

/// Where an invalidation's ids go: the followers' queue. `Err` when it is full.
pub type Queue =
    std::sync::Arc<dyn Fn(Vec<String>) -> Result<(), super::follow::QueueFull> + Send + Sync>;
/// An invalidation is four short names.
pub const MAX_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
struct Invalidation {
    #[serde(default)]
    org: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    name: String,
}

/// The answer to one request: status and a short text, and the ids invalidated.
pub fn handle(
    store: &Store,
    method: &Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, String, Vec<String>) {
    if path != PATH {
        return (StatusCode::NOT_FOUND, "not found".to_owned(), Vec::new());
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST".to_owned(),
            Vec::new(),
        );
    }
    let request: Invalidation = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {err}"),
                Vec::new(),
            );
        }
    };
    if request.name.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "name is required".to_owned(),
            Vec::new(),
        );
    }
    let scope = Scope {
        org: request.org,
        domain: request.domain,
        project: request.project,
    };
    let cleared = store.invalidate(&scope, &request.name);
    tracing::info!(
        org = scope.org,
        domain = scope.domain,
        project = scope.project,
        name = request.name,
        cleared,
        "secret cache invalidated"
    );
    let ids = scope
        .cascade()
        .iter()
        .map(|scope| scope.secret_id(&request.name))
        .collect();
    (StatusCode::OK, "ok".to_owned(), ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::store::Backend;
    use futures::future::BoxFuture;
    use std::sync::Arc;

    struct Nothing;

    impl Backend for Nothing {
        fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
            Box::pin(async { Ok(None) })
        }
    }

    #[test]
    fn flyte_2s_answers() {
        let store = Store::new(Arc::new(Nothing), Some(std::time::Duration::from_secs(60)));
        let ok = br#"{"org":"acme","domain":"development","project":"ml","name":"db"}"#;
        let (status, _, ids) = handle(&store, &Method::POST, PATH, ok);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            ids,
            [
                "u__org__acme__domain__development__project__ml__key__db",
                "u__org__acme__domain__development__project____key__db",
                "u__org__acme__domain____project____key__db",
            ]
        );
        assert_eq!(
            handle(&store, &Method::GET, PATH, b"").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            handle(&store, &Method::PUT, PATH, ok).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            handle(&store, &Method::POST, PATH, b"{not json").0,
            StatusCode::BAD_REQUEST
        );
        let unnamed = br#"{"org":"acme","domain":"development","project":"ml","name":""}"#;
        assert_eq!(
            handle(&store, &Method::POST, PATH, unnamed).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            handle(&store, &Method::POST, "/other", ok).0,
            StatusCode::NOT_FOUND
        );
    }
}
