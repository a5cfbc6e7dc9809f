//! The memory the process keeps whatever clients send. One figure — the container's memory
//! limit (`--memory-budget`, which the Deployment sets from its own limit) — is divided once, at
//! start, into what each part may hold ([`Plan`]):
//!
//! - the process at rest (runtime, compiled policy, TLS, the Embedded manager's caches);
//! - connections: a cap on their number, and HTTP/2 windows and HTTP/1 buffers sized so that a
//!   client cannot push more into a connection than it may hold before it is read;
//! - reviews in flight: each is charged, before its body is read, for the body, the host's copy
//!   of the pod and the guest instance that runs it ([`cost`]), and waits a moment or is answered
//!   503 when the charge does not fit. Large reviews may take only part of it, so a flood of them
//!   leaves room for normal ones.
//!
//! Guest instances are capped per review at what was charged for them, and the pool holds no
//! more instances than the charges allow, so the guests fit inside the reviews' share too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What the shipped Deployment gives a replica (deploy/base/deployment.yaml's memory limit).
pub const DEFAULT_BUDGET: u64 = 128 << 20;

/// The process at rest, with its policy compiled and a few thousand Secrets cached (measured:
/// 16–35 MiB; BENCHMARKS.md).
const AT_REST: u64 = 40 << 20;
/// What a connection may hold unread: HTTP/2's connection window (or HTTP/1's read buffer), TLS
/// records, and the headers of the streams it may have open.
const PER_CONNECTION: u64 = 256 << 10;
/// HTTP/2 flow control: a stream, and a connection in all, may send this much before it is read.
pub const STREAM_WINDOW: u32 = 64 << 10;
pub const CONNECTION_WINDOW: u32 = 128 << 10;
/// HTTP/1's read buffer (hyper's smallest is 8 KiB).
pub const READ_BUFFER: usize = 64 << 10;
/// HTTP/2 streams a connection may have open; each waiting one holds its headers and a task.
pub const MAX_STREAMS: u32 = 32;
/// A guest instance before the pod: its stack, data and allocator's first pages. Measured for
/// the embedded policy: 1.1 MiB at instantiation, 2.1 MiB after a 31 KB pod of 20 containers.
pub const GUEST_BASE: u64 = 3 << 20;
/// A guest's memory per byte of pod: the pod's text, what parsing borrows from it and the
/// patch (bump allocation: nothing is freed within a call). Measured: 3.5 MiB in all for a
/// 2.5 MB pod, so this leaves room for pods that parse into more.
const GUEST_PER_BYTE: u64 = 4;
/// Pages a pooled instance keeps mapped for the next one (cheaper than faulting them in again).
const GUEST_RESIDENT: usize = crate::policy::RESIDENT_BYTES;
/// A body above this is a large review: it draws only on the large reviews' share.
pub const LARGE_BODY: u64 = 64 << 10;
/// How long a review waits for room before it is refused.
pub const WAIT: Duration = Duration::from_secs(1);

/// How the budget is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub total: u64,
    /// Open connections on the admission port.
    pub max_connections: usize,
    /// Bytes reviews in flight may be charged, in all.
    pub reviews: u64,
    /// Of which large reviews may take at most this much.
    pub large_reviews: u64,
    /// Guest instances alive at once: as many as the smallest charges allow.
    pub guest_slots: u32,
}

impl Plan {
    /// Divides `total` bytes.
    pub fn new(total: u64) -> Result<Plan> {
        let least = AT_REST + (32 << 20);
        if total < least {
            bail!(
                "a memory budget of {} MiB is too small: the webhook needs at least {} MiB",
                total >> 20,
                least >> 20
            );
        }
        let usable = total - AT_REST;
        let max_connections = (usable / 8 / PER_CONNECTION).clamp(16, 4096) as usize;
        // A slot costs its charge while in use and its resident pages after; two more slots serve
        // the checks a reload runs.
        let resident = GUEST_RESIDENT as u64;
        let for_reviews = usable - max_connections as u64 * PER_CONNECTION - 2 * resident;
        let reviews = for_reviews / (GUEST_BASE + resident) * GUEST_BASE;
        let guest_slots = u32::try_from(reviews / GUEST_BASE + 2).unwrap_or(u32::MAX);
        Ok(Plan {
            total,
            max_connections,
            reviews,
            large_reviews: reviews / 4 * 3,
            guest_slots,
        })
    }
}

/// What one review is charged, given its body's length, and the memory its guest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub bytes: u64,
    pub guest_memory: usize,
}

