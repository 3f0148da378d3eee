//! The life of a key after it stops being current, decided in one place.
//!
//! When a rotation commits, the key that was current becomes the record's
//! previous key, a [`PreviousKey`], and goes through these stages:
//!
//! ```text
//!  in grace ──grace over──► deactivated ──retention over──► deleted (the record forgets it)
//!     │   └──still in use (RETIRE_IN_USE=defer)──► in grace, one grace period more
//!     └──no grace──► deactivation ordered ──the sweep confirms IAM's──► deactivated
//! ```
//!
//! The stages are [`Stage`]; every change of stage is a method of
//! [`PreviousKey`], and [`PreviousKey::due`] says what is due at a time: the
//! rotation, the sweep, adoption, the operator's commands and the API all ask
//! these, and none reads or writes the fields.
//!
//! A key IAM holds that the record does not know is judged by [`judge_unknown`]
//! (then [`after_last_use`] once IAM has said whether it was ever used): a
//! crashed rotation's own key and a key never used are deleted (never
//! delivered); a used one is deactivated and kept, quarantined, for the
//! retention, then deleted. The rotation's reconcile and the sweep both ask it.
//! While a quarantined key and the current key fill IAM's two places, a
//! rotation is refused with [`SlotsHeld`], which names the key, when it goes,
//! and the operator's way out: never IAM's own quota error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::domain::{KeyVersion, OrgRecord, QuarantinedKey};
use super::duration::Duration;

/// The key that was current before the last rotation. Its stage is private:
/// [`PreviousKey::stage`] shows it, the methods change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    #[serde(flatten)]
    pub key: KeyVersion,
    /// When it stopped (or stops) being usable.
    retire_at: DateTime<Utc>,
    /// Set once it has been deactivated in IAM (or, with
    /// `deactivation_unconfirmed`, once a commit ordered it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deactivated_at: Option<DateTime<Utc>>,
    /// The commit recorded the deactivation before making it (the IAM call
    /// follows the commit, so that the record is written once): the next sweep
    /// deactivates the key again (idempotent) and confirms it, so a crash
    /// between the commit and the IAM call cannot leave the key active.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deactivation_unconfirmed: bool,
}

/// Where a previous key is in its retirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Still active, until `retire_at`.
    InGrace { retire_at: DateTime<Utc> },
    /// Its deactivation was ordered at `at` by a commit; IAM's is not confirmed yet.
    Ordered { at: DateTime<Utc> },
    /// Inactive in IAM since `at`.
    Deactivated { at: DateTime<Utc> },
}

/// What is due for a previous key at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Its grace period is over: deactivate it.
    Deactivate,
    /// Inactive for the retention: delete it (the record forgets it first).
    Delete,
}

impl PreviousKey {
    /// `key`, no longer current from `now`: it retires after `grace` (with
    /// none, the commit orders its deactivation). An `expired` key (the org
    /// was `Expired`) is inactive already.
    pub fn retiring(key: KeyVersion, now: DateTime<Utc>, grace: Duration, expired: bool) -> Self {
        let retire_now = grace.as_secs() == 0;
        Self {
            key,
            retire_at: if expired { now } else { now + grace.to_chrono() },
            deactivated_at: (expired || retire_now).then_some(now),
            deactivation_unconfirmed: !expired && retire_now,
        }
    }

    /// An adopted key that is not the current one: active keys keep working
    /// for `grace`, inactive ones are retired as found.
    pub fn adopted(key: KeyVersion, active: bool, now: DateTime<Utc>, grace: Duration) -> Self {
        Self {
            key,
            retire_at: if active { now + grace.to_chrono() } else { now },
            deactivated_at: (!active).then_some(now),
            deactivation_unconfirmed: false,
        }
    }

    pub fn stage(&self) -> Stage {
        match self.deactivated_at {
            None => Stage::InGrace { retire_at: self.retire_at },
            Some(at) if self.deactivation_unconfirmed => Stage::Ordered { at },
            Some(at) => Stage::Deactivated { at },
        }
    }

    /// Whether the key still works (in grace).
    pub fn is_active(&self) -> bool {
        self.deactivated_at.is_none()
    }

    /// When it stopped, or stops, being usable.
    pub fn retire_at(&self) -> DateTime<Utc> {
        self.retire_at
    }

    /// Whether a commit ordered its deactivation and IAM's is not confirmed.
    pub fn awaits_confirmation(&self) -> bool {
        matches!(self.stage(), Stage::Ordered { .. })
    }

