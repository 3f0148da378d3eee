//! The sweep fanned out: a dispatcher splits the registry into slices (by
//! member account, then by id range) and queues one message per slice; a
//! worker sweeps one slice with the sweep of one org ([`sweep_orgs`]).
//!
//! What a run leaves in the registry's sweep state (`sweep/…`):
//! - `fanout.json`: the newest run and the day whose full check completed;
//! - `runs/{run}/manifest.json`: the run's slices, written before any is queued;
//! - `runs/{run}/slice-{n}.json`: a slice's result, written by its worker.
//!
//! A slice delivered twice does no harm: a finished slice is not swept again,
//! an unfinished one resumes after the last org its result names, and
//! sweeping an org twice changes nothing the second time (each change is a
//! conditional write on a freshly read record, made only when due).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::accounts::{marker_key, placed_orgs, recount, MemberRole};
use super::domain::{DecisionTime, OrgId};
use super::ports::{PortError, Registry};
use super::rotation::Ports;
use super::sweep::{sweep_orgs, FullCheckDay, Summary, SweepRequest, SweepSettings};

/// One queued message: the orgs of one account that one worker sweeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slice {
    pub run_id: String,
    pub index: usize,
    /// The member account of the slice's orgs (`None`: the home account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub orgs: Vec<OrgId>,
    /// The scheduled event's time: every slice decides at it.
    pub evaluated_at: DateTime<Utc>,
    pub full_check: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// The queue of the slices (SQS).
#[async_trait]
pub trait SliceQueue: Send + Sync {
    /// Queues every body (in batches as the queue takes them).
    async fn send(&self, bodies: &[String]) -> Result<(), PortError>;
    /// Lets the received message `receipt_handle` be delivered again after
    /// `after` instead of the queue's visibility timeout (SQS
    /// `ChangeMessageVisibility`): for a slice stopped by its deadline, whose
    /// rest is ready to be swept at once.
    async fn deliver_again_after(&self, receipt_handle: &str, after: StdDuration) -> Result<(), PortError>;
}

/// How soon a slice stopped by its invocation's deadline is delivered again.
pub const AFTER_DEADLINE_STOP: StdDuration = StdDuration::from_secs(10);

/// A slice as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceInfo {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub orgs: usize,
}

/// A dispatched run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub run_id: String,
    pub evaluated_at: DateTime<Utc>,
    pub dry_run: bool,
    pub full_check: bool,
    pub orgs: usize,
    pub slices: Vec<SliceInfo>,
    pub dispatch_ms: u64,
    /// The run whose full check this dispatch found finished and recorded as
    /// the day's (`fanout.json`), once per day: the sweep's heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_check_completed: Option<String>,
}

/// What a worker did with a slice (all its deliveries together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceResult {
    pub run_id: String,
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub orgs: usize,
    /// Every org of the slice was evaluated.
    pub complete: bool,
    /// Where an interrupted delivery stopped; the next one resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_after: Option<OrgId>,
    pub deliveries: u32,
    /// Why the last delivery could not sweep (the account's role, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub summary: Summary,
    /// What this delivery did (not stored): the worker's metrics count each
    /// org once, however often the slice is delivered. `None`: the slice was
    /// finished already, or its account could not be reached.
    #[serde(skip)]
    pub delivery: Option<Summary>,
}

/// The sweep state of the fan-out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FanoutState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest_run: Option<String>,
    #[serde(default, skip_serializing_if = "FullCheckDay::is_none")]
    fully_checked_on: FullCheckDay,
}

const FANOUT: &str = "fanout.json";

/// The fan-out's state (none yet, or unreadable: a fresh one).
async fn load_fanout(registry: &dyn Registry) -> Result<FanoutState, PortError> {
    Ok(registry.get_state(FANOUT).await?.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default())
}

fn manifest_name(run: &str) -> String {
    format!("runs/{run}/manifest.json")
}

fn slice_name(run: &str, index: usize) -> String {
    format!("runs/{run}/slice-{index:05}.json")
}

/// The run of a scheduled event: its time (a retried event is the same run).
pub fn run_id(evaluated_at: DateTime<Utc>, dry_run: bool) -> String {
    let id = evaluated_at.format("%Y%m%dT%H%M%SZ").to_string();
    if dry_run {
        format!("{id}-dry-run")
    } else {
        id
    }
}

