//! The plain-HTTP port that takes Flyte 2's cache invalidations (`POST /invalidate-secret` on
//! `cacheInvalidationPort`, 9444). Unauthenticated, as Flyte 2's is, so what a caller can make the
//! webhook do is bounded: the ids it names wait in the followers' queue once however often they
//! are posted, the queue is bounded (503 when full), and each source address may post [`RATE`] a
//! second on average (429 beyond). What a request means is `crate::secrets::invalidation`'s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::request_body::{self, Refusal};
use super::side_port::BODY_TIMEOUT;
use crate::metrics::Metrics;
use crate::secrets::invalidation::{MAX_BODY, Queue, handle};
use crate::secrets::store::Store;
use crate::tasks::Tasks;

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

/// Binds `addr` and registers the port with `tasks`: invalidations, queued for the followers.
/// Returns the bound address.
pub async fn start(
    tasks: &mut Tasks,
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
    super::side_port::start(
        tasks,
        listener,
        ("invalidation", "invalidation port"),
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
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let (status, text, ids) =
        match request_body::read(body, &parts.headers, MAX_BODY, deadline).await {
            Ok(body) => handle(store, &parts.method, parts.uri.path(), &body),
            Err(Refusal::TimedOut) => (
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {BODY_TIMEOUT:?}"),
                Vec::new(),
            ),
            Err(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large".to_owned(),
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

    #[test]
    fn each_address_gets_its_own_bucket() {
        let limit = RateLimit::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..200).filter(|_| limit.allow(a)).count();
        // The burst, and what trickled in meanwhile.
        assert!((50..=52).contains(&allowed), "{allowed}");
        assert!(limit.allow(b), "another address is not slowed by the first");
    }
}
