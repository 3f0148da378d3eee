//! The rotation protocol (docs/architecture.md, "The rotation protocol": never lose access):
//!
//! 1. read the record and refuse what must be refused;
//! 2. claim it with a lease (conditional write);
//! 3. make room under the 2-key quota by deleting the previous key, never the
//!    current; when taking over a crashed rotation, or when IAM still refuses
//!    a key, first reconcile IAM with the record (delete keys it does not know);
//! 4. create the new key and record it at once: in the key vault, as the
//!    pending version named by the claim (or, without a vault, in the record);
//! 5. verify the new key against the bucket (bounded retries);
//! 6. commit: the new key becomes current, the old one previous (retired now
//!    or after the grace period), with its audit entries in the same write;
//! 7. only then hand out the secret, make it current in the vault, deactivate
//!    the old key and publish the event.
//!
//! A failure at any step leaves the old state (the new key is deleted now, or
//! by the next attempt as a key the record does not know) or the new state
//! (what step 7 did not finish, the next sweep does).
//!
//! The requests of one rotation of an org with a previous key (the request
//! table of docs/architecture.md): registry read and claim, IAM delete and create, vault put,
//! verify, commit, vault stage move, IAM deactivate, event: ten.
//!
//! The rotation is the span `rotate_idempotent` (the org, the trigger); each
//! step is a span in it (`DEBUG`, so not in the logs by default; in the
//! traces, see `crate::telemetry`): `rotation.claim`, `rotation.make_room`
//! (or `rotation.reconcile`), `rotation.create`, `rotation.verify`,
//! `rotation.commit`, then `rotation.finish`, or `rotation.abort`; a repeated
//! request answered again is `rotation.replay`. Their fields are ids, never a
//! secret.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tracing::{debug_span, error, info, warn, Instrument};

use super::domain::{
    DecisionTime, HistoryEntry, IdempotentRotation, KeyState, KeyVersion, LeaseTime, OrgId, OrgRecord, PendingRotation,
    PreviousKey, QuarantinedKey, Trigger, AUDIT_OUTBOX_LIMIT, IDEMPOTENCY_WINDOW_HOURS,
};
use super::duration::Duration;
use super::policy::next_automatic_rotation;
use super::ports::{
    AccessKeys, AuditEntry, AuditLog, Clock, KeyVault, KeyVerifier, NewKey, Notification, Notifier, PortError,
    Registry, Versioned,
};
use super::retirement::{self, AfterUse, SlotsHeld, Unknown};
use super::update::{update_record, update_record_from, Decision, UpdateError, Updated};

/// The services a rotation uses.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub registry: &'a dyn Registry,
    pub keys: &'a dyn AccessKeys,
    pub audit: &'a dyn AuditLog,
    /// `None`: the new key is not checked against the bucket before the commit.
    pub verifier: Option<&'a dyn KeyVerifier>,
    /// `None`: secrets are only handed to the caller, not stored.
    pub vault: Option<&'a dyn KeyVault>,
    /// `None`: no events are published.
    pub notifier: Option<&'a dyn Notifier>,
    /// The shared clock leases are given and judged by (never an event's time).
    pub clock: &'a dyn Clock,
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
    /// How long an inactive key (a previous one, or a quarantined one the
    /// registry did not know) is kept before it is deleted (`KEY_RETENTION`).
    pub retention: Duration,
    /// Automatic rotation happens at the latest this long before the key's
    /// maximum age, whatever the interval (see [`super::policy::next_automatic_rotation`]).
    pub automatic_lead: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            rotations_per_hour: 5,
            max_key_age: Duration::from_days(90),
            max_grace: Duration::from_days(7),
            retention: Duration::from_days(7),
            automatic_lead: Duration::from_days(2),
        }
    }
}

/// One request to rotate an org's key.
#[derive(Debug, Clone)]
pub struct RotationRequest {
    pub org: OrgId,
    /// The run's time (the triggering event's): every decision about the
    /// org's life and every date written come from it; leases do not (they
    /// come from [`Ports::clock`]).
    pub now: DecisionTime,
    pub trigger: Trigger,
    /// Who asked (for the audit trail): a subject claim, `schedule`, `operator`.
    pub actor: String,
    /// A unique id of this attempt (names the claim in the record and the
    /// vault version of the new secret): a UUID, as Secrets Manager takes
    /// 32 to 64 characters as a version token.
    pub rotation_id: String,
    pub request_id: Option<String>,
    /// Keep the previous key active this long; `None` or zero: deactivate it now.
    pub grace: Option<Duration>,
}

/// A caller's `Idempotency-Key` and the fingerprint of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// Tells a different request under the same key apart (a digest of the body).
    pub fingerprint: String,
}

