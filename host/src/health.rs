//! Readiness, and the plain-HTTP port that serves `/metrics`, `/healthz` and `/readyz` to the
//! kubelet and Prometheus without TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Whether the webhook should get traffic: it is serving (and registered, when it registers) and
/// not shutting down.
pub struct Readiness {
    serving: AtomicBool,
    registered: AtomicBool,
    draining: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Readiness {
    /// With `needs_registration`, not ready until the webhook configuration has been applied.
    pub fn new(needs_registration: bool) -> Self {
        Self {
            serving: AtomicBool::new(false),
            registered: AtomicBool::new(!needs_registration),
            draining: AtomicBool::new(false),
        }
    }

    pub fn set_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }

    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
            && self.registered.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
    }

    /// Why not ready, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        if self.draining.load(Ordering::SeqCst) {
            "shutting down"
        } else if !self.serving.load(Ordering::SeqCst) {
            "starting"
        } else if !self.registered.load(Ordering::SeqCst) {
            "waiting for the webhook configuration to be applied"
        } else {
            "ready"
        }
    }
}

/// What `/readyz` reports besides readiness.
pub type Describe = Arc<dyn Fn() -> String + Send + Sync>;

/// The answer to `GET /healthz` or `GET /readyz`, shared by both ports.
pub fn probe(
    path: &str,
    readiness: &Readiness,
    describe: &Describe,
) -> Option<(StatusCode, String)> {
    match path {
        "/healthz" => Some((StatusCode::OK, "ok\n".to_owned())),
        "/readyz" if readiness.is_ready() => {
            Some((StatusCode::OK, format!("ready policy={}\n", describe())))
        }
        "/readyz" => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", readiness.reason()),
        )),
        _ => None,
    }
}

/// Serves the plain-HTTP port until the process ends.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    describe: Describe,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics port {listen}"))?;
    let addr = listener.local_addr()?;
    let counted = metrics.clone();
    crate::server::side_port::spawn(
        listener,
        "metrics",
        counted,
        move |request: Request<Incoming>, _| {
            let response = answer(&request, &metrics, &readiness, &describe);
            std::future::ready(response)
        },
    );
    Ok(addr)
}

fn answer(
    request: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
    describe: &Describe,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, content_type, body) = if request.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".to_owned(),
        )
    } else if path == "/metrics" {
        (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        )
    } else if let Some((status, body)) = probe(path, readiness, describe) {
        (status, "text/plain; charset=utf-8", body)
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
