//! The Lambda glue of the sweep: `scheduled-rotation` (the Scheduled Event
//! in; the sweep's summary out, or, fanned out, the run's manifest) and
//! `sweep-worker` (a slice from the queue in, SQS's partial batch answer
//! out). Summaries are returned, logged, and written as CloudWatch
//! embedded-metric lines.

use std::time::{Duration as StdDuration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::core::accounts::MemberRole;
use crate::core::domain::is_event_time;
use crate::core::fanout::{dispatch, sweep_slice, Manifest, Slice, SliceQueue, AFTER_DEADLINE_STOP};
use crate::core::ports::Registry;
use crate::core::rotation::Ports;
use crate::core::sweep::{sweep, Summary, SweepRequest, SweepSettings};

/// The `detail` of the scheduled event: `{}` or `{"dryRun": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepDetail {
    #[serde(default)]
    pub dry_run: bool,
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
    let now = event_time(&event);
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
    println!("{}", metrics_line(&summary, Utc::now().timestamp_millis(), "scheduled-rotation", None));
    Ok(summary)
}

/// "Now" of a scheduled event: its `time` (a retried event decides as the
/// first delivery did), or the clock's when it has none EventBridge sends.
fn event_time(event: &EventBridgeEvent<SweepDetail>) -> chrono::DateTime<Utc> {
    match event.time {
        Some(time) if is_event_time(time) => time,
        Some(time) => {
            warn!(%time, "the event's time is none EventBridge sends; evaluating at the clock's");
            Utc::now()
        }
        None => Utc::now(),
    }
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
    let now = event_time(&event.payload);
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
        "run dispatched"
    );
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
        match sweep_slice(ports, settings, &slice, deadline, margin).await {
            Ok(result) => {
                let summary = &result.summary;
                let account = slice.account.as_deref().unwrap_or("home");
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
                println!("{}", metrics_line(summary, Utc::now().timestamp_millis(), "sweep-worker", Some(account)));
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

/// The summary's counts as one CloudWatch embedded-metric-format line, by
/// function (and, for a worker's slice, by account too).
pub fn metrics_line(summary: &Summary, timestamp_ms: i64, function: &str, account: Option<&str>) -> String {
    let counts: [(&str, usize); 9] = [
        ("OrgsSeen", summary.orgs_seen),
        ("Rotated", summary.rotated.len()),
        ("Retired", summary.retired),
        ("DeletedKeys", summary.deleted_keys),
        ("DeletedOrgs", summary.deleted_orgs.len()),
        ("Expired", summary.expired.len()),
        ("Warned", summary.warned),
        ("Repaired", summary.repaired),
        ("Failed", summary.failed.len()),
    ];
    let mut line = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "S3KeyRotation",
                "Dimensions": if account.is_some() { serde_json::json!([["Function"], ["Function", "Account"]]) } else { serde_json::json!([["Function"]]) },
                "Metrics": counts.iter().map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"}))
                    .chain(std::iter::once(serde_json::json!({"Name": "DurationMs", "Unit": "Milliseconds"})))
                    .collect::<Vec<_>>(),
            }],
        },
        "Function": function,
        "DurationMs": summary.duration_ms,
        "DryRun": summary.dry_run,
        "Complete": summary.complete,
    });
    for (name, count) in counts {
        line[name] = count.into();
    }
    if let Some(account) = account {
        line["Account"] = account.into();
    }
    line.to_string()
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
            retention: crate::core::duration::Duration::from_days(7),
            warnings: Vec::new(),
            concurrency: 1,
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

    #[test]
    fn the_metrics_line_declares_every_count() {
        let summary = Summary { orgs_seen: 3, warned: 2, ..Summary::default() };
        let line: serde_json::Value =
            serde_json::from_str(&metrics_line(&summary, 1_795_323_071_000, "scheduled-rotation", None)).unwrap();
        let declared: Vec<&str> = line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for name in &declared {
            assert!(line.get(*name).is_some(), "{name} has a value");
        }
        assert_eq!(line["OrgsSeen"], 3);
        assert_eq!(line["Warned"], 2);
        assert_eq!(line["_aws"]["Timestamp"], 1_795_323_071_000i64);
    }
}
