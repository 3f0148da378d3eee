//! The small capabilities the core needs from the outside world. Each has an
//! AWS adapter (`crate::aws`) and an in-memory one (`crate::core::memory`) for
//! tests that inject a fault at a chosen step.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;

pub use super::domain::AuditEntry;
pub use super::domain::IamUser;
use super::domain::{LeaseTime, OrgId, OrgRecord};

/// A failure of an outside service, already classified for the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A conditional write lost: someone else wrote first (S3 412, or the
    /// object already exists on create).
    #[error("the record was changed by someone else")]
    Conflict,
    /// IAM refused a new key: the user already has two.
    #[error("the IAM user already has the maximum number of access keys")]
    QuotaExceeded,
    /// The IAM user does not exist.
    #[error("the IAM user does not exist")]
    NoSuchUser,
    /// Still throttled after the SDK's retries with backoff.
    #[error("{service} {operation} was throttled")]
    Throttled { service: &'static str, operation: &'static str },
    /// Any other failure; `detail` is the service's error code, never a secret.
    #[error("{service} {operation} failed: {detail}")]
    Unavailable { service: &'static str, operation: &'static str, detail: String },
}

/// A stored record and the version (S3 ETag) it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: String,
}

/// The org registry: one record per org, every write conditional.
#[async_trait]
pub trait Registry: Send + Sync {
    async fn load(&self, org: &OrgId) -> Result<Option<Versioned<OrgRecord>>, PortError>;
    /// Creates the record; [`PortError::Conflict`] when one exists already.
    async fn create(&self, record: &OrgRecord) -> Result<String, PortError>;
    /// Replaces the record read at `etag`; [`PortError::Conflict`] when it changed since.
    async fn update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError>;
    /// Deletes the record read at `etag`.
    async fn delete(&self, org: &OrgId, etag: &str) -> Result<(), PortError>;
    /// The enrolled orgs, in id order (ids only: records are read one by one).
    async fn list_orgs(&self) -> Result<Vec<OrgId>, PortError>;
    /// A small object of the sweep's own (its resume cursor), by name.
    async fn get_state(&self, name: &str) -> Result<Option<String>, PortError>;
    async fn put_state(&self, name: &str, value: &str) -> Result<(), PortError>;
    /// A small document of the registry's own by its key (e.g. the placement
    /// counts `placement.json`), with its version.
    async fn get_doc(&self, key: &str) -> Result<Option<Versioned<String>>, PortError>;
    /// Writes the document if it is still at `etag` (`None`: only if it does
    /// not exist); [`PortError::Conflict`] when someone wrote first.
    async fn put_doc(&self, key: &str, value: &str, etag: Option<&str>) -> Result<String, PortError>;
    /// Deletes the document; a missing one is not an error.
    async fn delete_doc(&self, key: &str) -> Result<(), PortError>;
    /// The keys of the documents under `prefix`, in order.
    async fn list_docs(&self, prefix: &str) -> Result<Vec<String>, PortError>;
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `entry`; appending the same entry again changes nothing (so
    /// copying a record's audit outbox twice is harmless).
    async fn append(&self, entry: &AuditEntry) -> Result<(), PortError>;
}

/// An access key as IAM lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamKey {
    pub access_key_id: String,
    pub active: bool,
    pub created_at: Option<DateTime<Utc>>,
}

/// A key IAM has just created: the only moment its secret exists outside IAM.
/// `Debug` prints the secret as `[REDACTED]` and it is zeroized on drop.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

/// What an org's IAM user may do: read its own prefix of one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user_name: String,
    /// The member account the user is created in (`None`: the home account).
    pub account: Option<String>,
    pub path: String,
    pub org: OrgId,
    pub bucket: String,
    pub prefix: String,
}

/// When and where IAM last saw an access key sign a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyUse {
    pub at: DateTime<Utc>,
    pub service: String,
    pub region: String,
}

