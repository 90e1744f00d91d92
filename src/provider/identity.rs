//! Who a grant is for, as cloud targets see it: the subject with what the API server said about
//! it and what the administrator mapped to it, and the templates (`{{username}}`, `{{group}}`,
//! `{{extra.KEY}}`, `{{mapping.KEY}}`) that turn it into a cloud principal.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::{
    crd::v1alpha1::{AccessPolicy, Requester},
    subject::Subject,
};

/// Longest value a template may produce.
const VALUE_MAX_LENGTH: usize = 2048;

/// The subject of a grant and everything known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Who receives the grant.
    pub subject: Subject,
    /// The authenticator's extra attributes; known only when the subject is the requester.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The administrator's values for this subject (`identityMappings`).
    pub mapping: BTreeMap<String, String>,
    /// The policy the mapping comes from, for messages.
    pub policy: String,
}

/// Why a template could not be filled in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Unbalanced braces or an unknown variable.
    #[error("template {template:?} is malformed: {reason}")]
    Malformed {
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// The subject has no value for a variable.
    #[error("{subject} has no {variable}: {hint}")]
    Unmapped {
        /// The subject.
        subject: String,
        /// The variable.
        variable: String,
        /// What would provide it.
        hint: String,
    },
    /// A value holds characters that could widen or redirect the grant.
    #[error("the {variable} of {subject} ({value:?}) has characters a cloud principal may not use")]
    Unsafe {
        /// The subject.
        subject: String,
        /// The variable.
        variable: String,
        /// The value.
        value: String,
    },
}

impl Identity {
    /// The identity of `subject`, with the requester's attributes when the subject is the
    /// requester, and the policy's mapping for it.
    pub fn of(subject: &Subject, requester: Option<&Requester>, policy: &AccessPolicy) -> Self {
        let extra = requester
            .filter(|requester| subject.username().as_deref() == Some(&requester.username))
            .map(|requester| requester.extra.clone())
            .unwrap_or_default();
        let written = subject.to_string();
        let mapping = policy
            .spec
            .identity_mappings
            .iter()
            .find(|entry| entry.subject == written)
            .map(|entry| entry.values.clone())
            .unwrap_or_default();
        Self {
            subject: subject.clone(),
            extra,
            mapping,
            policy: policy.name_any(),
        }
    }

    /// An identity with nothing known beyond the subject.
    pub fn bare(subject: Subject) -> Self {
        Self {
            subject,
            extra: BTreeMap::new(),
            mapping: BTreeMap::new(),
            policy: String::new(),
        }
    }

