//! Making certificates (ECDSA P-256 with rcgen) and reading them back (x509-parser): a CA, a
//! serving certificate it signs, and the PEM files Kubernetes TLS Secrets use.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub const CA_FILE: &str = "ca.crt";
/// The signing CA's key: only in the cluster Secret, never in a directory we write.
pub const CA_KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Clocks of the API server and the webhook may differ: certificates start a little early.
const BACKDATE: Duration = Duration::minutes(5);

/// What the webhook serves and what its clients trust, PEM-encoded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// Every CA clients should trust, the signing CA first.
    pub ca_pem: String,
    /// The signing CA's key; empty where another party signs (cert-manager, a local directory).
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Never prints a key.
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("ca_key_pem", &"<redacted>")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How long what we make stays valid, and when it is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
    /// A serving certificate is renewed this long before it expires.
    pub renew_before: Duration,
}

impl Default for Lifetimes {
    /// Short enough that renewal is routine and exercised, long enough to ride out an outage.
    fn default() -> Self {
        Self {
            ca: Duration::days(365),
            serving: Duration::days(90),
            renew_before: Duration::days(30),
        }
    }
}

impl Lifetimes {
    /// A CA is replaced once a serving certificate it signs now could outlive it: so a
    /// certificate never has to be cut short, and the old CA stays trusted while it is served.
    pub fn ca_renew_before(&self) -> Duration {
        self.serving + self.renew_before
    }

    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.renew_before > Duration::ZERO && self.renew_before < self.serving,
            "--renew-before ({}) must be positive and shorter than --cert-validity ({})",
            self.renew_before,
            self.serving
        );
        anyhow::ensure!(
            self.ca > self.ca_renew_before(),
            "--ca-validity ({}) must be longer than --cert-validity + --renew-before ({})",
            self.ca,
            self.ca_renew_before()
        );
        Ok(())
    }
}

/// A CA certificate with its key.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new CA valid for `lifetime`. Its name carries the time it was made, so logs and bundles
/// tell one generation from the next.
pub fn new_ca(lifetime: Duration, now: OffsetDateTime) -> Result<Ca> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("secrets-webhook CA {}", now.unix_timestamp()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    let cert = params.self_signed(&key).context("signing the CA")?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by `ca`, valid until
/// `not_after`. Returns the certificate and its key.
pub fn sign_serving(
    ca: &Ca,
    names: &[String],
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(names.to_vec()).context("invalid certificate name")?;
    params.distinguished_name = name(names.first().map_or("secrets-webhook", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new CA and a serving certificate for `names` signed by it.
pub fn generate(names: &[String], lifetimes: Lifetimes) -> Result<Bundle> {
    let now = OffsetDateTime::now_utc();
    let ca = new_ca(lifetimes.ca, now)?;
    let (cert_pem, key_pem) = sign_serving(&ca, names, now, now + lifetimes.serving)?;
    Ok(Bundle {
        ca_pem: ca.cert_pem,
        ca_key_pem: ca.key_pem,
        cert_pem,
        key_pem,
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "secrets-webhook");
    dn
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (owner-only) into `dir`, creating it. The CA key
/// stays out: whoever reads the directory serves, nobody signs.
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
    // Nothing renews local certificates: they last a year, as they always did.
    let local = Lifetimes {
        ca: Duration::days(730),
        serving: Duration::days(365),
        renew_before: Duration::days(30),
    };
    write_dir(dir, &generate(&names, local)?)?;
    Ok(true)
}

/// The names a serving certificate for a Service needs: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
/// `<svc>.<ns>.svc.cluster.local`, then `extra` (more DNS names, IP addresses).
pub fn service_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// What we read back from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub subject: String,
    pub serial: String,
    pub is_ca: bool,
    pub not_before: i64,
    pub not_after: i64,
    /// The subject public key, to match a key or an issuer.
    pub public_key: Vec<u8>,
    /// The authority key identifier, to find the CA that signed it.
    pub authority_key_id: Option<Vec<u8>>,
    pub subject_key_id: Option<Vec<u8>>,
    /// DNS names and IP addresses (canonical spelling).
    pub names: Vec<String>,
}

impl CertInfo {
    /// Whether `ca` signed this certificate (the signature is checked, not just the names).
    pub fn signed_by(&self, ca: &CertInfo) -> bool {
        use x509_parser::prelude::*;
        let (Ok((_, cert)), Ok((_, issuer))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&ca.der),
        ) else {
            return false;
        };
        cert.verify_signature(Some(issuer.public_key())).is_ok()
    }
}

/// Every certificate in `pem`, in order; blocks that are not certificates are skipped.
pub fn certificates(pem: &str) -> Vec<CertInfo> {
    use x509_parser::prelude::*;
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|block| {
            let cert = block.parse_x509().ok()?;
            Some(info(&cert, block.contents.clone()))
        })
        .collect()
}

fn info(cert: &x509_parser::certificate::X509Certificate<'_>, der: Vec<u8>) -> CertInfo {
    use x509_parser::extensions::ParsedExtension;
    let mut authority_key_id = None;
    let mut subject_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            ParsedExtension::SubjectKeyIdentifier(ski) => subject_key_id = Some(ski.0.to_vec()),
            _ => {}
        }
    }
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(general_name)
                .collect()
        })
        .unwrap_or_default();
    CertInfo {
        der,
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        authority_key_id,
        subject_key_id,
        names,
    }
}

