//! Member accounts: where the orgs' IAM users live once one AWS account's
//! 5,000 users are not enough. The home account keeps the registry, the
//! managed bucket and the functions; each member account has a role the
//! functions assume.
//!
//! Placement: an enrollment puts the org in the member account with the most
//! room, never above the cap. The counts are one small document of the
//! registry (`placement.json`), changed only by compare-and-swap, so that two
//! enrollments at once cannot both take an account's last place. Next to the
//! counts, an empty marker `placement/{account}/{org}` per placed org lets the
//! sweep's dispatcher list an account's orgs without reading every record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::domain::OrgId;
use async_trait::async_trait;

use super::ports::{PortError, Registry};
use super::update::{update, update_from, Decision, Document, UpdateError, Updated, WriteId, ATTEMPTS};

/// A member account and the role the functions assume in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRole {
    pub account_id: String,
    pub role_arn: String,
}

impl MemberRole {
    /// Parses `arn:{partition}:iam::{12 digits}:role/{path/}{name}`.
    pub fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (prefix, partition, service, region, account, resource) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let name = resource.strip_prefix("role/")?;
        let ok = prefix == "arn"
            && partition.starts_with("aws")
            && service == "iam"
            && region.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty()
            && !name.ends_with('/')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b));
        ok.then(|| Self { account_id: account.to_owned(), role_arn: arn.to_owned() })
    }
}

/// The placement counts: orgs placed per member account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default)]
    pub accounts: BTreeMap<String, usize>,
    /// The write that stored these counts (see `core::update`).
    #[serde(default, skip_serializing_if = "WriteId::is_none")]
    pub write_id: WriteId,
}

/// The registry document of the counts.
pub const PLACEMENT: &str = "placement.json";

/// The marker of an org placed in an account.
pub fn marker_key(account: &str, org: &OrgId) -> String {
    format!("placement/{account}/{org}")
}

/// The prefix of an account's markers.
pub fn markers_of(account: &str) -> String {
    format!("placement/{account}/")
}

impl Placement {
    pub fn count(&self, account: &str) -> usize {
        self.accounts.get(account).copied().unwrap_or(0)
    }

    /// The member account with the most room under `cap` (the first listed
    /// among equals), `None` when every one is full.
    pub fn choose<'a>(&self, members: &'a [MemberRole], cap: usize) -> Option<&'a MemberRole> {
        members.iter().filter(|m| self.count(&m.account_id) < cap).min_by_key(|m| self.count(&m.account_id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("every member account is full ({accounts} accounts of {cap} orgs each): add a member account (MEMBER_ACCOUNT_ROLES) or raise ORGS_PER_ACCOUNT")]
    Full { accounts: usize, cap: usize },
    #[error("the placement counts kept changing under concurrent enrollments; try again")]
    Contended,
    #[error("placement.json in the registry is not valid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The counts as stored, with their version (`None`: none stored yet).
pub async fn load_placement(registry: &dyn Registry) -> Result<(Placement, Option<String>), PlacementError> {
    match registry.get_doc(PLACEMENT).await? {
        None => Ok((Placement::default(), None)),
        Some(doc) => {
            let placement = serde_json::from_str(&doc.value).map_err(|e| PlacementError::Corrupt(e.to_string()))?;
            Ok((placement, Some(doc.etag)))
        }
    }
}

/// The placement counts as a [`Document`]: changed only through `core::update`.
struct Counts<'a>(&'a dyn Registry);

#[async_trait]
impl Document for Counts<'_> {
    type Value = Placement;
    async fn read(&self) -> Result<Option<(Placement, Option<String>)>, PortError> {
        match load_placement(self.0).await {
            Ok((placement, version)) => Ok(Some((placement, version))),
            Err(PlacementError::Port(e)) => Err(e),
            Err(e) => Err(PortError::Unavailable { service: "registry", operation: "read", detail: e.to_string() }),
        }
    }
    async fn write(&self, value: &Placement, version: Option<&str>) -> Result<String, PortError> {
        let text = serde_json::to_string_pretty(value).expect("counts serialize");
        self.0.put_doc(PLACEMENT, &text, version).await
    }
    fn write_id(value: &Placement) -> Option<&str> {
        value.write_id.as_deref()
    }
    fn set_write_id(value: &mut Placement, id: String) {
        value.write_id = WriteId(Some(id));
    }
}

