//! Connections: how many a port keeps open, how long one may stay silent, and how each ends.
//!
//! A connection must send its first request within `first_request` of being accepted (a client
//! that connects and says nothing holds a slot for nothing), and is closed gracefully once no
//! request has been in flight for `idle` (HTTP/2 says GOAWAY first, so a request racing the close
//! is retried on a new connection). The idle default outlasts the API server's own reuse of an
//! idle connection (Go's transport drops one after 90 s), so on HTTP/1.1, where a close can race
//! a request, it is the API server that closes first. HTTP/2 connections are also pinged: one
//! whose peer vanished is closed when a ping goes unanswered.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The limits of one port.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections; more are closed as soon as they are accepted.
    pub max: usize,
    /// From accept to the first request's headers, the TLS handshake included.
    pub first_request: Duration,
    /// With no request in flight for this long, a connection is closed.
    pub idle: Duration,
}

impl ConnectionLimits {
    /// The side ports' (metrics, invalidation): few callers, small answers.
    pub fn side_port() -> Self {
        Self {
            max: 64,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        }
    }
}

/// After a graceful close starts, how long a connection may take to finish what it has.
const CLOSING: Duration = Duration::from_secs(10);

/// The open connections of one port.
pub struct Gate {
    port: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    metrics: Arc<Metrics>,
}

/// A connection's place at its port; given back when dropped.
pub struct Pass {
    _permit: OwnedSemaphorePermit,
    gauge: Arc<Metrics>,
    port: &'static str,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gauge.connection_closed(self.port);
    }
}

impl Gate {
    pub fn new(port: &'static str, max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            port,
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            metrics,
        }
    }

    /// A place for a connection just accepted, or `None` (counted) when the port is full.
    pub fn enter(&self) -> Option<Pass> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.connection_opened(self.port);
                Some(Pass {
                    _permit: permit,
                    gauge: self.metrics.clone(),
                    port: self.port,
                })
            }
            Err(_) => {
                self.metrics.rejected("connections");
                None
            }
        }
    }

    /// Waits until every connection has ended, for up to `within`; whether they all did.
    pub async fn drained(&self, within: Duration) -> bool {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        tokio::time::timeout(within, self.permits.acquire_many(all))
            .await
            .is_ok()
    }
}

/// What a connection's requests are doing, for its supervisor.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Requests begun, and when the last one ended (nanoseconds after `opened`).
    begun: AtomicU64,
    last_end: AtomicU64,
}

/// A request in flight on a connection; it ends when dropped.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_nanos() as u64;
        self.0.last_end.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
        })
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// `answer`, with its request in flight until it is answered (or dropped).
    pub fn answering<F: Future>(
        self: &Arc<Self>,
        answer: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        let in_flight = self.request();
        async move {
            let answered = answer.await;
            drop(in_flight);
            answered
        }
    }

    /// When the connection should be closed, and why, if nothing happens before then; `None`
    /// while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.begun.load(Ordering::Relaxed) == 0 {
            return Some((self.opened + limits.first_request, "first_request"));
        }
        let last = Duration::from_nanos(self.last_end.load(Ordering::Relaxed));
        Some((self.opened + last + limits.idle, "idle"))
    }
}

/// HTTP/1.1 reading at most `read_buffer` at once, timed by the connection's supervisor: the
/// first request's headers and the idle time between requests (hyper's own header timer would
/// cut idle ones at 10 s).
pub fn http1(read_buffer: usize) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(read_buffer);
    builder
}

/// Serves `conn` until it ends: drops it when no request came in time, closes it gracefully
/// when it has been idle too long or `stop` turns true, and for good [`CLOSING`] later.
pub async fn supervise<C>(
    conn: C,
    activity: &Activity,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    metrics: &Metrics,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = pin!(conn);
    // Until the connection is closing; then only the hard end is waited for.
    let mut closing: Option<Instant> = None;
    // A check in at most this much catches a request that ended meanwhile.
    let tick = Duration::from_secs(1)
        .min(limits.first_request)
        .min(limits.idle);
    loop {
        let wake = match closing {
            Some(end) => end,
            None => activity
                .deadline(limits)
                .map_or(Instant::now() + tick, |(at, _)| {
                    at.min(Instant::now() + tick)
                }),
        };
        tokio::select! {
            ended = conn.as_mut() => return ended,
            _ = stop.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSING);
            }
            _ = tokio::time::sleep_until(wake) => match closing {
                Some(_) => return Ok(()),
                None => {
                    if let Some((at, why)) = activity.deadline(limits)
                        && at <= Instant::now()
                    {
                        metrics.connection_timed_out(why);
                        // A connection that never asked for anything has nothing to finish.
                        if why == "first_request" {
                            return Ok(());
                        }
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSING);
                    }
                }
            },
        }
    }
}

/// Runs `future` (a TLS handshake) within what is left of the first request's time.
pub async fn within_first_request<F: Future>(
    activity: &Activity,
    limits: &ConnectionLimits,
    future: F,
) -> Option<F::Output> {
    let deadline = activity.opened + limits.first_request;
    tokio::time::timeout_at(deadline, future).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn silent_connections_have_until_their_first_request_then_idle_ones_until_idle() {
        let limits = ConnectionLimits {
            max: 4,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(120),
        };
        let activity = Activity::new();
        let (at, why) = activity.deadline(&limits).unwrap();
        assert_eq!(
            (at - activity.opened, why),
            (limits.first_request, "first_request")
        );
        let request = activity.request();
        assert_eq!(activity.deadline(&limits), None, "a request in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(request);
        let (at, why) = activity.deadline(&limits).unwrap();
        assert_eq!(why, "idle");
        let idle_from = at - limits.idle - activity.opened;
        assert!(idle_from >= Duration::from_millis(20), "{idle_from:?}");
    }

    #[tokio::test]
    async fn a_full_port_turns_connections_away_and_drains() {
        let metrics = Arc::new(Metrics::default());
        let gate = Gate::new("admission", 2, metrics.clone());
        let (a, b) = (gate.enter().unwrap(), gate.enter().unwrap());
        assert!(gate.enter().is_none());
        assert!(
            metrics
                .encode()
                .contains("secrets_webhook_requests_rejected_total{reason=\"connections\"} 1")
        );
        assert!(!gate.drained(Duration::from_millis(10)).await);
        drop((a, b));
        assert!(gate.drained(Duration::from_millis(10)).await);
    }
}
