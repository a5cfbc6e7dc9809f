//! Readiness, and the answers to `/healthz` and `/readyz` both ports give (the admission port
//! over TLS, the metrics port in plain HTTP).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;

/// Whether the webhook should get traffic: it is serving (and registered, when it registers), no
/// task it cannot do without has ended, and it is not shutting down.
pub struct Readiness {
    serving: AtomicBool,
    registered: AtomicBool,
    draining: AtomicBool,
    /// The vital task that ended, if one did.
    failed: Mutex<Option<&'static str>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Readiness {
    /// With `needs_registration`, not ready until the webhook configuration has been applied.
    pub fn new(needs_registration: bool) -> Self {
        Self {
            serving: AtomicBool::new(false),
            registered: AtomicBool::new(!needs_registration),
            draining: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    /// A task the replica cannot serve correctly without has ended: it stays unready.
    pub fn set_failed(&self, task: &'static str) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    fn failed(&self) -> Option<&'static str> {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }

    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
            && self.registered.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self.failed().is_none()
    }

    /// Why not ready, for `/readyz`.
    pub fn reason(&self) -> String {
        if self.draining.load(Ordering::SeqCst) {
            "shutting down".to_owned()
        } else if let Some(task) = self.failed() {
            format!("task {task} ended; this replica cannot serve correctly without it")
        } else if !self.serving.load(Ordering::SeqCst) {
            "starting".to_owned()
        } else if !self.registered.load(Ordering::SeqCst) {
            "waiting for the webhook configuration to be applied".to_owned()
        } else {
            "ready".to_owned()
        }
    }
}

/// What `/readyz` reports besides readiness.
pub type Describe = Arc<dyn Fn() -> String + Send + Sync>;

/// The answer to `GET /healthz` or `GET /readyz`, shared by both ports.
pub fn probe(
    path: &str,
    readiness: &Readiness,
    describe: &Describe,
) -> Option<(StatusCode, String)> {
    match path {
        "/healthz" => Some((StatusCode::OK, "ok\n".to_owned())),
        "/readyz" if readiness.is_ready() => {
            Some((StatusCode::OK, format!("ready policy={}\n", describe())))
        }
        "/readyz" => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", readiness.reason()),
        )),
        _ => None,
    }
}
