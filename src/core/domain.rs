//! The org key record and everything it is made of. The record is what the
//! registry stores (as JSON), one per org; it never holds a secret.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::update::WriteId;

/// 9000-01-01T00:00:00Z, in milliseconds since the epoch.
const EVENT_TIME_END_MS: i64 = 221_845_392_000_000;

/// Whether a time an event gives as "now" is one the functions work with: from
/// 1970 until the year 9000. No AWS service sends another, and every date
/// computed from it (a key's expiry, a retirement) keeps the four-digit year
/// of the ISO 8601 dates the functions answer with.
pub fn is_event_time(t: DateTime<Utc>) -> bool {
    (0..EVENT_TIME_END_MS).contains(&t.timestamp_millis())
}

/// The time a decision about an org's life is made at, "the run's time": whether
/// a rotation is due, a key expired, a warning owed, a grace period over, and
/// every date a decision writes. It comes from the event that asked for the
/// decision, so that a handler is deterministic and a retried event decides as
/// its first delivery did; the clock stands in only where the event has none.
/// Each source has its constructor here, and nowhere else is "now" made for a
/// decision. Leases are never judged in it (see [`LeaseTime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DecisionTime(DateTime<Utc>);

impl DecisionTime {
    /// An API request: API Gateway's `requestContext.timeEpoch` (milliseconds),
    /// or the clock's when the event has none (or one no API Gateway sends).
    pub fn of_api_request(time_epoch_ms: Option<i64>) -> Self {
        let sent = time_epoch_ms.filter(|ms| *ms > 0).and_then(DateTime::<Utc>::from_timestamp_millis);
        Self(sent.filter(|t| is_event_time(*t)).unwrap_or_else(Utc::now))
    }

    /// A scheduled event: EventBridge's `time`, or the clock's when the event
    /// has none (or one EventBridge never sends, which is logged).
    pub fn of_scheduled_event(time: Option<DateTime<Utc>>) -> Self {
        match time {
            Some(time) if is_event_time(time) => Self(time),
            Some(time) => {
                tracing::warn!(%time, "the event's time is none EventBridge sends; deciding at the clock's");
                Self(Utc::now())
            }
            None => Self(Utc::now()),
        }
    }

    /// A slice of a fanned-out run: the time its dispatcher decided at, which
    /// every slice of the run shares however late it is delivered.
    pub fn of_slice(evaluated_at: DateTime<Utc>) -> Self {
        Self(evaluated_at)
    }

    /// The operator's command: `--at` when given (a dry run of a future day),
    /// else the operator's clock when the command started.
    pub fn of_operator(at: Option<DateTime<Utc>>) -> Self {
        Self(at.unwrap_or_else(Utc::now))
    }

    /// The time itself, for the decision's arithmetic.
    pub fn at(self) -> DateTime<Utc> {
        self.0
    }
}

/// A time given as it is: a test's, a replay's.
impl From<DateTime<Utc>> for DecisionTime {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t)
    }
}

impl fmt::Display for DecisionTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A time on the clock every actor shares: the real clock of the process,
/// which on Lambda (and any host kept by NTP) is within [`MAX_CLOCK_SKEW`]
/// of every other actor's. Leases are given and judged in it, never in an
/// event's time (the "run's time", a plain `DateTime<Utc>`), which can be
/// hours old (a redelivered slice) or in the future (`sweep --at`). The two
/// are different types so that no code compares one with the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseTime(DateTime<Utc>);

/// How far apart two actors' clocks may be: a lease counts as over only this
/// long after its end, by the judge's clock. The lease itself is validated to
/// be much longer (`ROTATION_LEASE`, see `config/rotation.rs`).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

impl LeaseTime {
    pub fn from_utc(t: DateTime<Utc>) -> Self {
        Self(t)
    }
    /// The wall-clock time, for display only.
    pub fn as_utc(self) -> DateTime<Utc> {
        self.0
    }
    /// This time plus `d` (saturating at the end of chrono's range).
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.checked_add_signed(d.to_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC))
    }
    /// Whether a lease ending at `self` is over at `now`, allowing for the skew
    /// between the clock that gave it and the clock that judges it.
    pub fn is_over_at(self, now: LeaseTime) -> bool {
        self.after(MAX_CLOCK_SKEW) <= now
    }
}

