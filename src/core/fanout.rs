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
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::accounts::{placed_orgs, MemberRole};
use super::domain::OrgId;
use super::ports::{PortError, Registry};
use super::rotation::Ports;
use super::sweep::{sweep_orgs, Summary, SweepRequest, SweepSettings};

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
}

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
}

/// The sweep state of the fan-out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FanoutState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fully_checked_on: Option<NaiveDate>,
}

const FANOUT: &str = "fanout.json";

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
/// each account's orgs into slices of at most `size`, in id order. Every
/// enrolled org is in exactly one slice; a marker without a record is in none.
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
    let mut slices = Vec::new();
    for (account, mut members) in groups {
        members.sort();
        for chunk in members.chunks(size.max(1)) {
            slices.push((account.clone(), chunk.to_vec()));
        }
    }
    slices
}

/// Dispatches the run of the scheduled event at `now`: lists the orgs,
/// slices them, writes the manifest, queues one message per slice.
pub async fn dispatch(
    registry: &dyn Registry,
    queue: &dyn SliceQueue,
    members: &[MemberRole],
    slice_size: usize,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Manifest, PortError> {
    let started = std::time::Instant::now();
    let orgs = registry.list_orgs().await?;
    let mut placed = BTreeMap::new();
    for member in members {
        placed.insert(member.account_id.clone(), placed_orgs(registry, &member.account_id).await?);
    }
    let mut state: FanoutState = match registry.get_state(FANOUT).await? {
        Some(text) => serde_json::from_str(&text).unwrap_or_default(),
        None => FanoutState::default(),
    };
    // The day's full check is done once a run that made it finished every slice.
    if let Some(latest) = state.latest_run.clone() {
        if let Some(status) = run_status(registry, Some(&latest)).await? {
            let m = &status.manifest;
            if m.full_check && !m.dry_run && status.finished() {
                state.fully_checked_on = Some(m.evaluated_at.date_naive());
            }
        }
    }
    let full_check = state.fully_checked_on != Some(now.date_naive());
    let run = run_id(now, dry_run);
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
    let req = SweepRequest { now: slice.evaluated_at, dry_run: slice.dry_run, deadline, margin };
    let part = sweep_orgs(ports, settings, &req, &slice.orgs[from..], slice.full_check, |_, _| {}).await;
    result.complete = part.complete;
    result.stopped_after = if part.complete { None } else { part.stopped_after.clone().or(result.stopped_after) };
    result.error = None;
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
            let state: FanoutState = match registry.get_state(FANOUT).await? {
                Some(text) => serde_json::from_str(&text).unwrap_or_default(),
                None => return Ok(None),
            };
            let Some(latest) = state.latest_run else { return Ok(None) };
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
    use super::*;

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
