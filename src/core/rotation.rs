//! The rotation protocol (DESIGN.md, "never lose access"):
//!
//! 1. read the record and refuse what must be refused;
//! 2. claim it with a lease (conditional write);
//! 3. reconcile IAM with the record: delete keys it does not know, make room
//!    under the 2-key quota by deleting the previous key, never the current;
//! 4. create the new key and record its id at once;
//! 5. verify the new key against the bucket (bounded retries);
//! 6. commit: the new key becomes current, the old one previous;
//! 7. only then hand out the secret and retire the old key.
//!
//! A failure at any step leaves the old state (the new key is deleted now, or
//! by the next attempt as a key the record does not know) or the new state
//! (retirement is finished by the next sweep).

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tracing::{error, info, warn};

use super::domain::{HistoryEntry, KeyState, KeyVersion, OrgId, OrgRecord, PendingRotation, PreviousKey, Trigger};
use super::duration::Duration;
use super::ports::{AccessKeys, AuditEntry, AuditLog, KeyVerifier, PortError, Registry, Versioned};

/// The services a rotation uses.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub registry: &'a dyn Registry,
    pub keys: &'a dyn AccessKeys,
    pub audit: &'a dyn AuditLog,
    /// `None`: the new key is not checked against the bucket before the commit.
    pub verifier: Option<&'a dyn KeyVerifier>,
}

/// The knobs of the protocol (from the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationSettings {
    /// How long a claimed rotation blocks others before it counts as crashed.
    pub lease: Duration,
    /// Per-org limit on rotations requested through the API, per hour.
    pub rotations_per_hour: u32,
    /// A key's maximum age: its expiry is its creation plus this.
    pub max_key_age: Duration,
    /// The longest grace period a caller may ask for.
    pub max_grace: Duration,
    /// How many times a lost compare-and-swap is re-read and retried.
    pub cas_attempts: u32,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            rotations_per_hour: 5,
            max_key_age: Duration::from_days(90),
            max_grace: Duration::from_days(7),
            cas_attempts: 5,
        }
    }
}

/// One request to rotate an org's key.
#[derive(Debug, Clone)]
pub struct RotationRequest {
    pub org: OrgId,
    /// The time of the triggering event: every date written comes from it.
    pub now: DateTime<Utc>,
    pub trigger: Trigger,
    /// Who asked (for the audit trail): a subject claim, `schedule`, `operator`.
    pub actor: String,
    /// A unique id of this attempt (names the claim in the record).
    pub rotation_id: String,
    pub request_id: Option<String>,
    /// Keep the previous key active this long; `None` or zero: deactivate it now.
    pub grace: Option<Duration>,
}

/// What a rotation refused or failed with. Each maps to one HTTP status in the API layer.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("Not found IAM key info for orgId: {0}")]
    NotEnrolled(OrgId),
    #[error("the key of org {org} is {state}; only an Enabled (or, by hand, an Expired) key can be rotated")]
    NotEnabled { org: OrgId, state: KeyState },
    #[error("a rotation of the key of org {org} is already in progress (until {lease_until})")]
    InProgress { org: OrgId, lease_until: DateTime<Utc> },
    #[error("too many rotations of the key of org {org}: at most {limit} per hour")]
    RateLimited { org: OrgId, limit: u32, retry_after: Duration },
    #[error("previousKeyGracePeriod: {requested} is longer than the maximum of {max}")]
    GraceTooLong { requested: Duration, max: Duration },
    #[error("the record of org {0} kept changing during the rotation; try again")]
    Contended(OrgId),
    #[error("the new key of org {0} could not read its bucket prefix; the rotation was rolled back")]
    VerificationFailed(OrgId),
    #[error("AWS failed during the rotation; nothing changed: {0}")]
    Aws(#[from] PortError),
}

/// The previous key as a rotation left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousOutcome {
    pub access_key_id: String,
    /// Still usable (until `retire_at`), or already deactivated.
    pub active: bool,
    pub retire_at: DateTime<Utc>,
}

/// A committed rotation. The secret is here once, for the caller to hand on.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub org: OrgId,
    pub key_id: String,
    pub version: u32,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub previous: Option<PreviousOutcome>,
}

