//! The scheduled evaluation of every enrolled org ("the sweep"): repair of
//! interrupted rotations and of record/IAM/vault mismatches, due automatic
//! rotations, retirement of previous keys, the maximum key age, expiry
//! warnings, and the deletion of orgs scheduled for it.
//!
//! For each org, [`plan`] decides from the record, the IAM keys and the vault
//! what is due (a pure function); [`evaluate`] carries it out, each change a
//! conditional write on a freshly read record. Running it twice at the same
//! time changes nothing the second time.

mod actions;
mod cursor;
mod plan;
mod summary;

use super::domain::{DecisionTime, KeyState, OrgId};
use super::duration::Duration;
use super::ports::PortError;
use super::rotation::{Ports, RotationSettings};
use futures::StreamExt;
use std::time::Duration as StdDuration;
use tracing::warn;

use actions::*;
pub use cursor::FullCheckDay;
use cursor::*;
use plan::*;
pub use plan::{plan, Action};
use summary::*;
pub use summary::{OrgFailure, Summary, EXPIRING_SOON};

/// The knobs of the sweep (from the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSettings {
    pub rotation: RotationSettings,
    /// How long an automatically rotated key's predecessor stays active.
    pub grace: Duration,
    /// Warn this long before the maximum age (each at most once per key).
    pub warnings: Vec<Duration>,
    /// Orgs evaluated at once.
    pub concurrency: usize,
    /// What to do with a previous key still in use when its grace period ends.
    pub retire_in_use: RetireInUse,
}

/// `RETIRE_IN_USE`: a previous key that signed a request after the rotation
/// that replaced it (a consumer has not switched) is always reported; with
/// `Defer`, its retirement also waits one more grace period, never past the
/// key's own maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetireInUse {
    #[default]
    Report,
    Defer,
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// The scheduled event's time: every decision is made at it.
    pub now: DecisionTime,
    pub dry_run: bool,
    /// Start no new org once less than `margin` is left before it.
    pub deadline: Option<tokio::time::Instant>,
    pub margin: StdDuration,
}

/// Runs the sweep over every enrolled org: one org's failure never stops the
/// others; at most `concurrency` orgs at once; the deadline is watched.
pub async fn sweep(ports: Ports<'_>, settings: &SweepSettings, req: &SweepRequest) -> Result<Summary, PortError> {
    sweep_with_progress(ports, settings, req, |_, _| {}).await
}

