//! The process's Prometheus metrics, recorded from plain values by the rooms that see them and
//! encoded for `/metrics` (served by `server::metrics_port`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ManagerLabels {
    manager: &'static str,
}

/// The `manager` label values: the managers our policy knows, lower-cased. A policy's other
/// names count as "other", so a custom policy cannot grow the label set without bound.
const MANAGERS: [&str; 7] = ["global", "k8s", "vault", "aws", "gcp", "azure", "embedded"];

fn manager_label(name: &str) -> &'static str {
    MANAGERS
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    subject: String,
    serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    what: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    digest: String,
}

/// A review being handled; dropping it (answered, or the client gone) ends it.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric the webhook exports.
pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    in_flight: Gauge,
    injections: Family<ManagerLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    registrations: Family<ResultLabels, Counter>,
    policy: Family<PolicyLabels, Gauge>,
    cert_expiry: Gauge<f64, AtomicU64>,
    ca_expiry: Family<CaLabels, Gauge<f64, AtomicU64>>,
    renewals: Family<RenewalLabels, Counter>,
    leader: Gauge,
    rejected: Family<ReasonLabels, Counter>,
    connections: Family<PortLabels, Gauge>,
    timed_out: Family<ReasonLabels, Counter>,
    deadline_exceeded: Counter,
    invalidations: Family<ResultLabels, Counter>,
    unapplied: Family<KeyLabels, Counter>,
    review_memory: Gauge,
    memory_budget: Gauge,
    task_ends: Family<TaskLabels, Counter>,
}

