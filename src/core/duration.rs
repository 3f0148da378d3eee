//! Durations in the `integer[unit]` form used everywhere in the API and the
//! configuration: `30d`, `720h`, `45m`, `604800s`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest duration accepted anywhere: 100 years. Larger values are
/// refused rather than risk overflowing date arithmetic.
pub const MAX_SECONDS: u64 = 36_500 * DAY;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// A whole number of seconds, written and read as `integer[unit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

/// Why a text is not an `integer[unit]` duration. The message names the text
/// and the expected form, so it can be shown to a caller as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; expected an integer followed by a unit d, h, m or s (e.g. 30d, 720h, 604800s)")]
pub struct DurationError {
    reason: String,
}

impl DurationError {
    fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }
    pub const fn from_days(days: u64) -> Self {
        Self(days * DAY)
    }
    pub const fn from_hours(hours: u64) -> Self {
        Self(hours * HOUR)
    }
    pub const fn as_secs(self) -> u64 {
        self.0
    }
    /// As a chrono delta, for date arithmetic (always in range: see [`MAX_SECONDS`]).
    pub fn to_chrono(self) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(self.0.min(MAX_SECONDS) as i64)
    }
    /// The reference KMS API writes intervals in seconds: `2592000s`.
    pub fn to_seconds_string(self) -> String {
        format!("{}s", self.0)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(DurationError::new("the duration is empty"));
        }
        let shown = shown(text);
        let (digits, unit) = text.split_at(text.len() - text.chars().last().map_or(0, char::len_utf8));
        let factor = match unit {
            "d" => DAY,
            "h" => HOUR,
            "m" => MINUTE,
            "s" => SECOND,
            u if u.chars().all(|c| c.is_ascii_digit()) => {
                return Err(DurationError::new(format!("'{shown}' has no unit")))
            }
            u => return Err(DurationError::new(format!("'{shown}' has an unknown unit '{}'", shown_unit(u)))),
        };
        if digits.is_empty() {
            return Err(DurationError::new(format!("'{shown}' has no number before its unit")));
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DurationError::new(format!("'{shown}' is not a whole number of {}", unit_name(unit))));
        }
        let too_large =
            || DurationError::new(format!("'{shown}' is longer than the maximum of {}", Duration(MAX_SECONDS)));
        let value: u64 = digits.parse().map_err(|_| too_large())?;
        let secs = value.checked_mul(factor).filter(|s| *s <= MAX_SECONDS).ok_or_else(too_large)?;
        Ok(Duration(secs))
    }
}

const SECOND: u64 = 1;

fn unit_name(unit: &str) -> &'static str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "m" => "minutes",
        _ => "seconds",
    }
}

/// The input as it may be echoed in a message: at most 40 characters, control
/// characters escaped.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(40).flat_map(char::escape_debug).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

fn shown_unit(unit: &str) -> String {
    unit.chars().flat_map(char::escape_debug).collect()
}

impl fmt::Display for Duration {
    /// The largest unit that divides the value exactly: `30d`, `36h`, `90m`, `61s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s != 0 && s % DAY == 0 {
            write!(f, "{}d", s / DAY)
        } else if s != 0 && s % HOUR == 0 {
            write!(f, "{}h", s / HOUR)
        } else if s != 0 && s % MINUTE == 0 {
            write!(f, "{}m", s / MINUTE)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_every_unit() {
        assert_eq!("30d".parse(), Ok(Duration::from_days(30)));
        assert_eq!("720h".parse(), Ok(Duration::from_days(30)));
        assert_eq!("90m".parse(), Ok(Duration::from_secs(5400)));
        assert_eq!("604800s".parse(), Ok(Duration::from_days(7)));
        assert_eq!("0s".parse(), Ok(Duration::from_secs(0)));
    }

    #[test]
    fn rejects_everything_else_with_a_precise_message() {
        let cases = [
            ("", "empty"),
            ("7", "'7' has no unit"),
            ("7w", "unknown unit 'w'"),
            ("7D", "unknown unit 'D'"),
            ("d", "no number"),
            ("-7d", "not a whole number of days"),
            ("+7d", "not a whole number of days"),
            ("7.5d", "not a whole number of days"),
            (" 7d", "not a whole number of days"),
            ("7d ", "unknown unit ' '"),
            ("7 d", "not a whole number of days"),
            ("1e3s", "not a whole number of seconds"),
            ("٣d", "not a whole number of days"),
            ("99999999999999999999d", "longer than the maximum of 36500d"),
            ("36501d", "longer than the maximum"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Duration>().expect_err(input).to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
            assert!(err.contains("expected an integer followed by a unit"), "{input:?}: {err}");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Duration::from_days(90).to_string(), "90d");
        assert_eq!(Duration::from_hours(36).to_string(), "36h");
        assert_eq!(Duration::from_secs(5400).to_string(), "90m");
        assert_eq!(Duration::from_secs(61).to_string(), "61s");
        assert_eq!(Duration::from_secs(0).to_string(), "0s");
        assert_eq!(Duration::from_days(30).to_seconds_string(), "2592000s");
    }

    #[test]
    fn long_garbage_is_cut_in_the_message() {
        let input = "x".repeat(10_000);
        let err = input.parse::<Duration>().unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }

    proptest! {
        #[test]
        fn every_valid_value_round_trips(value in 0u64..=36_500 * 86_400, unit in prop::sample::select(vec!["d", "h", "m", "s"])) {
            let factor = match unit { "d" => DAY, "h" => HOUR, "m" => MINUTE, _ => 1 };
            prop_assume!(value.checked_mul(factor).is_some_and(|s| s <= MAX_SECONDS));
            let parsed: Duration = format!("{value}{unit}").parse().unwrap();
            prop_assert_eq!(parsed.as_secs(), value * factor);
            // Display, then parse again: the same duration.
            prop_assert_eq!(parsed.to_string().parse::<Duration>().unwrap(), parsed);
            prop_assert_eq!(parsed.to_seconds_string().parse::<Duration>().unwrap(), parsed);
            // And through JSON.
            let json = serde_json::to_string(&parsed).unwrap();
            prop_assert_eq!(serde_json::from_str::<Duration>(&json).unwrap(), parsed);
        }

        #[test]
        fn no_input_panics(input in ".{0,64}") {
            let _ = input.parse::<Duration>();
        }

        #[test]
        fn near_miss_inputs_never_panic(digits in "[0-9]{0,25}", unit in "[a-zA-Z .-]{0,2}") {
            let _ = format!("{digits}{unit}").parse::<Duration>();
        }
    }
}
