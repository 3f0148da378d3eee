//! The operator's changes of an org's key state, as KMS has them for a key:
//! disable / enable, schedule deletion (7 to 30 days) / cancel it (the key
//! comes back `Disabled`, as in KMS).
//!
//! Order of the steps: the record first (a conditional write, so that no
//! rotation can start in between and the sweep sees the new state), then the
//! IAM keys. Each change is idempotent: when the IAM step fails the operator
//! runs the same command again and it finishes the job.

use chrono::{DateTime, Utc};

use super::domain::{HistoryEntry, KeyState, OrgId, OrgRecord};
use super::duration::Duration;
use super::ports::{AccessKeys, AuditEntry, AuditLog, PortError, Registry};
use super::rotation::write_audit;
use super::update::{update_record, Decision, UpdateError, Updated};

/// The deletion window an operator may choose, in days (KMS: 7 to 30).
pub const DELETION_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Not found IAM key info for orgId: {0}")]
    NotEnrolled(OrgId),
    #[error("org {org} is {state}: cannot {action} it")]
    InvalidState { org: OrgId, state: KeyState, action: &'static str },
    #[error(
        "a rotation of org {0} is in progress (or was interrupted and awaits repair by the sweep); try again later"
    )]
    RotationInProgress(OrgId),
    #[error("the record of org {0} kept changing; try again")]
    Contended(OrgId),
    #[error("the deletion window must be 7 to 30 days, not {0}")]
    InvalidWindow(u32),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub record: OrgRecord,
    /// False when the org already was in the asked state (the keys were still checked).
    pub changed: bool,
    pub activated: Vec<String>,
    pub deactivated: Vec<String>,
}

/// The ports an operator change needs.
#[derive(Clone, Copy)]
pub struct AdminPorts<'a> {
    pub registry: &'a dyn Registry,
    pub keys: &'a dyn AccessKeys,
    pub audit: &'a dyn AuditLog,
}

