//! The one way a stored document is changed: read, decide, write if unchanged.
//!
//! Every writer of an org record (the sweep's actions, the policy, the
//! operator's key-state commands, the rotation's release of a claim) and of the
//! placement counts goes through [`update`]. It owns the retry policy and
//! answers the question every writer has after a failed conditional write:
//! *did my write land (its answer was lost), or did another actor move?*
//!
//! - Each write carries a fresh write id in the document itself. After a lost
//!   race (a 412: the SDK may have retried a write whose first answer was
//!   lost, and lost to it) or an error without an answer, the document is read
//!   again: if it carries this write's id, the write landed ([`Updated::Written`]);
//!   otherwise another actor moved, and the caller's decision is made again on
//!   what is there now.
//! - The decision is a plain function of the fresh document; it says whether to
//!   write ([`Decision::Write`]) or that nothing is to be done
//!   ([`Decision::Keep`]), and what the caller keeps of it. A decision made on
//!   an older read never acts: it is always made again on the fresh one.
//! - Lost races are retried [`ATTEMPTS`] times, with a short, growing,
//!   jittered wait, so that a crowd of writers (enrollments at once on the
//!   placement counts) spreads out; past that the caller gets
//!   [`UpdateError::Contended`].

use async_trait::async_trait;

use super::domain::{OrgId, OrgRecord};
use super::ports::{PortError, Registry, Versioned};

/// How many times a lost compare-and-swap is decided again before giving up.
pub const ATTEMPTS: u32 = 30;

/// The id of the write that stored a document, kept in the document (see the
/// module documentation). It is bookkeeping, not content: two documents are
/// equal whatever their write ids.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct WriteId(pub Option<String>);

impl WriteId {
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl PartialEq for WriteId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for WriteId {}

/// What a decision made of the document it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Write the document as the decision changed it.
    Write(T),
    /// Nothing to change: the document stays as read.
    Keep(T),
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated<V, T> {
    /// The change was written (possibly by an attempt whose answer was lost):
    /// the document as written and its new version.
    Written { value: V, version: String, out: T },
    /// The decision, made on the freshest read, found nothing to change: that
    /// read and its version.
    Unchanged { value: V, version: Option<String>, out: T },
    /// There is no such document.
    Missing,
}

impl<V, T> Updated<V, T> {
    /// The document as written, if this update wrote it.
    pub fn written(self) -> Option<Versioned<V>> {
        match self {
            Self::Written { value, version, .. } => Some(Versioned { value, etag: version }),
            _ => None,
        }
    }
}

/// Why an update did not finish.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The decision refused (a caller's own error).
    #[error(transparent)]
    Refused(E),
    #[error(transparent)]
    Port(PortError),
    /// Other actors kept writing first, [`ATTEMPTS`] times.
    #[error("the document kept changing under other writers")]
    Contended,
}

impl<E> From<PortError> for UpdateError<E> {
    fn from(e: PortError) -> Self {
        Self::Port(e)
    }
}

/// A stored document changed only by compare-and-swap.
#[async_trait]
pub trait Document: Send + Sync {
    type Value: Clone + Send + Sync;
    /// The document and its version; `None` when it does not exist. A store
    /// whose document starts out empty answers its empty value without a version.
    async fn read(&self) -> Result<Option<(Self::Value, Option<String>)>, PortError>;
    /// Writes `value` if the document is still at `version` (`None`: only if
    /// it does not exist); [`PortError::Conflict`] when someone wrote first.
    async fn write(&self, value: &Self::Value, version: Option<&str>) -> Result<String, PortError>;
    /// The write id a value carries.
    fn write_id(value: &Self::Value) -> Option<&str>;
    fn set_write_id(value: &mut Self::Value, id: String);
}

/// Reads, decides, writes if unchanged; see the module documentation.
pub async fn update<D, T, E>(
    doc: &D,
    decide: impl FnMut(&mut D::Value) -> Result<Decision<T>, E>,
) -> Result<Updated<D::Value, T>, UpdateError<E>>
where
    D: Document + ?Sized,
{
    update_from(doc, None, decide).await
}

