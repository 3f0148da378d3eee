//! The AWS SDK's clients: their timeouts and a local endpoint.

use super::{ConfigError, Vars};
use crate::core::duration::Duration;

/// Read by every function and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkConfig {
    /// `SDK_ATTEMPT_TIMEOUT`: how long one attempt of an AWS call may take before
    /// the SDK gives up on it (and retries).
    pub sdk_attempt_timeout: Duration,
    /// `SDK_OPERATION_TIMEOUT`: how long an AWS call may take, all its retries included.
    pub sdk_operation_timeout: Duration,
    /// `AWS_ENDPOINT_URL`: a local endpoint (S3 then uses path-style addressing).
    pub endpoint_url: Option<String>,
}

impl SdkConfig {
    pub const VARIABLES: &'static [&'static str] =
        &["SDK_ATTEMPT_TIMEOUT", "SDK_OPERATION_TIMEOUT", "AWS_ENDPOINT_URL"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let sdk_attempt_timeout = vars.duration("SDK_ATTEMPT_TIMEOUT", Duration::from_secs(5))?;
        let sdk_operation_timeout = vars.duration("SDK_OPERATION_TIMEOUT", Duration::from_secs(15))?;
        if sdk_attempt_timeout.as_secs() == 0 || sdk_attempt_timeout > sdk_operation_timeout {
            return Err(ConfigError {
                variable: "SDK_ATTEMPT_TIMEOUT",
                problem: format!("is {sdk_attempt_timeout} with SDK_OPERATION_TIMEOUT {sdk_operation_timeout}"),
                expected: "at least 1s and no longer than SDK_OPERATION_TIMEOUT",
            });
        }
        Ok(Self { sdk_attempt_timeout, sdk_operation_timeout, endpoint_url: vars.get("AWS_ENDPOINT_URL") })
    }
}
