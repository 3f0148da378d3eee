//! The Lambda glue of the sweep: `scheduled-rotation` (the Scheduled Event
//! in; the sweep's summary out, or, fanned out, the run's manifest) and
//! `sweep-worker` (a slice from the queue in, SQS's partial batch answer
//! out). Summaries are returned, logged, and written as CloudWatch
//! embedded-metric lines.

use std::collections::BTreeMap;
use std::time::{Duration as StdDuration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn, Instrument};

use crate::core::accounts::MemberRole;
use crate::core::domain::{DecisionTime, Trigger};
use crate::core::fanout::{dispatch, sweep_slice, Manifest, Slice, SliceQueue, AFTER_DEADLINE_STOP};
use crate::core::ports::Registry;
use crate::core::rotation::Ports;
use crate::core::sweep::{sweep, Summary, SweepRequest, SweepSettings};
use crate::metrics::{rotation_line, Line};

/// The `detail` of the scheduled event: `{}` or `{"dryRun": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepDetail {
    #[serde(default)]
    pub dry_run: bool,
}

/// What `scheduled-rotation` answers: the sweep's summary (swept in
/// process) or, fanned out, the run's manifest; as JSON, either one as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RunAnswer {
    Swept(Box<Summary>),
    Dispatched(Manifest),
}

/// Runs the sweep for one scheduled event. "Now" is the event's `time`; the
/// run stops starting orgs `margin` before the invocation's deadline (or a
/// quarter of the time it has, if that is less: a short timeout still works).
pub async fn handle(
    event: LambdaEvent<EventBridgeEvent<SweepDetail>>,
    ports: Ports<'_>,
    settings: &SweepSettings,
    margin: StdDuration,
) -> Result<Summary, Diagnostic> {
    let (event, context) = event.into_parts();
    let now = DecisionTime::of_scheduled_event(event.time);
    let (deadline, margin) = deadline_of(&context, margin);
    let request = SweepRequest { now, dry_run: event.detail.dry_run, deadline, margin };
    let summary = sweep(ports, settings, &request).await.map_err(|e| Diagnostic {
        error_type: "SweepFailed".into(),
        error_message: format!("the sweep could not start: {e}"),
    })?;
    info!(
        evaluated_at = %summary.evaluated_at,
        complete = summary.complete,
        orgs_seen = summary.orgs_seen,
        rotated = summary.rotated.len(),
        retired = summary.retired,
        deleted_keys = summary.deleted_keys,
        expired = summary.expired.len(),
        warned = summary.warned,
        repaired = summary.repaired,
        failed = summary.failed.len(),
        summary = %serde_json::to_string(&summary).unwrap_or_default(),
        "sweep finished"
    );
    // The in-process run records the day's full check once it completes one: the heartbeat.
    let full_check_completed = summary.full_check && summary.complete && !summary.dry_run;
    let extra = [("FullCheckCompleted", usize::from(full_check_completed))];
    for line in sweep_metrics(&summary, Utc::now().timestamp_millis(), "scheduled-rotation", None, &extra) {
        println!("{line}");
    }
    Ok(summary)
}

/// When to start no more orgs: `margin` before the invocation's deadline, or
/// a quarter of the time it has if that is less (a short timeout still works).
fn deadline_of(context: &lambda_runtime::Context, margin: StdDuration) -> (Option<tokio::time::Instant>, StdDuration) {
    let remaining = context.deadline().duration_since(SystemTime::now()).unwrap_or_default();
    let deadline = (context.deadline > 0).then(|| tokio::time::Instant::now() + remaining);
    (deadline, margin.min(remaining / 4))
}

/// The fanned-out `scheduled-rotation`: slices the registry and queues them
/// for `sweep-worker`; answers with the run's manifest.
pub async fn handle_dispatch(
    event: LambdaEvent<EventBridgeEvent<SweepDetail>>,
    registry: &dyn Registry,
    queue: &dyn SliceQueue,
    members: &[MemberRole],
    slice_size: usize,
) -> Result<Manifest, Diagnostic> {
    let now = DecisionTime::of_scheduled_event(event.payload.time);
    let manifest =
        dispatch(registry, queue, members, slice_size, now, event.payload.detail.dry_run).await.map_err(|e| {
            Diagnostic {
                error_type: "DispatchFailed".into(),
                error_message: format!("the run could not be dispatched: {e}"),
            }
        })?;
    info!(
        run = %manifest.run_id,
        orgs = manifest.orgs,
        slices = manifest.slices.len(),
        full_check = manifest.full_check,
        dispatch_ms = manifest.dispatch_ms,
        full_check_completed = manifest.full_check_completed.as_deref().unwrap_or(""),
        "run dispatched"
    );
    println!("{}", dispatch_metrics(&manifest, Utc::now().timestamp_millis()));
    Ok(manifest)
}

