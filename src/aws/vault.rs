//! The key vault in AWS Secrets Manager: one secret per org, named
//! `{prefix}{orgId}`, a version per rotation (its client request token is the
//! rotation id, so a retried store is idempotent), staged `AWSPENDING` before
//! the commit and `AWSCURRENT` after it (Secrets Manager moves the old current
//! to `AWSPREVIOUS`).
//!
//! Every secret is created with the vault's KMS key (`VAULT_KMS_KEY_ID`), so
//! that a reader in another account can decrypt it (the AWS-managed key
//! `aws/secretsmanager` serves its own account only). A deleted org's secret
//! is scheduled for deletion with a recovery window (`VAULT_RECOVERY_WINDOW`),
//! not purged: an org enrolled again within the window finds its secret's
//! name taken, and the secret is restored before it is written.

use async_trait::async_trait;
use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
use aws_sdk_secretsmanager::operation::delete_resource_policy::DeleteResourcePolicyError;
use aws_sdk_secretsmanager::operation::delete_secret::DeleteSecretError;
use aws_sdk_secretsmanager::operation::describe_secret::{DescribeSecretError, DescribeSecretOutput};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueError;
use aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;
use aws_sdk_secretsmanager::types::Tag;
use secrecy::{ExposeSecret, SecretString};
use tracing::warn;

use super::classify;
use crate::core::domain::OrgId;
use crate::core::duration::Duration;
use crate::core::ports::{KeyVault, NewKey, PortError};

#[derive(Debug, Clone)]
pub struct SecretsVault {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
    /// The KMS key new secrets are encrypted with (`None`: `aws/secretsmanager`).
    kms_key_id: Option<String>,
    /// Secrets Manager's `RecoveryWindowInDays` for a deleted org's secret (7 to 30).
    recovery_window_days: i64,
}

