//! Operator CLI of s3-key-rotation. Configured by the same environment
//! variables as the functions (REGISTRY_BUCKET, MANAGED_BUCKET, …, and the
//! SDK's own, such as AWS_ENDPOINT_URL), so it acts on whatever AWS the
//! environment selects — real AWS or the local stack — through the same core
//! as the functions.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::Config;
use s3_key_rotation::core::admin::{self, AdminPorts, StateChange};
use s3_key_rotation::core::domain::{KeyState, OrgId, OrgRecord, Trigger};
use s3_key_rotation::core::duration::{Duration, DurationError};
use s3_key_rotation::core::enrollment::{enroll, grant_vault_reader};
use s3_key_rotation::core::policy::{automatic_rotation, update_policy, PolicyChange};
use s3_key_rotation::core::ports::Registry;
use s3_key_rotation::core::rotation::{rotate, RotationRequest};
use s3_key_rotation::core::sweep::{sweep_with_progress, SweepRequest};
use secrecy::ExposeSecret;

const ACTOR: &str = "operator";

const EXAMPLES: &str = "\
Examples (the local stack: AWS_ENDPOINT_URL=http://127.0.0.1:PORT, see README):
  export REGISTRY_BUCKET=registry MANAGED_BUCKET=logs
  s3-key-rotation enroll --org 1234567 --org 7654321
  s3-key-rotation enroll --csv orgs.csv
  s3-key-rotation status
  s3-key-rotation status --org 1234567 --json
  s3-key-rotation rotate --org 1234567 --show-secret
  s3-key-rotation policy --org 1234567 --enable --interval 30d
  s3-key-rotation disable --org 1234567
  s3-key-rotation schedule-deletion --org 1234567 --days 7
  s3-key-rotation sweep --at 2027-02-21T00:00:00Z --dry-run
  s3-key-rotation audit --org 1234567

Exit codes: 0 done, 1 refused or failed (the message says why), 2 bad usage.";