impl fmt::Display for LeaseTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many entries of history a record keeps (older ones stay in the audit trail).
pub const HISTORY_LIMIT: usize = 20;

/// An organization (tenant) id: 1 to 48 characters of `A-Z a-z 0-9 _ -`, so that
/// it is safe in an IAM user name (`org-{id}`), an S3 key and a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid org id '{shown}': expected 1 to 48 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidOrgId {
    shown: String,
}

impl OrgId {
    pub fn parse(text: &str) -> Result<Self, InvalidOrgId> {
        let valid =
            (1..=48).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidOrgId { shown: text.chars().take(48).flat_map(char::escape_debug).collect() })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The id of the org's bucket key in the KMS-style API.
    pub fn key_id(&self) -> String {
        format!("key-{}", self.0)
    }
    /// The org's IAM user name.
    pub fn user_name(&self) -> String {
        format!("org-{}", self.0)
    }
}

impl TryFrom<String> for OrgId {
    type Error = InvalidOrgId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OrgId> for String {
    fn from(value: OrgId) -> Self {
        value.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of an org's bucket key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Rotates on request and on schedule.
    Enabled,
    /// Suspended by an operator: keys inactive, no rotation.
    Disabled,
    /// Will be deleted at the record's deletion date; no rotation.
    PendingDeletion,
    /// The current key passed the maximum age and was deactivated; a manual
    /// rotation restores access.
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
            Self::Expired => "Expired",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One issued access key of the org (its id, never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVersion {
    pub version: u32,
    pub access_key_id: String,
    pub created_at: DateTime<Utc>,
    /// The key vault's version of this key's secret (the rotation id), when it
    /// was stored there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_version: Option<String>,
    /// When the key expires, if not `created_at` plus the maximum age: an
    /// adopted key's migration window (see [`KeyVersion::expiry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyVersion {
    /// When the 90-day rule takes this key away: its creation plus
    /// `max_key_age`, or the later date an adoption gave it.
    pub fn expiry(&self, max_key_age: Duration) -> DateTime<Utc> {
        let by_age = self.created_at + max_key_age.to_chrono();
        self.expires_at.map_or(by_age, |at| at.max(by_age))
    }
}

pub use super::retirement::PreviousKey;

/// The automatic rotation policy of the org's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    pub automatic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<DateTime<Utc>>,
}

/// What started a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// `POST /iam/rotate-key` by an org admin.
    Api,
    /// The scheduled evaluation (automatic rotation policy).
    Schedule,
    /// The operator CLI.
    Operator,
}

/// A rotation that has claimed the record and not yet committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRotation {
    pub rotation_id: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    /// Until then (on the shared clock), nobody else may rotate or repair this org.
    pub lease_until: LeaseTime,
    /// The new key, recorded as soon as IAM created it, so that a crash
    /// leaves a trace of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_access_key_id: Option<String>,
}

/// What happened to a key version, kept in the record's bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
}

/// Everything the registry knows about one org's bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgRecord {
    pub schema: u32,
    pub org_id: OrgId,
    pub key_id: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub iam_user: String,
    /// The member account the org's IAM user lives in; absent: the home
    /// account (every record written before member accounts existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The bucket and prefix the org's key reads.
    pub bucket: String,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<KeyVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousKey>,
    #[serde(default)]
    pub policy: RotationPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRotation>,
    /// Start times of recent rotations, for the per-org rate limit (last hour only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_rotations: Vec<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Expiry warnings already published for the current key (thresholds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings_sent: Vec<Duration>,
    /// When a `PendingDeletion` org is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_at: Option<DateTime<Utc>>,
    /// Audit entries committed with the change they describe (one write for
    /// both) and not yet copied to the audit trail: the sweep copies them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_outbox: Vec<AuditEntry>,
    /// Rotations requested with an `Idempotency-Key` in the last
    /// [`IDEMPOTENCY_WINDOW_HOURS`] hours: a repeat gets the same answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent_rotations: Vec<IdempotentRotation>,
    /// Keys the record does not know that had signed requests: deactivated
    /// and reported, deleted once KEY_RETENTION has passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<QuarantinedKey>,
    /// The id of the write that stored this version of the record, so that a
    /// writer whose answer was lost can tell its own write from another
    /// actor's (see `core::update`).
    #[serde(default, skip_serializing_if = "WriteId::is_none")]
    pub write_id: WriteId,
}

