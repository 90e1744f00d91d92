//! IAM policy documents, edited without touching what is not ours: the expiry merged into a
//! grant's statements, our statement added to or removed from a role's trust policy, and the
//! deny that ends a subject's live sessions. Pure: no SDK, no I/O.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

/// The condition key AWS compares with the time of each request.
const CURRENT_TIME: &str = "aws:CurrentTime";
/// The condition key holding when a session's credentials were issued.
const TOKEN_ISSUE_TIME: &str = "aws:TokenIssueTime";

/// Why a document cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not shaped like an IAM policy.
    #[error("the policy document is not valid: {0}")]
    Invalid(String),
}

/// The time as IAM conditions compare it (UTC, whole seconds).
pub fn iam_time(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads a document as IAM returns it: URL-encoded JSON (or plain JSON, which some endpoints
/// return).
pub fn decode(text: &str) -> Result<Value, Error> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    let decoded = urlencoding::decode(text)
        .map_err(|error| Error::Invalid(format!("not URL-encoded UTF-8: {error}")))?;
    serde_json::from_str(&decoded).map_err(|error| Error::Invalid(error.to_string()))
}

/// The statements of a document as a list, whether `Statement` is a list or a single object.
fn statements(document: &Value) -> Result<Vec<Map<String, Value>>, Error> {
    let object = document
        .as_object()
        .ok_or_else(|| Error::Invalid("a policy document must be a JSON object".into()))?;
    let listed = match object.get("Statement") {
        Some(Value::Array(items)) => items.clone(),
        Some(single @ Value::Object(_)) => vec![single.clone()],
        Some(_) => {
            return Err(Error::Invalid(
                "Statement must be an object or a list of objects".into(),
            ));
        }
        None => return Err(Error::Invalid("the document has no Statement".into())),
    };
    listed
        .into_iter()
        .map(|statement| match statement {
            Value::Object(map) => Ok(map),
            _ => Err(Error::Invalid("each Statement must be an object".into())),
        })
        .collect()
}

/// The document with these statements, every other top-level field kept.
fn with_statements(document: &Value, statements: Vec<Map<String, Value>>) -> Value {
    let mut object = document.as_object().cloned().unwrap_or_default();
    object
        .entry("Version")
        .or_insert_with(|| Value::String("2012-10-17".into()));
    object.insert(
        "Statement".into(),
        Value::Array(statements.into_iter().map(Value::Object).collect()),
    );
    Value::Object(object)
}

/// Adds `operator: {key: value}` to a statement's conditions, keeping every other condition.
/// An existing `DateLessThan` on the same key keeps the earlier of the two times, so a grant
/// never outlives what its author wrote nor its expiry.
fn add_condition(
    statement: &mut Map<String, Value>,
    operator: &str,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    let conditions = statement
        .entry("Condition")
        .or_insert_with(|| Value::Object(Map::new()));
    let conditions = conditions
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("Condition must be an object".into()))?;
    let block = conditions
        .entry(operator)
        .or_insert_with(|| Value::Object(Map::new()));
    let block = block
        .as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("Condition.{operator} must be an object")))?;
    let earliest = match block.get(key) {
        Some(Value::String(existing)) if operator == "DateLessThan" => {
            match (existing.parse::<Timestamp>(), value.parse::<Timestamp>()) {
                (Ok(existing_time), Ok(ours)) if existing_time < ours => existing.clone(),
                _ => value.to_owned(),
            }
        }
        _ => value.to_owned(),
    };
    block.insert(key.to_owned(), Value::String(earliest));
    Ok(())
}

/// A grant's document with every statement limited to before `expires_at`, so that AWS itself
/// refuses the access afterwards.
pub fn with_expiry(document: &Value, expires_at: Timestamp) -> Result<Value, Error> {
    let time = iam_time(expires_at);
    let mut limited = statements(document)?;
    if limited.is_empty() {
        return Err(Error::Invalid("the document has no statements".into()));
    }
    for statement in &mut limited {
        add_condition(statement, "DateLessThan", CURRENT_TIME, &time)?;
    }
    Ok(with_statements(document, limited))
}