/// The charge for a review of `body` bytes whose guest may use at most `guest_cap`: the body and
/// the host's copy of the pod, and the guest's share.
pub fn cost(body: u64, guest_cap: usize) -> Cost {
    let guest = (GUEST_BASE + GUEST_PER_BYTE * body).min(guest_cap as u64);
    Cost {
        bytes: 2 * body + guest,
        guest_memory: guest as usize,
    }
}

/// Room for reviews in flight.
pub struct Reviews {
    /// Units of [`UNIT`] bytes; small reviews' own share.
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// Permits count KiB: a semaphore holds fewer than 2^32 permits.
const UNIT: u64 = 1 << 10;

/// A review's room; released when dropped.
pub struct Room {
    _permit: OwnedSemaphorePermit,
    pub cost: Cost,
}

/// Why a review got no room.
#[derive(Debug)]
pub struct NoRoom {
    pub cost: Cost,
    pub large: bool,
}

impl Reviews {
    pub fn new(plan: &Plan) -> Self {
        let units = |bytes: u64| usize::try_from(bytes / UNIT).unwrap_or(usize::MAX);
        Self {
            small: Arc::new(Semaphore::new(units(plan.reviews - plan.large_reviews))),
            large: Arc::new(Semaphore::new(units(plan.large_reviews))),
        }
    }

    /// Room for a review of `body` bytes. A small review takes from its own share, or from the
    /// large one when that has room at once, and waits up to `wait` for its own. A large review
    /// takes from the large share at once or not at all: while it waited, its first bytes would
    /// sit in the connection's HTTP/2 window, and other streams' bodies behind them.
    pub async fn admit(&self, body: u64, guest_cap: usize, wait: Duration) -> Result<Room, NoRoom> {
        let cost = cost(body, guest_cap);
        let units = u32::try_from(cost.bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let large = body > LARGE_BODY;
        let refused = NoRoom { cost, large };
        let take = |pool: &Arc<Semaphore>| pool.clone().try_acquire_many_owned(units).ok();
        let at_once = match large {
            true => take(&self.large),
            false => take(&self.small).or_else(|| take(&self.large)),
        };
        let permit = match at_once {
            Some(permit) => permit,
            None if large => return Err(refused),
            None => {
                let pool = self.small.clone();
                match tokio::time::timeout(wait, pool.acquire_many_owned(units)).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(refused),
                }
            }
        };
        Ok(Room {
            _permit: permit,
            cost,
        })
    }

    /// Bytes charged to reviews in flight now.
    pub fn in_use(&self, plan: &Plan) -> u64 {
        let free = (self.small.available_permits() + self.large.available_permits()) as u64;
        plan.reviews.saturating_sub(free * UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_limit_is_divided_with_room_for_each_part() {
        let plan = Plan::new(DEFAULT_BUDGET).unwrap();
        let connections = plan.max_connections as u64 * PER_CONNECTION;
        let resident = u64::from(plan.guest_slots) * GUEST_RESIDENT as u64;
        assert!(
            AT_REST + connections + resident + plan.reviews <= plan.total,
            "{plan:?}"
        );
        // The largest review the server takes fits in the large share; normal ones, several at
        // once, in what large ones cannot take.
        let largest = cost(crate::config::DEFAULT_MAX_BODY_BYTES as u64, 64 << 20);
        assert!(largest.bytes <= plan.large_reviews, "{plan:?} {largest:?}");
        let normal = cost(8 << 10, 64 << 20);
        assert!(
            4 * normal.bytes <= plan.reviews - plan.large_reviews,
            "{plan:?}"
        );
        // Every review in flight can have its guest instance, and a reload its two.
        let smallest = cost(0, 64 << 20);
        assert!(plan.reviews / smallest.bytes + 2 <= u64::from(plan.guest_slots));
        assert!(Plan::new(32 << 20).is_err());
    }

    #[tokio::test]
    async fn large_reviews_cannot_take_the_small_ones_share() {
        let plan = Plan::new(DEFAULT_BUDGET).unwrap();
        let reviews = Reviews::new(&plan);
        let big = crate::config::DEFAULT_MAX_BODY_BYTES as u64;
        let mut held = Vec::new();
        while let Ok(room) = reviews.admit(big, 64 << 20, Duration::ZERO).await {
            held.push(room);
        }
        assert!(!held.is_empty());
        assert!(reviews.in_use(&plan) <= plan.large_reviews);
        let refused = reviews
            .admit(big, 64 << 20, Duration::from_millis(10))
            .await
            .err()
            .unwrap();
        assert!(refused.large);
        // A normal review still gets in, and out again.
        let small = reviews
            .admit(4 << 10, 64 << 20, Duration::ZERO)
            .await
            .unwrap();
        drop(small);
        drop(held);
        assert_eq!(reviews.in_use(&plan), 0);
    }
}