/// Splits the enrolled `orgs` by account (`placed`: each member account's
/// orgs, from the placement markers; the rest are the home account's) and
/// each account's orgs into slices of at most `size`, in id order, the
/// accounts taking turns. Every enrolled org is in exactly one slice; a marker
/// without a record is in none.
pub fn plan_slices(
    orgs: &[OrgId],
    placed: &BTreeMap<String, Vec<OrgId>>,
    size: usize,
) -> Vec<(Option<String>, Vec<OrgId>)> {
    let enrolled: BTreeSet<&OrgId> = orgs.iter().collect();
    let mut seen: BTreeSet<&OrgId> = BTreeSet::new();
    let mut groups: Vec<(Option<String>, Vec<OrgId>)> = Vec::new();
    for (account, members) in placed {
        let mine: Vec<OrgId> = members.iter().filter(|o| enrolled.contains(o) && seen.insert(*o)).cloned().collect();
        groups.push((Some(account.clone()), mine));
    }
    let home: Vec<OrgId> = orgs.iter().filter(|o| !seen.contains(o)).cloned().collect();
    groups.insert(0, (None, home));
    let mut per_account: Vec<std::collections::VecDeque<(Option<String>, Vec<OrgId>)>> = Vec::new();
    for (account, mut members) in groups {
        members.sort();
        per_account.push(members.chunks(size.max(1)).map(|chunk| (account.clone(), chunk.to_vec())).collect());
    }
    // The accounts in turn (IAM throttles each account on its own): the
    // workers that start together sweep different accounts.
    let mut slices = Vec::new();
    while per_account.iter().any(|q| !q.is_empty()) {
        slices.extend(per_account.iter_mut().filter_map(|q| q.pop_front()));
    }
    slices
}