/// Runs the protocol for one org. See the module documentation.
#[tracing::instrument(skip_all, fields(org = %req.org, trigger = ?req.trigger))]
pub async fn rotate(ports: Ports<'_>, settings: &RotationSettings, req: &RotationRequest) -> Result<Rotated, RotationError> {
    let grace = req.grace.unwrap_or(Duration::from_secs(0));
    if grace > settings.max_grace {
        return Err(RotationError::GraceTooLong { requested: grace, max: settings.max_grace });
    }
    // 1-2. Read, decide, claim.
    let Versioned { value: mut record, mut etag } = claim(ports.registry, settings, req).await?;
    let rotation = Rotation { ports, settings, req };
    match rotation.run(&mut record, &mut etag, grace).await {
        Ok(done) => Ok(done),
        Err((err, new_key)) => {
            rotation.abort(new_key.as_deref()).await;
            Err(err)
        }
    }
}

async fn claim(registry: &dyn Registry, settings: &RotationSettings, req: &RotationRequest) -> Result<Versioned<OrgRecord>, RotationError> {
    let hour = chrono::TimeDelta::hours(1);
    for _ in 0..settings.cas_attempts {
        let Some(Versioned { value: mut record, etag }) = registry.load(&req.org).await? else {
            return Err(RotationError::NotEnrolled(req.org.clone()));
        };
        let allowed = match record.state {
            KeyState::Enabled => true,
            KeyState::Expired => req.trigger != Trigger::Schedule,
            KeyState::Disabled | KeyState::PendingDeletion => false,
        };
        if !allowed {
            return Err(RotationError::NotEnabled { org: req.org.clone(), state: record.state });
        }
        if let Some(pending) = &record.pending {
            if pending.lease_until > req.now {
                return Err(RotationError::InProgress { org: req.org.clone(), lease_until: pending.lease_until });
            }
            warn!(stale_rotation = %pending.rotation_id, "taking over a rotation whose lease expired");
        }
        record.recent_rotations.retain(|t| *t + hour > req.now);
        if req.trigger == Trigger::Api {
            if record.recent_rotations.len() >= settings.rotations_per_hour as usize {
                let oldest = record.recent_rotations.iter().min().copied().unwrap_or(req.now);
                let wait = (oldest + hour - req.now).num_seconds().max(1) as u64;
                return Err(RotationError::RateLimited {
                    org: req.org.clone(),
                    limit: settings.rotations_per_hour,
                    retry_after: Duration::from_secs(wait),
                });
            }
            record.recent_rotations.push(req.now);
        }
        record.pending = Some(PendingRotation {
            rotation_id: req.rotation_id.clone(),
            trigger: req.trigger,
            started_at: req.now,
            lease_until: req.now + settings.lease.to_chrono(),
            new_access_key_id: None,
        });
        match registry.update(&record, &etag).await {
            Ok(etag) => return Ok(Versioned { value: record, etag }),
            Err(PortError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RotationError::Contended(req.org.clone()))
}

struct Rotation<'a> {
    ports: Ports<'a>,
    settings: &'a RotationSettings,
    req: &'a RotationRequest,
}

type StepError = (RotationError, Option<String>);

impl Rotation<'_> {
    /// Steps 3 to 7 on a claimed record. On error, also returns the id of a new
    /// key that exists in IAM and was not committed.
    async fn run(&self, record: &mut OrgRecord, etag: &mut String, grace: Duration) -> Result<Rotated, StepError> {
        let user = record.iam_user.clone();
        // 3. Reconcile IAM with the record and make room.
        self.reconcile(record).await.map_err(|e| (e, None))?;

        // 4. Create the new key and record its id at once.
        let new_key = self.ports.keys.create_key(&user).await.map_err(|e| (e.into(), None))?;
        let new_id = new_key.access_key_id.clone();
        info!(access_key_id = %new_id, "created the new key");
        let with_id = |r: &mut OrgRecord| {
            if let Some(p) = r.pending.as_mut() {
                p.new_access_key_id = Some(new_id.clone());
            }
        };
        self.write_claimed(record, etag, with_id).await.map_err(|e| (e, Some(new_id.clone())))?;

        // 5. Verify the new key against the bucket.
        if let Some(verifier) = self.ports.verifier {
            if let Err(e) = verifier.verify(&new_key, &record.bucket, &record.prefix).await {
                warn!(access_key_id = %new_id, error = %e, "the new key failed verification");
                return Err((RotationError::VerificationFailed(self.req.org.clone()), Some(new_id)));
            }
        }

        // 6. Commit.
        let now = self.req.now;
        let commit = |r: &mut OrgRecord| commit_rotation(r, &new_id, now, grace);
        if let Err(e) = self.write_claimed(record, etag, commit).await {
            return Err((e, Some(new_id)));
        }
        let current = record.current.clone().expect("commit sets the current key");
        info!(access_key_id = %new_id, version = current.version, "committed the rotation");

        // 7. After the commit: audit, retire the old key, hand out the secret.
        let old = record.previous.clone();
        let mut key_ids: Vec<String> = old.iter().map(|p| p.key.access_key_id.clone()).collect();
        key_ids.push(new_id.clone());
        self.audit(format!("rotate ({:?}), previous key retires at {}", self.req.trigger, old.as_ref().map_or(now, |p| p.retire_at)), key_ids).await;
        let previous = match old {
            Some(old) if old.retire_at <= now && old.deactivated_at.is_none() => {
                let retired = retire_previous(self.ports, self.settings, &self.req.org, &old.key.access_key_id, now, &self.req.actor).await;
                if let Err(e) = &retired {
                    warn!(error = %e, "could not deactivate the previous key now; the next sweep does");
                }
                let active = retired.is_err();
                Some(PreviousOutcome { access_key_id: old.key.access_key_id, active, retire_at: old.retire_at })
            }
            Some(old) => Some(PreviousOutcome {
                access_key_id: old.key.access_key_id,
                active: old.deactivated_at.is_none(),
                retire_at: old.retire_at,
            }),
            None => None,
        };
        Ok(Rotated {
            org: self.req.org.clone(),
            key_id: record.key_id.clone(),
            version: current.version,
            access_key_id: new_id,
            secret_access_key: new_key.secret_access_key,
            created_at: current.created_at,
            expires_at: current.created_at + self.settings.max_key_age.to_chrono(),
            previous,
        })
    }

    /// Step 3: deletes every key of the user the record does not know (never
    /// delivered), then, if the user still has two keys, the previous key.
    async fn reconcile(&self, record: &mut OrgRecord) -> Result<(), RotationError> {
        let keys = self.ports.keys.list_keys(&record.iam_user).await?;
        let current = record.current.as_ref().map(|c| c.access_key_id.clone());
        let mut kept = Vec::new();
        for key in keys {
            if record.known_key_ids().any(|k| k == key.access_key_id) {
                kept.push(key);
            } else {
                warn!(access_key_id = %key.access_key_id, "deleting a key the registry does not know");
                self.ports.keys.delete_key(&record.iam_user, &key.access_key_id).await?;
                self.audit("delete unknown key (never delivered)".into(), vec![key.access_key_id]).await;
            }
        }
        if kept.len() >= 2 {
            for key in kept.iter().filter(|k| Some(&k.access_key_id) != current.as_ref()) {
                info!(access_key_id = %key.access_key_id, "deleting the previous key to make room");
                self.ports.keys.delete_key(&record.iam_user, &key.access_key_id).await?;
            }
        }
        Ok(())
    }

    /// Writes a change to the record this rotation has claimed. A lost
    /// compare-and-swap re-reads the record and, while the claim is still
    /// ours, applies the change again.
    async fn write_claimed(&self, record: &mut OrgRecord, etag: &mut String, change: impl Fn(&mut OrgRecord)) -> Result<(), RotationError> {
        change(record);
        for _ in 0..self.settings.cas_attempts {
            match self.ports.registry.update(record, etag).await {
                Ok(new_etag) => {
                    *etag = new_etag;
                    return Ok(());
                }
                Err(PortError::Conflict) => {
                    let Some(fresh) = self.ports.registry.load(&self.req.org).await? else {
                        return Err(RotationError::NotEnrolled(self.req.org.clone()));
                    };
                    if !claimed_by(&fresh.value, &self.req.rotation_id) {
                        return Err(RotationError::Contended(self.req.org.clone()));
                    }
                    *record = fresh.value;
                    *etag = fresh.etag;
                    change(record);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RotationError::Contended(self.req.org.clone()))
    }

    /// Undoes a failed rotation as far as it safely can: deletes the new key
    /// unless the record shows it committed, and releases the claim. What it
    /// cannot do now, the next attempt or sweep does (the key is not in the
    /// record, so it is deleted as unknown; the lease expires).
    async fn abort(&self, new_key: Option<&str>) {
        let loaded = match self.ports.registry.load(&self.req.org).await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "could not re-read the record after a failed rotation; the next attempt repairs it");
                return;
            }
        };
        let Versioned { value: mut record, etag } = loaded;
        if let Some(id) = new_key {
            if record.current.as_ref().is_some_and(|c| c.access_key_id == id) {
                return; // committed after all: nothing to undo
            }
            if let Err(e) = self.ports.keys.delete_key(&record.iam_user, id).await {
                warn!(access_key_id = %id, error = %e, "could not delete the uncommitted key; the next attempt does");
            }
        }
        if claimed_by(&record, &self.req.rotation_id) {
            record.pending = None;
            if let Err(e) = self.ports.registry.update(&record, &etag).await {
                warn!(error = %e, "could not release the claim; it expires with its lease");
            }
        }
    }

    async fn audit(&self, action: String, key_ids: Vec<String>) {
        let entry = AuditEntry {
            at: self.req.now,
            org_id: self.req.org.clone(),
            action,
            actor: self.req.actor.clone(),
            request_id: self.req.request_id.clone(),
            key_ids,
            detail: None,
        };
        write_audit(self.ports.audit, &entry).await;
    }
}

