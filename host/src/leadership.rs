//! Whether this replica is the elected one: the controller's Lease decides (certificates, the
//! webhook configuration), and work one replica should do for all follows it (the Embedded
//! manager's mirror upkeep).

use std::sync::Arc;

use tokio::sync::watch;

/// Whether this replica is the elected one, for work one replica should do for all (the
/// Embedded manager's mirror upkeep). A replica that runs no election leads itself.
#[derive(Clone)]
pub struct Leadership(Arc<watch::Sender<bool>>);

impl Leadership {
    pub fn new(leading: bool) -> Self {
        Self(Arc::new(watch::Sender::new(leading)))
    }

    pub fn set(&self, leading: bool) {
        self.0.send_replace(leading);
    }

    pub fn leads(&self) -> bool {
        *self.0.borrow()
    }

    /// Tells of every change of leadership from now on.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}
