//! The orgs' IAM users and their access keys.

use async_trait::async_trait;
use aws_sdk_iam::operation::create_access_key::CreateAccessKeyError;
use aws_sdk_iam::operation::create_user::CreateUserError;
use aws_sdk_iam::operation::delete_access_key::DeleteAccessKeyError;
use aws_sdk_iam::operation::list_access_keys::ListAccessKeysError;
use aws_sdk_iam::operation::update_access_key::UpdateAccessKeyError;
use aws_sdk_iam::types::{StatusType, Tag};
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::classify;
use crate::core::enrollment::user_policy;
use crate::core::ports::{AccessKeys, IamKey, NewKey, PortError, UserSpec};

/// The name of the inline policy that lets an org's user read its prefix.
pub const POLICY_NAME: &str = "s3-key-rotation-read-own-prefix";

/// IAM, for the orgs' users.
#[derive(Debug, Clone)]
pub struct IamKeys {
    client: aws_sdk_iam::Client,
}

impl IamKeys {
    pub fn new(client: aws_sdk_iam::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl AccessKeys for IamKeys {
    async fn ensure_user(&self, spec: &UserSpec) -> Result<(), PortError> {
        let created = self
            .client
            .create_user()
            .user_name(&spec.user_name)
            .path(&spec.path)
            .tags(Tag::builder().key("s3-key-rotation:org").value(spec.org.as_str()).build().map_err(|e| {
                PortError::Unavailable { service: "iam", operation: "CreateUser", detail: e.to_string() }
            })?)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if matches!(e.as_service_error(), Some(CreateUserError::EntityAlreadyExistsException(_))) => {}
            Err(e) => return Err(classify("iam", "CreateUser", &e)),
        }
        self.client
            .put_user_policy()
            .user_name(&spec.user_name)
            .policy_name(POLICY_NAME)
            .policy_document(user_policy(&spec.bucket, &spec.prefix).to_string())
            .send()
            .await
            .map_err(|e| classify("iam", "PutUserPolicy", &e))?;
        Ok(())
    }

    async fn list_keys(&self, user: &str) -> Result<Vec<IamKey>, PortError> {
        let mut pages = self.client.list_access_keys().user_name(user).into_paginator().items().send();
        let mut keys = Vec::new();
        while let Some(item) = pages.next().await {
            let meta = match item {
                Ok(meta) => meta,
                Err(e) if matches!(e.as_service_error(), Some(ListAccessKeysError::NoSuchEntityException(_))) => {
                    return Err(PortError::NoSuchUser)
                }
                Err(e) => return Err(classify("iam", "ListAccessKeys", &e)),
            };
            let Some(access_key_id) = meta.access_key_id else { continue };
            keys.push(IamKey {
                access_key_id,
                active: meta.status == Some(StatusType::Active),
                created_at: meta.create_date.and_then(|d| DateTime::<Utc>::from_timestamp(d.secs(), d.subsec_nanos())),
            });
        }
        Ok(keys)
    }

    async fn create_key(&self, user: &str) -> Result<NewKey, PortError> {
        let output = match self.client.create_access_key().user_name(user).send().await {
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

    async fn set_active(&self, user: &str, access_key_id: &str, active: bool) -> Result<(), PortError> {
        let status = if active { StatusType::Active } else { StatusType::Inactive };
        match self.client.update_access_key().user_name(user).access_key_id(access_key_id).status(status).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(UpdateAccessKeyError::NoSuchEntityException(_))) => Ok(()),
            Err(e) => Err(classify("iam", "UpdateAccessKey", &e)),
        }
    }

    async fn delete_key(&self, user: &str, access_key_id: &str) -> Result<(), PortError> {
        match self.client.delete_access_key().user_name(user).access_key_id(access_key_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteAccessKeyError::NoSuchEntityException(_))) => Ok(()),
            Err(e) => Err(classify("iam", "DeleteAccessKey", &e)),
        }
    }
}
