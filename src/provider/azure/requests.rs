//! The Microsoft.Authorization REST shapes the Azure provider uses, and the pure rules around
//! them: deterministic names, request bodies, paths, and reading replies. No I/O here.
//!
//! There is no maintained Rust client for Microsoft.Authorization, so the few types needed are
//! kept here, following the published REST reference (role assignments api-version
//! 2022-04-01, PIM schedule requests and schedules api-version 2020-10-01).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::crd::v1alpha1::{AzureMode, AzurePrincipalType};

/// The api-version of role assignments.
pub const ASSIGNMENTS_API_VERSION: &str = "2022-04-01";
/// The api-version of PIM role assignment schedule requests and schedules.
pub const PIM_API_VERSION: &str = "2020-10-01";

/// The namespace of every name the operator derives (a fixed, random UUID), so that our
/// names never collide with names derived by anyone else from the same text.
const NAME_NAMESPACE: Uuid = Uuid::from_u128(0x6a0c_2f4e_9d1b_4c57_8e3a_b1f0_5d27_c9e4);

/// PIM request statuses that mean the request will never take effect.
const FAILED_STATUSES: &[&str] = &[
    "Denied",
    "Failed",
    "FailedAsResourceIsLocked",
    "AdminDenied",
    "TimedOut",
    "Invalid",
    "Canceled",
    "Revoked",
];

/// PIM request statuses that mean the assignment exists (or existed).
const DONE_STATUSES: &[&str] = &["Granted", "Provisioned", "ScheduleCreated", "AdminApproved"];

/// One grant as made in Azure: what the ledger records and revoke undoes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzureGrant {
    /// Direct role assignment or PIM schedule.
    pub mode: AzureMode,
    /// Where.
    pub scope: String,
    /// The role definition.
    pub role_definition_id: String,
    /// The object ID that receives it, lower case.
    pub principal_id: String,
    /// What kind of object that is.
    pub principal_type: AzurePrincipalType,
    /// The role assignment's name (direct) or the AdminAssign request's name (pim): a GUID
    /// derived from the grant key and the rest of this grant.
    pub name: String,
}

impl AzureGrant {
    /// Where it is, for people.
    pub fn reference(&self) -> String {
        let what = match self.mode {
            AzureMode::Direct => "role assignment",
            AzureMode::Pim => "PIM assignment request",
        };
        format!(
            "{what} {} of {} at {} for {}",
            self.name,
            role_definition_name(&self.role_definition_id),
            self.scope,
            self.principal_id
        )
    }

    /// The path of the role assignment (direct mode).
    pub fn assignment_path(&self) -> String {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}",
            trim_scope(&self.scope),
            self.name
        )
    }

    /// The path of a schedule request named `name` at this grant's scope (pim mode).
    pub fn schedule_request_path(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/{name}",
            trim_scope(&self.scope)
        )
    }

    /// The path listing the role assignment schedules at this grant's scope (pim mode).
    pub fn schedules_path(&self) -> String {
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignmentSchedules",
            trim_scope(&self.scope)
        )
    }

    /// The `$filter` that lists this grant's principal's schedules.
    pub fn schedules_filter(&self) -> String {
        format!("principalId eq '{}'", self.principal_id)
    }

    /// Whether a role assignment read back is this grant.
    pub fn is(&self, assignment: &RoleAssignment) -> bool {
        assignment
            .properties
            .principal_id
            .eq_ignore_ascii_case(&self.principal_id)
            && same_role_definition(
                &assignment.properties.role_definition_id,
                &self.role_definition_id,
            )
    }

    /// Whether a schedule is for this grant's principal, role and scope (whoever made it).
    pub fn same_access(&self, schedule: &Schedule) -> bool {
        let properties = &schedule.properties;
        properties
            .principal_id
            .eq_ignore_ascii_case(&self.principal_id)
            && same_role_definition(&properties.role_definition_id, &self.role_definition_id)
            && properties
                .scope
                .as_deref()
                .is_none_or(|scope| same_scope(scope, &self.scope))
            && properties.assignment_type.as_deref() != Some("Activated")
    }

    /// Whether a schedule was made by this grant's AdminAssign request.
    pub fn made(&self, schedule: &Schedule) -> bool {
        self.same_access(schedule)
            && schedule
                .properties
                .role_assignment_schedule_request_id
                .as_deref()
                .and_then(|id| id.rsplit('/').next())
                .is_some_and(|name| name.eq_ignore_ascii_case(&self.name))
    }

    /// The name of the AdminRemove request that ends `schedule`: derived, so a retried
    /// removal reuses it, and distinct for every schedule.
    pub fn removal_name(&self, schedule: &str) -> String {
        derive_name(&["remove", &self.name, &schedule.to_ascii_lowercase()])
    }
}

