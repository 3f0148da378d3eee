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
                // Static credentials need no cache; a place in the shared one
                // would push out another client's (the cache keeps 64).
                .identity_cache(aws_sdk_s3::config::IdentityCache::no_cache())
                .force_path_style(self.force_path_style)
                .build(),
        );
        let bucket = bucket.to_owned();
        let prefix = prefix.to_owned();
        retry_while_propagating(self.within, || {
            let request = client.list_objects_v2().bucket(&bucket).prefix(&prefix).max_keys(1);
            async move {
                match request.send().await {
                    Ok(_) => Ok(()),
                    Err(err) => Err(Attempt {
                        retryable: error_code(&err).is_some_and(|c| NOT_YET.contains(&c)),
                        error: classify("s3", "ListObjectsV2 (new key)", &err),
                    }),
                }
            }
        })
        .await
    }
}

/// One failed try of the new key.
struct Attempt {
    /// The key is not (yet) accepted: worth another try.
    retryable: bool,
    error: PortError,
}

/// Tries `attempt` until it succeeds, fails for good, or `within` would pass:
/// exponential backoff from 250 ms, at most 4 s between tries.
async fn retry_while_propagating<F, Fut>(within: StdDuration, mut attempt: F) -> Result<(), PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Attempt>>,
{
    let started = tokio::time::Instant::now();
    let mut wait = StdDuration::from_millis(250);
    let mut tries = 1;
    loop {
        let failed = match attempt().await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        if !failed.retryable || started.elapsed() + wait > within {
            debug!(tries, "the new key did not work");
            return Err(failed.error);
        }
        debug!(tries, wait_ms = wait.as_millis() as u64, "the new key does not work yet; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(StdDuration::from_secs(4));
        tries += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn denied(retryable: bool) -> Attempt {
        Attempt {
            retryable,
            error: PortError::Unavailable {
                service: "s3",
                operation: "ListObjectsV2 (new key)",
                detail: "InvalidAccessKeyId".into(),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_starts_working_within_the_bound_is_accepted() {
        let tries = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result = retry_while_propagating(StdDuration::from_secs(20), || {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 4 {
                    Err(denied(true))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(tries.load(Ordering::SeqCst), 5);
        // 250 + 500 + 1000 + 2000 ms of backoff.
        assert_eq!(started.elapsed(), StdDuration::from_millis(3750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_never_works_fails_within_the_bound() {
        let tries = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result = retry_while_propagating(StdDuration::from_secs(20), || {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err(denied(true)) }
        })
        .await;
        assert!(result.is_err());
        assert!(started.elapsed() <= StdDuration::from_secs(20), "{:?}", started.elapsed());
        assert!(tries.load(Ordering::SeqCst) >= 5);
    }

    #[tokio::test(start_paused = true)]
    async fn another_error_is_not_retried() {
        let tries = AtomicUsize::new(0);
        let result = retry_while_propagating(StdDuration::from_secs(20), || {
            tries.fetch_add(1, Ordering::SeqCst);
            async { Err(denied(false)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
