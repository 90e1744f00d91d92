//! The duration string used across the API (`30s`, `15m`, `1h30m`) and its schema rule.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The shape the API server accepts: hours, minutes and seconds in that order, each optional,
/// at most five digits each so that a value can never overflow CEL's `duration()`.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}h)?([0-9]{1,5}m)?([0-9]{1,5}s)?$";

/// The longest duration string the schema admits (`99999h99999m99999s`).
pub const DURATION_MAX_LENGTH: u32 = 18;

/// A positive duration written as hours, minutes and seconds (`30s`, `15m`, `1h30m`).
///
/// The API server checks the form (see [`DURATION_PATTERN`]); [`ApiDuration::parse`] is the
/// same check for the operator's own code, so a value the server stored always parses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiDuration(String);

/// Why a string is not an [`ApiDuration`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing was written.
    #[error("duration is empty")]
    Empty,
    /// The string is not hours, minutes and seconds in that order.
    #[error("{0:?} is not a duration; write it like 30s, 15m or 1h30m")]
    Malformed(String),
    /// Every component is zero.
    #[error("duration must be longer than zero")]
    Zero,
}

impl ApiDuration {
    /// Parses and checks a duration string.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        to_std_duration(text)?;
        Ok(Self(text.to_owned()))
    }

    /// A whole number of hours.
    pub fn hours(hours: u16) -> Self {
        Self(format!("{hours}h"))
    }

    /// The duration as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration as a [`std::time::Duration`].
    pub fn to_std(&self) -> Result<Duration, DurationError> {
        to_std_duration(&self.0)
    }
}

impl FromStr for ApiDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for ApiDuration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

fn to_std_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let mut seconds: u64 = 0;
    let mut digits = String::new();
    // Units must appear in this order, each at most once.
    let mut allowed_units = ['h', 'm', 's'].as_slice();
    for character in text.chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let position = allowed_units
            .iter()
            .position(|unit| *unit == character)
            .ok_or_else(malformed)?;
        if digits.is_empty() || digits.len() > 5 {
            return Err(malformed());
        }
        let value: u64 = digits.parse().map_err(|_| malformed())?;
        let unit_seconds = match character {
            'h' => 3600,
            'm' => 60,
            _ => 1,
        };
        seconds += value * unit_seconds;
        digits.clear();
        allowed_units = &allowed_units[position + 1..];
    }
    if !digits.is_empty() {
        return Err(malformed());
    }
    if seconds == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(seconds))
}

/// The CEL rule that refuses a malformed or zero duration with a message naming the value.
fn duration_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": format!(
            "self.matches('{DURATION_PATTERN}') && self != '' && duration(self) > duration('0s')"
        ),
        "messageExpression":
            "'\"' + self + '\" is not a positive duration; write it like 30s, 15m or 1h30m'",
        "reason": "FieldValueInvalid",
    })
}

impl JsonSchema for ApiDuration {
    fn schema_name() -> Cow<'static, str> {
        "ApiDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": DURATION_MAX_LENGTH,
            "x-kubernetes-validations": [duration_rule()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hours_minutes_seconds_in_order() {
        for (text, seconds) in [
            ("30s", 30),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h0m5s", 3605),
            ("90m", 5400),
        ] {
            let parsed = ApiDuration::parse(text).map(|d| d.to_std());
            assert_eq!(parsed, Ok(Ok(Duration::from_secs(seconds))), "{text}");
        }
    }

    #[test]
    fn refuses_what_the_schema_refuses() {
        for text in [
            "banana", "1d", "30", "m", "1m1h", "1h1h", "1.5h", "-1h", "123456h", " 1h",
        ] {
            assert_eq!(
                ApiDuration::parse(text),
                Err(DurationError::Malformed(text.to_owned())),
                "{text}"
            );
        }
        assert_eq!(ApiDuration::parse(""), Err(DurationError::Empty));
        assert_eq!(ApiDuration::parse("0h0m"), Err(DurationError::Zero));
    }

    #[test]
    fn the_longest_valid_duration_fits_the_schema_length() {
        let longest = "99999h99999m99999s";
        assert!(ApiDuration::parse(longest).is_ok());
        assert_eq!(longest.len() as u32, DURATION_MAX_LENGTH);
    }
}