/// Dispatches the run of the scheduled event at `now`: lists the orgs,
/// slices them, writes the manifest, queues one message per slice (each
/// message carries the trace of the span `sweep.dispatch`, see `crate::aws::queue`).
#[tracing::instrument(name = "sweep.dispatch", level = "debug", skip_all, fields(dry_run = dry_run))]
pub async fn dispatch(
    registry: &dyn Registry,
    queue: &dyn SliceQueue,
    members: &[MemberRole],
    slice_size: usize,
    when: DecisionTime,
    dry_run: bool,
) -> Result<Manifest, PortError> {
    let now = when.at();
    let started = std::time::Instant::now();
    let orgs = registry.list_orgs().await?;
    let mut placed = BTreeMap::new();
    for member in members {
        placed.insert(member.account_id.clone(), placed_orgs(registry, &member.account_id).await?);
    }
    if !dry_run {
        settle_contested(registry, &mut placed).await?;
    }
    let mut state = load_fanout(registry).await?;
    // The day's full check is done once a run that made it finished every slice.
    let mut full_check_completed = None;
    if let Some(latest) = state.latest_run.clone() {
        if let Some(status) = run_status(registry, Some(&latest)).await? {
            let m = &status.manifest;
            if m.full_check && !m.dry_run && status.finished() && state.fully_checked_on.due(m.evaluated_at) {
                state.fully_checked_on.completed(m.evaluated_at);
                // Recorded only by a run that stores the state (not a dry run).
                full_check_completed = (!dry_run).then_some(latest);
            }
        }
    }
    let run = run_id(now, dry_run);
    // A dispatcher retried with the same event is the same run: it keeps the
    // run's own decision (its first dispatch may have finished the day's full
    // check since, which must not turn the run's slices into partial ones).
    let dispatched_before: Option<Manifest> = match registry.get_state(&manifest_name(&run)).await? {
        Some(text) => serde_json::from_str(&text).ok(),
        None => None,
    };
    let full_check = match &dispatched_before {
        Some(before) => before.full_check,
        None => state.fully_checked_on.due(now),
    };
    if full_check && !dry_run {
        // Once a day the counts are made the markers' number again.
        match recount(registry, members).await {
            Ok((before, after)) if before != after => {
                warn!(?before, ?after, "the placement counts had drifted; recounted from the markers");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not recount the placement counts; the next full run does"),
        }
    }
    let slices: Vec<Slice> = plan_slices(&orgs, &placed, slice_size)
        .into_iter()
        .enumerate()
        .map(|(index, (account, orgs))| Slice {
            run_id: run.clone(),
            index,
            account,
            orgs,
            evaluated_at: now,
            full_check,
            dry_run,
        })
        .collect();
    let mut manifest = Manifest {
        run_id: run.clone(),
        evaluated_at: now,
        dry_run,
        full_check,
        orgs: orgs.len(),
        slices: slices
            .iter()
            .map(|s| SliceInfo { index: s.index, account: s.account.clone(), orgs: s.orgs.len() })
            .collect(),
        dispatch_ms: 0,
        full_check_completed,
    };
    registry.put_state(&manifest_name(&run), &to_json(&manifest)).await?;
    let bodies: Vec<String> = slices.iter().map(to_json).collect();
    queue.send(&bodies).await?;
    if !dry_run {
        state.latest_run = Some(run.clone());
        registry.put_state(FANOUT, &to_json(&state)).await?;
    }
    manifest.dispatch_ms = started.elapsed().as_millis() as u64;
    registry.put_state(&manifest_name(&run), &to_json(&manifest)).await?;
    Ok(manifest)
}

/// An org with markers in more than one account (an enrollment that moved
/// on after a lost race, say) is sliced under the account its record names:
/// its other markers are stale and go. Only such orgs' records are read.
async fn settle_contested(registry: &dyn Registry, placed: &mut BTreeMap<String, Vec<OrgId>>) -> Result<(), PortError> {
    let mut accounts_of: BTreeMap<OrgId, Vec<String>> = BTreeMap::new();
    for (account, orgs) in placed.iter() {
        for org in orgs {
            accounts_of.entry(org.clone()).or_default().push(account.clone());
        }
    }
    for (org, accounts) in accounts_of.into_iter().filter(|(_, a)| a.len() > 1) {
        let Some(record) = registry.load(&org).await? else { continue };
        let home = record.value.account_id;
        for account in accounts.iter().filter(|a| Some(*a) != home.as_ref()) {
            warn!(%org, %account, record_names = ?home, "removing a stale placement marker");
            registry.delete_doc(&marker_key(account, &org)).await?;
            if let Some(orgs) = placed.get_mut(account) {
                orgs.retain(|o| o != &org);
            }
        }
    }
    Ok(())
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("state serializes")
}

/// Sweeps one slice (one delivery of its message). The result says whether
/// the slice is finished; when it is not (the account cannot be reached, or
/// the deadline came first), the message is to be delivered again.
pub async fn sweep_slice(
    ports: Ports<'_>,
    settings: &SweepSettings,
    slice: &Slice,
    deadline: Option<tokio::time::Instant>,
    margin: StdDuration,
) -> Result<SliceResult, PortError> {
    let name = slice_name(&slice.run_id, slice.index);
    let before: Option<SliceResult> = match ports.registry.get_state(&name).await? {
        Some(text) => serde_json::from_str(&text).ok(),
        None => None,
    };
    if let Some(done) = before.as_ref().filter(|r| r.complete) {
        return Ok(done.clone());
    }
    let mut result = before.unwrap_or_else(|| SliceResult {
        run_id: slice.run_id.clone(),
        index: slice.index,
        account: slice.account.clone(),
        orgs: slice.orgs.len(),
        summary: Summary { evaluated_at: slice.evaluated_at, dry_run: slice.dry_run, ..Summary::default() },
        ..SliceResult::default()
    });
    result.deliveries += 1;
    // One account's role refused fails its slices, and only those.
    if let Err(e) = ports.keys.check_account(slice.account.as_deref()).await {
        result.error = Some(e.to_string());
        ports.registry.put_state(&name, &to_json(&result)).await?;
        return Ok(result);
    }
    let from = match &result.stopped_after {
        Some(after) => slice.orgs.partition_point(|o| o <= after),
        None => 0,
    };
    let req =
        SweepRequest { now: DecisionTime::of_slice(slice.evaluated_at), dry_run: slice.dry_run, deadline, margin };
    let part = sweep_orgs(ports, settings, &req, &slice.orgs[from..], slice.full_check, |_, _| {}).await;
    result.complete = part.complete;
    result.stopped_after = if part.complete { None } else { part.stopped_after.clone().or(result.stopped_after) };
    result.error = None;
    result.delivery = Some(part.clone());
    result.summary.absorb(part);
    result.summary.complete = result.complete;
    result.summary.stopped_after = result.stopped_after.clone();
    ports.registry.put_state(&name, &to_json(&result)).await?;
    Ok(result)
}

/// A run as the operator reads it: the manifest and every slice's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    pub manifest: Manifest,
    /// The results of the slices a worker has taken (any delivery).
    pub results: Vec<SliceResult>,
    /// The slices no worker has reported on yet.
    pub waiting: Vec<usize>,
    /// Every finished slice's summary added up.
    pub total: Summary,
}