/// What a rotation refused or failed with. Each maps to one HTTP status in the API layer.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("Not found IAM key info for orgId: {0}")]
    NotEnrolled(OrgId),
    #[error("the key of org {org} is {state}; only an Enabled (or, by hand, an Expired) key can be rotated")]
    NotEnabled { org: OrgId, state: KeyState },
    #[error("a rotation of the key of org {org} is already in progress (until {lease_until})")]
    InProgress { org: OrgId, lease_until: LeaseTime },
    /// A scheduled rotation found, on the record it would claim, that the
    /// automatic rotation is no longer due (another actor did it first).
    #[error("the automatic rotation of the key of org {0} is not due")]
    NotDue(OrgId),
    #[error("too many rotations of the key of org {org}: at most {limit} per hour")]
    RateLimited { org: OrgId, limit: u32, retry_after: Duration },
    #[error("previousKeyGracePeriod: {requested} is longer than the maximum of {max}")]
    GraceTooLong { requested: Duration, max: Duration },
    #[error("the record of org {0} kept changing during the rotation; try again")]
    Contended(OrgId),
    #[error("the new key of org {0} could not read its bucket prefix; the rotation was rolled back")]
    VerificationFailed(OrgId),
    #[error("Idempotency-Key '{key}' was used for a different request; use a new key for a new request")]
    IdempotencyMismatch { key: String },
    #[error(
        "the answer to Idempotency-Key '{key}' can no longer be given (its key is gone from the vault); use a new key"
    )]
    ReplayUnavailable { key: String },
    /// IAM's two places hold the current key and a quarantined one.
    #[error("the key of org {org} cannot rotate: {held}")]
    SlotsHeld { org: OrgId, held: SlotsHeld },
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
pub async fn rotate(
    ports: Ports<'_>,
    settings: &RotationSettings,
    req: &RotationRequest,
) -> Result<Rotated, RotationError> {
    rotate_idempotent(ports, settings, req, None).await
}

