//! The orgs' IAM users and their access keys.

use async_trait::async_trait;
use aws_sdk_iam::operation::create_access_key::CreateAccessKeyError;
use aws_sdk_iam::operation::create_user::CreateUserError;
use aws_sdk_iam::operation::delete_access_key::DeleteAccessKeyError;
use aws_sdk_iam::operation::delete_user::DeleteUserError;
use aws_sdk_iam::operation::delete_user_policy::DeleteUserPolicyError;
use aws_sdk_iam::operation::list_access_keys::ListAccessKeysError;
use aws_sdk_iam::operation::update_access_key::UpdateAccessKeyError;
use aws_sdk_iam::types::{StatusType, Tag};
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use std::sync::Arc;

use super::accounts::MemberAccounts;
use super::classify;
use crate::core::enrollment::user_policy;
use crate::core::ports::{AccessKeys, IamKey, IamUser, KeyUse, NewKey, PortError, UserSpec};

/// The name of the inline policy that lets an org's user read its prefix.
pub const POLICY_NAME: &str = "s3-key-rotation-read-own-prefix";

/// IAM, for the orgs' users: the home account's, and each member account's
/// through its role.
#[derive(Debug, Clone)]
pub struct IamKeys {
    client: aws_sdk_iam::Client,
    members: Arc<MemberAccounts>,
    /// The partition of the ARNs in the users' policies (`ARN_PARTITION`).
    partition: String,
    /// `ORG_USER_BOUNDARY`: the permissions boundary of every org user (its
    /// ARN in the home account; a member account's has that account's id).
    boundary: Option<String>,
}

impl IamKeys {
    /// The home account only, in the `aws` partition.
    pub fn new(client: aws_sdk_iam::Client) -> Self {
        let members = MemberAccounts::new(aws_config::SdkConfig::builder().build(), &[], None);
        Self::with_members(client, Arc::new(members), "aws")
    }

    pub fn with_members(client: aws_sdk_iam::Client, members: Arc<MemberAccounts>, partition: &str) -> Self {
        Self { client, members, partition: partition.to_owned(), boundary: None }
    }

    /// Org users are created (and adopted users given) the permissions
    /// boundary `arn`, the policy of that name in each user's account.
    pub fn with_boundary(self, arn: Option<String>) -> Self {
        Self { boundary: arn, ..self }
    }

    /// The boundary of a user of `account` (`None`: the home account).
    fn boundary_for(&self, account: Option<&str>) -> Option<String> {
        let arn = self.boundary.as_deref()?;
        let Some(account) = account else { return Some(arn.to_owned()) };
        let fields: Vec<&str> = arn.splitn(6, ':').collect();
        Some(match fields.as_slice() {
            [arn, partition, service, region, _, resource] => {
                format!("{arn}:{partition}:{service}:{region}:{account}:{resource}")
            }
            _ => arn.to_owned(),
        })
    }

    /// The client of the user's account.
    async fn client(&self, account: Option<&str>) -> Result<&aws_sdk_iam::Client, PortError> {
        match account {
            None => Ok(&self.client),
            Some(account) => self.members.iam(account).await,
        }
    }
}

#[async_trait]
impl AccessKeys for IamKeys {
    async fn ensure_user(&self, spec: &UserSpec) -> Result<(), PortError> {
        let client = self.client(spec.account.as_deref()).await?;
        let boundary = self.boundary_for(spec.account.as_deref());
        let created = client
            .create_user()
            .user_name(&spec.user_name)
            .path(&spec.path)
            .set_permissions_boundary(boundary.clone())
            .tags(Tag::builder().key("s3-key-rotation:org").value(spec.org.as_str()).build().map_err(|e| {
                PortError::Unavailable { service: "iam", operation: "CreateUser", detail: e.to_string() }
            })?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if matches!(e.as_service_error(), Some(CreateUserError::EntityAlreadyExistsException(_))) => {
                // A user made before (an adopted one, or an enrollment run again):
                // it gets the boundary before any policy is written to it, as the
                // roles' iam:PermissionsBoundary conditions require.
                if let Some(boundary) = &boundary {
                    client
                        .put_user_permissions_boundary()
                        .user_name(&spec.user_name)
                        .permissions_boundary(boundary)
                        .send()
                        .await
                        .map_err(|e| classify("iam", "PutUserPermissionsBoundary", &e))?;
                }
            }
            Err(e) => return Err(classify("iam", "CreateUser", &e)),
        }
        client
            .put_user_policy()
            .user_name(&spec.user_name)
            .policy_name(POLICY_NAME)
            .policy_document(user_policy(&self.partition, &spec.bucket, &spec.prefix).to_string())
            .send()
            .await
            .map_err(|e| classify("iam", "PutUserPolicy", &e))?;
        Ok(())
    }

