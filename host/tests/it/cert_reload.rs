//! The serving certificate is swapped while connections stay up, and a bad pair never takes over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrets_webhook::certs::{self, Lifetimes};
use secrets_webhook::metrics::Metrics;

use crate::common::{self, Options, TestServer};

fn localhost_bundle() -> certs::Bundle {
    certs::generate(
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        Lifetimes::default(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_without_dropping_connections() {
    let server = TestServer::start(Options::default()).await;
    let old_ca = server.ca_pem.clone();
    let mut kept = server.client().await;
    assert_eq!(kept.request("GET", "/healthz", Vec::new()).await.0, 200);

    let new = localhost_bundle();
    certs::write_dir(server.cert_dir.path(), &new).unwrap();
    assert!(server.certs.reload().unwrap(), "the new pair is loaded");
    assert!(
        !server.certs.reload().unwrap(),
        "unchanged files are not reloaded"
    );

    // The connection opened before the swap keeps working.
    assert_eq!(kept.request("GET", "/healthz", Vec::new()).await.0, 200);
    // New handshakes present the new certificate: only its CA verifies them.
    assert!(server.try_tls_stream(&new.ca_pem, &[b"h2"]).await.is_ok());
    assert!(server.try_tls_stream(&old_ca, &[b"h2"]).await.is_err());

    // A certificate and a key that do not belong together keep the current pair.
    let other = localhost_bundle();
    let mismatched = certs::Bundle {
        key_pem: other.key_pem,
        ..localhost_bundle()
    };
    certs::write_dir(server.cert_dir.path(), &mismatched).unwrap();
    let err = server.certs.reload().unwrap_err();
    assert!(format!("{err:#}").contains("does not fit"), "{err:#}");
    assert!(server.try_tls_stream(&new.ca_pem, &[b"h2"]).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_picks_up_a_renewed_secret() {
    let server = TestServer::start(Options::default()).await;
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(
        server
            .certs
            .clone()
            .watch(Duration::from_secs(3600), metrics.clone()),
    );
    // The watcher exports the expiry as it starts (the gauge reads 0 until then).
    let expiry = || -> f64 {
        let text = metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("secrets_webhook_cert_expiry_timestamp_seconds "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    common::wait_until("a cert expiry exported", || expiry() > 0.0).await;

    let new = localhost_bundle();
    certs::write_dir(server.cert_dir.path(), &new).unwrap();
    // No poll for an hour: only the directory event can bring the new certificate in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.try_tls_stream(&new.ca_pem, &[b"h2"]).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}
