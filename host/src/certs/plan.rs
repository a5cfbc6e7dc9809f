//! What the certificate Secret should hold next. A pure decision over what it holds now, so
//! every rule of rotation is tested without a cluster:
//!
//! - the signing CA is replaced once a certificate it signs now could outlive it; the new CA
//!   joins `ca.crt` beside the old one, which stays until it expires;
//! - the serving certificate is renewed `renew_before` its end, or when it no longer fits
//!   (names, key, a CA nobody trusts any more);
//! - a serving certificate from a *new* CA is only issued once that CA is trusted by the API
//!   server (`signer_trusted`: it is in the webhook configuration's `caBundle`), so nothing is
//!   ever served that the API server cannot verify. A certificate that is already unusable is
//!   replaced at once: there is nothing to protect.

use anyhow::Result;
use time::{Duration, OffsetDateTime};

use super::issue::{
    Bundle, Ca, CertInfo, Lifetimes, certificate_pem, certificates, new_ca, normalize,
    public_key_of, sign_serving,
};

/// What the planner is asked.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Names the serving certificate must carry.
    pub names: &'a [String],
    pub lifetimes: Lifetimes,
    pub now: OffsetDateTime,
    /// Whether the API server trusts the CA whose key the Secret holds.
    pub signer_trusted: bool,
}

/// One thing a plan changes, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NewCa { reason: String },
    Serving { reason: String },
    DroppedCas { count: usize },
}

impl Change {
    /// The metric label of what changed.
    pub fn what(&self) -> &'static str {
        match self {
            Change::NewCa { .. } => "ca",
            Change::Serving { .. } => "serving",
            Change::DroppedCas { .. } => "bundle",
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::NewCa { reason } => write!(f, "new CA ({reason})"),
            Change::Serving { reason } => write!(f, "new serving certificate ({reason})"),
            Change::DroppedCas { count } => write!(f, "{count} expired CA(s) left the bundle"),
        }
    }
}

/// The bundle to store (the current one when nothing changes), what changed, and what is
/// being waited for.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bundle: Bundle,
    pub changes: Vec<Change>,
    pub waiting: Option<String>,
}

enum Urgency {
    /// The certificate in place is unusable or untrusted: replace it whatever happens.
    Now,
    /// Replace it once the signing CA is trusted.
    WhenTrusted,
}

pub fn plan(current: &Bundle, request: &Request<'_>) -> Result<Plan> {
    let now = request.now.unix_timestamp();
    let mut changes = Vec::new();
    let stored = certificates(&current.ca_pem);
    let mut cas: Vec<CertInfo> = Vec::new();
    for ca in &stored {
        if ca.is_ca && ca.not_after > now && !cas.iter().any(|kept| kept.der == ca.der) {
            cas.push(ca.clone());
        }
    }
    if stored.len() > cas.len() {
        changes.push(Change::DroppedCas {
            count: stored.len() - cas.len(),
        });
    }

    // The signing CA stays (at its index in `cas`), or a new one replaces it, for a reason.
    let signer_at = public_key_of(&current.ca_key_pem)
        .and_then(|key| cas.iter().position(|ca| ca.public_key == key));
    let kept = match signer_at {
        None if current.ca_key_pem.is_empty() => Err("there is no CA key".to_owned()),
        None => Err("the CA key belongs to no valid CA in ca.crt".to_owned()),
        Some(at)
            if cas[at].not_after - now < request.lifetimes.ca_renew_before().whole_seconds() =>
        {
            Err(format!(
                "{} expires at {}",
                cas[at].subject,
                at_time(cas[at].not_after)
            ))
        }
        Some(at) => Ok(at),
    };
    let (signer, signer_trusted) = match kept {
        Err(reason) => {
            let ca = new_ca(request.lifetimes.ca, request.now)?;
            cas.insert(0, certificates(&ca.cert_pem).remove(0));
            changes.push(Change::NewCa { reason });
            (ca, false)
        }
        Ok(at) => {
            let leader = cas.remove(at);
            cas.insert(0, leader);
            let ca = Ca {
                cert_pem: certificate_pem(&cas[0].der),
                key_pem: current.ca_key_pem.clone(),
            };
            (ca, request.signer_trusted)
        }
    };

    let mut bundle = current.clone();
    let mut waiting = None;
    match serving_problem(current, request, &cas) {
        None => {}
        Some((reason, Urgency::WhenTrusted)) if !signer_trusted => {
            waiting = Some(format!(
                "{reason}: waiting for the API server to trust {}",
                cas[0].subject
            ));
        }
        Some((reason, _)) => {
            let not_after = (request.now + request.lifetimes.serving)
                .min(OffsetDateTime::from_unix_timestamp(cas[0].not_after)?);
            let (cert_pem, key_pem) = sign_serving(&signer, request.names, request.now, not_after)?;
            bundle.cert_pem = cert_pem;
            bundle.key_pem = key_pem;
            changes.push(Change::Serving { reason });
        }
    }
    if !changes.is_empty() {
        bundle.ca_pem = cas.iter().map(|ca| certificate_pem(&ca.der)).collect();
        bundle.ca_key_pem = signer.key_pem;
    }
    Ok(Plan {
        bundle,
        changes,
        waiting,
    })
}

