//! Checks a new key against the bucket before the rotation commits it. IAM is
//! eventually consistent (a new key takes seconds to work everywhere), so an
//! authentication failure is retried with backoff, within a bound.

use std::time::Duration as StdDuration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::config::Credentials;
use secrecy::ExposeSecret;
use tracing::debug;

use super::{classify, error_code};
use crate::core::duration::Duration;
use crate::core::ports::{KeyVerifier, NewKey, PortError};

/// Codes that mean "this key does not work (yet)".
const NOT_YET: &[&str] = &["InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch", "InvalidClientTokenId"];

/// Lists the org's prefix with the new key.
#[derive(Debug, Clone)]
pub struct S3Verifier {
    sdk: SdkConfig,
    force_path_style: bool,
    within: StdDuration,
}

impl S3Verifier {
    pub fn new(sdk: SdkConfig, force_path_style: bool, within: Duration) -> Self {
        Self { sdk, force_path_style, within: StdDuration::from_secs(within.as_secs()) }
    }
}

#[async_trait]
impl KeyVerifier for S3Verifier {
    async fn verify(&self, key: &NewKey, bucket: &str, prefix: &str) -> Result<(), PortError> {
        let credentials = Credentials::new(
            &key.access_key_id,
            key.secret_access_key.expose_secret(),
            None,
            None,
            "s3-key-rotation-new-key",
        );
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk)
                .credentials_provider(credentials)
                .force_path_style(self.force_path_style)
                .build(),
        );
        let started = tokio::time::Instant::now();
        let mut wait = StdDuration::from_millis(250);
        let mut attempt = 1;
        loop {
            let result = client.list_objects_v2().bucket(bucket).prefix(prefix).max_keys(1).send().await;
            let err = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let retryable = error_code(&err).is_some_and(|c| NOT_YET.contains(&c));
            if !retryable || started.elapsed() + wait > self.within {
                debug!(attempt, "the new key did not work");
                return Err(classify("s3", "ListObjectsV2 (new key)", &err));
            }
            debug!(attempt, wait_ms = wait.as_millis() as u64, "the new key does not work yet; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(StdDuration::from_secs(4));
            attempt += 1;
        }
    }
}