/// `Disabled`: the org's keys are deactivated (it loses access) and rotation is suspended.
pub async fn disable(
    ports: AdminPorts<'_>,
    org: &OrgId,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<StateChange, AdminError> {
    change(ports, org, now, actor, "disable", |record| match record.state {
        KeyState::Enabled | KeyState::Expired => {
            record.state = KeyState::Disabled;
            Ok(true)
        }
        KeyState::Disabled => Ok(false),
        state @ KeyState::PendingDeletion => {
            Err(AdminError::InvalidState { org: org.clone(), state, action: "disable (cancel the deletion)" })
        }
    })
    .await
}

/// Back from `Disabled`: the current key is reactivated and rotation resumes; a
/// current key past `max_key_age` stays inactive and the org is `Expired` (a
/// rotation restores access).
pub async fn enable(
    ports: AdminPorts<'_>,
    org: &OrgId,
    now: DateTime<Utc>,
    max_key_age: Duration,
    actor: &str,
) -> Result<StateChange, AdminError> {
    change(ports, org, now, actor, "enable", |record| match record.state {
        KeyState::Disabled => {
            let too_old = record.current.as_ref().is_some_and(|c| c.expiry(max_key_age) <= now);
            record.state = if too_old { KeyState::Expired } else { KeyState::Enabled };
            Ok(true)
        }
        KeyState::Enabled | KeyState::Expired => Ok(false),
        state @ KeyState::PendingDeletion => {
            Err(AdminError::InvalidState { org: org.clone(), state, action: "enable (cancel the deletion first)" })
        }
    })
    .await
}

/// `PendingDeletion` for `days` (7 to 30): keys deactivated now, the sweep deletes
/// the keys, user, secret and record once the date has passed.
pub async fn schedule_deletion(
    ports: AdminPorts<'_>,
    org: &OrgId,
    now: DateTime<Utc>,
    days: u32,
    actor: &str,
) -> Result<StateChange, AdminError> {
    if !DELETION_WINDOW_DAYS.contains(&days) {
        return Err(AdminError::InvalidWindow(days));
    }
    change(ports, org, now, actor, "schedule-deletion", |record| match record.state {
        KeyState::PendingDeletion => Ok(false),
        _ => {
            record.state = KeyState::PendingDeletion;
            record.deletion_at = Some(now + chrono::Duration::days(i64::from(days)));
            Ok(true)
        }
    })
    .await
}

/// Cancels a scheduled deletion: the org comes back `Disabled` (keys inactive);
/// `enable` then restores access.
pub async fn cancel_deletion(
    ports: AdminPorts<'_>,
    org: &OrgId,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<StateChange, AdminError> {
    change(ports, org, now, actor, "cancel-deletion", |record| match record.state {
        KeyState::PendingDeletion => {
            record.state = KeyState::Disabled;
            record.deletion_at = None;
            Ok(true)
        }
        state => Err(AdminError::InvalidState { org: org.clone(), state, action: "cancel the deletion of" }),
    })
    .await
}

async fn change(
    ports: AdminPorts<'_>,
    org: &OrgId,
    now: DateTime<Utc>,
    actor: &str,
    action: &'static str,
    apply: impl Fn(&mut OrgRecord) -> Result<bool, AdminError>,
) -> Result<StateChange, AdminError> {
    let updated = update_record(ports.registry, org, |record| {
        if record.pending.is_some() {
            return Err(AdminError::RotationInProgress(org.clone()));
        }
        let changed = apply(record)?;
        // Keys inactive in every state but Enabled; only the current key is ever
        // (re)activated: a previous key stays retired.
        let deactivated_previous =
            record.state != KeyState::Enabled && record.previous.as_mut().is_some_and(|p| p.cut_short(now));
        if !(changed || deactivated_previous) {
            return Ok(Decision::Keep(changed));
        }
        record.record_history(HistoryEntry {
            at: now,
            event: format!("{action}: {}", record.state),
            version: record.current.as_ref().map(|c| c.version),
            access_key_id: record.current.as_ref().map(|c| c.access_key_id.clone()),
        });
        Ok(Decision::Write(changed))
    })
    .await;
    let (record, changed) = match updated {
        Ok(Updated::Written { value, out, .. } | Updated::Unchanged { value, out, .. }) => (value, out),
        Ok(Updated::Missing) => return Err(AdminError::NotEnrolled(org.clone())),
        Err(UpdateError::Refused(e)) => return Err(e),
        Err(UpdateError::Port(e)) => return Err(e.into()),
        Err(UpdateError::Contended) => return Err(AdminError::Contended(org.clone())),
    };
    let active_wanted = record.state == KeyState::Enabled;

    let mut outcome = StateChange { record, changed, activated: Vec::new(), deactivated: Vec::new() };
    let record = &outcome.record;
    if let Some(current) = &record.current {
        ports.keys.set_active(&record.user(), &current.access_key_id, active_wanted).await?;
        if active_wanted {
            outcome.activated.push(current.access_key_id.clone());
        } else {
            outcome.deactivated.push(current.access_key_id.clone());
        }
    }
    if !active_wanted {
        if let Some(previous) = &record.previous {
            ports.keys.set_active(&record.user(), &previous.key.access_key_id, false).await?;
            outcome.deactivated.push(previous.key.access_key_id.clone());
        }
    }
    if outcome.changed {
        let mut key_ids = outcome.activated.clone();
        key_ids.extend(outcome.deactivated.iter().cloned());
        let entry = AuditEntry {
            at: now,
            org_id: org.clone(),
            action: action.into(),
            actor: actor.into(),
            request_id: None,
            key_ids,
            detail: Some(match record.deletion_at {
                Some(at) if record.state == KeyState::PendingDeletion => {
                    format!("state PendingDeletion, deleted after {}", at.format("%Y-%m-%d %H:%M:%S UTC"))
                }
                _ => format!("state {}", record.state),
            }),
        };
        write_audit(ports.audit, &entry).await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::core::domain::{KeyVersion, PendingRotation, Trigger};
    use crate::core::memory::{FaultMode, MemoryWorld};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap()
    }

    /// An enrolled org whose first key (v1, active) was issued at t0.
    async fn world_with_key() -> (MemoryWorld, OrgId, String) {
        let world = MemoryWorld::new();
        let org = OrgId::parse("1234567").unwrap();
        let mut record = world.enroll(&org, t0()).await;
        let key = world.keys.create_key(&record.user()).await.unwrap();
        record.current = Some(KeyVersion {
            version: 1,
            access_key_id: key.access_key_id.clone(),
            created_at: t0(),
            vault_version: None,
            expires_at: None,
        });
        world.registry.put(record);
        (world, org, key.access_key_id)
    }

    fn admin(world: &MemoryWorld) -> AdminPorts<'_> {
        AdminPorts { registry: &world.registry, keys: &world.keys, audit: &world.audit }
    }

    fn works(world: &MemoryWorld, org: &OrgId, key: &str) -> bool {
        world.keys.works(&org.user_name(), key)
    }

    fn state(world: &MemoryWorld, org: &OrgId) -> KeyState {
        world.registry.get(org).unwrap().state
    }

    #[tokio::test]
    async fn disable_then_enable_takes_access_away_and_gives_it_back() {
        let (world, org, key) = world_with_key().await;
        let later = t0() + chrono::Duration::days(1);
        let off = disable(admin(&world), &org, later, "operator").await.unwrap();
        assert!(off.changed);
        assert_eq!(off.record.state, KeyState::Disabled);
        assert!(!works(&world, &org, &key));
        assert_eq!(state(&world, &org), KeyState::Disabled);

        let on = enable(admin(&world), &org, later, Duration::from_days(90), "operator").await.unwrap();
        assert_eq!(on.record.state, KeyState::Enabled);
        assert!(works(&world, &org, &key));
        let actions: Vec<String> = world.audit.entries().into_iter().map(|e| e.action).collect();
        assert!(actions.ends_with(&["disable".to_string(), "enable".to_string()]), "{actions:?}");
    }

    #[tokio::test]
    async fn enabling_a_key_past_its_maximum_age_leaves_it_inactive_and_the_org_expired() {
        let (world, org, key) = world_with_key().await;
        disable(admin(&world), &org, t0(), "operator").await.unwrap();
        let much_later = t0() + chrono::Duration::days(91);
        let on = enable(admin(&world), &org, much_later, Duration::from_days(90), "operator").await.unwrap();
        assert_eq!(on.record.state, KeyState::Expired);
        assert!(!works(&world, &org, &key));
    }

    #[tokio::test]
    async fn deletion_is_scheduled_within_7_to_30_days_and_cancelled_to_disabled() {
        let (world, org, key) = world_with_key().await;
        for days in [0, 6, 31] {
            assert!(matches!(
                schedule_deletion(admin(&world), &org, t0(), days, "operator").await,
                Err(AdminError::InvalidWindow(d)) if d == days
            ));
        }
        assert_eq!(state(&world, &org), KeyState::Enabled);
        let scheduled = schedule_deletion(admin(&world), &org, t0(), 7, "operator").await.unwrap();
        assert_eq!(scheduled.record.deletion_at, Some(t0() + chrono::Duration::days(7)));
        assert!(!works(&world, &org, &key));
        assert!(matches!(
            enable(admin(&world), &org, t0(), Duration::from_days(90), "operator").await,
            Err(AdminError::InvalidState { state: KeyState::PendingDeletion, .. })
        ));
        let cancelled = cancel_deletion(admin(&world), &org, t0(), "operator").await.unwrap();
        assert_eq!(cancelled.record.state, KeyState::Disabled);
        assert_eq!(cancelled.record.deletion_at, None);
        assert!(matches!(
            cancel_deletion(admin(&world), &org, t0(), "operator").await,
            Err(AdminError::InvalidState { state: KeyState::Disabled, .. })
        ));
    }

    #[tokio::test]
    async fn an_org_not_enrolled_or_mid_rotation_is_refused_and_unchanged() {
        let world = MemoryWorld::new();
        let stranger = OrgId::parse("7654321").unwrap();
        assert!(matches!(disable(admin(&world), &stranger, t0(), "operator").await, Err(AdminError::NotEnrolled(_))));

        let (world, org, key) = world_with_key().await;
        let mut claimed = world.registry.get(&org).unwrap();
        claimed.pending = Some(PendingRotation {
            rotation_id: "r-1".into(),
            trigger: Trigger::Api,
            started_at: t0(),
            lease_until: crate::core::domain::LeaseTime::from_utc(t0()).after(Duration::from_secs(300)),
            new_access_key_id: None,
        });
        world.registry.put(claimed);
        let before = world.registry.get(&org);
        assert!(matches!(disable(admin(&world), &org, t0(), "operator").await, Err(AdminError::RotationInProgress(_))));
        assert_eq!(world.registry.get(&org), before);
        assert!(works(&world, &org, &key));
    }

    #[tokio::test]
    async fn a_failed_iam_step_is_finished_by_running_the_command_again() {
        let (world, org, key) = world_with_key().await;
        // The record is read (call 1) and written (call 2), then IAM fails (call 3).
        world.faults.inject(3, FaultMode::Fail);
        assert!(matches!(disable(admin(&world), &org, t0(), "operator").await, Err(AdminError::Port(_))));
        assert_eq!(state(&world, &org), KeyState::Disabled);
        assert!(works(&world, &org, &key));

        let again = disable(admin(&world), &org, t0(), "operator").await.unwrap();
        assert!(!again.changed);
        assert!(!works(&world, &org, &key));
    }
}
