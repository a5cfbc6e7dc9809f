//! The serving certificate in use: loaded from a directory (local mode, a mounted Secret) or
//! installed from the certificate Secret followed through the API, and swapped in place, so the
//! next handshake serves the new one and open connections stay up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{CERT_FILE, KEY_FILE};
use crate::metrics::Metrics;
use crate::tasks::{OnEnd, Tasks};
use crate::tls::load_certified_key;
use crate::watch::Changes;

/// How often the directory is read again besides file events (which a volume's symlink swap
/// may not raise everywhere).
const POLL: Duration = Duration::from_secs(10);

/// Serves whichever certificate was installed last: from a directory (local mode, a mounted
/// Secret) or from the certificate Secret followed through the API.
#[derive(Debug)]
pub struct CertStore {
    dir: Option<PathBuf>,
    current: ArcSwap<CertifiedKey>,
    /// The PEM `current` was made from, to notice changes cheaply.
    loaded_from: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    /// Loads `tls.crt` and `tls.key` from `dir`; [`CertStore::start_watch`] follows the directory.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        let (chain, key) = read_pair(dir)?;
        Self::new(Some(dir.to_owned()), chain, key)
            .with_context(|| format!("loading the serving certificate from {}", dir.display()))
    }

    /// Serves `chain` and `key` (PEM) until [`CertStore::install`] swaps them.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Arc<Self>> {
        Self::new(None, chain.to_vec(), key.to_vec())
    }

    fn new(dir: Option<PathBuf>, chain: Vec<u8>, key: Vec<u8>) -> Result<Arc<Self>> {
        let certified = load_certified_key(&chain, &key)?;
        Ok(Arc::new(Self {
            dir,
            current: ArcSwap::from_pointee(certified),
            loaded_from: std::sync::Mutex::new((chain, key)),
        }))
    }

    /// Serves `chain` and `key` from the next handshake on, unless they are what is served
    /// already. A pair that does not load keeps the old one. Returns whether it swapped.
    pub fn install(&self, chain: &[u8], key: &[u8]) -> Result<bool> {
        let mut loaded = self.loaded_from.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == chain && loaded.1 == key {
            return Ok(false);
        }
        let certified = load_certified_key(chain, key)?;
        self.current.store(Arc::new(certified));
        *loaded = (chain.to_vec(), key.to_vec());
        Ok(true)
    }

    /// The certificate chain served now (PEM).
    pub fn serving_pem(&self) -> Vec<u8> {
        let loaded = self.loaded_from.lock().unwrap_or_else(|p| p.into_inner());
        loaded.0.clone()
    }

    /// Loads the directory's files again if they changed.
    pub fn reload(&self) -> Result<bool> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let (chain, key) = read_pair(dir)?;
        self.install(&chain, &key)
    }

    /// Registers with `tasks` the reload of the directory's files when they change (or every
    /// [`POLL`]), reporting the expiry in `metrics`; nothing for a store that has no directory.
    pub fn start_watch(self: Arc<Self>, tasks: &mut Tasks, metrics: Arc<Metrics>) {
        if self.dir.is_none() {
            return;
        }
        tasks.spawn("certificate files watch", OnEnd::Restart, move || {
            self.clone().watch(POLL, metrics.clone())
        });
    }

    /// Reloads when the directory changes (or every `poll`), reporting the expiry in `metrics`.
    /// Returns at once for a store that has no directory.
    pub async fn watch(self: Arc<Self>, poll: Duration, metrics: Arc<Metrics>) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        self.report_expiry(&metrics);
        let cert = dir.join(CERT_FILE);
        let mut changes = Changes::new(&[cert.as_path()], poll);
        loop {
            changes.next().await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(dir = %dir.display(), "serving certificate reloaded");
                    self.report_expiry(&metrics);
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(
                    dir = %dir.display(),
                    error = format!("{err:#}"),
                    "new serving certificate rejected; keeping the old one"
                ),
            }
        }
    }

    pub(super) fn report_expiry(&self, metrics: &Metrics) {
        if let Some(expiry) = super::expiry(&self.serving_pem()) {
            metrics.cert_expires_at(expiry as f64);
        }
    }
}

fn read_pair(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok((read(CERT_FILE)?, read(KEY_FILE)?))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
