//! Which scopes a pod may read. A pod's `organization`, `project` and `domain` labels are a claim
//! written by whoever creates the pod; a scope is granted only where the claim gives that creator
//! nothing that creating a pod in that namespace did not give already (in Kubernetes the namespace
//! is the unit of trust: a pod creator there may mount its Secrets and run as its
//! ServiceAccounts):
//!
//! - **Flyte's own namespaces** (Flyte 2 OSS runs every task pod in `flyte`, beside its store):
//!   the labels are honoured, optionally only on pods of named creators.
//! - **A project's own namespace** (Flyte 1's layout): the namespace `namespaceTemplate` gives for
//!   the scope, whose organization is bound too — by the template, a configured organization, or
//!   the namespace's `organization` label, never by the pod's label alone.
//! - **Any other namespace** grants nothing.
//!
//! The same rules answer the host, which checks every store read and every mirror it keeps
//! against them, for scopes of the cascade (a domain's or organization's secrets belong to every
//! namespace of one of its projects).

use crate::scope::Scope;
use crate::settings::Creators;

/// The scope authority of `embeddedSecretManagerConfig` (see [`EmbeddedSettings::authority`]).
///
/// [`EmbeddedSettings::authority`]: crate::settings::EmbeddedSettings::authority
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `bindScopeToNamespace`: false grants every scope everywhere.
    pub enforced: bool,
    /// A project's own namespace; empty when projects have none.
    pub template: String,
    /// The organization of every project namespace, when configured.
    pub organization: Option<String>,
    /// Namespaces whose pods' labels are honoured.
    pub flyte_namespaces: Vec<String>,
    /// When not empty, whose pods' labels are honoured there.
    pub creators: Creators,
}

/// Who asked the API server to create the pod: the AdmissionReview's `userInfo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Creator<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
}

/// Why a namespace may read a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `bindScopeToNamespace: false`: nothing is checked.
    Unchecked,
    /// One of Flyte's own namespaces.
    FlyteNamespace,
    /// The project's own namespace, its organization bound.
    ProjectNamespace,
}

impl Authority {
    /// Whether a pod in `namespace` created by `creator` may read `scope`'s secrets; the error
    /// names the rule that refuses. `creator` is `None` for mirrors already written, whose pod's
    /// creator was checked when it was admitted. `org_label` reads the namespace's
    /// `organization` label (an error when the namespace cannot be read or does not exist); it
    /// is called only for a project's own namespace.
    pub fn grant(
        &self,
        namespace: &str,
        creator: Option<Creator<'_>>,
        scope: &Scope,
        org_label: impl FnOnce() -> Result<Option<String>, String>,
    ) -> Result<Grant, String> {
        if !self.enforced {
            return Ok(Grant::Unchecked);
        }
        if self.flyte_namespaces.iter().any(|n| n == namespace) {
            return match creator {
                Some(creator) if !self.admits(creator) => {
                    Err(self.not_a_creator(namespace, creator))
                }
                _ => Ok(Grant::FlyteNamespace),
            };
        }
        if !self.is_project_namespace(namespace, scope)? {
            return Err(self.no_grant(namespace, scope));
        }
        self.check_organization(namespace, scope, org_label()?)?;
        Ok(Grant::ProjectNamespace)
    }

    fn admits(&self, creator: Creator<'_>) -> bool {
        let Creators { users, groups } = &self.creators;
        (users.is_empty() && groups.is_empty())
            || users.iter().any(|user| user == creator.username)
            || creator.groups.iter().any(|group| groups.contains(group))
    }

    fn not_a_creator(&self, namespace: &str, creator: Creator<'_>) -> String {
        format!(
            "namespace {namespace:?} honours scope labels only on pods created by \
             embeddedSecretManagerConfig.flyteNamespaceCreators (users {:?}, groups {:?}); \
             {:?} (groups {:?}) is none of them",
            self.creators.users, self.creators.groups, creator.username, creator.groups
        )
    }

    /// Whether `namespace` is the template's namespace for `scope`, or for a project of it when
    /// `scope` is a domain's or an organization's.
    fn is_project_namespace(&self, namespace: &str, scope: &Scope) -> Result<bool, String> {
        if self.template.is_empty() {
            return Ok(false);
        }
        let separator = [&scope.org, &scope.domain, &scope.project]
            .iter()
            .any(|part| part.contains("__"));
        if separator
            || scope.org.is_empty()
            || (scope.domain.is_empty() && !scope.project.is_empty())
        {
            return Err(format!(
                "{} is not a scope a pod can read",
                scope.describe()
            ));
        }
        let pattern = pattern(&self.template, scope)?;
        Ok(matches(&pattern, namespace))
    }