/// Registers `metric` as `name` and hands it back, for the handle [`Metrics`] keeps.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("secrets_webhook");
        let reviews = add(
            &mut registry,
            "reviews",
            "AdmissionReviews answered, by outcome (patched, unchanged, denied, error, invalid)",
            Family::<OutcomeLabels, Counter>::default(),
        );
        // 50 µs to ~1.6 s.
        let duration = add(
            &mut registry,
            "review_duration_seconds",
            "Time from a request's headers to its response (room in the memory budget, the body, the review)",
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        );
        let in_flight = add(
            &mut registry,
            "reviews_in_flight",
            "AdmissionReviews received and not yet answered (reading, queued or evaluating)",
            Gauge::default(),
        );
        let injections = add(
            &mut registry,
            "injections",
            "Secrets injected by patched reviews, by the manager that injected them",
            Family::<ManagerLabels, Counter>::default(),
        );
        // Present from the start at 0, so rates and alerts work before the first injection.
        for manager in MANAGERS {
            let _ = injections.get_or_create(&ManagerLabels { manager });
        }
        let reloads = add(
            &mut registry,
            "policy_reloads",
            "Policy or settings reloads, by result (swapped, rejected)",
            Family::<ResultLabels, Counter>::default(),
        );
        let registrations = add(
            &mut registry,
            "registrations",
            "MutatingWebhookConfiguration applies, by result (applied, failed)",
            Family::<ResultLabels, Counter>::default(),
        );
        let policy = add(
            &mut registry,
            "policy_info",
            "The policy in service (1 for its digest)",
            Family::<PolicyLabels, Gauge>::default(),
        );
        let cert_expiry = add(
            &mut registry,
            "cert_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time)",
            Gauge::<f64, AtomicU64>::default(),
        );
        let ca_expiry = add(
            &mut registry,
            "ca_expiry_timestamp_seconds",
            "When each CA in the trust bundle (ca.crt, the caBundle) expires (Unix time)",
            Family::<CaLabels, Gauge<f64, AtomicU64>>::default(),
        );
        let renewals = add(
            &mut registry,
            "cert_renewals",
            "Changes to the certificate Secret by this replica, by what (ca, serving, bundle) and outcome (renewed, failed)",
            Family::<RenewalLabels, Counter>::default(),
        );
        let leader = add(
            &mut registry,
            "leader",
            "1 while this replica holds the Lease: it renews certificates and restores the webhook configuration",
            Gauge::default(),
        );
        let rejected = add(
            &mut registry,
            "requests_rejected",
            "Requests and connections turned away at a limit, by reason (memory: no room in the memory budget; connections: the port is full; rate: too many invalidations from one address; pending: too many invalidations waiting)",
            Family::<ReasonLabels, Counter>::default(),
        );
        for reason in ["memory", "connections", "rate", "pending"] {
            let _ = rejected.get_or_create(&ReasonLabels { reason });
        }
        let connections = add(
            &mut registry,
            "connections_open",
            "Open connections, by port (admission, metrics, invalidation)",
            Family::<PortLabels, Gauge>::default(),
        );
        let timed_out = add(
            &mut registry,
            "connections_closed",
            "Connections the server closed, by reason (first_request: nothing sent in time; idle: no request for too long)",
            Family::<ReasonLabels, Counter>::default(),
        );
        for reason in ["first_request", "idle"] {
            let _ = timed_out.get_or_create(&ReasonLabels { reason });
        }
        let deadline_exceeded = add(
            &mut registry,
            "review_deadline_exceeded",
            "Reviews that ran out of their deadline (the registered timeoutSeconds less a margin)",
            Counter::default(),
        );
        let invalidations = add(
            &mut registry,
            "invalidations",
            "Secret ids invalidated, by result (followed: read again and its mirrors brought in line; coalesced: already waiting; unchanged: read again, same value, no write)",
            Family::<ResultLabels, Counter>::default(),
        );
        for result in ["followed", "coalesced", "unchanged"] {
            let _ = invalidations.get_or_create(&ResultLabels { result });
        }
        let unapplied = add(
            &mut registry,
            "reload_unapplied",
            "Reloads that changed a key the running server cannot change (restart to apply), by key",
            Family::<KeyLabels, Counter>::default(),
        );
        let review_memory = add(
            &mut registry,
            "review_memory_bytes",
            "Bytes of the memory budget charged to reviews in flight",
            Gauge::default(),
        );
        let memory_budget = add(
            &mut registry,
            "memory_budget_bytes",
            "The memory budget (--memory-budget): what the process keeps whatever clients send",
            Gauge::default(),
        );
        let task_ends = add(
            &mut registry,
            "task_ends",
            "Long-lived tasks that ended or panicked, by task and outcome (restarted; unready: the replica stopped being ready)",
            Family::<TaskLabels, Counter>::default(),
        );
        Self {
            registry,
            reviews,
            duration,
            in_flight,
            injections,
            reloads,
            registrations,
            policy,
            cert_expiry,
            ca_expiry,
            renewals,
            leader,
            rejected,
            connections,
            timed_out,
            deadline_exceeded,
            invalidations,
            unapplied,
            review_memory,
            memory_budget,
            task_ends,
        }
    }
}

impl Metrics {
    /// Counts a review answered with `outcome` (patched, unchanged, denied, error, invalid).
    pub fn review(&self, outcome: &'static str, seconds: f64) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
        self.duration.observe(seconds);
    }

    /// Counts a review as in flight until the returned guard drops.
    pub fn review_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts one secret injected by `manager` (as the policy names it).
    pub fn injected(&self, manager: &str) {
        let manager = manager_label(manager);
        self.injections
            .get_or_create(&ManagerLabels { manager })
            .inc();
    }