/// A key found on the org's user that the record did not know and that had
/// been used: never deleted before it has been inactive for KEY_RETENTION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedKey {
    pub access_key_id: String,
    pub deactivated_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// An IAM user in its AWS account: a member account's id, or `None` for the
/// home account (where the functions run).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IamUser {
    pub account: Option<String>,
    pub name: String,
}

impl IamUser {
    /// A user of the home account.
    pub fn home(name: impl Into<String>) -> Self {
        Self { account: None, name: name.into() }
    }
}

impl std::fmt::Display for IamUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.account {
            Some(account) => write!(f, "{} (account {account})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How long a rotation's `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// How many audit entries a record holds for the trail at most; beyond that a
/// rotation writes its entries to the trail itself.
pub const AUDIT_OUTBOX_LIMIT: usize = 20;

/// A committed rotation that was requested with an `Idempotency-Key`: enough
/// to give a repeat of the request the same answer (the secret comes from the
/// key vault, version `vault_version`; the record never holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotentRotation {
    pub key: String,
    /// SHA-256 (hex) of the request body, so a different request under the
    /// same key is told apart.
    pub fingerprint: String,
    pub at: DateTime<Utc>,
    pub version: u32,
    pub access_key_id: String,
    pub vault_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_retire_at: Option<DateTime<Utc>>,
}

/// One entry of the append-only audit trail: who did what, when, to which key
/// ids. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub org_id: OrgId,
    pub action: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl OrgRecord {
    pub const SCHEMA: u32 = 1;

    /// The org's IAM user, in its account.
    pub fn user(&self) -> IamUser {
        IamUser { account: self.account_id.clone(), name: self.iam_user.clone() }
    }

    /// A newly enrolled org: `Enabled`, no key yet (its first manual rotation issues one).
    pub fn enrolled(org: &OrgId, bucket: &str, prefix: &str, now: DateTime<Utc>) -> Self {
        Self {
            schema: Self::SCHEMA,
            org_id: org.clone(),
            key_id: org.key_id(),
            state: KeyState::Enabled,
            created_at: now,
            iam_user: org.user_name(),
            account_id: None,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            current: None,
            previous: None,
            policy: RotationPolicy::default(),
            pending: None,
            recent_rotations: Vec::new(),
            history: vec![HistoryEntry { at: now, event: "enrolled".into(), version: None, access_key_id: None }],
            warnings_sent: Vec::new(),
            deletion_at: None,
            audit_outbox: Vec::new(),
            idempotent_rotations: Vec::new(),
            quarantined: Vec::new(),
            write_id: WriteId::default(),
        }
    }

    /// The access key ids the record knows (current and previous).
    pub fn known_key_ids(&self) -> impl Iterator<Item = &str> {
        self.current
            .iter()
            .map(|k| k.access_key_id.as_str())
            .chain(self.previous.iter().map(|p| p.key.access_key_id.as_str()))
    }

    pub fn record_history(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_are_safe_in_names_and_keys() {
        assert!(OrgId::parse("1234567").is_ok());
        assert!(OrgId::parse("acme-prod_2").is_ok());
        for bad in ["", "a/b", "../x", "a b", "ü", &"9".repeat(49), "1234\n"] {
            let err = OrgId::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("expected 1 to 48 characters"), "{err}");
        }
        assert_eq!(OrgId::parse("42").unwrap().user_name(), "org-42");
        assert_eq!(OrgId::parse("42").unwrap().key_id(), "key-42");
    }

    #[test]
    fn a_record_round_trips_through_json_and_bounds_its_history() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T04:51:11Z").unwrap().with_timezone(&Utc);
        let mut record = OrgRecord::enrolled(&OrgId::parse("7").unwrap(), "logs", "7/", now);
        for i in 0..50 {
            record.record_history(HistoryEntry { at: now, event: format!("e{i}"), version: None, access_key_id: None });
        }
        assert_eq!(record.history.len(), HISTORY_LIMIT);
        assert_eq!(record.history.last().unwrap().event, "e49");
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<OrgRecord>(&json).unwrap(), record);
        // An org id that is not valid is refused when a record is read.
        let tampered = json.replace("\"orgId\":\"7\"", "\"orgId\":\"../8\"");
        assert!(serde_json::from_str::<OrgRecord>(&tampered).is_err());
    }
}