/// [`sweep`], calling `progress(evaluated, total)` once the orgs are listed
/// and after each org's evaluation (for a progress display).
pub async fn sweep_with_progress(
    ports: Ports<'_>,
    settings: &SweepSettings,
    req: &SweepRequest,
    progress: impl Fn(usize, usize),
) -> Result<Summary, PortError> {
    let started = std::time::Instant::now();
    let mut orgs = ports.registry.list_orgs().await?;
    let cursor: Option<Cursor> = match ports.registry.get_state(CURSOR).await? {
        Some(text) => serde_json::from_str(&text).ok(),
        None => None,
    };
    // Once a day (until a run completes it) every org's IAM keys and vault are
    // checked against its record; the other runs look further only where the
    // record itself shows work (a claim, something due): one read per idle org.
    let mut full_check_day = cursor.as_ref().map(|c| c.fully_checked_on).unwrap_or_default();
    let full_check = full_check_day.due(req.now.at());
    // Resume after where an interrupted run stopped, then wrap around.
    let resumed_after = cursor.and_then(|c| c.resume_after);
    if let Some(after) = &resumed_after {
        let split = orgs.partition_point(|o| o <= after);
        orgs.rotate_left(split);
    }
    let mut summary = sweep_orgs(ports, settings, req, &orgs, full_check, progress).await;
    summary.resumed_after = resumed_after;
    if !req.dry_run {
        if full_check && summary.complete {
            full_check_day.completed(req.now.at());
        }
        let cursor = Cursor { resume_after: summary.stopped_after.clone(), fully_checked_on: full_check_day };
        let text = serde_json::to_string(&cursor).unwrap_or_default();
        if let Err(e) = ports.registry.put_state(CURSOR, &text).await {
            warn!(error = %e, "could not store where the sweep stopped; the next run starts over");
        }
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Evaluates `orgs` in order, at most `settings.concurrency` at once, until
/// the deadline: the summary says how far it got (`stopped_after`, `None`
/// once every org was evaluated).
pub async fn sweep_orgs(
    ports: Ports<'_>,
    settings: &SweepSettings,
    req: &SweepRequest,
    orgs: &[OrgId],
    full_check: bool,
    progress: impl Fn(usize, usize),
) -> Summary {
    let started = std::time::Instant::now();
    let mut summary = Summary { evaluated_at: req.now.at(), dry_run: req.dry_run, full_check, ..Summary::default() };
    let deadline_reached =
        || req.deadline.is_some_and(|d| d.saturating_duration_since(tokio::time::Instant::now()) < req.margin);
    // Every free place takes the next org at once (an org waiting for its new
    // key to work holds up no other). Orgs start in list order and, once the
    // deadline is near, none starts any more: the orgs evaluated are always
    // the first ones of the list, and the next run resumes after the last.
    let mut results = futures::stream::iter(orgs.iter().enumerate())
        .map(|(position, org)| async move {
            if deadline_reached() {
                return (position, org, None);
            }
            (position, org, Some(evaluate(ports, settings, org, req, full_check).await))
        })
        .buffer_unordered(settings.concurrency.max(1));
    summary.complete = true;
    progress(0, orgs.len());
    let mut last: Option<usize> = None;
    while let Some((position, org, outcome)) = results.next().await {
        let Some(outcome) = outcome else {
            summary.complete = false;
            continue;
        };
        summary.orgs_seen += 1;
        progress(summary.orgs_seen, orgs.len());
        last = last.max(Some(position));
        if outcome.still_in_use {
            summary.still_in_use.push(org.clone());
        }
        if outcome.rotated {
            summary.rotated.push(org.clone());
        }
        if outcome.deleted_org {
            summary.deleted_orgs.push(org.clone());
        }
        if outcome.expired {
            summary.expired.push(org.clone());
        }
        summary.retired += outcome.retired;
        summary.deleted_keys += outcome.deleted_keys;
        summary.warned += outcome.warned;
        summary.repaired += outcome.repaired;
        summary.mismatches.extend(outcome.mismatches.into_iter().map(|reason| OrgFailure {
            org_id: org.clone(),
            reason,
            step: String::new(),
        }));
        summary.planned.extend(outcome.planned.into_iter().map(|a| (org.clone(), a)));
        if let Some((step, reason)) = outcome.failure {
            summary.failed.push(OrgFailure { org_id: org.clone(), reason, step: step.into() });
        }
        // Counted as the run left it: rotated, the key is new; expired, the org is Expired.
        let state = if outcome.expired { Some(KeyState::Expired) } else { outcome.state };
        if let Some(state) = state.filter(|_| !outcome.deleted_org) {
            *summary.orgs_by_state.entry(state.as_str().to_owned()).or_default() += 1;
        }
        if outcome.expiring_soon && !outcome.rotated && !outcome.expired {
            summary.keys_expiring_soon += 1;
        }
    }
    summary.stopped_after = last.map(|i| orgs[i].clone());
    // In list order, whatever order the orgs finished in.
    let rank: std::collections::HashMap<&OrgId, usize> = orgs.iter().enumerate().map(|(i, o)| (o, i)).collect();
    for list in [&mut summary.rotated, &mut summary.deleted_orgs, &mut summary.expired] {
        list.sort_by_key(|o| rank.get(o).copied());
    }
    summary.mismatches.sort_by_key(|f| rank.get(&f.org_id).copied());
    summary.failed.sort_by_key(|f| rank.get(&f.org_id).copied());
    summary.planned.sort_by_key(|(o, _)| rank.get(o).copied());
    drop(results);
    if summary.complete {
        summary.stopped_after = None;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary
}

/// Evaluates one org: plans, then (unless a dry run) carries out each action.
#[tracing::instrument(skip_all, fields(org = %org))]
pub(super) async fn evaluate(
    ports: Ports<'_>,
    settings: &SweepSettings,
    org: &OrgId,
    req: &SweepRequest,
    full_check: bool,
) -> OrgOutcome {
    let mut outcome = OrgOutcome::default();
    let (record, actions) = match plan_org(ports, settings, org, req.now.at(), full_check).await {
        Ok(Some(planned)) => planned,
        Ok(None) => return outcome, // deleted meanwhile
        Err(e) => {
            outcome.failure = Some(("read", e.to_string()));
            return outcome;
        }
    };
    outcome.state = Some(record.state);
    outcome.expiring_soon = record.state == KeyState::Enabled
        && record.current.as_ref().is_some_and(|c| {
            let expires_at = c.expiry(settings.rotation.max_key_age);
            req.now.at() < expires_at && expires_at <= req.now.at() + EXPIRING_SOON.to_chrono()
        });
    if req.dry_run {
        outcome.planned = actions;
        return outcome;
    }
    if left_for_later(&record) {
        if let Err(e) = housekeep(ports, org).await {
            warn!(error = %e, "could not finish what a rotation left for later");
            outcome.failure =
                Some(("housekeep", format!("copy a rotation's audit entries and confirm its deactivation: {e}")));
            return outcome;
        }
    }
    for action in actions {
        let result = execute(ports, settings, org, req.now, &action, &mut outcome).await;
        if result.is_ok() && action == Action::Rotate && outcome.rotated {
            // The sweep's own rotation is on nobody's path: finish it now, or in the next run.
            if let Err(e) = housekeep(ports, org).await {
                warn!(error = %e, "rotated; what the rotation left for later waits for the next run");
            }
        }
        if let Err(e) = result {
            warn!(error = %e, ?action, "failed");
            outcome.failure = Some((action_step(&action), format!("{}: {e}", action_name(&action))));
            break;
        }
    }
    outcome
}

#[cfg(test)]
mod tests;