/// [`update`], deciding first on `read`, a read the caller has just made (one
/// request fewer); a lost race reads again, as always.
pub async fn update_from<D, T, E>(
    doc: &D,
    read: Option<(D::Value, Option<String>)>,
    mut decide: impl FnMut(&mut D::Value) -> Result<Decision<T>, E>,
) -> Result<Updated<D::Value, T>, UpdateError<E>>
where
    D: Document + ?Sized,
{
    let mut given = read;
    for attempt in 0..ATTEMPTS {
        let read = match given.take() {
            Some(read) => Some(read),
            None => doc.read().await?,
        };
        let Some((mut value, version)) = read else { return Ok(Updated::Missing) };
        let out = match decide(&mut value).map_err(UpdateError::Refused)? {
            Decision::Keep(out) => {
                return Ok(Updated::Unchanged { value, version, out });
            }
            Decision::Write(out) => out,
        };
        let write_id = uuid::Uuid::new_v4().simple().to_string();
        D::set_write_id(&mut value, write_id.clone());
        let failure = match doc.write(&value, version.as_deref()).await {
            Ok(version) => return Ok(Updated::Written { value, version, out }),
            Err(e) => e,
        };
        // No answer, or a lost race: did this write land after all?
        match doc.read().await {
            Ok(Some((fresh, Some(version)))) if D::write_id(&fresh) == Some(write_id.as_str()) => {
                return Ok(Updated::Written { value: fresh, version, out });
            }
            Ok(fresh) if failure == PortError::Conflict => {
                // Another actor moved: decide again, on this read.
                backoff(attempt).await;
                match fresh {
                    Some(fresh) if attempt == 0 => given = Some(fresh),
                    Some(_) => {} // after a wait, read again
                    None => return Ok(Updated::Missing),
                }
            }
            Ok(_) | Err(_) => return Err(UpdateError::Port(failure)),
        }
    }
    Err(UpdateError::Contended)
}

/// After the first lost race none; then a short, growing, jittered wait, so
/// that a crowd of writers spreads out.
async fn backoff(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let base = (2u64 << attempt.min(5)).min(60);
    let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(base)) as u64;
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
}

/// An org's record in the registry, as a [`Document`].
pub struct Record<'a> {
    pub registry: &'a dyn Registry,
    pub org: &'a OrgId,
}

#[async_trait]
impl Document for Record<'_> {
    type Value = OrgRecord;
    async fn read(&self) -> Result<Option<(OrgRecord, Option<String>)>, PortError> {
        Ok(self.registry.load(self.org).await?.map(|v| (v.value, Some(v.etag))))
    }
    async fn write(&self, value: &OrgRecord, version: Option<&str>) -> Result<String, PortError> {
        match version {
            Some(etag) => self.registry.update(value, etag).await,
            None => self.registry.create(value).await,
        }
    }
    fn write_id(value: &OrgRecord) -> Option<&str> {
        value.write_id.as_deref()
    }
    fn set_write_id(value: &mut OrgRecord, id: String) {
        value.write_id = WriteId(Some(id));
    }
}

/// [`update`] of an org's record.
pub async fn update_record<T, E>(
    registry: &dyn Registry,
    org: &OrgId,
    decide: impl FnMut(&mut OrgRecord) -> Result<Decision<T>, E>,
) -> Result<Updated<OrgRecord, T>, UpdateError<E>> {
    update(&Record { registry, org }, decide).await
}

/// [`update_record`], deciding first on `read` (see [`update_from`]).
pub async fn update_record_from<T, E>(
    registry: &dyn Registry,
    read: Versioned<OrgRecord>,
    decide: impl FnMut(&mut OrgRecord) -> Result<Decision<T>, E>,
) -> Result<Updated<OrgRecord, T>, UpdateError<E>> {
    let org = read.value.org_id.clone();
    update_from(&Record { registry, org: &org }, Some((read.value, Some(read.etag))), decide).await
}

