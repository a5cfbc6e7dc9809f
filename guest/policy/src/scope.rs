//! Flyte 2's names for a secret: the scope a task runs in (organization, domain, project, from
//! its pod's labels), the id a key has in each scope of the cascade, and the mirror a resolved id
//! gets in a task's namespace. Whether a pod may read the scope its labels name is
//! [`crate::authority`]'s question.

use sha2::{Digest, Sha256};

/// The pod labels that name a task's scope, in the order Flyte 2 checks them.
pub const SCOPE_LABELS: [&str; 3] = ["organization", "project", "domain"];

/// An organization, domain and project; the broader scopes leave project, then domain, empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub org: String,
    pub domain: String,
    pub project: String,
}

impl Scope {
    /// The scope of a pod with `labels`. Each scope label must be set and non-empty; the error
    /// is Flyte 2's message, naming the first that is not.
    pub fn from_labels<'l>(labels: impl Fn(&str) -> Option<&'l str>) -> Result<Scope, String> {
        let label = |name: &str| labels(name).filter(|value| !value.is_empty());
        if let Some(missing) = SCOPE_LABELS.iter().find(|name| label(name).is_none()) {
            return Err(format!(
                "secret read requirements not met due to empty {missing} field in the pod labels"
            ));
        }
        // Flyte 2's ids separate their parts by `__`: a label holding it would name another
        // scope's id (organization `a__domain__b`, domain `c` is organization `a`, domain
        // `b__domain__c`).
        if let Some(name) = SCOPE_LABELS
            .iter()
            .find(|name| label(name).is_some_and(|value| value.contains("__")))
        {
            return Err(format!(
                "the pod's {name} label holds \"__\", which separates the parts of a secret id"
            ));
        }
        let owned = |name: &str| label(name).unwrap_or_default().to_owned();
        Ok(Scope {
            org: owned("organization"),
            domain: owned("domain"),
            project: owned("project"),
        })
    }

    /// The scopes searched for a secret, narrowest first: the project, its domain (no
    /// project), its organization (neither).
    pub fn cascade(&self) -> [Scope; 3] {
        let domain = Scope {
            project: String::new(),
            ..self.clone()
        };
        let org = Scope {
            domain: String::new(),
            ..domain.clone()
        };
        [self.clone(), domain, org]
    }

    /// Flyte 2's id of secret `key` in this scope.
    pub fn secret_id(&self, key: &str) -> String {
        format!(
            "u__org__{}__domain__{}__project__{}__key__{key}",
            self.org, self.domain, self.project
        )
    }

    /// Which scope this is, for messages: `project p`, `domain d`, `organization o`.
    pub fn describe(&self) -> String {
        match (self.project.is_empty(), self.domain.is_empty()) {
            (false, _) => format!(
                "project {}, domain {}, organization {}",
                self.project, self.domain, self.org
            ),
            (true, false) => format!("domain {}, organization {}", self.domain, self.org),
            (true, true) => format!("organization {}", self.org),
        }
    }
}

/// The scope and key of a secret id, if it is one.
pub fn parse_secret_id(id: &str) -> Option<(Scope, String)> {
    let rest = id.strip_prefix("u__org__")?;
    let (org, rest) = rest.split_once("__domain__")?;
    let (domain, rest) = rest.split_once("__project__")?;
    let (project, key) = rest.split_once("__key__")?;
    let scope = Scope {
        org: org.to_owned(),
        domain: domain.to_owned(),
        project: project.to_owned(),
    };
    Some((scope, key.to_owned()))
}

/// A short digest of secret `id` (hex of the first 16 bytes of its SHA-256): the same in every
/// namespace, and a valid label value.
pub fn id_hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The key a mirror Secret holds its value under.
pub const MIRROR_KEY: &str = "value";

/// The name of the Secret that mirrors secret `id` into a task's namespace.
pub fn mirror_name(id: &str) -> String {
    format!("flyte-secret-{}", id_hash(id))
}

/// Flyte 2's name for the image pull Secret of `key` in `scope` (`img-pull-` and the first 16 hex
/// digits of sha256(`<org>:<domain>:<project>:<key>`)), the same in the store's namespace and in
/// the pod's.
pub fn pull_secret_name(scope: &Scope, key: &str) -> String {
    let text = format!("{}:{}:{}:{key}", scope.org, scope.domain, scope.project);
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("img-pull-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The digests were computed with Python's hashlib, not with this code.
    #[test]
    fn pull_secret_names_are_flyte_2s() {
        let scope = Scope {
            org: "acme".into(),
            domain: "development".into(),
            project: "ml".into(),
        };
        let [project, _, org] = scope.cascade();
        assert_eq!(
            pull_secret_name(&project, "registry"),
            "img-pull-455cb1322b810820"
        );
        assert_eq!(
            pull_secret_name(&org, "registry"),
            "img-pull-ac8034ac902ca469"
        );
    }

    fn scope_of(labels: &BTreeMap<String, String>) -> Result<Scope, String> {
        Scope::from_labels(|name| labels.get(name).map(String::as_str))
    }

    #[test]
    fn every_scope_label_is_required_and_named() {
        let all = [
            ("organization", "acme"),
            ("project", "flytesnacks"),
            ("domain", "development"),
        ];
        let scope = scope_of(&labels(&all)).unwrap();
        assert_eq!(
            scope.secret_id("db"),
            "u__org__acme__domain__development__project__flytesnacks__key__db"
        );
        for missing in SCOPE_LABELS {
            let mut partial = labels(&all);
            partial.remove(missing);
            assert_eq!(
                scope_of(&partial).unwrap_err(),
                format!(
                    "secret read requirements not met due to empty {missing} field in the pod labels"
                )
            );
            partial.insert(missing.to_owned(), String::new());
            assert!(scope_of(&partial).unwrap_err().contains(missing));
            partial.insert(missing.to_owned(), "a__domain__b".to_owned());
            let err = scope_of(&partial).unwrap_err();
            assert!(err.contains(missing) && err.contains("separates"), "{err}");
        }
    }

    #[test]
    fn the_cascade_widens_from_project_to_organization() {
        let scope = Scope {
            org: "acme".into(),
            domain: "production".into(),
            project: "ml".into(),
        };
        let ids: Vec<String> = scope
            .cascade()
            .iter()
            .map(|s| s.secret_id("api_key"))
            .collect();
        assert_eq!(
            ids,
            [
                "u__org__acme__domain__production__project__ml__key__api_key",
                "u__org__acme__domain__production__project____key__api_key",
                "u__org__acme__domain____project____key__api_key",
            ]
        );
        for (id, scope) in ids.iter().zip(scope.cascade()) {
            assert_eq!(parse_secret_id(id), Some((scope, "api_key".to_owned())));
        }
        // Keys may hold underscores, doubled too.
        let (_, key) = parse_secret_id(&scope.secret_id("a__b_c")).unwrap();
        assert_eq!(key, "a__b_c");
        assert_eq!(parse_secret_id("db-password"), None);
    }

    #[test]
    fn mirror_names_are_valid_secret_names_and_differ_by_id() {
        let a = mirror_name("u__org__a__domain____project____key__k");
        let b = mirror_name("u__org__b__domain____project____key__k");
        assert_ne!(a, b);
        assert_eq!(a.len(), "flyte-secret-".len() + 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        );
        // SHA-256("abc") begins ba7816bf8f01cfea414140de5dae2223 (FIPS 180-2).
        assert_eq!(id_hash("abc"), "ba7816bf8f01cfea414140de5dae2223");
    }
}
