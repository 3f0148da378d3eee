//! The automatic rotation policy of an org's key, and the views of the key
//! that the KMS-style API shows (DescribeKey, ListKeyVersions).

use chrono::{DateTime, Utc};
use tracing::info;

use super::domain::{KeyState, OrgId, OrgRecord};
use super::duration::Duration;
use super::ports::{AuditEntry, AuditLog, PortError, Registry};
use super::rotation::{write_audit, RotationSettings};
use super::update::{update_record, Decision, UpdateError, Updated};

/// The shortest and longest automatic rotation intervals.
pub const MIN_INTERVAL: Duration = Duration::from_days(7);
pub const MAX_INTERVAL: Duration = Duration::from_days(365);

/// What UpdateRotationPolicy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    Enable { interval: Duration },
    Disable,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The org has no record: its key is "not found".
    #[error("The specified Key is not found.")]
    KeyNotFound,
    #[error("RotationInterval: {0} is not between 7 days and 365 days")]
    IntervalOutOfRange(Duration),
    #[error("the record of org {0} kept changing; try again")]
    Contended(OrgId),
    #[error("AWS failed; nothing changed: {0}")]
    Aws(#[from] PortError),
}

impl PolicyChange {
    /// Checks the interval bounds (7 to 365 days, inclusive).
    pub fn enable(interval: Duration) -> Result<Self, PolicyError> {
        if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
            return Err(PolicyError::IntervalOutOfRange(interval));
        }
        Ok(Self::Enable { interval })
    }
}

/// Applies a policy change to a record: the next rotation is the last
/// rotation (or, before the first, now) plus the interval; disabling clears it.
pub fn apply_policy(record: &mut OrgRecord, change: PolicyChange, now: DateTime<Utc>) {
    match change {
        PolicyChange::Enable { interval } => {
            record.policy.automatic = true;
            record.policy.interval = Some(interval);
            let base = record.policy.last_rotation_at.unwrap_or(now);
            record.policy.next_rotation_at = Some(base + interval.to_chrono());
        }
        PolicyChange::Disable => {
            record.policy.automatic = false;
            record.policy.next_rotation_at = None;
        }
    }
}

/// Stores a policy change (through `core::update`: decided again on a lost race) and
/// audits it. Allowed in every key state: `Disabled` and `PendingDeletion`
/// keep rotation suspended until the key is `Enabled` again.
pub async fn update_policy(
    registry: &dyn Registry,
    audit: &dyn AuditLog,
    org: &OrgId,
    change: PolicyChange,
    now: DateTime<Utc>,
    actor: &str,
    request_id: Option<String>,
) -> Result<OrgRecord, PolicyError> {
    let updated = update_record(registry, org, |record| {
        apply_policy(record, change, now);
        Ok::<_, std::convert::Infallible>(Decision::Write(()))
    })
    .await;
    let record = match updated {
        Ok(Updated::Written { value, .. } | Updated::Unchanged { value, .. }) => value,
        Ok(Updated::Missing) => return Err(PolicyError::KeyNotFound),
        Err(UpdateError::Port(e)) => return Err(e.into()),
        Err(UpdateError::Contended) => return Err(PolicyError::Contended(org.clone())),
        Err(UpdateError::Refused(never)) => match never {},
    };
    let detail = match change {
        PolicyChange::Enable { interval } => {
            format!(
                "automatic rotation every {interval}, next at {}",
                record.policy.next_rotation_at.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            )
        }
        PolicyChange::Disable => "automatic rotation disabled".to_owned(),
    };
    info!(org = %org, %detail, "rotation policy updated");
    let entry = AuditEntry {
        at: now,
        org_id: org.clone(),
        action: "update rotation policy".into(),
        actor: actor.to_owned(),
        request_id,
        key_ids: Vec::new(),
        detail: Some(detail),
    };
    write_audit(audit, &entry).await;
    Ok(record)
}

/// When automatic rotation will really rotate the key: the policy's date (the
/// last rotation plus the interval), but never later than
/// `settings.automatic_lead` before the current key reaches its maximum age.
/// An interval longer than the maximum age (the reference accepts up to 365
/// days against a 90-day maximum) thus never lets the 90-day rule cut an org
/// with automatic rotation off. `None`: automatic rotation is off.
pub fn next_automatic_rotation(record: &OrgRecord, settings: &RotationSettings) -> Option<DateTime<Utc>> {
    if !record.policy.automatic {
        return None;
    }
    let by_interval = record.policy.next_rotation_at?;
    let by_age = record.current.as_ref().map(|c| c.expiry(settings.max_key_age) - settings.automatic_lead.to_chrono());
    Some(by_age.map_or(by_interval, |cap| by_interval.min(cap)))
}

/// The state of automatic rotation as DescribeKey shows it.
pub fn automatic_rotation(record: &OrgRecord) -> &'static str {
    match (record.policy.automatic, record.state) {
        (false, _) => "Disabled",
        (true, KeyState::Enabled) => "Enabled",
        (true, _) => "Suspended",
    }
}

