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

mod record;
mod steps;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tracing::{info, warn};

use super::domain::{
    DecisionTime, IdempotentRotation, KeyState, LeaseTime, OrgId, OrgRecord, PendingRotation, Trigger,
    IDEMPOTENCY_WINDOW_HOURS,
};
use super::duration::Duration;
use super::policy::next_automatic_rotation;
use super::ports::{
    AccessKeys, AuditEntry, AuditLog, Clock, KeyVault, KeyVerifier, NewKey, Notifier, PortError, Registry, Versioned,
};
use super::retirement::SlotsHeld;
use super::update::{update_record, Decision, UpdateError, Updated};

use record::*;
pub use record::{commit_rotation, retire_previous};
pub(crate) use record::{make_vault_current, write_audit};
use steps::*;

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
pub(super) struct Committed {
    pub(super) new_key: NewKey,
    /// Audit entries the record had no room for.
    pub(super) unqueued: Vec<AuditEntry>,
    /// The vault version the new one replaces as current.
    pub(super) replaced_vault_version: Option<String>,
}

pub(super) enum Claim {
    /// The record is ours; `took_over` a crashed rotation's expired claim.
    Claimed { record: Versioned<OrgRecord>, took_over: Option<String> },
    /// The same request was committed before: answer it again.
    Done { record: OrgRecord, done: IdempotentRotation },
}

#[tracing::instrument(name = "rotation.claim", level = "debug", skip_all)]
pub(super) async fn claim(
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
pub(super) enum Claiming {
    /// The record is ours (`took_over`: a crashed rotation's expired claim).
    Ours { took_over: Option<String> },
    /// The same request was committed before.
    Done(IdempotentRotation),
}

/// What a record shows of one rotation's own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
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
pub(super) fn landed(record: &OrgRecord, rotation_id: &str, new_key: Option<&str>) -> Landed {
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
pub(super) async fn replay(
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

pub(super) fn claimed_by(record: &OrgRecord, rotation_id: &str) -> bool {
    record.pending.as_ref().is_some_and(|p| p.rotation_id == rotation_id)
}

#[cfg(test)]
mod tests;
