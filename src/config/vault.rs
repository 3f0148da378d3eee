//! The key vault: each org's current key as a Secrets Manager secret.

use super::{ConfigError, Vars};
use crate::core::duration::Duration;

/// Read by the programs that rotate or sweep (rotate-key, scheduled-rotation,
/// sweep-worker, the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// `VAULT_SECRET_PREFIX`: the key vault's secret of an org is `{prefix}{orgId}`.
    pub vault_secret_prefix: String,
    /// `VAULT_KMS_KEY_ID`: the customer-managed KMS key (id, ARN, alias or
    /// alias ARN) every new secret of the vault is encrypted with; unset, the
    /// AWS-managed key `aws/secretsmanager`, which no other account can use.
    pub vault_kms_key_id: Option<String>,
    /// `VAULT_RECOVERY_WINDOW`: how long a deleted org's secret can still be
    /// restored (Secrets Manager's `RecoveryWindowInDays`, 7 to 30 days).
    pub vault_recovery_window: Duration,
}

impl VaultConfig {
    pub const VARIABLES: &'static [&'static str] =
        &["VAULT_SECRET_PREFIX", "VAULT_KMS_KEY_ID", "VAULT_RECOVERY_WINDOW"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let vault_secret_prefix = vars.get("VAULT_SECRET_PREFIX").unwrap_or_else(|| "s3-key-rotation/org-".into());
        if !vault_secret_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
            || vault_secret_prefix.len() > 400
        {
            return Err(ConfigError {
                variable: "VAULT_SECRET_PREFIX",
                problem: format!("is '{vault_secret_prefix}'"),
                expected: "a Secrets Manager name prefix of A-Z a-z 0-9 / _ + = . @ -",
            });
        }
        let vault_kms_key_id = vars.get("VAULT_KMS_KEY_ID").map(|k| k.trim().to_owned());
        if let Some(key) = &vault_kms_key_id {
            if !is_kms_key_id(key) {
                return Err(ConfigError {
                    variable: "VAULT_KMS_KEY_ID",
                    problem: format!("is '{key}'"),
                    expected: "a KMS key id, key ARN, alias/NAME or alias ARN",
                });
            }
        }
        let vault_recovery_window = vars.duration("VAULT_RECOVERY_WINDOW", Duration::from_days(30))?;
        let whole_days = vault_recovery_window.as_secs() % Duration::from_days(1).as_secs() == 0;
        if !whole_days || !(Duration::from_days(7)..=Duration::from_days(30)).contains(&vault_recovery_window) {
            return Err(ConfigError {
                variable: "VAULT_RECOVERY_WINDOW",
                problem: format!("is {vault_recovery_window}"),
                expected: "a whole number of days from 7d to 30d (Secrets Manager's recovery window)",
            });
        }
        Ok(Self { vault_secret_prefix, vault_kms_key_id, vault_recovery_window })
    }
}

/// A key id (`1234abcd-…`, `mrk-…`), a key or alias ARN, or `alias/NAME`:
/// the forms Secrets Manager's `KmsKeyId` takes.
fn is_kms_key_id(key: &str) -> bool {
    let arn = key.strip_prefix("arn:").is_some_and(|rest| {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        parts.len() == 5
            && parts[0].starts_with("aws")
            && parts[1] == "kms"
            && (parts[4].starts_with("key/") || parts[4].starts_with("alias/"))
    });
    let alias = key
        .strip_prefix("alias/")
        .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b)));
    let id = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    key.len() <= 2048 && !key.contains(char::is_whitespace) && (arn || alias || id)
}