impl RunStatus {
    /// Every slice finished.
    pub fn finished(&self) -> bool {
        self.waiting.is_empty() && self.results.iter().all(|r| r.complete)
    }

    /// The slices that failed their last delivery, with why.
    pub fn failing(&self) -> impl Iterator<Item = &SliceResult> {
        self.results.iter().filter(|r| !r.complete && r.error.is_some())
    }
}

/// The run `run` (`None`: the newest), or `None` if there is none.
pub async fn run_status(registry: &dyn Registry, run: Option<&str>) -> Result<Option<RunStatus>, PortError> {
    let run = match run {
        Some(run) => run.to_owned(),
        None => {
            let Some(latest) = load_fanout(registry).await?.latest_run else { return Ok(None) };
            latest
        }
    };
    let Some(text) = registry.get_state(&manifest_name(&run)).await? else { return Ok(None) };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| PortError::Unavailable {
        service: "s3",
        operation: "GetObject",
        detail: format!("the manifest of run {run} is not valid: {e}"),
    })?;
    let names: Vec<(usize, String)> = manifest.slices.iter().map(|s| (s.index, slice_name(&run, s.index))).collect();
    let mut read = futures::stream::iter(names)
        .map(|(index, name)| async move { (index, registry.get_state(&name).await) })
        .buffered(16);
    let mut results = Vec::new();
    let mut waiting = Vec::new();
    while let Some((index, text)) = read.next().await {
        match text?.map(|t| serde_json::from_str::<SliceResult>(&t)) {
            Some(Ok(result)) => results.push(result),
            Some(Err(e)) => {
                warn!(index, error = %e, "a slice result is not valid; counted as waiting");
                waiting.push(index);
            }
            None => waiting.push(index),
        }
    }
    let mut total = Summary {
        evaluated_at: manifest.evaluated_at,
        dry_run: manifest.dry_run,
        full_check: manifest.full_check,
        ..Summary::default()
    };
    for result in &results {
        total.absorb(result.summary.clone());
    }
    total.complete = waiting.is_empty() && results.iter().all(|r| r.complete);
    Ok(Some(RunStatus { manifest, results, waiting, total }))
}

#[cfg(test)]
mod tests {

    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::core::domain::Trigger;
    use crate::core::duration::Duration;
    use crate::core::enrollment::{enroll, EnrollSettings};
    use crate::core::memory::{FaultMode, MemoryQueue, MemoryWorld};
    use crate::core::policy::{apply_policy, PolicyChange};
    use crate::core::rotation::{rotate, RotationRequest, RotationSettings};

    const ACCOUNTS: [&str; 3] = ["111111111111", "222222222222", "333333333333"];

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn members() -> Vec<MemberRole> {
        ACCOUNTS.iter().map(|a| MemberRole::parse(&format!("arn:aws:iam::{a}:role/member")).unwrap()).collect()
    }

    fn settings() -> SweepSettings {
        SweepSettings {
            rotation: RotationSettings::default(),
            grace: Duration::from_hours(24),
            warnings: Vec::new(),
            concurrency: 2,
            retire_in_use: crate::core::sweep::RetireInUse::Report,
        }
    }

