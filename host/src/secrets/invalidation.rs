//! Flyte 2's cache invalidation: its secret service calls `POST /invalidate-secret` with
//! `{"org", "domain", "project", "name"}` on every webhook replica after it writes or deletes a
//! secret, so cached values of all three scopes go at once instead of at their TTL. Plain HTTP
//! on `cacheInvalidationPort` (9444), as Flyte 2's webhook serves it.
//!
//! The endpoint is unauthenticated, as Flyte 2's is, so what a caller can make the webhook do is
//! bounded: the ids it names wait in the followers' queue once however often they are posted
//! ([`super::follow::Pending`]), the queue is bounded (503 when full), and each source address may
//! post [`RATE`] a second on average (429 beyond).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::net::TcpListener;

use super::scope::Scope;
use super::store::Store;
use crate::metrics::Metrics;
use crate::server::side_port::BODY_TIMEOUT;

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

/// Invalidations a source address may post a second, on average, and at once.
pub const RATE: f64 = 10.0;
pub const BURST: f64 = 50.0;
/// Addresses remembered for the rate limit; beyond, those quiet longest are forgotten.
const ADDRESSES: usize = 4096;

/// A token bucket per source address.
#[derive(Default)]
pub struct RateLimit(Mutex<HashMap<IpAddr, (f64, Instant)>>);

impl RateLimit {
    /// Whether `peer` may post now (taking one token).
    pub fn allow(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= ADDRESSES && !buckets.contains_key(&peer) {
            // Full buckets are those quiet for BURST / RATE seconds: forgetting them changes nothing.
            let quiet = Duration::from_secs_f64(BURST / RATE);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < quiet);
            if buckets.len() >= ADDRESSES {
                return false;
            }
        }
        let (tokens, at) = buckets.entry(peer).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// Where an invalidation's ids go: the followers' queue. `Err` when it is full.
pub type Queue = Arc<dyn Fn(Vec<String>) -> Result<(), super::follow::QueueFull> + Send + Sync>;

/// Serves invalidations on `addr` until the process ends, queueing the invalidated ids for the
/// followers; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    store: Arc<Store>,
    queue: Queue,
    metrics: Arc<Metrics>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the cache invalidation port {addr}"))?;
    let bound = listener.local_addr()?;
    let limit = Arc::new(RateLimit::default());
    let counted = metrics.clone();
    crate::server::side_port::spawn(
        listener,
        "invalidation",
        counted,
        move |request: Request<Incoming>, peer: SocketAddr| {
            let (store, queue, limit, metrics) =
                (store.clone(), queue.clone(), limit.clone(), metrics.clone());
            async move {
                if !limit.allow(peer.ip()) {
                    metrics.rejected("rate");
                    let why = format!("too many invalidations from {}; slow down", peer.ip());
                    return text(StatusCode::TOO_MANY_REQUESTS, why);
                }
                let (response, ids) = answer(&store, request).await;
                if !ids.is_empty() && queue(ids).is_err() {
                    metrics.rejected("pending");
                    let why = "too many invalidations waiting; try again".to_owned();
                    return text(StatusCode::SERVICE_UNAVAILABLE, why);
                }
                response
            }
        },
    );
    Ok(bound)
}

async fn answer(store: &Store, request: Request<Incoming>) -> (Response<Full<Bytes>>, Vec<String>) {
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    let (status, text, ids) = match collected.await {
        Ok(Ok(body)) => handle(store, &parts.method, parts.uri.path(), &body.to_bytes()),
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large".to_owned(),
            Vec::new(),
        ),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("body not received within {BODY_TIMEOUT:?}"),
            Vec::new(),
        ),
    };
    (self::text(status, text), ids)
}

fn text(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
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
    fn each_address_gets_its_own_bucket() {
        let limit = RateLimit::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..200).filter(|_| limit.allow(a)).count();
        // The burst, and what trickled in meanwhile.
        assert!((50..=52).contains(&allowed), "{allowed}");
        assert!(limit.allow(b), "another address is not slowed by the first");
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