fn general_name(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
            16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// IP addresses are compared in their canonical spelling.
pub fn normalize(name: &str) -> String {
    name.parse::<std::net::IpAddr>()
        .map_or_else(|_| name.to_owned(), |ip| ip.to_string())
}

/// The public key of a PEM private key, as certificates carry it.
pub fn public_key_of(key_pem: &str) -> Option<Vec<u8>> {
    Some(KeyPair::from_pem(key_pem).ok()?.public_key_raw().to_vec())
}

/// PEM for one DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// When the first certificate in `cert_pem` expires, as Unix seconds.
pub fn expiry(cert_pem: &[u8]) -> Option<i64> {
    certificates(std::str::from_utf8(cert_pem).ok()?)
        .first()
        .map(|cert| cert.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_cert_names_and_validity() {
        let names = ["svc.ns.svc".to_owned(), "10.0.0.1".to_owned()];
        let bundle = generate(&names, Lifetimes::default()).unwrap();
        let cert = certificates(&bundle.cert_pem).remove(0);
        assert_eq!(cert.names, ["svc.ns.svc", "10.0.0.1"]);
        // Backdated five minutes for clock skew.
        assert_eq!((cert.not_after - cert.not_before) / 60, 90 * 24 * 60 + 5);
        assert!(!cert.is_ca);
        let ca = certificates(&bundle.ca_pem).remove(0);
        assert!(ca.is_ca);
        assert!(cert.signed_by(&ca));
        assert_eq!(public_key_of(&bundle.ca_key_pem).unwrap(), ca.public_key);
        let other = generate(&names, Lifetimes::default()).unwrap();
        assert!(!cert.signed_by(&certificates(&other.ca_pem)[0]));
    }

    #[test]
    fn a_ca_signs_again_after_a_round_trip_through_pem() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(Duration::days(10), now).unwrap();
        let names = ["a.example".to_owned()];
        let first = sign_serving(&ca, &names, now, now + Duration::days(1)).unwrap();
        let second = sign_serving(&ca, &names, now, now + Duration::days(2)).unwrap();
        let ca_info = certificates(&ca.cert_pem).remove(0);
        for (cert, _) in [first, second] {
            assert!(certificates(&cert)[0].signed_by(&ca_info));
        }
    }

    #[test]
    fn lifetimes_must_leave_room_for_renewal() {
        assert!(Lifetimes::default().check().is_ok());
        let short_ca = Lifetimes {
            ca: Duration::days(100),
            ..Lifetimes::default()
        };
        assert!(
            short_ca
                .check()
                .unwrap_err()
                .to_string()
                .contains("--ca-validity")
        );
        let long_renewal = Lifetimes {
            renew_before: Duration::days(90),
            ..Lifetimes::default()
        };
        assert!(
            long_renewal
                .check()
                .unwrap_err()
                .to_string()
                .contains("--renew-before")
        );
    }

    #[test]
    fn local_certs_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_local(dir.path()).unwrap());
        let first = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        assert!(!ensure_local(dir.path()).unwrap());
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), first);
        assert!(!dir.path().join(CA_KEY_FILE).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn service_names_cover_every_spelling() {
        assert_eq!(
            service_names("secrets-webhook", "sw", &["10.1.2.3".to_owned()]),
            [
                "secrets-webhook",
                "secrets-webhook.sw",
                "secrets-webhook.sw.svc",
                "secrets-webhook.sw.svc.cluster.local",
                "10.1.2.3"
            ]
        );
    }
}