impl From<UpdateError<PlacementError>> for PlacementError {
    fn from(e: UpdateError<PlacementError>) -> Self {
        match e {
            UpdateError::Refused(e) => e,
            UpdateError::Port(e) => Self::Port(e),
            UpdateError::Contended => Self::Contended,
        }
    }
}

/// Changes the counts with `change` (decided again on every lost race);
/// `change` returns an error to give up.
async fn change_counts<T>(
    registry: &dyn Registry,
    mut change: impl FnMut(&mut Placement) -> Result<T, PlacementError>,
) -> Result<T, PlacementError> {
    match update(&Counts(registry), |p| change(p).map(Decision::Write)).await? {
        Updated::Written { out, .. } | Updated::Unchanged { out, .. } => Ok(out),
        Updated::Missing => unreachable!("the counts start out empty, never missing"),
    }
}

/// Takes a place for `org` in the member account with the most room and
/// marks it there; returns that account.
///
/// The marker is written before the count, and a count is lowered before its
/// marker goes ([`release`]): whatever a [`recount`] reads between the two
/// writes, it can only count an org that is not (yet or any more) placed,
/// never miss one that is, so no account overshoots its cap.
pub async fn place(
    registry: &dyn Registry,
    members: &[MemberRole],
    cap: usize,
    org: &OrgId,
) -> Result<MemberRole, PlacementError> {
    let counts = Counts(registry);
    let mut marked: Option<String> = None;
    for _ in 0..ATTEMPTS {
        let (placement, version) = load_placement(registry).await?;
        let Some(chosen) = placement.choose(members, cap).cloned() else {
            if let Some(account) = &marked {
                if let Err(e) = registry.delete_doc(&marker_key(account, org)).await {
                    warn!(error = %e, %account, %org, "could not remove the marker of an org that found no room; the next recount counts it");
                }
            }
            return Err(PlacementError::Full { accounts: members.len(), cap });
        };
        if marked.as_deref() != Some(chosen.account_id.as_str()) {
            // A marker left in an account chosen by an earlier attempt goes.
            if let Some(account) = marked.take() {
                registry.delete_doc(&marker_key(&account, org)).await?;
            }
            match registry.put_doc(&marker_key(&chosen.account_id, org), "", None).await {
                Ok(_) | Err(PortError::Conflict) => marked = Some(chosen.account_id.clone()),
                Err(e) => return Err(e.into()),
            }
        }
        // The place is taken on the counts just read, and on every fresher read
        // while the chosen account is still the one with the most room.
        let taken = update_from(&counts, Some((placement, version)), |p| {
            if p.choose(members, cap).map(|m| &m.account_id) != Some(&chosen.account_id) {
                return Ok(Decision::Keep(false));
            }
            *p.accounts.entry(chosen.account_id.clone()).or_default() += 1;
            Ok::<_, PlacementError>(Decision::Write(true))
        })
        .await?;
        if matches!(taken, Updated::Written { .. }) {
            return Ok(chosen);
        }
        // Another account has more room now, or none has: choose again.
    }
    Err(PlacementError::Contended)
}

/// Counts `org` in `account`, where its user already lives (an adopted org):
/// no room is chosen and no cap applies. Marker first, as in [`place`].
pub async fn place_in(registry: &dyn Registry, account: &str, org: &OrgId) -> Result<(), PlacementError> {
    match registry.put_doc(&marker_key(account, org), "", None).await {
        Ok(_) => {}
        Err(PortError::Conflict) => return Ok(()), // counted by an earlier attempt
        Err(e) => return Err(e.into()),
    }
    change_counts(registry, |placement| {
        *placement.accounts.entry(account.to_owned()).or_default() += 1;
        Ok(())
    })
    .await
}

