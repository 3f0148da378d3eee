//! The configuration: environment variables, read once at start-up and
//! validated there, with a message naming the variable and the expected form.
//!
//! By area: each area ([`RegistryConfig`], [`ApiConfig`], [`RotationConfig`],
//! …) reads and checks its own variables (its `VARIABLES`), and each program
//! composes only the areas it uses ([`RotationPolicyConfig`],
//! [`RotateKeyConfig`], [`SweepFunctionConfig`], and for the CLI [`Config`]
//! with the areas of its command), so that a malformed setting of one area
//! stops only the programs that read it.

mod api;
mod members;
mod org_users;
mod registry;
mod rotation;
mod sdk;
mod sweep;
mod vault;

pub use api::ApiConfig;
pub use members::MembersConfig;
pub use org_users::OrgUsersConfig;
pub use registry::RegistryConfig;
pub use rotation::{NotificationsConfig, RotationConfig, VerifyConfig};
pub use sdk::SdkConfig;
pub use sweep::SweepConfig;
pub use vault::VaultConfig;

use crate::core::duration::Duration;
use crate::core::enrollment::EnrollSettings;
use crate::core::rotation::RotationSettings;

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {variable} {problem}; expected {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
    pub expected: &'static str,
}

/// The environment as the areas read it (the process's, or a map in tests):
/// a variable set to blanks counts as unset.
pub struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Vars<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// A duration such as `90d`; `default` when unset.
    pub fn duration(&self, variable: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(variable) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|e: crate::core::duration::DurationError| ConfigError {
                variable,
                problem: format!("is invalid: {e}"),
                expected: "a duration such as 90d, 24h, 604800s",
            }),
        }
    }

    /// A whole number from 1 to `max`; `default` when unset.
    pub fn whole(
        &self,
        variable: &'static str,
        default: usize,
        max: usize,
        expected: &'static str,
    ) -> Result<usize, ConfigError> {
        match self.get(variable) {
            None => Ok(default),
            Some(text) => text.trim().parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or(ConfigError {
                variable,
                problem: format!("is '{text}'"),
                expected,
            }),
        }
    }
}

/// The areas of the configuration, each with its own variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Registry,
    Api,
    Rotation,
    Verify,
    Notifications,
    Sweep,
    Vault,
    Members,
    OrgUsers,
    Sdk,
}

impl Area {
    pub const ALL: &'static [Area] = &[
        Area::Registry,
        Area::Api,
        Area::Rotation,
        Area::Verify,
        Area::Notifications,
        Area::Sweep,
        Area::Vault,
        Area::Members,
        Area::OrgUsers,
        Area::Sdk,
    ];

    /// The variables the area reads.
    pub fn variables(self) -> &'static [&'static str] {
        match self {
            Area::Registry => RegistryConfig::VARIABLES,
            Area::Api => ApiConfig::VARIABLES,
            Area::Rotation => RotationConfig::VARIABLES,
            Area::Verify => VerifyConfig::VARIABLES,
            Area::Notifications => NotificationsConfig::VARIABLES,
            Area::Sweep => SweepConfig::VARIABLES,
            Area::Vault => VaultConfig::VARIABLES,
            Area::Members => MembersConfig::VARIABLES,
            Area::OrgUsers => OrgUsersConfig::VARIABLES,
            Area::Sdk => SdkConfig::VARIABLES,
        }
    }
}

/// The variables `areas` read, in order.
pub fn variables_of(areas: &[Area]) -> Vec<&'static str> {
    areas.iter().flat_map(|a| a.variables().iter().copied()).collect()
}

/// Each Lambda function's binary and the areas of its configuration: the
/// variables template.yaml gives it are exactly theirs.
pub const FUNCTIONS: &[(&str, &[Area])] = &[
    ("rotate-key", RotateKeyConfig::AREAS),
    ("rotation-policy", RotationPolicyConfig::AREAS),
    ("scheduled-rotation", SweepFunctionConfig::AREAS),
    ("sweep-worker", SweepFunctionConfig::AREAS),
];

/// The configuration of `rotation-policy`: it reads and writes the orgs'
/// policies and shows their keys' dates; it never rotates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPolicyConfig {
    pub registry: RegistryConfig,
    pub api: ApiConfig,
    pub rotation: RotationConfig,
    pub sdk: SdkConfig,
}