fn claimed_by(record: &OrgRecord, rotation_id: &str) -> bool {
    record.pending.as_ref().is_some_and(|p| p.rotation_id == rotation_id)
}

/// Appends to the audit trail; a failure is logged (with the key ids) and
/// does not undo a committed change.
pub(crate) async fn write_audit(audit: &dyn AuditLog, entry: &AuditEntry) {
    if let Err(e) = audit.append(entry).await {
        error!(error = %e, action = %entry.action, key_ids = ?entry.key_ids, "could not append to the audit trail");
    }
}

/// Step 6 as a pure change of the record: the new key becomes current
/// (version + 1), the old current becomes previous, retiring after `grace`.
pub fn commit_rotation(record: &mut OrgRecord, new_access_key_id: &str, now: DateTime<Utc>, grace: Duration) {
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
    record.previous = record.current.take().map(|key| PreviousKey {
        key,
        retire_at: if expired { now } else { now + grace.to_chrono() },
        deactivated_at: if expired { Some(now) } else { None },
    });
    record.current = Some(KeyVersion { version, access_key_id: new_access_key_id.to_owned(), created_at: now });
    record.state = KeyState::Enabled;
    record.pending = None;
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
    settings: &RotationSettings,
    org: &OrgId,
    access_key_id: &str,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<(), RotationError> {
    for _ in 0..settings.cas_attempts {
        let Some(Versioned { value: mut record, etag }) = ports.registry.load(org).await? else {
            return Err(RotationError::NotEnrolled(org.clone()));
        };
        let Some(previous) = record.previous.as_mut().filter(|p| p.key.access_key_id == access_key_id) else {
            return Ok(());
        };
        if previous.deactivated_at.is_some() {
            return Ok(());
        }
        ports.keys.set_active(&record.iam_user, access_key_id, false).await?;
        previous.deactivated_at = Some(now);
        let version = previous.key.version;
        record.record_history(HistoryEntry {
            at: now,
            event: "deactivated".into(),
            version: Some(version),
            access_key_id: Some(access_key_id.to_owned()),
        });
        match ports.registry.update(&record, &etag).await {
            Ok(_) => {
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
                return Ok(());
            }
            Err(PortError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RotationError::Contended(org.clone()))
}

/// Retires the previous key of `org` if its grace period is over at `now`
/// (the retirement step of the scheduled evaluation).
pub async fn retire_if_due(ports: Ports<'_>, settings: &RotationSettings, org: &OrgId, now: DateTime<Utc>) -> Result<bool, RotationError> {
    let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else {
        return Err(RotationError::NotEnrolled(org.clone()));
    };
    match record.previous {
        Some(p) if p.deactivated_at.is_none() && p.retire_at <= now => {
            retire_previous(ports, settings, org, &p.key.access_key_id, now, "schedule").await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
