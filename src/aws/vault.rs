//! The key vault in AWS Secrets Manager: one secret per org, named
//! `{prefix}{orgId}`, a version per rotation (its client request token is the
//! rotation id, so a retried store is idempotent), staged `AWSPENDING` before
//! the commit and `AWSCURRENT` after it (Secrets Manager moves the old current
//! to `AWSPREVIOUS`).

use async_trait::async_trait;
use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
use aws_sdk_secretsmanager::operation::delete_secret::DeleteSecretError;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretError;
use aws_sdk_secretsmanager::types::Tag;
use secrecy::{ExposeSecret, SecretString};

use super::classify;
use crate::core::domain::OrgId;
use crate::core::ports::{KeyVault, NewKey, PortError};

#[derive(Debug, Clone)]
pub struct SecretsVault {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl SecretsVault {
    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: impl Into<String>) -> Self {
        Self { client, prefix: prefix.into() }
    }

    pub fn secret_name(&self, org: &OrgId) -> String {
        format!("{}{org}", self.prefix)
    }

    async fn ensure_secret(&self, org: &OrgId) -> Result<(), PortError> {
        let tag = Tag::builder().key("s3-key-rotation:org").value(org.as_str()).build();
        match self
            .client
            .create_secret()
            .name(self.secret_name(org))
            .description(format!("IAM access key of org {org} for its managed bucket (s3-key-rotation)"))
            .tags(tag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(CreateSecretError::ResourceExistsException(_))) => Ok(()),
            Err(e) => Err(classify("secretsmanager", "CreateSecret", &e)),
        }
    }

    /// The version ids of the secret by stage.
    async fn versions(&self, org: &OrgId) -> Result<Option<Vec<(String, Vec<String>)>>, PortError> {
        match self.client.describe_secret().secret_id(self.secret_name(org)).send().await {
            Ok(out) => Ok(Some(
                out.version_ids_to_stages()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            )),
            Err(e) if matches!(e.as_service_error(), Some(DescribeSecretError::ResourceNotFoundException(_))) => {
                Ok(None)
            }
            Err(e) => Err(classify("secretsmanager", "DescribeSecret", &e)),
        }
    }
}

/// The secret's value: what a consumer needs to build S3 credentials.
fn secret_value(key: &NewKey) -> SecretString {
    SecretString::from(
        serde_json::json!({
            "accessKeyId": key.access_key_id,
            "secretAccessKey": key.secret_access_key.expose_secret(),
        })
        .to_string(),
    )
}

#[async_trait]
impl KeyVault for SecretsVault {
    async fn put_pending(&self, org: &OrgId, version: &str, key: &NewKey) -> Result<(), PortError> {
        self.ensure_secret(org).await?;
        let value = secret_value(key);
        self.client
            .put_secret_value()
            .secret_id(self.secret_name(org))
            .client_request_token(version)
            .secret_string(value.expose_secret())
            .version_stages("AWSPENDING")
            .send()
            .await
            .map_err(|e| classify("secretsmanager", "PutSecretValue", &e))?;
        Ok(())
    }

    async fn promote(&self, org: &OrgId, version: &str) -> Result<(), PortError> {
        let versions = self.versions(org).await?.unwrap_or_default();
        let current =
            versions.iter().find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT")).map(|(id, _)| id.clone());
        if current.as_deref() != Some(version) {
            let mut request = self
                .client
                .update_secret_version_stage()
                .secret_id(self.secret_name(org))
                .version_stage("AWSCURRENT")
                .move_to_version_id(version);
            if let Some(old) = &current {
                request = request.remove_from_version_id(old);
            }
            request.send().await.map_err(|e| classify("secretsmanager", "UpdateSecretVersionStage", &e))?;
        }
        let pending = versions.iter().any(|(id, stages)| id == version && stages.iter().any(|s| s == "AWSPENDING"));
        if pending {
            self.client
                .update_secret_version_stage()
                .secret_id(self.secret_name(org))
                .version_stage("AWSPENDING")
                .remove_from_version_id(version)
                .send()
                .await
                .map_err(|e| classify("secretsmanager", "UpdateSecretVersionStage", &e))?;
        }
        Ok(())
    }

    async fn current_version(&self, org: &OrgId) -> Result<Option<String>, PortError> {
        Ok(self
            .versions(org)
            .await?
            .and_then(|v| v.into_iter().find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT")).map(|(id, _)| id)))
    }

    async fn allow_reader(&self, org: &OrgId, principal: &str) -> Result<(), PortError> {
        self.ensure_secret(org).await?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "OrgReadsItsOwnKey",
                "Effect": "Allow",
                "Principal": { "AWS": principal },
                "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                "Resource": "*"
            }]
        });
        self.client
            .put_resource_policy()
            .secret_id(self.secret_name(org))
            .resource_policy(policy.to_string())
            .block_public_policy(true)
            .send()
            .await
            .map_err(|e| classify("secretsmanager", "PutResourcePolicy", &e))?;
        Ok(())
    }

    async fn delete(&self, org: &OrgId) -> Result<(), PortError> {
        match self
            .client
            .delete_secret()
            .secret_id(self.secret_name(org))
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteSecretError::ResourceNotFoundException(_))) => Ok(()),
            Err(e) => Err(classify("secretsmanager", "DeleteSecret", &e)),
        }
    }
}
