//! The org users: what enrollment and adoption create (the users, their
//! policy and its boundary) and where; read by the CLI only (the functions
//! find all of it in each org's record).

use super::{ConfigError, MembersConfig, Vars};
use crate::core::accounts::MemberRole;
use crate::core::enrollment::EnrollSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUsersConfig {
    /// `MANAGED_BUCKET`: the bucket the orgs read; needed to enroll.
    pub managed_bucket: Option<String>,
    /// `ORG_PREFIX_TEMPLATE`: each org's prefix in the managed bucket.
    pub org_prefix_template: String,
    /// `IAM_USER_PATH`: path of the per-org IAM users.
    pub iam_user_path: String,
    /// `ARN_PARTITION`: the partition of the ARNs the service writes (`aws`,
    /// `aws-cn`, `aws-us-gov`, …); the template sets it from `AWS::Partition`.
    pub partition: String,
    /// `ORG_USER_BOUNDARY`: the ARN of the permissions boundary every org user
    /// is created with (template.yaml's OrgUserBoundary); a member account's
    /// user gets the policy of the same name in its own account. Unset: none.
    pub org_user_boundary: Option<String>,
    /// `MEMBER_ENROLLMENT_ROLE`: the name of the role through which the
    /// operator's `enroll` creates and adopts org users in a member account
    /// (member-account.yaml's EnrollmentRole; the functions' role there may not).
    pub member_enrollment_role: String,
    /// `ORGS_PER_ACCOUNT`: the most orgs placed in one member account (IAM
    /// allows 5,000 users an account).
    pub orgs_per_account: usize,
}

impl Default for OrgUsersConfig {
    /// The defaults: what a program that never creates an org user holds.
    fn default() -> Self {
        Self::from_vars(&Vars::new(&|_| None)).expect("the defaults are valid")
    }
}

impl OrgUsersConfig {
    pub const VARIABLES: &'static [&'static str] = &[
        "MANAGED_BUCKET",
        "ORG_PREFIX_TEMPLATE",
        "IAM_USER_PATH",
        "ARN_PARTITION",
        "ORG_USER_BOUNDARY",
        "MEMBER_ENROLLMENT_ROLE",
        "ORGS_PER_ACCOUNT",
    ];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let managed_bucket = vars.get("MANAGED_BUCKET");
        if let Some(b) = &managed_bucket {
            super::check_bucket("MANAGED_BUCKET", b)?;
        }
        let org_prefix_template = vars.get("ORG_PREFIX_TEMPLATE").unwrap_or_else(|| "{orgId}/".into());
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
        let iam_user_path = vars.get("IAM_USER_PATH").unwrap_or_else(|| "/managed-s3/".into());
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
        let partition = vars.get("ARN_PARTITION").map(|p| p.trim().to_owned()).unwrap_or_else(|| "aws".into());
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
        let org_user_boundary = vars.get("ORG_USER_BOUNDARY");
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
        let member_enrollment_role =
            vars.get("MEMBER_ENROLLMENT_ROLE").unwrap_or_else(|| "s3-key-rotation-enrollment".to_owned());
        // (Never empty: `get` answers an empty variable as unset.)
        if member_enrollment_role.len() > 64
            || !member_enrollment_role.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        {
            return Err(ConfigError {
                variable: "MEMBER_ENROLLMENT_ROLE",
                problem: format!("is '{member_enrollment_role}'"),
                expected: "an IAM role name (1 to 64 of letters, digits and +=,.@_-)",
            });
        }
        let orgs_per_account =
            vars.whole("ORGS_PER_ACCOUNT", 4500, 5000, "a whole number from 1 to 5000 (IAM's users per account)")?;
        Ok(Self {
            managed_bucket,
            org_prefix_template,
            iam_user_path,
            partition,
            org_user_boundary,
            member_enrollment_role,
            orgs_per_account,
        })
    }

    /// The member accounts as the operator's `enroll` reaches them: each
    /// through its enrollment role (`MEMBER_ENROLLMENT_ROLE`, in the account
    /// and partition of its MEMBER_ACCOUNT_ROLES role) instead of the
    /// functions' role, which may not create users.
    pub fn enrollment_members(&self, members: &MembersConfig) -> MembersConfig {
        let member_roles = members
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
        MembersConfig { member_roles, ..members.clone() }
    }

    /// The enrollment settings; enrolling needs `MANAGED_BUCKET`.
    pub fn enroll_settings(&self, members: &MembersConfig) -> Result<EnrollSettings, ConfigError> {
        let managed_bucket = self.managed_bucket.clone().ok_or(ConfigError {
            variable: "MANAGED_BUCKET",
            problem: "is not set".into(),
            expected: "the name of the bucket the orgs read (required to enroll)",
        })?;
        Ok(EnrollSettings {
            iam_user_path: self.iam_user_path.clone(),
            managed_bucket,
            prefix_template: self.org_prefix_template.clone(),
            members: members.member_roles.clone(),
            orgs_per_account: self.orgs_per_account,
        })
    }
}
