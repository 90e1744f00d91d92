//! The policy's `autoApprove.expression`: CEL over `request`, `subject` and `now`. Every
//! failure (syntax, evaluation, a result that is not a bool, even a panic inside the CEL
//! library) is an error the caller shows as a condition; a failure never approves.

use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    time::Duration,
};

use cel::{Context, Program, Value};
use jiff::Timestamp;

/// What the expression can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input<'a> {
    /// `request.policy`.
    pub policy: &'a str,
    /// `request.role`.
    pub role: &'a str,
    /// `request.duration`, a CEL duration.
    pub duration: Duration,
    /// `request.reason`, empty when absent.
    pub reason: &'a str,
    /// `subject.username`; empty for a group subject.
    pub subject_username: &'a str,
    /// `subject.groups`: known only when the subject is the authenticated requester.
    pub subject_groups: &'a [String],
    /// `now`, a CEL timestamp.
    pub now: Timestamp,
}

/// Why the expression gave no answer.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// It does not parse.
    #[error("autoApprove expression does not compile: {0}")]
    Compile(String),
    /// It failed while running, e.g. an unknown variable or a type mismatch.
    #[error("autoApprove expression failed: {0}")]
    Evaluate(String),
    /// It ran but did not give true or false.
    #[error("autoApprove expression must give true or false, not {0}")]
    NotABool(String),
    /// The CEL library itself broke on this expression.
    #[error("autoApprove expression crashed the evaluator")]
    Crashed,
}

/// Evaluates the expression; `Ok(true)` means no human approval is needed.
pub fn evaluate(expression: &str, input: &Input<'_>) -> Result<bool, Error> {
    // The CEL library is third-party code fed with admin-written text: keep a panic in it
    // from taking the reconcile loop down.
    catch_unwind(AssertUnwindSafe(|| evaluate_unguarded(expression, input)))
        .unwrap_or(Err(Error::Crashed))
}

fn evaluate_unguarded(expression: &str, input: &Input<'_>) -> Result<bool, Error> {
    let program =
        Program::compile(expression).map_err(|error| Error::Compile(error.to_string()))?;
    let mut context = Context::default();
    let duration = chrono::Duration::from_std(input.duration)
        .map_err(|error| Error::Evaluate(error.to_string()))?;
    let request = HashMap::from([
        ("policy", string(input.policy)),
        ("role", string(input.role)),
        ("duration", Value::Duration(duration)),
        ("reason", string(input.reason)),
    ]);
    let subject = HashMap::from([
        ("username", string(input.subject_username)),
        (
            "groups",
            Value::List(Arc::new(
                input
                    .subject_groups
                    .iter()
                    .map(|group| string(group))
                    .collect(),
            )),
        ),
    ]);
    context.add_variable_from_value("request", request);
    context.add_variable_from_value("subject", subject);
    context.add_variable_from_value("now", Value::Timestamp(to_chrono(input.now)?));
    match program.execute(&context) {
        Ok(Value::Bool(answer)) => Ok(answer),
        Ok(other) => Err(Error::NotABool(type_name(&other).to_owned())),
        Err(error) => Err(Error::Evaluate(error.to_string())),
    }
}

fn string(text: &str) -> Value {
    Value::String(Arc::new(text.to_owned()))
}

fn to_chrono(now: Timestamp) -> Result<chrono::DateTime<chrono::FixedOffset>, Error> {
    chrono::DateTime::from_timestamp(now.as_second(), now.subsec_nanosecond().unsigned_abs())
        .map(|utc| utc.fixed_offset())
        .ok_or_else(|| Error::Evaluate(format!("time {now} is out of range")))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Duration(_) => "a duration",
        Value::Timestamp(_) => "a timestamp",
        Value::Null => "null",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(duration_minutes: u64, groups: &[String]) -> Input<'_> {
        Input {
            policy: "prod",
            role: "view",
            duration: Duration::from_secs(duration_minutes * 60),
            reason: "INC-1 pager",
            subject_username: "alice",
            subject_groups: groups,
            now: "2026-01-01T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn the_documented_example_approves_short_oncall_requests() {
        let expression = "request.duration <= duration('30m') && 'oncall' in subject.groups";
        let oncall = vec!["oncall".to_string()];
        assert_eq!(evaluate(expression, &input(30, &oncall)), Ok(true));
        assert_eq!(evaluate(expression, &input(31, &oncall)), Ok(false));
        assert_eq!(evaluate(expression, &input(10, &[])), Ok(false));
    }

    #[test]
    fn sees_every_request_field_and_the_clock() {
        let groups = vec![];
        let input = input(15, &groups);
        for (expression, expected) in [
            ("request.policy == 'prod' && request.role == 'view'", true),
            ("request.reason.startsWith('INC-')", true),
            ("subject.username == 'alice'", true),
            ("now < timestamp('2026-01-01T11:00:00Z')", true),
            ("now > timestamp('2026-01-01T11:00:00Z')", false),
        ] {
            assert_eq!(evaluate(expression, &input), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn failures_are_errors_never_approvals() {
        let groups = vec![];
        let input = input(15, &groups);
        assert!(matches!(
            evaluate("request.duration <=", &input),
            Err(Error::Compile(_))
        ));
        assert!(matches!(
            evaluate("nobody.knows", &input),
            Err(Error::Evaluate(_))
        ));
        assert!(matches!(
            evaluate("request.duration + 1", &input),
            Err(Error::Evaluate(_))
        ));
        assert_eq!(
            evaluate("request.role", &input),
            Err(Error::NotABool("a string".into()))
        );
        assert_eq!(
            evaluate("1", &input),
            Err(Error::NotABool("a number".into()))
        );
    }
}