/// Why the serving certificate must go, and how urgently. `cas` are the trusted CAs, the
/// signing one first.
fn serving_problem(
    current: &Bundle,
    request: &Request<'_>,
    cas: &[CertInfo],
) -> Option<(String, Urgency)> {
    let now = request.now.unix_timestamp();
    if current.cert_pem.is_empty() || current.key_pem.is_empty() {
        return Some(("tls.crt or tls.key is missing".to_owned(), Urgency::Now));
    }
    if let Err(err) =
        crate::tls::load_certified_key(current.cert_pem.as_bytes(), current.key_pem.as_bytes())
    {
        return Some((
            format!("the certificate is unusable: {err:#}"),
            Urgency::Now,
        ));
    }
    let Some(cert) = certificates(&current.cert_pem).into_iter().next() else {
        return Some(("tls.crt holds no certificate".to_owned(), Urgency::Now));
    };
    if cert.not_after <= now {
        let reason = format!("it expired at {}", at_time(cert.not_after));
        return Some((reason, Urgency::Now));
    }
    if !cas.iter().any(|ca| cert.signed_by(ca)) {
        return Some(("no trusted CA signed it".to_owned(), Urgency::Now));
    }
    let reason = if cert.not_after - now <= request.lifetimes.renew_before.whole_seconds() {
        Some(format!("it expires at {}", at_time(cert.not_after)))
    } else {
        request
            .names
            .iter()
            .find(|name| !cert.names.contains(&normalize(name)))
            .map(|missing| format!("it does not name {missing}"))
    };
    if !cert.signed_by(&cas[0]) {
        let reason = reason.unwrap_or_else(|| "an older CA signed it".to_owned());
        return Some((reason, Urgency::WhenTrusted));
    }
    reason.map(|reason| (reason, Urgency::Now))
}

