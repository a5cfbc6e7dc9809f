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

/// Never prints the key.
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How long what we make stays valid. Rotation happens well before the end.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub ca: Duration,
    pub serving: Duration,
}

impl Default for Validity {
    /// The CA outlives the serving certificate so that, after a renewal, the old CA can stay in
    /// the bundle until certificates it signed are gone; it is not kept for a decade, because
    /// its key is thrown away and a renewal makes a new one.
    fn default() -> Self {
        Self {
            ca: Duration::days(730),
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

/// Why a stored bundle must be replaced; `None` when it is good for `renew_before` longer.
pub fn renewal_reason(bundle: &Bundle, names: &[String], renew_before: Duration) -> Option<String> {
    use x509_parser::prelude::*;
    if bundle.ca_pem.is_empty() || bundle.cert_pem.is_empty() || bundle.key_pem.is_empty() {
        return Some("ca.crt, tls.crt or tls.key is missing".to_owned());
    }
    if let Err(err) =
        crate::tls::load_certified_key(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())
    {
        return Some(format!("the certificate and key are unusable: {err:#}"));
    }
    let Ok((_, pem)) = parse_x509_pem(bundle.cert_pem.as_bytes()) else {
        return Some("tls.crt is not PEM".to_owned());
    };
    let Ok(cert) = pem.parse_x509() else {
        return Some("tls.crt is not an X.509 certificate".to_owned());
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_after - now < renew_before.whole_seconds() {
        return Some(format!(
            "the certificate expires at {}",
            cert.validity().not_after
        ));
    }
    let present: Vec<String> = cert
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
    if let Some(missing) = names
        .iter()
        .find(|name| !present.contains(&normalize(name)))
    {
        return Some(format!("the certificate does not name {missing}"));
    }
    if ca_certificates(&bundle.ca_pem).is_empty() {
        return Some("ca.crt holds no usable CA certificate".to_owned());
    }
    None
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
fn normalize(name: &str) -> String {
    name.parse::<std::net::IpAddr>()
        .map_or_else(|_| name.to_owned(), |ip| ip.to_string())
}

/// The CA certificates in `pem` that have not expired (DER), with their expiry.
fn ca_certificates(pem: &str) -> Vec<(Vec<u8>, i64)> {
    use x509_parser::prelude::*;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|block| {
            let cert = block.parse_x509().ok()?;
            let not_after = cert.validity().not_after.timestamp();
            (cert.is_ca() && not_after > now).then(|| (block.contents.clone(), not_after))
        })
        .collect()
}

fn certificate_pem(der: &[u8]) -> String {
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

/// A new CA and serving certificate whose `ca.crt` also carries the still-valid CAs of `old`,
/// so servers holding the old certificate stay trusted until they load the new one.
pub fn renew(old: Option<&Bundle>, names: &[String], validity: Validity) -> Result<Bundle> {
    let mut bundle = generate(names, validity)?;
    let mut kept: Vec<Vec<u8>> = ca_certificates(&bundle.ca_pem)
        .into_iter()
        .map(|(der, _)| der)
        .collect();
    for (der, _) in old
        .map(|old| ca_certificates(&old.ca_pem))
        .unwrap_or_default()
    {
        if !kept.contains(&der) {
            bundle.ca_pem.push_str(&certificate_pem(&der));
            kept.push(der);
        }
    }
    Ok(bundle)
}

/// When the serving certificate in `cert_pem` expires, as Unix seconds.
pub fn expiry(cert_pem: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(cert_pem).ok()?;
    Some(pem.parse_x509().ok()?.validity().not_after.timestamp())
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

    fn names() -> Vec<String> {
        service_names("secrets-webhook", "sw", &["10.1.2.3".to_owned()])
    }

    #[test]
    fn service_names_cover_every_spelling() {
        assert_eq!(
            names(),
            [
                "secrets-webhook",
                "secrets-webhook.sw",
                "secrets-webhook.sw.svc",
                "secrets-webhook.sw.svc.cluster.local",
                "10.1.2.3"
            ]
        );
    }

    #[test]
    fn renewal_reasons() {
        let good = generate(&names(), super::Validity::default()).unwrap();
        assert_eq!(renewal_reason(&good, &names(), Duration::days(30)), None);
        assert!(
            renewal_reason(&good, &names(), Duration::days(400))
                .unwrap()
                .contains("expires")
        );
        let mut other_names = names();
        other_names.push("extra.example.com".to_owned());
        assert!(
            renewal_reason(&good, &other_names, Duration::days(30))
                .unwrap()
                .contains("extra.example.com")
        );
        let missing = Bundle {
            key_pem: String::new(),
            ..good.clone()
        };
        assert!(
            renewal_reason(&missing, &names(), Duration::days(30))
                .unwrap()
                .contains("missing")
        );
        let other = generate(&names(), super::Validity::default()).unwrap();
        let mismatched = Bundle {
            key_pem: other.key_pem,
            ..good.clone()
        };
        assert!(
            renewal_reason(&mismatched, &names(), Duration::days(30))
                .unwrap()
                .contains("unusable")
        );
        let garbage = Bundle {
            cert_pem: "junk".to_owned(),
            ..good
        };
        assert!(renewal_reason(&garbage, &names(), Duration::days(30)).is_some());
    }

    #[test]
    fn renewal_keeps_the_old_ca_beside_the_new() {
        let old = generate(&names(), super::Validity::default()).unwrap();
        let new = renew(Some(&old), &names(), super::Validity::default()).unwrap();
        let cas = ca_certificates(&new.ca_pem);
        assert_eq!(cas.len(), 2);
        let old_ca = ca_certificates(&old.ca_pem).remove(0);
        assert_eq!(cas[1], old_ca, "the old CA follows the new one");
        assert_ne!(cas[0], old_ca);
        // Renewing again keeps at most the CAs still valid, without duplicates.
        let newer = renew(Some(&new), &names(), super::Validity::default()).unwrap();
        assert_eq!(ca_certificates(&newer.ca_pem).len(), 3);
    }
}
