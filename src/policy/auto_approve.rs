//! The policy's `autoApprove.expression`: CEL over `request`, `subject` and `now`. Every
//! failure (syntax, evaluation, a result that is not a bool, even a panic inside the CEL
//! library) is an error the caller shows as a condition; a failure never approves.

use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    time::Duration,
};

use cel::{
    Context, IdedExpr, Program, Value,
    common::ast::{EntryExpr, Expr, LiteralValue},
};
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
    /// It could cost more than the operator lets an expression cost.
    #[error(
        "autoApprove expression could cost up to {cost} evaluation steps, more than the limit of {limit}; avoid nesting comprehensions (all, exists, map, filter) over lists"
    )]
    TooExpensive {
        /// Its worst-case cost.
        cost: u64,
        /// The limit.
        limit: u64,
    },
    /// It is longer than any sensible rule.
    #[error("autoApprove expression is {length} characters long; the limit is {limit}")]
    TooLong {
        /// Its length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The CEL library itself broke on this expression.
    #[error("autoApprove expression crashed the evaluator")]
    Crashed,
}

/// The most an expression may cost, in the worst case `cost` computes: about a million
/// evaluation steps, a few milliseconds. The API server's own per-expression limit for
/// admission policies is of the same order.
pub const COST_LIMIT: u64 = 1_000_000;

/// The longest expression accepted.
pub const MAX_EXPRESSION_LENGTH: usize = 4096;

/// The size assumed for a list or string whose size is known only when the expression runs
/// (`subject.groups`, `request.reason`, a variable).
const UNKNOWN_SIZE: u64 = 1000;

/// Checks, without running it, that the expression compiles and that its worst-case cost is
/// within `COST_LIMIT`; returns that cost. Called when a policy is written and again before
/// every evaluation, so that nothing an admin writes can hold the operator's threads.
pub fn check(expression: &str) -> Result<u64, Error> {
    if expression.len() > MAX_EXPRESSION_LENGTH {
        return Err(Error::TooLong {
            length: expression.len(),
            limit: MAX_EXPRESSION_LENGTH,
        });
    }
    let program = catch_unwind(AssertUnwindSafe(|| Program::compile(expression)))
        .map_err(|_| Error::Crashed)?
        .map_err(|error| Error::Compile(error.to_string()))?;
    let cost = estimate(program.expression()).cost;
    if cost > COST_LIMIT {
        return Err(Error::TooExpensive {
            cost,
            limit: COST_LIMIT,
        });
    }
    Ok(cost)
}

/// The worst-case cost of evaluating an expression and the size of what it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Estimate {
    /// Evaluation steps.
    cost: u64,
    /// Elements of a list or map, characters of a string; `UNKNOWN_SIZE` when not known.
    size: u64,
}

/// Counts one step per node, and for a comprehension (`all`, `exists`, `map`, `filter`...)
/// the cost of its body once per element of what it ranges over: nested comprehensions
/// multiply.
fn estimate(expression: &IdedExpr) -> Estimate {
    let unknown = |cost: u64| Estimate {
        cost,
        size: UNKNOWN_SIZE,
    };
    match &expression.expr {
        Expr::Unspecified | Expr::Ident(_) => unknown(1),
        Expr::Literal(literal) => Estimate {
            cost: 1,
            size: match literal {
                LiteralValue::String(text) => text.inner().len() as u64,
                LiteralValue::Bytes(bytes) => bytes.inner().len() as u64,
                _ => 1,
            },
        },
        Expr::Select(select) => unknown(estimate(&select.operand).cost.saturating_add(1)),
        Expr::List(list) => Estimate {
            cost: sum(list.elements.iter().map(|element| estimate(element).cost)),
            size: list.elements.len() as u64,
        },
        Expr::Map(map) => Estimate {
            cost: sum(map.entries.iter().map(|entry| entry_cost(&entry.expr))),
            size: map.entries.len() as u64,
        },
        Expr::Struct(object) => unknown(sum(object
            .entries
            .iter()
            .map(|entry| entry_cost(&entry.expr)))),
        Expr::Call(call) => {
            let parts: Vec<Estimate> = call
                .target
                .iter()
                .map(|target| estimate(target))
                .chain(call.args.iter().map(estimate))
                .collect();
            let cost = sum(parts.iter().map(|part| part.cost));
            // Concatenation gives both sizes together; string functions walk their inputs.
            let size = sum(parts.iter().map(|part| part.size));
            match call.func_name.as_str() {
                "_+_" => Estimate { cost, size },
                // Native string and list walks: a tenth of a step per element, as the API
                // server's own CEL cost estimator counts string traversal.
                "matches" | "contains" | "startsWith" | "endsWith" | "@in" => {
                    unknown(cost.saturating_add(size / 10))
                }
                _ => unknown(cost),
            }
        }
        Expr::Comprehension(comprehension) => {
            let range = estimate(&comprehension.iter_range);
            let body = estimate(&comprehension.loop_cond)
                .cost
                .saturating_add(estimate(&comprehension.loop_step).cost);
            Estimate {
                cost: range
                    .cost
                    .saturating_add(estimate(&comprehension.accu_init).cost)
                    .saturating_add(range.size.saturating_mul(body))
                    .saturating_add(estimate(&comprehension.result).cost),
                size: range.size,
            }
        }
    }
}

fn entry_cost(entry: &EntryExpr) -> u64 {
    match entry {
        EntryExpr::StructField(field) => estimate(&field.value).cost,
        EntryExpr::MapEntry(entry) => estimate(&entry.key)
            .cost
            .saturating_add(estimate(&entry.value).cost),
    }
}

/// One step for the node itself plus its parts.
fn sum(costs: impl Iterator<Item = u64>) -> u64 {
    costs.fold(1, u64::saturating_add)
}

/// Evaluates the expression; `Ok(true)` means no human approval is needed. The expression
/// is checked first (`check`): one over the cost limit is an error, never run.
pub fn evaluate(expression: &str, input: &Input<'_>) -> Result<bool, Error> {
    check(expression)?;
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
    fn nested_comprehensions_are_refused_with_their_cost_before_they_run() {
        // Each level multiplies: this one would run for minutes.
        let nested = "[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, \
            [1,2,3,4,5,6,7,8,9,10].all(c, subject.groups.all(d, subject.groups.all(e, true)))))";
        let Err(Error::TooExpensive { cost, limit }) = check(nested) else {
            panic!("{:?}", check(nested));
        };
        assert!(cost > limit);
        let groups = vec![];
        assert!(matches!(
            evaluate(nested, &input(10, &groups)),
            Err(Error::TooExpensive { .. })
        ));
        // The documented example and a single pass over the groups are cheap.
        let example = "request.duration <= duration('30m') && 'oncall' in subject.groups";
        assert!(check(example).unwrap() < 10_000);
        assert!(check("subject.groups.exists(g, g.startsWith('team-'))").unwrap() < COST_LIMIT / 2);
        assert!(matches!(
            check(&"true && ".repeat(1000)),
            Err(Error::TooLong { .. })
        ));
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
