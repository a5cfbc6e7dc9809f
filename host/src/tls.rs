//! The HTTPS side: the process's one crypto provider, loading a certificate and its key, and the
//! rustls server config (TLS 1.2 and 1.3, ALPN h2 and http/1.1) over a certificate resolver that
//! can swap what it serves while connections stay up (the certificate store).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

/// TLS 1.2 and 1.3 only, HTTP/2 preferred over HTTP/1.1. With `client_ca`, clients must present
/// a certificate it signed (the API server's, configured through its admission config file).
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
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
