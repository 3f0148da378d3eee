//! `sweep`: the scheduled evaluation run here, now or as of `--at`, with a
//! progress bar of the orgs evaluated on a terminal and the summary as JSON.

use chrono::{DateTime, Utc};
use clap::Args;

use super::{progress, Context};
use crate::core::sweep::{sweep_with_progress, SweepRequest};

#[derive(Debug, Args)]
pub(super) struct Sweep {
    /// Evaluate as of this time (RFC 3339), e.g. to see what a date far ahead would do.
    #[arg(long)]
    at: Option<DateTime<Utc>>,
    /// Only report what would be done.
    #[arg(long)]
    dry_run: bool,
}

pub(super) async fn sweep(ctx: &Context, Sweep { at, dry_run }: Sweep) -> Result<(), String> {
    let request =
        SweepRequest { now: at.unwrap_or(ctx.now), dry_run, deadline: None, margin: std::time::Duration::ZERO };
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
        return Err(format!("{} org(s) failed; see `failed` above", summary.failed.len()));
    }
    Ok(())
}
