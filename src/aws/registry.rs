//! The registry and the audit trail in S3. Records are `orgs/{orgId}.json`;
//! every write is conditional (`If-None-Match: *` to create, `If-Match` to
//! update). The audit trail is `audit/{orgId}/{time}-{id}.json`, one object
//! per entry, never overwritten.

use async_trait::async_trait;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;

use super::classify;
use crate::core::domain::{OrgId, OrgRecord};
use crate::core::ports::{AuditEntry, AuditLog, PortError, Registry, Versioned};

/// The registry bucket.
#[derive(Debug, Clone)]
pub struct S3Registry {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Registry {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    pub fn record_key(org: &OrgId) -> String {
        format!("orgs/{org}.json")
    }

    async fn put(&self, record: &OrgRecord, condition: Condition<'_>) -> Result<String, PortError> {
        let body = serde_json::to_vec_pretty(record).map_err(|e| PortError::Unavailable {
            service: "s3",
            operation: "PutObject",
            detail: format!("record not serializable: {e}"),
        })?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(Self::record_key(&record.org_id))
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Etag(etag) => request.if_match(etag),
        };
        let output = request.send().await.map_err(|e| classify("s3", "PutObject", &e))?;
        output.e_tag().map(str::to_owned).ok_or_else(|| PortError::Unavailable {
            service: "s3",
            operation: "PutObject",
            detail: "no ETag in the answer".into(),
        })
    }
}

enum Condition<'a> {
    Absent,
    Etag(&'a str),
}

#[async_trait]
impl Registry for S3Registry {
    async fn load(&self, org: &OrgId) -> Result<Option<Versioned<OrgRecord>>, PortError> {
        let result = self.client.get_object().bucket(&self.bucket).key(Self::record_key(org)).send().await;
        let output = match result {
            Ok(output) => output,
            Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => return Ok(None),
            Err(e) => return Err(classify("s3", "GetObject", &e)),
        };
        let etag = output.e_tag().map(str::to_owned).ok_or_else(|| PortError::Unavailable {
            service: "s3",
            operation: "GetObject",
            detail: "no ETag in the answer".into(),
        })?;
        let bytes = output.body.collect().await.map_err(|_| PortError::Unavailable {
            service: "s3",
            operation: "GetObject",
            detail: "the body could not be read".into(),
        })?;
        let value: OrgRecord = serde_json::from_slice(&bytes.into_bytes()).map_err(|e| PortError::Unavailable {
            service: "s3",
            operation: "GetObject",
            detail: format!("the record of org {org} is not valid: {e}"),
        })?;
        if &value.org_id != org {
            return Err(PortError::Unavailable {
                service: "s3",
                operation: "GetObject",
                detail: format!("the record at {} names org {}", Self::record_key(org), value.org_id),
            });
        }
        Ok(Some(Versioned { value, etag }))
    }

    async fn create(&self, record: &OrgRecord) -> Result<String, PortError> {
        self.put(record, Condition::Absent).await
    }

    async fn update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        self.put(record, Condition::Etag(etag)).await
    }
}

/// The audit trail, in the registry bucket.
#[derive(Debug, Clone)]
pub struct S3Audit {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Audit {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    /// Entries sort by time within an org: `audit/{orgId}/{YYYYMMDDTHHMMSS.mmmZ}-{uuid}.json`.
    pub fn entry_key(entry: &AuditEntry) -> String {
        format!(
            "audit/{}/{}-{}.json",
            entry.org_id,
            entry.at.format("%Y%m%dT%H%M%S%.3fZ"),
            uuid::Uuid::new_v4()
        )
    }
}

#[async_trait]
impl AuditLog for S3Audit {
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError> {
        let body = serde_json::to_vec(entry).map_err(|e| PortError::Unavailable {
            service: "s3",
            operation: "PutObject",
            detail: format!("audit entry not serializable: {e}"),
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(Self::entry_key(entry))
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("s3", "PutObject", &e))?;
        Ok(())
    }
}
