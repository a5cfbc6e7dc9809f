//! The HTTPS server: TLS handshake, HTTP/1.1 or HTTP/2 as ALPN chose, routing, and a graceful
//! stop; whatever clients send, within the limits of [`connections`] (how many, how long silent
//! or idle), [`budget`] (the memory reviews in flight may hold) and [`request_body`].
//!
//! Routes: `POST /mutate` and Flyte's `POST /mutate--v1-pod` answer AdmissionReviews;
//! `GET /healthz` says the process is alive; `GET /readyz` says it is serving a policy, and which.

pub mod budget;
pub mod connections;
pub mod invalidation_port;
pub mod metrics_port;
pub mod request_body;
pub mod side_port;

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
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use self::budget::{NoRoom, Plan, Reviews};
use self::connections::{Activity, ConnectionLimits, Gate, supervise, within_first_request};
use self::request_body::Refusal;
use crate::admission;
use crate::config::OnError;
use crate::health::{self, Describe, Readiness};
use crate::metrics::Metrics;
use crate::policy::Call;
use crate::policy::Mutator;
use crate::tasks::Tasks;

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
    /// How the memory budget is divided (connections, reviews, guest instances).
    pub plan: Plan,
    pub connections: ConnectionLimits,
    /// For a review's whole body, once its headers are in (a slow body holds a connection too).
    pub body_timeout: Duration,
    /// From a review's headers to its answer: the registered `timeoutSeconds` less a margin.
    pub review_deadline: Duration,
    /// The most memory one guest instance may have, whatever its review was charged.
    pub guest_memory: usize,
    /// How long a stop waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let plan = Plan::new(budget::DEFAULT_BUDGET).expect("the default budget is large enough");
        Self {
            max_body_bytes: crate::config::DEFAULT_MAX_BODY_BYTES,
            plan,
            connections: ConnectionLimits {
                max: plan.max_connections,
                first_request: Duration::from_secs(10),
                idle: Duration::from_secs(120),
            },
            body_timeout: Duration::from_secs(10),
            review_deadline: review_deadline(5),
            guest_memory: 64 << 20,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// What a review may take of the API server's `timeout_seconds`: the rest is the API server's
/// call, the network and the answer's way back.
pub fn review_deadline(timeout_seconds: u32) -> Duration {
    let whole = Duration::from_secs(u64::from(timeout_seconds.max(1)));
    let margin = (whole / 5).max(Duration::from_millis(500)).min(whole / 2);
    whole - margin
}

struct Shared {
    app: App,
    reviews: Reviews,
    gate: Gate,
    stop: watch::Receiver<bool>,
}

/// The admission port, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: App,
}

/// Binds `listen` for the admission port.
pub async fn bind(listen: SocketAddr, tls: Arc<ServerConfig>, app: App) -> Result<Server> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    Ok(Server {
        listener,
        acceptor: TlsAcceptor::from(tls),
        app,
    })
}

impl Server {
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `stop` turns true, then stops accepting, fails `/readyz` and lets requests
    /// in flight finish.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let limits = self.app.limits;
        self.app.metrics.memory(limits.plan.total, 0);
        let shared = Arc::new(Shared {
            reviews: Reviews::new(&limits.plan),
            gate: Gate::new(
                "admission",
                limits.connections.max,
                self.app.metrics.clone(),
            ),
            stop,
            app: self.app,
        });
        accept_loop(self.listener, self.acceptor, shared).await;
    }

    /// Registers the admission port with `tasks`: the replica cannot serve without it, so its
    /// end turns the replica unready.
    pub fn start(self, tasks: &mut Tasks) {
        tasks.spawn_once_graceful("admission server", |stop| self.run(stop));
    }
}

/// A server running on its own, for tests and benchmarks; [`Handle::shutdown`] stops it.
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
    let server = bind(listen, tls, app).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.run(stopped));
    Ok(Handle { addr, stop, task })
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                // A full port closes the connection at once: queued in the kernel, it would only
                // wait for a slot past its client's patience.
                Ok((tcp, peer)) => if let Some(pass) = shared.gate.enter() {
                    let (shared, acceptor) = (shared.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        connection(tcp, peer, acceptor, &shared).await;
                        drop(pass);
                    });
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = crate::tasks::stopped(shared.stop.clone()) => break,
        }
    }
    shared.app.readiness.set_draining();
    drop(listener);
    let drain = shared.app.limits.drain_timeout;
    if !shared.gate.drained(drain).await {
        tracing::warn!(
            ?drain,
            "requests still in flight after the drain timeout; closing"
        );
    }
}

