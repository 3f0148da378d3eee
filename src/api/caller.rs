//! The caller, as API Gateway's JWT authorizer vouches for it. The org always
//! comes from the token's claims, never from the request.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};

use crate::core::domain::OrgId;

/// How to read the authorizer's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerRules {
    /// The claim naming the caller's org (`ORG_CLAIM`).
    pub org_claim: String,
    /// The scopes that allow the call (`ADMIN_SCOPE`): any one of them.
    pub admin_scopes: Vec<String>,
}

/// An authenticated org admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub org: OrgId,
    /// The token's subject (`sub`, else `client_id`), for the audit trail.
    pub subject: String,
}

/// Why the caller may not call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("Forbidden: the request carries no JWT authorizer claims")]
    NoClaims,
    #[error("Forbidden: the token has no {0} claim")]
    NoOrgClaim(String),
    #[error("Forbidden: the token's {0} claim is not a valid org id")]
    BadOrgClaim(String),
    #[error("Forbidden: the token lacks the required scope ({0})")]
    MissingScope(String),
}

impl CallerRules {
    /// Reads the caller from `requestContext.authorizer.jwt`: the org claim and
    /// the scopes (the authorizer's `scopes`, or the `scope`/`scp` claim,
    /// space-separated, as issuers write it).
    pub fn caller(&self, req: &Request) -> Result<Caller, Forbidden> {
        let jwt = match req.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(ctx)) => ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()),
            _ => None,
        };
        let jwt = jwt.ok_or(Forbidden::NoClaims)?;
        let claim = jwt.claims.get(&self.org_claim).ok_or_else(|| Forbidden::NoOrgClaim(self.org_claim.clone()))?;
        let org = OrgId::parse(claim.trim()).map_err(|_| Forbidden::BadOrgClaim(self.org_claim.clone()))?;
        let mut scopes: Vec<&str> = jwt.scopes.iter().flatten().map(String::as_str).collect();
        for name in ["scope", "scp"] {
            if let Some(value) = jwt.claims.get(name) {
                scopes.extend(value.trim_matches(|c| c == '[' || c == ']').split([' ', ',']).filter(|s| !s.is_empty()));
            }
        }
        if !self.admin_scopes.iter().any(|wanted| scopes.contains(&wanted.as_str())) {
            return Err(Forbidden::MissingScope(self.admin_scopes.join(" or ")));
        }
        let subject = ["sub", "client_id"]
            .iter()
            .find_map(|name| jwt.claims.get(*name))
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Caller { org, subject })
    }
}