#[derive(Debug, Parser)]
#[command(
    name = "s3-key-rotation",
    version,
    about = "Operate s3-key-rotation: enroll orgs, inspect, rotate, suspend and delete their bucket keys",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll orgs: IAM user, read-only policy on the org's prefix, registry record (idempotent).
    #[command(group(ArgGroup::new("source").required(true).args(["orgs", "csv"])))]
    Enroll {
        /// The org id (repeat for several orgs).
        #[arg(long = "org", value_parser = parse_org)]
        orgs: Vec<OrgId>,
        /// A CSV file of orgs: `orgId[,readerPrincipal]` per line, an optional header line.
        #[arg(long, conflicts_with = "orgs")]
        csv: Option<PathBuf>,
        /// Let this AWS principal of the org (an IAM ARN) read the org's secret in the key vault.
        #[arg(long)]
        reader_principal: Option<String>,
        /// Orgs enrolled at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
    },
    /// Show one org's key (state, versions, ages, policy, next rotation, expiry) or a table of all orgs.
    Status {
        /// One org; without it, every enrolled org.
        #[arg(long, value_parser = parse_org)]
        org: Option<OrgId>,
        /// JSON: the org's record, or one record per line for all orgs.
        #[arg(long)]
        json: bool,
    },
    /// Rotate an org's key now, as the operator.
    Rotate {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        /// Keep the previous key active this long (e.g. 24h, at most 7d).
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
        /// Print the new secret access key (it is shown nowhere else; the key vault keeps it).
        #[arg(long)]
        show_secret: bool,
    },
    /// Enable automatic rotation with an interval (7d to 365d), or disable it.
    #[command(group(ArgGroup::new("switch").required(true).args(["enable", "disable"])))]
    Policy {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long, requires = "interval")]
        enable: bool,
        #[arg(long, conflicts_with = "interval")]
        disable: bool,
        /// integer[unit], unit d, h, m or s: 30d, 720h, 604800s.
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
    },
    /// Suspend an org: its keys are deactivated (it loses access) and rotation stops.
    Disable {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Resume a disabled org: its current key is reactivated and rotation resumes.
    Enable {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Delete an org after 7 to 30 days: keys deactivated now; keys, user, secret and record deleted then.
    ScheduleDeletion {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long, value_parser = clap::value_parser!(u32).range(7..=30))]
        days: u32,
    },
    /// Cancel a scheduled deletion: the org comes back Disabled (then `enable` it).
    CancelDeletion {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Run the scheduled evaluation here, now or as of --at, and print its summary as JSON.
    Sweep {
        /// Evaluate as of this time (RFC 3339), e.g. to see what a date far ahead would do.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Only report what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// An org's audit trail, newest first.
    Audit {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON entry per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_org(text: &str) -> Result<OrgId, String> {
    OrgId::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse().map_err(|e: DurationError| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let clients = Clients::from_env(&config).await;
    let adapters = Adapters::new(&clients, &config);
    let now: DateTime<Utc> = Utc::now();
    let admin_ports = AdminPorts { registry: &adapters.registry, keys: &adapters.keys, audit: &adapters.audit };
    match cli.command {
        Command::Enroll { orgs, csv, reader_principal, concurrency } => {
            let wanted = match csv {
                Some(path) => read_csv(&path)?,
                None => orgs.into_iter().map(|org| (org, reader_principal.clone())).collect(),
            };
            enroll_all(&config, &adapters, wanted, usize::from(concurrency), now).await?;
        }
        Command::Status { org: Some(org), json } => {
            let record = load(&adapters, &org).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?);
            } else {
                print_status(&record, &config, now);
            }
        }
        Command::Status { org: None, json } => status_table(&adapters, &config, json, now).await?,
        Command::Rotate { org, grace, show_secret } => {
            let request = RotationRequest {
                org,
                now,
                trigger: Trigger::Operator,
                actor: ACTOR.into(),
                rotation_id: uuid::Uuid::new_v4().to_string(),
                request_id: None,
                grace,
            };
            let rotated =
                rotate(adapters.ports(), &config.rotation_settings(), &request).await.map_err(|e| e.to_string())?;
            println!(
                "rotated org {}: v{} {} (expires {})",
                rotated.org,
                rotated.version,
                rotated.access_key_id,
                at(rotated.expires_at)
            );
            if let Some(p) = &rotated.previous {
                let state = if p.active { format!("active until {}", at(p.retire_at)) } else { "inactive".into() };
                println!("previous key {} is {state}", p.access_key_id);
            }
            if show_secret {
                println!("secret access key: {}", rotated.secret_access_key.expose_secret());
            } else {
                println!(
                    "secret access key: not shown (--show-secret prints it; the key vault holds it as {})",
                    adapters.vault.secret_name(&rotated.org)
                );
            }
        }
        Command::Policy { org, enable, interval, .. } => {
            let change = match (enable, interval) {
                (true, Some(interval)) => PolicyChange::enable(interval).map_err(|e| e.to_string())?,
                _ => PolicyChange::Disable,
            };
            let record = update_policy(&adapters.registry, &adapters.audit, &org, change, now, ACTOR, None)
                .await
                .map_err(|e| match e {
                    s3_key_rotation::core::policy::PolicyError::KeyNotFound => not_found(&org),
                    e => e.to_string(),
                })?;
            println!("org {org}: {}", policy_line(&record));
        }
        Command::Disable { org } => {
            report(admin::disable(admin_ports, &org, now, ACTOR).await, "disabled")?;
        }
        Command::Enable { org } => {
            report(admin::enable(admin_ports, &org, now, config.max_key_age, ACTOR).await, "enabled")?;
        }
        Command::ScheduleDeletion { org, days } => {
            report(admin::schedule_deletion(admin_ports, &org, now, days, ACTOR).await, "scheduled for deletion")?;
        }
        Command::CancelDeletion { org } => {
            report(admin::cancel_deletion(admin_ports, &org, now, ACTOR).await, "no longer scheduled for deletion")?;
        }
        Command::Sweep { at, dry_run } => {
            let request =
                SweepRequest { now: at.unwrap_or(now), dry_run, deadline: None, margin: std::time::Duration::ZERO };
            // The summary comes at the end; on a terminal a bar shows the orgs evaluated meanwhile.
            let bar = progress(0, if dry_run { "evaluating (dry run)" } else { "sweeping" });
            let result = sweep_with_progress(adapters.ports(), &config.sweep_settings(), &request, |done, total| {
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
        }
        Command::Audit { org, limit, json } => {
            let entries = adapters.audit.newest_first(&org, limit).await.map_err(|e| e.to_string())?;
            if entries.is_empty() {
                load(&adapters, &org).await?;
                println!("org {org}: no audit entries");
            }
            for e in entries {
                if json {
                    println!("{}", serde_json::to_string(&e).map_err(|e| e.to_string())?);
                } else {
                    println!(
                        "{}  {:<18} {:<10} {}{}",
                        e.at.format("%Y-%m-%d %H:%M:%S"),
                        e.action,
                        e.actor,
                        e.key_ids.join(","),
                        e.detail.map(|d| format!("  ({d})")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// A time as the CLI prints it: to the second, UTC.
fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn not_found(org: &OrgId) -> String {
    format!("Not found IAM key info for orgId: {org}")
}

async fn load(adapters: &Adapters, org: &OrgId) -> Result<OrgRecord, String> {
    Registry::load(&adapters.registry, org)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value)
        .ok_or_else(|| not_found(org))
}

fn report(result: Result<StateChange, admin::AdminError>, done: &str) -> Result<(), String> {
    let change = result.map_err(|e| e.to_string())?;
    let org = &change.record.org_id;
    if change.changed {
        println!("org {org} {done}: state {}", change.record.state);
    } else {
        println!("org {org} was {} already; keys checked", change.record.state);
    }
    if !change.deactivated.is_empty() {
        println!("  deactivated {}", change.deactivated.join(", "));
    }
    if !change.activated.is_empty() {
        println!("  active {}", change.activated.join(", "));
    }
    if let Some(when) = change.record.deletion_at {
        println!("  deleted after {} (cancel-deletion stops it)", at(when));
    }
    if change.record.state == KeyState::Expired {
        println!("  its key is past the maximum age: a rotation restores access");
    }
    Ok(())
}

/// `orgId[,readerPrincipal]` per line; blank lines and a header line are skipped.
fn read_csv(path: &PathBuf) -> Result<Vec<(OrgId, Option<String>)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut orgs = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|e| format!("{}: {e}", path.display()))?;
        let first = row.get(0).unwrap_or("");
        if first.is_empty() || (i == 0 && first.eq_ignore_ascii_case("orgId")) {
            continue;
        }
        let line = row.position().map_or(i as u64 + 1, |p| p.line());
        let org = OrgId::parse(first).map_err(|e| format!("{} line {line}: {e}", path.display()))?;
        if row.len() > 2 {
            return Err(format!("{} line {line}: expected orgId[,readerPrincipal]", path.display()));
        }
        orgs.push((org, row.get(1).filter(|p| !p.is_empty()).map(str::to_owned)));
    }
    if orgs.is_empty() {
        return Err(format!("{}: no orgs in it", path.display()));
    }
    Ok(orgs)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} orgs, {{per_sec}}, eta {{eta}}"))
            .expect("a valid template"),
    );
    bar
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
    let mut outcomes = futures::stream::iter(wanted)
        .map(|(org, principal)| {
            let settings = &settings;
            async move {
                let done = enroll(&adapters.registry, &adapters.keys, &adapters.audit, settings, &org, now, ACTOR)
                    .await
                    .map_err(|e| e.to_string());
                let granted = match (&done, &principal) {
                    (Ok(_), Some(p)) => Some(
                        grant_vault_reader(&adapters.vault, &adapters.audit, &org, p, now, ACTOR)
                            .await
                            .map(|()| p.clone())
                            .map_err(|e| e.to_string()),
                    ),
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
                line = verbose.then(|| {
                    format!(
                        "enrolled org {org}: IAM user {}{} reads s3://{}/{}",
                        settings.iam_user_path, done.record.iam_user, done.record.bucket, done.record.prefix
                    )
                });
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
            Some(Ok(principal)) if verbose => bar.suspend(|| {
                println!("  {principal} may read the secret {}", adapters.vault.secret_name(&org));
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
        println!("{total} orgs: {created} enrolled, {existing} enrolled already, {failed} failed");
    }
    if failed > 0 {
        return Err(format!("{failed} of {total} orgs could not be enrolled (running the command again retries them)"));
    }
    Ok(())
}

fn days_hours(d: chrono::TimeDelta) -> String {
    if d.num_days() != 0 {
        format!("{}d{}h", d.num_days(), d.num_hours() % 24)
    } else {
        format!("{}h{}m", d.num_hours(), d.num_minutes() % 60)
    }
}

fn policy_line(record: &OrgRecord) -> String {
    match (&record.policy.interval, record.policy.automatic) {
        (Some(interval), true) => format!(
            "automatic rotation {} every {interval}, next {}",
            automatic_rotation(record),
            record.policy.next_rotation_at.map_or("-".into(), at)
        ),
        _ => "automatic rotation Disabled".into(),
    }
}

fn print_status(record: &OrgRecord, config: &Config, now: DateTime<Utc>) {
    println!(
        "org {}  state {}  user {}  reads s3://{}/{}",
        record.org_id, record.state, record.iam_user, record.bucket, record.prefix
    );
    match &record.current {
        Some(c) => {
            let expires = c.created_at + config.max_key_age.to_chrono();
            println!(
                "current  v{} {} created {} (age {}), expires {} (in {})",
                c.version,
                c.access_key_id,
                at(c.created_at),
                days_hours(now - c.created_at),
                at(expires),
                days_hours(expires - now)
            );
        }
        None => println!("current  none (the first rotation issues the first key)"),
    }
    if let Some(p) = &record.previous {
        let status = match p.deactivated_at {
            Some(when) => format!("inactive since {}", at(when)),
            None => format!("active until {}", at(p.retire_at)),
        };
        println!("previous v{} {} {status}", p.key.version, p.key.access_key_id);
    }
    println!("policy   {}", policy_line(record));
    if let Some(when) = record.deletion_at {
        println!("deletion after {}", at(when));
    }
    if let Some(p) = &record.pending {
        println!("pending  rotation {} since {} (lease until {})", p.rotation_id, at(p.started_at), at(p.lease_until));
    }
}

/// Every org, in id order, records read a few at a time and printed as they come.
async fn status_table(adapters: &Adapters, config: &Config, json: bool, now: DateTime<Utc>) -> Result<(), String> {
    let orgs = adapters.registry.list_orgs().await.map_err(|e| e.to_string())?;
    if !json {
        println!(
            "{:<12} {:<16} {:>4} {:<22} {:>8} {:<20} {:<20} {:<20}",
            "ORG", "STATE", "VER", "ACCESS KEY", "AGE", "AUTO ROTATION", "NEXT ROTATION", "EXPIRES"
        );
    }
    let mut records = futures::stream::iter(orgs)
        .map(|org| async move { Registry::load(&adapters.registry, &org).await })
        .buffered(8)
        .map_err(|e| e.to_string());
    let mut count = 0;
    while let Some(loaded) = records.try_next().await? {
        // An org deleted since the listing is skipped.
        let Some(record) = loaded.map(|v| v.value) else { continue };
        count += 1;
        if json {
            println!("{}", serde_json::to_string(&record).map_err(|e| e.to_string())?);
            continue;
        }
        let fmt = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M").to_string());
        let current = record.current.as_ref();
        let auto = match (record.policy.automatic, record.policy.interval) {
            (true, Some(i)) => format!("{} {i}", automatic_rotation(&record)),
            _ => "Disabled".into(),
        };
        println!(
            "{:<12} {:<16} {:>4} {:<22} {:>8} {:<20} {:<20} {:<20}",
            record.org_id.as_str(),
            record.state.as_str(),
            current.map_or("-".into(), |c| format!("v{}", c.version)),
            current.map_or("-", |c| c.access_key_id.as_str()),
            current.map_or("-".into(), |c| days_hours(now - c.created_at)),
            auto,
            fmt(record.policy.next_rotation_at),
            fmt(current.map(|c| c.created_at + config.max_key_age.to_chrono())),
        );
    }
    if !json {
        println!("{count} orgs");
    }
    Ok(())
}