/// The status of one key version in ListKeyVersions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    /// The current key.
    Primary,
    /// The key before it, active during its grace period or inactive.
    Previous,
    /// Deleted.
    Retired,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "Primary",
            Self::Previous => "Previous",
            Self::Retired => "Retired",
        }
    }
}

/// One key version as ListKeyVersions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    pub version: u32,
    pub access_key_id: String,
    pub created_at: DateTime<Utc>,
    pub status: VersionStatus,
}

/// Every key version the record knows, newest first.
pub fn key_versions(record: &OrgRecord) -> Vec<VersionView> {
    let current = record.current.as_ref().map(|c| c.version);
    let previous = record.previous.as_ref().map(|p| p.key.version);
    let status = |version| {
        if Some(version) == current {
            VersionStatus::Primary
        } else if Some(version) == previous {
            VersionStatus::Previous
        } else {
            VersionStatus::Retired
        }
    };
    let mut versions: Vec<VersionView> = record
        .history
        .iter()
        .filter(|h| h.event == "rotated")
        .filter_map(|h| {
            Some(VersionView {
                version: h.version?,
                access_key_id: h.access_key_id.clone()?,
                created_at: h.at,
                status: status(h.version?),
            })
        })
        .collect();
    // The current and previous keys are always listed, even when the bounded
    // history no longer holds their rotation.
    for key in record.current.iter().chain(record.previous.iter().map(|p| &p.key)) {
        if !versions.iter().any(|v| v.version == key.version) {
            versions.push(VersionView {
                version: key.version,
                access_key_id: key.access_key_id.clone(),
                created_at: key.created_at,
                status: status(key.version),
            });
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    versions
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::core::rotation::commit_rotation;

    fn record() -> OrgRecord {
        OrgRecord::enrolled(
            &OrgId::parse("42").unwrap(),
            "logs",
            "42/",
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        )
    }

    #[test]
    fn intervals_from_seven_to_365_days_are_accepted() {
        for ok in ["7d", "604800s", "8760h", "365d", "10080m"] {
            assert!(PolicyChange::enable(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["6d", "366d", "0d", "604799s", "8761h"] {
            let err = PolicyChange::enable(bad.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("not between 7 days and 365 days"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_next_rotation_is_the_last_rotation_plus_the_interval() {
        let mut r = record();
        let t0 = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        commit_rotation(&mut r, "AKIA1", t0, Duration::from_secs(0), None);
        let later = t0 + TimeDelta::days(3);
        apply_policy(&mut r, PolicyChange::enable(Duration::from_days(30)).unwrap(), later);
        assert_eq!(r.policy.next_rotation_at, Some(t0 + TimeDelta::days(30)));
        // Already past: due at once (the next scheduled run rotates).
        apply_policy(&mut r, PolicyChange::enable(Duration::from_days(7)).unwrap(), t0 + TimeDelta::days(10));
        assert_eq!(r.policy.next_rotation_at, Some(t0 + TimeDelta::days(7)));
        // A rotation moves it on.
        commit_rotation(&mut r, "AKIA2", t0 + TimeDelta::days(10), Duration::from_secs(0), None);
        assert_eq!(r.policy.next_rotation_at, Some(t0 + TimeDelta::days(17)));
        apply_policy(&mut r, PolicyChange::Disable, t0 + TimeDelta::days(11));
        assert_eq!(r.policy.next_rotation_at, None);
        assert_eq!(r.policy.interval, Some(Duration::from_days(7)), "the interval is kept for display");
        assert_eq!(automatic_rotation(&r), "Disabled");
    }

    #[test]
    fn rotation_is_suspended_unless_the_key_is_enabled() {
        let mut r = record();
        let at = r.created_at;
        apply_policy(&mut r, PolicyChange::enable(Duration::from_days(30)).unwrap(), at);
        assert_eq!(automatic_rotation(&r), "Enabled");
        for state in [KeyState::Disabled, KeyState::PendingDeletion, KeyState::Expired] {
            r.state = state;
            assert_eq!(automatic_rotation(&r), "Suspended");
        }
    }

    #[test]
    fn versions_are_listed_newest_first_with_their_status() {
        let mut r = record();
        let t0 = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        for i in 1..=30 {
            commit_rotation(&mut r, &format!("AKIA{i}"), t0 + TimeDelta::days(i.into()), Duration::from_secs(0), None);
        }
        let versions = key_versions(&r);
        assert_eq!(versions[0].version, 30);
        assert_eq!(versions[0].status, VersionStatus::Primary);
        assert_eq!(versions[1].status, VersionStatus::Previous);
        assert!(versions[2..].iter().all(|v| v.status == VersionStatus::Retired));
        assert!(versions.windows(2).all(|w| w[0].version > w[1].version));
        assert_eq!(versions[0].access_key_id, "AKIA30");
        assert_eq!(versions[0].created_at, t0 + TimeDelta::days(30));
        assert!(key_versions(&record()).is_empty());
    }
}
