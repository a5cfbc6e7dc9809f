//! The HTTPS client the GCP and Azure stores read with (and Azure's credentials fetch tokens
//! with). rustls with ring, as the rest of the binary; trusted roots are the platform's, so
//! `SSL_CERT_FILE` adds a private CA (a proxy's, or a test's fake).

use std::time::Duration;

use anyhow::{Context, Result};

/// A read that takes longer fails; the policy's own lookup gives up sooner (3 s).
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn client() -> Result<reqwest::Client> {
    with_roots(Vec::new())
}

/// A client that also trusts `roots`.
pub fn with_roots(roots: Vec<reqwest::Certificate>) -> Result<reqwest::Client> {
    install_ring();
    reqwest::Client::builder()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .tls_certs_merge(roots)
        .build()
        .context("building the HTTPS client")
}

/// reqwest and Google's auth crate are built without a crypto provider of their own: they take
/// the process's, which must be set before either is used.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The body of a store's answer to a read: `None` for 404 (no such secret), an error naming
/// `service`, the status and the error body's reason for any other failure.
pub async fn found(response: reqwest::Response, service: &str) -> Result<Option<bytes::Bytes>> {
    let status = response.status();
    let body = response.bytes().await?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    anyhow::ensure!(
        status.is_success(),
        "{service} answered {status} {}",
        reason(&body).unwrap_or_default()
    );
    Ok(Some(body))
}

/// Google's and Azure's error bodies share a shape: `{"error": {"code", "message"}}`, Google's
/// adding `status` (its `code` is the HTTP number), Azure's `code` being a name.
#[derive(serde::Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: String,
}

/// `<status or code>: <message>`, from an error body of that shape.
fn reason(body: &[u8]) -> Option<String> {
    let error = serde_json::from_slice::<ErrorResponse>(body).ok()?.error;
    let name = match (error.status, error.code) {
        (Some(status), _) => status,
        (None, serde_json::Value::String(code)) => code,
        (None, code) => code.to_string(),
    };
    Some(format!("{name}: {}", error.message))
}
