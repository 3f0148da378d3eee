//! The actions: each carries out what the plan found due, first proving by a
//! conditional write on a fresh read that it still is.

use super::*;
use crate::core::domain::{DecisionTime, HistoryEntry, KeyState, OrgId, OrgRecord, PendingRotation, Trigger};
use crate::core::duration::Duration;
use crate::core::ports::{AuditEntry, Notification, PortError, Versioned};
use crate::core::retirement::{after_last_use, judge_unknown, AfterUse, Due, Unknown};
use crate::core::rotation::{
    make_vault_current, retire_previous, rotate, write_audit, Ports, RotationError, RotationRequest,
};
use crate::core::update::{change_record, UpdateError};
use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

/// Whether a rotation's commit left work for later (see [`housekeep`]).
pub(super) fn left_for_later(record: &OrgRecord) -> bool {
    !record.audit_outbox.is_empty() || record.previous.as_ref().is_some_and(|p| p.awaits_confirmation())
}

/// Finishes what a rotation's commit left for later, on a fresh read of the
/// record (never the plan's, which another actor may have overtaken), with
/// one record write: copies its audit entries to the trail (appending an
/// entry twice is one entry), makes the new secret current in the vault and
/// deactivates the previous key the commit retired (again: the rotation did
/// both after its commit unless it failed or crashed there), then says so.
pub(super) async fn housekeep(ports: Ports<'_>, org: &OrgId) -> Result<(), ActionError> {
    let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else { return Ok(()) };
    if !left_for_later(&record) {
        return Ok(());
    }
    for entry in &record.audit_outbox {
        ports.audit.append(entry).await?;
    }
    // The vault's current secret first, in case the rotation could not move it
    // (one request when it is right): the old key stays active until then.
    let mut vault_right = true;
    if let Some(version) = record.current.as_ref().and_then(|c| c.vault_version.as_deref()) {
        vault_right = make_vault_current(ports, org, version, None).await?;
    }
    let unconfirmed = record
        .previous
        .as_ref()
        .filter(|p| p.awaits_confirmation() && vault_right)
        .map(|p| p.key.access_key_id.clone());
    if let Some(id) = &unconfirmed {
        ports.keys.set_active(&record.user(), id, false).await?;
    }
    let copied = record.audit_outbox;
    change_record(ports.registry, org, |r| {
        r.audit_outbox.retain(|e| !copied.contains(e));
        if let Some(p) = r.previous.as_mut().filter(|p| Some(&p.key.access_key_id) == unconfirmed.as_ref()) {
            p.confirm_deactivation();
        }
        true
    })
    .await?;
    Ok(())
}

/// Errors of one action, as the summary reports them.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActionError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Rotation(#[from] RotationError),
    #[error("the record kept changing")]
    Contended,
    #[error(
        "the {threshold} expiry warning was not published ({publish}) and its sent mark could not be taken back \
         ({unmark}): no later run sends it; publish it by hand"
    )]
    WarningLost { threshold: Duration, publish: PortError, unmark: UpdateError<std::convert::Infallible> },
}

impl From<UpdateError<std::convert::Infallible>> for ActionError {
    fn from(e: UpdateError<std::convert::Infallible>) -> Self {
        match e {
            UpdateError::Port(e) => Self::Port(e),
            UpdateError::Contended => Self::Contended,
            UpdateError::Refused(never) => match never {},
        }
    }
}