    /// What is due at `now`, with `retention` the time an inactive key is kept.
    pub fn due(&self, now: DateTime<Utc>, retention: Duration) -> Option<Due> {
        match self.stage() {
            Stage::InGrace { retire_at } if retire_at <= now => Some(Due::Deactivate),
            Stage::Deactivated { at } if at + retention.to_chrono() <= now => Some(Due::Delete),
            _ => None,
        }
    }

    /// IAM deactivated it at `now`.
    pub fn deactivated(&mut self, now: DateTime<Utc>) {
        if self.deactivated_at.is_none() {
            self.deactivated_at = Some(now);
        }
    }

    /// The sweep confirmed the deactivation a commit ordered.
    pub fn confirm_deactivation(&mut self) {
        self.deactivation_unconfirmed = false;
    }

    /// Still in use when its grace ended: it retires at `to` instead.
    pub fn defer_to(&mut self, to: DateTime<Utc>) {
        if self.is_active() {
            self.retire_at = to;
        }
    }

    /// Retired now, whatever grace was left (an operator suspends the org);
    /// `false` when it was inactive already.
    pub fn cut_short(&mut self, now: DateTime<Utc>) -> bool {
        if !self.is_active() {
            return false;
        }
        self.deactivated_at = Some(now);
        self.retire_at = self.retire_at.min(now);
        true
    }
}

/// What becomes of a key IAM holds that the record does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The record knows it after all (current, previous, or the live claim's new key).
    Known,
    /// A used key, quarantined: kept (inactive) until `until`.
    Kept { until: DateTime<Utc> },
    /// Deleted: a crashed rotation's own key, or a quarantined key past its retention.
    Delete,
    /// Whether it was ever used decides: ask IAM, then [`after_last_use`].
    AskLastUse,
}

/// The one judgement of a key the record does not know (see the module
/// documentation). `own_key`: the key a crashed rotation made (found in its
/// claim or in the vault under its id): never delivered, though its own check
/// may have signed with it.
pub fn judge_unknown(
    record: &OrgRecord,
    access_key_id: &str,
    own_key: Option<&str>,
    now: DateTime<Utc>,
    retention: Duration,
) -> Unknown {
    let claimed = record.pending.as_ref().and_then(|p| p.new_access_key_id.as_deref());
    if record.known_key_ids().any(|k| k == access_key_id) || (claimed == Some(access_key_id) && own_key.is_none()) {
        return Unknown::Known;
    }
    if own_key == Some(access_key_id) {
        return Unknown::Delete;
    }
    match record.quarantined.iter().find(|q| q.access_key_id == access_key_id) {
        Some(q) => {
            let until = quarantine_ends(q, retention);
            if until > now {
                Unknown::Kept { until }
            } else {
                Unknown::Delete
            }
        }
        None => Unknown::AskLastUse,
    }
}

/// The judgement once IAM has said when the key was last used: a key that
/// ever signed a request is someone's, never deleted unannounced.
pub fn after_last_use(last_used: Option<DateTime<Utc>>) -> AfterUse {
    match last_used {
        Some(at) => AfterUse::Quarantine { last_used_at: at },
        None => AfterUse::Delete,
    }
}

/// See [`after_last_use`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUse {
    /// Deactivate it, note it in the record, report it; deleted after the retention.
    Quarantine { last_used_at: DateTime<Utc> },
    /// Never used: never delivered. Deleted.
    Delete,
}

/// When a quarantined key's retention ends.
pub fn quarantine_ends(q: &QuarantinedKey, retention: Duration) -> DateTime<Utc> {
    q.deactivated_at + retention.to_chrono()
}

/// A rotation cannot make room: IAM's two places hold the current key and a
/// quarantined one, kept until `until`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the org's IAM user holds its current key and {access_key_id}, a key the registry did not know that had been \
     used: it was deactivated and is kept until {until} (KEY_RETENTION) in case its owner needs it back, and a new \
     key cannot be made until then. An operator who knows it is not needed deletes it now (aws iam \
     delete-access-key --user-name {user} --access-key-id {access_key_id}); the next rotation then succeeds"
)]
pub struct SlotsHeld {
    pub access_key_id: String,
    pub until: DateTime<Utc>,
    pub user: String,
}

