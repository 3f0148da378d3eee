//! The HTTP functions' rules for their callers (the JWT authorizer's claims).

use super::{ConfigError, Vars};
use crate::api::caller::CallerRules;

/// `ORG_CLAIM` and `ADMIN_SCOPE`: read by rotate-key and rotation-policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `ORG_CLAIM`: the JWT claim naming the caller's org.
    pub org_claim: String,
    /// `ADMIN_SCOPE`: the scope a caller needs (a comma-separated list: any one of them).
    pub admin_scopes: Vec<String>,
}

impl ApiConfig {
    pub const VARIABLES: &'static [&'static str] = &["ORG_CLAIM", "ADMIN_SCOPE"];

    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let org_claim = vars.get("ORG_CLAIM").unwrap_or_else(|| "org_id".into());
        let admin_scopes = vars
            .get("ADMIN_SCOPE")
            .unwrap_or_else(|| "admin".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self { org_claim, admin_scopes })
    }

    /// How the HTTP functions read the caller from the JWT authorizer's claims.
    pub fn caller_rules(&self) -> CallerRules {
        CallerRules { org_claim: self.org_claim.clone(), admin_scopes: self.admin_scopes.clone() }
    }
}