/// The name of a grant's role assignment or AdminAssign request: a version-5 UUID of the
/// grant key and what is granted, so a retry after a crash reuses it, and a role changed
/// while the grant is active gets a new one (Azure never lets an assignment change).
pub fn grant_name(
    key: &str,
    mode: AzureMode,
    scope: &str,
    role_definition_id: &str,
    principal_id: &str,
) -> String {
    let mode = match mode {
        AzureMode::Direct => "direct",
        AzureMode::Pim => "pim",
    };
    derive_name(&[
        "grant",
        key,
        mode,
        &trim_scope(scope).to_ascii_lowercase(),
        &role_definition_name(role_definition_id).to_ascii_lowercase(),
        &principal_id.to_ascii_lowercase(),
    ])
}

fn derive_name(parts: &[&str]) -> String {
    Uuid::new_v5(&NAME_NAMESPACE, parts.join("\n").as_bytes())
        .hyphenated()
        .to_string()
}

/// An object ID in the canonical lower-case hyphenated form, or `None` when the text is not
/// one.
pub fn object_id(text: &str) -> Option<String> {
    let parsed = Uuid::try_parse(text).ok()?;
    // Only the hyphenated form: Azure object IDs are written that way, and the other forms
    // uuid accepts (braces, URNs) are not IDs anyone means.
    (text.len() == 36).then(|| parsed.hyphenated().to_string())
}

/// The GUID at the end of a role definition ID; Azure returns these IDs sometimes with and
/// sometimes without the subscription in front.
pub fn role_definition_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

/// Whether two role definition IDs name the same definition.
pub fn same_role_definition(one: &str, other: &str) -> bool {
    role_definition_name(one).eq_ignore_ascii_case(role_definition_name(other))
}

/// Whether two scopes are the same (ARM paths are case-insensitive).
pub fn same_scope(one: &str, other: &str) -> bool {
    trim_scope(one).eq_ignore_ascii_case(trim_scope(other))
}

fn trim_scope(scope: &str) -> &str {
    scope.trim_end_matches('/')
}

/// The time format ARM takes and gives, to the second, as `status.expiresAt` shows it.
pub fn timestamp(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The body of a direct role assignment PUT.
pub fn assignment_body(grant: &AzureGrant, description: &str) -> Value {
    json!({
        "properties": {
            "roleDefinitionId": grant.role_definition_id,
            "principalId": grant.principal_id,
            "principalType": grant.principal_type,
            "description": description,
        }
    })
}

/// A ticket to name in a PIM request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The ticket's number, e.g. `INC-1234`.
    pub number: String,
    /// The system it lives in, as the policy names it.
    pub system: Option<String>,
}

/// The first ticket reference in a reason: a word like `INC-1234` or `CHG0012345`.
pub fn ticket_in(reason: &str, system: Option<&str>) -> Option<Ticket> {
    reason
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')' | '[' | ']'))
        .map(|word| word.trim_end_matches('.'))
        .find(|word| is_ticket(word))
        .map(|number| Ticket {
            number: number.to_owned(),
            system: system.map(str::to_owned),
        })
}

/// `ABC-123` (Jira, most trackers) or `INC0012345` (ServiceNow): upper-case letters, an
/// optional dash, then digits.
fn is_ticket(word: &str) -> bool {
    let letters = word.chars().take_while(|c| c.is_ascii_uppercase()).count();
    let rest = &word[letters..];
    let digits = rest.strip_prefix('-').unwrap_or(rest);
    (2..=10).contains(&letters)
        && !digits.is_empty()
        && digits.len() <= 12
        && digits.chars().all(|c| c.is_ascii_digit())
}

/// The body of the PIM AdminAssign request that assigns `grant` from `start` until
/// `expires_at`, which Azure enforces.
pub fn assign_request_body(
    grant: &AzureGrant,
    start: Timestamp,
    expires_at: Timestamp,
    justification: &str,
    ticket: Option<&Ticket>,
) -> Value {
    let mut properties = json!({
        "principalId": grant.principal_id,
        "roleDefinitionId": grant.role_definition_id,
        "requestType": "AdminAssign",
        "scheduleInfo": {
            "startDateTime": timestamp(start),
            "expiration": {
                "type": "AfterDateTime",
                "endDateTime": timestamp(expires_at),
            },
        },
        "justification": justification,
    });
    if let (Some(ticket), Some(object)) = (ticket, properties.as_object_mut()) {
        object.insert(
            "ticketInfo".into(),
            json!({"ticketNumber": ticket.number, "ticketSystem": ticket.system}),
        );
    }
    json!({ "properties": properties })
}

