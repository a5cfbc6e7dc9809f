//! The HTTPS server: TLS handshake, HTTP/1.1 or HTTP/2, routing, body limits, and a graceful stop.
//!
//! Routes: `POST /mutate` and Flyte's `POST /mutate--v1-pod` answer AdmissionReviews;
//! `GET /healthz` says the process is alive; `GET /readyz` says it is serving a policy, and which.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, Mutator, OnError};
use crate::health::{self, Describe, Readiness};
use crate::metrics::Metrics;
use crate::request_body::{self, Refusal};

/// What the server needs besides the listener and the TLS config.
pub struct App {
    pub mutator: Arc<dyn Mutator>,
    /// Names the policy in service, for `/readyz`.
    pub describe_policy: Describe,
    pub on_error: OnError,
    pub limits: Limits,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

/// Protection against slow, large or greedy clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// For the TLS handshake, and for HTTP/1 request headers (slowloris).
    pub header_timeout: Duration,
    /// For a review's whole body, once its headers are in (a slow body holds a connection too).
    pub body_timeout: Duration,
    /// HTTP/2 streams one connection may have open (rapid-reset floods stay bounded).
    pub max_streams: u32,
    /// Reviews being evaluated at once; more wait their turn.
    pub max_concurrent_reviews: usize,
    /// How long a stop waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: crate::config::DEFAULT_MAX_BODY_BYTES,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_streams: 64,
            max_concurrent_reviews: 64,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

struct Shared {
    app: App,
    /// Evaluation slots; a permit lives as long as its evaluation.
    reviews: Arc<Semaphore>,
}

/// A running server.
pub struct Handle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, fails `/readyz`, lets requests in flight finish, and returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves until [`Handle::shutdown`].
pub async fn spawn(listen: SocketAddr, tls: Arc<ServerConfig>, app: App) -> Result<Handle> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        reviews: Arc::new(Semaphore::new(app.limits.max_concurrent_reviews.max(1))),
        app,
    });
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(tls),
        shared,
        stopped,
    ));
    Ok(Handle { addr, stop, task })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let watcher = graceful.watcher();
                    tokio::spawn(connection(tcp, peer, acceptor.clone(), shared.clone(), watcher));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => break,
        }
    }
    shared.app.readiness.set_draining();
    drop(listener);
    let drain = shared.app.limits.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "requests still in flight after the drain timeout; closing"
        );
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let limits = shared.app.limits;
    let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_pending_accept_reset_streams(limits.max_streams as usize)
        .keep_alive_interval(Duration::from_secs(30));
    let service = service_fn(move |request| route(shared.clone(), request));
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .into_owned();
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

const MUTATE_PATHS: [&str; 2] = ["/mutate", "/mutate--v1-pod"];

async fn route(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let app = &shared.app;
    if request.method() == Method::POST && MUTATE_PATHS.contains(&path) {
        return Ok(mutate(&shared, request).await);
    }
    let probe = health::probe(path, &app.readiness, &app.describe_policy);
    Ok(match (request.method(), probe) {
        (&Method::GET, Some((status, body))) => text(status, body),
        (_, Some(_)) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
        _ if MUTATE_PATHS.contains(&path) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    })
}

async fn mutate(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let _in_flight = shared.app.metrics.review_started();
    let limits = &shared.app.limits;
    let (parts, body) = request.into_parts();
    let read = request_body::read(
        body,
        &parts.headers,
        limits.max_body_bytes,
        tokio::time::Instant::from_std(started) + limits.body_timeout,
    );
    let body = match read.await {
        Ok(body) => body,
        Err(refusal) => return refused(shared, refusal, parts.version, started),
    };
    let Ok(slot) = shared.reviews.clone().acquire_owned().await else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    };
    // On this task: a review is cheaper than a hand-off to another thread. A client that gives
    // up drops this future, which ends the guest call and only then frees its slot.
    let reply = admission::review(&body, shared.app.mutator.as_ref(), shared.app.on_error).await;
    drop(slot);
    log_reply(&reply, started);
    let metrics = &shared.app.metrics;
    metrics.review(reply.verdict, started.elapsed().as_secs_f64());
    for injection in &reply.injections {
        metrics.injected(&injection.manager);
    }
    Response::builder()
        .status(reply.http_status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|_| {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n".to_owned(),
            )
        })
}

/// One event about a review, with the fields every such line carries.
macro_rules! review_event {
    ($level:expr, $reply:expr, $micros:expr, $($fields:tt)+) => {
        tracing::event!(
            $level,
            uid = $reply.uid.as_str(),
            namespace = $reply.pod.namespace.as_str(),
            name = $reply.pod.name.as_str(),
            generate_name = $reply.pod.generate_name.as_str(),
            micros = $micros,
            $($fields)+
        )
    };
}

/// One line per refusal (warn) and per injection (info); everything else at debug.
fn log_reply(reply: &admission::Reply, started: Instant) {
    use tracing::Level;
    let micros = started.elapsed().as_micros() as u64;
    let verdict = reply.verdict;
    match &reply.reason {
        Some(reason) => review_event!(
            Level::WARN,
            reply,
            micros,
            ?verdict,
            reason,
            "review refused"
        ),
        None if verdict == admission::Verdict::Patched => {
            let injected = injected_names(&reply.injections);
            review_event!(Level::INFO, reply, micros, injected, "secrets injected")
        }
        None => review_event!(Level::DEBUG, reply, micros, ?verdict, "review answered"),
    }
}

/// `group/key (Manager)`, comma-separated: names only, never values.
fn injected_names(injections: &[crate::policy::Injection]) -> String {
    let names: Vec<String> = injections
        .iter()
        .map(|i| format!("{}/{} ({})", i.group, i.key, i.manager))
        .collect();
    names.join(", ")
}

/// The answer to a body we would not take: what was wrong with it and, on HTTP/1, whether the
/// connection is done (part of the body is still unread in it). Logged and counted like a
/// malformed review: the pod it carried is not admitted.
fn refused(
    shared: &Shared,
    refusal: Refusal,
    version: http::Version,
    started: Instant,
) -> Response<Full<Bytes>> {
    let limits = &shared.app.limits;
    let (status, reason, unread) = match refusal {
        Refusal::TooLarge { limit, unread } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
            unread,
        ),
        Refusal::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {:?}", limits.body_timeout),
            true,
        ),
        Refusal::Unreadable(err) => (
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {err}"),
            false,
        ),
    };
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    tracing::warn!(status = status.as_u16(), micros, reason, "request refused");
    shared
        .app
        .metrics
        .review(admission::Verdict::Invalid, elapsed.as_secs_f64());
    let mut response = text(status, format!("{reason}\n"));
    // HTTP/2 ends just the stream, and forbids the header.
    if unread && version <= http::Version::HTTP_11 {
        let close = header::HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