/// A trust policy with our statement (named `sid`) letting `principal` assume the role until
/// `expires_at`, in sessions that carry `source_identity`. Other statements are kept as they
/// are; an older statement of ours is replaced.
pub fn with_trust_statement(
    trust: &Value,
    sid: &str,
    principal: &str,
    source_identity: &str,
    expires_at: Timestamp,
) -> Result<Value, Error> {
    let mut kept = without_sid(statements(trust)?, sid);
    kept.push(trust_statement(sid, principal, source_identity, expires_at));
    Ok(with_statements(trust, kept))
}

/// Our trust statement.
pub fn trust_statement(
    sid: &str,
    principal: &str,
    source_identity: &str,
    expires_at: Timestamp,
) -> Map<String, Value> {
    let statement = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"],
        "Condition": {
            "DateLessThan": {CURRENT_TIME: iam_time(expires_at)},
            "StringEquals": {"sts:SourceIdentity": source_identity},
        },
    });
    match statement {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The statement named `sid`, if the document has one.
pub fn statement_with_sid(
    document: &Value,
    sid: &str,
) -> Result<Option<Map<String, Value>>, Error> {
    Ok(statements(document)?
        .into_iter()
        .find(|statement| statement.get("Sid").and_then(Value::as_str) == Some(sid)))
}

fn without_sid(statements: Vec<Map<String, Value>>, sid: &str) -> Vec<Map<String, Value>> {
    statements
        .into_iter()
        .filter(|statement| statement.get("Sid").and_then(Value::as_str) != Some(sid))
        .collect()
}

/// The trust policy without our statement; `None` when it has none (nothing to write). A
/// policy left with no statement gets one that trusts nobody, since IAM refuses an empty one.
pub fn without_trust_statement(trust: &Value, sid: &str) -> Result<Option<Value>, Error> {
    let all = statements(trust)?;
    let before = all.len();
    let mut kept = without_sid(all, sid);
    if kept.len() == before {
        return Ok(None);
    }
    if kept.is_empty()
        && let Value::Object(nobody) = json!({
            "Sid": "JitTrustsNobody",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "sts:AssumeRole",
        })
    {
        kept.push(nobody);
    }
    Ok(Some(with_statements(trust, kept)))
}

/// The inline policy that denies everything to sessions of the role carrying `source_identity`
/// that were issued before `revoked_at`: revoking the trust stops new sessions, this ends the
/// ones already handed out.
pub fn session_revocation(source_identity: &str, revoked_at: Timestamp) -> Value {
    // IAM compares whole seconds: round up, so a session issued in the same second as the
    // revoke is ended too (none can be issued after it: the trust is gone by then).
    let cutoff = revoked_at
        .checked_add(jiff::SignedDuration::from_secs(1))
        .unwrap_or(revoked_at);
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "JitRevokeOlderSessions",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceIdentity": source_identity},
                "DateLessThan": {TOKEN_ISSUE_TIME: iam_time(cutoff)},
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn every_statement_gets_the_expiry_and_keeps_its_own_conditions() {
        let document = json!({
            "Version": "2012-10-17",
            "Id": "keep-me",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
                {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                 "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                               "DateLessThan": {"aws:EpochTime": "1"}}},
            ],
        });
        let limited = with_expiry(&document, at("2026-11-21T10:30:00.250Z")).unwrap();
        assert_eq!(limited["Id"], "keep-me");
        for statement in limited["Statement"].as_array().unwrap() {
            assert_eq!(
                statement["Condition"]["DateLessThan"]["aws:CurrentTime"],
                "2026-11-21T10:30:00Z"
            );
        }
        let second = &limited["Statement"][1]["Condition"];
        assert_eq!(second["IpAddress"]["aws:SourceIp"], "10.0.0.0/8");
        assert_eq!(second["DateLessThan"]["aws:EpochTime"], "1");
    }

    #[test]
    fn a_single_statement_object_is_accepted_and_version_defaulted() {
        let document = json!({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}});
        let limited = with_expiry(&document, at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(limited["Version"], "2012-10-17");
        assert_eq!(limited["Statement"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_earlier_expiry_written_by_the_author_is_kept() {
        let document = json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
            "Condition": {"DateLessThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}}}]});
        let limited = with_expiry(&document, at("2027-01-01T00:00:00Z")).unwrap();
        assert_eq!(
            limited["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2026-01-01T00:00:00Z"
        );
        // A later one is cut down to the grant's expiry.
        let limited = with_expiry(&document, at("2025-06-01T00:00:00Z")).unwrap();
        assert_eq!(
            limited["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2025-06-01T00:00:00Z"
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        for document in [
            json!([]),
            json!({"Version": "2012-10-17"}),
            json!({"Statement": "Allow everything"}),
            json!({"Statement": []}),
            json!({"Statement": ["x"]}),
            json!({"Statement": [{"Effect": "Allow", "Condition": "always"}]}),
            json!({"Statement": [{"Effect": "Allow", "Condition": {"DateLessThan": "x"}}]}),
        ] {
            assert!(
                with_expiry(&document, at("2026-01-01T00:00:00Z")).is_err(),
                "{document}"
            );
        }
    }

    #[test]
    fn url_encoded_documents_are_decoded() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(
            decode(encoded).unwrap(),
            json!({"Version": "2012-10-17", "Statement": []})
        );
        assert_eq!(decode(r#"{"a": "50%"}"#).unwrap(), json!({"a": "50%"}));
        assert!(decode("%7Bnot json").is_err());
    }

    #[test]
    fn trust_edits_touch_only_our_statement() {
        let theirs = json!({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole"});
        let trust = json!({"Version": "2012-10-17", "Statement": theirs.clone()});
        let expires = at("2026-11-21T12:00:00Z");
        let granted = with_trust_statement(
            &trust,
            "jitabc",
            "arn:aws:iam::1:user/alice",
            "alice",
            expires,
        )
        .unwrap();
        let listed = granted["Statement"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0], theirs);
        assert_eq!(listed[1]["Sid"], "jitabc");
        assert_eq!(listed[1]["Principal"]["AWS"], "arn:aws:iam::1:user/alice");
        assert_eq!(
            listed[1]["Condition"]["StringEquals"]["sts:SourceIdentity"],
            "alice"
        );
        // Granting again replaces ours instead of adding a second one.
        let again = with_trust_statement(
            &granted,
            "jitabc",
            "arn:aws:iam::1:user/alice",
            "alice",
            at("2026-11-21T13:00:00Z"),
        )
        .unwrap();
        assert_eq!(again["Statement"].as_array().unwrap().len(), 2);
        assert_eq!(
            again["Statement"][1]["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2026-11-21T13:00:00Z"
        );
        let revoked = without_trust_statement(&again, "jitabc").unwrap().unwrap();
        assert_eq!(revoked["Statement"], json!([theirs]));
        assert_eq!(without_trust_statement(&revoked, "jitabc").unwrap(), None);
    }

    #[test]
    fn removing_the_only_statement_leaves_a_policy_that_trusts_nobody() {
        let ours = with_trust_statement(
            &json!({"Statement": []}),
            "jitx",
            "arn:aws:iam::1:user/a",
            "a",
            at("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        let revoked = without_trust_statement(&ours, "jitx").unwrap().unwrap();
        assert_eq!(revoked["Statement"][0]["Effect"], "Deny");
        assert!(statement_with_sid(&revoked, "jitx").unwrap().is_none());
    }

    #[test]
    fn session_revocation_names_the_identity_and_time() {
        let deny = session_revocation("alice", at("2026-11-21T12:00:00.9Z"));
        let condition = &deny["Statement"][0]["Condition"];
        assert_eq!(condition["StringEquals"]["aws:SourceIdentity"], "alice");
        assert_eq!(
            condition["DateLessThan"]["aws:TokenIssueTime"],
            "2026-11-21T12:00:01Z"
        );
        assert_eq!(deny["Statement"][0]["Effect"], "Deny");
    }
}