/// The body of the PIM AdminRemove request that ends `grant`'s assignment.
pub fn remove_request_body(grant: &AzureGrant, justification: &str) -> Value {
    json!({
        "properties": {
            "principalId": grant.principal_id,
            "roleDefinitionId": grant.role_definition_id,
            "requestType": "AdminRemove",
            "justification": justification,
        }
    })
}

/// ARM's error shape: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ArmError {
    /// The error.
    #[serde(default)]
    pub error: ArmErrorDetail,
}

/// The inside of [`ArmError`].
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ArmErrorDetail {
    /// A code like `RoleAssignmentExists`.
    #[serde(default)]
    pub code: String,
    /// Azure's words.
    #[serde(default)]
    pub message: String,
}

impl ArmError {
    /// Reads an error body; a body that is not ARM's shape is kept as the message (trimmed),
    /// with the status as the code.
    pub fn parse(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Self>(body) {
            Ok(parsed) if !parsed.error.code.is_empty() => parsed,
            _ => {
                let text = String::from_utf8_lossy(body);
                Self {
                    error: ArmErrorDetail {
                        code: format!("HTTP{status}"),
                        message: text.chars().take(300).collect(),
                    },
                }
            }
        }
    }

    /// `Code: message`, as the request's status shows it.
    pub fn describe(&self) -> String {
        if self.error.message.is_empty() {
            self.error.code.clone()
        } else {
            format!("{}: {}", self.error.code, self.error.message)
        }
    }
}

/// A role assignment as ARM returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct RoleAssignment {
    /// Its name (a GUID).
    #[serde(default)]
    pub name: String,
    /// What it assigns.
    pub properties: RoleAssignmentProperties,
}

/// The parts of a role assignment the provider compares.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentProperties {
    /// The role definition.
    pub role_definition_id: String,
    /// Who holds it.
    pub principal_id: String,
}

/// A PIM schedule request as ARM returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct ScheduleRequest {
    /// What became of it.
    pub properties: ScheduleRequestProperties,
}

/// The parts of a schedule request the provider reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRequestProperties {
    /// `Provisioned`, `Denied`, `PendingApproval`, ...
    #[serde(default)]
    pub status: String,
}

/// What a schedule request's status means for the grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The assignment exists (or did).
    Done,
    /// It never will.
    Failed,
    /// Azure is still working on it.
    Pending,
}

impl ScheduleRequestProperties {
    /// What the status means.
    pub fn outcome(&self) -> RequestOutcome {
        let is = |list: &[&str]| list.iter().any(|s| s.eq_ignore_ascii_case(&self.status));
        if is(DONE_STATUSES) {
            RequestOutcome::Done
        } else if is(FAILED_STATUSES) {
            RequestOutcome::Failed
        } else {
            RequestOutcome::Pending
        }
    }
}

/// A PIM role assignment schedule as ARM returns it.
#[derive(Clone, Debug, Deserialize)]
pub struct Schedule {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// What it assigns, and until when.
    pub properties: ScheduleProperties,
}

/// The parts of a schedule the provider compares.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleProperties {
    /// The role definition.
    pub role_definition_id: String,
    /// Who holds it.
    pub principal_id: String,
    /// Where.
    #[serde(default)]
    pub scope: Option<String>,
    /// `Assigned` or `Activated`.
    #[serde(default)]
    pub assignment_type: Option<String>,
    /// The request that made it.
    #[serde(default)]
    pub role_assignment_schedule_request_id: Option<String>,
    /// When Azure ends it.
    #[serde(default)]
    pub end_date_time: Option<String>,
}

impl ScheduleProperties {
    /// When Azure ends it, if it says and the time parses.
    pub fn ends_at(&self) -> Option<Timestamp> {
        self.end_date_time.as_deref()?.parse().ok()
    }
}