/// Gives back an org's place (its enrollment lost a race, or it was deleted):
/// the count first, then the marker, so that a [`recount`] in between counts
/// the org once more rather than once less. A failure in between leaves a
/// marker of an org that is not placed: the next [`recount`] counts it (too
/// high, which never lets an account overshoot its cap) and the dispatcher
/// passes over it (no record).
pub async fn release(registry: &dyn Registry, account: &str, org: &OrgId) {
    let released = change_counts(registry, |placement| {
        if let Some(n) = placement.accounts.get_mut(account) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    })
    .await;
    if let Err(e) = released {
        warn!(error = %e, %account, %org, "could not lower the account's placement count");
        return;
    }
    if let Err(e) = registry.delete_doc(&marker_key(account, org)).await {
        warn!(error = %e, %account, %org, "could not remove the org's placement marker");
    }
}

/// Recomputes every member account's count from its markers (counts only
/// ever drift upward: a crash between a marker's removal and the count's),
/// by compare-and-swap on the counts read before the markers are listed.
/// Returns the counts before and after.
pub async fn recount(
    registry: &dyn Registry,
    members: &[MemberRole],
) -> Result<(Placement, Placement), PlacementError> {
    let counts = Counts(registry);
    for _ in 0..ATTEMPTS {
        let (before, version) = load_placement(registry).await?;
        let mut after = Placement::default();
        for member in members {
            let placed = placed_orgs(registry, &member.account_id).await?;
            after.accounts.insert(member.account_id.clone(), placed.len());
        }
        // Counts of accounts no longer listed are kept: their orgs are still there.
        for (account, n) in &before.accounts {
            after.accounts.entry(account.clone()).or_insert(*n);
        }
        if after == before {
            return Ok((before, after));
        }
        // Written only on the counts read before the markers were listed: on
        // any other, the markers are listed again.
        let written = update_from(&counts, Some((before.clone(), version)), |p| {
            if p.accounts != before.accounts {
                return Ok::<_, PlacementError>(Decision::Keep(false));
            }
            p.accounts = after.accounts.clone();
            Ok(Decision::Write(true))
        })
        .await?;
        if let Updated::Written { .. } = written {
            return Ok((before, after));
        }
    }
    Err(PlacementError::Contended)
}

/// The orgs placed in `account`, from its markers, in id order.
pub async fn placed_orgs(registry: &dyn Registry, account: &str) -> Result<Vec<OrgId>, PortError> {
    let prefix = markers_of(account);
    Ok(registry
        .list_docs(&prefix)
        .await?
        .iter()
        .filter_map(|key| key.strip_prefix(&prefix).and_then(|id| OrgId::parse(id).ok()))
        .collect())
}

/// The statement of the managed bucket's policy that lets the org users of
/// every member account read it. One statement names all the accounts (a
/// root and a user-path ARN each: about 85 bytes an account, 8.6 KB at 100,
/// under S3's 20 KB for a whole bucket policy); the prefix each user may
/// read is its own identity policy's, so the bucket grants no more than the
/// users' own policies do. `aws:PrincipalArn` keeps it to users under the
/// path of the org users.
pub fn bucket_statement(bucket: &str, members: &[MemberRole], user_path: &str) -> serde_json::Value {
    let principals: Vec<String> =
        members.iter().map(|m| format!("arn:{}:iam::{}:root", partition(&m.role_arn), m.account_id)).collect();
    let users: Vec<String> = members
        .iter()
        .map(|m| format!("arn:{}:iam::{}:user{user_path}org-*", partition(&m.role_arn), m.account_id))
        .collect();
    let part = members.first().map(|m| partition(&m.role_arn)).unwrap_or("aws");
    serde_json::json!({
        "Sid": BUCKET_STATEMENT_SID,
        "Effect": "Allow",
        "Principal": { "AWS": principals },
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [format!("arn:{part}:s3:::{bucket}"), format!("arn:{part}:s3:::{bucket}/*")],
        "Condition": { "ArnLike": { "aws:PrincipalArn": users } }
    })
}

