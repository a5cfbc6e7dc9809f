//! The HTTPS side: a rustls server config (TLS 1.2 and 1.3, ring, ALPN h2 and http/1.1) whose
//! certificate can be swapped while connections stay up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{CERT_FILE, KEY_FILE};
use crate::metrics::Metrics;
use crate::watch::Changes;

/// The one crypto provider; naming it everywhere keeps a second one from sneaking in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate chain")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the chain file");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the private key")?;
    CertifiedKey::from_der(chain, key, &provider()).context("the key does not fit the certificate")
}

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
    /// Loads `tls.crt` and `tls.key` from `dir`; [`CertStore::watch`] follows the directory.
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

    fn report_expiry(&self, metrics: &Metrics) {
        if let Some(expiry) = crate::certs::expiry(&self.serving_pem()) {
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

/// TLS 1.2 and 1.3 only, HTTP/2 preferred over HTTP/1.1. With `client_ca`, clients must present
/// a certificate it signed (the API server's, configured through its admission config file).
pub fn server_config(certs: Arc<CertStore>, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .context("choosing TLS versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.context("reading the client CA")?)?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