/// The slot rule: when the user's keys after reconciling (`held`: the ids
/// IAM still lists) are two and one is quarantined and kept, a new key has no
/// place: [`SlotsHeld`].
pub fn room_for_a_new_key(
    record: &OrgRecord,
    held: &[&str],
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<(), SlotsHeld> {
    if held.len() < 2 {
        return Ok(());
    }
    for id in held {
        if let Unknown::Kept { until } = judge_unknown(record, id, None, now, retention) {
            return Err(SlotsHeld { access_key_id: (*id).to_owned(), until, user: record.iam_user.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::core::domain::OrgId;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap()
    }

    fn key(id: &str) -> KeyVersion {
        KeyVersion { version: 1, access_key_id: id.into(), created_at: t0(), vault_version: None, expires_at: None }
    }

    #[test]
    fn a_key_with_grace_retires_then_is_deleted_after_the_retention() {
        let week = Duration::from_days(7);
        let mut p = PreviousKey::retiring(key("A"), t0(), Duration::from_hours(24), false);
        assert_eq!(p.stage(), Stage::InGrace { retire_at: t0() + chrono::TimeDelta::hours(24) });
        assert_eq!(p.due(t0() + chrono::TimeDelta::hours(23), week), None);
        assert_eq!(p.due(t0() + chrono::TimeDelta::hours(24), week), Some(Due::Deactivate));
        p.deactivated(t0() + chrono::TimeDelta::hours(25));
        assert!(!p.is_active());
        assert_eq!(p.due(t0() + chrono::TimeDelta::days(8), week), None);
        assert_eq!(p.due(t0() + chrono::TimeDelta::hours(25) + chrono::TimeDelta::days(7), week), Some(Due::Delete));
    }

    #[test]
    fn a_key_without_grace_waits_for_its_deactivation_to_be_confirmed() {
        let mut p = PreviousKey::retiring(key("A"), t0(), Duration::from_secs(0), false);
        assert_eq!(p.stage(), Stage::Ordered { at: t0() });
        assert!(p.awaits_confirmation() && !p.is_active());
        assert_eq!(p.due(t0() + chrono::TimeDelta::days(30), Duration::from_days(7)), None, "not deleted unconfirmed");
        p.confirm_deactivation();
        assert_eq!(p.stage(), Stage::Deactivated { at: t0() });
    }

    #[test]
    fn deferring_and_cutting_short_change_only_an_active_key() {
        let mut p = PreviousKey::retiring(key("A"), t0(), Duration::from_hours(24), false);
        p.defer_to(t0() + chrono::TimeDelta::hours(48));
        assert_eq!(p.retire_at(), t0() + chrono::TimeDelta::hours(48));
        assert!(p.cut_short(t0()));
        assert_eq!((p.retire_at(), p.stage()), (t0(), Stage::Deactivated { at: t0() }));
        assert!(!p.cut_short(t0() + chrono::TimeDelta::hours(1)));
        p.defer_to(t0() + chrono::TimeDelta::days(9));
        assert_eq!(p.retire_at(), t0(), "a retired key is not brought back");
    }

    #[test]
    fn an_unknown_key_is_judged_the_same_for_every_caller() {
        let org = OrgId::parse("1234567").unwrap();
        let mut record = OrgRecord::enrolled(&org, "logs", "1234567/", t0());
        record.current = Some(key("CURRENT"));
        record.quarantined.push(QuarantinedKey {
            access_key_id: "Q".into(),
            deactivated_at: t0(),
            last_used_at: t0() - chrono::TimeDelta::days(1),
        });
        let week = Duration::from_days(7);
        assert_eq!(judge_unknown(&record, "CURRENT", None, t0(), week), Unknown::Known);
        assert_eq!(judge_unknown(&record, "STALE", Some("STALE"), t0(), week), Unknown::Delete);
        assert_eq!(judge_unknown(&record, "NEW", None, t0(), week), Unknown::AskLastUse);
        let until = t0() + chrono::TimeDelta::days(7);
        assert_eq!(judge_unknown(&record, "Q", None, t0() + chrono::TimeDelta::days(6), week), Unknown::Kept { until });
        assert_eq!(judge_unknown(&record, "Q", None, until, week), Unknown::Delete, "past its retention");
        assert_eq!(after_last_use(None), AfterUse::Delete);
        assert_eq!(after_last_use(Some(t0())), AfterUse::Quarantine { last_used_at: t0() });
        // The slot rule: the current key and a kept quarantined one leave no place.
        let held = room_for_a_new_key(&record, &["CURRENT", "Q"], t0(), week).unwrap_err();
        assert_eq!((held.access_key_id.as_str(), held.until), ("Q", until));
        assert!(held.to_string().contains("delete-access-key --user-name org-1234567 --access-key-id Q"), "{held}");
        assert!(room_for_a_new_key(&record, &["CURRENT"], t0(), week).is_ok());
    }
}
