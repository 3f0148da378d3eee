//! The member accounts: where org users live besides the home account, and
//! the roles through which the service reaches them.

use super::{ConfigError, Vars};
use crate::core::accounts::MemberRole;

/// Read by the programs that touch org users' keys (rotate-key,
/// scheduled-rotation, sweep-worker, the CLI).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MembersConfig {
    /// `MEMBER_ACCOUNT_ROLES`: the role to assume in each member account (a
    /// comma-separated list of role ARNs); empty: every org user lives in the
    /// home account.
    pub member_roles: Vec<MemberRole>,
    /// `MEMBER_ROLE_EXTERNAL_ID`: the external id the member roles require.
    pub member_external_id: Option<String>,
}

impl MembersConfig {
    pub const VARIABLES: &'static [&'static str] = &["MEMBER_ACCOUNT_ROLES", "MEMBER_ROLE_EXTERNAL_ID"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let mut member_roles: Vec<MemberRole> = Vec::new();
        for arn in
            vars.get("MEMBER_ACCOUNT_ROLES").iter().flat_map(|v| v.split(',')).map(str::trim).filter(|a| !a.is_empty())
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
        Ok(Self { member_roles, member_external_id: vars.get("MEMBER_ROLE_EXTERNAL_ID") })
    }
}