impl RotationPolicyConfig {
    pub const AREAS: &'static [Area] = &[Area::Registry, Area::Api, Area::Rotation, Area::Sdk];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(&lookup);
        Ok(Self {
            registry: RegistryConfig::from_vars(&vars)?,
            api: ApiConfig::from_vars(&vars)?,
            rotation: RotationConfig::from_vars(&vars)?,
            sdk: SdkConfig::from_vars(&vars)?,
        })
    }

    /// What the rotation-policy function needs besides the ports.
    pub fn settings(&self) -> crate::api::rotation_policy::PolicySettings {
        crate::api::rotation_policy::PolicySettings {
            caller: self.api.caller_rules(),
            max_key_age: self.rotation.max_key_age,
            automatic_lead: self.rotation.automatic_lead(),
        }
    }
}

/// The configuration of `rotate-key`: an org's rotation on its caller's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateKeyConfig {
    pub registry: RegistryConfig,
    pub api: ApiConfig,
    pub rotation: RotationConfig,
    pub verify: VerifyConfig,
    pub notifications: NotificationsConfig,
    pub vault: VaultConfig,
    pub members: MembersConfig,
    pub sdk: SdkConfig,
}

impl RotateKeyConfig {
    pub const AREAS: &'static [Area] = &[
        Area::Registry,
        Area::Api,
        Area::Rotation,
        Area::Verify,
        Area::Notifications,
        Area::Vault,
        Area::Members,
        Area::Sdk,
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(&lookup);
        let config = Self {
            registry: RegistryConfig::from_vars(&vars)?,
            api: ApiConfig::from_vars(&vars)?,
            rotation: RotationConfig::from_vars(&vars)?,
            verify: VerifyConfig::from_vars(&vars)?,
            notifications: NotificationsConfig::from_vars(&vars)?,
            vault: VaultConfig::from_vars(&vars)?,
            members: MembersConfig::from_vars(&vars)?,
            sdk: SdkConfig::from_vars(&vars)?,
        };
        config.rotation.check_lease(&config.verify, &config.sdk)?;
        Ok(config)
    }

    pub fn settings(&self) -> crate::api::rotate_key::RotateKeySettings {
        crate::api::rotate_key::RotateKeySettings {
            caller: self.api.caller_rules(),
            rotation: self.rotation.settings(),
        }
    }
}

/// The configuration of `scheduled-rotation` and `sweep-worker`: the sweep
/// (in process, or dispatched in slices and swept by the worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFunctionConfig {
    pub registry: RegistryConfig,
    pub rotation: RotationConfig,
    pub verify: VerifyConfig,
    pub notifications: NotificationsConfig,
    pub sweep: SweepConfig,
    pub vault: VaultConfig,
    pub members: MembersConfig,
    pub sdk: SdkConfig,
}

impl SweepFunctionConfig {
    pub const AREAS: &'static [Area] = &[
        Area::Registry,
        Area::Rotation,
        Area::Verify,
        Area::Notifications,
        Area::Sweep,
        Area::Vault,
        Area::Members,
        Area::Sdk,
    ];

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(&lookup);
        let registry = RegistryConfig::from_vars(&vars)?;
        let rotation = RotationConfig::from_vars(&vars)?;
        let config = Self {
            registry,
            verify: VerifyConfig::from_vars(&vars)?,
            notifications: NotificationsConfig::from_vars(&vars)?,
            sweep: SweepConfig::from_vars(&vars, &rotation)?,
            vault: VaultConfig::from_vars(&vars)?,
            members: MembersConfig::from_vars(&vars)?,
            sdk: SdkConfig::from_vars(&vars)?,
            rotation,
        };
        config.rotation.check_lease(&config.verify, &config.sdk)?;
        Ok(config)
    }

    pub fn sweep_settings(&self) -> crate::core::sweep::SweepSettings {
        self.sweep.settings(&self.rotation)
    }
}

/// Every area: what the operator CLI reads (the areas of its command, the
/// others at their defaults, see [`Config::for_areas`]) and the tests build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub registry: RegistryConfig,
    pub api: ApiConfig,
    pub rotation: RotationConfig,
    pub verify: VerifyConfig,
    pub notifications: NotificationsConfig,
    pub sweep: SweepConfig,
    pub vault: VaultConfig,
    pub members: MembersConfig,
    pub org_users: OrgUsersConfig,
    pub sdk: SdkConfig,
}

