//! The Embedded manager's GCP and Azure stores against local fakes of Secret Manager and Key
//! Vault (`common::cloud_fakes`), each with its token endpoint: credentials come through the
//! official auth crates, values through the stores' REST reads. String and binary values, not
//! found, the cascade and its cache, a refusal (an error, never "not found"), an unreachable store.
#![cfg(any(feature = "gcp", feature = "azure"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrets_webhook::secrets::scope::Scope;
use secrets_webhook::secrets::store::{Backend, Store};

use crate::common;

fn scope() -> Scope {
    Scope {
        org: "acme".into(),
        domain: "development".into(),
        project: "ml".into(),
    }
}

/// Prints (never asserts) what a read costs against the fake on loopback: the first (a token
/// fetched, then the read), later ones (the token cached), and a read the store's cache answers.
async fn report(store: &str, first: Duration, backend: Arc<dyn Backend>, id: &str) {
    const READS: u32 = 20;
    let started = Instant::now();
    for _ in 0..READS {
        backend.get(id).await.unwrap();
    }
    let read = started.elapsed() / READS;
    let cache = Store::new(backend, Some(Duration::from_secs(60)));
    cache.get(id).await.unwrap();
    let started = Instant::now();
    for _ in 0..READS {
        cache.get(id).await.unwrap();
    }
    let cached = started.elapsed() / READS;
    eprintln!(
        "{store} store against its fake: first read {first:?}, next reads {read:?}, cached {cached:?}"
    );
}