impl SecretsVault {
    /// A vault on the AWS-managed key whose deleted secrets can be restored for 30 days.
    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: impl Into<String>) -> Self {
        Self { client, prefix: prefix.into(), kms_key_id: None, recovery_window_days: 30 }
    }

    /// New secrets are encrypted with `key` (a key id, ARN or alias); `None`:
    /// the AWS-managed key.
    pub fn encrypted_with(mut self, key: Option<String>) -> Self {
        self.kms_key_id = key;
        self
    }

    /// A deleted org's secret can be restored for `window` (whole days, 7 to
    /// 30: the configuration checks it).
    pub fn recoverable_for(mut self, window: Duration) -> Self {
        self.recovery_window_days = (window.as_secs() / Duration::from_days(1).as_secs()) as i64;
        self
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
            .set_kms_key_id(self.kms_key_id.clone())
            .tags(tag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(CreateSecretError::ResourceExistsException(_))) => Ok(()),
            // AWS refuses the name of a secret scheduled for deletion (a
            // deleted org enrolled again within the recovery window).
            Err(e) if matches!(e.as_service_error(), Some(CreateSecretError::InvalidRequestException(_))) => {
                if self.restore_if_deleted(org).await? {
                    Ok(())
                } else {
                    Err(classify("secretsmanager", "CreateSecret", &e))
                }
            }
            Err(e) => Err(classify("secretsmanager", "CreateSecret", &e)),
        }
    }

    /// The org's secret as Secrets Manager describes it (`None`: there is none).
    async fn describe(&self, org: &OrgId) -> Result<Option<DescribeSecretOutput>, PortError> {
        match self.client.describe_secret().secret_id(self.secret_name(org)).send().await {
            Ok(out) => Ok(Some(out)),
            Err(e) if matches!(e.as_service_error(), Some(DescribeSecretError::ResourceNotFoundException(_))) => {
                Ok(None)
            }
            Err(e) => Err(classify("secretsmanager", "DescribeSecret", &e)),
        }
    }

    /// Whether the org's secret is scheduled for deletion (`DeletedDate` set).
    /// Asked only after Secrets Manager refused a request with
    /// `InvalidRequestException`, which has other causes too: the error's
    /// text is never parsed.
    async fn is_deleted(&self, org: &OrgId) -> Result<bool, PortError> {
        Ok(self.describe(org).await?.is_some_and(|d| d.deleted_date().is_some()))
    }

    /// Cancels the scheduled deletion of the org's secret, if it is scheduled
    /// (`Ok(false)`: it is not, and the caller's refusal stands). The secret
    /// comes back as it was deleted: its old versions (keys of the deleted
    /// user, which no longer work) and no resource policy (the deletion
    /// removed it); the next promotion moves `AWSCURRENT` off the old version.
    async fn restore_if_deleted(&self, org: &OrgId) -> Result<bool, PortError> {
        if !self.is_deleted(org).await? {
            return Ok(false);
        }
        self.client
            .restore_secret()
            .secret_id(self.secret_name(org))
            .send()
            .await
            .map_err(|e| classify("secretsmanager", "RestoreSecret", &e))?;
        warn!(secret = %self.secret_name(org), "restored the org's secret, which was scheduled for deletion");
        Ok(true)
    }

    /// Moves a secret made on the AWS-managed key (before the vault had a key
    /// of its own) to the vault's key: Secrets Manager re-encrypts its
    /// labelled versions, and a reader in another account can then decrypt it.
    async fn ensure_vault_key(&self, org: &OrgId) -> Result<(), PortError> {
        let Some(key) = &self.kms_key_id else { return Ok(()) };
        let on_managed_key = self.describe(org).await?.is_some_and(|d| d.kms_key_id().is_none());
        if on_managed_key {
            self.client
                .update_secret()
                .secret_id(self.secret_name(org))
                .kms_key_id(key)
                .send()
                .await
                .map_err(|e| classify("secretsmanager", "UpdateSecret", &e))?;
        }
        Ok(())
    }

    /// The full ARN of the org's secret (`None`: there is none yet), which a
    /// reader in another account needs to name it: `…:secret:{name}-AbCdEf`.
    pub async fn secret_arn(&self, org: &OrgId) -> Result<Option<String>, PortError> {
        Ok(self.describe(org).await?.and_then(|d| d.arn().map(str::to_owned)))
    }

    /// The version ids of the secret by stage.
    async fn versions(&self, org: &OrgId) -> Result<Option<Vec<(String, Vec<String>)>>, PortError> {
        Ok(self.describe(org).await?.map(|out| {
            out.version_ids_to_stages()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()
        }))
    }
}