    /// `n` orgs: two of every three in the member accounts (two places each
    /// would overflow, so four each), the rest enrolled before there were
    /// member accounts; each with a first key at `t0` and automatic rotation
    /// every 7 days.
    async fn world(n: usize) -> (MemoryWorld, Vec<OrgId>) {
        let w = MemoryWorld::new();
        let mut orgs = Vec::new();
        for i in 0..n {
            let org = OrgId::parse(&format!("org{i:03}")).unwrap();
            let settings = EnrollSettings {
                iam_user_path: "/managed-s3/".into(),
                managed_bucket: "logs".into(),
                prefix_template: "{orgId}/".into(),
                members: if i % 3 == 2 { Vec::new() } else { members() },
                orgs_per_account: 100,
            };
            enroll(&w.registry, &w.keys, &w.audit, &settings, &org, t0(), "test").await.unwrap();
            let mut record = w.registry.get(&org).unwrap();
            apply_policy(&mut record, PolicyChange::enable(Duration::from_days(7)).unwrap(), t0());
            w.registry.put(record);
            let req = RotationRequest {
                org: org.clone(),
                now: DecisionTime::from(t0()),
                trigger: Trigger::Operator,
                actor: "test".into(),
                rotation_id: format!("first-{i}"),
                request_id: None,
                grace: None,
            };
            rotate(w.ports(), &RotationSettings::default(), &req).await.unwrap();
            orgs.push(org);
        }
        (w, orgs)
    }

    fn versions(w: &MemoryWorld, orgs: &[OrgId]) -> Vec<u32> {
        orgs.iter().map(|o| w.registry.get(o).unwrap().current.unwrap().version).collect()
    }

    async fn work(w: &MemoryWorld, slices: &[Slice]) -> Vec<Result<SliceResult, PortError>> {
        let mut results = Vec::new();
        for slice in slices {
            results.push(sweep_slice(w.ports(), &settings(), slice, None, StdDuration::ZERO).await);
        }
        results
    }

    /// A run over 3 member accounts and the home account: every org is in
    /// one slice of its own account and rotates exactly once; the whole run
    /// adds up; every slice delivered again changes nothing.
    #[tokio::test]
    async fn every_org_is_swept_once_and_a_slice_delivered_twice_changes_nothing() {
        let (w, orgs) = world(20).await;
        let queue = MemoryQueue::default();
        let due = t0() + TimeDelta::days(7);
        let manifest = dispatch(&w.registry, &queue, &members(), 3, DecisionTime::from(due), false).await.unwrap();
        let slices = queue.take();
        assert_eq!(manifest.orgs, 20);
        assert_eq!(slices.len(), manifest.slices.len());
        for slice in &slices {
            for org in &slice.orgs {
                assert_eq!(w.registry.get(org).unwrap().account_id, slice.account, "{org} in its account's slice");
            }
        }
        assert!(work(&w, &slices).await.iter().all(|r| r.as_ref().unwrap().complete));
        assert_eq!(versions(&w, &orgs), vec![2; 20], "every org rotated once");
        let status = run_status(&w.registry, None).await.unwrap().unwrap();
        assert!(
            status.finished(),
            "{:?} {:?}",
            status.waiting,
            status.results.iter().map(|r| (r.index, r.complete)).collect::<Vec<_>>()
        );
        assert_eq!((status.total.orgs_seen, status.total.rotated.len()), (20, 20));

        let again = work(&w, &slices).await;
        assert_eq!(versions(&w, &orgs), vec![2; 20], "no second rotation");
        assert!(again.iter().all(|r| r.as_ref().unwrap().deliveries == 1), "a finished slice is not swept again");
        // Even a slice whose result was lost is harmless: nothing is due any more.
        for slice in &slices {
            w.registry.put_state(&slice_name(&slice.run_id, slice.index), "{}").await.unwrap();
        }
        let swept = work(&w, &slices).await;
        assert_eq!(versions(&w, &orgs), vec![2; 20]);
        assert!(swept.iter().all(|r| r.as_ref().unwrap().summary.rotated.is_empty()));
    }

