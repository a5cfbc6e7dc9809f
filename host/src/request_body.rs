//! Reading a request body under a size limit, and refusing an oversized one so the client hears why.
//!
//! Answering 413 while the client is still sending is not enough on HTTP/1: the server closes the
//! connection with unread bytes in its socket, the kernel answers them with a reset, and the client
//! fails its write ("broken pipe") before it reads our 413. So, as Go's net/http does, a refused
//! body is read and dropped up to [`DISCARD_BYTES`] past the limit before answering; anything
//! larger is answered at once and the connection closed.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};

/// How much of a refused body is read and dropped so the client gets its 413 (Go uses the same).
pub const DISCARD_BYTES: u64 = 256 * 1024;

/// Why no body came back.
#[derive(Debug)]
pub enum Refusal {
    /// Over the limit; `unread` if some of it is still in the connection.
    TooLarge { limit: usize, unread: bool },
    /// The client broke off or sent a malformed body.
    Unreadable(hyper::Error),
    /// The body was not all there by the deadline (a slow client holding a connection).
    TimedOut,
}

/// The whole body if it is at most `limit` bytes and all there by `deadline`. A declared
/// `Content-Length` over the limit is refused before reading; a body that grows past it is refused
/// when it does.
pub async fn read(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, Refusal> {
    let declared = declared_length(headers);
    if declared.is_none_or(|len| len <= limit as u64) {
        let capacity = declared.unwrap_or(0) as usize;
        match timeout_at(deadline, collect(&mut body, limit, capacity)).await {
            Ok(Some(received)) => return received,
            Ok(None) => {}
            Err(_) => return Err(Refusal::TimedOut),
        }
    }
    // Count from what the client meant to send, so a declared length decides up front.
    let owed = declared.map_or(DISCARD_BYTES, |len| len.saturating_sub(limit as u64));
    let drained = owed <= DISCARD_BYTES && discard(body, deadline).await;
    Err(Refusal::TooLarge {
        limit,
        unread: !drained,
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The body, or `None` once it passes `limit` bytes.
async fn collect(
    body: &mut Incoming,
    limit: usize,
    capacity: usize,
) -> Option<Result<Bytes, Refusal>> {
    let mut received = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return Some(Err(Refusal::Unreadable(err))),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if received.len() + data.len() > limit {
            return None;
        }
        received.extend_from_slice(data);
    }
    Some(Ok(received.freeze()))
}

/// Reads and drops up to [`DISCARD_BYTES`]; true if the body ended within that, by `deadline`.
async fn discard(mut body: Incoming, deadline: Instant) -> bool {
    let drain = async {
        let mut left = DISCARD_BYTES;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            let Some(rest) = left.checked_sub(len) else {
                return false;
            };
            left = rest;
        }
        true
    };
    timeout_at(deadline, drain).await.unwrap_or(false)
}
