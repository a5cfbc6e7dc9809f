//! Certificates the webhook makes for itself: a CA and a serving certificate signed by it
//! (ECDSA P-256 with rcgen), as the three PEM files Kubernetes TLS Secrets use.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// A CA and a serving certificate with its key, PEM-encoded.
#[derive(Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long what we make stays valid. Rotation happens well before the end.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub ca: Duration,
    pub serving: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: Duration::days(3650),
            serving: Duration::days(365),
        }
    }
}

/// A new CA and a serving certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String], validity: Validity) -> Result<Bundle> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("secrets-webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = now + validity.ca;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;

    let key = KeyPair::generate().context("generating the serving key")?;
    let mut serving = CertificateParams::new(names.to_vec()).context("invalid certificate name")?;
    serving.distinguished_name = name(names.first().map_or("secrets-webhook", String::as_str));
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.not_before = now - Duration::minutes(5);
    serving.not_after = now + validity.serving;
    let issuer = Issuer::new(ca, ca_key);
    let cert = serving
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "secrets-webhook");
    dn
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (owner-only) into `dir`, creating it.
pub fn write_dir(dir: &Path, bundle: &Bundle) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join(CA_FILE), &bundle.ca_pem, 0o644)?;
    write_file(&dir.join(CERT_FILE), &bundle.cert_pem, 0o644)?;
    write_file(&dir.join(KEY_FILE), &bundle.key_pem, 0o600)
}

/// Writes through a temporary file and a rename, so a watcher never sees half a file.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Local mode: makes a CA and a certificate for `localhost`, `127.0.0.1` and `::1` in `dir`
/// unless a certificate and key are already there. Returns whether it made new ones.
pub fn ensure_local(dir: &Path) -> Result<bool> {
    if dir.join(CERT_FILE).exists() && dir.join(KEY_FILE).exists() {
        return Ok(false);
    }
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    write_dir(dir, &generate(&names, Validity::default())?)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn serving_cert_names_and_validity() {
        let names = ["svc.ns.svc".to_owned(), "10.0.0.1".to_owned()];
        let bundle = generate(&names, super::Validity::default()).unwrap();
        let (_, pem) = parse_x509_pem(bundle.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let rendered: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(rendered, ["DNSName(svc.ns.svc)", "IPAddress(0a:00:00:01)"]);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86400;
        assert_eq!(days, 365);
        assert!(!cert.is_ca());
        let (_, ca_pem) = parse_x509_pem(bundle.ca_pem.as_bytes()).unwrap();
        assert!(ca_pem.parse_x509().unwrap().is_ca());
    }

    #[test]
    fn local_certs_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_local(dir.path()).unwrap());
        let first = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        assert!(!ensure_local(dir.path()).unwrap());
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