/// [`update_record`] for a decision that cannot refuse: `change` answers
/// whether it changed the record. The record as written, or `None` when
/// nothing was to change (or the org is gone).
pub async fn change_record(
    registry: &dyn Registry,
    org: &OrgId,
    mut change: impl FnMut(&mut OrgRecord) -> bool,
) -> Result<Option<Versioned<OrgRecord>>, UpdateError<std::convert::Infallible>> {
    let updated = update_record(registry, org, |r| {
        Ok::<_, std::convert::Infallible>(if change(r) { Decision::Write(()) } else { Decision::Keep(()) })
    })
    .await?;
    Ok(updated.written())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::core::memory::{FaultMode, MemoryWorld, Passthrough};

    fn org() -> OrgId {
        OrgId::parse("1234567").unwrap()
    }

    async fn world() -> MemoryWorld {
        let world = MemoryWorld::new();
        world.enroll(&org(), chrono::Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap()).await;
        world
    }

    /// Takes every write and loses its answer: the SDK's retry of it then
    /// finds the record changed (S3's 412).
    struct LosesAnswers<'a>(&'a dyn Registry);

    #[async_trait]
    impl Passthrough for LosesAnswers<'_> {
        fn inner(&self) -> &dyn Registry {
            self.0
        }
        async fn on_update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
            self.0.update(record, etag).await?;
            Err(PortError::Conflict)
        }
    }

    #[tokio::test]
    async fn a_write_whose_answer_was_lost_counts_as_written_and_is_not_decided_again() {
        // Given a registry that takes the write and loses its answer
        let world = world().await;
        let registry = LosesAnswers(&world.registry);
        let mut decided = 0;
        // When the policy is changed once
        let updated = update_record(&registry, &org(), |r| {
            decided += 1;
            r.policy.automatic = true;
            Ok::<_, ()>(Decision::Write("enabled"))
        })
        .await
        .unwrap();
        // Then the update reports the write it made, decided once, and the record holds it
        assert!(matches!(updated, Updated::Written { out: "enabled", .. }), "{updated:?}");
        assert_eq!(decided, 1);
        assert!(world.registry.get(&org()).unwrap().policy.automatic);
    }

    #[tokio::test]
    async fn another_actors_write_makes_the_decision_again_on_the_fresh_record() {
        let world = world().await;
        // Given another actor that writes between our read and our write
        let mut decided = 0;
        let updated = update_record(&world.registry, &org(), |r| {
            decided += 1;
            if decided == 1 {
                let mut theirs = world.registry.get(&org()).unwrap();
                theirs.policy.automatic = true;
                world.registry.put(theirs);
            }
            // The decision: enable only if nobody has
            if r.policy.automatic {
                Ok::<_, ()>(Decision::Keep(false))
            } else {
                r.policy.automatic = true;
                Ok(Decision::Write(true))
            }
        })
        .await
        .unwrap();
        // Then the second decision, on the fresh record, finds nothing to do
        assert_eq!(decided, 2);
        assert!(matches!(updated, Updated::Unchanged { out: false, .. }), "{updated:?}");
    }

    #[tokio::test]
    async fn a_failed_write_that_did_not_land_is_an_error_not_a_retry() {
        let world = world().await;
        // The write (the 2nd call) fails; the re-read shows it did not land
        world.faults.inject(2, FaultMode::Fail);
        let result = change_record(&world.registry, &org(), |r| {
            r.policy.automatic = true;
            true
        })
        .await;
        assert!(matches!(result, Err(UpdateError::Port(PortError::Unavailable { .. }))), "{result:?}");
        assert!(!world.registry.get(&org()).unwrap().policy.automatic);
    }

    #[tokio::test]
    async fn a_missing_record_is_reported_without_deciding() {
        let world = MemoryWorld::new();
        let updated =
            update_record(&world.registry, &org(), |_| -> Result<Decision<()>, ()> { panic!("nothing to decide on") })
                .await
                .unwrap();
        assert_eq!(updated, Updated::Missing);
    }
}
