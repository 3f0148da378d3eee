//! The key vault in AWS Secrets Manager: one secret per org, named
//! `{prefix}{orgId}`, a version per rotation (its client request token is the
//! rotation id, so a retried store is idempotent), staged `AWSPENDING` before
//! the commit and `AWSCURRENT` after it (Secrets Manager moves the old current
//! to `AWSPREVIOUS`).

use async_trait::async_trait;
use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
use aws_sdk_secretsmanager::operation::delete_secret::DeleteSecretError;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
use aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;
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
    /// One request once the org's secret exists (the first rotation creates it).
    async fn put_pending(&self, org: &OrgId, version: &str, key: &NewKey) -> Result<(), PortError> {
        let value = secret_value(key);
        let put = || {
            self.client
                .put_secret_value()
                .secret_id(self.secret_name(org))
                .client_request_token(version)
                .secret_string(value.expose_secret())
                .version_stages("AWSPENDING")
                .send()
        };
        match put().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(PutSecretValueError::ResourceNotFoundException(_))) => {
                self.ensure_secret(org).await?;
                put().await.map(|_| ()).map_err(|e| classify("secretsmanager", "PutSecretValue", &e))
            }
            Err(e) => Err(classify("secretsmanager", "PutSecretValue", &e)),
        }
    }

    /// One request: `UpdateSecretVersionStage` with `RemoveFromVersionId`
    /// (Secrets Manager's own compare-and-swap: refused when the label is not
    /// on that version; without it, refused when the label is on any version).
    /// `AWSPENDING` stays on the promoted version until the next rotation's
    /// pending version takes it, as in Secrets Manager's own rotation: a
    /// version that is both current and pending is a finished rotation.
    async fn promote(&self, org: &OrgId, version: &str, replacing: Option<&str>) -> Result<(), PortError> {
        if replacing == Some(version) {
            return Ok(());
        }
        let mut request = self
            .client
            .update_secret_version_stage()
            .secret_id(self.secret_name(org))
            .version_stage("AWSCURRENT")
            .move_to_version_id(version);
        if let Some(old) = replacing {
            request = request.remove_from_version_id(old);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // The label is not where the caller said: someone moved it.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateSecretVersionStageError::InvalidParameterException(_))
                ) =>
            {
                Err(PortError::Conflict)
            }
            Err(e) => Err(classify("secretsmanager", "UpdateSecretVersionStage", &e)),
        }
    }

    async fn get(&self, org: &OrgId, version: &str) -> Result<Option<NewKey>, PortError> {
        let out = match self.client.get_secret_value().secret_id(self.secret_name(org)).version_id(version).send().await
        {
            Ok(out) => out,
            Err(e) if matches!(e.as_service_error(), Some(GetSecretValueError::ResourceNotFoundException(_))) => {
                return Ok(None)
            }
            Err(e) => return Err(classify("secretsmanager", "GetSecretValue", &e)),
        };
        let unreadable = || PortError::Unavailable {
            service: "secretsmanager",
            operation: "GetSecretValue",
            detail: "the stored version is not an access key".into(),
        };
        let value: serde_json::Value =
            serde_json::from_str(out.secret_string().ok_or_else(unreadable)?).map_err(|_| unreadable())?;
        match (value["accessKeyId"].as_str(), value["secretAccessKey"].as_str()) {
            (Some(id), Some(secret)) => Ok(Some(NewKey {
                access_key_id: id.to_owned(),
                secret_access_key: SecretString::from(secret.to_owned()),
            })),
            _ => Err(unreadable()),
        }
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
