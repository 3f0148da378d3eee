//! The registry and the audit trail in S3. Records are `orgs/{orgId}.json`;
//! every write is conditional (`If-None-Match: *` to create, `If-Match` to
//! update). The audit trail is `audit/{orgId}/{time}-{digest}.json`, one object
//! per entry, never overwritten.

use async_trait::async_trait;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;

use sha2::{Digest, Sha256};

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

    async fn put(&self, record: &OrgRecord, etag: Option<&str>) -> Result<String, PortError> {
        let body = serde_json::to_string_pretty(record).map_err(|e| PortError::Unavailable {
            service: "s3",
            operation: "PutObject",
            detail: format!("record not serializable: {e}"),
        })?;
        self.put_doc(&Self::record_key(&record.org_id), &body, etag).await
    }

    /// Writes an object of the registry bucket under `condition`; its new ETag.
    async fn put_object(&self, key: &str, value: &str, condition: Write<'_>) -> Result<String, PortError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(value.as_bytes().to_vec()));
        let request = match condition {
            Write::Any => request,
            Write::IfAbsent => request.if_none_match("*"),
            Write::IfMatch(etag) => request.if_match(etag),
        };
        let output = request.send().await.map_err(|e| classify("s3", "PutObject", &e))?;
        output.e_tag().map(str::to_owned).ok_or_else(|| PortError::Unavailable {
            service: "s3",
            operation: "PutObject",
            detail: "no ETag in the answer".into(),
        })
    }
}

/// The condition of a write.
enum Write<'a> {
    /// Whatever is there (the sweep's own state).
    Any,
    /// Only if nothing is there yet.
    IfAbsent,
    /// Only if what is there is still at this ETag.
    IfMatch(&'a str),
}