/// A Unix time as RFC 3339, for messages.
pub fn at_time(unix_seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// How long until the plan for `bundle` changes by itself: the earliest moment a certificate
/// in it enters its renewal window or expires, plus a second so that the clock (in whole
/// seconds) is past it when the renewer wakes. The renewer sleeps no longer than this.
pub fn next_deadline(bundle: &Bundle, lifetimes: &Lifetimes, now: OffsetDateTime) -> Duration {
    let now = now.unix_timestamp();
    let serving = certificates(&bundle.cert_pem)
        .first()
        .map(|cert| cert.not_after - lifetimes.renew_before.whole_seconds());
    let cas = certificates(&bundle.ca_pem).into_iter().flat_map(|ca| {
        [
            ca.not_after,
            ca.not_after - lifetimes.ca_renew_before().whole_seconds(),
        ]
    });
    serving
        .into_iter()
        .chain(cas)
        .filter(|at| *at >= now)
        .min()
        .map_or(Duration::ZERO, |at| Duration::seconds(at - now + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["svc.ns.svc".to_owned(), "10.1.2.3".to_owned()]
    }

    /// A minutes-long CA and a 90-second certificate, as the rotation test runs them.
    fn short() -> Lifetimes {
        Lifetimes {
            ca: Duration::minutes(4),
            serving: Duration::seconds(90),
            renew_before: Duration::seconds(45),
        }
    }

    fn at(now: OffsetDateTime, trusted: bool, names: &[String]) -> Request<'_> {
        Request {
            names,
            lifetimes: short(),
            now,
            signer_trusted: trusted,
        }
    }

    fn cas(bundle: &Bundle) -> Vec<String> {
        certificates(&bundle.ca_pem)
            .into_iter()
            .map(|ca| ca.subject)
            .collect()
    }

    fn issuer_of(bundle: &Bundle) -> String {
        let cert = certificates(&bundle.cert_pem).remove(0);
        certificates(&bundle.ca_pem)
            .into_iter()
            .find(|ca| cert.signed_by(ca))
            .map(|ca| ca.subject)
            .unwrap_or_default()
    }

    #[test]
    fn an_empty_secret_gets_a_ca_and_a_certificate_at_once() {
        let names = names();
        let now = OffsetDateTime::now_utc();
        let plan = plan(&Bundle::default(), &at(now, false, &names)).unwrap();
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
        assert!(matches!(plan.changes[0], Change::NewCa { .. }));
        assert!(matches!(plan.changes[1], Change::Serving { .. }));
        assert_eq!(plan.waiting, None);
        assert_eq!(cas(&plan.bundle).len(), 1);
        assert_eq!(issuer_of(&plan.bundle), cas(&plan.bundle)[0]);
        let again = super::plan(&plan.bundle, &at(now, false, &names)).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.bundle, plan.bundle);
    }

    #[test]
    fn the_serving_certificate_renews_under_the_same_ca() {
        let names = names();
        let start = OffsetDateTime::now_utc();
        let first = plan(&Bundle::default(), &at(start, true, &names))
            .unwrap()
            .bundle;
        let later = start + Duration::seconds(50);
        let renewed = plan(&first, &at(later, false, &names)).unwrap();
        assert_eq!(renewed.changes.len(), 1, "{:?}", renewed.changes);
        assert!(
            matches!(&renewed.changes[0], Change::Serving { reason } if reason.contains("expires"))
        );
        assert_eq!(renewed.bundle.ca_pem, first.ca_pem);
        assert_eq!(renewed.bundle.ca_key_pem, first.ca_key_pem);
        assert_ne!(renewed.bundle.cert_pem, first.cert_pem);
    }

    #[test]
    fn a_new_ca_is_trusted_before_it_signs_and_the_old_one_stays_until_it_expires() {
        let names = names();
        let start = OffsetDateTime::now_utc();
        let created = plan(&Bundle::default(), &at(start, true, &names))
            .unwrap()
            .bundle;
        let old_ca = cas(&created)[0].clone();
        let first = plan(&created, &at(start + Duration::seconds(50), true, &names))
            .unwrap()
            .bundle;
        // A 4-minute CA is replaced with 135 s left (90 s + 45 s): at 110 s it is.
        let t1 = start + Duration::seconds(110);
        let step1 = plan(&first, &at(t1, true, &names)).unwrap();
        assert!(
            matches!(step1.changes[..], [Change::NewCa { .. }]),
            "{:?}",
            step1.changes
        );
        assert!(
            step1
                .waiting
                .as_deref()
                .unwrap()
                .contains("waiting for the API server")
        );
        let bundle1 = step1.bundle;
        assert_eq!(cas(&bundle1).len(), 2);
        assert_eq!(cas(&bundle1)[1], old_ca);
        assert_eq!(
            bundle1.cert_pem, first.cert_pem,
            "served as it was until the CA is trusted"
        );
        // Not trusted yet: nothing moves.
        let idle = plan(&bundle1, &at(t1, false, &names)).unwrap();
        assert!(idle.changes.is_empty());
        assert!(idle.waiting.is_some());
        // Trusted: the serving certificate moves to the new CA; both CAs stay.
        let step2 = plan(&bundle1, &at(t1, true, &names)).unwrap();
        assert!(
            matches!(step2.changes[..], [Change::Serving { .. }]),
            "{:?}",
            step2.changes
        );
        let bundle2 = step2.bundle;
        assert_eq!(issuer_of(&bundle2), cas(&bundle1)[0]);
        assert_eq!(cas(&bundle2), cas(&bundle1));
        // The old CA leaves once expired.
        let t3 = start + Duration::seconds(4 * 60 + 1);
        let step3 = plan(&bundle2, &at(t3, true, &names)).unwrap();
        assert!(
            step3.changes.contains(&Change::DroppedCas { count: 1 }),
            "{:?}",
            step3.changes
        );
        let after = cas(&step3.bundle);
        assert!(!after.contains(&old_ca), "{after:?}");
        assert!(after.contains(&cas(&bundle1)[0]), "{after:?}");
    }

    #[test]
    fn an_unusable_certificate_is_replaced_even_before_the_new_ca_is_trusted() {
        let names = names();
        let now = OffsetDateTime::now_utc();
        let first = plan(&Bundle::default(), &at(now, true, &names))
            .unwrap()
            .bundle;
        let broken = Bundle {
            key_pem: super::super::issue::generate(&names, short())
                .unwrap()
                .key_pem,
            ..first.clone()
        };
        let fixed = plan(&broken, &at(now, false, &names)).unwrap();
        assert!(
            matches!(&fixed.changes[..], [Change::Serving { reason }] if reason.contains("unusable"))
        );
        assert_eq!(fixed.bundle.ca_pem, first.ca_pem);
    }

    #[test]
    fn a_secret_without_a_ca_key_starts_a_rotation() {
        // What init-certs of earlier versions wrote: no ca.key.
        let names = names();
        let now = OffsetDateTime::now_utc();
        let legacy = Bundle {
            ca_key_pem: String::new(),
            ..plan(&Bundle::default(), &at(now, true, &names))
                .unwrap()
                .bundle
        };
        let step = plan(&legacy, &at(now, true, &names)).unwrap();
        assert!(
            matches!(&step.changes[..], [Change::NewCa { reason }] if reason.contains("no CA key"))
        );
        assert_eq!(step.bundle.cert_pem, legacy.cert_pem);
        assert_eq!(cas(&step.bundle).len(), 2);
    }

    #[test]
    fn new_names_renew_the_certificate() {
        let names = names();
        let now = OffsetDateTime::now_utc();
        let first = plan(&Bundle::default(), &at(now, true, &names))
            .unwrap()
            .bundle;
        let mut more = names.clone();
        more.push("extra.example.com".to_owned());
        let step = plan(&first, &at(now, false, &more)).unwrap();
        assert!(
            matches!(&step.changes[..], [Change::Serving { reason }] if reason.contains("extra.example.com"))
        );
        assert!(
            certificates(&step.bundle.cert_pem)[0]
                .names
                .contains(&"extra.example.com".to_owned())
        );
    }

    #[test]
    fn the_renewer_wakes_for_the_next_deadline() {
        let names = names();
        let now = OffsetDateTime::now_utc();
        let bundle = plan(&Bundle::default(), &at(now, true, &names))
            .unwrap()
            .bundle;
        // The serving certificate enters its window first: 90 s - 45 s, and a second.
        let wait = next_deadline(&bundle, &short(), now);
        assert!((45..=46).contains(&wait.whole_seconds()), "{wait}");
        // Woken then, the plan renews it.
        let later = now + wait;
        let step = plan(&bundle, &at(later, true, &names)).unwrap();
        assert!(
            matches!(&step.changes[..], [Change::Serving { .. }]),
            "{:?}",
            step.changes
        );
    }
}
