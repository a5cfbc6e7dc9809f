//! Bad input gets a clear answer and the server keeps serving everyone else.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    self, Options, TestServer, labelled_pod, labelled_review, message, review_with,
};

async fn assert_still_serving(server: &TestServer) {
    let mut client = server.client().await;
    let (status, response) = client.post("/mutate", labelled_review()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reviews_get_400_with_a_reason() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut without_uid = review_with(labelled_pod());
    without_uid["request"]
        .as_object_mut()
        .unwrap()
        .remove("uid");
    let mut wrong_version = review_with(labelled_pod());
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut wrong_kind = review_with(labelled_pod());
    wrong_kind["kind"] = json!("ConfigMap");
    let mut without_object = review_with(labelled_pod());
    without_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            b"{\"apiVersion\": ".to_vec(),
            "malformed AdmissionReview",
        ),
        ("empty body", Vec::new(), "malformed AdmissionReview"),
        (
            "not UTF-8",
            vec![0xff, 0xfe, 0x7b, 0x80],
            "malformed AdmissionReview",
        ),
        (
            "a JSON array",
            b"[1,2,3]".to_vec(),
            "malformed AdmissionReview",
        ),
        (
            "wrong apiVersion",
            serde_json::to_vec(&wrong_version).unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            "wrong kind",
            serde_json::to_vec(&wrong_kind).unwrap(),
            "kind AdmissionReview",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "has no request",
        ),
        (
            "no uid",
            serde_json::to_vec(&without_uid).unwrap(),
            "request.uid is missing",
        ),
        (
            "no object",
            serde_json::to_vec(&without_object).unwrap(),
            "request.object is missing",
        ),
    ];
    for (name, body, reason) in cases {
        let (status, response) = client.post("/mutate", body).await;
        assert_eq!(status, 400, "{name}: {response}");
        assert_eq!(response["response"]["allowed"], false, "{name}");
        assert_eq!(response["response"]["status"]["code"], 400, "{name}");
        assert!(message(&response).contains(reason), "{name}: {response}");
    }
    // Escapes in the envelope are still the same strings.
    let escaped = serde_json::to_string(&review_with(labelled_pod()))
        .unwrap()
        .replace("admission.k8s.io/v1", "admission.k8s.io\\/v1");
    let (status, response) = client.post("/mutate", escaped.into_bytes()).await;
    assert_eq!(status, 200, "{response}");
    // A review we can read but refuse still echoes its uid.
    let (_, response) = client
        .post("/mutate", serde_json::to_vec(&wrong_version).unwrap())
        .await;
    assert_eq!(response["response"]["uid"], "test-uid");
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_are_not_pods_are_denied_not_crashed_on() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client().await;
    let mut deep = String::new();
    for _ in 0..100_000 {
        deep.push('[');
    }
    for _ in 0..100_000 {
        deep.push(']');
    }
    let mut pod_with_bomb = labelled_pod();
    pod_with_bomb["spec"]["containers"][0]["args"] = json!("placeholder");
    let text = serde_json::to_string(&review_with(pod_with_bomb))
        .unwrap()
        .replace("\"placeholder\"", &deep);
    // A field the policy does not read is skipped without recursion: the pod is served.
    let (status, response) = client.post("/mutate", text.into_bytes()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    // In a field it reads, the pod is refused for its shape.
    let mut pod_with_bomb = labelled_pod();
    pod_with_bomb["spec"]["containers"][0]["env"] = json!("placeholder");
    let text = serde_json::to_string(&review_with(pod_with_bomb))
        .unwrap()
        .replace("\"placeholder\"", &deep);
    let (status, response) = client.post("/mutate", text.into_bytes()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["response"]["allowed"], false);
    assert!(message(&response).contains("malformed pod"), "{response}");

    let bomb_outside_object = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","options":{deep}}}}}"#
    );
    // Fields we do not read are skipped without recursion: no stack overflow, and a request
    // that is not a Pod CREATE passes unchanged.
    let (status, response) = client
        .post("/mutate", bomb_outside_object.into_bytes())
        .await;
    assert_eq!(
        (status, &response["response"]["allowed"]),
        (200, &json!(true)),
        "{response}"
    );

    let (status, response) = client
        .post(
            "/mutate",
            serde_json::to_vec(&review_with(json!([1, 2]))).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        message(&response).contains("not a JSON object"),
        "{response}"
    );

    let mut bad_shape = labelled_pod();
    bad_shape["spec"]["containers"] = json!({"name": "main"});
    let (_, response) = client
        .post(
            "/mutate",
            serde_json::to_vec(&review_with(bad_shape)).unwrap(),
        )
        .await;
    assert!(
        message(&response).contains("spec.containers is not a list"),
        "{response}"
    );

    let mut many = labelled_pod();
    let annotations = many["metadata"]["annotations"].as_object_mut().unwrap();
    for i in 0..20_000 {
        annotations.insert(format!("example.com/a{i}"), json!("x"));
    }
    let (status, response) = client
        .post("/mutate", serde_json::to_vec(&review_with(many)).unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        response["response"]["patchType"], "JSONPatch",
        "20,000 annotations still work"
    );
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_at_the_limit() {
    let limits = secrets_webhook::server::Limits {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    let server = TestServer::start(Options {
        limits,
        ..Options::default()
    })
    .await;
    let base = labelled_review();
    let padded = |len: usize| {
        // Whitespace is valid JSON, so only the size differs.
        let mut body = base.clone();
        body.resize(len, b' ');
        body
    };
    let (status, response) = server
        .client()
        .await
        .post("/mutate", padded(64 * 1024))
        .await;
    assert_eq!(status, 200, "exactly at the limit: {response}");
    // One byte over, and 256 KiB over: the client still sending when refused must get the 413, not
    // a reset connection (CI once failed here on "broken pipe": the server closed with the body
    // unread). The body is read and dropped, so the same connection carries the next review.
    let discard = secrets_webhook::server::request_body::DISCARD_BYTES as usize;
    for mut client in [server.client().await, server.client_h2().await] {
        for excess in [1, discard] {
            let (status, body) = client
                .request("POST", "/mutate", padded(64 * 1024 + excess))
                .await;
            assert_eq!(status, 413, "{excess} bytes over");
            assert!(String::from_utf8_lossy(&body).contains("exceeds the limit of 65536 bytes"));
            let (status, response) = client.post("/mutate", labelled_review()).await;
            assert_eq!(status, 200, "the connection still serves: {response}");
        }
    }

    // Further over: refused on its Content-Length before any of it is sent, connection closed.
    let mut stream = server.tls_stream(&[b"http/1.1"]).await;
    let length = 64 * 1024 + discard + 1;
    let head = post_head(&format!("Content-Length: {length}"));
    stream.write_all(&head).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert_head(&head, 413, true);
    assert!(String::from_utf8_lossy(&body).contains("exceeds the limit of 65536 bytes"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok() && rest.is_empty(),
        "then the server hangs up"
    );

    // Chunked, so no length up front: refused once past the limit; what was owed is read, so the
    // connection carries the next review.
    let mut stream = server.tls_stream(&[b"http/1.1"]).await;
    let chunk = vec![b' '; 70_000];
    let mut request = post_head("Transfer-Encoding: chunked");
    request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    request.extend_from_slice(&chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_head(&head, 413, false);
    let review = labelled_review();
    let mut request = post_head(&format!("Content-Length: {}", review.len()));
    request.extend_from_slice(&review);
    stream.write_all(&request).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["response"]["patchType"], "JSONPatch");

    assert_still_serving(&server).await;
    server.stop().await;
}

/// The head of a raw HTTP/1.1 `POST /mutate` whose body `framing` (one header) describes.
fn post_head(framing: &str) -> Vec<u8> {
    format!("POST /mutate HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n").into_bytes()
}

/// A raw response head has `status`, and says `connection: close` exactly when `closes`.
fn assert_head(head: &str, status: u16, closes: bool) {
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    let close = head
        .to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n");
    assert_eq!(close, closes, "{head}");
}

/// One HTTP/1.1 response with a Content-Length: its head (status line and headers) and body.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end + 4]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if received.len() >= end + 4 + length {
                    let body = received[end + 4..end + 4 + length].to_vec();
                    return (head, body);
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed mid-response: {received:?}");
            received.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_methods() {
    let server = TestServer::start(Options::default()).await;
    let mut client = server.client_h2().await;
    assert_eq!(client.request("GET", "/mutate", Vec::new()).await.0, 405);
    assert_eq!(client.request("POST", "/validate", Vec::new()).await.0, 404);
    assert_eq!(
        client.request("GET", "/healthz", Vec::new()).await,
        (200, b"ok\n".to_vec())
    );
    let (status, body) = client.request("GET", "/readyz", Vec::new()).await;
    assert_eq!(status, 200);
    let digest = server.active.digest();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("ready policy={digest}\n")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_plaintext_clients_are_cut_off() {
    let mut limits = secrets_webhook::server::Limits {
        body_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    limits.connections.first_request = Duration::from_millis(500);
    let server = TestServer::start(Options {
        limits,
        ..Options::default()
    })
    .await;

    // Plaintext HTTP on the TLS port: the handshake fails and the connection closes.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server must close a plaintext connection");
    assert!(!String::from_utf8_lossy(&buf).contains("200"));

    // A TCP connection that never starts TLS is dropped when its first request is due.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok() && started.elapsed() < Duration::from_secs(5));

    // Slowloris: TLS is up but the headers never finish.
    let mut slow = server.tls_stream(&[b"http/1.1"]).await;
    slow.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "a client that never finishes its headers is disconnected"
    );

    // Slow body: the headers promise 100 bytes, 10 come, then nothing.
    let mut slow = server.tls_stream(&[b"http/1.1"]).await;
    let mut request = post_head("Content-Length: 100");
    request.extend_from_slice(b"{\"apiVersi");
    slow.write_all(&request).await.unwrap();
    let (head, body) = read_response(&mut slow).await;
    assert_head(&head, 408, true);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "request body not received within 500ms\n"
    );

    assert_still_serving(&server).await;
    server.stop().await;
}

/// Waits until the server closes `stream` (EOF or an error), for up to `within`; whether it did.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// Connections that say nothing are closed when their first request is due (HTTP/1.1 and
/// HTTP/2 alike, the TLS handshake done or not); connections idle after a request are closed
/// when their idle time is up; a full port turns new connections away at once; and a normal
/// review is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_excess_connections_are_closed() {
    let mut limits = secrets_webhook::server::Limits::default();
    limits.connections.max = 64;
    limits.connections.first_request = Duration::from_millis(500);
    limits.connections.idle = Duration::from_millis(1500);
    let server = TestServer::start(Options {
        limits,
        ..Options::default()
    })
    .await;

    // 40 silent connections of each kind.
    let mut silent_tls = Vec::new();
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        for _ in 0..20 {
            silent_tls.push(server.tls_stream(&[alpn]).await);
        }
    }
    let mut silent_tcp = Vec::new();
    for _ in 0..20 {
        silent_tcp.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    for stream in &mut silent_tls {
        assert!(closed_within(stream, Duration::from_secs(3)).await);
    }
    for stream in &mut silent_tcp {
        assert!(closed_within(stream, Duration::from_secs(3)).await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A connection that was served stays for its idle time, then is closed.
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let tls = server.tls_stream(&[alpn]).await;
        let (mut client, mut conn) = match alpn {
            b"h2" => {
                let (sender, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                .unwrap();
                let conn: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                    Box::pin(async move { conn.await.map_err(|e| e.to_string()) });
                (common::Client::H2(sender), conn)
            }
            _ => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .unwrap();
                let conn: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
                    Box::pin(async move { conn.await.map_err(|e| e.to_string()) });
                (common::Client::H1(sender), conn)
            }
        };
        let served = tokio::select! {
            answer = client.post("/mutate", labelled_review()) => answer,
            _ = &mut conn => panic!("the connection ended before its answer"),
        };
        assert_eq!(served.0, 200);
        let idle_from = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
        assert!(ended.is_ok(), "an idle connection is closed");
        let idle = idle_from.elapsed();
        assert!(idle >= Duration::from_millis(1400), "closed after {idle:?}");
    }

    // Meanwhile nothing else suffered.
    let (status, response) = server
        .client()
        .await
        .post("/mutate", labelled_review())
        .await;
    assert_eq!(
        (status, &response["response"]["allowed"]),
        (200, &json!(true))
    );
    let text = server.metrics.encode();
    let counted = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(counted("secrets_webhook_connections_closed_total{reason=\"first_request\"}") >= 60);
    assert!(counted("secrets_webhook_connections_closed_total{reason=\"idle\"}") >= 2);
    server.stop().await;

    // A full port closes a new connection at once, before TLS.
    let mut limits = secrets_webhook::server::Limits::default();
    limits.connections.max = 4;
    let server = TestServer::start(Options {
        limits,
        ..Options::default()
    })
    .await;
    let mut filling = Vec::new();
    for _ in 0..4 {
        filling.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The server has accepted them all before the next one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut turned_away = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut turned_away, Duration::from_millis(500)).await,
        "a connection over the cap is closed at once"
    );
    let text = server.metrics.encode();
    assert!(
        text.contains("secrets_webhook_requests_rejected_total{reason=\"connections\"} 1"),
        "{text}"
    );
    drop(filling);
    server.stop().await;
}
