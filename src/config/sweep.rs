//! The sweep: the scheduled evaluation of every org, in process or in slices.

use super::{ConfigError, RotationConfig, Vars};
use crate::core::duration::Duration;
use crate::core::sweep::{RetireInUse, SweepSettings};

/// Read by scheduled-rotation, sweep-worker and the CLI's `sweep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepConfig {
    /// `EXPIRY_WARNINGS`: how long before the maximum age warnings are published.
    pub expiry_warnings: Vec<Duration>,
    /// `RETIRE_IN_USE`: `report` (default) or `defer` a previous key still in use.
    pub retire_in_use: RetireInUse,
    /// `SWEEP_CONCURRENCY`: orgs evaluated at once by the scheduled run.
    pub sweep_concurrency: usize,
    /// `DEADLINE_MARGIN`: the scheduled run starts no org this close to its deadline.
    pub deadline_margin: Duration,
    /// `SWEEP_QUEUE_URL`: when set, the scheduled run dispatches slices of the
    /// registry to this queue for `sweep-worker` instead of sweeping itself.
    pub sweep_queue_url: Option<String>,
    /// `SWEEP_SLICE_SIZE`: the most orgs in one slice.
    pub sweep_slice_size: usize,
}

impl SweepConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        "EXPIRY_WARNINGS",
        "RETIRE_IN_USE",
        "SWEEP_CONCURRENCY",
        "DEADLINE_MARGIN",
        "SWEEP_QUEUE_URL",
        "SWEEP_SLICE_SIZE",
    ];

    /// The sweep's settings; each warning must come before `rotation`'s maximum key age.
    pub fn from_vars(vars: &Vars, rotation: &RotationConfig) -> Result<Self, ConfigError> {
        let retire_in_use = match vars.get("RETIRE_IN_USE").as_deref().map(str::trim) {
            None | Some("report") => RetireInUse::Report,
            Some("defer") => RetireInUse::Defer,
            Some(other) => {
                return Err(ConfigError {
                    variable: "RETIRE_IN_USE",
                    problem: format!("is '{other}'"),
                    expected: "report or defer",
                })
            }
        };
        let expiry_warnings = match vars.get("EXPIRY_WARNINGS") {
            None => vec![Duration::from_days(14), Duration::from_days(7), Duration::from_days(1)],
            Some(text) => {
                text.split(',').map(|part| part.trim().parse::<Duration>()).collect::<Result<Vec<_>, _>>().map_err(
                    |e| ConfigError {
                        variable: "EXPIRY_WARNINGS",
                        problem: format!("is invalid: {e}"),
                        expected: "a comma-separated list of durations, e.g. 14d,7d,1d",
                    },
                )?
            }
        };
        if expiry_warnings.iter().any(|w| *w >= rotation.max_key_age) {
            return Err(ConfigError {
                variable: "EXPIRY_WARNINGS",
                problem: "has a warning no shorter than MAX_KEY_AGE".into(),
                expected: "durations shorter than the maximum key age",
            });
        }
        let sweep_concurrency = vars.whole("SWEEP_CONCURRENCY", 8, 64, "a whole number from 1 to 64")?;
        let deadline_margin = vars.duration("DEADLINE_MARGIN", Duration::from_secs(20))?;
        let sweep_slice_size = vars.whole("SWEEP_SLICE_SIZE", 1000, 5000, "a whole number from 1 to 5000")?;
        Ok(Self {
            expiry_warnings,
            retire_in_use,
            sweep_concurrency,
            deadline_margin,
            sweep_queue_url: vars.get("SWEEP_QUEUE_URL"),
            sweep_slice_size,
        })
    }

    pub fn settings(&self, rotation: &RotationConfig) -> SweepSettings {
        SweepSettings {
            rotation: rotation.settings(),
            grace: rotation.rotation_grace_period,
            warnings: self.expiry_warnings.clone(),
            concurrency: self.sweep_concurrency,
            retire_in_use: self.retire_in_use,
        }
    }
}
