//! Flyte 2's cache invalidation: its secret service calls `POST /invalidate-secret` with
//! `{"org", "domain", "project", "name"}` on every webhook replica after it writes or deletes a
//! secret, so cached values of all three scopes go at once instead of at their TTL. Plain HTTP
//! on `cacheInvalidationPort` (9444), as Flyte 2's webhook serves it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::net::TcpListener;

use super::scope::Scope;
use super::store::Store;

pub const PATH: &str = "/invalidate-secret";
/// An invalidation is four short names.
const MAX_BODY: usize = 16 * 1024;

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

/// Serves invalidations on `addr` until the process ends, telling `invalidated` which ids
/// went; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    store: Arc<Store>,
    invalidated: impl Fn(Vec<String>) + Send + Sync + 'static,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the cache invalidation port {addr}"))?;
    let bound = listener.local_addr()?;
    let invalidated = Arc::new(invalidated);
    crate::side_port::spawn(listener, move |request: Request<Incoming>| {
        let (store, invalidated) = (store.clone(), invalidated.clone());
        async move {
            let (response, ids) = answer(&store, request).await;
            if !ids.is_empty() {
                invalidated(ids);
            }
            response
        }
    });
    Ok(bound)
}

async fn answer(store: &Store, request: Request<Incoming>) -> (Response<Full<Bytes>>, Vec<String>) {
    let (parts, body) = request.into_parts();
    let (status, text, ids) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => handle(store, &parts.method, parts.uri.path(), &body.to_bytes()),
        Err(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large".to_owned(),
            Vec::new(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    (response, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::store::Backend;
    use futures::future::BoxFuture;

    struct Nothing;

    impl Backend for Nothing {
        fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
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
