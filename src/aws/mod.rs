//! The ports implemented with the AWS SDK for Rust. Clients are built once per
//! cold start ([`Clients::from_env`]) and shared by every request.

pub mod accounts;
pub mod events;
pub mod iam;
pub mod queue;
pub mod registry;
pub mod vault;
pub mod verifier;

use std::time::Duration as StdDuration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::{
    Config, MembersConfig, NotificationsConfig, OrgUsersConfig, RegistryConfig, SdkConfig as SdkSettings, VaultConfig,
    VerifyConfig,
};
use crate::core::ports::PortError;
use crate::core::rotation::Ports;

/// The SDK clients of one process.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sdk: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub iam: aws_sdk_iam::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// S3 through a local endpoint needs path-style addressing.
    pub force_path_style: bool,
}

impl Clients {
    /// Loads the SDK configuration from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL`) with the standard retry mode: throttling and
    /// transient errors are retried with exponential backoff and jitter.
    ///
    /// Every call is bounded: the SDK has no read or operation timeout of its
    /// own, so an endpoint that accepts a request and never answers would hold
    /// the function until Lambda kills it (a 500 to the caller, a claimed
    /// rotation left to its lease). An attempt that takes longer than
    /// `SDK_ATTEMPT_TIMEOUT` is abandoned and retried; a call gives up after
    /// `SDK_OPERATION_TIMEOUT`, which leaves the function time to roll back.
    pub async fn from_env(config: &SdkSettings) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(StdDuration::from_secs(3))
            .operation_attempt_timeout(StdDuration::from_secs(config.sdk_attempt_timeout.as_secs()))
            .operation_timeout(StdDuration::from_secs(config.sdk_operation_timeout.as_secs()))
            .build();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(6))
            .timeout_config(timeouts)
            .load()
            .await;
        Self::from_sdk(sdk, config.endpoint_url.is_some())
    }

    pub fn from_sdk(sdk: SdkConfig, force_path_style: bool) -> Self {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(force_path_style).build(),
        );
        let iam = aws_sdk_iam::Client::new(&sdk);
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        Self { sdk, s3, iam, secrets, events, sqs, force_path_style }
    }
}

/// The adapters of one process, wired from its clients and configuration.
#[derive(Debug, Clone)]
pub struct Adapters {
    pub registry: registry::S3Registry,
    pub audit: registry::S3Audit,
    pub keys: iam::IamKeys,
    pub verifier: Option<verifier::S3Verifier>,
    pub vault: vault::SecretsVault,
    pub events: events::EventBus,
    /// The queue of the sweep's slices, when the sweep is fanned out.
    pub slices: Option<queue::SqsSlices>,
}

/// The areas of the configuration the adapters are wired from.
#[derive(Debug, Clone, Copy)]
pub struct Wiring<'a> {
    pub registry: &'a RegistryConfig,
    pub members: &'a MembersConfig,
    /// The org users' partition and boundary: only the CLI creates org users;
    /// `None` elsewhere (the `aws` partition and no boundary, never used).
    pub org_users: Option<&'a OrgUsersConfig>,
    pub verify: &'a VerifyConfig,
    pub vault: &'a VaultConfig,
    pub notifications: &'a NotificationsConfig,
    /// `SWEEP_QUEUE_URL`, for the programs that sweep.
    pub sweep_queue_url: Option<&'a str>,
}

impl crate::config::RotateKeyConfig {
    /// rotate-key's adapters: no queue, no org users.
    pub fn wiring(&self) -> Wiring<'_> {
        Wiring {
            registry: &self.registry,
            members: &self.members,
            org_users: None,
            verify: &self.verify,
            vault: &self.vault,
            notifications: &self.notifications,
            sweep_queue_url: None,
        }
    }
}

impl crate::config::SweepFunctionConfig {
    /// The adapters of scheduled-rotation and sweep-worker: no org users.
    pub fn wiring(&self) -> Wiring<'_> {
        Wiring {
            registry: &self.registry,
            members: &self.members,
            org_users: None,
            verify: &self.verify,
            vault: &self.vault,
            notifications: &self.notifications,
            sweep_queue_url: self.sweep.sweep_queue_url.as_deref(),
        }
    }
}

impl Adapters {
    /// Every adapter, from every area (the CLI, the tests).
    pub fn new(clients: &Clients, config: &Config) -> Self {
        Self::wire(
            clients,
            Wiring {
                registry: &config.registry,
                members: &config.members,
                org_users: Some(&config.org_users),
                verify: &config.verify,
                vault: &config.vault,
                notifications: &config.notifications,
                sweep_queue_url: config.sweep.sweep_queue_url.as_deref(),
            },
        )
    }