/// Carries out one planned action. The plan was made from an earlier read, so
/// each action first proves, by a conditional write on a fresh read, that it
/// is still due (or re-decides inside that write); a plan another actor has
/// overtaken does nothing.
pub(super) async fn execute(
    ports: Ports<'_>,
    settings: &SweepSettings,
    org: &OrgId,
    when: DecisionTime,
    action: &Action,
    outcome: &mut OrgOutcome,
) -> Result<(), ActionError> {
    let now = when.at();
    let audit = |action: &str, key_ids: Vec<String>| AuditEntry {
        at: now,
        org_id: org.clone(),
        action: action.to_owned(),
        actor: "schedule".into(),
        request_id: None,
        key_ids,
        detail: None,
    };
    match action {
        Action::RollBack { rotation_id, new_access_key_id } => {
            let lease_now = ports.clock.now();
            let changed = change_record(ports.registry, org, |r| {
                let ours = r
                    .pending
                    .as_ref()
                    .is_some_and(|p| &p.rotation_id == rotation_id && p.lease_until.is_over_at(lease_now));
                if ours {
                    r.pending = None;
                }
                ours
            })
            .await?;
            // The claim's own key (recorded in it, or in the vault under the
            // claim's rotation id) was never delivered: it goes, whether or not
            // the rotation's own check of it signed a request with it.
            let mut own_key = new_access_key_id.clone();
            if let (Some(_), None, Some(vault)) = (&changed, &own_key, ports.vault) {
                own_key = vault.get(org, rotation_id).await?.map(|k| k.access_key_id);
            }
            if let (Some(Versioned { value: record, .. }), Some(id)) = (changed, &own_key) {
                if !record.known_key_ids().any(|k| k == id) {
                    ports.keys.delete_key(&record.user(), id).await?;
                }
            }
            write_audit(ports.audit, &audit("roll back an interrupted rotation", own_key.into_iter().collect())).await;
            outcome.repaired += 1;
        }
        Action::DeleteUnknownKey { access_key_id } => {
            // A key that has ever signed a request is someone's: deactivated
            // (reversible) and reported, and deleted only after KEY_RETENTION.
            let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else { return Ok(()) };
            let user = record.user();
            let retention = settings.rotation.retention;
            // The plan's listing may be old: an earlier action of this run (a
            // rollback deleting its own key) or another actor may have deleted
            // the key since. IAM refuses a scoped role the last use of a key that
            // no longer exists (it cannot tell whose it was), so look first.
            if !ports.keys.list_keys(&user).await?.iter().any(|k| &k.access_key_id == access_key_id) {
                return Ok(());
            }
            match judge_unknown(&record, access_key_id, None, now, retention) {
                Unknown::Known | Unknown::Kept { .. } => return Ok(()),
                Unknown::Delete => {}
                Unknown::AskLastUse => {
                    let used = ports.keys.last_used(&user, access_key_id).await?;
                    if let (Some(used), AfterUse::Quarantine { .. }) =
                        (&used, after_last_use(used.as_ref().map(|u| u.at)))
                    {
                        return quarantine(ports, org, access_key_id, used, now, retention, outcome).await;
                    }
                }
            }
            // First a conditional write that proves no claim and no key version
            // names it: a rotation that made the key claimed the record before
            // IAM listed the key, so a read after the listing shows that claim
            // (or its commit), and the write fails if one lands meanwhile.
            let proved = change_record(ports.registry, org, |r| {
                let free = r.pending.is_none()
                    && matches!(
                        judge_unknown(r, access_key_id, None, now, retention),
                        Unknown::Delete | Unknown::AskLastUse
                    );
                if free {
                    r.quarantined.retain(|q| &q.access_key_id != access_key_id);
                    r.record_history(HistoryEntry {
                        at: now,
                        event: "deleted unknown key".into(),
                        version: None,
                        access_key_id: Some(access_key_id.clone()),
                    });
                }
                free
            })
            .await?;
            let Some(Versioned { value: record, .. }) = proved else { return Ok(()) };
            ports.keys.delete_key(&record.user(), access_key_id).await?;
            write_audit(ports.audit, &audit("delete unknown key (never delivered)", vec![access_key_id.clone()])).await;
            outcome.repaired += 1;
            outcome.deleted_keys += 1;
        }
        Action::ReportMissingKey { access_key_id } => {
            // IAM was listed after the plan's read: a rotation in between may
            // have made room (its claim shows) or committed. Only a key a
            // fresh read, with no claim, still names is missing.
            let still_named = |r: &OrgRecord| r.known_key_ids().any(|k| k == access_key_id);
            if recheck(ports, org, still_named).await?.is_none() {
                return Ok(());
            }
            warn!(access_key_id, "the record names a key IAM does not have");
            outcome.mismatches.push(format!("the record names {access_key_id}, which IAM does not have"));
        }
        Action::ReportMissingUser { user } => {
            warn!(user, "the org's IAM user does not exist");
            outcome.mismatches.push(format!("the IAM user {user} does not exist"));
        }
        Action::RepairVault { version } => {
            // Only forward, and only while the record still names the version.
            if ports.vault.is_some() && make_vault_current(ports, org, version, None).await? {
                outcome.repaired += 1;
            }
        }
        Action::DeleteOrg => {
            // Claimed first, like a rotation: an operator's cancel-deletion or
            // another sweep now finds the org in progress, and a crash leaves a
            // claim the next run rolls back once its lease is over.
            let deletion_id = uuid::Uuid::new_v4().to_string();
            let lease_until = ports.clock.now().after(settings.rotation.lease);
            let claimed = change_record(ports.registry, org, |r| {
                let due = r.state == KeyState::PendingDeletion
                    && r.deletion_at.is_some_and(|at| at <= now)
                    && r.pending.is_none();
                if due {
                    r.pending = Some(PendingRotation {
                        rotation_id: deletion_id.clone(),
                        trigger: Trigger::Schedule,
                        started_at: now,
                        lease_until,
                        new_access_key_id: None,
                    });
                }
                due
            })
            .await?;
            let Some(Versioned { value: record, etag }) = claimed else { return Ok(()) };
            let key_ids: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
            ports.keys.delete_user(&record.user()).await?;
            if let Some(vault) = ports.vault {
                vault.delete(org).await?;
            }
            ports.registry.delete(org, &etag).await?;
            if let Some(account) = &record.account_id {
                crate::core::accounts::release(ports.registry, account, org).await;
            }
            write_audit(ports.audit, &audit("delete org (scheduled deletion)", key_ids)).await;
            info!("deleted the org");
            outcome.deleted_org = true;
        }
        Action::Rotate => {
            let request = RotationRequest {
                org: org.clone(),
                now: when,
                trigger: Trigger::Schedule,
                actor: "schedule".into(),
                rotation_id: uuid::Uuid::new_v4().to_string(),
                request_id: None,
                grace: Some(settings.grace),
            };
            let rotated = match rotate(ports, &settings.rotation, &request).await {
                Ok(rotated) => rotated,
                // Another actor rotated since this plan's read, or holds the org now.
                Err(RotationError::NotDue(_) | RotationError::InProgress { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            info!(access_key_id = %rotated.access_key_id, version = rotated.version, "rotated automatically");
            outcome.rotated = true;
        }
        Action::DeactivatePrevious { access_key_id } => {
            if still_in_use(ports, settings, org, access_key_id, now, outcome).await? {
                return Ok(()); // deferred one more grace period
            }
            retire_previous(ports, org, access_key_id, now, "schedule").await?;
            outcome.retired += 1;
        }
        Action::DeletePrevious { access_key_id } => {
            // The record forgets the key first, by a conditional write that
            // re-checks it is still the retired previous key past its
            // retention; only then IAM deletes it (if that fails, the key is
            // unknown to the record and the next full check deletes it).
            let forgotten = change_record(ports.registry, org, |r| {
                let ours = r.pending.is_none()
                    && r.previous.as_ref().is_some_and(|p| {
                        &p.key.access_key_id == access_key_id
                            && p.due(now, settings.rotation.retention) == Some(Due::Delete)
                    });
                if ours {
                    let p = r.previous.take().expect("checked");
                    r.record_history(HistoryEntry {
                        at: now,
                        event: "deleted".into(),
                        version: Some(p.key.version),
                        access_key_id: Some(p.key.access_key_id),
                    });
                }
                ours
            })
            .await?;
            let Some(Versioned { value: record, .. }) = forgotten else { return Ok(()) };
            ports.keys.delete_key(&record.user(), access_key_id).await?;
            write_audit(ports.audit, &audit("delete previous key (retention over)", vec![access_key_id.clone()])).await;
            outcome.deleted_keys += 1;
        }
        Action::Expire { access_key_id } => {
            let still_current = |r: &OrgRecord| {
                r.state == KeyState::Enabled && r.current.as_ref().is_some_and(|c| &c.access_key_id == access_key_id)
            };
            let Some(record) = recheck(ports, org, still_current).await? else { return Ok(()) };
            // Access goes first, then the record says so; a failure in
            // between is finished by the next run (the key is still too old).
            ports.keys.set_active(&record.user(), access_key_id, false).await?;
            let record = change_record(ports.registry, org, |r| {
                let ours = r.state == KeyState::Enabled
                    && r.current.as_ref().is_some_and(|c| &c.access_key_id == access_key_id);
                if ours {
                    r.state = KeyState::Expired;
                    let version = r.current.as_ref().map(|c| c.version);
                    r.record_history(HistoryEntry {
                        at: now,
                        event: "expired".into(),
                        version,
                        access_key_id: Some(access_key_id.clone()),
                    });
                }
                ours
            })
            .await?;
            let Some(Versioned { value: record, .. }) = record else { return Ok(()) };
            // The previous key, if still active, goes too: the org loses access.
            if let Some(previous) = record.previous.as_ref().filter(|p| p.is_active()) {
                retire_previous(ports, org, &previous.key.access_key_id, now, "schedule").await?;
            }
            write_audit(ports.audit, &audit("expire key (maximum age reached)", vec![access_key_id.clone()])).await;
            warn!(access_key_id, "the key reached its maximum age: the org lost access to its bucket");
            if let Some(notifier) = ports.notifier {
                let event = Notification {
                    detail_type: "Bucket Key Expired",
                    detail: serde_json::json!({
                        "orgId": org,
                        "keyId": record.key_id,
                        "accessKeyId": access_key_id,
                        "expiredAt": now,
                        "maxKeyAge": settings.rotation.max_key_age,
                    }),
                };
                notifier.publish(&[event]).await?;
            }
            outcome.expired = true;
        }
        Action::Warn { access_key_id, threshold, expires_at } => {
            // Record first, so that a warning is never published twice; if
            // publishing fails, take the record back so the next run retries.
            let crossed: Vec<Duration> =
                settings.warnings.iter().copied().filter(|w| *expires_at - w.to_chrono() <= now).collect();
            let mark = |r: &mut OrgRecord, on: bool| {
                let ours = r.current.as_ref().is_some_and(|c| &c.access_key_id == access_key_id);
                if ours {
                    r.warnings_sent.retain(|w| !crossed.contains(w));
                    if on {
                        r.warnings_sent.extend(crossed.iter().copied());
                    }
                }
                ours
            };
            let Some(Versioned { value: record, .. }) = change_record(ports.registry, org, |r| mark(r, true)).await?
            else {
                return Ok(());
            };
            if let Some(notifier) = ports.notifier {
                let event = Notification {
                    detail_type: "Bucket Key Expiring",
                    detail: serde_json::json!({
                        "orgId": org,
                        "keyId": record.key_id,
                        "accessKeyId": access_key_id,
                        "expiresAt": expires_at,
                        "threshold": threshold,
                        "daysLeft": (*expires_at - now).num_days(),
                    }),
                };
                if let Err(e) = notifier.publish(&[event]).await {
                    // Unmarked, the next run warns again; a mark that cannot be
                    // taken back would keep this warning from ever going out.
                    if let Err(unmark) = change_record(ports.registry, org, |r| mark(r, false)).await {
                        error!(
                            error = %e, unmark_error = %unmark, %threshold, "the expiry warning was not published \
                             and stays marked as sent: no later run sends it"
                        );
                        return Err(ActionError::WarningLost { threshold: *threshold, publish: e, unmark });
                    }
                    return Err(e.into());
                }
            }
            outcome.warned += 1;
        }
    }
    Ok(())
}

/// Whether the previous key `access_key_id`, whose grace period is over, was
/// used after the rotation that replaced it: then it is reported (event
/// `Bucket Key Still In Use`, the summary's `stillInUse`) and, with
/// [`RetireInUse::Defer`], its retirement moves one grace period on (never past
/// its own maximum age): `true`, nothing more to do now.
pub(super) async fn still_in_use(
    ports: Ports<'_>,
    settings: &SweepSettings,
    org: &OrgId,
    access_key_id: &str,
    now: DateTime<Utc>,
    outcome: &mut OrgOutcome,
) -> Result<bool, ActionError> {
    let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else { return Ok(false) };
    let (Some(previous), Some(current)) = (record.previous.as_ref(), record.current.as_ref()) else {
        return Ok(false);
    };
    if previous.key.access_key_id != access_key_id {
        return Ok(false);
    }
    let Some(used) = ports.keys.last_used(&record.user(), access_key_id).await? else { return Ok(false) };
    if used.at <= current.created_at {
        return Ok(false);
    }
    let key_expiry = previous.key.expiry(settings.rotation.max_key_age);
    let deferred_to = (now + settings.grace.to_chrono()).min(key_expiry);
    let defer = settings.retire_in_use == RetireInUse::Defer && deferred_to > now;
    warn!(access_key_id, last_used = %used.at, service = %used.service, defer, "the previous key is still in use");
    outcome.still_in_use = true;
    if let Some(notifier) = ports.notifier {
        let event = Notification {
            detail_type: "Bucket Key Still In Use",
            detail: serde_json::json!({
                "orgId": org,
                "keyId": record.key_id,
                "accessKeyId": access_key_id,
                "lastUsedAt": used.at,
                "service": used.service,
                "region": used.region,
                "retiresAt": if defer { deferred_to } else { now },
            }),
        };
        if let Err(e) = notifier.publish(&[event]).await {
            warn!(error = %e, "could not publish that the previous key is still in use");
        }
    }
    if !defer {
        return Ok(false);
    }
    change_record(ports.registry, org, |r| {
        let ours = r.pending.is_none()
            && r.previous.as_ref().is_some_and(|p| p.key.access_key_id == access_key_id && p.is_active());
        if let Some(p) = r.previous.as_mut().filter(|_| ours) {
            p.defer_to(deferred_to);
        }
        ours
    })
    .await?;
    Ok(true)
}

/// An unknown key that has signed requests: the record notes it (a
/// conditional write that proves no claim or key version names it), then IAM
/// deactivates it, and the operators are told; it is deleted after KEY_RETENTION.
pub(super) async fn quarantine(
    ports: Ports<'_>,
    org: &OrgId,
    access_key_id: &str,
    used: &crate::core::ports::KeyUse,
    now: DateTime<Utc>,
    retention: Duration,
    outcome: &mut OrgOutcome,
) -> Result<(), ActionError> {
    let noted = change_record(ports.registry, org, |r| {
        let free = r.pending.is_none() && judge_unknown(r, access_key_id, None, now, retention) == Unknown::AskLastUse;
        if free {
            r.quarantined.push(crate::core::domain::QuarantinedKey {
                access_key_id: access_key_id.to_owned(),
                deactivated_at: now,
                last_used_at: used.at,
            });
        }
        free
    })
    .await?;
    let Some(Versioned { value: record, .. }) = noted else { return Ok(()) };
    ports.keys.set_active(&record.user(), access_key_id, false).await?;
    let reason = format!(
        "the key {access_key_id}, which the record does not know, was used at {} ({} in {}): deactivated, \
         deleted after KEY_RETENTION unless the operator reactivates it",
        used.at.format("%Y-%m-%dT%H:%M:%SZ"),
        used.service,
        used.region
    );
    warn!(access_key_id, "{reason}");
    write_audit(
        ports.audit,
        &AuditEntry {
            at: now,
            org_id: org.clone(),
            action: "deactivate unknown key (in use)".into(),
            actor: "schedule".into(),
            request_id: None,
            key_ids: vec![access_key_id.to_owned()],
            detail: Some(reason.clone()),
        },
    )
    .await;
    outcome.mismatches.push(reason);
    outcome.repaired += 1;
    Ok(())
}

/// Reads the record again right before an IAM change that cannot be undone,
/// and returns it only if no rotation is under way and `still` holds: the plan
/// was made from an earlier read. A key IAM listed was created after its
/// rotation's claim was written, so this read shows that claim or its commit.
pub(super) async fn recheck(
    ports: Ports<'_>,
    org: &OrgId,
    still: impl Fn(&OrgRecord) -> bool,
) -> Result<Option<OrgRecord>, ActionError> {
    let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else { return Ok(None) };
    // Any claim, live or not: a claim whose lease is over is the next run's to roll back.
    let under_way = record.pending.is_some();
    Ok((!under_way && still(&record)).then_some(record))
}
