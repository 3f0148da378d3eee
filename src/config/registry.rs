//! The registry: where the orgs' records, the audit trail and the sweep's state live.

use super::{ConfigError, Vars};

/// `REGISTRY_BUCKET`: read by every function and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `REGISTRY_BUCKET`: the registry (`orgs/`) and the audit trail (`audit/`).
    pub bucket: String,
}

impl RegistryConfig {
    pub const VARIABLES: &'static [&'static str] = &["REGISTRY_BUCKET"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let bucket = vars.get("REGISTRY_BUCKET").ok_or(ConfigError {
            variable: "REGISTRY_BUCKET",
            problem: "is not set".into(),
            expected: "the name of the registry bucket",
        })?;
        super::check_bucket("REGISTRY_BUCKET", &bucket)?;
        Ok(Self { bucket })
    }
}
