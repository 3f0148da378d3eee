//! The configuration: environment variables, read once at start-up and
//! validated there, with a message naming the variable and the expected form.

use crate::core::accounts::MemberRole;
use crate::core::duration::Duration;
use crate::core::enrollment::EnrollSettings;
use crate::core::rotation::RotationSettings;

/// Everything the functions and the CLI read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `REGISTRY_BUCKET`: the registry (`orgs/`) and the audit trail (`audit/`).
    pub registry_bucket: String,
    /// `MANAGED_BUCKET`: the bucket the orgs read; needed to enroll.
    pub managed_bucket: Option<String>,
    /// `ORG_PREFIX_TEMPLATE`: each org's prefix in the managed bucket.
    pub org_prefix_template: String,
    /// `IAM_USER_PATH`: path of the per-org IAM users.
    pub iam_user_path: String,
    /// `ORG_CLAIM`: the JWT claim naming the caller's org.
    pub org_claim: String,
    /// `ADMIN_SCOPE`: the scope a caller needs (a comma-separated list: any one of them).
    pub admin_scopes: Vec<String>,
    /// `MAX_KEY_AGE`: the maximum key age before access is taken away.
    pub max_key_age: Duration,
    /// `ROTATIONS_PER_HOUR`: per-org limit on rotate-key calls.
    pub rotations_per_hour: u32,
    /// `ROTATION_LEASE`: how long a started rotation blocks others.
    pub rotation_lease: Duration,
    /// `VERIFY_NEW_KEY`: check a new key against the bucket before committing it.
    pub verify_new_key: bool,
    /// `VERIFY_WITHIN`: how long the check may retry while IAM propagates the key.
    pub verify_within: Duration,
    /// `VAULT_SECRET_PREFIX`: the key vault's secret of an org is `{prefix}{orgId}`.
    pub vault_secret_prefix: String,
    /// `VAULT_KMS_KEY_ID`: the customer-managed KMS key (id, ARN, alias or
    /// alias ARN) every new secret of the vault is encrypted with; unset, the
    /// AWS-managed key `aws/secretsmanager`, which no other account can use.
    pub vault_kms_key_id: Option<String>,
    /// `VAULT_RECOVERY_WINDOW`: how long a deleted org's secret can still be
    /// restored (Secrets Manager's `RecoveryWindowInDays`, 7 to 30 days).
    pub vault_recovery_window: Duration,
    /// `ARN_PARTITION`: the partition of the ARNs the service writes (`aws`,
    /// `aws-cn`, `aws-us-gov`, …); the template sets it from `AWS::Partition`.
    pub partition: String,
    /// `EVENT_BUS_NAME`: where the notifications go.
    pub event_bus_name: String,
    /// `ROTATION_GRACE_PERIOD`: how long an automatically rotated key's predecessor stays active.
    pub rotation_grace_period: Duration,
    /// `KEY_RETENTION`: how long an inactive previous key is kept before it is deleted.
    pub key_retention: Duration,
    /// `EXPIRY_WARNINGS`: how long before the maximum age warnings are published.
    pub expiry_warnings: Vec<Duration>,
    /// `RETIRE_IN_USE`: `report` (default) or `defer` a previous key still in use.
    pub retire_in_use: crate::core::sweep::RetireInUse,
    /// `SWEEP_CONCURRENCY`: orgs evaluated at once by the scheduled run.
    pub sweep_concurrency: usize,
    /// `DEADLINE_MARGIN`: the scheduled run starts no org this close to its deadline.
    pub deadline_margin: Duration,
    /// `SDK_ATTEMPT_TIMEOUT`: how long one attempt of an AWS call may take before
    /// the SDK gives up on it (and retries).
    pub sdk_attempt_timeout: Duration,
    /// `SDK_OPERATION_TIMEOUT`: how long an AWS call may take, all its retries included.
    pub sdk_operation_timeout: Duration,
    /// `AWS_ENDPOINT_URL`: a local endpoint (S3 then uses path-style addressing).
    pub endpoint_url: Option<String>,
    /// `MEMBER_ACCOUNT_ROLES`: the role to assume in each member account (a
    /// comma-separated list of role ARNs); empty: every org user lives in the
    /// home account.
    pub member_roles: Vec<MemberRole>,
    /// `MEMBER_ROLE_EXTERNAL_ID`: the external id the member roles require.
    pub member_external_id: Option<String>,
    /// `MEMBER_ENROLLMENT_ROLE`: the name of the role through which the
    /// operator's `enroll` creates and adopts org users in a member account
    /// (member-account.yaml's EnrollmentRole; the functions' role there may not).
    pub member_enrollment_role: String,
    /// `ORG_USER_BOUNDARY`: the ARN of the permissions boundary every org user
    /// is created with (template.yaml's OrgUserBoundary); a member account's
    /// user gets the policy of the same name in its own account. Unset: none.
    pub org_user_boundary: Option<String>,
    /// `ORGS_PER_ACCOUNT`: the most orgs placed in one member account (IAM
    /// allows 5,000 users an account).
    pub orgs_per_account: usize,
    /// `SWEEP_QUEUE_URL`: when set, the scheduled run dispatches slices of the
    /// registry to this queue for `sweep-worker` instead of sweeping itself.
    pub sweep_queue_url: Option<String>,
    /// `SWEEP_SLICE_SIZE`: the most orgs in one slice.
    pub sweep_slice_size: usize,
}