/// [`rotate`], for a request that carries an `Idempotency-Key`: a repeat of a
/// rotation committed in the last 24 hours gets the same answer (its secret
/// from the key vault) and rotates nothing; a repeat while it runs is
/// [`RotationError::InProgress`]; another request under the same key is
/// [`RotationError::IdempotencyMismatch`].
#[tracing::instrument(skip_all, fields(org = %req.org, trigger = ?req.trigger))]
pub async fn rotate_idempotent(
    ports: Ports<'_>,
    settings: &RotationSettings,
    req: &RotationRequest,
    idempotency: Option<&Idempotency>,
) -> Result<Rotated, RotationError> {
    let grace = req.grace.unwrap_or(Duration::from_secs(0));
    if grace > settings.max_grace {
        return Err(RotationError::GraceTooLong { requested: grace, max: settings.max_grace });
    }
    // 1-2. Read, decide, claim.
    let rotation = Rotation { ports, settings, req, idempotency };
    let claimed = match claim(ports.registry, ports.clock, settings, req, idempotency).await {
        Ok(claimed) => claimed,
        Err(e @ RotationError::Aws(_)) => {
            // The claim may have been written though no answer came: release it.
            rotation.abort(None).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (Versioned { value: mut record, mut etag }, took_over) = match claimed {
        Claim::Claimed { record, took_over } => (record, took_over),
        Claim::Done { record, done } => return replay(ports, settings, &record, &done).await,
    };
    match rotation.commit(&mut record, &mut etag, grace, took_over).await {
        Ok(committed) => Ok(rotation.finish(&mut record, committed).await),
        Err((err, new_key)) => match rotation.abort(new_key.as_ref().map(|k| k.access_key_id.as_str())).await {
            // The commit landed after all (its answer lost, or late): finish it and hand the key out.
            Some(mut record) => {
                let new_key = new_key.expect("only a new key can have been committed");
                let replaced_vault_version = record.previous.as_ref().and_then(|p| p.key.vault_version.clone());
                let committed = Committed { new_key, unqueued: Vec::new(), replaced_vault_version };
                Ok(rotation.finish(&mut record, committed).await)
            }
            None => Err(err),
        },
    }
}

/// A rotation's commit, and what the steps after it need.
struct Committed {
    new_key: NewKey,
    /// Audit entries the record had no room for.
    unqueued: Vec<AuditEntry>,
    /// The vault version the new one replaces as current.
    replaced_vault_version: Option<String>,
}

enum Claim {
    /// The record is ours; `took_over` a crashed rotation's expired claim.
    Claimed { record: Versioned<OrgRecord>, took_over: Option<String> },
    /// The same request was committed before: answer it again.
    Done { record: OrgRecord, done: IdempotentRotation },
}

#[tracing::instrument(name = "rotation.claim", level = "debug", skip_all)]
async fn claim(
    registry: &dyn Registry,
    clock: &dyn Clock,
    settings: &RotationSettings,
    req: &RotationRequest,
    idempotency: Option<&Idempotency>,
) -> Result<Claim, RotationError> {
    let hour = chrono::TimeDelta::hours(1);
    let decided = update_record(registry, &req.org, |record| {
        let lease_now = clock.now();
        if landed(record, &req.rotation_id, None) == Landed::Claimed {
            // Our claim was written by an earlier attempt of this very request.
            return Ok(Decision::Keep(Claiming::Ours { took_over: None }));
        }
        let allowed = match record.state {
            KeyState::Enabled => true,
            KeyState::Expired => req.trigger != Trigger::Schedule,
            KeyState::Disabled | KeyState::PendingDeletion => false,
        };
        if !allowed {
            return Err(RotationError::NotEnabled { org: req.org.clone(), state: record.state });
        }
        if let Some(idem) = idempotency {
            let window = chrono::TimeDelta::hours(IDEMPOTENCY_WINDOW_HOURS);
            let done = record.idempotent_rotations.iter().find(|d| d.key == idem.key && d.at + window > req.now.at());
            if let Some(done) = done {
                if done.fingerprint != idem.fingerprint {
                    return Err(RotationError::IdempotencyMismatch { key: idem.key.clone() });
                }
                return Ok(Decision::Keep(Claiming::Done(done.clone())));
            }
        }
        let mut took_over = None;
        if let Some(pending) = &record.pending {
            // Judged on the shared clock, never on this request's (event) time.
            if !pending.lease_until.is_over_at(lease_now) {
                return Err(RotationError::InProgress { org: req.org.clone(), lease_until: pending.lease_until });
            }
            warn!(stale_rotation = %pending.rotation_id, "taking over a rotation whose lease expired");
            took_over = Some(pending.rotation_id.clone());
        }
        if req.trigger == Trigger::Schedule
            && next_automatic_rotation(record, settings).is_none_or(|at| at > req.now.at())
        {
            // Planned from an older read: another actor rotated since.
            return Err(RotationError::NotDue(req.org.clone()));
        }
        if req.trigger == Trigger::Api {
            // Entries older than an hour are dropped by the commit, not here, so
            // that a rotation that fails leaves the record exactly as it was.
            let recent: Vec<DateTime<Utc>> =
                record.recent_rotations.iter().copied().filter(|t| *t + hour > req.now.at()).collect();
            if recent.len() >= settings.rotations_per_hour as usize {
                let oldest = recent.iter().min().copied().unwrap_or(req.now.at());
                // At most the hour: a request timed before the rotations it counts
                // (an event replayed, calls' times out of order) waits no longer.
                let wait = (oldest + hour - req.now.at()).num_seconds().clamp(1, hour.num_seconds()) as u64;
                return Err(RotationError::RateLimited {
                    org: req.org.clone(),
                    limit: settings.rotations_per_hour,
                    retry_after: Duration::from_secs(wait),
                });
            }
            record.recent_rotations.push(req.now.at());
        }
        record.pending = Some(PendingRotation {
            rotation_id: req.rotation_id.clone(),
            trigger: req.trigger,
            started_at: req.now.at(),
            lease_until: lease_now.after(settings.lease),
            new_access_key_id: None,
        });
        Ok(Decision::Write(Claiming::Ours { took_over }))
    })
    .await;
    match decided {
        Ok(Updated::Written { value, version, out: Claiming::Ours { took_over } })
        | Ok(Updated::Unchanged { value, version: Some(version), out: Claiming::Ours { took_over } }) => {
            Ok(Claim::Claimed { record: Versioned { value, etag: version }, took_over })
        }
        Ok(Updated::Unchanged { value, out: Claiming::Done(done), .. }) => Ok(Claim::Done { record: value, done }),
        Ok(Updated::Written { .. } | Updated::Unchanged { .. }) => unreachable!("a claim is written, or found"),
        Ok(Updated::Missing) => Err(RotationError::NotEnrolled(req.org.clone())),
        Err(UpdateError::Refused(e)) => Err(e),
        Err(UpdateError::Port(e)) => Err(e.into()),
        Err(UpdateError::Contended) => Err(RotationError::Contended(req.org.clone())),
    }
}

/// What the claim's decision found.
enum Claiming {
    /// The record is ours (`took_over`: a crashed rotation's expired claim).
    Ours { took_over: Option<String> },
    /// The same request was committed before.
    Done(IdempotentRotation),
}

/// What a record shows of one rotation's own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    /// The commit of `new_key` is written: it is the current key.
    Committed,
    /// The rotation's claim is written and still holds.
    Claimed,
    /// Neither: never written, released, or taken over by another actor.
    Neither,
}

/// The one place that decides whether a rotation's claim, commit or abort
/// landed, from a record read after the write (an answer can be lost while the
/// write took effect, and the SDK's retry then loses the race to it).
fn landed(record: &OrgRecord, rotation_id: &str, new_key: Option<&str>) -> Landed {
    if new_key.is_some_and(|id| record.current.as_ref().is_some_and(|c| c.access_key_id == id)) {
        Landed::Committed
    } else if claimed_by(record, rotation_id) {
        Landed::Claimed
    } else {
        Landed::Neither
    }
}

/// The answer of a committed rotation, again: its key from the vault, its
/// previous key as the record shows it now.
#[tracing::instrument(name = "rotation.replay", level = "debug", skip_all)]
async fn replay(
    ports: Ports<'_>,
    settings: &RotationSettings,
    record: &OrgRecord,
    done: &IdempotentRotation,
) -> Result<Rotated, RotationError> {
    let unavailable = || RotationError::ReplayUnavailable { key: done.key.clone() };
    let vault = ports.vault.ok_or_else(unavailable)?;
    let key = vault.get(&record.org_id, &done.vault_version).await?.ok_or_else(unavailable)?;
    if key.access_key_id != done.access_key_id {
        return Err(unavailable());
    }
    info!(access_key_id = %done.access_key_id, version = done.version, "answered a repeated request again");
    let previous = done.previous_access_key_id.as_ref().map(|id| {
        let as_recorded = record.previous.as_ref().filter(|p| &p.key.access_key_id == id);
        PreviousOutcome {
            access_key_id: id.clone(),
            active: as_recorded.is_some_and(|p| p.is_active()),
            retire_at: done.previous_retire_at.unwrap_or(done.at),
        }
    });
    Ok(Rotated {
        org: record.org_id.clone(),
        key_id: record.key_id.clone(),
        version: done.version,
        access_key_id: key.access_key_id,
        secret_access_key: key.secret_access_key,
        created_at: done.at,
        expires_at: done.at + settings.max_key_age.to_chrono(),
        previous,
    })
}

struct Rotation<'a> {
    ports: Ports<'a>,
    settings: &'a RotationSettings,
    req: &'a RotationRequest,
    idempotency: Option<&'a Idempotency>,
}