/// The access keys of the orgs' IAM users, each user in its own account.
#[async_trait]
pub trait AccessKeys: Send + Sync {
    /// Creates the user (if missing) and puts its read-only policy. Idempotent.
    async fn ensure_user(&self, spec: &UserSpec) -> Result<(), PortError>;
    /// Creates the user if missing, changing nothing else; the keys a user
    /// that existed already holds (none for a user just created). Asked by
    /// creating, so that the call is authorized against the user's path.
    async fn create_user(&self, spec: &UserSpec) -> Result<Vec<IamKey>, PortError>;
    async fn list_keys(&self, user: &IamUser) -> Result<Vec<IamKey>, PortError>;
    /// [`PortError::QuotaExceeded`] when the user has two keys already.
    async fn create_key(&self, user: &IamUser) -> Result<NewKey, PortError>;
    /// Activates or deactivates a key; a key that no longer exists is not an error.
    async fn set_active(&self, user: &IamUser, access_key_id: &str, active: bool) -> Result<(), PortError>;
    /// Deletes a key; a key that no longer exists is not an error.
    async fn delete_key(&self, user: &IamUser, access_key_id: &str) -> Result<(), PortError>;
    /// Deletes the user, its policy and its keys; a user that no longer exists is not an error.
    async fn delete_user(&self, user: &IamUser) -> Result<(), PortError>;
    /// Whether the account can be reached (a member account: its role can be
    /// assumed). The home account (`None`) always can.
    async fn check_account(&self, account: Option<&str>) -> Result<(), PortError>;
    /// When the key last signed a request (`None`: never, as far as IAM knows).
    async fn last_used(&self, user: &IamUser, access_key_id: &str) -> Result<Option<KeyUse>, PortError>;
    /// The user's policies other than the project's own read-only one (inline
    /// policy names, attached policy ARNs): reported at adoption, never deleted.
    async fn other_policies(&self, user: &IamUser) -> Result<Vec<String>, PortError>;
}

/// The key vault: the one place a secret is stored (one secret per org, a
/// version per rotation, staged `AWSPENDING` → `AWSCURRENT` → `AWSPREVIOUS`).
#[async_trait]
pub trait KeyVault: Send + Sync {
    /// Stores the new key as the pending version `version` (idempotent).
    async fn put_pending(&self, org: &OrgId, version: &str, key: &NewKey) -> Result<(), PortError>;
    /// Makes `version` current, moving the label from `replacing` (`None`: the
    /// label is on no version yet); the version that was current becomes
    /// previous. A compare-and-swap: [`PortError::Conflict`] when the label is
    /// not on `replacing`, and nothing moves.
    async fn promote(&self, org: &OrgId, version: &str, replacing: Option<&str>) -> Result<(), PortError>;
    /// The key stored as `version`, if the vault still has it.
    async fn get(&self, org: &OrgId, version: &str) -> Result<Option<NewKey>, PortError>;
    /// The version that is current now, if any.
    async fn current_version(&self, org: &OrgId) -> Result<Option<String>, PortError>;
    /// Deletes the org's secret (recoverably, for the vault's recovery
    /// window) and revokes its reader; a secret that does not exist, or is
    /// deleted already, is not an error.
    async fn delete(&self, org: &OrgId) -> Result<(), PortError>;
    /// Lets `principal` (an AWS principal ARN of the org's own) read the org's
    /// secret: a resource policy on it. Idempotent.
    async fn allow_reader(&self, org: &OrgId, principal: &str) -> Result<(), PortError>;
}

/// An event for the org's consumers and operators (EventBridge). Never a secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// `Bucket Key Rotated`, `Bucket Key Expiring`, `Bucket Key Expired`.
    pub detail_type: &'static str,
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait Notifier: Send + Sync {
    async fn publish(&self, notifications: &[Notification]) -> Result<(), PortError>;
}

/// The clock every actor shares, for leases (see [`LeaseTime`]). Never the
/// time of an event: decisions about an org's life use the run's time.
pub trait Clock: Send + Sync {
    fn now(&self) -> LeaseTime;
}

/// The process's real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> LeaseTime {
        LeaseTime::from_utc(Utc::now())
    }
}

/// Checks that a new key can read the org's prefix (IAM is eventually
/// consistent: implementations retry within a bound).
#[async_trait]
pub trait KeyVerifier: Send + Sync {
    async fn verify(&self, key: &NewKey, bucket: &str, prefix: &str) -> Result<(), PortError>;
}