#[async_trait]
impl Registry for S3Registry {
    async fn load(&self, org: &OrgId) -> Result<Option<Versioned<OrgRecord>>, PortError> {
        let Some(Versioned { value: text, etag }) = self.get_doc(&Self::record_key(org)).await? else {
            return Ok(None);
        };
        let value: OrgRecord = serde_json::from_str(&text).map_err(|e| PortError::Unavailable {
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
        self.put(record, None).await
    }

    async fn update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        self.put(record, Some(etag)).await
    }

    async fn delete(&self, org: &OrgId, etag: &str) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(Self::record_key(org))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| classify("s3", "DeleteObject", &e))?;
        Ok(())
    }

    async fn list_orgs(&self) -> Result<Vec<OrgId>, PortError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix("orgs/").into_paginator().send();
        let mut orgs = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("s3", "ListObjectsV2", &e))?;
            for object in page.contents() {
                let id = object.key().and_then(|k| k.strip_prefix("orgs/")).and_then(|k| k.strip_suffix(".json"));
                match id.map(OrgId::parse) {
                    Some(Ok(org)) => orgs.push(org),
                    _ => {
                        tracing::warn!(key = ?object.key(), "ignoring an object of the registry that is not an org record")
                    }
                }
            }
        }
        orgs.sort();
        Ok(orgs)
    }

    async fn get_state(&self, name: &str) -> Result<Option<String>, PortError> {
        Ok(self.get_doc(&format!("sweep/{name}")).await?.map(|doc| doc.value))
    }

    async fn put_state(&self, name: &str, value: &str) -> Result<(), PortError> {
        self.put_object(&format!("sweep/{name}"), value, Write::Any).await.map(|_| ())
    }

    async fn get_doc(&self, key: &str) -> Result<Option<Versioned<String>>, PortError> {
        let result = self.client.get_object().bucket(&self.bucket).key(key).send().await;
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
        Ok(Some(Versioned { value: String::from_utf8_lossy(&bytes.into_bytes()).into_owned(), etag }))
    }

    async fn put_doc(&self, key: &str, value: &str, etag: Option<&str>) -> Result<String, PortError> {
        let condition = match etag {
            None => Write::IfAbsent,
            Some(etag) => Write::IfMatch(etag),
        };
        self.put_object(key, value, condition).await
    }

    async fn delete_doc(&self, key: &str) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("s3", "DeleteObject", &e))?;
        Ok(())
    }

    async fn list_docs(&self, prefix: &str) -> Result<Vec<String>, PortError> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("s3", "ListObjectsV2", &e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        keys.sort();
        Ok(keys)
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
    /// `audit/{org}/{time}-{digest}.json`: the time sorts the trail, the
    /// digest of the entry makes appending the same entry twice a no-op.
    pub fn entry_key(entry: &AuditEntry, body: &[u8]) -> String {
        let digest = Sha256::digest(body);
        let short: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("audit/{}/{}-{short}.json", entry.org_id, entry.at.format("%Y%m%dT%H%M%S%.3fZ"))
    }

    /// The org's trail, newest first, at most `limit` entries (their keys sort by time).
    pub async fn newest_first(&self, org: &OrgId, limit: usize) -> Result<Vec<AuditEntry>, PortError> {
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(format!("audit/{org}/")).into_paginator().send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("s3", "ListObjectsV2", &e))?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        }
        keys.sort();
        let mut entries = Vec::new();
        for key in keys.iter().rev().take(limit) {
            let output = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| classify("s3", "GetObject", &e))?;
            let unreadable = |detail: String| PortError::Unavailable { service: "s3", operation: "GetObject", detail };
            let bytes = output.body.collect().await.map_err(|_| unreadable(format!("{key}: body not readable")))?;
            let entry = serde_json::from_slice(&bytes.into_bytes())
                .map_err(|e| unreadable(format!("{key}: not an audit entry: {e}")))?;
            entries.push(entry);
        }
        Ok(entries)
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
        let written = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(Self::entry_key(entry, &body))
            .if_none_match("*")
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify("s3", "PutObject", &e));
        match written {
            Ok(_) | Err(PortError::Conflict) => Ok(()), // the same entry is there already
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    use aws_sdk_s3::operation::put_object::PutObjectOutput;
    use aws_sdk_s3::types::error::NoSuchKey;
    use aws_sdk_s3::Client;
    use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
    use chrono::{TimeZone, Utc};

    use super::*;

    fn registry(rules: &[&Rule]) -> S3Registry {
        S3Registry::new(mock_client!(aws_sdk_s3, RuleMode::Sequential, rules), "registry")
    }

    fn record() -> OrgRecord {
        OrgRecord::enrolled(
            &OrgId::parse("42").unwrap(),
            "logs",
            "42/",
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_lost_conditional_write_is_a_conflict() {
        let rule = mock!(Client::put_object).then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(412).unwrap(),
                aws_smithy_types::body::SdkBody::from(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>",
                ),
            )
        });
        assert_eq!(registry(&[&rule]).update(&record(), "\"etag\"").await.unwrap_err(), PortError::Conflict);
    }

    #[tokio::test]
    async fn writes_are_conditional() {
        let create = mock!(Client::put_object)
            .match_requests(|r| {
                r.if_none_match() == Some("*") && r.if_match().is_none() && r.key() == Some("orgs/42.json")
            })
            .then_output(|| PutObjectOutput::builder().e_tag("\"v1\"").build());
        let update = mock!(Client::put_object)
            .match_requests(|r| r.if_match() == Some("\"v1\"") && r.if_none_match().is_none())
            .then_output(|| PutObjectOutput::builder().e_tag("\"v2\"").build());
        let registry = registry(&[&create, &update]);
        assert_eq!(registry.create(&record()).await.unwrap(), "\"v1\"");
        assert_eq!(registry.update(&record(), "\"v1\"").await.unwrap(), "\"v2\"");
    }

    #[tokio::test]
    async fn a_missing_record_is_none_and_a_corrupt_one_an_error() {
        let missing = mock!(Client::get_object).then_error(|| GetObjectError::NoSuchKey(NoSuchKey::builder().build()));
        assert_eq!(registry(&[&missing]).load(&OrgId::parse("42").unwrap()).await.unwrap(), None);
        let corrupt = mock!(Client::get_object).then_output(|| {
            GetObjectOutput::builder().e_tag("\"v1\"").body(ByteStream::from_static(b"{not json")).build()
        });
        let err = registry(&[&corrupt]).load(&OrgId::parse("42").unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("the record of org 42 is not valid"), "{err}");
        // A record stored under another org's key is refused.
        let json = serde_json::to_vec(&record()).unwrap();
        let misplaced = mock!(Client::get_object).then_output(move || {
            GetObjectOutput::builder().e_tag("\"v1\"").body(ByteStream::from(json.clone())).build()
        });
        let err = registry(&[&misplaced]).load(&OrgId::parse("43").unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("names org 42"), "{err}");
    }
}