    pub fn reload(&self, swapped: bool) {
        let result = if swapped { "swapped" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn registration(&self, applied: bool) {
        let result = if applied { "applied" } else { "failed" };
        self.registrations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Marks `digest` as the policy in service.
    pub fn policy_in_service(&self, digest: &str) {
        self.policy.clear();
        self.policy
            .get_or_create(&PolicyLabels {
                digest: digest.to_owned(),
            })
            .set(1);
    }

    pub fn cert_expires_at(&self, unix_seconds: f64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// The trusted CAs, by subject, serial and expiry (Unix time), replace those reported before.
    pub fn trusted_cas(&self, cas: impl IntoIterator<Item = (String, String, i64)>) {
        self.ca_expiry.clear();
        for (subject, serial, not_after) in cas {
            self.ca_expiry
                .get_or_create(&CaLabels { subject, serial })
                .set(not_after as f64);
        }
    }

    /// Counts a change to the certificate Secret: `what` is ca, serving or bundle.
    pub fn renewal(&self, what: &'static str, renewed: bool) {
        let outcome = if renewed { "renewed" } else { "failed" };
        self.renewals
            .get_or_create(&RenewalLabels { what, outcome })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a request or connection turned away at a limit.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn connection_opened(&self, port: &'static str) {
        self.connections.get_or_create(&PortLabels { port }).inc();
    }

    pub fn connection_closed(&self, port: &'static str) {
        self.connections.get_or_create(&PortLabels { port }).dec();
    }

    /// Counts a connection closed for silence (`first_request`) or idleness (`idle`).
    pub fn connection_timed_out(&self, reason: &'static str) {
        self.timed_out.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn deadline_exceeded(&self) {
        self.deadline_exceeded.inc();
    }

    /// Counts invalidated ids: followed, coalesced or unchanged.
    pub fn invalidation(&self, result: &'static str, ids: u64) {
        self.invalidations
            .get_or_create(&ResultLabels { result })
            .inc_by(ids);
    }

    pub fn reload_unapplied(&self, key: &'static str) {
        self.unapplied.get_or_create(&KeyLabels { key }).inc();
    }

    /// The memory budget, and what reviews in flight are charged now.
    pub fn memory(&self, budget: u64, reviews: u64) {
        self.memory_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        self.review_memory
            .set(i64::try_from(reviews).unwrap_or(i64::MAX));
    }

    /// Counts a long-lived task that ended: `restarted` or `unready`.
    pub fn task_ended(&self, task: &'static str, outcome: &'static str) {
        self.task_ends
            .get_or_create(&TaskLabels { task, outcome })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let metrics = Metrics::default();
        metrics.review("patched", 0.0002);
        metrics.review("denied", 0.0003);
        metrics.injected("Vault");
        metrics.injected("vault");
        metrics.injected("Global");
        metrics.injected("Keychain");
        metrics.reload(false);
        metrics.policy_in_service("abc");
        metrics.policy_in_service("def");
        metrics.cert_expires_at(1.9e9);
        let ca = |serial: &str| {
            (
                "CN=secrets-webhook CA".to_owned(),
                serial.to_owned(),
                1_900_000_000,
            )
        };
        metrics.trusted_cas([ca("01:aa")]);
        // The same CA twice (a bundle that repeats it) is one series; the old one is gone.
        metrics.trusted_cas([ca("02:bb"), ca("02:bb")]);
        metrics.renewal("serving", true);
        metrics.renewal("ca", false);
        metrics.set_leader(true);
        let text = metrics.encode();
        let ca_line = "secrets_webhook_ca_expiry_timestamp_seconds{subject=\"CN=secrets-webhook CA\",serial=\"02:bb\"} 1900000000";
        assert_eq!(text.matches(ca_line).count(), 1, "{text}");
        assert!(!text.contains("01:aa"), "{text}");
        for line in [
            "secrets_webhook_reviews_total{outcome=\"patched\"} 1",
            "secrets_webhook_reviews_total{outcome=\"denied\"} 1",
            "secrets_webhook_review_duration_seconds_count 2",
            "secrets_webhook_injections_total{manager=\"vault\"} 2",
            "secrets_webhook_injections_total{manager=\"global\"} 1",
            "secrets_webhook_injections_total{manager=\"other\"} 1",
            "secrets_webhook_injections_total{manager=\"azure\"} 0",
            "secrets_webhook_injections_total{manager=\"embedded\"} 0",
            "secrets_webhook_policy_reloads_total{result=\"rejected\"} 1",
            "secrets_webhook_policy_info{digest=\"def\"} 1",
            "secrets_webhook_cert_expiry_timestamp_seconds 1900000000",
            "secrets_webhook_cert_renewals_total{what=\"serving\",outcome=\"renewed\"} 1",
            "secrets_webhook_cert_renewals_total{what=\"ca\",outcome=\"failed\"} 1",
            "secrets_webhook_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("digest=\"abc\""));
    }
}