/// `sweep-worker`: sweeps each slice of the batch; a slice not finished (its
/// account unreachable, the deadline first, a malformed message) is reported
/// as a failure, so SQS delivers it again (and after the queue's receive
/// limit moves it to the dead-letter queue). The others are deleted.
///
/// A slice stopped by the deadline comes back after
/// [`AFTER_DEADLINE_STOP`] (through `queue`), not after the queue's
/// visibility timeout: its rest is ready to be swept at once.
pub async fn handle_slices(
    event: LambdaEvent<SqsEvent>,
    ports: Ports<'_>,
    queue: Option<&dyn SliceQueue>,
    settings: &SweepSettings,
    margin: StdDuration,
) -> Result<SqsBatchResponse, Diagnostic> {
    let (event, context) = event.into_parts();
    let (deadline, margin) = deadline_of(&context, margin);
    let mut response = SqsBatchResponse::default();
    for message in event.records {
        let id = message.message_id.clone().unwrap_or_default();
        let slice: Slice = match message.body.as_deref().map(serde_json::from_str) {
            Some(Ok(slice)) => slice,
            _ => {
                error!(message_id = %id, "the message is not a slice of the sweep");
                response.add_failure(id);
                continue;
            }
        };
        // The slice's span: in the dispatcher's trace, which the invocation
        // continues (the message's `AWSTraceHeader`); it links Lambda's own
        // trace of the invocation, and the message's when the invocation's
        // batch held several traces (see `crate::telemetry`).
        let account = slice.account.as_deref().unwrap_or("home");
        let span = tracing::debug_span!("sweep.slice", run = %slice.run_id, slice = slice.index, account);
        crate::telemetry::link_trace(&span, message.attributes.get("AWSTraceHeader").map(String::as_str));
        crate::telemetry::link_trace(&span, context.xray_trace_id.as_deref());
        match sweep_slice(ports, settings, &slice, deadline, margin).instrument(span).await {
            Ok(result) => {
                let summary = &result.summary;
                info!(
                    run = %slice.run_id,
                    slice = slice.index,
                    account,
                    complete = result.complete,
                    deliveries = result.deliveries,
                    error = result.error.as_deref().unwrap_or(""),
                    orgs_seen = summary.orgs_seen,
                    rotated = summary.rotated.len(),
                    failed = summary.failed.len(),
                    "slice swept"
                );
                // This delivery's work only: a slice delivered again is not counted twice.
                if let Some(delivery) = &result.delivery {
                    let finished = usize::from(result.complete);
                    let extra = [("SlicesFinished", finished), ("SlicesUnfinished", 1 - finished)];
                    let now = Utc::now().timestamp_millis();
                    for line in sweep_metrics(delivery, now, "sweep-worker", Some(account), &extra) {
                        println!("{line}");
                    }
                }
                if !result.complete {
                    let stopped_by_deadline = result.error.is_none();
                    if let (true, Some(queue), Some(receipt)) =
                        (stopped_by_deadline, queue, message.receipt_handle.as_deref())
                    {
                        if let Err(e) = queue.deliver_again_after(receipt, AFTER_DEADLINE_STOP).await {
                            warn!(error = %e, "the stopped slice comes back after the queue's visibility timeout");
                        }
                    }
                    response.add_failure(id);
                }
            }
            Err(e) => {
                error!(run = %slice.run_id, slice = slice.index, error = %e, "the slice could not be swept");
                response.add_failure(id);
            }
        }
    }
    Ok(response)
}

