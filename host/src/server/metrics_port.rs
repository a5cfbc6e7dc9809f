//! The plain-HTTP port that serves `/metrics`, `/healthz` and `/readyz` to the kubelet and
//! Prometheus without TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::health::{Describe, Readiness, probe};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// Binds the plain-HTTP port and registers it with `tasks`; returns the bound address.
pub async fn start(
    tasks: &mut Tasks,
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
    let answer = move |request: Request<Incoming>, _| {
        let response = answer(&request, &metrics, &readiness, &describe);
        std::future::ready(response)
    };
    super::side_port::start(
        tasks,
        listener,
        ("metrics", "metrics port"),
        counted,
        answer,
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
