//! Reading a request body under a size limit, and refusing an oversized one so the client hears why.
//!
//! Answering 413 while the client is still sending is not enough on HTTP/1: the server closes the
//! connection with unread bytes in its socket, the kernel answers them with a reset, and the client
//! fails its write ("broken pipe") before it reads our 413. So, as Go's net/http does, a refused
//! body is read and dropped up to [`DISCARD_BYTES`] past the limit; the connection then stays
//! usable. A body declared larger than that is refused before any of it is read, and the
//! connection closed.

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
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
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
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
    let ceiling = limit as u64 + DISCARD_BYTES;
    // What may still be read, and dropped, once the body is refused.
    let budget = match declared_length(headers) {
        Some(len) if len > ceiling => {
            return Err(Refusal::TooLarge {
                limit,
                unread: true,
            });
        }
        Some(len) if len > limit as u64 => len,
        _ => match timeout_at(deadline, Limited::new(&mut body, limit).collect()).await {
            Ok(Ok(collected)) => return Ok(collected.to_bytes()),
            Ok(Err(err)) if err.is::<LengthLimitError>() => DISCARD_BYTES,
            Ok(Err(err)) => return Err(Refusal::Unreadable(err)),
            Err(_) => return Err(Refusal::TimedOut),
        },
    };
    let drained = discard(body, budget, deadline).await;
    Err(Refusal::TooLarge {
        limit,
        unread: !drained,
    })
}

/// The body's length as its `content-length` says, if it says.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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