    /// A worker that dies mid-slice (every call from the k-th on fails, as if
    /// the process were gone) leaves a state the redelivery finishes; the org
    /// whose rotation it cut is finished by the next run, once the claim's
    /// lease has run out (the protocol's takeover), with no key left over.
    #[tokio::test]
    async fn a_worker_crash_mid_slice_is_finished_by_the_redelivery_and_the_next_run() {
        for k in [3, 9, 17, 30] {
            let (w, orgs) = world(6).await;
            let queue = MemoryQueue::default();
            let due = t0() + TimeDelta::days(7);
            dispatch(&w.registry, &queue, &[], 10, DecisionTime::from(due), false).await.unwrap();
            let slices = queue.take();
            assert_eq!(slices.len(), 1);
            w.faults.inject(k, FaultMode::Crash);
            let crashed = work(&w, &slices).await;
            assert!(crashed[0].as_ref().map_or(true, |r| !r.complete || !r.summary.failed.is_empty()), "k={k}");
            w.faults.clear();
            let redelivered = work(&w, &slices).await;
            assert!(redelivered[0].as_ref().unwrap().complete, "k={k}");
            w.clock.advance(TimeDelta::minutes(10)); // past any claim's lease
            dispatch(&w.registry, &queue, &[], 10, DecisionTime::from(due + TimeDelta::minutes(10)), false)
                .await
                .unwrap();
            work(&w, &queue.take()).await;
            assert_eq!(versions(&w, &orgs), vec![2; 6], "k={k}: every org rotated exactly once");
            for org in &orgs {
                let record = w.registry.get(org).unwrap();
                assert!(record.pending.is_none(), "k={k}: {org} has no claim left");
                let keys = w.keys.keys_of(&org.user_name());
                assert!(keys.len() <= 2, "k={k}: {org} has {keys:?}");
                let current = record.current.unwrap().access_key_id;
                assert!(w.keys.works(&org.user_name(), &current), "k={k}: {org}'s current key works");
            }
        }
    }

    /// Lambda retries the dispatcher with the same event after the run's
    /// slices have finished its full check: the retry is the same run and
    /// keeps the run's full check, and nothing is swept twice.
    #[tokio::test]
    async fn a_dispatcher_retried_with_the_same_event_keeps_its_runs_full_check() {
        let (w, orgs) = world(4).await;
        let queue = MemoryQueue::default();
        let due = t0() + TimeDelta::days(7);
        let first = dispatch(&w.registry, &queue, &members(), 10, DecisionTime::from(due), false).await.unwrap();
        assert!(first.full_check);
        work(&w, &queue.take()).await;
        let retried = dispatch(&w.registry, &queue, &members(), 10, DecisionTime::from(due), false).await.unwrap();
        assert_eq!(retried.run_id, first.run_id);
        assert!(retried.full_check, "the same run: its full check stands");
        let again = work(&w, &queue.take()).await;
        assert!(again.iter().all(|r| r.as_ref().unwrap().summary.full_check), "{again:?}");
        assert_eq!(versions(&w, &orgs), vec![2; 4], "rotated once");
        let status = run_status(&w.registry, None).await.unwrap().unwrap();
        assert!(status.finished() && status.manifest.full_check);
    }

    /// An org with a stale marker in a second account (one that sorts first,
    /// and whose role is refused) is sliced under the account its record
    /// names and rotates; the stale marker goes, and the day's recount brings
    /// the counts back to the markers.
    #[tokio::test]
    async fn an_org_marked_in_two_accounts_is_swept_under_the_one_its_record_names() {
        let (w, orgs) = world(6).await;
        let org = orgs.iter().find(|o| w.registry.get(o).unwrap().account_id.as_deref() == Some(ACCOUNTS[1])).unwrap();
        w.registry.put_doc(&marker_key(ACCOUNTS[0], org), "", None).await.unwrap();
        let (mut counts, etag) = crate::core::accounts::load_placement(&w.registry).await.unwrap();
        *counts.accounts.get_mut(ACCOUNTS[0]).unwrap() += 1;
        w.registry.put_doc("placement.json", &to_json(&counts), etag.as_deref()).await.unwrap();
        w.keys.set_unreachable(ACCOUNTS[0], true);
        let queue = MemoryQueue::default();
        dispatch(&w.registry, &queue, &members(), 10, DecisionTime::from(t0() + TimeDelta::days(7)), false)
            .await
            .unwrap();
        let slices = queue.take();
        let holding: Vec<Option<&str>> =
            slices.iter().filter(|s| s.orgs.contains(org)).map(|s| s.account.as_deref()).collect();
        assert_eq!(holding, [Some(ACCOUNTS[1])], "one slice, of the record's account");
        work(&w, &slices).await;
        assert_eq!(w.registry.get(org).unwrap().current.unwrap().version, 2, "rotated");
        assert!(!placed_orgs(&w.registry, ACCOUNTS[0]).await.unwrap().contains(org), "the stale marker is gone");
        let (counts, _) = crate::core::accounts::load_placement(&w.registry).await.unwrap();
        for account in ACCOUNTS {
            assert_eq!(counts.count(account), placed_orgs(&w.registry, account).await.unwrap().len(), "{account}");
        }
    }

