//! Plain-HTTP side ports (metrics and probes, secret cache invalidation): small answers to
//! cluster-internal callers, one accept loop for all of them, under the same connection limits
//! as the admission port ([`super::connections`]) and a deadline for a request's body.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connections::{Activity, ConnectionLimits, Gate, http1, supervise};
use crate::metrics::Metrics;
use crate::tasks::{OnEnd, Tasks};

/// How long a side port waits for a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a side port reads into memory at once (HTTP/1's read buffer).
const READ_BUFFER: usize = 16 << 10;

/// Registers side port `port` (its metrics label) with `tasks` as task `task`: HTTP/1.1 on
/// `listener`, each request answered by `answer`, which is told the caller's address. Restarted
/// on the same listener if it ends.
pub fn start<A, F>(
    tasks: &mut Tasks,
    listener: TcpListener,
    (port, task): (&'static str, &'static str),
    metrics: Arc<Metrics>,
    answer: A,
) where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = Arc::new(listener);
    let limits = ConnectionLimits::side_port();
    let gate = Arc::new(Gate::new(port, limits.max, metrics.clone()));
    tasks.spawn(task, OnEnd::Restart, move || {
        let (listener, gate) = (listener.clone(), gate.clone());
        serve(listener, gate, limits, metrics.clone(), answer.clone())
    });
}

/// Accepts connections on `listener`, answering each with `answer`. Side ports end with the
/// replica, after the admission port has drained: nothing stops them before.
async fn serve<A, F>(
    listener: Arc<TcpListener>,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    answer: A,
) where
    A: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let (_never, stop) = watch::channel(false);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(pass) = gate.enter() else {
            continue;
        };
        let (answer, stop, metrics) = (answer.clone(), stop.clone(), metrics.clone());
        tokio::spawn(async move {
            let activity = Activity::new();
            let requests = activity.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let answered = requests.answering(answer(request, peer));
                async move { Ok::<_, Infallible>(answered.await) }
            });
            let conn = http1(READ_BUFFER).serve_connection(TokioIo::new(tcp), service);
            let _ = supervise(conn, &activity, &limits, stop, &metrics).await;
            drop(pass);
        });
    }
}
