//! The rotation: the keys' maximum age, the rotations' limits and lease, how
//! long a previous key lives; and the new key's check before its commit.

use super::{ConfigError, SdkConfig, Vars};
use crate::core::duration::Duration;
use crate::core::rotation::RotationSettings;

/// The AWS calls a rotation makes while it holds its claim, before the
/// commit: make room (a delete, or a list and deletes after a crash), create
/// the key, store it in the vault, the commit itself, and one for a lost answer.
const ROTATION_CALLS_UNDER_LEASE: u64 = 5;

/// What a key's life is: read by every function (rotation-policy only shows
/// it) and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationConfig {
    /// `MAX_KEY_AGE`: the maximum key age before access is taken away.
    pub max_key_age: Duration,
    /// `ROTATIONS_PER_HOUR`: per-org limit on rotate-key calls.
    pub rotations_per_hour: u32,
    /// `ROTATION_LEASE`: how long a started rotation blocks others.
    pub rotation_lease: Duration,
    /// `ROTATION_GRACE_PERIOD`: how long an automatically rotated key's predecessor stays active.
    pub rotation_grace_period: Duration,
    /// `KEY_RETENTION`: how long an inactive previous key is kept before it is deleted.
    pub key_retention: Duration,
}

impl RotationConfig {
    pub const VARIABLES: &'static [&'static str] =
        &["MAX_KEY_AGE", "ROTATIONS_PER_HOUR", "ROTATION_LEASE", "ROTATION_GRACE_PERIOD", "KEY_RETENTION"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let max_key_age = vars.duration("MAX_KEY_AGE", Duration::from_days(90))?;
        if max_key_age < Duration::from_days(1) {
            return Err(ConfigError {
                variable: "MAX_KEY_AGE",
                problem: format!("is {max_key_age}"),
                expected: "at least 1d",
            });
        }
        let rotations_per_hour = match vars.get("ROTATIONS_PER_HOUR") {
            None => 5,
            Some(text) => text.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or(ConfigError {
                variable: "ROTATIONS_PER_HOUR",
                problem: format!("is '{text}'"),
                expected: "a whole number of at least 1",
            })?,
        };
        let rotation_lease = vars.duration("ROTATION_LEASE", Duration::from_secs(300))?;
        let rotation_grace_period = vars.duration("ROTATION_GRACE_PERIOD", Duration::from_hours(24))?;
        if rotation_grace_period > Duration::from_days(7) {
            return Err(ConfigError {
                variable: "ROTATION_GRACE_PERIOD",
                problem: format!("is {rotation_grace_period}"),
                expected: "at most 7d",
            });
        }
        let key_retention = vars.duration("KEY_RETENTION", Duration::from_days(7))?;
        Ok(Self { max_key_age, rotations_per_hour, rotation_lease, rotation_grace_period, key_retention })
    }

    /// The lease must outlast the slowest rotation it covers (its AWS calls
    /// from the claim to the commit, each bounded by the operation timeout,
    /// and the new key's check), with room for the skew of two clocks:
    /// otherwise another actor could take over a rotation that is still
    /// running. Checked by every program that rotates.
    pub fn check_lease(&self, verify: &VerifyConfig, sdk: &SdkConfig) -> Result<(), ConfigError> {
        let (rotation_lease, sdk_operation_timeout) = (self.rotation_lease, sdk.sdk_operation_timeout);
        let (verify_new_key, verify_within) = (verify.verify_new_key, verify.verify_within);
        let slowest = ROTATION_CALLS_UNDER_LEASE * sdk_operation_timeout.as_secs()
            + if verify_new_key { verify_within.as_secs() } else { 0 }
            + 2 * crate::core::domain::MAX_CLOCK_SKEW.as_secs();
        if rotation_lease.as_secs() < slowest {
            return Err(ConfigError {
                variable: "ROTATION_LEASE",
                problem: format!(
                    "is {rotation_lease}, shorter than a rotation may take ({} with SDK_OPERATION_TIMEOUT \
                     {sdk_operation_timeout}{})",
                    Duration::from_secs(slowest),
                    if verify_new_key { format!(" and VERIFY_WITHIN {verify_within}") } else { String::new() },
                ),
                expected: "at least 5 times SDK_OPERATION_TIMEOUT plus VERIFY_WITHIN plus 10s",
            });
        }
        Ok(())
    }

    pub fn settings(&self) -> RotationSettings {
        RotationSettings {
            lease: self.rotation_lease,
            rotations_per_hour: self.rotations_per_hour,
            max_key_age: self.max_key_age,
            retention: self.key_retention,
            automatic_lead: self.automatic_lead(),
            ..RotationSettings::default()
        }
    }

    /// How long before a key's maximum age automatic rotation happens at the
    /// latest: the grace period of automatic rotations (the old key must retire
    /// before it expires) plus one day, so that a schedule of up to a day, or a
    /// day of missed runs, still rotates in time.
    pub fn automatic_lead(&self) -> Duration {
        Duration::from_secs(self.rotation_grace_period.as_secs() + Duration::from_days(1).as_secs())
    }
}

/// The new key's check before its commit: read by the programs that rotate
/// (rotate-key, scheduled-rotation, sweep-worker, the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// `VERIFY_NEW_KEY`: check a new key against the bucket before committing it.
    pub verify_new_key: bool,
    /// `VERIFY_WITHIN`: how long the check may retry while IAM propagates the key.
    pub verify_within: Duration,
}

impl VerifyConfig {
    pub const VARIABLES: &'static [&'static str] = &["VERIFY_NEW_KEY", "VERIFY_WITHIN"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let verify_new_key = match vars.get("VERIFY_NEW_KEY").as_deref().map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ConfigError {
                    variable: "VERIFY_NEW_KEY",
                    problem: format!("is '{other}'"),
                    expected: "true or false",
                })
            }
        };
        let verify_within = vars.duration("VERIFY_WITHIN", Duration::from_secs(20))?;
        Ok(Self { verify_new_key, verify_within })
    }
}

/// `EVENT_BUS_NAME`: where the notifications go; read by the programs that
/// rotate or sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationsConfig {
    /// `EVENT_BUS_NAME`: where the notifications go.
    pub event_bus_name: String,
}

impl NotificationsConfig {
    pub const VARIABLES: &'static [&'static str] = &["EVENT_BUS_NAME"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self { event_bus_name: vars.get("EVENT_BUS_NAME").unwrap_or_else(|| "default".into()) })
    }
}
