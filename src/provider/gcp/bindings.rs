//! Edits of a Google Cloud IAM policy that touch only our own conditional binding: add it
//! (version 3, `request.time < timestamp("<expiresAt>")`, titled with the grant key), remove
//! our member from it, and tidy our bindings that already expired. Everything else in the
//! policy (other bindings, their conditions, audit configs, the etag) is kept as read. Pure.

use google_cloud_iam_v1::model::{Binding, Policy};
use google_cloud_type::model::Expr;
use jiff::Timestamp;

/// The policy version that carries conditions.
pub const CONDITIONAL_VERSION: i32 = 3;
/// The prefix of every condition title the operator writes.
const TITLE_PREFIX: &str = "jit-";
/// Longest condition description Google accepts.
const DESCRIPTION_MAX: usize = 256;

/// The condition that ends a binding at `expires_at`.
pub fn expiry_expression(expires_at: Timestamp) -> String {
    format!(
        "request.time < timestamp(\"{}\")",
        expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// When our expression ends the binding; `None` for any other expression.
fn expiry_of(expression: &str) -> Option<Timestamp> {
    expression
        .strip_prefix("request.time < timestamp(\"")?
        .strip_suffix("\")")?
        .parse()
        .ok()
}

/// Our condition for a grant.
pub fn condition(title: &str, description: &str, expires_at: Timestamp) -> Expr {
    let mut description = description.to_owned();
    if description.len() > DESCRIPTION_MAX {
        let mut cut = DESCRIPTION_MAX - 3;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
        description.push_str("...");
    }
    Expr::new()
        .set_title(title)
        .set_description(description)
        .set_expression(expiry_expression(expires_at))
}

fn is_ours(binding: &Binding, title: &str) -> bool {
    binding
        .condition
        .as_ref()
        .is_some_and(|condition| condition.title == title)
}

/// The binding of ours titled `title`, if the policy has one.
pub fn find<'a>(policy: &'a Policy, title: &str) -> Option<&'a Binding> {
    policy
        .bindings
        .iter()
        .find(|binding| is_ours(binding, title))
}

/// The policy with our binding (role, member, condition) in it; a binding of ours under the
/// same title is replaced. `None` when the policy already holds exactly that binding.
pub fn with_grant(policy: &Policy, role: &str, member: &str, condition: Expr) -> Option<Policy> {
    let wanted = Binding::new()
        .set_role(role)
        .set_members([member])
        .set_condition(condition);
    if find(policy, &wanted_title(&wanted)) == Some(&wanted)
        && policy.version >= CONDITIONAL_VERSION
    {
        return None;
    }
    let title = wanted_title(&wanted);
    let mut edited = policy.clone();
    edited.bindings.retain(|binding| !is_ours(binding, &title));
    edited.bindings.push(wanted);
    edited.version = CONDITIONAL_VERSION;
    Some(edited)
}

fn wanted_title(binding: &Binding) -> String {
    binding
        .condition
        .as_ref()
        .map(|condition| condition.title.clone())
        .unwrap_or_default()
}

