//! Steps 3 to 7 of a claimed rotation: make room (or reconcile), create,
//! verify, commit, finish; and the abort of a failed one.

use tracing::{debug_span, error, info, warn, Instrument};

use crate::core::domain::{OrgRecord, QuarantinedKey, AUDIT_OUTBOX_LIMIT};
use crate::core::duration::Duration;
use crate::core::ports::{AuditEntry, NewKey, Notification, PortError, Versioned};
use crate::core::retirement::{self, AfterUse, Unknown};
use crate::core::update::{update_record, update_record_from, Decision, UpdateError, Updated};

use super::*;

pub(super) struct Rotation<'a> {
    pub(super) ports: Ports<'a>,
    pub(super) settings: &'a RotationSettings,
    pub(super) req: &'a RotationRequest,
    pub(super) idempotency: Option<&'a Idempotency>,
}

/// A failed step, with the new key if IAM made one that was not (known to be) committed.
pub(super) type StepError = (RotationError, Option<NewKey>);

impl Rotation<'_> {
    /// Steps 3 to 6 on a claimed record. On error, also returns the new key if
    /// IAM made one and it was not (known to be) committed.
    pub(super) async fn commit(
        &self,
        record: &mut OrgRecord,
        etag: &mut String,
        grace: Duration,
        took_over: Option<String>,
    ) -> Result<Committed, StepError> {
        let user = record.user();
        // 3. Make room; a crashed rotation may have left a key behind.
        if let Some(stale) = took_over.as_deref() {
            self.reconcile(record, Some(stale)).await.map_err(|e| (e, None))?;
        } else {
            self.make_room(record).await.map_err(|e| (e, None))?;
        }

        // 4. Create the new key (IAM refusing it means keys the record does
        // not know: reconcile and try once more) ...
        let (new_key, vault_version) = async {
            let new_key = match self.ports.keys.create_key(&user).await {
                Err(PortError::QuotaExceeded) if took_over.is_none() => {
                    self.reconcile(record, None).await.map_err(|e| (e, None))?;
                    self.ports.keys.create_key(&user).await
                }
                created => created,
            }
            .map_err(|e| (e.into(), None))?;
            let new_id = new_key.access_key_id.clone();
            info!(access_key_id = %new_id, "created the new key");

            // ... and record it at once: the vault keeps it (with its secret) as the
            // version the claim names; without a vault, the record keeps its id.
            let vault_version = match self.ports.vault {
                Some(vault) => match vault.put_pending(&self.req.org, &self.req.rotation_id, &new_key).await {
                    Ok(()) => Some(self.req.rotation_id.as_str()),
                    Err(e) => return Err((e.into(), Some(new_key.clone()))),
                },
                None => {
                    let with_id = |r: &mut OrgRecord| {
                        if let Some(p) = r.pending.as_mut() {
                            p.new_access_key_id = Some(new_id.clone());
                        }
                    };
                    self.write_claimed(record, etag, with_id, None).await.map_err(|e| (e, Some(new_key.clone())))?;
                    None
                }
            };
            Ok::<_, StepError>((new_key, vault_version))
        }
        .instrument(debug_span!("rotation.create"))
        .await?;
        let new_id = new_key.access_key_id.clone();

        // 5. Verify the new key against the bucket.
        if let Some(verifier) = self.ports.verifier {
            let verified = verifier
                .verify(&new_key, &record.bucket, &record.prefix)
                .instrument(debug_span!("rotation.verify", access_key_id = %new_id))
                .await;
            if let Err(e) = verified {
                warn!(access_key_id = %new_id, error = %e, "the new key failed verification");
                return Err((RotationError::VerificationFailed(self.req.org.clone()), Some(new_key.clone())));
            }
        }

        // 6. Commit, with the audit entries of the change. The old key retires
        // no later than its maximum age, whatever grace was asked for.
        let now = self.req.now.at();
        let grace = match &record.current {
            Some(c) => {
                let left = (c.expiry(self.settings.max_key_age) - now).num_seconds().max(0);
                Duration::from_secs(grace.as_secs().min(left as u64))
            }
            None => grace,
        };
        let replaced_vault_version = record.current.as_ref().and_then(|c| c.vault_version.clone());
        let mut unqueued = Vec::new();
        let commit = |r: &mut OrgRecord| {
            commit_rotation(r, &new_id, now, grace, vault_version);
            unqueued = self.queue_audit(r);
            if let (Some(idem), Some(version)) = (self.idempotency, vault_version) {
                remember(r, idem, version, now);
            }
        };
        let committed = async {
            if let Err(e) = self.write_claimed(record, etag, commit, Some(&new_id)).await {
                // The commit may have been written though no answer came (every retry lost): look.
                match self.ports.registry.load(&self.req.org).await {
                    Ok(Some(fresh))
                        if landed(&fresh.value, &self.req.rotation_id, Some(&new_id)) == Landed::Committed =>
                    {
                        warn!(error = %e, "the commit's answer was lost; it was written");
                        *record = fresh.value;
                        *etag = fresh.etag;
                    }
                    _ => return Err(e),
                }
            }
            Ok(())
        }
        .instrument(debug_span!("rotation.commit", access_key_id = %new_id))
        .await;
        if let Err(e) = committed {
            return Err((e, Some(new_key.clone())));
        }
        info!(access_key_id = %new_id, "committed the rotation");
        Ok(Committed { new_key, unqueued, replaced_vault_version })
    }

    /// Step 7, after the commit: the vault, the old key, the event (and the
    /// audit entries the record had no room for). Failures are left to the next sweep.
    #[tracing::instrument(name = "rotation.finish", level = "debug", skip_all)]
    pub(super) async fn finish(&self, record: &mut OrgRecord, committed: Committed) -> Rotated {
        let Committed { new_key, unqueued, replaced_vault_version } = committed;
        let (user, new_id, now) = (record.user(), new_key.access_key_id.clone(), self.req.now.at());
        let current = record.current.clone().expect("commit sets the current key");

        let mut vault_current = true;
        if self.ports.vault.is_some() {
            let replacing = replaced_vault_version.as_deref();
            match make_vault_current(self.ports, &self.req.org, &self.req.rotation_id, replacing).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!("a later rotation committed before the vault was moved; the vault follows it");
                    vault_current = false;
                }
                Err(e) => {
                    error!(error = %e, "could not make the new secret current in the vault; the next sweep does");
                    vault_current = false;
                }
            }
        }
        let previous = match record.previous.clone() {
            // While the vault still hands out the old key, it keeps working: the
            // next sweep moves the vault first, then deactivates it.
            Some(old) if old.awaits_confirmation() && !vault_current => {
                warn!(access_key_id = %old.key.access_key_id, "the previous key stays active until the vault is right");
                Some(PreviousOutcome {
                    access_key_id: old.key.access_key_id.clone(),
                    active: true,
                    retire_at: old.retire_at(),
                })
            }
            Some(old) if old.awaits_confirmation() => {
                let deactivated = self.ports.keys.set_active(&user, &old.key.access_key_id, false).await;
                if let Err(e) = &deactivated {
                    warn!(error = %e, "could not deactivate the previous key now; the next sweep does");
                } else {
                    info!(access_key_id = %old.key.access_key_id, "deactivated the previous key");
                }
                let active = deactivated.is_err();
                Some(PreviousOutcome {
                    access_key_id: old.key.access_key_id.clone(),
                    active,
                    retire_at: old.retire_at(),
                })
            }
            Some(old) => Some(PreviousOutcome {
                access_key_id: old.key.access_key_id.clone(),
                active: old.is_active(),
                retire_at: old.retire_at(),
            }),
            None => None,
        };
        for entry in &unqueued {
            write_audit(self.ports.audit, entry).await;
        }
        let expires_at = current.expiry(self.settings.max_key_age);
        if let Some(notifier) = self.ports.notifier {
            let event = Notification {
                detail_type: "Bucket Key Rotated",
                detail: serde_json::json!({
                    "orgId": self.req.org,
                    "keyId": record.key_id,
                    "keyVersion": current.version,
                    "accessKeyId": new_id,
                    "previousAccessKeyId": previous.as_ref().map(|p| &p.access_key_id),
                    "previousKeyRetiresAt": previous.as_ref().map(|p| p.retire_at),
                    "trigger": self.req.trigger,
                    "rotatedAt": now,
                    "expiresAt": expires_at,
                }),
            };
            if let Err(e) = notifier.publish(&[event]).await {
                warn!(error = %e, "could not publish the rotation event");
            }
        }
        Rotated {
            org: self.req.org.clone(),
            key_id: record.key_id.clone(),
            version: current.version,
            access_key_id: new_id,
            secret_access_key: new_key.secret_access_key,
            created_at: current.created_at,
            expires_at,
            previous,
        }
    }

    /// The audit entries of a commit, queued in the record's outbox (the
    /// sweep copies them to the trail); those it has no room for are returned,
    /// for the rotation to write itself.
    pub(super) fn queue_audit(&self, record: &mut OrgRecord) -> Vec<AuditEntry> {
        let old = record.previous.as_ref();
        let mut key_ids: Vec<String> = old.iter().map(|p| p.key.access_key_id.clone()).collect();
        key_ids.extend(record.current.iter().map(|c| c.access_key_id.clone()));
        let text = match old {
            Some(p) => format!(
                "rotate ({:?}), previous key retires at {}",
                self.req.trigger,
                p.retire_at().format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => format!("rotate ({:?}), first key", self.req.trigger),
        };
        let mut entries = vec![self.entry(text, key_ids)];
        if let Some(old) = old.filter(|p| p.awaits_confirmation()) {
            entries.push(self.entry("deactivate previous key".into(), vec![old.key.access_key_id.clone()]));
        }
        let room = AUDIT_OUTBOX_LIMIT.saturating_sub(record.audit_outbox.len());
        let unqueued = entries.split_off(room.min(entries.len()));
        record.audit_outbox.extend(entries);
        unqueued
    }

    /// Step 3 in the usual case: the previous key is deleted, so that the new
    /// one fits under IAM's 2-key quota. The record says which it is.
    #[tracing::instrument(name = "rotation.make_room", level = "debug", skip_all)]
    pub(super) async fn make_room(&self, record: &OrgRecord) -> Result<(), RotationError> {
        if let Some(previous) = &record.previous {
            info!(access_key_id = %previous.key.access_key_id, "deleting the previous key to make room");
            self.ports.keys.delete_key(&record.user(), &previous.key.access_key_id).await?;
        }
        Ok(())
    }

    /// Step 3 after a crash, or when IAM refused a key: each key of the user
    /// the record does not know meets its fate ([`retirement::judge_unknown`]);
    /// then, if the user still has two keys the record knows, the previous key
    /// goes. A quarantined key still kept and the current key leave no place:
    /// [`RotationError::SlotsHeld`], before IAM is asked for a key it would refuse.
    #[tracing::instrument(name = "rotation.reconcile", level = "debug", skip_all)]
    pub(super) async fn reconcile(&self, record: &mut OrgRecord, stale: Option<&str>) -> Result<(), RotationError> {
        let user = record.user();
        let keys = self.ports.keys.list_keys(&user).await?;
        // The crashed rotation's own key, stored in the vault under its claim's
        // id: never delivered, though its own check may have signed with it.
        let stale_key = match (stale, self.ports.vault) {
            (Some(stale), Some(vault)) => vault.get(&self.req.org, stale).await?.map(|k| k.access_key_id),
            _ => None,
        };
        let (now, retention) = (self.req.now.at(), self.settings.retention);
        let current = record.current.as_ref().map(|c| c.access_key_id.clone());
        let mut known = Vec::new();
        let mut held = Vec::new();
        for key in keys {
            let id = key.access_key_id;
            let mut fate = retirement::judge_unknown(record, &id, stale_key.as_deref(), now, retention);
            if fate == Unknown::AskLastUse {
                let used = self.ports.keys.last_used(&user, &id).await?;
                if let AfterUse::Quarantine { last_used_at } = retirement::after_last_use(used.map(|u| u.at)) {
                    // Someone's key, not a half-made one: never deleted unannounced.
                    warn!(access_key_id = %id, "deactivating a used key the registry does not know");
                    self.ports.keys.set_active(&user, &id, false).await?;
                    let until = now + retention.to_chrono();
                    record.quarantined.push(QuarantinedKey {
                        access_key_id: id.clone(),
                        deactivated_at: now,
                        last_used_at,
                    });
                    self.audit("deactivate unknown key (in use)".into(), vec![id.clone()]).await;
                    fate = Unknown::Kept { until };
                } else {
                    fate = Unknown::Delete;
                }
            }
            match fate {
                Unknown::Known => known.push(id),
                Unknown::Kept { .. } => held.push(id),
                Unknown::AskLastUse => unreachable!("asked above"),
                Unknown::Delete => {
                    warn!(access_key_id = %id, "deleting a key the registry does not know");
                    self.ports.keys.delete_key(&user, &id).await?;
                    record.quarantined.retain(|q| q.access_key_id != id);
                    self.audit("delete unknown key (never delivered)".into(), vec![id]).await;
                }
            }
        }
        if known.len() >= 2 {
            for id in known.iter().filter(|k| Some(*k) != current.as_ref()) {
                info!(access_key_id = %id, "deleting the previous key to make room");
                self.ports.keys.delete_key(&user, id).await?;
            }
            known.retain(|k| Some(k) == current.as_ref());
        }
        held.extend(known);
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        retirement::room_for_a_new_key(record, &held, now, retention)
            .map_err(|held| RotationError::SlotsHeld { org: self.req.org.clone(), held })
    }

    /// Writes a change to the record this rotation has claimed. A lost
    /// compare-and-swap re-reads the record and, while the claim is still
    /// ours, applies the change again. For the commit of `commits` (the new
    /// key), the re-read record may show it written though its answer was lost.
    pub(super) async fn write_claimed(
        &self,
        record: &mut OrgRecord,
        etag: &mut String,
        mut change: impl FnMut(&mut OrgRecord),
        commits: Option<&str>,
    ) -> Result<(), RotationError> {
        let read = Versioned { value: record.clone(), etag: etag.clone() };
        let written = update_record_from(self.ports.registry, read, |fresh| {
            match landed(fresh, &self.req.rotation_id, commits) {
                // The commit's answer was lost: it is there.
                Landed::Committed => Ok(Decision::Keep(())),
                Landed::Claimed => {
                    change(fresh);
                    Ok(Decision::Write(()))
                }
                // Released, or taken over by another actor: this rotation is over.
                Landed::Neither => Err(RotationError::Contended(self.req.org.clone())),
            }
        })
        .await;
        match written {
            Ok(Updated::Written { value, version, .. } | Updated::Unchanged { value, version: Some(version), .. }) => {
                *record = value;
                *etag = version;
                Ok(())
            }
            Ok(Updated::Unchanged { .. } | Updated::Missing) => Err(RotationError::NotEnrolled(self.req.org.clone())),
            Err(UpdateError::Refused(e)) => Err(e),
            Err(UpdateError::Port(e)) => Err(e.into()),
            Err(UpdateError::Contended) => Err(RotationError::Contended(self.req.org.clone())),
        }
    }

    /// Undoes a failed rotation as far as it safely can, or finds that its
    /// commit landed after all (returned: the record as committed). The claim is
    /// released first, by a conditional write, so that a commit still in flight
    /// can no longer land; only then is the new key deleted. What it cannot do
    /// now, the next attempt or sweep does (a key the record does not know is
    /// deleted; an unreleased claim expires with its lease).
    #[tracing::instrument(name = "rotation.abort", level = "debug", skip_all)]
    pub(super) async fn abort(&self, new_key: Option<&str>) -> Option<OrgRecord> {
        let released = update_record(self.ports.registry, &self.req.org, |record| {
            let seen = landed(record, &self.req.rotation_id, new_key);
            if seen != Landed::Claimed {
                return Ok::<_, std::convert::Infallible>(Decision::Keep(seen));
            }
            record.pending = None;
            // A rotation that did not happen does not count against the limit.
            if let Some(i) = record.recent_rotations.iter().position(|t| *t == self.req.now.at()) {
                record.recent_rotations.remove(i);
            }
            Ok(Decision::Write(seen))
        })
        .await;
        let user = match released {
            Ok(Updated::Unchanged { value, out: Landed::Committed, .. }) => return Some(value),
            Ok(Updated::Written { value, .. } | Updated::Unchanged { value, .. }) => value.user(),
            Ok(Updated::Missing) => return None,
            Err(e) => {
                // The new key stays until the claim is taken over.
                warn!(error = %e, "could not release the claim; it expires with its lease and the next attempt repairs it");
                return None;
            }
        };
        if let Some(id) = new_key {
            if let Err(e) = self.ports.keys.delete_key(&user, id).await {
                warn!(access_key_id = %id, error = %e, "could not delete the uncommitted key; the next attempt does");
            }
        }
        None
    }

    pub(super) fn entry(&self, action: String, key_ids: Vec<String>) -> AuditEntry {
        AuditEntry {
            at: self.req.now.at(),
            org_id: self.req.org.clone(),
            action,
            actor: self.req.actor.clone(),
            request_id: self.req.request_id.clone(),
            key_ids,
            detail: None,
        }
    }

    pub(super) async fn audit(&self, action: String, key_ids: Vec<String>) {
        write_audit(self.ports.audit, &self.entry(action, key_ids)).await;
    }
}