    /// One member account's role refused: its slices fail, visibly, and are
    /// left for another delivery; every other slice finishes.
    #[tokio::test]
    async fn an_account_that_cannot_be_reached_fails_its_slices_only() {
        let (w, orgs) = world(12).await;
        w.keys.set_unreachable(ACCOUNTS[1], true);
        let queue = MemoryQueue::default();
        let due = t0() + TimeDelta::days(7);
        dispatch(&w.registry, &queue, &members(), 2, DecisionTime::from(due), false).await.unwrap();
        let slices = queue.take();
        let results = work(&w, &slices).await;
        for (slice, result) in slices.iter().zip(&results) {
            let result = result.as_ref().unwrap();
            if slice.account.as_deref() == Some(ACCOUNTS[1]) {
                assert!(!result.complete);
                assert!(result.error.as_deref().unwrap().contains("222222222222"), "{result:?}");
            } else {
                assert!(result.complete && result.error.is_none(), "{result:?}");
            }
        }
        let status = run_status(&w.registry, None).await.unwrap().unwrap();
        assert!(!status.finished());
        let failing: Vec<Option<&str>> = status.failing().map(|r| r.account.as_deref()).collect();
        assert!(!failing.is_empty() && failing.iter().all(|a| *a == Some(ACCOUNTS[1])), "{failing:?}");
        let rotated = orgs.iter().filter(|o| w.registry.get(o).unwrap().current.unwrap().version == 2).count();
        let unreachable = orgs.iter().filter(|o| w.registry.get(o).unwrap().account_id.as_deref() == Some(ACCOUNTS[1]));
        assert_eq!(rotated, orgs.len() - unreachable.count());
        // Once the role can be assumed again, the next delivery finishes them.
        w.keys.set_unreachable(ACCOUNTS[1], false);
        work(&w, &slices).await;
        assert_eq!(versions(&w, &orgs), vec![2; 12]);
        assert!(run_status(&w.registry, None).await.unwrap().unwrap().finished());
    }

    /// The day's first run checks every org in full; once a run that did
    /// has finished every slice, the day's later runs do not.
    #[tokio::test]
    async fn the_full_check_runs_until_a_run_of_the_day_finished_it() {
        let (w, _) = world(4).await;
        let queue = MemoryQueue::default();
        let at = t0() + TimeDelta::hours(1);
        assert!(dispatch(&w.registry, &queue, &members(), 2, DecisionTime::from(at), false).await.unwrap().full_check);
        let first = queue.take();
        // Not finished yet: the next run checks in full again.
        assert!(
            dispatch(&w.registry, &queue, &members(), 2, DecisionTime::from(at + TimeDelta::hours(1)), false)
                .await
                .unwrap()
                .full_check
        );
        work(&w, &queue.take()).await;
        work(&w, &first).await;
        let later = dispatch(&w.registry, &queue, &members(), 2, DecisionTime::from(at + TimeDelta::hours(2)), false)
            .await
            .unwrap();
        assert!(!later.full_check, "the day's full check is done");
        work(&w, &queue.take()).await;
        let tomorrow = dispatch(&w.registry, &queue, &members(), 2, DecisionTime::from(at + TimeDelta::days(1)), false)
            .await
            .unwrap();
        assert!(tomorrow.full_check);
    }

