//! The member accounts, reached by assuming their role: one IAM client per
//! account, built on first use and kept for the life of the process. Its
//! credentials come from the SDK's own `AssumeRoleProvider` and are cached by
//! the client's identity cache until shortly before they expire.

use std::collections::BTreeMap;

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use tokio::sync::OnceCell;

use crate::core::accounts::MemberRole;
use crate::core::ports::PortError;

/// The name of the functions' sessions in a member account (CloudTrail shows it).
const SESSION_NAME: &str = "s3-key-rotation";

#[derive(Debug)]
struct Member {
    role: MemberRole,
    iam: OnceCell<aws_sdk_iam::Client>,
}

/// The member accounts of the configuration, by account id.
#[derive(Debug)]
pub struct MemberAccounts {
    sdk: SdkConfig,
    external_id: Option<String>,
    members: BTreeMap<String, Member>,
}

impl MemberAccounts {
    pub fn new(sdk: SdkConfig, roles: &[MemberRole], external_id: Option<String>) -> Self {
        let sdk = with_clock_and_sleep(sdk);
        let members = roles
            .iter()
            .map(|role| (role.account_id.clone(), Member { role: role.clone(), iam: OnceCell::new() }))
            .collect();
        Self { sdk, external_id, members }
    }

    fn member(&self, account: &str) -> Result<&Member, PortError> {
        self.members.get(account).ok_or_else(|| PortError::Unavailable {
            service: "sts",
            operation: "AssumeRole",
            detail: format!("account {account} is not one of MEMBER_ACCOUNT_ROLES"),
        })
    }

    async fn provider(&self, role: &MemberRole) -> AssumeRoleProvider {
        let mut builder = AssumeRoleProvider::builder(&role.role_arn).session_name(SESSION_NAME).configure(&self.sdk);
        if let Some(id) = &self.external_id {
            builder = builder.external_id(id);
        }
        builder.build().await
    }

    /// Assumes the account's role once, for an error that names it.
    async fn assume(&self, role: &MemberRole) -> Result<AssumeRoleProvider, PortError> {
        let provider = self.provider(role).await;
        provider.provide_credentials().await.map_err(|e| not_assumable(role, &e))?;
        Ok(provider)
    }

    /// The IAM client of `account`, built (and its role assumed) on first use.
    pub async fn iam(&self, account: &str) -> Result<&aws_sdk_iam::Client, PortError> {
        let member = self.member(account)?;
        member
            .iam
            .get_or_try_init(|| async {
                let provider = self.assume(&member.role).await?;
                // A cache of the account's own: the assumed credentials are kept
                // until shortly before they expire, whatever else the process caches.
                let conf = aws_sdk_iam::config::Builder::from(&self.sdk)
                    .credentials_provider(provider)
                    .identity_cache(aws_sdk_iam::config::IdentityCache::lazy().build())
                    .build();
                Ok(aws_sdk_iam::Client::from_conf(conf))
            })
            .await
    }

    /// Whether the account's role can be assumed now (one STS call).
    pub async fn check(&self, account: &str) -> Result<(), PortError> {
        let member = self.member(account)?;
        self.assume(&member.role).await.map(|_| ())
    }
}

/// `sdk` with a clock and a sleep, which the role's STS client needs (a
/// configuration loaded from the environment has both; one built by hand, as
/// in the tests, may not).
fn with_clock_and_sleep(sdk: SdkConfig) -> SdkConfig {
    let mut builder = sdk.to_builder();
    if sdk.time_source().is_none() {
        builder = builder.time_source(aws_smithy_async::time::SystemTimeSource::new());
    }
    if sdk.sleep_impl().is_none() {
        builder.set_sleep_impl(aws_smithy_async::rt::sleep::default_async_sleep());
    }
    builder.build()
}

/// A refused or failed `AssumeRole`, without the credentials' details.
fn not_assumable(role: &MemberRole, err: &CredentialsError) -> PortError {
    let why = match err {
        CredentialsError::ProviderTimedOut(_) => "STS did not answer in time".to_owned(),
        CredentialsError::ProviderError(_) => {
            // STS's own words (AccessDenied and the role it refused), from the
            // innermost error: a request's ARNs, never a credential.
            let mut inner: &(dyn std::error::Error + 'static) = err;
            while let Some(next) = inner.source() {
                inner = next;
            }
            inner.to_string().chars().take(300).collect()
        }
        CredentialsError::CredentialsNotLoaded(_) => "the home account's own credentials are missing".to_owned(),
        _ => "the request failed".to_owned(),
    };
    PortError::Unavailable {
        service: "sts",
        operation: "AssumeRole",
        detail: format!("the role {} of account {} could not be assumed: {why}", role.role_arn, role.account_id),
    }
}