    fn check_organization(
        &self,
        namespace: &str,
        scope: &Scope,
        label: Option<String>,
    ) -> Result<(), String> {
        let mut bound = self.template_binds_organization();
        if let Some(org) = &self.organization {
            if *org != scope.org {
                return Err(format!(
                    "the pod's organization {:?} is not this cluster's: \
                     embeddedSecretManagerConfig.organization is {org:?}",
                    scope.org
                ));
            }
            bound = true;
        }
        if let Some(org) = label {
            if org != scope.org {
                return Err(format!(
                    "the pod's label organization={} does not match namespace {namespace:?}'s \
                     label organization={org}",
                    scope.org
                ));
            }
            bound = true;
        }
        if !bound {
            return Err(format!(
                "namespace {namespace:?} binds no organization, and a pod's own organization \
                 label is not proof: label the namespace organization=<org>, set \
                 embeddedSecretManagerConfig.organization, or use {{{{ organization }}}} in \
                 namespaceTemplate"
            ));
        }
        Ok(())
    }

    fn template_binds_organization(&self) -> bool {
        parts(&self.template).is_ok_and(|parts| {
            parts
                .iter()
                .any(|(placeholder, name)| *placeholder && *name == "organization")
        })
    }

    fn no_grant(&self, namespace: &str, scope: &Scope) -> String {
        let mut message = format!(
            "namespace {namespace:?} grants no scope: it is not one of Flyte's namespaces \
             (embeddedSecretManagerConfig.flyteNamespaces: {:?})",
            self.flyte_namespaces
        );
        match render(&self.template, scope) {
            Ok(expected) if !self.template.is_empty() && !scope.project.is_empty() => {
                message.push_str(&format!(
                    ", and the pod's labels project={} domain={} belong in namespace \
                     {expected:?} (embeddedSecretManagerConfig.namespaceTemplate {:?})",
                    scope.project, scope.domain, self.template
                ));
            }
            _ if self.template.is_empty() => {
                message
                    .push_str(", and no namespace is a project's own (namespaceTemplate is empty)");
            }
            _ => message.push_str(&format!(
                ", nor a namespace of {} (embeddedSecretManagerConfig.namespaceTemplate {:?})",
                scope.describe(),
                self.template
            )),
        }
        message
    }
}

/// The placeholders a namespace template may use.
const PLACEHOLDERS: [&str; 3] = ["project", "domain", "organization"];

/// Splits a template into literal text and placeholder names.
fn parts(template: &str) -> Result<Vec<(bool, &str)>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        parts.push((false, &rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("namespaceTemplate {template:?} has an unclosed {{{{"))?;
        parts.push((true, after[..end].trim()));
        rest = &after[end + 2..];
    }
    parts.push((false, rest));
    Ok(parts)
}

/// Checks a namespace template: empty, or only known placeholders with project and domain both
/// used (else two projects would share a namespace's secrets).
pub fn check_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Ok(());
    }
    let parts = parts(template)?;
    let names: Vec<&str> = parts.iter().filter(|(p, _)| *p).map(|(_, n)| *n).collect();
    if let Some(unknown) = names.iter().find(|name| !PLACEHOLDERS.contains(name)) {
        return Err(format!(
            "namespaceTemplate {template:?}: unknown placeholder {{{{ {unknown} }}}}; use \
             {{{{ project }}}}, {{{{ domain }}}} or {{{{ organization }}}}"
        ));
    }
    for needed in ["project", "domain"] {
        if !names.contains(&needed) {
            return Err(format!(
                "namespaceTemplate {template:?} must use {{{{ {needed} }}}}"
            ));
        }
    }
    Ok(())
}

/// The namespace `template` gives for `scope`.
pub fn render(template: &str, scope: &Scope) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    for (placeholder, text) in parts(template)? {
        out.push_str(match (placeholder, text) {
            (false, literal) => literal,
            (true, name) => value(scope, name)?,
        });
    }
    Ok(out)
}

