//! `enroll`: orgs one by one (`--org`) or from a CSV file (`--csv`, read and
//! checked whole by `orgs_csv`), a few at a time, with a progress bar on a
//! terminal.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use futures::StreamExt;

use super::orgs_csv::{read_adoptions, read_enrollments, AdoptionLimits};
use super::{parse_org, progress, Context, ACTOR};
use crate::aws::Adapters;
use crate::config::Config;
use crate::core::domain::OrgId;
use crate::core::enrollment::{check_reader_principal, enroll as enroll_org, grant_vault_reader, Adoption};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["orgs", "csv"])))]
pub(super) struct Enroll {
    /// The org id (repeat for several orgs).
    #[arg(long = "org", value_parser = parse_org)]
    orgs: Vec<OrgId>,
    /// A CSV file of orgs whose first line names its columns: orgId, and optionally
    /// readerPrincipal (with --adopt: orgId, and optionally iamUser, account,
    /// expiresAt). Every line is checked before anything is enrolled.
    #[arg(long, conflicts_with = "orgs")]
    csv: Option<PathBuf>,
    /// Let this AWS principal of the org (an IAM ARN) read the org's secret in the key
    /// vault (with --csv: the readerPrincipal column, one per org).
    #[arg(long, conflicts_with = "csv")]
    reader_principal: Option<String>,
    /// Orgs enrolled at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Adopt orgs whose IAM user already exists with live keys: register its keys
    /// (nothing is created or deleted).
    #[arg(long, conflicts_with = "reader_principal")]
    adopt: bool,
    /// With --adopt: print what would be registered; change nothing.
    #[arg(long, requires = "adopt")]
    dry_run: bool,
    /// With --adopt: let the adopted key expire at this later time (RFC 3339 or
    /// YYYY-MM-DD), at most adoption plus MAX_KEY_AGE (with --csv: the expiresAt column).
    #[arg(long, requires = "adopt", conflicts_with = "csv", value_parser = parse_expiry)]
    expires_at: Option<DateTime<Utc>>,
}

/// `--expires-at` and the CSV's `expiresAt`: RFC 3339, or a date (midnight UTC).
pub(super) fn parse_expiry(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| format!("'{text}' is not a time: expected RFC 3339 (2027-01-31T00:00:00Z) or YYYY-MM-DD"))
}

pub(super) async fn enroll(ctx: &Context, args: Enroll) -> Result<(), String> {
    let Enroll { orgs, csv, reader_principal, concurrency, adopt, dry_run, expires_at } = args;
    if adopt {
        let wanted = match csv {
            Some(path) => {
                let settings = ctx.config.enroll_settings().map_err(|e| e.to_string())?;
                let now = ctx.now.at();
                let limits = AdoptionLimits {
                    members: &settings.members,
                    now,
                    latest_expiry: now + ctx.config.rotation.max_key_age.to_chrono(),
                };
                read_adoptions(&path, &limits)?
            }
            None => orgs.into_iter().map(|org| Adoption { org, user_name: None, account: None, expires_at }).collect(),
        };
        return super::adoption::adopt_all(ctx, wanted, usize::from(concurrency), dry_run).await;
    }
    // Every principal is checked before anything is enrolled.
    if let Some(principal) = &reader_principal {
        check_reader_principal(principal).map_err(|e| e.to_string())?;
    }
    let wanted = match csv {
        Some(path) => read_enrollments(&path)?,
        None => orgs.into_iter().map(|org| (org, reader_principal.clone())).collect(),
    };
    enroll_all(&ctx.config, &ctx.adapters, wanted, usize::from(concurrency), ctx.now.at()).await
}

async fn enroll_all(
    config: &Config,
    adapters: &Adapters,
    wanted: Vec<(OrgId, Option<String>)>,
    concurrency: usize,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let settings = config.enroll_settings().map_err(|e| e.to_string())?;
    let total = wanted.len();
    let bar = progress(total, "enrolling");
    let verbose = total <= 20;
    let (mut created, mut existing, mut failed) = (0, 0, 0);
    let mut placed = std::collections::BTreeMap::new();
    let mut outcomes = futures::stream::iter(wanted)
        .map(|(org, principal)| {
            let settings = &settings;
            async move {
                let done = enroll_org(&adapters.registry, &adapters.keys, &adapters.audit, settings, &org, now, ACTOR)
                    .await
                    .map_err(|e| e.to_string());
                let granted = match (&done, &principal) {
                    (Ok(_), Some(p)) => {
                        Some(match grant_vault_reader(&adapters.vault, &adapters.audit, &org, p, now, ACTOR).await {
                            // The full ARN, printed with the grant: what the org's consumers name the secret by.
                            Ok(()) if verbose => Ok((p.clone(), adapters.vault.secret_arn(&org).await)),
                            Ok(()) => Ok((p.clone(), Ok(None))),
                            Err(e) => Err(e.to_string()),
                        })
                    }
                    _ => None,
                };
                (org, done, granted)
            }
        })
        .buffer_unordered(concurrency);
    while let Some((org, done, granted)) = outcomes.next().await {
        bar.inc(1);
        let mut line = None;
        match done {
            Ok(done) if done.created => {
                created += 1;
                let account = done.record.account_id.clone().unwrap_or_else(|| "home".into());
                let placed_in = done.record.account_id.as_ref().map(|a| format!(" in account {a}")).unwrap_or_default();
                line = verbose.then(|| {
                    format!(
                        "enrolled org {org}{placed_in}: IAM user {}{} reads s3://{}/{}",
                        settings.iam_user_path, done.record.iam_user, done.record.bucket, done.record.prefix
                    )
                });
                *placed.entry(account).or_insert(0usize) += 1;
            }
            Ok(_) => {
                existing += 1;
                line = verbose.then(|| format!("org {org} is enrolled already; nothing changed"));
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: org {org}: {e}"));
            }
        }
        if let Some(line) = line {
            bar.suspend(|| println!("{line}"));
        }
        match granted {
            Some(Ok((principal, arn))) if verbose => bar.suspend(|| {
                let secret = match arn {
                    Ok(Some(arn)) => arn,
                    Ok(None) => adapters.vault.secret_name(&org),
                    Err(e) => format!("{} (its ARN is unknown: {e})", adapters.vault.secret_name(&org)),
                };
                println!("  {principal} may read the secret {secret}");
            }),
            Some(Err(e)) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: org {org}: vault reader: {e}"));
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    if !verbose {
        println!(
            "{}: {created} enrolled, {existing} enrolled already, {failed} failed",
            super::count(total, "org", "orgs")
        );
        if !settings.members.is_empty() {
            let by_account: Vec<String> = placed.iter().map(|(a, n)| format!("{n} in {a}")).collect();
            println!("placed: {}", by_account.join(", "));
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} could not be enrolled (running the command again retries them)",
            super::count(total, "org", "orgs")
        ));
    }
    Ok(())
}
