//! The EventBridge glue of `scheduled-rotation`: the Scheduled Event in, the
//! sweep's summary out (returned, logged, and as CloudWatch embedded-metric
//! lines).

use std::time::{Duration as StdDuration, SystemTime};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::Utc;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::core::domain::is_event_time;
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
    let now = match event.time {
        Some(time) if is_event_time(time) => time,
        Some(time) => {
            warn!(%time, "the event's time is none EventBridge sends; evaluating at the clock's");
            Utc::now()
        }
        None => Utc::now(),
    };
    let remaining = context.deadline().duration_since(SystemTime::now()).unwrap_or_default();
    let deadline = (context.deadline > 0).then(|| tokio::time::Instant::now() + remaining);
    let margin = margin.min(remaining / 4);
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
    println!("{}", metrics_line(&summary, Utc::now().timestamp_millis()));
    Ok(summary)
}

/// The summary's counts as one CloudWatch embedded-metric-format line.
pub fn metrics_line(summary: &Summary, timestamp_ms: i64) -> String {
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
                "Dimensions": [["Function"]],
                "Metrics": counts.iter().map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"}))
                    .chain(std::iter::once(serde_json::json!({"Name": "DurationMs", "Unit": "Milliseconds"})))
                    .collect::<Vec<_>>(),
            }],
        },
        "Function": "scheduled-rotation",
        "DurationMs": summary.duration_ms,
        "DryRun": summary.dry_run,
        "Complete": summary.complete,
    });
    for (name, count) in counts {
        line[name] = count.into();
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

    #[test]
    fn the_metrics_line_declares_every_count() {
        let summary = Summary { orgs_seen: 3, warned: 2, ..Summary::default() };
        let line: serde_json::Value = serde_json::from_str(&metrics_line(&summary, 1_795_323_071_000)).unwrap();
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
