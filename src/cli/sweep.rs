//! `sweep`: the scheduled evaluation run here, now or as of `--at`, with a
//! progress bar of the orgs evaluated on a terminal and the summary as JSON;
//! `sweep --status`: how far a run the functions fanned out has got.

use chrono::{DateTime, Utc};
use clap::Args;

use super::{progress, Context};
use crate::core::domain::DecisionTime;
use crate::core::fanout;
use crate::core::sweep::{sweep_with_progress, SweepRequest};

#[derive(Debug, Args)]
pub(super) struct Sweep {
    /// Evaluate as of this time (RFC 3339), e.g. to see what a date far ahead would do.
    #[arg(long)]
    at: Option<DateTime<Utc>>,
    /// Only report what would be done.
    #[arg(long)]
    dry_run: bool,
    /// Show the newest run `scheduled-rotation` dispatched to the workers (or --run's): slices finished,
    /// waiting and failing, and the whole run's summary. Runs nothing.
    #[arg(long, conflicts_with_all = ["at", "dry_run"])]
    status: bool,
    /// With --status: this run (its id, e.g. 20261124T230000Z).
    #[arg(long, requires = "status")]
    run: Option<String>,
    /// With --status: the whole status as JSON.
    #[arg(long, requires = "status")]
    json: bool,
}

pub(super) async fn sweep(ctx: &Context, Sweep { at, dry_run, status, run, json }: Sweep) -> Result<(), String> {
    if status {
        return run_status(ctx, run.as_deref(), json).await;
    }
    let request = SweepRequest {
        now: at.map_or(ctx.now, |at| DecisionTime::of_operator(Some(at))),
        dry_run,
        deadline: None,
        margin: std::time::Duration::ZERO,
    };
    // The summary comes at the end; on a terminal a bar shows the orgs evaluated meanwhile.
    let bar = progress(0, if dry_run { "evaluating (dry run)" } else { "sweeping" });
    let result = sweep_with_progress(ctx.adapters.ports(), &ctx.config.sweep_settings(), &request, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await;
    bar.finish_and_clear();
    let summary = result.map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    if !summary.failed.is_empty() {
        return Err(format!("{} failed; see `failed` above", super::count(summary.failed.len(), "org", "orgs")));
    }
    Ok(())
}

async fn run_status(ctx: &Context, run: Option<&str>, json: bool) -> Result<(), String> {
    let status = fanout::run_status(&ctx.adapters.registry, run).await.map_err(|e| e.to_string())?;
    let Some(status) = status else {
        return Err(match run {
            Some(run) => format!("no run {run}"),
            None => "no fanned-out run yet (scheduled-rotation dispatches when SWEEP_QUEUE_URL is set)".into(),
        });
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
    } else {
        let m = &status.manifest;
        let done = status.results.iter().filter(|r| r.complete).count();
        let t = &status.total;
        println!(
            "run {}{}  evaluated at {}  {} in {}{}",
            m.run_id,
            if m.dry_run { " (dry run)" } else { "" },
            super::at(m.evaluated_at),
            super::count(m.orgs, "org", "orgs"),
            super::count(m.slices.len(), "slice", "slices"),
            if m.full_check { ", full check" } else { "" }
        );
        println!(
            "slices   {done} finished, {} waiting, {} failing, {} unfinished",
            status.waiting.len(),
            status.failing().count(),
            status.results.len() - done - status.failing().count()
        );
        println!(
            "orgs     {} evaluated: {} rotated, {} retired, {} expired, {} warned, {} repaired, {} failed",
            t.orgs_seen,
            t.rotated.len(),
            t.retired,
            t.expired.len(),
            t.warned,
            t.repaired,
            t.failed.len()
        );
        for r in status.failing() {
            println!(
                "failing  slice {} (account {}, {}, {}): {}",
                r.index,
                r.account.as_deref().unwrap_or("home"),
                super::count(r.orgs, "org", "orgs"),
                super::count(r.deliveries as usize, "delivery", "deliveries"),
                r.error.as_deref().unwrap_or("")
            );
        }
        for f in &t.failed {
            println!("failed   org {}: {}", f.org_id, f.reason);
        }
    }
    if status.failing().next().is_some() || !status.total.failed.is_empty() {
        return Err("the run has failures; see above".into());
    }
    Ok(())
}