/// The resource policy of an org's secret: `principal` (the org's own, e.g.
/// a role in the org's account) may read it, nothing else; `*` is the secret
/// itself. Together with the vault key's policy (only through Secrets
/// Manager) it is what lets the reader decrypt this secret and no other.
pub fn reader_policy(principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OrgReadsItsOwnKey",
            "Effect": "Allow",
            "Principal": { "AWS": principal },
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
            "Resource": "*"
        }]
    })
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
    /// One request once the org's secret exists (the first rotation creates
    /// it, or restores it when it is scheduled for deletion).
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
            // AWS refuses a value for a secret scheduled for deletion (a
            // deleted org enrolled again within the recovery window).
            Err(e) if matches!(e.as_service_error(), Some(PutSecretValueError::InvalidRequestException(_))) => {
                if !self.restore_if_deleted(org).await? {
                    return Err(classify("secretsmanager", "PutSecretValue", &e));
                }
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

    /// The resource policy names the one principal; the vault's KMS key lets
    /// any principal decrypt a vault secret only through Secrets Manager, so
    /// the principal reads this secret and no other (template.yaml, VaultKey).
    async fn allow_reader(&self, org: &OrgId, principal: &str) -> Result<(), PortError> {
        self.ensure_secret(org).await?;
        self.ensure_vault_key(org).await?;
        self.client
            .put_resource_policy()
            .secret_id(self.secret_name(org))
            .resource_policy(reader_policy(principal).to_string())
            .block_public_policy(true)
            .send()
            .await
            .map_err(|e| classify("secretsmanager", "PutResourcePolicy", &e))?;
        Ok(())
    }

    /// Schedules the deletion of the org's secret after the recovery window,
    /// having first removed its resource policy: while it waits, and if it is
    /// ever restored, no reader is granted it until an operator grants one
    /// again. A secret already scheduled (a deletion retried) or gone is not
    /// an error.
    async fn delete(&self, org: &OrgId) -> Result<(), PortError> {
        let name = self.secret_name(org);
        match self.client.delete_resource_policy().secret_id(&name).send().await {
            Ok(_) => {}
            Err(e) if matches!(e.as_service_error(), Some(DeleteResourcePolicyError::ResourceNotFoundException(_))) => {
                return Ok(())
            }
            Err(e) if matches!(e.as_service_error(), Some(DeleteResourcePolicyError::InvalidRequestException(_))) => {
                if self.is_deleted(org).await? {
                    return Ok(());
                }
                return Err(classify("secretsmanager", "DeleteResourcePolicy", &e));
            }
            Err(e) => return Err(classify("secretsmanager", "DeleteResourcePolicy", &e)),
        }
        match self
            .client
            .delete_secret()
            .secret_id(&name)
            .recovery_window_in_days(self.recovery_window_days)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteSecretError::ResourceNotFoundException(_))) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(DeleteSecretError::InvalidRequestException(_))) => {
                if self.is_deleted(org).await? {
                    Ok(())
                } else {
                    Err(classify("secretsmanager", "DeleteSecret", &e))
                }
            }
            Err(e) => Err(classify("secretsmanager", "DeleteSecret", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_secretsmanager::operation::create_secret::CreateSecretOutput;
    use aws_sdk_secretsmanager::operation::delete_resource_policy::DeleteResourcePolicyOutput;
    use aws_sdk_secretsmanager::operation::delete_secret::DeleteSecretOutput;
    use aws_sdk_secretsmanager::operation::put_resource_policy::PutResourcePolicyOutput;
    use aws_sdk_secretsmanager::operation::put_secret_value::PutSecretValueOutput;
    use aws_sdk_secretsmanager::operation::restore_secret::RestoreSecretOutput;
    use aws_sdk_secretsmanager::operation::update_secret::UpdateSecretOutput;
    use aws_sdk_secretsmanager::types::error::ResourceNotFoundException;
    use aws_sdk_secretsmanager::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::retry::RetryConfig;
    use aws_smithy_types::DateTime;

    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const NAME: &str = "s3-key-rotation/org-42";
    /// Secrets Manager's answers to a secret scheduled for deletion, as AWS
    /// sends them (moto 5.2.5 lets PutSecretValue through and answers
    /// CreateSecret with ResourceExistsException).
    const MARKED: &str = "You can't perform this operation on the secret because it was marked for deletion.";
    const SCHEDULED: &str =
        "You can't create this secret because a secret with this name is already scheduled for deletion.";

    fn org() -> OrgId {
        OrgId::parse("42").unwrap()
    }

    fn vault_with(key: Option<&str>, rules: &[&Rule]) -> SecretsVault {
        let client = mock_client!(aws_sdk_secretsmanager, RuleMode::Sequential, rules, |c| c
            .retry_config(RetryConfig::disabled()));
        SecretsVault::new(client, "s3-key-rotation/org-")
            .encrypted_with(key.map(str::to_owned))
            .recoverable_for(Duration::from_days(7))
    }

    fn vault(rules: &[&Rule]) -> SecretsVault {
        vault_with(Some(KEY), rules)
    }

    /// An error as Secrets Manager sends it: awsJson1_1, HTTP 400, the code in `__type`.
    fn aws_error(code: &str, message: &str) -> Response {
        let body = serde_json::json!({ "__type": code, "Message": message }).to_string();
        Response::new(StatusCode::try_from(400).unwrap(), SdkBody::from(body))
    }

    fn key() -> NewKey {
        NewKey { access_key_id: "AKIANEW".into(), secret_access_key: SecretString::from("very-secret".to_owned()) }
    }

    fn described(deleted: bool, kms_key_id: Option<&str>) -> DescribeSecretOutput {
        let out = DescribeSecretOutput::builder().name(NAME).set_kms_key_id(kms_key_id.map(str::to_owned));
        if deleted {
            out.deleted_date(DateTime::from_secs(1_790_000_000)).build()
        } else {
            out.build()
        }
    }

    #[tokio::test]
    async fn a_rotation_restores_a_secret_scheduled_for_deletion_before_storing_the_key() {
        let refused =
            mock!(Client::put_secret_value).then_http_response(|| aws_error("InvalidRequestException", MARKED));
        let describe = mock!(Client::describe_secret)
            .match_requests(|r| r.secret_id() == Some(NAME))
            .then_output(|| described(true, Some(KEY)));
        let restore = mock!(Client::restore_secret)
            .match_requests(|r| r.secret_id() == Some(NAME))
            .then_output(|| RestoreSecretOutput::builder().name(NAME).build());
        let stored = mock!(Client::put_secret_value)
            .match_requests(|r| {
                r.secret_id() == Some(NAME)
                    && r.client_request_token() == Some("rotation-1")
                    && r.version_stages() == ["AWSPENDING".to_owned()]
            })
            .then_output(|| PutSecretValueOutput::builder().build());

        vault(&[&refused, &describe, &restore, &stored]).put_pending(&org(), "rotation-1", &key()).await.unwrap();

        assert_eq!([refused.num_calls(), describe.num_calls(), restore.num_calls(), stored.num_calls()], [1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn granting_a_reader_restores_a_secret_whose_name_is_scheduled_for_deletion() {
        let refused = mock!(Client::create_secret)
            .match_requests(|r| r.name() == Some(NAME) && r.kms_key_id() == Some(KEY))
            .then_http_response(|| aws_error("InvalidRequestException", SCHEDULED));
        let describe = mock!(Client::describe_secret).then_output(|| described(true, Some(KEY)));
        let restore = mock!(Client::restore_secret).then_output(|| RestoreSecretOutput::builder().build());
        let on_key = mock!(Client::describe_secret).then_output(|| described(false, Some(KEY)));
        let policy = mock!(Client::put_resource_policy)
            .match_requests(|r| {
                r.secret_id() == Some(NAME)
                    && r.block_public_policy() == Some(true)
                    && r.resource_policy().is_some_and(|p| p.contains("arn:aws:iam::210987654321:role/log-reader"))
            })
            .then_output(|| PutResourcePolicyOutput::builder().build());

        vault(&[&refused, &describe, &restore, &on_key, &policy])
            .allow_reader(&org(), "arn:aws:iam::210987654321:role/log-reader")
            .await
            .unwrap();

        assert_eq!(
            [refused.num_calls(), describe.num_calls(), restore.num_calls(), on_key.num_calls(), policy.num_calls()],
            [1, 1, 1, 1, 1]
        );
    }

    #[tokio::test]
    async fn another_invalid_request_is_reported_and_nothing_is_restored() {
        let refused = mock!(Client::put_secret_value)
            .then_http_response(|| aws_error("InvalidRequestException", "Operation is not permitted on a replica."));
        let describe = mock!(Client::describe_secret).then_output(|| described(false, Some(KEY)));

        let err = vault(&[&refused, &describe]).put_pending(&org(), "rotation-1", &key()).await.unwrap_err();

        assert_eq!((refused.num_calls(), describe.num_calls()), (1, 1));
        let PortError::Unavailable { operation, detail, .. } = err else { panic!("{err:?}") };
        assert_eq!(operation, "PutSecretValue");
        assert!(detail.starts_with("InvalidRequestException"), "{detail}");
    }

    #[tokio::test]
    async fn a_new_secret_is_encrypted_with_the_vault_key_or_else_the_managed_key() {
        for configured in [Some(KEY), None] {
            let missing = mock!(Client::put_secret_value).then_error(|| {
                PutSecretValueError::ResourceNotFoundException(ResourceNotFoundException::builder().build())
            });
            let created = mock!(Client::create_secret)
                .match_requests(move |r| r.name() == Some(NAME) && r.kms_key_id() == configured)
                .then_output(|| CreateSecretOutput::builder().name(NAME).build());
            let stored = mock!(Client::put_secret_value).then_output(|| PutSecretValueOutput::builder().build());

            vault_with(configured, &[&missing, &created, &stored])
                .put_pending(&org(), "rotation-1", &key())
                .await
                .unwrap();

            assert_eq!([missing.num_calls(), created.num_calls(), stored.num_calls()], [1, 1, 1], "{configured:?}");
        }
    }

    #[tokio::test]
    async fn granting_a_reader_moves_a_secret_on_the_managed_key_to_the_vault_key() {
        let exists = mock!(Client::create_secret).then_http_response(|| {
            aws_error(
                "ResourceExistsException",
                "The operation failed because the secret s3-key-rotation/org-42 already exists.",
            )
        });
        let on_managed_key = mock!(Client::describe_secret).then_output(|| described(false, None));
        let rekeyed = mock!(Client::update_secret)
            .match_requests(|r| {
                r.secret_id() == Some(NAME) && r.kms_key_id() == Some(KEY) && r.secret_string().is_none()
            })
            .then_output(|| UpdateSecretOutput::builder().build());
        let policy = mock!(Client::put_resource_policy).then_output(|| PutResourcePolicyOutput::builder().build());

        vault(&[&exists, &on_managed_key, &rekeyed, &policy])
            .allow_reader(&org(), "arn:aws:iam::210987654321:role/log-reader")
            .await
            .unwrap();

        assert_eq!(
            [exists.num_calls(), on_managed_key.num_calls(), rekeyed.num_calls(), policy.num_calls()],
            [1, 1, 1, 1]
        );
    }

    #[tokio::test]
    async fn deletion_revokes_the_reader_and_keeps_the_secret_recoverable_for_the_window() {
        let revoked = mock!(Client::delete_resource_policy)
            .match_requests(|r| r.secret_id() == Some(NAME))
            .then_output(|| DeleteResourcePolicyOutput::builder().build());
        let deleted = mock!(Client::delete_secret)
            .match_requests(|r| {
                r.secret_id() == Some(NAME)
                    && r.recovery_window_in_days() == Some(7)
                    && r.force_delete_without_recovery().is_none()
            })
            .then_output(|| DeleteSecretOutput::builder().build());

        vault(&[&revoked, &deleted]).delete(&org()).await.unwrap();

        assert_eq!((revoked.num_calls(), deleted.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn deleting_a_secret_already_scheduled_for_deletion_or_gone_is_not_an_error() {
        // A deletion retried after its secret was scheduled: the policy can no longer be changed.
        let refused =
            mock!(Client::delete_resource_policy).then_http_response(|| aws_error("InvalidRequestException", MARKED));
        let describe = mock!(Client::describe_secret).then_output(|| described(true, Some(KEY)));
        vault(&[&refused, &describe]).delete(&org()).await.unwrap();
        assert_eq!((refused.num_calls(), describe.num_calls()), (1, 1));

        // Scheduled between the two requests.
        let revoked =
            mock!(Client::delete_resource_policy).then_output(|| DeleteResourcePolicyOutput::builder().build());
        let refused = mock!(Client::delete_secret).then_http_response(|| {
            aws_error(
                "InvalidRequestException",
                "You tried to perform the operation on a secret that's currently marked deleted.",
            )
        });
        let describe = mock!(Client::describe_secret).then_output(|| described(true, Some(KEY)));
        vault(&[&revoked, &refused, &describe]).delete(&org()).await.unwrap();
        assert_eq!((revoked.num_calls(), refused.num_calls(), describe.num_calls()), (1, 1, 1));

        // Never created, or purged.
        let gone = mock!(Client::delete_resource_policy).then_http_response(|| {
            aws_error("ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
        });
        vault(&[&gone]).delete(&org()).await.unwrap();
        assert_eq!(gone.num_calls(), 1);
    }
}
