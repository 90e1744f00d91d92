//! Who receives a role: the parsed form of `spec.subject`, and how identities relate to it.

use std::fmt;

/// The prefix of a ServiceAccount's username.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// The prefix that makes `spec.subject` a group.
const GROUP_PREFIX: &str = "group:";

/// Who receives a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user, by the username the API server authenticates.
    User(String),
    /// Every member of a group.
    Group(String),
    /// A ServiceAccount.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// Why a string is not a subject.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Empty, or a prefix without a name.
    #[error(
        "{0:?} is not a subject: use a username, group:NAME or system:serviceaccount:NAMESPACE:NAME"
    )]
    Malformed(String),
}

impl Subject {
    /// Parses `alice`, `group:oncall` or `system:serviceaccount:ci:deployer`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let malformed = || Error::Malformed(text.to_owned());
        if text.trim().is_empty() || text.trim() != text {
            return Err(malformed());
        }
        if let Some(group) = text.strip_prefix(GROUP_PREFIX) {
            return if group.is_empty() {
                Err(malformed())
            } else {
                Ok(Self::Group(group.to_owned()))
            };
        }
        if let Some(rest) = text.strip_prefix(SERVICE_ACCOUNT_PREFIX) {
            return match rest.split_once(':') {
                Some((namespace, name))
                    if !namespace.is_empty() && !name.is_empty() && !name.contains(':') =>
                {
                    Ok(Self::ServiceAccount {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    })
                }
                _ => Err(malformed()),
            };
        }
        Ok(Self::User(text.to_owned()))
    }

    /// The subject a request names, or the requester when it names none.
    pub fn of_request(subject: Option<&str>, requester: &str) -> Result<Self, Error> {
        Self::parse(subject.unwrap_or(requester))
    }

    /// The username this subject authenticates as; a group has none.
    pub fn username(&self) -> Option<String> {
        match self {
            Self::User(name) => Some(name.clone()),
            Self::ServiceAccount { namespace, name } => {
                Some(format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"))
            }
            Self::Group(_) => None,
        }
    }

    /// Whether someone with this username and these groups would hold what is granted to the
    /// subject: they are the subject, or a member of the subject group.
    pub fn includes(&self, username: &str, groups: &[String]) -> bool {
        match self {
            Self::Group(group) => groups.iter().any(|candidate| candidate == group),
            other => other.username().as_deref() == Some(username),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => formatter.write_str(name),
            Self::Group(group) => write!(formatter, "{GROUP_PREFIX}{group}"),
            Self::ServiceAccount { namespace, name } => {
                write!(formatter, "{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_groups_and_service_accounts() {
        assert_eq!(Subject::parse("alice"), Ok(Subject::User("alice".into())));
        assert_eq!(
            Subject::parse("group:oncall"),
            Ok(Subject::Group("oncall".into()))
        );
        assert_eq!(
            Subject::parse("system:serviceaccount:ci:deployer"),
            Ok(Subject::ServiceAccount {
                namespace: "ci".into(),
                name: "deployer".into()
            })
        );
        for text in [
            "",
            " alice",
            "group:",
            "system:serviceaccount:ci",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            assert!(Subject::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["alice", "group:oncall", "system:serviceaccount:ci:deployer"] {
            assert_eq!(Subject::parse(text).map(|s| s.to_string()), Ok(text.into()));
        }
    }

    #[test]
    fn includes_the_subject_and_group_members_only() {
        let groups = vec!["oncall".to_string()];
        assert!(Subject::User("alice".into()).includes("alice", &[]));
        assert!(!Subject::User("alice".into()).includes("bob", &groups));
        assert!(Subject::Group("oncall".into()).includes("bob", &groups));
        assert!(!Subject::Group("oncall".into()).includes("oncall", &[]));
        let account = Subject::parse("system:serviceaccount:ci:deployer").unwrap();
        assert!(account.includes("system:serviceaccount:ci:deployer", &[]));
        assert!(!account.includes("deployer", &[]));
    }
}
