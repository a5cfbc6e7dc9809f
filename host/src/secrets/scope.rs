//! Flyte 2's names for a secret: the scope a task runs in, taken from its pod's labels, and the
//! secret id a key has in each scope of the cascade.

use std::collections::BTreeMap;

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
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Scope, String> {
        let label = |name: &str| labels.get(name).filter(|value| !value.is_empty());
        if let Some(missing) = SCOPE_LABELS.iter().find(|name| label(name).is_none()) {
            return Err(format!(
                "secret read requirements not met due to empty {missing} field in the pod labels"
            ));
        }
        Ok(Scope {
            org: labels["organization"].clone(),
            domain: labels["domain"].clone(),
            project: labels["project"].clone(),
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

/// The Secret that holds `id` in the K8s backend: the md5 of the id, in hex (Secret names
/// cannot hold the id's underscores, nor its length).
pub fn k8s_secret_name(id: &str) -> String {
    use md5::Digest as _;
    md5::Md5::digest(id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_scope_label_is_required_and_named() {
        let all = [
            ("organization", "acme"),
            ("project", "flytesnacks"),
            ("domain", "development"),
        ];
        let scope = Scope::from_labels(&labels(&all)).unwrap();
        assert_eq!(
            scope.secret_id("db"),
            "u__org__acme__domain__development__project__flytesnacks__key__db"
        );
        for missing in SCOPE_LABELS {
            let mut partial = labels(&all);
            partial.remove(missing);
            assert_eq!(
                Scope::from_labels(&partial).unwrap_err(),
                format!(
                    "secret read requirements not met due to empty {missing} field in the pod labels"
                )
            );
            partial.insert(missing.to_owned(), String::new());
            assert!(Scope::from_labels(&partial).unwrap_err().contains(missing));
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
    fn k8s_names_are_the_md5_of_the_id() {
        // md5("") and md5("abc") are the RFC 1321 test vectors.
        assert_eq!(k8s_secret_name(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(k8s_secret_name("abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