    pub fn wire(clients: &Clients, wiring: Wiring<'_>) -> Self {
        let Wiring { registry, members, org_users, verify, vault, notifications, sweep_queue_url } = wiring;
        let partition = org_users.map_or("aws", |o| o.partition.as_str());
        Self {
            registry: registry::S3Registry::new(clients.s3.clone(), &registry.bucket),
            audit: registry::S3Audit::new(clients.s3.clone(), &registry.bucket),
            keys: iam::IamKeys::with_members(
                clients.iam.clone(),
                std::sync::Arc::new(accounts::MemberAccounts::new(
                    clients.sdk.clone(),
                    &members.member_roles,
                    members.member_external_id.clone(),
                )),
                partition,
            )
            .with_boundary(org_users.and_then(|o| o.org_user_boundary.clone())),
            verifier: verify.verify_new_key.then(|| {
                verifier::S3Verifier::new(clients.sdk.clone(), clients.force_path_style, verify.verify_within)
            }),
            vault: vault::SecretsVault::new(clients.secrets.clone(), &vault.vault_secret_prefix)
                .encrypted_with(vault.vault_kms_key_id.clone())
                .recoverable_for(vault.vault_recovery_window),
            events: events::EventBus::new(clients.events.clone(), &notifications.event_bus_name),
            slices: sweep_queue_url.map(|url| queue::SqsSlices::new(clients.sqs.clone(), url)),
        }
    }

    pub fn ports(&self) -> Ports<'_> {
        Ports {
            registry: &self.registry,
            keys: &self.keys,
            audit: &self.audit,
            verifier: self.verifier.as_ref().map(|v| v as _),
            vault: Some(&self.vault),
            notifier: Some(&self.events),
            clock: &crate::core::ports::SystemClock,
        }
    }
}

/// Error codes that mean "slow down" (after the SDK's own retries).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "SlowDown",
    "TooManyRequestsException",
];

/// The service error code of an SDK error, if the service answered with one.
pub(crate) fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Classifies an SDK error for the core: a lost conditional write, throttling,
/// or anything else with the service's error code and message, which is what an
/// operator needs to act ("AccessDenied: User: arn:… is not authorized to
/// perform: iam:CreateAccessKey on resource: …"). AWS error messages name
/// principals, actions and resources, never a secret the request carried; as a
/// second guard, anything shaped like a secret access key is masked, and the
/// message is kept to [`MESSAGE_LIMIT`] characters.
pub(crate) fn classify<E: ProvideErrorMetadata>(
    service: &'static str,
    operation: &'static str,
    err: &SdkError<E>,
) -> PortError {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = error_code(err);
    if status == Some(412) || matches!(code, Some("PreconditionFailed" | "ConditionalRequestConflict")) {
        return PortError::Conflict;
    }
    if code.is_some_and(|c| THROTTLING_CODES.contains(&c)) || status == Some(429) {
        return PortError::Throttled { service, operation };
    }
    let message = match err {
        SdkError::ServiceError(e) => e.err().message().map(printable_message),
        _ => None,
    };
    let detail = match (err, code, status) {
        (_, Some(code), _) => match message {
            Some(message) if !message.is_empty() => format!("{code}: {message}"),
            _ => code.to_owned(),
        },
        (SdkError::TimeoutError(_), ..) => "timeout".to_owned(),
        (SdkError::DispatchFailure(_), ..) => "the endpoint could not be reached".to_owned(),
        (_, None, Some(status)) => format!("HTTP {status}"),
        _ => "request failed".to_owned(),
    };
    PortError::Unavailable { service, operation, detail }
}

/// The longest part of an AWS error message a log line or an answer carries.
const MESSAGE_LIMIT: usize = 300;

/// An AWS error message made safe to log: one line, at most [`MESSAGE_LIMIT`]
/// characters, and any secret access key masked (see [`mask_secrets`]).
fn printable_message(message: &str) -> String {
    let mut out = mask_secrets(message);
    if out.chars().count() > MESSAGE_LIMIT {
        out = out.chars().take(MESSAGE_LIMIT).collect::<String>() + "…";
    }
    out
}

/// `text` on one line (control characters and runs of white space made one
/// space), with any run of 40 or more characters of a secret access key's
/// alphabet (A-Z a-z 0-9 + /, with a lower-case letter and a digit) shown as
/// `***`: the one rule by which every message that may quote AWS is made safe
/// to log or print.
pub fn mask_secrets(text: &str) -> String {
    let words = text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty());
    let line = words.collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(line.len());
    let mut run = String::new();
    let secret_alphabet = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    for c in line.chars().chain(std::iter::once(' ')) {
        if secret_alphabet(c) {
            run.push(c);
            continue;
        }
        let looks_secret =
            run.len() >= 40 && run.chars().any(|c| c.is_ascii_lowercase()) && run.chars().any(|c| c.is_ascii_digit());
        out.push_str(if looks_secret { "***" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::printable_message;

    #[test]
    fn an_error_message_is_kept_but_never_a_secret() {
        let denied = "User: arn:aws:sts::123456789012:assumed-role/rotate-key/fn is not authorized to perform: \
                      secretsmanager:GetSecretValue on resource: s3-key-rotation/org-1234567";
        assert_eq!(printable_message(denied), denied);
        let leaked = "bad value wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1 in\nthe request";
        let shown = printable_message(leaked);
        assert_eq!(shown, "bad value *** in the request");
        assert!(printable_message(&"x".repeat(1000)).chars().count() <= 301, "bounded");
    }
}