#[cfg(feature = "gcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_secret_manager_through_a_fake() {
    use common::cloud_fakes::FakeGcp;
    use secrets_webhook::secrets::gcp::GcpBackend;
    use secrets_webhook::secrets::https;

    let gcp = FakeGcp::start("flyte-prod").await;
    let [project, _, org] = scope().cascade();
    gcp.set(&org.secret_id("db"), b"org value");
    gcp.set(&project.secret_id("token"), b"project token");
    gcp.set(&project.secret_id("cert"), &[0xff, 0x00, 0x01]);

    https::install_ring();
    let adc = || {
        google_cloud_auth::credentials::user_account::Builder::new(gcp.credentials_json())
            .build()
            .unwrap()
    };
    let backend = |project: &str| {
        GcpBackend::new(
            project,
            Some(&gcp.endpoint()),
            adc(),
            https::client().unwrap(),
        )
        .unwrap()
    };
    let store_backend = Arc::new(backend("flyte-prod"));
    let first = Instant::now();
    assert_eq!(
        store_backend
            .get(&project.secret_id("token"))
            .await
            .unwrap(),
        Some(b"project token".to_vec())
    );
    let token = project.secret_id("token");
    report("GCP", first.elapsed(), store_backend.clone(), &token).await;
    assert_eq!(
        store_backend.get(&project.secret_id("cert")).await.unwrap(),
        Some(vec![0xff, 0x00, 0x01])
    );
    assert_eq!(
        store_backend.get(&project.secret_id("db")).await.unwrap(),
        None
    );
    assert_eq!(
        gcp.calls.count("POST /token"),
        1,
        "one token, cached by the auth crate"
    );

    // The cascade: the project has no db, the organization has; cached until invalidated.
    let store = Store::new(store_backend.clone(), Some(Duration::from_secs(60)));
    let found = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(
        (found.scope, found.value),
        (org.clone(), b"org value".to_vec())
    );
    gcp.set(&org.secret_id("db"), b"rotated");
    let reads = gcp.calls.count("GET");
    assert_eq!(
        store.resolve(&scope(), "db").await.unwrap().unwrap().value,
        b"org value"
    );
    assert_eq!(
        gcp.calls.count("GET"),
        reads + 2,
        "only the missing scopes asked again"
    );
    assert_eq!(store.invalidate(&scope(), "db"), 1);
    assert_eq!(
        store.resolve(&scope(), "db").await.unwrap().unwrap().value,
        b"rotated"
    );
    assert_eq!(store.resolve(&scope(), "absent").await.unwrap(), None);

    // A refusal is an error naming the id: the org's value must not stand in for the project's.
    gcp.denied.lock().unwrap().push(project.secret_id("db"));
    let err = format!("{:#}", store.resolve(&scope(), "db").await.unwrap_err());
    assert!(
        err.contains("403") && err.contains(&project.secret_id("db")),
        "{err}"
    );
    // Another project's credentials see nothing of this one's: an error, not "not found".
    let err = format!(
        "{:#}",
        backend("other")
            .get(&org.secret_id("db"))
            .await
            .unwrap_err()
    );
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // An id Secret Manager could not hold never reaches the URL.
    let err = format!(
        "{:#}",
        store_backend.get("u__org__a/../b").await.unwrap_err()
    );
    assert!(err.contains("cannot be a GCP secret name"), "{err}");
    assert!(GcpBackend::new("a/b", None, adc(), https::client().unwrap()).is_err());

    // Unreachable: an error, not "not found".
    let closed = GcpBackend::new(
        "flyte-prod",
        Some(&format!("http://127.0.0.1:{}", common::free_port())),
        adc(),
        https::client().unwrap(),
    )
    .unwrap();
    assert!(closed.get(&org.secret_id("db")).await.is_err());
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_key_vault_through_a_fake() {
    use azure_identity::{
        ClientAssertionCredentialOptions, WorkloadIdentityCredential,
        WorkloadIdentityCredentialOptions,
    };
    use common::cloud_fakes::FakeAzure;
    use secrets_webhook::secrets::azure::AzureBackend;
    use secrets_webhook::secrets::https;

    let azure = FakeAzure::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Names as Flyte 2's codec writes them (base32("db") = MRRA), spelled out here rather than
    // computed by the code under test.
    azure.set_string("1-acme---MRRA", "org value");
    azure.set_raw(
        "1-acme-development-ml-ORXWWZLO",
        r#"{"type":"BINARY","value":"/wAB"}"#,
    );
    azure.set_string("1-acme-development-ml-MNSXE5A", "");
    azure.set_raw("1-acme-development-ml-OBWGC2LO", "hunter2 stored by hand");

    let http = https::with_roots(vec![
        reqwest::Certificate::from_pem(azure.ca_pem.as_bytes()).unwrap(),
    ])
    .unwrap();
    // Workload Identity as AKS sets it up: a projected ServiceAccount token exchanged at Entra.
    let credential = |client_id: &str| {
        let mut cloud = azure_core::cloud::CustomConfiguration::default();
        cloud.authority_host = azure.url();
        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: azure_core::http::ClientOptions {
                    transport: Some(azure_core::http::Transport::new(Arc::new(http.clone()))),
                    cloud: Some(Arc::new(cloud.into())),
                    ..Default::default()
                },
            },
            client_id: Some(client_id.to_owned()),
            tenant_id: Some(azure.tenant.clone()),
            token_file_path: Some(azure.write_token_file(dir.path())),
        }))
        .unwrap()
    };
    let backend = Arc::new(AzureBackend::new(
        &azure.url(),
        credential(&azure.client_id),
        http.clone(),
    ));
    let [project, _, org] = scope().cascade();
    let first = Instant::now();
    assert_eq!(
        backend.get(&project.secret_id("token")).await.unwrap(),
        Some(vec![0xff, 0x00, 0x01])
    );
    let token = project.secret_id("token");
    report("Azure", first.elapsed(), backend.clone(), &token).await;
    assert_eq!(
        backend.get(&project.secret_id("cert")).await.unwrap(),
        Some(vec![])
    );
    assert_eq!(backend.get(&project.secret_id("db")).await.unwrap(), None);
    let err = format!(
        "{:#}",
        backend.get(&project.secret_id("plain")).await.unwrap_err()
    );
    assert!(
        err.contains("not Flyte 2's") && !err.contains("hunter2"),
        "{err}"
    );
    let tenant_token = format!("POST /{}/oauth2/v2.0/token", azure.tenant);
    assert_eq!(azure.calls.count(&tenant_token), 1, "one token, cached");

    let store = Store::new(backend.clone(), Some(Duration::from_secs(60)));
    let found = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(
        (found.scope, found.value),
        (org.clone(), b"org value".to_vec())
    );
    azure.set_string("1-acme---MRRA", "rotated");
    assert_eq!(
        store.resolve(&scope(), "db").await.unwrap().unwrap().value,
        b"org value"
    );
    assert_eq!(store.invalidate(&scope(), "db"), 1);
    assert_eq!(
        store.resolve(&scope(), "db").await.unwrap().unwrap().value,
        b"rotated"
    );

    // A token Entra refuses is an error, never "not found".
    let other = AzureBackend::new(&azure.url(), credential("someone-else"), http.clone());
    let err = format!("{:#}", other.get(&org.secret_id("db")).await.unwrap_err());
    assert!(err.contains("Azure credentials"), "{err}");
    // A vault whose certificate is not trusted: an error.
    let untrusted = AzureBackend::new(
        &azure.url(),
        credential(&azure.client_id),
        https::client().unwrap(),
    );
    let err = format!(
        "{:#}",
        untrusted.get(&org.secret_id("db")).await.unwrap_err()
    );
    assert!(err.contains(&org.secret_id("db")), "{err}");
    // A scope Key Vault cannot name never reaches the URL.
    let err = format!(
        "{:#}",
        backend
            .get("u__org__a/b__domain____project____key__db")
            .await
            .unwrap_err()
    );
    assert!(err.contains("letters, digits and - only"), "{err}");
}
