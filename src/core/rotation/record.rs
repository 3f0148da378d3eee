//! The rotation's changes of the record and the vault, shared with the sweep:
//! the commit as a pure change, the retirement of the previous key, the
//! vault's current version, the audit trail.

use chrono::{DateTime, Utc};
use tracing::{error, info};

use crate::core::domain::{
    HistoryEntry, IdempotentRotation, KeyState, KeyVersion, OrgId, OrgRecord, PreviousKey, IDEMPOTENCY_WINDOW_HOURS,
};
use crate::core::duration::Duration;
use crate::core::ports::{AuditEntry, AuditLog, PortError};
use crate::core::update::{update_record_from, Decision, UpdateError, Updated};

use super::*;

/// Remembers a committed rotation under its `Idempotency-Key` (and forgets
/// those older than the window).
pub(super) fn remember(record: &mut OrgRecord, idem: &Idempotency, vault_version: &str, now: DateTime<Utc>) {
    let window = chrono::TimeDelta::hours(IDEMPOTENCY_WINDOW_HOURS);
    record.idempotent_rotations.retain(|d| d.at + window > now && d.key != idem.key);
    let (Some(current), previous) = (&record.current, &record.previous) else { return };
    record.idempotent_rotations.push(IdempotentRotation {
        key: idem.key.clone(),
        fingerprint: idem.fingerprint.clone(),
        at: now,
        version: current.version,
        access_key_id: current.access_key_id.clone(),
        vault_version: vault_version.to_owned(),
        previous_access_key_id: previous.as_ref().map(|p| p.key.access_key_id.clone()),
        previous_retire_at: previous.as_ref().map(|p| p.retire_at()),
    });
}

/// Makes `version` (a committed key's vault version) the vault's current
/// secret, moving the label only forward: first from `replacing` (the version
/// the caller saw replaced: one request when it is right), else from the
/// version the vault shows, and then only while a fresh read of the record
/// still names `version` as its current key's. Each move names the version it
/// takes the label from (Secrets Manager's own compare-and-swap), so an actor
/// with an older plan can never move the vault back to an older key.
/// `Ok(false)`: the record has moved on to a later rotation, whose vault move
/// this is to leave alone.
pub(crate) async fn make_vault_current(
    ports: Ports<'_>,
    org: &OrgId,
    version: &str,
    replacing: Option<&str>,
) -> Result<bool, PortError> {
    let Some(vault) = ports.vault else { return Ok(true) };
    if let Some(from) = replacing {
        match vault.promote(org, version, Some(from)).await {
            Ok(()) => return Ok(true),
            Err(PortError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    for _ in 0..crate::core::update::ATTEMPTS {
        let observed = vault.current_version(org).await?;
        if observed.as_deref() == Some(version) {
            return Ok(true);
        }
        let record = ports.registry.load(org).await?;
        let still_current = record
            .as_ref()
            .and_then(|r| r.value.current.as_ref())
            .is_some_and(|c| c.vault_version.as_deref() == Some(version));
        if !still_current {
            return Ok(false);
        }
        match vault.promote(org, version, observed.as_deref()).await {
            Ok(()) => return Ok(true),
            Err(PortError::Conflict) => continue, // moved meanwhile: look again
            Err(e) => return Err(e),
        }
    }
    Err(PortError::Conflict)
}

/// Appends to the audit trail; a failure is logged (with the key ids) and
/// does not undo a committed change.
pub(crate) async fn write_audit(audit: &dyn AuditLog, entry: &AuditEntry) {
    if let Err(e) = audit.append(entry).await {
        error!(error = %e, action = %entry.action, key_ids = ?entry.key_ids, "could not append to the audit trail");
    }
}

/// Step 6 as a pure change of the record: the new key becomes current
/// (version + 1), the old current becomes previous, retiring after `grace`
/// (with no grace, the commit records its deactivation, which follows it).
pub fn commit_rotation(
    record: &mut OrgRecord,
    new_access_key_id: &str,
    now: DateTime<Utc>,
    grace: Duration,
    vault_version: Option<&str>,
) {
    let version = record.current.as_ref().map_or(0, |c| c.version) + 1;
    if let Some(old_previous) = record.previous.take() {
        record.record_history(HistoryEntry {
            at: now,
            event: "superseded".into(),
            version: Some(old_previous.key.version),
            access_key_id: Some(old_previous.key.access_key_id),
        });
    }
    // An expired current key is inactive already: it retires at once.
    let expired = record.state == KeyState::Expired;
    record.previous = record.current.take().map(|key| PreviousKey::retiring(key, now, grace, expired));
    if let Some(previous) = record.previous.as_ref().filter(|p| p.awaits_confirmation()) {
        let (version, id) = (previous.key.version, previous.key.access_key_id.clone());
        record.record_history(HistoryEntry {
            at: now,
            event: "deactivated".into(),
            version: Some(version),
            access_key_id: Some(id),
        });
    }
    record.current = Some(KeyVersion {
        version,
        access_key_id: new_access_key_id.to_owned(),
        created_at: now,
        vault_version: vault_version.map(str::to_owned),
        expires_at: None,
    });
    record.warnings_sent.clear();
    record.state = KeyState::Enabled;
    record.pending = None;
    record.recent_rotations.retain(|t| *t + chrono::TimeDelta::hours(1) > now);
    record.policy.last_rotation_at = Some(now);
    record.policy.next_rotation_at = match (record.policy.automatic, record.policy.interval) {
        (true, Some(interval)) => Some(now + interval.to_chrono()),
        _ => None,
    };
    record.record_history(HistoryEntry {
        at: now,
        event: "rotated".into(),
        version: Some(version),
        access_key_id: Some(new_access_key_id.to_owned()),
    });
}

/// Deactivates the org's previous key `access_key_id` in IAM and records it.
/// Used right after a rotation without grace period and by the sweep once the
/// grace period is over. Does nothing if the record moved on.
pub async fn retire_previous(
    ports: Ports<'_>,
    org: &OrgId,
    access_key_id: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<(), RotationError> {
    let Some(read) = ports.registry.load(org).await? else {
        return Err(RotationError::NotEnrolled(org.clone()));
    };
    let still_active =
        |r: &OrgRecord| r.previous.as_ref().is_some_and(|p| p.key.access_key_id == access_key_id && p.is_active());
    if !still_active(&read.value) {
        return Ok(());
    }
    // IAM first, then the record says so (deactivating twice is harmless).
    ports.keys.set_active(&read.value.user(), access_key_id, false).await?;
    let marked = update_record_from(ports.registry, read, |r| {
        if !still_active(r) {
            return Ok::<_, std::convert::Infallible>(Decision::Keep(()));
        }
        let previous = r.previous.as_mut().expect("checked");
        previous.deactivated(now);
        let version = previous.key.version;
        r.record_history(HistoryEntry {
            at: now,
            event: "deactivated".into(),
            version: Some(version),
            access_key_id: Some(access_key_id.to_owned()),
        });
        Ok(Decision::Write(()))
    })
    .await;
    match marked {
        Ok(Updated::Written { .. }) => {
            info!(access_key_id, "deactivated the previous key");
            let entry = AuditEntry {
                at: now,
                org_id: org.clone(),
                action: "deactivate previous key".into(),
                actor: actor.to_owned(),
                request_id: None,
                key_ids: vec![access_key_id.to_owned()],
                detail: None,
            };
            write_audit(ports.audit, &entry).await;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(UpdateError::Port(e)) => Err(e.into()),
        Err(UpdateError::Contended) => Err(RotationError::Contended(org.clone())),
        Err(UpdateError::Refused(never)) => match never {},
    }
}
