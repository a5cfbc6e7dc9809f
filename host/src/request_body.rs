//! Reading a request body under a size limit, and refusing an oversized one so the client hears why.
//!
//! Answering 413 while the client is still sending is not enough on HTTP/1: the server closes the
//! connection with unread bytes in its socket, the kernel answers them with a reset, and the client
//! fails its write ("broken pipe") before it reads our 413. So, as Go's net/http does, a refused
//! body is read and dropped as long as the whole of it stays within the limit plus
//! [`DISCARD_BYTES`]; the connection then stays usable. A body declared larger than that is
//! refused before any of it is read, and the connection closed.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, timeout_at};

/// How far past the limit a refused body is still read, so its client gets the 413 (Go's figure).
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

/// The whole body if it is at most `limit` bytes and all there by `deadline`.
pub async fn read(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, Refusal> {
    let declared = declared_length(headers);
    let ceiling = limit as u64 + DISCARD_BYTES;
    if declared.is_some_and(|len| len > ceiling) {
        return Err(Refusal::TooLarge {
            limit,
            unread: true,
        });
    }
    let consumed = match declared {
        // Refused already: read only to drop it.
        Some(len) if len > limit as u64 => 0,
        _ => {
            let capacity = declared.unwrap_or(0) as usize;
            match timeout_at(deadline, collect(&mut body, limit, capacity)).await {
                Ok(Ok(Collected::Body(body))) => return Ok(body),
                Ok(Ok(Collected::Over { consumed })) => consumed,
                Ok(Err(err)) => return Err(Refusal::Unreadable(err)),
                Err(_) => return Err(Refusal::TimedOut),
            }
        }
    };
    let drained = match consumed.checked_sub(ceiling) {
        Some(_) => false,
        None => discard(body, ceiling - consumed, deadline).await,
    };
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

enum Collected {
    Body(Bytes),
    /// Past the limit after `consumed` bytes; nothing kept.
    Over {
        consumed: u64,
    },
}

async fn collect(
    body: &mut Incoming,
    limit: usize,
    capacity: usize,
) -> Result<Collected, hyper::Error> {
    let mut received = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if received.len() + data.len() > limit {
            let consumed = (received.len() + data.len()) as u64;
            return Ok(Collected::Over { consumed });
        }
        received.extend_from_slice(data);
    }
    Ok(Collected::Body(received.freeze()))
}

/// Reads and drops the rest of the body; true if it ended within `budget` bytes, by `deadline`.
async fn discard(mut body: Incoming, budget: u64, deadline: Instant) -> bool {
    let drain = async {
        let mut left = budget;
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