fn value<'s>(scope: &'s Scope, placeholder: &str) -> Result<&'s str, String> {
    match placeholder {
        "project" => Ok(&scope.project),
        "domain" => Ok(&scope.domain),
        "organization" => Ok(&scope.org),
        other => Err(format!("unknown placeholder {other}")),
    }
}

/// A template with a scope's parts filled in; `None` stands for any non-empty text (the project
/// of a domain's scope, the project and domain of an organization's).
type Pattern<'t> = Vec<Option<&'t str>>;

fn pattern<'t>(template: &'t str, scope: &'t Scope) -> Result<Pattern<'t>, String> {
    parts(template)?
        .into_iter()
        .map(|(placeholder, text)| match placeholder {
            false => Ok(Some(text)),
            true => value(scope, text).map(|value| Some(value).filter(|v| !v.is_empty())),
        })
        .collect()
}

fn matches(pattern: &[Option<&str>], text: &str) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((Some(literal), rest)) => text
            .strip_prefix(literal)
            .is_some_and(|text| matches(rest, text)),
        Some((None, rest)) => text
            .char_indices()
            .skip(1)
            .map(|(at, _)| at)
            .chain([text.len()])
            .filter(|at| *at > 0)
            .any(|at| matches(rest, &text[at..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(org: &str, domain: &str, project: &str) -> Scope {
        Scope {
            org: org.into(),
            domain: domain.into(),
            project: project.into(),
        }
    }

    fn authority() -> Authority {
        Authority {
            enforced: true,
            template: "{{ project }}-{{ domain }}".into(),
            organization: None,
            flyte_namespaces: vec!["flyte".into()],
            creators: Creators::default(),
        }
    }

    fn labelled(org: &str) -> impl FnOnce() -> Result<Option<String>, String> {
        let org = org.to_owned();
        move || Ok(Some(org))
    }

    fn unlabelled() -> Result<Option<String>, String> {
        Ok(None)
    }

    fn unread() -> Result<Option<String>, String> {
        panic!("the namespace's labels were read")
    }

    #[test]
    fn a_project_namespace_grants_its_own_scope_with_its_organization_bound() {
        let rules = authority();
        let own = scope("acme", "development", "ml");
        let ns = "ml-development";
        assert_eq!(
            rules.grant(ns, None, &own, labelled("acme")),
            Ok(Grant::ProjectNamespace)
        );
        // The cascade's broader scopes belong to it too.
        for broader in &own.cascade()[1..] {
            assert_eq!(
                rules.grant(ns, None, broader, labelled("acme")),
                Ok(Grant::ProjectNamespace)
            );
        }
        // Another project, domain or organization does not.
        for other in [
            scope("acme", "development", "payroll"),
            scope("acme", "production", "ml"),
            scope("acme", "production", ""),
        ] {
            let err = rules.grant(ns, None, &other, unread).unwrap_err();
            assert!(err.contains("grants no scope"), "{err}");
        }
        let err = rules
            .grant(
                ns,
                None,
                &scope("umbrella", "development", "ml"),
                labelled("acme"),
            )
            .unwrap_err();
        assert!(
            err.contains("organization=umbrella") && err.contains("organization=acme"),
            "{err}"
        );
    }

    #[test]
    fn a_pods_own_organization_label_binds_nothing() {
        let rules = authority();
        let forged = scope("umbrella", "development", "ml");
        let err = rules
            .grant("ml-development", None, &forged, unlabelled)
            .unwrap_err();
        assert!(err.contains("binds no organization"), "{err}");
        // A fixed organization binds it.
        let fixed = Authority {
            organization: Some("acme".into()),
            ..authority()
        };
        let err = fixed
            .grant("ml-development", None, &forged, unlabelled)
            .unwrap_err();
        assert!(
            err.contains("embeddedSecretManagerConfig.organization is \"acme\""),
            "{err}"
        );
        let own = scope("acme", "development", "ml");
        assert!(
            fixed
                .grant("ml-development", None, &own, unlabelled)
                .is_ok()
        );
        // So does the template.
        let tight = Authority {
            template: "{{ organization }}-{{ project }}-{{ domain }}".into(),
            ..authority()
        };
        assert!(
            tight
                .grant("acme-ml-development", None, &own, unlabelled)
                .is_ok()
        );
        let err = tight
            .grant("acme-ml-development", None, &forged, unread)
            .unwrap_err();
        assert!(err.contains("grants no scope"), "{err}");
        // A namespace that cannot be read grants nothing.
        let err = rules
            .grant(
                "ml-development",
                None,
                &own,
                || Err("namespace gone".into()),
            )
            .unwrap_err();
        assert_eq!(err, "namespace gone");
    }

    #[test]
    fn flytes_namespace_honours_labels_of_the_creators_it_names() {
        let rules = authority();
        let any = scope("flyte", "production", "payroll");
        let executor = Creator {
            username: "system:serviceaccount:flyte:flyte-executor",
            groups: &[],
        };
        assert_eq!(
            rules.grant("flyte", Some(executor), &any, unread),
            Ok(Grant::FlyteNamespace)
        );
        let groups = ["system:serviceaccounts:spark-operator".to_owned()];
        let operator = Creator {
            username: "system:serviceaccount:spark-operator:spark",
            groups: &groups,
        };
        let narrowed = Authority {
            creators: Creators {
                users: vec![executor.username.into()],
                groups: vec![groups[0].clone()],
            },
            ..authority()
        };
        assert!(
            narrowed
                .grant("flyte", Some(executor), &any, unread)
                .is_ok()
        );
        assert!(
            narrowed
                .grant("flyte", Some(operator), &any, unread)
                .is_ok()
        );
        let tenant = Creator {
            username: "alice",
            groups: &[],
        };
        let err = narrowed
            .grant("flyte", Some(tenant), &any, unread)
            .unwrap_err();
        assert!(
            err.contains("\"alice\"") && err.contains("flyteNamespaceCreators"),
            "{err}"
        );
        // Mirrors already written there are followed whoever created their pod.
        assert!(narrowed.grant("flyte", None, &any, unread).is_ok());
        // Elsewhere, Flyte 2's labels grant nothing.
        let err = rules
            .grant("team-a", Some(executor), &any, unread)
            .unwrap_err();
        assert!(err.contains("\"team-a\" grants no scope"), "{err}");
    }

    #[test]
    fn turned_off_it_grants_everything() {
        let off = Authority {
            enforced: false,
            ..authority()
        };
        let any = scope("umbrella", "production", "payroll");
        assert_eq!(
            off.grant("team-a", None, &any, unread),
            Ok(Grant::Unchecked)
        );
    }

    #[test]
    fn templates_match_a_domains_or_organizations_projects() {
        let rules = authority();
        let org = labelled("acme");
        // A domain's secrets belong to every namespace of one of its projects.
        let domain = scope("acme", "development", "");
        assert!(rules.grant("a-b-development", None, &domain, org).is_ok());
        assert!(rules.grant("-development", None, &domain, unread).is_err());
        assert!(rules.grant("development", None, &domain, unread).is_err());
        let org_scope = scope("acme", "", "");
        assert!(
            rules
                .grant("x-y", None, &org_scope, labelled("acme"))
                .is_ok()
        );
        assert!(rules.grant("xy", None, &org_scope, unread).is_err());
        // Not a scope of any cascade.
        // `__` separates an id's parts: `a__domain__b` would make two scopes one id.
        for odd in [
            scope("acme", "", "ml"),
            scope("", "development", "ml"),
            scope("a__domain__b", "development", "ml"),
        ] {
            let err = rules
                .grant("ml-development", None, &odd, unread)
                .unwrap_err();
            assert!(err.contains("not a scope a pod can read"), "{err}");
        }
        let none = Authority {
            template: String::new(),
            ..authority()
        };
        let err = none
            .grant(
                "ml-development",
                None,
                &scope("acme", "development", "ml"),
                unread,
            )
            .unwrap_err();
        assert!(err.contains("namespaceTemplate is empty"), "{err}");
    }

    #[test]
    fn templates_need_project_and_domain() {
        check_template("{{ project }}-{{ domain }}").unwrap();
        check_template("{{organization}}.{{project}}.{{domain}}").unwrap();
        check_template("").unwrap();
        for (bad, why) in [
            ("{{ project }}", "must use {{ domain }}"),
            ("{{ project }}-{{ team }}", "unknown placeholder"),
            ("{{ project }}-{{ domain", "unclosed"),
        ] {
            let err = check_template(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let own = scope("acme", "development", "flytesnacks");
        assert_eq!(
            render("{{organization}}.{{project}}.{{domain}}", &own).unwrap(),
            "acme.flytesnacks.development"
        );
    }
}