impl Config {
    /// Reads every area from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every area through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::for_areas(lookup, Area::ALL)
    }

    /// Reads `areas` through `lookup` (and always the registry); every other
    /// area takes its defaults without a look at its variables, so that a
    /// malformed one stops only the commands that use it.
    pub fn for_areas(lookup: impl Fn(&str) -> Option<String>, areas: &[Area]) -> Result<Self, ConfigError> {
        let given = Vars::new(&lookup);
        let none = |_: &str| None;
        let defaults = Vars::new(&none);
        let vars = |area: Area| if areas.contains(&area) { &given } else { &defaults };
        let registry = RegistryConfig::from_vars(&given)?;
        let org_users = OrgUsersConfig::from_vars(vars(Area::OrgUsers))?;
        let api = ApiConfig::from_vars(vars(Area::Api))?;
        let rotation = RotationConfig::from_vars(vars(Area::Rotation))?;
        let verify = VerifyConfig::from_vars(vars(Area::Verify))?;
        let vault = VaultConfig::from_vars(vars(Area::Vault))?;
        let notifications = NotificationsConfig::from_vars(vars(Area::Notifications))?;
        let sweep = SweepConfig::from_vars(vars(Area::Sweep), &rotation)?;
        let sdk = SdkConfig::from_vars(vars(Area::Sdk))?;
        if [Area::Rotation, Area::Verify, Area::Sdk].iter().any(|a| areas.contains(a)) {
            rotation.check_lease(&verify, &sdk)?;
        }
        let members = MembersConfig::from_vars(vars(Area::Members))?;
        Ok(Self { registry, api, rotation, verify, notifications, sweep, vault, members, org_users, sdk })
    }

    /// The configuration of the operator's `enroll`: each member account
    /// reached through its enrollment role (`MEMBER_ENROLLMENT_ROLE`, in the
    /// account and partition of its MEMBER_ACCOUNT_ROLES role) instead of the
    /// functions' role, which may not create users.
    pub fn for_enrollment(&self) -> Self {
        Self { members: self.org_users.enrollment_members(&self.members), ..self.clone() }
    }

    /// How the HTTP functions read the caller from the JWT authorizer's claims.
    pub fn caller_rules(&self) -> crate::api::caller::CallerRules {
        self.api.caller_rules()
    }

    pub fn rotation_settings(&self) -> RotationSettings {
        self.rotation.settings()
    }

    /// See [`RotationConfig::automatic_lead`].
    pub fn automatic_lead(&self) -> Duration {
        self.rotation.automatic_lead()
    }

    /// What the rotation-policy function needs besides the ports.
    pub fn policy_settings(&self) -> crate::api::rotation_policy::PolicySettings {
        crate::api::rotation_policy::PolicySettings {
            caller: self.caller_rules(),
            max_key_age: self.rotation.max_key_age,
            automatic_lead: self.automatic_lead(),
        }
    }

    pub fn sweep_settings(&self) -> crate::core::sweep::SweepSettings {
        self.sweep.settings(&self.rotation)
    }

    /// The enrollment settings; enrolling needs `MANAGED_BUCKET`.
    pub fn enroll_settings(&self) -> Result<EnrollSettings, ConfigError> {
        self.org_users.enroll_settings(&self.members)
    }
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
        assert_eq!(c.org_users.org_prefix_template, "{orgId}/");
        assert_eq!(c.org_users.iam_user_path, "/managed-s3/");
        assert_eq!(c.api.org_claim, "org_id");
        assert_eq!(c.api.admin_scopes, vec!["admin"]);
        assert_eq!(c.rotation.max_key_age, Duration::from_days(90));
        assert_eq!(c.rotation.rotations_per_hour, 5);
        assert!(c.verify.verify_new_key);
        assert_eq!((c.sdk.sdk_attempt_timeout.as_secs(), c.sdk.sdk_operation_timeout.as_secs()), (5, 15));
        assert_eq!(c.org_users.managed_bucket, None);
        assert!(c.members.member_roles.is_empty(), "no member accounts: every user in the home account");
        assert_eq!(
            (c.org_users.orgs_per_account, c.sweep.sweep_slice_size, c.sweep.sweep_queue_url.as_deref()),
            (4500, 1000, None)
        );
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
        assert_eq!(c.vault.vault_kms_key_id, None, "unset: the AWS-managed key, as before");
        assert_eq!(c.vault.vault_recovery_window, Duration::from_days(30));
        assert_eq!(c.org_users.partition, "aws");
        for key in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/s3-key-rotation-vault",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:123456789012:alias/s3-key-rotation-vault",
        ] {
            let c = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_KMS_KEY_ID", key)]).unwrap();
            assert_eq!(c.vault.vault_kms_key_id.as_deref(), Some(key));
        }
        for (window, days) in [("7d", 7), ("168h", 7), ("30d", 30), ("2592000s", 30)] {
            let c = config(&[("REGISTRY_BUCKET", "r-b"), ("VAULT_RECOVERY_WINDOW", window)]).unwrap();
            assert_eq!(c.vault.vault_recovery_window, Duration::from_days(days), "{window}");
        }
        let c = config(&[("REGISTRY_BUCKET", "r-b"), ("ARN_PARTITION", "aws-us-gov")]).unwrap();
        assert_eq!(c.org_users.partition, "aws-us-gov");
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
        let accounts: Vec<&str> = c.members.member_roles.iter().map(|m| m.account_id.as_str()).collect();
        assert_eq!(accounts, ["111111111111", "222222222222"]);
        assert_eq!(c.members.member_external_id.as_deref(), Some("shared-secret-id"));
    }

    #[test]
    fn admin_scope_may_list_several_scopes() {
        let c = config(&[("REGISTRY_BUCKET", "r-b"), ("ADMIN_SCOPE", "admin, admin.iam:write")]).unwrap();
        assert_eq!(c.api.admin_scopes, vec!["admin", "admin.iam:write"]);
    }

    /// The names a configuration's parser asks for.
    fn asked(parse: impl Fn(&dyn Fn(&str) -> Option<String>)) -> std::collections::BTreeSet<String> {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let lookup = |name: &str| {
            asked.borrow_mut().insert(name.to_owned());
            (name == "REGISTRY_BUCKET").then(|| "registry".to_owned())
        };
        parse(&lookup);
        asked.into_inner()
    }

    fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn each_configuration_reads_exactly_the_variables_of_its_areas() {
        type Parse = fn(&dyn Fn(&str) -> Option<String>) -> bool;
        let cases: &[(&str, &[Area], Parse)] = &[
            ("rotation-policy", RotationPolicyConfig::AREAS, |l| RotationPolicyConfig::from_lookup(l).is_ok()),
            ("rotate-key", RotateKeyConfig::AREAS, |l| RotateKeyConfig::from_lookup(l).is_ok()),
            ("sweep functions", SweepFunctionConfig::AREAS, |l| SweepFunctionConfig::from_lookup(l).is_ok()),
            ("the CLI, every area", Area::ALL, |l| Config::from_lookup(l).is_ok()),
        ];
        for (name, areas, parse) in cases {
            let read = asked(|lookup| assert!(parse(lookup), "{name}: the defaults are valid"));
            assert_eq!(read, set(&variables_of(areas)), "{name}");
        }
        for (binary, areas) in FUNCTIONS {
            let own = match *binary {
                "rotation-policy" => RotationPolicyConfig::AREAS,
                "rotate-key" => RotateKeyConfig::AREAS,
                _ => SweepFunctionConfig::AREAS,
            };
            assert_eq!(areas, &own, "{binary}");
        }
        // Each area's parser reads its own variables and nothing else.
        for area in Area::ALL {
            let read = asked(|lookup| {
                let vars = Vars::new(lookup);
                let rotation = RotationConfig::from_vars(&Vars::new(&|_| None)).unwrap();
                let ok = match area {
                    Area::Registry => RegistryConfig::from_vars(&vars).is_ok(),
                    Area::Api => ApiConfig::from_vars(&vars).is_ok(),
                    Area::Rotation => RotationConfig::from_vars(&vars).is_ok(),
                    Area::Verify => VerifyConfig::from_vars(&vars).is_ok(),
                    Area::Notifications => NotificationsConfig::from_vars(&vars).is_ok(),
                    Area::Sweep => SweepConfig::from_vars(&vars, &rotation).is_ok(),
                    Area::Vault => VaultConfig::from_vars(&vars).is_ok(),
                    Area::Members => MembersConfig::from_vars(&vars).is_ok(),
                    Area::OrgUsers => OrgUsersConfig::from_vars(&vars).is_ok(),
                    Area::Sdk => SdkConfig::from_vars(&vars).is_ok(),
                };
                assert!(ok, "{area:?}");
            });
            assert_eq!(read, set(area.variables()), "{area:?}");
        }
    }

    /// One area's malformed setting stops the programs that read the area and
    /// no other: for each area, a bad value of one of its variables.
    #[test]
    fn a_bad_setting_stops_only_the_programs_that_read_it() {
        let bad: &[(Area, &str, &str)] = &[
            (Area::Api, "ADMIN_SCOPE", ""), // no ADMIN_SCOPE value is malformed: skipped below
            (Area::Rotation, "MAX_KEY_AGE", "1h"),
            (Area::Verify, "VERIFY_NEW_KEY", "yes"),
            (Area::Notifications, "EVENT_BUS_NAME", ""), // no malformed value either
            (Area::Sweep, "SWEEP_SLICE_SIZE", "abc"),
            (Area::Vault, "VAULT_RECOVERY_WINDOW", "6d"),
            (Area::Members, "MEMBER_ACCOUNT_ROLES", "arn:aws:iam::1234:role/x"),
            (Area::OrgUsers, "IAM_USER_PATH", "managed"),
            (Area::Sdk, "SDK_ATTEMPT_TIMEOUT", "20s"),
        ];
        for (area, variable, value) in bad.iter().filter(|(_, _, value)| !value.is_empty()) {
            let lookup = |name: &str| match name {
                "REGISTRY_BUCKET" => Some("registry".to_owned()),
                name if name == *variable => Some(value.to_string()),
                _ => None,
            };
            let outcomes: [(&str, &[Area], Result<(), ConfigError>); 4] = [
                ("rotation-policy", RotationPolicyConfig::AREAS, RotationPolicyConfig::from_lookup(lookup).map(drop)),
                ("rotate-key", RotateKeyConfig::AREAS, RotateKeyConfig::from_lookup(lookup).map(drop)),
                (
                    "scheduled-rotation, sweep-worker",
                    SweepFunctionConfig::AREAS,
                    SweepFunctionConfig::from_lookup(lookup).map(drop),
                ),
                (
                    "the CLI's status",
                    &[
                        Area::Registry,
                        Area::Rotation,
                        Area::Verify,
                        Area::Notifications,
                        Area::Vault,
                        Area::Members,
                        Area::Sdk,
                    ],
                    Config::for_areas(
                        lookup,
                        &[
                            Area::Registry,
                            Area::Rotation,
                            Area::Verify,
                            Area::Notifications,
                            Area::Vault,
                            Area::Members,
                            Area::Sdk,
                        ],
                    )
                    .map(drop),
                ),
            ];
            for (program, areas, outcome) in outcomes {
                if areas.contains(area) {
                    let err = outcome.expect_err(program);
                    assert_eq!(err.variable, *variable, "{program}: {err}");
                    assert!(err.to_string().contains(variable) && err.to_string().contains("expected"), "{err}");
                } else {
                    assert_eq!(outcome, Ok(()), "{program} with {variable}={value}");
                }
            }
        }
        // The example of the sweep: rotation-policy and rotate-key start, scheduled-rotation does not.
        let lookup = |name: &str| match name {
            "REGISTRY_BUCKET" => Some("registry".to_owned()),
            "SWEEP_SLICE_SIZE" => Some("abc".to_owned()),
            _ => None,
        };
        assert!(RotationPolicyConfig::from_lookup(lookup).is_ok());
        assert!(RotateKeyConfig::from_lookup(lookup).is_ok());
        let err = SweepFunctionConfig::from_lookup(lookup).unwrap_err().to_string();
        assert_eq!(err, "configuration: SWEEP_SLICE_SIZE is 'abc'; expected a whole number from 1 to 5000");
        assert!(Config::from_lookup(lookup).is_err(), "every area: refused");
    }

    #[test]
    fn the_functions_settings_are_the_whole_configurations() {
        let vars = [
            ("REGISTRY_BUCKET", "r-b"),
            ("MAX_KEY_AGE", "30d"),
            ("ROTATION_GRACE_PERIOD", "2d"),
            ("ADMIN_SCOPE", "a,b"),
        ];
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let whole = Config::from_lookup(lookup).unwrap();
        let policy = RotationPolicyConfig::from_lookup(lookup).unwrap().settings();
        assert_eq!(format!("{policy:?}"), format!("{:?}", whole.policy_settings()));
        let rotate = RotateKeyConfig::from_lookup(lookup).unwrap().settings();
        assert_eq!(
            format!("{:?}", (rotate.caller, rotate.rotation)),
            format!("{:?}", (whole.caller_rules(), whole.rotation_settings()))
        );
        assert_eq!(
            format!("{:?}", SweepFunctionConfig::from_lookup(lookup).unwrap().sweep_settings()),
            format!("{:?}", whole.sweep_settings())
        );
    }
}