/// A failed step, with the new key if IAM made one that was not (known to be) committed.
type StepError = (RotationError, Option<NewKey>);

impl Rotation<'_> {
    /// Steps 3 to 6 on a claimed record. On error, also returns the new key if
    /// IAM made one and it was not (known to be) committed.
    async fn commit(
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
    async fn finish(&self, record: &mut OrgRecord, committed: Committed) -> Rotated {
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
    fn queue_audit(&self, record: &mut OrgRecord) -> Vec<AuditEntry> {
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
    async fn make_room(&self, record: &OrgRecord) -> Result<(), RotationError> {
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
    async fn reconcile(&self, record: &mut OrgRecord, stale: Option<&str>) -> Result<(), RotationError> {
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
    async fn write_claimed(
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
    async fn abort(&self, new_key: Option<&str>) -> Option<OrgRecord> {
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

    fn entry(&self, action: String, key_ids: Vec<String>) -> AuditEntry {
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

    async fn audit(&self, action: String, key_ids: Vec<String>) {
        write_audit(self.ports.audit, &self.entry(action, key_ids)).await;
    }
}

fn claimed_by(record: &OrgRecord, rotation_id: &str) -> bool {
    record.pending.as_ref().is_some_and(|p| p.rotation_id == rotation_id)
}

/// Remembers a committed rotation under its `Idempotency-Key` (and forgets
/// those older than the window).
fn remember(record: &mut OrgRecord, idem: &Idempotency, vault_version: &str, now: DateTime<Utc>) {
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
    for _ in 0..super::update::ATTEMPTS {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use chrono::TimeDelta;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::core::memory::{FaultMode, MemoryWorld};

    struct World {
        world: MemoryWorld,
        settings: RotationSettings,
        org: OrgId,
        start: DateTime<Utc>,
    }

    impl std::ops::Deref for World {
        type Target = MemoryWorld;
        fn deref(&self) -> &MemoryWorld {
            &self.world
        }
    }

    impl World {
        async fn enrolled() -> Self {
            let world = Self {
                world: MemoryWorld::new(),
                settings: RotationSettings::default(),
                org: OrgId::parse("1234567").unwrap(),
                start: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc),
            };
            world.world.enroll(&world.org, world.start).await;
            world
        }
        fn request(&self, at: DateTime<Utc>, id: &str) -> RotationRequest {
            RotationRequest {
                org: self.org.clone(),
                now: DecisionTime::from(at),
                trigger: Trigger::Api,
                actor: "admin@example.com".into(),
                rotation_id: id.into(),
                request_id: None,
                grace: None,
            }
        }
        /// The sweep at `at`, with this world's rotation settings.
        async fn sweep_at(&self, at: DateTime<Utc>) -> crate::core::sweep::Summary {
            use crate::core::sweep::{sweep, SweepRequest, SweepSettings};
            let settings = SweepSettings {
                rotation: self.settings.clone(),
                grace: Duration::from_hours(24),
                warnings: Vec::new(),
                concurrency: 1,
                retire_in_use: Default::default(),
            };
            let req = SweepRequest {
                now: DecisionTime::from(at),
                dry_run: false,
                deadline: None,
                margin: std::time::Duration::ZERO,
            };
            sweep(self.ports(), &settings, &req).await.unwrap()
        }
        async fn rotate_at(&self, at: DateTime<Utc>, id: &str) -> Result<Rotated, RotationError> {
            rotate(self.ports(), &self.settings, &self.request(at, id)).await
        }
        fn record(&self) -> OrgRecord {
            self.registry.get(&self.org).unwrap()
        }
        fn user(&self) -> String {
            self.org.user_name()
        }
        fn key_ids(&self) -> Vec<String> {
            self.keys.keys_of(&self.user()).into_iter().map(|k| k.access_key_id).collect()
        }
        /// The org has a key it knows (the record's current) and it works.
        fn assert_has_working_known_key(&self) {
            let record = self.record();
            let current = record.current.expect("a current key");
            assert!(
                self.keys.works(&self.user(), &current.access_key_id),
                "current key {} must work",
                current.access_key_id
            );
            assert!(self.key_ids().len() <= 2);
        }
    }

    fn minutes(n: i64) -> TimeDelta {
        TimeDelta::minutes(n)
    }

    #[tokio::test]
    async fn the_first_rotation_issues_the_first_key() {
        let w = World::enrolled().await;
        let rotated = w.rotate_at(w.start, "r1").await.unwrap();
        assert_eq!(rotated.version, 1);
        assert!(rotated.previous.is_none());
        assert_eq!(rotated.expires_at, w.start + TimeDelta::days(90));
        assert!(w.keys.works(&w.user(), &rotated.access_key_id));
        let record = w.record();
        assert_eq!(record.current.unwrap().access_key_id, rotated.access_key_id);
        assert!(record.pending.is_none());
        assert_eq!(record.policy.last_rotation_at, Some(w.start));
        assert_eq!(w.vault.current_key(&w.org), Some(rotated.access_key_id.clone()), "the vault holds the current key");
        let events = w.notifier.published();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].detail_type, "Bucket Key Rotated");
        assert!(!events[0].detail.to_string().contains("memory-secret"));
        // The secret is handed out, never printed.
        assert!(rotated.secret_access_key.expose_secret().starts_with("memory-secret-"));
        assert!(!format!("{rotated:?}").contains("memory-secret"));
        let json = serde_json::to_string(&w.record()).unwrap();
        assert!(!json.contains("memory-secret"));
        assert!(w.audit.entries().iter().all(|e| !format!("{e:?}").contains("memory-secret")));
    }

    #[tokio::test]
    async fn a_second_rotation_retires_the_old_key_and_counts_up() {
        let w = World::enrolled().await;
        let first = w.rotate_at(w.start, "r1").await.unwrap();
        let second = w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
        assert_eq!(second.version, 2);
        let previous = second.previous.unwrap();
        assert_eq!(previous.access_key_id, first.access_key_id);
        assert!(!previous.active);
        assert!(!w.keys.works(&w.user(), &first.access_key_id), "old key deactivated");
        assert!(w.keys.works(&w.user(), &second.access_key_id));
        let record = w.record();
        assert_eq!(
            record.previous.unwrap().stage(),
            crate::core::retirement::Stage::Ordered { at: w.start + minutes(1) }
        );
        // The audit entries were committed with the record; the sweep copies them to the trail.
        let actions: Vec<String> = w.audit_trail(&w.org).into_iter().map(|e| e.action).collect();
        assert!(
            actions.iter().any(|a| a.starts_with("rotate")) && actions.iter().any(|a| a == "deactivate previous key"),
            "{actions:?}"
        );
    }

    /// The request table of docs/architecture.md: what one rotation of an org with a current
    /// and a previous key asks of the services, in order.
    #[tokio::test]
    async fn a_rotation_of_an_org_with_a_previous_key_makes_ten_requests() {
        let w = World::enrolled().await;
        w.rotate_at(w.start, "r1").await.unwrap();
        w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
        let before = w.faults.call_count();
        w.rotate_at(w.start + minutes(2), "r3").await.unwrap();
        let calls = &w.faults.calls()[before..];
        let expected = [
            "registry.load",     // 1. read
            "registry.update",   // 2. claim
            "iam.delete_key",    // 3. make room: the previous key
            "iam.create_key",    // 4. the new key ...
            "vault.put_pending", //    ... recorded with its secret
            "verify",            // 5. it reads the bucket
            "registry.update",   // 6. commit, with its audit entries
            "vault.promote",     // 7. the vault's current secret
            "iam.set_active",    //    the old key deactivated
            "events.publish",    //    Bucket Key Rotated
        ];
        assert_eq!(calls, expected);
    }

    #[tokio::test]
    async fn a_grace_period_keeps_the_old_key_until_it_is_due() {
        let w = World::enrolled().await;
        let first = w.rotate_at(w.start, "r1").await.unwrap();
        let mut req = w.request(w.start + minutes(1), "r2");
        req.grace = Some(Duration::from_hours(24));
        let second = rotate(w.ports(), &w.settings, &req).await.unwrap();
        let previous = second.previous.unwrap();
        assert!(previous.active);
        assert_eq!(previous.retire_at, w.start + minutes(1) + TimeDelta::hours(24));
        assert!(w.keys.works(&w.user(), &first.access_key_id));
        // A second before it is due, the sweep leaves it; at the time, it is retired.
        let due = previous.retire_at;
        assert_eq!(w.sweep_at(due - TimeDelta::seconds(1)).await.retired, 0);
        assert!(w.keys.works(&w.user(), &first.access_key_id));
        assert_eq!(w.sweep_at(due).await.retired, 1);
        assert!(!w.keys.works(&w.user(), &first.access_key_id));
        assert!(w.keys.works(&w.user(), &second.access_key_id));
        assert_eq!(w.sweep_at(due).await.retired, 0, "only once");
    }

    #[tokio::test]
    async fn a_grace_period_longer_than_seven_days_is_refused() {
        let w = World::enrolled().await;
        let before = w.faults.call_count();
        let mut req = w.request(w.start, "r1");
        req.grace = Some(Duration::from_secs(7 * 86_400 + 1));
        let err = rotate(w.ports(), &w.settings, &req).await.unwrap_err();
        assert!(matches!(err, RotationError::GraceTooLong { .. }), "{err}");
        assert_eq!(w.faults.call_count(), before, "nothing touched");
        req.grace = Some(Duration::from_days(7));
        rotate(w.ports(), &w.settings, &req).await.unwrap();
    }

    #[tokio::test]
    async fn the_key_quota_is_never_exceeded_across_many_rotations() {
        let mut w = World::enrolled().await;
        w.settings.rotations_per_hour = 1000;
        let mut at = w.start;
        for i in 0..25 {
            let mut req = w.request(at, &format!("r{i}"));
            req.grace = Some(Duration::from_hours(if i % 2 == 0 { 24 } else { 0 }));
            let rotated = rotate(w.ports(), &w.settings, &req).await.unwrap();
            assert_eq!(rotated.version, i + 1);
            w.assert_has_working_known_key();
            at += minutes(5);
        }
        assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2);
        assert!(w.record().history.len() <= crate::core::domain::HISTORY_LIMIT);
    }

    #[tokio::test]
    async fn refusals_name_the_reason_and_change_nothing() {
        let w = World::enrolled().await;
        let other = OrgId::parse("999").unwrap();
        let mut req = w.request(w.start, "r1");
        req.org = other;
        let err = rotate(w.ports(), &w.settings, &req).await.unwrap_err();
        assert_eq!(err.to_string(), "Not found IAM key info for orgId: 999");

        for state in [KeyState::Disabled, KeyState::PendingDeletion] {
            let mut record = w.record();
            record.state = state;
            w.registry.put(record.clone());
            let err = w.rotate_at(w.start, "r1").await.unwrap_err();
            assert!(matches!(err, RotationError::NotEnabled { state: s, .. } if s == state), "{err}");
            assert_eq!(w.record(), record);
        }
    }

    #[tokio::test]
    async fn an_expired_key_is_restored_by_a_manual_rotation_but_not_by_the_schedule() {
        let w = World::enrolled().await;
        let first = w.rotate_at(w.start, "r1").await.unwrap();
        // The 90-day rule took the key away.
        let mut record = w.record();
        record.state = KeyState::Expired;
        w.registry.put(record);
        w.keys.set_active(&crate::core::domain::IamUser::home(w.user()), &first.access_key_id, false).await.unwrap();
        let later = w.start + TimeDelta::days(91);
        let mut scheduled = w.request(later, "s1");
        scheduled.trigger = Trigger::Schedule;
        assert!(matches!(rotate(w.ports(), &w.settings, &scheduled).await, Err(RotationError::NotEnabled { .. })));
        let restored = w.rotate_at(later, "r2").await.unwrap();
        assert_eq!(w.record().state, KeyState::Enabled);
        assert!(w.keys.works(&w.user(), &restored.access_key_id));
        assert!(!restored.previous.unwrap().active);
    }

    #[tokio::test]
    async fn the_rate_limit_counts_an_hour_of_api_rotations() {
        let w = World::enrolled().await;
        for i in 0..5 {
            w.rotate_at(w.start + minutes(i), &format!("r{i}")).await.unwrap();
        }
        let err = w.rotate_at(w.start + minutes(10), "r5").await.unwrap_err();
        match err {
            RotationError::RateLimited { limit, retry_after, .. } => {
                assert_eq!(limit, 5);
                assert_eq!(retry_after, Duration::from_secs(50 * 60), "until the oldest leaves the hour");
            }
            other => panic!("{other}"),
        }
        assert!(w.record().pending.is_none());
        w.rotate_at(w.start + minutes(60), "r6").await.unwrap();
        // The operator's rotations are not limited.
        let mut by_hand = w.request(w.start + minutes(61), "o1");
        by_hand.trigger = Trigger::Operator;
        for i in 0..3 {
            by_hand.rotation_id = format!("o{i}");
            rotate(w.ports(), &w.settings, &by_hand).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_rotation_in_progress_blocks_others_until_its_lease_expires() {
        let w = World::enrolled().await;
        w.rotate_at(w.start, "r1").await.unwrap();
        // A rotation that crashed after creating its key.
        w.faults.inject(5, FaultMode::Crash); // load, claim, create, vault put, verify: crash at verify
        assert!(w.rotate_at(w.start + minutes(1), "crashed").await.is_err());
        w.faults.clear();
        let pending = w.record().pending.expect("the crashed claim stays");
        let current = w.record().current.unwrap().access_key_id;
        let orphan = w.key_ids().into_iter().find(|k| *k != current).expect("the crashed rotation's key");
        assert_eq!(w.vault.pending_key(&w.org), Some(orphan.clone()), "its key id was recorded in the vault");
        assert_eq!(w.key_ids().len(), 2);
        let err = w.rotate_at(w.start + minutes(2), "r2").await.unwrap_err();
        assert!(matches!(err, RotationError::InProgress { .. }), "{err}");
        // A request whose event time is a day later changes nothing: leases
        // are judged on the shared clock, which has not moved.
        let err = w.rotate_at(w.start + TimeDelta::days(1), "r2b").await.unwrap_err();
        assert!(matches!(err, RotationError::InProgress { .. }), "an event time is no lease clock: {err}");
        // Once the lease is over on the shared clock (allowing for the skew),
        // the next rotation takes over and deletes the orphan.
        w.clock.advance(pending.lease_until.as_utc() - w.clock.now().as_utc());
        let err = w.rotate_at(w.start + minutes(3), "r2c").await.unwrap_err();
        assert!(matches!(err, RotationError::InProgress { .. }), "within the skew bound: {err}");
        w.clock.advance(crate::core::domain::MAX_CLOCK_SKEW.to_chrono());
        let rotated = w.rotate_at(w.start + minutes(3), "r3").await.unwrap();
        assert!(!w.key_ids().contains(&orphan));
        assert!(w.keys.works(&w.user(), &rotated.access_key_id));
        assert!(w.audit.entries().iter().any(|e| e.key_ids == vec![orphan.clone()]));
    }

    #[tokio::test]
    async fn a_failed_verification_rolls_back() {
        let w = World::enrolled().await;
        let first = w.rotate_at(w.start, "r1").await.unwrap();
        let before = w.record();
        w.faults.inject(5, FaultMode::Fail); // the verify call
        let err = w.rotate_at(w.start + minutes(1), "r2").await.unwrap_err();
        assert!(matches!(err, RotationError::VerificationFailed(_)), "{err}");
        assert_eq!(w.key_ids(), vec![first.access_key_id.clone()]);
        assert_eq!(w.record(), before, "the record is as it was");
    }

    /// A fault at every step of a rotation (a transient error, or a crash after
    /// which nothing reaches AWS), from the state "one key, in use": the org
    /// keeps a working key it knows, and the next rotation succeeds.
    #[tokio::test]
    async fn a_fault_at_any_step_leaves_a_state_the_next_rotation_repairs() {
        // How many calls a clean second rotation makes.
        let steps = {
            let w = World::enrolled().await;
            w.rotate_at(w.start, "r1").await.unwrap();
            let before = w.faults.call_count();
            w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
            w.faults.call_count() - before
        };
        // load, claim, create, vault put, verify, commit, vault promote, deactivate, event
        assert!(steps >= 9, "{steps}");
        for mode in [FaultMode::Fail, FaultMode::Crash] {
            for step in 1..=steps + 1 {
                let w = World::enrolled().await;
                let first = w.rotate_at(w.start, "r1").await.unwrap();
                w.faults.inject(step, mode);
                let result = w.rotate_at(w.start + minutes(1), "r2").await;
                let calls = w.faults.calls();
                w.faults.clear();
                let context = format!("{mode:?} at step {step} of {steps}: {calls:?}");
                w.assert_has_working_known_key();
                let current = w.record().current.unwrap().access_key_id;
                match &result {
                    Err(_) => assert_eq!(current, first.access_key_id, "{context}: failure keeps the old state"),
                    Ok(rotated) => assert_eq!(current, rotated.access_key_id, "{context}"),
                }
                // The next rotation, once any lease has expired (on the shared
                // clock), succeeds and leaves exactly the keys the record knows.
                w.clock.advance(TimeDelta::minutes(30));
                let next = w.rotate_at(w.start + minutes(30), "r3").await.unwrap_or_else(|e| panic!("{context}: {e}"));
                let record = w.record();
                let mut known: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
                let mut present = w.key_ids();
                known.sort();
                present.sort();
                assert_eq!(known, present, "{context}");
                assert!(w.keys.works(&w.user(), &next.access_key_id), "{context}");
                assert_eq!(
                    w.vault.current_key(&w.org),
                    Some(next.access_key_id.clone()),
                    "{context}: the vault holds the current key"
                );
                assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2, "{context}");
            }
        }
    }

    /// A registry whose `nth` update is written but answered as a conflict:
    /// what the SDK reports when a write's answer is lost and its retry meets
    /// the write itself (412).
    struct LostAnswer<'a> {
        inner: &'a crate::core::memory::MemoryRegistry,
        countdown: std::sync::atomic::AtomicUsize,
        /// What the caller is told: a conflict (the SDK's retry met the write)
        /// or a failure (every retry's answer was lost too).
        told: PortError,
    }

    #[async_trait::async_trait]
    impl crate::core::memory::Passthrough for LostAnswer<'_> {
        fn inner(&self) -> &dyn Registry {
            self.inner
        }
        async fn on_update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
            let written = self.inner.update(record, etag).await?;
            match self.countdown.fetch_sub(1, Ordering::SeqCst) {
                1 => Err(self.told.clone()),
                _ => Ok(written),
            }
        }
    }

    /// The claim's or the commit's answer lost after the write: the rotation
    /// recognises its own write, succeeds and hands out the key it committed
    /// (before, the caller got 409 while the commit stood and the old key was
    /// about to be retired: a lockout).
    #[tokio::test]
    async fn a_lost_answer_to_the_claim_or_the_commit_is_recognised() {
        let failed = PortError::Unavailable { service: "s3", operation: "PutObject", detail: "timeout".into() };
        for (nth, told, which) in [
            (1, PortError::Conflict, "claim"),
            (2, PortError::Conflict, "commit"),
            (2, failed.clone(), "commit, every retry lost"),
        ] {
            let w = World::enrolled().await;
            let first = w.rotate_at(w.start, "r1").await.unwrap();
            let registry = LostAnswer { inner: &w.registry, countdown: nth.into(), told };
            let ports = Ports { registry: &registry, ..w.ports() };
            let rotated = rotate(ports, &w.settings, &w.request(w.start + minutes(1), "r2"))
                .await
                .unwrap_or_else(|e| panic!("lost answer to the {which}: {e}"));
            let record = w.record();
            assert_eq!(record.current.unwrap().access_key_id, rotated.access_key_id, "{which}");
            assert!(record.pending.is_none(), "{which}");
            assert!(w.keys.works(&w.user(), &rotated.access_key_id), "{which}");
            assert!(!w.keys.works(&w.user(), &first.access_key_id), "{which}: the old key retired");
            assert_eq!(w.vault.current_key(&w.org), Some(rotated.access_key_id.clone()), "{which}");
        }
    }

    #[tokio::test]
    async fn two_concurrent_rotations_one_wins_never_three_keys() {
        for round in 0..20 {
            let w = World::enrolled().await;
            w.rotate_at(w.start, "r0").await.unwrap();
            let at = w.start + minutes(1);
            let (a, b) = tokio::join!(w.rotate_at(at, "a"), w.rotate_at(at, "b"));
            let (won, lost) = match (a, b) {
                (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
                (a, b) => panic!("round {round}: exactly one must win: {a:?} / {b:?}"),
            };
            assert!(matches!(lost, RotationError::InProgress { .. } | RotationError::Contended(_)), "{lost}");
            assert_eq!(won.version, 2);
            assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2);
            w.assert_has_working_known_key();
        }
    }
}