/// One page of a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// Where the next page is.
    #[serde(default)]
    pub next_link: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: &str = "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/resourceGroups/testrg";
    const ROLE: &str = "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7";
    const ALICE: &str = "ce2ce14e-85d7-4629-bdbc-454d0519d987";

    fn grant(mode: AzureMode) -> AzureGrant {
        AzureGrant {
            mode,
            scope: SCOPE.into(),
            role_definition_id: ROLE.into(),
            principal_id: ALICE.into(),
            principal_type: AzurePrincipalType::User,
            name: grant_name("jit-7f3a", mode, SCOPE, ROLE, ALICE),
        }
    }

    #[test]
    fn grant_names_are_stable_guids_that_change_with_what_is_granted() {
        let name = grant_name("jit-7f3a", AzureMode::Direct, SCOPE, ROLE, ALICE);
        let parsed = Uuid::parse_str(&name).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        assert_eq!(name, name.to_ascii_lowercase());
        // The same grant, written differently, is the same name: a crash retry finds it.
        assert_eq!(
            name,
            grant_name(
                "jit-7f3a",
                AzureMode::Direct,
                &format!("{}/", SCOPE.to_uppercase()),
                &ROLE.replace("/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2", ""),
                &ALICE.to_uppercase(),
            )
        );
        // Anything else granted, or another request, is another name.
        let others = [
            grant_name("jit-7f3b", AzureMode::Direct, SCOPE, ROLE, ALICE),
            grant_name("jit-7f3a", AzureMode::Pim, SCOPE, ROLE, ALICE),
            grant_name(
                "jit-7f3a",
                AzureMode::Direct,
                "/subscriptions/a925f2f7-5c63-4b7b-8799-25a5f97bc3b2",
                ROLE,
                ALICE,
            ),
            grant_name(
                "jit-7f3a",
                AzureMode::Direct,
                SCOPE,
                &ROLE.replace("acdd72a7", "bcdd72a7"),
                ALICE,
            ),
            grant_name(
                "jit-7f3a",
                AzureMode::Direct,
                SCOPE,
                ROLE,
                &ALICE.replace("ce2c", "de2c"),
            ),
        ];
        for other in &others {
            assert_ne!(&name, other);
        }
        // Pinned: a derivation changed by a refactor would strand every live assignment.
        // (The same value as Python's uuid.uuid5 of the joined parts.)
        assert_eq!(name, "35820e6e-8e12-5733-a034-fbacb08e34e3");
    }

    #[test]
    fn removal_names_differ_per_schedule_and_from_the_grant() {
        let pim = grant(AzureMode::Pim);
        let first = pim.removal_name("c9e264ff-3133-4776-a81a-ebc7c33c8ec6");
        assert_eq!(
            first,
            pim.removal_name("C9E264FF-3133-4776-A81A-EBC7C33C8EC6")
        );
        assert_ne!(
            first,
            pim.removal_name("d9e264ff-3133-4776-a81a-ebc7c33c8ec6")
        );
        assert_ne!(first, pim.name);
        assert!(Uuid::parse_str(&first).is_ok());
    }

    #[test]
    fn object_ids_must_be_hyphenated_guids() {
        assert_eq!(object_id(&ALICE.to_uppercase()).as_deref(), Some(ALICE));
        for bad in [
            "alice",
            "ce2ce14e85d74629bdbc454d0519d987",
            "{ce2ce14e-85d7-4629-bdbc-454d0519d987}",
            "urn:uuid:ce2ce14e-85d7-4629-bdbc-454d0519d987",
            "",
        ] {
            assert_eq!(object_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_assignment_body_follows_the_reference() {
        let direct = grant(AzureMode::Direct);
        assert_eq!(
            assignment_body(&direct, "team/fix approved by bob: INC-1"),
            json!({"properties": {
                "roleDefinitionId": ROLE,
                "principalId": ALICE,
                "principalType": "User",
                "description": "team/fix approved by bob: INC-1",
            }})
        );
        assert_eq!(
            direct.assignment_path(),
            format!(
                "{SCOPE}/providers/Microsoft.Authorization/roleAssignments/{}",
                direct.name
            )
        );
    }

    #[test]
    fn the_pim_bodies_follow_the_reference() {
        let pim = grant(AzureMode::Pim);
        let start: Timestamp = "2026-11-21T10:00:00.25Z".parse().unwrap();
        let end: Timestamp = "2026-11-21T11:00:00Z".parse().unwrap();
        let ticket = Ticket {
            number: "INC-1234".into(),
            system: Some("ServiceNow".into()),
        };
        assert_eq!(
            assign_request_body(&pim, start, end, "disk full INC-1234", Some(&ticket)),
            json!({"properties": {
                "principalId": ALICE,
                "roleDefinitionId": ROLE,
                "requestType": "AdminAssign",
                "scheduleInfo": {
                    "startDateTime": "2026-11-21T10:00:00Z",
                    "expiration": {"type": "AfterDateTime", "endDateTime": "2026-11-21T11:00:00Z"},
                },
                "justification": "disk full INC-1234",
                "ticketInfo": {"ticketNumber": "INC-1234", "ticketSystem": "ServiceNow"},
            }})
        );
        let without = assign_request_body(&pim, start, end, "why", None);
        assert!(without["properties"].get("ticketInfo").is_none());
        assert_eq!(
            remove_request_body(&pim, "expired"),
            json!({"properties": {
                "principalId": ALICE,
                "roleDefinitionId": ROLE,
                "requestType": "AdminRemove",
                "justification": "expired",
            }})
        );
        assert_eq!(
            pim.schedule_request_path("x"),
            format!("{SCOPE}/providers/Microsoft.Authorization/roleAssignmentScheduleRequests/x")
        );
    }

    #[test]
    fn tickets_are_found_in_reasons() {
        let found = |reason: &str| ticket_in(reason, None).map(|ticket| ticket.number);
        assert_eq!(found("INC-1234 disk full").as_deref(), Some("INC-1234"));
        assert_eq!(found("disk full (see OPS-77).").as_deref(), Some("OPS-77"));
        assert_eq!(
            found("change CHG0012345: rotate").as_deref(),
            Some("CHG0012345")
        );
        assert_eq!(found("disk full"), None);
        assert_eq!(found("A-1 X-2 is too short"), None);
        assert_eq!(found("inc-12 lower case"), None);
        assert_eq!(
            ticket_in("INC-9", Some("ServiceNow")),
            Some(Ticket {
                number: "INC-9".into(),
                system: Some("ServiceNow".into())
            })
        );
    }

    #[test]
    fn schedules_are_ours_only_when_our_request_made_them() {
        let pim = grant(AzureMode::Pim);
        let schedule = |request: &str, role: &str, kind: &str| Schedule {
            name: "c9e264ff-3133-4776-a81a-ebc7c33c8ec6".into(),
            properties: ScheduleProperties {
                role_definition_id: role.into(),
                principal_id: ALICE.to_uppercase(),
                scope: Some(SCOPE.to_lowercase()),
                assignment_type: Some(kind.into()),
                role_assignment_schedule_request_id: Some(format!(
                    "{SCOPE}/providers/Microsoft.Authorization/RoleAssignmentScheduleRequests/{request}"
                )),
                end_date_time: Some("2026-11-21T11:00:00Z".into()),
            },
        };
        let short_role = "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7";
        let ours = schedule(&pim.name.to_uppercase(), short_role, "Assigned");
        assert!(pim.made(&ours));
        let foreign = schedule("fea7a502-9a96-4806-a26f-eee560e52045", ROLE, "Assigned");
        assert!(pim.same_access(&foreign) && !pim.made(&foreign));
        let other_role = schedule(&pim.name, &ROLE.replace("acdd", "bcdd"), "Assigned");
        assert!(!pim.same_access(&other_role));
        let activation = schedule("fea7a502-9a96-4806-a26f-eee560e52045", ROLE, "Activated");
        assert!(!pim.same_access(&activation));
        assert_eq!(
            ours.properties.ends_at(),
            Some("2026-11-21T11:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn request_statuses_are_sorted() {
        let status = |text: &str| {
            ScheduleRequestProperties {
                status: text.into(),
            }
            .outcome()
        };
        assert_eq!(status("Provisioned"), RequestOutcome::Done);
        assert_eq!(status("Granted"), RequestOutcome::Done);
        assert_eq!(status("Denied"), RequestOutcome::Failed);
        assert_eq!(status("Canceled"), RequestOutcome::Failed);
        assert_eq!(status("PendingProvisioning"), RequestOutcome::Pending);
        assert_eq!(status("PendingApproval"), RequestOutcome::Pending);
    }

    #[test]
    fn arm_errors_are_read_in_their_shape_or_kept_as_text() {
        let body = br#"{"error":{"code":"RoleAssignmentExists","message":"The role assignment already exists."}}"#;
        let error = ArmError::parse(409, body);
        assert_eq!(error.error.code, "RoleAssignmentExists");
        assert_eq!(
            error.describe(),
            "RoleAssignmentExists: The role assignment already exists."
        );
        let proxy = ArmError::parse(502, b"<html>bad gateway</html>");
        assert_eq!(proxy.describe(), "HTTP502: <html>bad gateway</html>");
    }

    #[test]
    fn role_definitions_compare_by_their_guid() {
        assert!(same_role_definition(
            ROLE,
            "/providers/Microsoft.Authorization/roleDefinitions/ACDD72A7-3385-48EF-BD42-F606FBA81AE7"
        ));
        assert!(!same_role_definition(ROLE, &ROLE.replace("acdd", "bcdd")));
        assert!(same_scope(SCOPE, &format!("{}/", SCOPE.to_uppercase())));
    }
}