/// One connection, from TLS to its end: HTTP/2 when ALPN chose it, else HTTP/1.1.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: &Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let limits = shared.app.limits;
    let activity = Activity::new();
    let handshake = within_first_request(&activity, &limits.connections, acceptor.accept(tcp));
    let tls = match handshake.await {
        Some(Ok(tls)) => tls,
        Some(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        None => {
            tracing::debug!(%peer, "TLS handshake timed out");
            shared.app.metrics.connection_timed_out("first_request");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let requests = activity.clone();
    let routed = shared.clone();
    let service = service_fn(move |request| requests.answering(route(routed.clone(), request)));
    let io = TokioIo::new(tls);
    let (stop, metrics) = (shared.stop.clone(), &shared.app.metrics);
    let ended = match h2 {
        true => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(budget::MAX_STREAMS)
                .max_pending_accept_reset_streams(budget::MAX_STREAMS as usize)
                .initial_stream_window_size(budget::STREAM_WINDOW)
                .initial_connection_window_size(budget::CONNECTION_WINDOW)
                .max_header_list_size(16 << 10)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection(io, service);
            supervise(conn, &activity, &limits.connections, stop, metrics)
                .await
                .map_err(|err| err.to_string())
        }
        false => {
            let conn = connections::http1(budget::READ_BUFFER).serve_connection(io, service);
            supervise(conn, &activity, &limits.connections, stop, metrics)
                .await
                .map_err(|err| err.to_string())
        }
    };
    if let Err(err) = ended {
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
    // Room first, for what the body says it is (or the most it may be): a body is read only
    // into memory the budget has for it.
    let declared = request_body::declared_length(&parts.headers);
    let charged = declared
        .unwrap_or(limits.max_body_bytes as u64)
        .min(limits.max_body_bytes as u64);
    let wait = budget::WAIT.min(limits.review_deadline / 4);
    let room = match shared
        .reviews
        .admit(charged, limits.guest_memory, wait)
        .await
    {
        Ok(room) => room,
        Err(refused) => return no_room(shared, refused, started),
    };
    let metrics = &shared.app.metrics;
    metrics.memory(limits.plan.total, shared.reviews.in_use(&limits.plan));
    let arrived = tokio::time::Instant::from_std(started);
    let read = request_body::read(
        body,
        &parts.headers,
        limits.max_body_bytes,
        arrived + limits.body_timeout,
    );
    let body = match read.await {
        Ok(body) => body,
        Err(refusal) => return refused(shared, refusal, parts.version, started),
    };
    let call = Call::starting_at(arrived, limits.review_deadline, room.cost.guest_memory);
    // On this task: a review is cheaper than a hand-off to another thread. A client that gives
    // up drops this future, which ends the guest call and only then frees its room.
    let reply = admission::review(
        &body,
        shared.app.mutator.as_ref(),
        shared.app.on_error,
        &call,
    )
    .await;
    drop(room);
    metrics.memory(limits.plan.total, shared.reviews.in_use(&limits.plan));
    log_reply(&reply, started);
    if reply.timed_out {
        metrics.deadline_exceeded();
    }
    metrics.review(reply.verdict.label(), started.elapsed().as_secs_f64());
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

/// The answer to a review the memory budget has no room for: 503, at once or after a short
/// wait, so the API server's retry (or the next pod) comes back when the flood has passed.
fn no_room(shared: &Shared, refused: NoRoom, started: Instant) -> Response<Full<Bytes>> {
    let plan = &shared.app.limits.plan;
    let share = match refused.large {
        true => format!("{} MiB for large reviews", plan.large_reviews >> 20),
        false => format!("{} MiB", plan.reviews >> 20),
    };
    let reason = format!(
        "the webhook's memory budget has no room for this review ({} KiB with its guest; \
         reviews in flight hold the {share} they may use)",
        refused.cost.bytes >> 10
    );
    let metrics = &shared.app.metrics;
    metrics.rejected("memory");
    metrics.review(
        admission::Verdict::Invalid.label(),
        started.elapsed().as_secs_f64(),
    );
    tracing::warn!(status = 503, reason, "request refused");
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
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
        .review(admission::Verdict::Invalid.label(), elapsed.as_secs_f64());
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