/// The metrics of a sweep (an in-process run, or one delivery of a slice) as
/// CloudWatch embedded-metric lines (namespace `S3KeyRotation`):
/// - the summary's counts, `DurationMs` and `extra` (`FullCheckCompleted`,
///   `SlicesFinished`, …), without dimensions (what the alarms watch), by
///   `Function`, and for a slice by `Function` and `Account`;
/// - `Rotations` by `Trigger` (`schedule`);
/// - `Failed` by `Step` (what failed: `read`, `rotate`, …), a line a step;
/// - unless a dry run: the orgs by key state (`OrgsEnabled`, `OrgsExpired`,
///   `OrgsDisabled`, `OrgsPendingDeletion`) and `KeysExpiringSoon` (within
///   14 days), timestamped at the run's time, so that the slices of one run
///   add up in its hour whenever each is swept.
pub fn sweep_metrics(
    summary: &Summary,
    timestamp_ms: i64,
    function: &str,
    account: Option<&str>,
    extra: &[(&str, usize)],
) -> Vec<Line> {
    let mut counts: Vec<(&str, &str, u64)> = [
        ("OrgsSeen", summary.orgs_seen),
        ("Rotated", summary.rotated.len()),
        ("Retired", summary.retired),
        ("DeletedKeys", summary.deleted_keys),
        ("DeletedOrgs", summary.deleted_orgs.len()),
        ("Expired", summary.expired.len()),
        ("Warned", summary.warned),
        ("Repaired", summary.repaired),
        ("Failed", summary.failed.len()),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(name, n)| (name, "Count", n as u64))
    .collect();
    counts.push(("DurationMs", "Milliseconds", summary.duration_ms));
    let dimensions: &[&[&str]] =
        if account.is_some() { &[&[], &["Function"], &["Function", "Account"]] } else { &[&[], &["Function"]] };
    let mut line = Line::new(timestamp_ms)
        .metrics(dimensions, &counts)
        .field("Function", function)
        .field("DryRun", summary.dry_run)
        .field("Complete", summary.complete)
        .field("FullCheck", summary.full_check);
    if let Some(account) = account {
        line = line.field("Account", account);
    }
    let mut lines = vec![line];
    if !summary.dry_run {
        lines.push(rotation_line(Trigger::Schedule, summary.rotated.len(), timestamp_ms).field("Function", function));
    }
    let mut by_step: BTreeMap<&str, u64> = BTreeMap::new();
    for failure in &summary.failed {
        let step = if failure.step.is_empty() { "unknown" } else { failure.step.as_str() };
        *by_step.entry(step).or_default() += 1;
    }
    for (step, n) in by_step {
        lines.push(
            Line::new(timestamp_ms)
                .metrics(&[&["Step"]], &[("Failed", "Count", n)])
                .field("Step", step)
                .field("Function", function),
        );
    }
    if !summary.dry_run {
        let state = |name: &str| summary.orgs_by_state.get(name).copied().unwrap_or(0) as u64;
        lines.push(
            Line::new(summary.evaluated_at.timestamp_millis())
                .metrics(
                    &[&[]],
                    &[
                        ("OrgsEnabled", "Count", state("Enabled")),
                        ("OrgsExpired", "Count", state("Expired")),
                        ("OrgsDisabled", "Count", state("Disabled")),
                        ("OrgsPendingDeletion", "Count", state("PendingDeletion")),
                        ("KeysExpiringSoon", "Count", summary.keys_expiring_soon as u64),
                    ],
                )
                .field("Function", function),
        );
    }
    lines
}