    /// The heartbeat: the dispatch that finds a run's full check finished says
    /// so, once; not while a slice is left, not again the same day, not for a
    /// dry run, and again the next day.
    #[tokio::test]
    async fn a_finished_full_check_is_reported_once_by_the_dispatch_that_records_it() {
        let (w, _) = world(4).await;
        let queue = MemoryQueue::default();
        let at = t0() + TimeDelta::hours(1);
        let run = |hours: i64, dry_run: bool| {
            let (w, queue) = (&w, &queue);
            async move {
                dispatch(&w.registry, queue, &members(), 2, DecisionTime::from(at + TimeDelta::hours(hours)), dry_run)
                    .await
            }
        };
        let first = run(0, false).await.unwrap();
        assert_eq!(first.full_check_completed, None);
        let mut slices = queue.take();
        let last = slices.pop().unwrap();
        work(&w, &slices).await;
        assert_eq!(run(1, false).await.unwrap().full_check_completed, None, "a slice is left");
        let second = queue.take();
        work(&w, &[last]).await;
        work(&w, &second).await;
        // The latest run (the second, a full check too) is finished now.
        assert_eq!(run(2, true).await.unwrap().full_check_completed, None, "a dry run records nothing");
        queue.take();
        let recorded = run(3, false).await.unwrap();
        assert_eq!(recorded.full_check_completed.as_deref(), Some(run_id(at + TimeDelta::hours(1), false).as_str()));
        assert!(!recorded.full_check);
        work(&w, &queue.take()).await;
        assert_eq!(run(4, false).await.unwrap().full_check_completed, None, "once a day");
        work(&w, &queue.take()).await;
        let next_day = run(24, false).await.unwrap();
        assert!(next_day.full_check);
        work(&w, &queue.take()).await;
        assert!(run(25, false).await.unwrap().full_check_completed.is_some(), "the next day's");
    }

    /// A slice's delivery reports what it did alone; a finished slice
    /// delivered again reports nothing.
    #[tokio::test]
    async fn a_delivery_reports_only_its_own_work() {
        let (w, orgs) = world(6).await;
        let queue = MemoryQueue::default();
        dispatch(&w.registry, &queue, &[], 10, DecisionTime::from(t0() + TimeDelta::days(7)), false).await.unwrap();
        let slices = queue.take();
        let first = work(&w, &slices).await.remove(0).unwrap();
        let delivery = first.delivery.clone().expect("this delivery's part");
        assert_eq!((delivery.orgs_seen, delivery.rotated.len()), (orgs.len(), orgs.len()));
        let again = work(&w, &slices).await.remove(0).unwrap();
        assert!(again.complete && again.delivery.is_none(), "{again:?}");
        assert_eq!(again.summary.rotated.len(), orgs.len(), "the stored result still adds up");
    }

    fn org(i: usize) -> OrgId {
        OrgId::parse(&format!("org{i:05}")).unwrap()
    }

    /// 2,345 orgs, three member accounts holding some of them (and a marker
    /// of an org not enrolled): every enrolled org in exactly one slice, each
    /// slice of one account and at most the size.
    #[test]
    fn slicing_covers_every_org_once() {
        let orgs: Vec<OrgId> = (0..2345).map(org).collect();
        let mut placed: BTreeMap<String, Vec<OrgId>> = BTreeMap::new();
        for i in 0..2345 {
            match i % 5 {
                0 | 1 => placed.entry("111111111111".into()).or_default().push(org(i)),
                2 => placed.entry("222222222222".into()).or_default().push(org(i)),
                3 if i < 100 => placed.entry("333333333333".into()).or_default().push(org(i)),
                _ => {}
            }
        }
        placed.entry("333333333333".into()).or_default().push(org(99_999));
        let slices = plan_slices(&orgs, &placed, 100);
        let first: BTreeSet<&Option<String>> = slices[..4].iter().map(|(a, _)| a).collect();
        assert_eq!(first.len(), 4, "the accounts take turns: the first four slices are of four accounts");
        for size in [1, 7, 100, 1000, 5000] {
            let slices = plan_slices(&orgs, &placed, size);
            let mut all: Vec<&OrgId> = slices.iter().flat_map(|(_, o)| o).collect();
            assert_eq!(all.len(), orgs.len(), "size {size}: every org once");
            all.sort();
            all.dedup();
            assert_eq!(all.len(), orgs.len(), "size {size}: no org twice");
            for (account, members) in &slices {
                assert!(!members.is_empty() && members.len() <= size);
                for o in members {
                    let expected = placed.iter().find(|(_, m)| m.contains(o)).map(|(a, _)| a.clone());
                    assert_eq!(account, &expected, "{o} is swept with its account");
                }
            }
        }
    }

    #[test]
    fn the_run_of_an_event_is_its_time() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T23:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(run_id(at, false), "20261124T230000Z");
        assert_eq!(run_id(at, true), "20261124T230000Z-dry-run");
    }
}
