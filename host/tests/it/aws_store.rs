//! The Embedded manager's AWS store against moto's server (`.ci/moto`), a widely used AWS
//! emulator speaking Secrets Manager's real protocol: string and binary values, not found, the
//! cascade through the store, and a store that cannot be reached (an error, never "not found").
#![cfg(feature = "aws")]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::Credentials;
use aws_sdk_secretsmanager::primitives::Blob;
use secrets_webhook::secrets::aws::{AwsBackend, http_client};
use secrets_webhook::secrets::scope::Scope;
use secrets_webhook::secrets::store::{Backend, Store};

use crate::common;

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    async fn start(test: &str) -> Option<Moto> {
        let program = common::tools::find_or("MOTO_SERVER", test, "eval \"$(.ci/moto)\"")?;
        let port = common::free_port();
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto_server never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Moto { child, port })
    }

    async fn config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{}", self.port))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scope() -> Scope {
    Scope {
        org: "acme".into(),
        domain: "development".into(),
        project: "ml".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_through_moto() {
    let Some(moto) = Moto::start("secrets_manager_through_moto").await else {
        return;
    };
    let config = moto.config().await;
    // Written as Flyte 2's secret service writes them: the secret id is the secret's name.
    let admin = aws_sdk_secretsmanager::Client::new(&config);
    let [project, _, org] = scope().cascade();
    let write = |id: String, string: Option<&str>, binary: Option<&[u8]>| {
        let mut create = admin.create_secret().name(id);
        if let Some(string) = string {
            create = create.secret_string(string);
        }
        if let Some(binary) = binary {
            create = create.secret_binary(Blob::new(binary));
        }
        create.send()
    };
    write(org.secret_id("db"), Some("org value"), None)
        .await
        .unwrap();
    write(project.secret_id("token"), Some("project token"), None)
        .await
        .unwrap();
    write(project.secret_id("cert"), None, Some(&[0xff, 0x00, 0x01]))
        .await
        .unwrap();

    let backend = Arc::new(AwsBackend::from_config(&config));
    assert_eq!(
        backend.get(&project.secret_id("token")).await.unwrap(),
        Some(b"project token".to_vec())
    );
    assert_eq!(
        backend.get(&project.secret_id("cert")).await.unwrap(),
        Some(vec![0xff, 0x00, 0x01])
    );
    assert_eq!(backend.get(&project.secret_id("db")).await.unwrap(), None);

    // The cascade over it: the project has no db, the organization has.
    let store = Store::new(backend.clone(), Some(Duration::from_secs(60)));
    let found = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(
        (found.scope, found.value),
        (org.clone(), b"org value".to_vec())
    );
    assert_eq!(store.resolve(&scope(), "absent").await.unwrap(), None);

    // A cached value serves until invalidated; then the new one is read.
    admin
        .put_secret_value()
        .secret_id(org.secret_id("db"))
        .secret_string("rotated")
        .send()
        .await
        .unwrap();
    let cached = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(cached.value, b"org value");
    assert_eq!(store.invalidate(&scope(), "db"), 1);
    let fresh = store.resolve(&scope(), "db").await.unwrap().unwrap();
    assert_eq!(fresh.value, b"rotated");

    // A store that cannot be reached is an error: never "not found", which would widen.
    drop(moto);
    let err = backend.get(&project.secret_id("token")).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(&project.secret_id("token")),
        "{err:#}"
    );
}