    /// Fills in `template`. Values taken from the subject must look like names (letters,
    /// digits and `+=,.@_:-`), so that a username cannot carry a wildcard, a path or a second
    /// ARN into a grant; mapped values, which an administrator writes, may also hold `/`.
    pub fn render(&self, template: &str) -> Result<String, Error> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            let (before, after) = rest.split_at(start);
            if before.contains("}}") {
                return Err(self.malformed(template, "'}}' without '{{'"));
            }
            out.push_str(before);
            let Some(end) = after.find("}}") else {
                return Err(self.malformed(template, "'{{' without '}}'"));
            };
            let variable = after[2..end].trim();
            out.push_str(&self.value(template, variable)?);
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(self.malformed(template, "'}}' without '{{'"));
        }
        out.push_str(rest);
        Ok(out)
    }

    fn value(&self, template: &str, variable: &str) -> Result<String, Error> {
        let (value, admin_written) = match variable.split_once('.') {
            None if variable == "username" => (
                self.subject
                    .username()
                    .ok_or_else(|| self.unmapped(variable, "a group has no username"))?,
                false,
            ),
            None if variable == "group" => match &self.subject {
                Subject::Group(group) => (group.clone(), false),
                _ => return Err(self.unmapped(variable, "only a group subject has one")),
            },
            Some(("extra", key)) if !key.is_empty() => (
                self.extra
                    .get(key)
                    .and_then(|values| values.first())
                    .cloned()
                    .ok_or_else(|| {
                        self.unmapped(
                            variable,
                            "the authenticator gave none (extra attributes are known only when the subject made the request)",
                        )
                    })?,
                false,
            ),
            Some(("mapping", key)) if !key.is_empty() => (
                self.mapping.get(key).cloned().ok_or_else(|| {
                    self.unmapped(
                        variable,
                        &format!(
                            "add it under identityMappings in AccessPolicy {}",
                            self.policy
                        ),
                    )
                })?,
                true,
            ),
            _ => {
                return Err(self.malformed(
                    template,
                    &format!(
                        "unknown variable {variable:?}; use username, group, extra.KEY or mapping.KEY"
                    ),
                ));
            }
        };
        let allowed = |c: char| {
            c.is_ascii_alphanumeric() || "+=,.@_:-".contains(c) || (admin_written && c == '/')
        };
        if value.is_empty() || value.len() > VALUE_MAX_LENGTH || !value.chars().all(allowed) {
            return Err(Error::Unsafe {
                subject: self.subject.to_string(),
                variable: variable.to_owned(),
                value,
            });
        }
        Ok(value)
    }

    fn malformed(&self, template: &str, reason: &str) -> Error {
        Error::Malformed {
            template: template.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn unmapped(&self, variable: &str, hint: &str) -> Error {
        Error::Unmapped {
            subject: self.subject.to_string(),
            variable: variable.to_owned(),
            hint: hint.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn alice() -> Identity {
        Identity {
            subject: Subject::User("alice".into()),
            extra: BTreeMap::from([("sso-id".to_string(), vec!["u-123".to_string()])]),
            mapping: BTreeMap::from([
                ("awsUser".to_string(), "alice.smith".to_string()),
                ("role".to_string(), "team/alice".to_string()),
                ("wild".to_string(), "*".to_string()),
            ]),
            policy: "prod".into(),
        }
    }

    #[test]
    fn fills_in_each_kind_of_variable() {
        let alice = alice();
        assert_eq!(
            alice.render("arn:aws:iam::123456789012:user/{{username}}"),
            Ok("arn:aws:iam::123456789012:user/alice".into())
        );
        assert_eq!(
            alice.render("{{ mapping.awsUser }}-{{extra.sso-id}}"),
            Ok("alice.smith-u-123".into())
        );
        assert_eq!(alice.render("no variables"), Ok("no variables".into()));
        let group = Identity::bare(Subject::Group("oncall".into()));
        assert_eq!(
            group.render("arn:aws:iam::123456789012:group/{{group}}"),
            Ok("arn:aws:iam::123456789012:group/oncall".into())
        );
        let account = Identity::bare(Subject::parse("system:serviceaccount:ci:deploy").unwrap());
        assert_eq!(
            account.render("{{username}}"),
            Ok("system:serviceaccount:ci:deploy".into())
        );
    }

    #[test]
    fn mapped_values_may_hold_paths_but_derived_ones_may_not() {
        assert_eq!(
            alice().render("arn:aws:iam::1:role/{{mapping.role}}"),
            Ok("arn:aws:iam::1:role/team/alice".into())
        );
        for username in ["alice/../admin", "*", "al ice", "a?", "a\"b", "a}b"] {
            let identity = Identity::bare(Subject::User(username.into()));
            assert!(
                matches!(identity.render("{{username}}"), Err(Error::Unsafe { .. })),
                "{username:?}"
            );
        }
        assert!(matches!(
            alice().render("{{mapping.wild}}"),
            Err(Error::Unsafe { .. })
        ));
    }

    #[test]
    fn missing_values_say_what_would_provide_them() {
        let alice = alice();
        let Err(Error::Unmapped { hint, .. }) = alice.render("{{mapping.ssoUserId}}") else {
            panic!("expected unmapped");
        };
        assert!(
            hint.contains("identityMappings in AccessPolicy prod"),
            "{hint}"
        );
        assert!(matches!(
            alice.render("{{group}}"),
            Err(Error::Unmapped { .. })
        ));
        assert!(matches!(
            Identity::bare(Subject::Group("g".into())).render("{{username}}"),
            Err(Error::Unmapped { .. })
        ));
        assert!(matches!(
            alice.render("{{extra.department}}"),
            Err(Error::Unmapped { .. })
        ));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for template in [
            "{{username",
            "username}}",
            "{{}}",
            "{{email}}",
            "{{mapping.}}",
            "a}}{{username}}",
        ] {
            assert!(
                matches!(alice().render(template), Err(Error::Malformed { .. })),
                "{template:?}"
            );
        }
    }

    #[test]
    fn extra_attributes_and_mappings_come_from_the_request_and_policy() {
        let mut policy = fixtures::policy();
        policy.spec.identity_mappings = vec![crate::crd::v1alpha1::IdentityMapping {
            subject: "alice".into(),
            values: BTreeMap::from([("awsUser".into(), "alice.smith".into())]),
        }];
        let requester = Requester {
            username: "alice".into(),
            extra: BTreeMap::from([("dept".to_string(), vec!["sre".to_string()])]),
            ..Requester::default()
        };
        let alice = Identity::of(&Subject::User("alice".into()), Some(&requester), &policy);
        assert_eq!(
            alice.render("{{mapping.awsUser}}-{{extra.dept}}"),
            Ok("alice.smith-sre".into())
        );
        // Someone else's extra attributes never describe the subject.
        let bob = Identity::of(&Subject::User("bob".into()), Some(&requester), &policy);
        assert!(bob.extra.is_empty() && bob.mapping.is_empty());
    }
}