/// The policy without our member in the binding titled `title`, and without our bindings
/// that expired before `now`. `None` when there is nothing to remove.
pub fn without_grant(policy: &Policy, title: &str, member: &str, now: Timestamp) -> Option<Policy> {
    let mut edited = policy.clone();
    let mut changed = false;
    edited.bindings = policy
        .bindings
        .iter()
        .filter_map(|binding| {
            let Some(condition) = binding.condition.as_ref() else {
                return Some(binding.clone());
            };
            if condition.title == title {
                changed = true;
                // Only our member: someone who added another member to our binding keeps it.
                let mut kept = binding.clone();
                kept.members.retain(|candidate| candidate != member);
                return (!kept.members.is_empty()).then_some(kept);
            }
            let expired_ours = condition.title.starts_with(TITLE_PREFIX)
                && expiry_of(&condition.expression).is_some_and(|end| end <= now);
            if expired_ours {
                changed = true;
                return None;
            }
            Some(binding.clone())
        })
        .collect();
    changed.then_some(edited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_iam_v1::model::AuditConfig;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn theirs() -> Policy {
        Policy::new()
            .set_version(1)
            .set_etag(b"etag-1".to_vec())
            .set_bindings([
                Binding::new()
                    .set_role("roles/owner")
                    .set_members(["user:root@example.com"]),
                Binding::new()
                    .set_role("roles/viewer")
                    .set_members(["group:auditors@example.com"])
                    .set_condition(
                        Expr::new()
                            .set_title("business-hours")
                            .set_expression("request.time.getHours(\"UTC\") < 18"),
                    ),
            ])
            .set_audit_configs([AuditConfig::new().set_service("allServices")])
    }

    #[test]
    fn the_expression_is_the_documented_timestamp_comparison() {
        assert_eq!(
            expiry_expression(at("2026-11-21T10:30:00.9Z")),
            "request.time < timestamp(\"2026-11-21T10:30:00Z\")"
        );
        assert_eq!(
            expiry_of("request.time < timestamp(\"2026-11-21T10:30:00Z\")"),
            Some(at("2026-11-21T10:30:00Z"))
        );
        assert_eq!(expiry_of("request.time < timestamp(\"soon\")"), None);
        assert_eq!(expiry_of("true"), None);
    }

    #[test]
    fn granting_adds_one_binding_sets_version_3_and_keeps_the_rest() {
        let policy = theirs();
        let ours = condition(
            "jit-abc",
            "team/fix approved by bob",
            at("2026-11-21T11:00:00Z"),
        );
        let granted = with_grant(
            &policy,
            "roles/viewer",
            "user:alice@example.com",
            ours.clone(),
        )
        .unwrap();
        assert_eq!(granted.version, 3);
        assert_eq!(granted.etag, policy.etag, "written back with the etag read");
        assert_eq!(granted.audit_configs, policy.audit_configs);
        assert_eq!(granted.bindings[..2], policy.bindings[..]);
        assert_eq!(granted.bindings.len(), 3);
        assert_eq!(granted.bindings[2].members, ["user:alice@example.com"]);
        assert_eq!(granted.bindings[2].condition.as_ref(), Some(&ours));
        // Granting again changes nothing: a retry after a dropped reply adopts.
        assert_eq!(
            with_grant(&granted, "roles/viewer", "user:alice@example.com", ours),
            None
        );
        // A new expiry replaces ours instead of adding a second binding.
        let later = condition("jit-abc", "x", at("2026-11-21T12:00:00Z"));
        let regranted =
            with_grant(&granted, "roles/viewer", "user:alice@example.com", later).unwrap();
        assert_eq!(regranted.bindings.len(), 3);
    }

    #[test]
    fn revoking_removes_only_our_member_and_our_expired_bindings() {
        let now = at("2026-11-21T12:00:00Z");
        let mut policy = theirs();
        let ours = condition("jit-abc", "", at("2026-11-21T13:00:00Z"));
        policy = with_grant(&policy, "roles/viewer", "user:alice@example.com", ours).unwrap();
        let expired = condition("jit-old", "", at("2026-11-21T11:00:00Z"));
        policy = with_grant(&policy, "roles/editor", "user:bob@example.com", expired).unwrap();
        let another_live = condition("jit-live", "", at("2026-11-21T13:00:00Z"));
        policy = with_grant(
            &policy,
            "roles/editor",
            "user:carol@example.com",
            another_live,
        )
        .unwrap();

        let revoked = without_grant(&policy, "jit-abc", "user:alice@example.com", now).unwrap();
        let titles: Vec<_> = revoked
            .bindings
            .iter()
            .map(|binding| binding.condition.as_ref().map(|c| c.title.as_str()))
            .collect();
        assert_eq!(titles, [None, Some("business-hours"), Some("jit-live")]);
        assert_eq!(revoked.audit_configs, policy.audit_configs);
        assert_eq!(
            without_grant(&revoked, "jit-abc", "user:alice@example.com", now),
            None
        );
    }

    #[test]
    fn a_member_someone_added_to_our_binding_is_left_in_place() {
        let ours = condition("jit-abc", "", at("2026-11-21T13:00:00Z"));
        let mut policy =
            with_grant(&theirs(), "roles/viewer", "user:alice@example.com", ours).unwrap();
        policy.bindings[2]
            .members
            .push("user:mallory@example.com".into());
        let revoked = without_grant(
            &policy,
            "jit-abc",
            "user:alice@example.com",
            at("2026-11-21T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            find(&revoked, "jit-abc").unwrap().members,
            ["user:mallory@example.com"]
        );
    }

    #[test]
    fn long_descriptions_are_cut_to_what_google_accepts() {
        let long = "é".repeat(300);
        let cut = condition("jit-x", &long, at("2026-01-01T00:00:00Z"));
        assert!(cut.description.len() <= 256);
        assert!(cut.description.ends_with("..."));
    }
}