/// The `Sid` of [`bucket_statement`], by which it is found and replaced.
pub const BUCKET_STATEMENT_SID: &str = "S3KeyRotationMemberAccounts";

fn partition(arn: &str) -> &str {
    arn.split(':').nth(1).unwrap_or("aws")
}

/// `policy` (a bucket policy document, or `None` for a bucket without one)
/// with our statement replaced by `statement`, every other statement kept.
pub fn merge_bucket_policy(policy: Option<&str>, statement: serde_json::Value) -> Result<String, String> {
    let mut document: serde_json::Value = match policy {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("the bucket policy is not JSON: {e}"))?,
        None => serde_json::json!({ "Version": "2012-10-17", "Statement": [] }),
    };
    let statements = document
        .get_mut("Statement")
        .and_then(|s| s.as_array_mut())
        .ok_or("the bucket policy has no Statement list")?;
    statements.retain(|s| s.get("Sid").and_then(|v| v.as_str()) != Some(BUCKET_STATEMENT_SID));
    statements.push(statement);
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::memory::MemoryRegistry;

    fn members(n: usize) -> Vec<MemberRole> {
        (0..n)
            .map(|i| {
                MemberRole::parse(&format!("arn:aws:iam::{:012}:role/s3-key-rotation-member", 100_000_000_001 + i))
            })
            .map(Option::unwrap)
            .collect()
    }

    fn org(i: usize) -> OrgId {
        OrgId::parse(&format!("org{i:05}")).unwrap()
    }

    #[test]
    fn role_arns_are_parsed_strictly() {
        let role = MemberRole::parse("arn:aws:iam::123456789012:role/team/s3-key-rotation-member").unwrap();
        assert_eq!(role.account_id, "123456789012");
        for bad in [
            "",
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam:us-east-1:123456789012:role/x",
            "arn:aws:sts::123456789012:role/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a*",
        ] {
            assert!(MemberRole::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_account_with_the_most_room_is_chosen() {
        let m = members(3);
        let mut p = Placement::default();
        p.accounts.insert(m[0].account_id.clone(), 5);
        p.accounts.insert(m[1].account_id.clone(), 2);
        p.accounts.insert(m[2].account_id.clone(), 4);
        assert_eq!(p.choose(&m, 10).unwrap(), &m[1]);
        assert_eq!(p.choose(&m, 3).unwrap(), &m[1]);
        assert!(p.choose(&m, 2).is_none());
        assert_eq!(Placement::default().choose(&m, 1).unwrap(), &m[0], "ties: the first listed");
    }

    /// Counts left too high (a crash between a release's two writes) come
    /// back to the markers' number with a recount; a second recount changes nothing.
    #[tokio::test]
    async fn a_recount_brings_drifted_counts_back_to_the_markers() {
        let registry = MemoryRegistry::default();
        let m = members(2);
        for i in 0..5 {
            place(&registry, &m, 10, &org(i)).await.unwrap();
        }
        let (mut drifted, etag) = load_placement(&registry).await.unwrap();
        *drifted.accounts.get_mut(&m[0].account_id).unwrap() += 4;
        registry.put_doc(PLACEMENT, &serde_json::to_string(&drifted).unwrap(), etag.as_deref()).await.unwrap();
        let (before, after) = recount(&registry, &m).await.unwrap();
        assert_eq!(before, drifted);
        assert_eq!((after.count(&m[0].account_id), after.count(&m[1].account_id)), (3, 2));
        assert_eq!(load_placement(&registry).await.unwrap().0, after);
        let (again_before, again_after) = recount(&registry, &m).await.unwrap();
        assert_eq!(again_before, again_after);
    }

    /// Recounts running while orgs are placed and released never count an
    /// account below its markers, so the cap holds: 3 accounts of 6 places,
    /// 30 enrollments and 10 releases at once with a recount every few ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn recounts_during_enrollments_never_undercount() {
        let registry = Arc::new(MemoryRegistry::default());
        let m = Arc::new(members(3));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recounter = {
            let (registry, m, stop) = (registry.clone(), m.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    recount(registry.as_ref(), &m).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            })
        };
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (registry, m) = (registry.clone(), m.clone());
                tokio::spawn(async move {
                    let placed = place(registry.as_ref(), &m, 6, &org(i)).await;
                    if let (Ok(member), true) = (&placed, i % 3 == 0) {
                        release(registry.as_ref(), &member.account_id, &org(i)).await;
                    }
                    placed.is_ok()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        recounter.await.unwrap();
        for member in m.iter() {
            let markers = placed_orgs(registry.as_ref(), &member.account_id).await.unwrap().len();
            let count = load_placement(registry.as_ref()).await.unwrap().0.count(&member.account_id);
            assert!(markers <= 6, "{markers} orgs placed in an account of 6 places");
            assert!(count >= markers, "counted {count}, {markers} placed");
        }
        recount(registry.as_ref(), &m).await.unwrap();
        for member in m.iter() {
            let markers = placed_orgs(registry.as_ref(), &member.account_id).await.unwrap().len();
            assert_eq!(load_placement(registry.as_ref()).await.unwrap().0.count(&member.account_id), markers);
        }
    }

    /// 40 enrollments at once into 3 accounts of 10 places: exactly 30 are
    /// placed, 10 are told every account is full, and no count, nor any
    /// account's markers, is above the cap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_enrollments_never_overshoot_the_cap() {
        let registry = Arc::new(MemoryRegistry::default());
        let m = Arc::new(members(3));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (registry, m) = (registry.clone(), m.clone());
                tokio::spawn(async move { place(registry.as_ref(), &m, 10, &org(i)).await })
            })
            .collect();
        let mut placed = 0;
        let mut full = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => placed += 1,
                Err(PlacementError::Full { accounts: 3, cap: 10 }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((placed, full), (30, 10));
        let (counts, _) = load_placement(registry.as_ref()).await.unwrap();
        for member in m.iter() {
            assert_eq!(counts.count(&member.account_id), 10);
            assert_eq!(placed_orgs(registry.as_ref(), &member.account_id).await.unwrap().len(), 10);
        }
    }

    #[tokio::test]
    async fn a_released_place_is_taken_again() {
        let registry = MemoryRegistry::default();
        let m = members(1);
        place(&registry, &m, 1, &org(1)).await.unwrap();
        assert!(matches!(place(&registry, &m, 1, &org(2)).await, Err(PlacementError::Full { .. })));
        release(&registry, &m[0].account_id, &org(1)).await;
        assert!(placed_orgs(&registry, &m[0].account_id).await.unwrap().is_empty());
        place(&registry, &m, 1, &org(2)).await.unwrap();
        assert_eq!(placed_orgs(&registry, &m[0].account_id).await.unwrap(), [org(2)]);
    }

    #[test]
    fn the_bucket_statement_stays_small_at_a_hundred_accounts() {
        let statement = bucket_statement("provider-logs", &members(100), "/managed-s3/");
        let merged = merge_bucket_policy(None, statement).unwrap();
        assert!(merged.len() < 20 * 1024 / 2, "{} bytes", merged.len());
        let again =
            merge_bucket_policy(Some(&merged), bucket_statement("provider-logs", &members(3), "/managed-s3/")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(doc["Statement"].as_array().unwrap().len(), 1, "replaced, not added");
        assert_eq!(doc["Statement"][0]["Principal"]["AWS"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn merging_keeps_the_other_statements() {
        let existing = r#"{"Version":"2012-10-17","Statement":[{"Sid":"DenyInsecure","Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"*"}]}"#;
        let merged = merge_bucket_policy(Some(existing), bucket_statement("b", &members(2), "/p/")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&merged).unwrap();
        let sids: Vec<&str> = doc["Statement"].as_array().unwrap().iter().map(|s| s["Sid"].as_str().unwrap()).collect();
        assert_eq!(sids, ["DenyInsecure", BUCKET_STATEMENT_SID]);
        assert!(merge_bucket_policy(Some("{}"), bucket_statement("b", &members(1), "/p/")).is_err());
    }
}