/// The dispatcher's metrics: `Slices` queued, `OrgsListed`, `DispatchMs`,
/// and `FullCheckCompleted` (1 when this dispatch recorded a run's finished
/// full check: the heartbeat), without dimensions and by `Function`.
pub fn dispatch_metrics(manifest: &Manifest, timestamp_ms: i64) -> Line {
    Line::new(timestamp_ms)
        .metrics(
            &[&[], &["Function"]],
            &[
                ("Slices", "Count", manifest.slices.len() as u64),
                ("OrgsListed", "Count", manifest.orgs as u64),
                ("FullCheckCompleted", "Count", u64::from(manifest.full_check_completed.is_some())),
                ("DispatchMs", "Milliseconds", manifest.dispatch_ms),
            ],
        )
        .field("Function", "scheduled-rotation")
        .field("Run", manifest.run_id.as_str())
        .field("DryRun", manifest.dry_run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = include_str!("../events/scheduled-event.json");
    const DRY_RUN: &str = include_str!("../events/scheduled-event-dry-run.json");

    #[test]
    fn the_event_files_parse_serialize_and_parse_again() {
        for text in [EVENT, DRY_RUN] {
            let event: EventBridgeEvent<SweepDetail> = serde_json::from_str(text).unwrap();
            assert_eq!(event.detail_type, "Scheduled Event");
            assert_eq!(event.source, "aws.events");
            assert!(event.time.is_some());
            let again: EventBridgeEvent<SweepDetail> =
                serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
            assert_eq!(again.detail, event.detail);
            assert_eq!(again.time, event.time);
        }
        let dry: EventBridgeEvent<SweepDetail> = serde_json::from_str(DRY_RUN).unwrap();
        assert!(dry.detail.dry_run);
    }

    fn sqs_event(message: aws_lambda_events::sqs::SqsMessage) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records.push(message);
        event
    }

    /// A slice whose invocation ran out of time is asked back at once; one
    /// whose account cannot be reached waits for the queue's visibility
    /// timeout (a backoff), and both are reported as failed deliveries.
    #[tokio::test]
    async fn a_slice_stopped_by_its_deadline_comes_back_at_once() {
        use crate::core::domain::OrgId;
        use crate::core::memory::{MemoryQueue, MemoryWorld};
        let w = MemoryWorld::new();
        let at = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 0, 0, 0).unwrap();
        let mut orgs = Vec::new();
        for id in ["1", "2", "3"] {
            let org = OrgId::parse(id).unwrap();
            w.enroll(&org, at).await;
            orgs.push(org);
        }
        let settings = SweepSettings {
            rotation: crate::core::rotation::RotationSettings::default(),
            grace: crate::core::duration::Duration::from_hours(24),
            warnings: Vec::new(),
            concurrency: 1,
            retire_in_use: crate::core::sweep::RetireInUse::Report,
        };
        let slice = Slice {
            run_id: "r".into(),
            index: 0,
            account: None,
            orgs,
            evaluated_at: at,
            full_check: true,
            dry_run: false,
        };
        let message: aws_lambda_events::sqs::SqsMessage = serde_json::from_value(serde_json::json!({
            "messageId": "m-1",
            "receiptHandle": "receipt-1",
            "body": serde_json::to_string(&slice).unwrap(),
        }))
        .unwrap();
        let event = || {
            let mut context = lambda_runtime::Context::default();
            let deadline = SystemTime::now() + StdDuration::from_millis(1200);
            context.deadline = deadline.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
            LambdaEvent::new(sqs_event(message.clone()), context)
        };
        let queue = MemoryQueue::default();
        // Each call takes 200 ms: the first org's evaluation uses up the time.
        w.faults.set_delay(StdDuration::from_millis(200));
        let answer =
            handle_slices(event(), w.ports(), Some(&queue), &settings, StdDuration::from_secs(60)).await.unwrap();
        assert_eq!(answer.batch_item_failures.len(), 1, "delivered again");
        assert_eq!(*queue.redeliveries.lock().unwrap(), [("receipt-1".to_owned(), AFTER_DEADLINE_STOP)]);

        // An account that cannot be reached: no early redelivery.
        w.faults.set_delay(StdDuration::ZERO);
        let queue = MemoryQueue::default();
        let elsewhere = Slice { account: Some("111111111111".into()), index: 1, ..slice.clone() };
        w.keys.set_unreachable("111111111111", true);
        let mut message = message.clone();
        message.body = Some(serde_json::to_string(&elsewhere).unwrap());
        let event = LambdaEvent::new(sqs_event(message), lambda_runtime::Context::default());
        let answer = handle_slices(event, w.ports(), Some(&queue), &settings, StdDuration::from_secs(1)).await.unwrap();
        assert_eq!(answer.batch_item_failures.len(), 1);
        assert!(queue.redeliveries.lock().unwrap().is_empty(), "it waits for the visibility timeout");
    }

    use crate::core::domain::OrgId;
    use crate::core::sweep::OrgFailure;
    use crate::metrics::tests::assert_valid_emf;
    use serde_json::{json, Value};

    fn failure(org: &str, step: &str) -> OrgFailure {
        OrgFailure { org_id: OrgId::parse(org).unwrap(), reason: format!("{step}: refused"), step: step.into() }
    }

    /// A summary of a slice: 10 orgs, 2 rotated, 1 newly expired, 3 failed in two steps.
    fn summary() -> Summary {
        let org = |id: &str| OrgId::parse(id).unwrap();
        Summary {
            evaluated_at: chrono::DateTime::parse_from_rfc3339("2026-11-24T23:00:00Z").unwrap().with_timezone(&Utc),
            orgs_seen: 10,
            rotated: vec![org("1000001"), org("1000002")],
            expired: vec![org("1000003")],
            warned: 2,
            failed: vec![failure("1000004", "rotate"), failure("1000005", "read"), failure("1000006", "rotate")],
            orgs_by_state: [("Enabled".to_string(), 8), ("Expired".to_string(), 1), ("Disabled".to_string(), 1)]
                .into_iter()
                .collect(),
            keys_expiring_soon: 4,
            duration_ms: 1234,
            ..Summary::default()
        }
    }

    fn lines(summary: &Summary, account: Option<&str>, extra: &[(&str, usize)]) -> Vec<Value> {
        sweep_metrics(summary, 1_795_323_071_000, "sweep-worker", account, extra)
            .iter()
            .map(|line| assert_valid_emf(&line.to_string()))
            .collect()
    }

    fn dimensions(line: &Value) -> Value {
        line["_aws"]["CloudWatchMetrics"][0]["Dimensions"].clone()
    }

    #[test]
    fn the_counts_are_published_without_dimensions_by_function_and_by_account() {
        let lines = lines(&summary(), Some("111111111111"), &[("SlicesFinished", 1), ("SlicesUnfinished", 0)]);
        let counts = &lines[0];
        assert_eq!(dimensions(counts), json!([[], ["Function"], ["Function", "Account"]]));
        assert_eq!(
            (counts["Function"].as_str(), counts["Account"].as_str()),
            (Some("sweep-worker"), Some("111111111111"))
        );
        for (name, value) in [
            ("OrgsSeen", 10),
            ("Rotated", 2),
            ("Expired", 1),
            ("Warned", 2),
            ("Failed", 3),
            ("DurationMs", 1234),
            ("SlicesFinished", 1),
            ("SlicesUnfinished", 0),
        ] {
            assert_eq!(counts[name], value, "{name}");
        }
        assert_eq!(counts["_aws"]["Timestamp"], 1_795_323_071_000i64, "events count when they are reported");
        let in_process = sweep_metrics(&summary(), 0, "scheduled-rotation", None, &[("FullCheckCompleted", 1)]);
        let line = assert_valid_emf(&in_process[0].to_string());
        assert_eq!(dimensions(&line), json!([[], ["Function"]]));
        assert_eq!(line["FullCheckCompleted"], 1);
    }

    #[test]
    fn rotations_count_by_trigger_and_failures_by_step() {
        let lines = lines(&summary(), None, &[]);
        let rotations: Vec<&Value> = lines.iter().filter(|l| l.get("Rotations").is_some()).collect();
        assert_eq!(rotations.len(), 1);
        assert_eq!((rotations[0]["Trigger"].as_str(), rotations[0]["Rotations"].as_u64()), (Some("schedule"), Some(2)));
        let mut by_step: Vec<(String, u64)> = lines
            .iter()
            .filter(|l| dimensions(l) == json!([["Step"]]))
            .map(|l| (l["Step"].as_str().unwrap().to_owned(), l["Failed"].as_u64().unwrap()))
            .collect();
        by_step.sort();
        assert_eq!(by_step, [("read".to_string(), 1), ("rotate".to_string(), 2)]);
    }

    #[test]
    fn orgs_by_state_and_expiring_keys_count_at_the_runs_time_except_in_a_dry_run() {
        let summary = summary();
        let lines = lines(&summary, Some("111111111111"), &[]);
        let states: Vec<&Value> = lines.iter().filter(|l| l.get("OrgsEnabled").is_some()).collect();
        assert_eq!(states.len(), 1);
        let line = states[0];
        assert_eq!(
            line["_aws"]["Timestamp"],
            summary.evaluated_at.timestamp_millis(),
            "every slice of a run in its hour"
        );
        assert_eq!(dimensions(line), json!([[]]));
        for (name, value) in [
            ("OrgsEnabled", 8),
            ("OrgsExpired", 1),
            ("OrgsDisabled", 1),
            ("OrgsPendingDeletion", 0),
            ("KeysExpiringSoon", 4),
        ] {
            assert_eq!(line[name], value, "{name}");
        }
        let dry = Summary { dry_run: true, ..summary };
        let lines = self::lines(&dry, None, &[]);
        assert!(
            lines.iter().all(|l| l.get("OrgsEnabled").is_none() && l.get("Rotations").is_none()),
            "a dry run changes nothing and counts no org twice: {lines:?}"
        );
    }

    #[test]
    fn the_dispatch_reports_its_slices_and_the_heartbeat() {
        let mut manifest = Manifest {
            run_id: "20261124T230000Z".into(),
            evaluated_at: Utc::now(),
            dry_run: false,
            full_check: false,
            orgs: 2500,
            slices: Vec::new(),
            dispatch_ms: 800,
            full_check_completed: None,
        };
        let line = assert_valid_emf(&dispatch_metrics(&manifest, 0).to_string());
        assert_eq!((line["FullCheckCompleted"].as_u64(), line["OrgsListed"].as_u64()), (Some(0), Some(2500)));
        assert_eq!(dimensions(&line), json!([[], ["Function"]]), "the heartbeat alarm reads it without dimensions");
        manifest.full_check_completed = Some("20261124T000000Z".into());
        let line = assert_valid_emf(&dispatch_metrics(&manifest, 0).to_string());
        assert_eq!(line["FullCheckCompleted"], 1);
    }
}