    async fn create_user(&self, spec: &UserSpec) -> Result<Vec<IamKey>, PortError> {
        let client = self.client(spec.account.as_deref()).await?;
        let tag =
            Tag::builder().key("s3-key-rotation:org").value(spec.org.as_str()).build().map_err(|e| {
                PortError::Unavailable { service: "iam", operation: "CreateUser", detail: e.to_string() }
            })?;
        let boundary = self.boundary_for(spec.account.as_deref());
        let created = client
            .create_user()
            .user_name(&spec.user_name)
            .path(&spec.path)
            .set_permissions_boundary(boundary)
            .tags(tag)
            .send()
            .await;
        match created {
            Ok(_) => Ok(Vec::new()),
            Err(e) if matches!(e.as_service_error(), Some(CreateUserError::EntityAlreadyExistsException(_))) => {
                self.list_keys(&IamUser { account: spec.account.clone(), name: spec.user_name.clone() }).await
            }
            Err(e) => Err(classify("iam", "CreateUser", &e)),
        }
    }

    async fn list_keys(&self, user: &IamUser) -> Result<Vec<IamKey>, PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let mut pages = client.list_access_keys().user_name(&user.name).into_paginator().items().send();
        let mut keys = Vec::new();
        while let Some(item) = pages.next().await {
            let meta = match item {
                Ok(meta) => meta,
                Err(e) if matches!(e.as_service_error(), Some(ListAccessKeysError::NoSuchEntityException(_))) => {
                    return Err(PortError::NoSuchUser)
                }
                Err(e) => return Err(classify("iam", "ListAccessKeys", &e)),
            };
            let Some(access_key_id) = meta.access_key_id else {
                continue;
            };
            keys.push(IamKey {
                access_key_id,
                active: meta.status == Some(StatusType::Active),
                created_at: meta.create_date.and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos())),
            });
        }
        Ok(keys)
    }

    async fn create_key(&self, user: &IamUser) -> Result<NewKey, PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let output = match client.create_access_key().user_name(&user.name).send().await {
            Ok(output) => output,
            Err(e) => {
                return Err(match e.as_service_error() {
                    Some(CreateAccessKeyError::LimitExceededException(_)) => PortError::QuotaExceeded,
                    Some(CreateAccessKeyError::NoSuchEntityException(_)) => PortError::NoSuchUser,
                    _ => classify("iam", "CreateAccessKey", &e),
                })
            }
        };
        let key = output.access_key.ok_or_else(|| PortError::Unavailable {
            service: "iam",
            operation: "CreateAccessKey",
            detail: "no key in the answer".into(),
        })?;
        Ok(NewKey { access_key_id: key.access_key_id, secret_access_key: SecretString::from(key.secret_access_key) })
    }

    async fn set_active(&self, user: &IamUser, access_key_id: &str, active: bool) -> Result<(), PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let status = if active { StatusType::Active } else { StatusType::Inactive };
        match client.update_access_key().user_name(&user.name).access_key_id(access_key_id).status(status).send().await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(UpdateAccessKeyError::NoSuchEntityException(_))) => Ok(()),
            Err(e) => Err(classify("iam", "UpdateAccessKey", &e)),
        }
    }

    async fn delete_key(&self, user: &IamUser, access_key_id: &str) -> Result<(), PortError> {
        let client = self.client(user.account.as_deref()).await?;
        match client.delete_access_key().user_name(&user.name).access_key_id(access_key_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteAccessKeyError::NoSuchEntityException(_))) => Ok(()),
            Err(e) => Err(classify("iam", "DeleteAccessKey", &e)),
        }
    }

    async fn delete_user(&self, user: &IamUser) -> Result<(), PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let keys = match self.list_keys(user).await {
            Ok(keys) => keys,
            Err(PortError::NoSuchUser) => return Ok(()),
            Err(e) => return Err(e),
        };
        for key in keys {
            self.delete_key(user, &key.access_key_id).await?;
        }
        match client.delete_user_policy().user_name(&user.name).policy_name(POLICY_NAME).send().await {
            Ok(_) => {}
            Err(e) if matches!(e.as_service_error(), Some(DeleteUserPolicyError::NoSuchEntityException(_))) => {}
            Err(e) => return Err(classify("iam", "DeleteUserPolicy", &e)),
        }
        match client.delete_user().user_name(&user.name).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteUserError::NoSuchEntityException(_))) => Ok(()),
            Err(e) => Err(classify("iam", "DeleteUser", &e)),
        }
    }

    async fn check_account(&self, account: Option<&str>) -> Result<(), PortError> {
        match account {
            None => Ok(()),
            Some(account) => self.members.check(account).await,
        }
    }

    async fn last_used(&self, user: &IamUser, access_key_id: &str) -> Result<Option<KeyUse>, PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let output = match client.get_access_key_last_used().access_key_id(access_key_id).send().await {
            Ok(output) => output,
            // A key that is gone has no use to report.
            Err(e) if super::error_code(&e) == Some("NoSuchEntity") => return Ok(None),
            Err(e) => return Err(classify("iam", "GetAccessKeyLastUsed", &e)),
        };
        let Some(used) = output.access_key_last_used else { return Ok(None) };
        let Some(at) = used.last_used_date.and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos()))
        else {
            return Ok(None);
        };
        Ok(Some(KeyUse { at, service: used.service_name, region: used.region }))
    }

    async fn other_policies(&self, user: &IamUser) -> Result<Vec<String>, PortError> {
        let client = self.client(user.account.as_deref()).await?;
        let mut found = Vec::new();
        let mut inline = client.list_user_policies().user_name(&user.name).into_paginator().items().send();
        while let Some(name) = inline.next().await {
            let name = name.map_err(|e| classify("iam", "ListUserPolicies", &e))?;
            if name != POLICY_NAME {
                found.push(format!("inline policy {name}"));
            }
        }
        let mut attached = client.list_attached_user_policies().user_name(&user.name).into_paginator().items().send();
        while let Some(policy) = attached.next().await {
            let policy = policy.map_err(|e| classify("iam", "ListAttachedUserPolicies", &e))?;
            found.push(format!("attached policy {}", policy.policy_arn().unwrap_or("?")));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_iam::operation::create_access_key::{CreateAccessKeyError, CreateAccessKeyOutput};
    use aws_sdk_iam::operation::create_user::CreateUserError;
    use aws_sdk_iam::operation::delete_access_key::DeleteAccessKeyError;
    use aws_sdk_iam::operation::list_access_keys::{ListAccessKeysError, ListAccessKeysOutput};
    use aws_sdk_iam::operation::put_user_policy::PutUserPolicyOutput;
    use aws_sdk_iam::types::error::{EntityAlreadyExistsException, LimitExceededException, NoSuchEntityException};
    use aws_sdk_iam::types::{AccessKey, AccessKeyMetadata};
    use aws_sdk_iam::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_types::retry::RetryConfig;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::core::domain::OrgId;

    fn keys(rules: &[&Rule]) -> IamKeys {
        let client = mock_client!(aws_sdk_iam, RuleMode::Sequential, rules, |c| c
            .retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(1))));
        IamKeys::new(client)
    }

    fn throttled() -> aws_smithy_runtime_api::http::Response {
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>r</RequestId></ErrorResponse>";
        aws_smithy_runtime_api::http::Response::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap(),
            aws_smithy_types::body::SdkBody::from(body),
        )
    }

    fn new_key() -> CreateAccessKeyOutput {
        CreateAccessKeyOutput::builder()
            .access_key(
                AccessKey::builder()
                    .user_name("org-1")
                    .access_key_id("AKIANEW")
                    .status(StatusType::Active)
                    .secret_access_key("very-secret")
                    .build()
                    .unwrap(),
            )
            .build()
    }

    #[tokio::test]
    async fn the_key_quota_and_a_missing_user_are_told_apart() {
        let quota = mock!(Client::create_access_key)
            .then_error(|| CreateAccessKeyError::LimitExceededException(LimitExceededException::builder().build()));
        assert_eq!(keys(&[&quota]).create_key(&IamUser::home("org-1")).await.unwrap_err(), PortError::QuotaExceeded);
        let missing = mock!(Client::create_access_key)
            .then_error(|| CreateAccessKeyError::NoSuchEntityException(NoSuchEntityException::builder().build()));
        assert_eq!(keys(&[&missing]).create_key(&IamUser::home("org-1")).await.unwrap_err(), PortError::NoSuchUser);
        let listed = mock!(Client::list_access_keys)
            .then_error(|| ListAccessKeysError::NoSuchEntityException(NoSuchEntityException::builder().build()));
        assert_eq!(keys(&[&listed]).list_keys(&IamUser::home("org-1")).await.unwrap_err(), PortError::NoSuchUser);
    }

    #[tokio::test]
    async fn throttling_is_retried_with_backoff_by_the_sdk() {
        let rule = mock!(Client::create_access_key)
            .sequence()
            .http_response(throttled)
            .http_response(throttled)
            .output(new_key)
            .build();
        let created = keys(&[&rule]).create_key(&IamUser::home("org-1")).await.unwrap();
        assert_eq!(rule.num_calls(), 3);
        assert_eq!(created.access_key_id, "AKIANEW");
        assert_eq!(created.secret_access_key.expose_secret(), "very-secret");
        assert!(!format!("{created:?}").contains("very-secret"), "Debug hides the secret");
    }

    #[tokio::test]
    async fn throttling_that_outlasts_the_retries_is_reported_as_throttling() {
        let rule = mock!(Client::create_access_key).sequence().http_response(throttled).times(3).build();
        let err = keys(&[&rule]).create_key(&IamUser::home("org-1")).await.unwrap_err();
        assert_eq!(rule.num_calls(), 3);
        assert_eq!(err, PortError::Throttled { service: "iam", operation: "CreateAccessKey" });
    }

    #[tokio::test]
    async fn deleting_or_deactivating_a_key_that_is_gone_is_not_an_error() {
        let gone = mock!(Client::delete_access_key)
            .then_error(|| DeleteAccessKeyError::NoSuchEntityException(NoSuchEntityException::builder().build()));
        keys(&[&gone]).delete_key(&IamUser::home("org-1"), "AKIAOLD").await.unwrap();
        let gone = mock!(Client::update_access_key)
            .then_error(|| UpdateAccessKeyError::NoSuchEntityException(NoSuchEntityException::builder().build()));
        keys(&[&gone]).set_active(&IamUser::home("org-1"), "AKIAOLD", false).await.unwrap();
    }

    #[tokio::test]
    async fn ensure_user_is_idempotent_and_puts_the_read_only_policy() {
        let exists = mock!(Client::create_user)
            .match_requests(|r| r.path() == Some("/managed-s3/") && r.user_name() == Some("org-42"))
            .then_error(|| {
                CreateUserError::EntityAlreadyExistsException(EntityAlreadyExistsException::builder().build())
            });
        let policy = mock!(Client::put_user_policy)
            .match_requests(|r| {
                r.policy_name() == Some(POLICY_NAME)
                    && r.policy_document().is_some_and(|d| d.contains("arn:aws:s3:::logs/42/*"))
            })
            .then_output(|| PutUserPolicyOutput::builder().build());
        let spec = UserSpec {
            user_name: "org-42".into(),
            account: None,
            path: "/managed-s3/".into(),
            org: OrgId::parse("42").unwrap(),
            bucket: "logs".into(),
            prefix: "42/".into(),
        };
        keys(&[&exists, &policy]).ensure_user(&spec).await.unwrap();
        assert_eq!((exists.num_calls(), policy.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn listed_keys_carry_their_status() {
        let listed = mock!(Client::list_access_keys).then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(
                    AccessKeyMetadata::builder().access_key_id("AKIA1").status(StatusType::Active).build(),
                )
                .access_key_metadata(
                    AccessKeyMetadata::builder().access_key_id("AKIA2").status(StatusType::Inactive).build(),
                )
                .set_is_truncated(Some(false))
                .build()
                .unwrap()
        });
        let found = keys(&[&listed]).list_keys(&IamUser::home("org-1")).await.unwrap();
        assert_eq!(
            found.iter().map(|k| (k.access_key_id.as_str(), k.active)).collect::<Vec<_>>(),
            [("AKIA1", true), ("AKIA2", false)]
        );
    }
}