/// The AWS calls a rotation makes while it holds its claim, before the
/// commit: make room (a delete, or a list and deletes after a crash), create
/// the key, store it in the vault, the commit itself, and one for a lost answer.
const ROTATION_CALLS_UNDER_LEASE: u64 = 5;

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {variable} {problem}; expected {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
    pub expected: &'static str,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let registry_bucket = get("REGISTRY_BUCKET").ok_or(ConfigError {
            variable: "REGISTRY_BUCKET",
            problem: "is not set".into(),
            expected: "the name of the registry bucket",
        })?;
        check_bucket("REGISTRY_BUCKET", &registry_bucket)?;
        let managed_bucket = get("MANAGED_BUCKET");
        if let Some(b) = &managed_bucket {
            check_bucket("MANAGED_BUCKET", b)?;
        }
        let org_prefix_template = get("ORG_PREFIX_TEMPLATE").unwrap_or_else(|| "{orgId}/".into());
        // The org id must be ended by '/', which no org id contains: with
        // `logs/{orgId}`, org 1234567's prefix would also cover org 12345678's.
        if org_prefix_template.matches("{orgId}").count() != 1
            || !org_prefix_template.contains("{orgId}/")
            || org_prefix_template.starts_with('/')
        {
            return Err(ConfigError {
                variable: "ORG_PREFIX_TEMPLATE",
                problem: format!("is '{org_prefix_template}'"),
                expected: "a key prefix with {orgId} once, followed by '/' (no org id continues past it), not \
                           starting with '/', e.g. {orgId}/ or logs/{orgId}/",
            });
        }
        let iam_user_path = get("IAM_USER_PATH").unwrap_or_else(|| "/managed-s3/".into());
        let path_ok = iam_user_path.starts_with('/')
            && iam_user_path.ends_with('/')
            && iam_user_path.len() <= 512
            && iam_user_path.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !path_ok {
            return Err(ConfigError {
                variable: "IAM_USER_PATH",
                problem: format!("is '{iam_user_path}'"),
                expected: "an IAM path that begins and ends with '/', e.g. /managed-s3/",
            });
        }
        let org_claim = get("ORG_CLAIM").unwrap_or_else(|| "org_id".into());
        let admin_scopes: Vec<String> = get("ADMIN_SCOPE")
            .unwrap_or_else(|| "admin".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let duration = |variable: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(variable) {
                None => Ok(default),
                Some(text) => text.parse().map_err(|e: crate::core::duration::DurationError| ConfigError {
                    variable,
                    problem: format!("is invalid: {e}"),
                    expected: "a duration such as 90d, 24h, 604800s",
                }),
            }
        };
        let max_key_age = duration("MAX_KEY_AGE", Duration::from_days(90))?;
        if max_key_age < Duration::from_days(1) {
            return Err(ConfigError {
                variable: "MAX_KEY_AGE",
                problem: format!("is {max_key_age}"),
                expected: "at least 1d",
            });
        }
        let rotations_per_hour = match get("ROTATIONS_PER_HOUR") {
            None => 5,
            Some(text) => text.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or(ConfigError {
                variable: "ROTATIONS_PER_HOUR",
                problem: format!("is '{text}'"),
                expected: "a whole number of at least 1",
            })?,
        };
        let rotation_lease = duration("ROTATION_LEASE", Duration::from_secs(300))?;
        let verify_new_key = match get("VERIFY_NEW_KEY").as_deref().map(str::trim) {
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
        let verify_within = duration("VERIFY_WITHIN", Duration::from_secs(20))?;
        let vault_secret_prefix = get("VAULT_SECRET_PREFIX").unwrap_or_else(|| "s3-key-rotation/org-".into());
        if !vault_secret_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
            || vault_secret_prefix.len() > 400
        {
            return Err(ConfigError {
                variable: "VAULT_SECRET_PREFIX",
                problem: format!("is '{vault_secret_prefix}'"),
                expected: "a Secrets Manager name prefix of A-Z a-z 0-9 / _ + = . @ -",
            });
        }
        let vault_kms_key_id = get("VAULT_KMS_KEY_ID").map(|k| k.trim().to_owned());
        if let Some(key) = &vault_kms_key_id {
            if !is_kms_key_id(key) {
                return Err(ConfigError {
                    variable: "VAULT_KMS_KEY_ID",
                    problem: format!("is '{key}'"),
                    expected: "a KMS key id, key ARN, alias/NAME or alias ARN",
                });
            }
        }
        let vault_recovery_window = duration("VAULT_RECOVERY_WINDOW", Duration::from_days(30))?;
        let whole_days = vault_recovery_window.as_secs() % Duration::from_days(1).as_secs() == 0;
        if !whole_days || !(Duration::from_days(7)..=Duration::from_days(30)).contains(&vault_recovery_window) {
            return Err(ConfigError {
                variable: "VAULT_RECOVERY_WINDOW",
                problem: format!("is {vault_recovery_window}"),
                expected: "a whole number of days from 7d to 30d (Secrets Manager's recovery window)",
            });
        }
        let partition = get("ARN_PARTITION").map(|p| p.trim().to_owned()).unwrap_or_else(|| "aws".into());
        let partition_ok = partition == "aws"
            || partition
                .strip_prefix("aws-")
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        if !partition_ok {
            return Err(ConfigError {
                variable: "ARN_PARTITION",
                problem: format!("is '{partition}'"),
                expected: "an AWS partition such as aws, aws-cn or aws-us-gov",
            });
        }
        let event_bus_name = get("EVENT_BUS_NAME").unwrap_or_else(|| "default".into());
        let rotation_grace_period = duration("ROTATION_GRACE_PERIOD", Duration::from_hours(24))?;
        if rotation_grace_period > Duration::from_days(7) {
            return Err(ConfigError {
                variable: "ROTATION_GRACE_PERIOD",
                problem: format!("is {rotation_grace_period}"),
                expected: "at most 7d",
            });
        }
        let key_retention = duration("KEY_RETENTION", Duration::from_days(7))?;
        let retire_in_use = match get("RETIRE_IN_USE").as_deref().map(str::trim) {
            None | Some("report") => crate::core::sweep::RetireInUse::Report,
            Some("defer") => crate::core::sweep::RetireInUse::Defer,
            Some(other) => {
                return Err(ConfigError {
                    variable: "RETIRE_IN_USE",
                    problem: format!("is '{other}'"),
                    expected: "report or defer",
                })
            }
        };
        let expiry_warnings = match get("EXPIRY_WARNINGS") {
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
        if expiry_warnings.iter().any(|w| *w >= max_key_age) {
            return Err(ConfigError {
                variable: "EXPIRY_WARNINGS",
                problem: "has a warning no shorter than MAX_KEY_AGE".into(),
                expected: "durations shorter than the maximum key age",
            });
        }
        let whole = |variable: &'static str, default: usize, max: usize, expected: &'static str| match get(variable) {
            None => Ok(default),
            Some(text) => text.trim().parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or(ConfigError {
                variable,
                problem: format!("is '{text}'"),
                expected,
            }),
        };
        let sweep_concurrency = whole("SWEEP_CONCURRENCY", 8, 64, "a whole number from 1 to 64")?;
        let deadline_margin = duration("DEADLINE_MARGIN", Duration::from_secs(20))?;
        let sdk_attempt_timeout = duration("SDK_ATTEMPT_TIMEOUT", Duration::from_secs(5))?;
        let sdk_operation_timeout = duration("SDK_OPERATION_TIMEOUT", Duration::from_secs(15))?;
        if sdk_attempt_timeout.as_secs() == 0 || sdk_attempt_timeout > sdk_operation_timeout {
            return Err(ConfigError {
                variable: "SDK_ATTEMPT_TIMEOUT",
                problem: format!("is {sdk_attempt_timeout} with SDK_OPERATION_TIMEOUT {sdk_operation_timeout}"),
                expected: "at least 1s and no longer than SDK_OPERATION_TIMEOUT",
            });
        }
        // The claim must outlast the slowest rotation it covers (its AWS calls
        // from the claim to the commit, each bounded by the operation timeout,
        // and the new key's check), with room for the skew of two clocks:
        // otherwise another actor could take over a rotation that is still running.
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
        let mut member_roles: Vec<MemberRole> = Vec::new();
        for arn in
            get("MEMBER_ACCOUNT_ROLES").iter().flat_map(|v| v.split(',')).map(str::trim).filter(|a| !a.is_empty())
        {
            let role = MemberRole::parse(arn).ok_or(ConfigError {
                variable: "MEMBER_ACCOUNT_ROLES",
                problem: format!("has '{arn}'"),
                expected: "comma-separated IAM role ARNs, e.g. arn:aws:iam::210987654321:role/s3-key-rotation-member",
            })?;
            if member_roles.iter().any(|m| m.account_id == role.account_id) {
                return Err(ConfigError {
                    variable: "MEMBER_ACCOUNT_ROLES",
                    problem: format!("names account {} twice", role.account_id),
                    expected: "one role per member account",
                });
            }
            member_roles.push(role);
        }
        let member_enrollment_role =
            get("MEMBER_ENROLLMENT_ROLE").unwrap_or_else(|| "s3-key-rotation-enrollment".to_owned());
        if member_enrollment_role.is_empty()
            || member_enrollment_role.len() > 64
            || !member_enrollment_role.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        {
            return Err(ConfigError {
                variable: "MEMBER_ENROLLMENT_ROLE",
                problem: format!("is '{member_enrollment_role}'"),
                expected: "an IAM role name (1 to 64 of letters, digits and +=,.@_-)",
            });
        }
        let org_user_boundary = get("ORG_USER_BOUNDARY").filter(|v| !v.is_empty());
        if let Some(arn) = &org_user_boundary {
            let fields: Vec<&str> = arn.splitn(6, ':').collect();
            let ok = matches!(fields.as_slice(), ["arn", partition, "iam", "", account, resource]
                if !partition.is_empty() && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
                    && resource.starts_with("policy/"));
            if !ok {
                return Err(ConfigError {
                    variable: "ORG_USER_BOUNDARY",
                    problem: format!("is '{arn}'"),
                    expected:
                        "an IAM policy ARN, e.g. arn:aws:iam::123456789012:policy/s3-key-rotation-org-user-boundary",
                });
            }
        }
        let orgs_per_account =
            whole("ORGS_PER_ACCOUNT", 4500, 5000, "a whole number from 1 to 5000 (IAM's users per account)")?;
        let sweep_slice_size = whole("SWEEP_SLICE_SIZE", 1000, 5000, "a whole number from 1 to 5000")?;
        Ok(Self {
            registry_bucket,
            managed_bucket,
            org_prefix_template,
            iam_user_path,
            org_claim,
            admin_scopes,
            max_key_age,
            rotations_per_hour,
            rotation_lease,
            verify_new_key,
            verify_within,
            vault_secret_prefix,
            vault_kms_key_id,
            vault_recovery_window,
            partition,
            event_bus_name,
            rotation_grace_period,
            key_retention,
            retire_in_use,
            expiry_warnings,
            sweep_concurrency,
            deadline_margin,
            sdk_attempt_timeout,
            sdk_operation_timeout,
            endpoint_url: get("AWS_ENDPOINT_URL"),
            member_roles,
            member_external_id: get("MEMBER_ROLE_EXTERNAL_ID"),
            member_enrollment_role,
            org_user_boundary,
            orgs_per_account,
            sweep_queue_url: get("SWEEP_QUEUE_URL"),
            sweep_slice_size,
        })
    }

    /// The configuration of the operator's `enroll`: each member account
    /// reached through its enrollment role (`MEMBER_ENROLLMENT_ROLE`, in the
    /// account and partition of its MEMBER_ACCOUNT_ROLES role) instead of the
    /// functions' role, which may not create users.
    pub fn for_enrollment(&self) -> Self {
        let member_roles = self
            .member_roles
            .iter()
            .map(|m| {
                let partition = m.role_arn.split(':').nth(1).unwrap_or("aws");
                MemberRole {
                    account_id: m.account_id.clone(),
                    role_arn: format!("arn:{partition}:iam::{}:role/{}", m.account_id, self.member_enrollment_role),
                }
            })
            .collect();
        Self { member_roles, ..self.clone() }
    }

    /// How the HTTP functions read the caller from the JWT authorizer's claims.
    pub fn caller_rules(&self) -> crate::api::caller::CallerRules {
        crate::api::caller::CallerRules { org_claim: self.org_claim.clone(), admin_scopes: self.admin_scopes.clone() }
    }

    pub fn rotation_settings(&self) -> RotationSettings {
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

    /// What the rotation-policy function needs besides the ports.
    pub fn policy_settings(&self) -> crate::api::rotation_policy::PolicySettings {
        crate::api::rotation_policy::PolicySettings {
            caller: self.caller_rules(),
            max_key_age: self.max_key_age,
            automatic_lead: self.automatic_lead(),
        }
    }

    pub fn sweep_settings(&self) -> crate::core::sweep::SweepSettings {
        crate::core::sweep::SweepSettings {
            rotation: self.rotation_settings(),
            grace: self.rotation_grace_period,
            warnings: self.expiry_warnings.clone(),
            concurrency: self.sweep_concurrency,
            retire_in_use: self.retire_in_use,
        }
    }

    /// The enrollment settings; enrolling needs `MANAGED_BUCKET`.
    pub fn enroll_settings(&self) -> Result<EnrollSettings, ConfigError> {
        let managed_bucket = self.managed_bucket.clone().ok_or(ConfigError {
            variable: "MANAGED_BUCKET",
            problem: "is not set".into(),
            expected: "the name of the bucket the orgs read (required to enroll)",
        })?;
        Ok(EnrollSettings {
            iam_user_path: self.iam_user_path.clone(),
            managed_bucket,
            prefix_template: self.org_prefix_template.clone(),
            members: self.member_roles.clone(),
            orgs_per_account: self.orgs_per_account,
        })
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

fn check_bucket(variable: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            variable,
            problem: format!("is '{name}'"),
            expected: "an S3 bucket name (3-63 of a-z 0-9 . -)",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = config(&[("REGISTRY_BUCKET", "registry")]).unwrap();
        assert_eq!(c.org_prefix_template, "{orgId}/");
        assert_eq!(c.iam_user_path, "/managed-s3/");
        assert_eq!(c.org_claim, "org_id");
        assert_eq!(c.admin_scopes, vec!["admin"]);
        assert_eq!(c.max_key_age, Duration::from_days(90));
        assert_eq!(c.rotations_per_hour, 5);
        assert!(c.verify_new_key);
        assert_eq!((c.sdk_attempt_timeout.as_secs(), c.sdk_operation_timeout.as_secs()), (5, 15));
        assert_eq!(c.managed_bucket, None);
        assert!(c.member_roles.is_empty(), "no member accounts: every user in the home account");
        assert_eq!((c.orgs_per_account, c.sweep_slice_size, c.sweep_queue_url.as_deref()), (4500, 1000, None));
        assert!(c.enroll_settings().unwrap_err().to_string().contains("MANAGED_BUCKET is not set"));
    }

    #[test]
    fn a_bad_setting_is_named_with_the_expected_form() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "REGISTRY_BUCKET is not set"),
            (&[("REGISTRY_BUCKET", "Bad_Bucket")], "REGISTRY_BUCKET is 'Bad_Bucket'"),
            (&[("REGISTRY_BUCKET", "r-b"), ("MAX_KEY_AGE", "90")], "MAX_KEY_AGE is invalid: '90' has no unit"),
            (&[("REGISTRY_BUCKET", "r-b"), ("MAX_KEY_AGE", "1h")], "MAX_KEY_AGE is 1h; expected at least 1d"),
            (&[("REGISTRY_BUCKET", "r-b"), ("ROTATIONS_PER_HOUR", "0")], "ROTATIONS_PER_HOUR is '0'"),
            (&[("REGISTRY_BUCKET", "r-b"), ("IAM_USER_PATH", "managed")], "IAM_USER_PATH is 'managed'"),
            (&[("REGISTRY_BUCKET", "r-b"), ("ORG_PREFIX_TEMPLATE", "logs/")], "ORG_PREFIX_TEMPLATE is 'logs/'"),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("ORG_PREFIX_TEMPLATE", "logs/{orgId}")],
                "ORG_PREFIX_TEMPLATE is 'logs/{orgId}'",
            ),
            (&[("REGISTRY_BUCKET", "r-b"), ("ORG_PREFIX_TEMPLATE", "{orgId}")], "followed by '/'"),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("ORG_PREFIX_TEMPLATE", "{orgId}-logs/")],
                "ORG_PREFIX_TEMPLATE is '{orgId}-logs/'",
            ),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("VERIFY_NEW_KEY", "yes")],
                "VERIFY_NEW_KEY is 'yes'; expected true or false",
            ),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("SDK_ATTEMPT_TIMEOUT", "20s")],
                "SDK_ATTEMPT_TIMEOUT is 20s with SDK_OPERATION_TIMEOUT 15s",
            ),
            (&[("REGISTRY_BUCKET", "r-b"), ("SDK_OPERATION_TIMEOUT", "0s")], "SDK_ATTEMPT_TIMEOUT is 5s"),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("MEMBER_ACCOUNT_ROLES", "arn:aws:iam::1234:role/x")],
                "MEMBER_ACCOUNT_ROLES has 'arn:aws:iam::1234:role/x'",
            ),
            (
                &[
                    ("REGISTRY_BUCKET", "r-b"),
                    ("MEMBER_ACCOUNT_ROLES", "arn:aws:iam::111111111111:role/a,arn:aws:iam::111111111111:role/b"),
                ],
                "MEMBER_ACCOUNT_ROLES names account 111111111111 twice",
            ),
            (&[("REGISTRY_BUCKET", "r-b"), ("ORGS_PER_ACCOUNT", "5001")], "ORGS_PER_ACCOUNT is '5001'"),
            (&[("REGISTRY_BUCKET", "r-b"), ("SWEEP_SLICE_SIZE", "0")], "SWEEP_SLICE_SIZE is '0'"),
            (&[("REGISTRY_BUCKET", "r-b"), ("VAULT_KMS_KEY_ID", "my key")], "VAULT_KMS_KEY_ID is 'my key'"),
            (
                &[("REGISTRY_BUCKET", "r-b"), ("VAULT_KMS_KEY_ID", "arn:aws:s3:::logs")],
                "VAULT_KMS_KEY_ID is 'arn:aws:s3:::logs'; expected a KMS key id",
            ),
            (&[("REGISTRY_BUCKET", "r-b"), ("ARN_PARTITION", "azure")], "ARN_PARTITION is 'azure'"),
        ];
        for (vars, expected) in cases {
            let err = config(vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn the_vault_key_and_recovery_window_default_to_the_managed_key_and_30_days() {
        let c = config(&[("REGISTRY_BUCKET", "r-b")]).unwrap();
        assert_eq!(c.vault_kms_key_id, None, "unset: the AWS-managed key, as before");
        assert_eq!(c.vault_recovery_window, Duration::from_days(30));
        assert_eq!(c.partition, "aws");
        for key in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/s3-key-rotation-vault",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:123456789012:alias/s3-key-rotation-vault",
        ] {
            let c = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_KMS_KEY_ID", key)]).unwrap();
            assert_eq!(c.vault_kms_key_id.as_deref(), Some(key));
        }
        for (window, days) in [("7d", 7), ("168h", 7), ("30d", 30), ("2592000s", 30)] {
            let c = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_RECOVERY_WINDOW", window)]).unwrap();
            assert_eq!(c.vault_recovery_window, Duration::from_days(days), "{window}");
        }
        let c = config(&[("REGISTRY_BUCKET", "r-b"), ("ARN_PARTITION", "aws-us-gov")]).unwrap();
        assert_eq!(c.partition, "aws-us-gov");
    }

    #[test]
    fn a_recovery_window_outside_7_to_30_whole_days_is_refused_at_start_up() {
        for window in ["6d", "31d", "0s", "170h", "7"] {
            let err = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_RECOVERY_WINDOW", window)]).unwrap_err();
            assert_eq!(err.variable, "VAULT_RECOVERY_WINDOW", "{window}");
            let text = err.to_string();
            assert!(text.contains("VAULT_RECOVERY_WINDOW is"), "{window}: {text}");
        }
        let err = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_RECOVERY_WINDOW", "6d")]).unwrap_err().to_string();
        assert_eq!(
            err,
            "configuration: VAULT_RECOVERY_WINDOW is 6d; expected a whole number of days from 7d to 30d (Secrets \
             Manager's recovery window)"
        );
        let err = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_RECOVERY_WINDOW", "31d")]).unwrap_err().to_string();
        assert!(err.starts_with("configuration: VAULT_RECOVERY_WINDOW is 31d; expected"), "{err}");
    }

    #[test]
    fn member_account_roles_are_a_comma_separated_list() {
        let c = config(&[
            ("REGISTRY_BUCKET", "r-b"),
            ("MEMBER_ACCOUNT_ROLES", " arn:aws:iam::111111111111:role/m , arn:aws:iam::222222222222:role/m,"),
            ("MEMBER_ROLE_EXTERNAL_ID", "shared-secret-id"),
        ])
        .unwrap();
        let accounts: Vec<&str> = c.member_roles.iter().map(|m| m.account_id.as_str()).collect();
        assert_eq!(accounts, ["111111111111", "222222222222"]);
        assert_eq!(c.member_external_id.as_deref(), Some("shared-secret-id"));
    }

    #[test]
    fn admin_scope_may_list_several_scopes() {
        let c = config(&[("REGISTRY_BUCKET", "r-b"), ("ADMIN_SCOPE", "admin, admin.iam:write")]).unwrap();
        assert_eq!(c.admin_scopes, vec!["admin", "admin.iam:write"]);
    }
}
