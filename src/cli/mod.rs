//! The operator CLI, `s3-key-rotation`. Configured by the same environment
//! variables as the functions (REGISTRY_BUCKET, MANAGED_BUCKET, …, and the
//! SDK's own, such as AWS_ENDPOINT_URL), so it acts on whatever AWS the
//! environment selects — real AWS or the local stack — through the same core
//! as the functions.
//!
//! It is glue: every change of state is the core's ([`crate::core`]); a
//! command reads its flags, calls the core through the AWS adapters and prints
//! what happened. Here: the command line ([`Cli`]), what every command works
//! with (`Context`), the output helpers and the dispatch. One file a group of
//! commands, with their flags (a clap `Args` struct each) and what they do:
//! - `enrollment`: `enroll` (`adoption`: `enroll --adopt`; `orgs_csv`: the
//!   CSV file of both, read by its header and checked whole);
//! - `status`: `status`, `audit`;
//! - `rotation`: `rotate`, `policy`;
//! - `key_state`: `disable`, `enable`, `schedule-deletion`, `cancel-deletion`;
//! - `sweep`: `sweep` (and `sweep --status`, a fanned-out run's progress);
//! - `accounts`: `accounts` (member accounts, placement, the bucket policy).
//!
//! A new command: its flags and its function in one of those files (or a new
//! one), a variant of `Command` (its doc comment is the command's help) and
//! its line in the dispatch.
//!
//! Exit codes: 0 done, 1 refused or failed (the message, on stderr, says why),
//! 2 bad usage (clap reports it and exits while parsing).

mod accounts;
mod adoption;
mod enrollment;
mod key_state;
mod orgs_csv;
mod rotation;
mod status;
mod sweep;

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::aws::{Adapters, Clients};
use crate::config::{Area, Config};
use crate::core::domain::{DecisionTime, OrgId, OrgRecord};
use crate::core::policy::{automatic_rotation, next_automatic_rotation};

/// Who the audit trail says made the CLI's changes.
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
  s3-key-rotation accounts
  s3-key-rotation accounts --apply-bucket-policy
  s3-key-rotation sweep --status

Exit codes: 0 done, 1 refused or failed (the message says why), 2 bad usage.";

/// The command line: `Cli::parse()` (clap's `Parser`), then [`Cli::run`].
#[derive(Debug, Parser)]
#[command(
    name = "s3-key-rotation",
    version,
    about = "Operate s3-key-rotation: enroll orgs, inspect, rotate, suspend and delete their bucket keys",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll orgs: IAM user, read-only policy on the org's prefix, registry record (idempotent).
    Enroll(enrollment::Enroll),
    /// Show one org's key (state, versions, ages, policy, next rotation, expiry) or a table of all orgs.
    Status(status::Status),
    /// Rotate an org's key now, as the operator.
    Rotate(rotation::Rotate),
    /// Enable automatic rotation with an interval (7d to 365d), or disable it.
    Policy(rotation::Policy),
    /// Suspend an org: its keys are deactivated (it loses access) and rotation stops.
    Disable(key_state::Org),
    /// Resume a disabled org: its current key is reactivated and rotation resumes.
    Enable(key_state::Org),
    /// Delete an org after 7 to 30 days: keys deactivated now; keys, user, secret and record deleted then.
    ScheduleDeletion(key_state::ScheduleDeletion),
    /// Cancel a scheduled deletion: the org comes back Disabled (then `enable` it).
    CancelDeletion(key_state::Org),
    /// Run the scheduled evaluation here, now or as of --at, and print its summary as JSON; or (--status) show a fanned-out run.
    Sweep(sweep::Sweep),
    /// An org's audit trail, newest first.
    Audit(status::Audit),
    /// The member accounts: orgs placed, room left, role assumable; and the managed bucket's policy for them.
    Accounts(accounts::Accounts),
}

impl Cli {
    /// Runs the command: [`ExitCode::SUCCESS`] when done; otherwise the
    /// message on stderr and [`ExitCode::FAILURE`].
    pub async fn run(self) -> ExitCode {
        match dispatch(self.command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(command: Command) -> Result<(), String> {
    // Only `enroll` creates or adopts org users: through the member accounts'
    // enrollment roles (the functions' roles there may not).
    let ctx = Context::from_env(matches!(command, Command::Enroll(_)), areas(&command)).await?;
    match command {
        Command::Enroll(args) => enrollment::enroll(&ctx, args).await,
        Command::Status(args) => status::status(&ctx, args).await,
        Command::Rotate(args) => rotation::rotate(&ctx, args).await,
        Command::Policy(args) => rotation::policy(&ctx, args).await,
        Command::Disable(args) => key_state::disable(&ctx, args).await,
        Command::Enable(args) => key_state::enable(&ctx, args).await,
        Command::ScheduleDeletion(args) => key_state::schedule_deletion(&ctx, args).await,
        Command::CancelDeletion(args) => key_state::cancel_deletion(&ctx, args).await,
        Command::Sweep(args) => sweep::sweep(&ctx, args).await,
        Command::Audit(args) => status::audit(&ctx, args).await,
        Command::Accounts(args) => accounts::accounts(&ctx, args).await,
    }
}

/// The areas of the configuration `command` reads; the others keep their
/// defaults unread, so that a malformed sweep setting does not stop `status`.
/// No command reads the API's (the functions' callers).
fn areas(command: &Command) -> &'static [Area] {
    use Area::*;
    match command {
        // Enrollment creates org users; adoption also judges their keys' age and warnings.
        Command::Enroll(_) => &[Registry, Rotation, Verify, Notifications, Sweep, Vault, Members, OrgUsers, Sdk],
        Command::Accounts(_) => &[Registry, Members, OrgUsers, Sdk],
        Command::Sweep(_) => &[Registry, Rotation, Verify, Notifications, Sweep, Vault, Members, Sdk],
        Command::Status(_)
        | Command::Rotate(_)
        | Command::Policy(_)
        | Command::Disable(_)
        | Command::Enable(_)
        | Command::ScheduleDeletion(_)
        | Command::CancelDeletion(_)
        | Command::Audit(_) => &[Registry, Rotation, Verify, Notifications, Vault, Members, Sdk],
    }
}

/// What every command works with: the environment's configuration, the AWS
/// adapters, and the time the command started at.
struct Context {
    config: Config,
    clients: Clients,
    adapters: Adapters,
    /// The decision time of every command: the operator's clock when it started.
    now: DecisionTime,
}

impl Context {
    async fn from_env(enrollment: bool, areas: &[Area]) -> Result<Self, String> {
        let config = Config::for_areas(|name| std::env::var(name).ok(), areas).map_err(|e| e.to_string())?;
        let config = if enrollment { config.for_enrollment() } else { config };
        let clients = Clients::from_env(&config.sdk).await;
        let adapters = Adapters::new(&clients, &config);
        Ok(Self { config, clients, adapters, now: DecisionTime::of_operator(None) })
    }
}

/// The value parser of `--org`.
fn parse_org(text: &str) -> Result<OrgId, String> {
    OrgId::parse(text).map_err(|e| e.to_string())
}

/// A time as the CLI prints it: to the second, UTC.
fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `n` things in words: `1 org`, `2 orgs`, `0 orgs`.
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The error of an org that is not enrolled, in the functions' words.
fn not_found(org: &OrgId) -> String {
    format!("Not found IAM key info for orgId: {org}")
}

/// An org's rotation policy in one line: on and when next (the real date:
/// before the maximum key age, whatever the interval), or off.
fn policy_line(record: &OrgRecord, config: &Config) -> String {
    match (&record.policy.interval, record.policy.automatic) {
        (Some(interval), true) => format!(
            "automatic rotation {} every {interval}, next {}",
            automatic_rotation(record),
            next_automatic_rotation(record, &config.rotation_settings()).map_or("-".into(), at)
        ),
        _ => "automatic rotation Disabled".into(),
    }
}

/// A bar of orgs done out of `len` (drawn only on a terminal).
fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} orgs, {{per_sec}}, eta {{eta}}"))
            .expect("a valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The configuration `args`' command reads, from `vars`.
    fn config_of(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("s3-key-rotation").chain(args.iter().copied())).unwrap();
        let lookup = |name: &str| {
            (name == "REGISTRY_BUCKET")
                .then(|| "registry".to_owned())
                .or_else(|| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
        };
        Config::for_areas(lookup, areas(&cli.command))
    }

    #[test]
    fn a_bad_setting_stops_only_the_commands_that_read_it() {
        let sweep = [("SWEEP_SLICE_SIZE", "abc")];
        for args in [&["status"][..], &["audit", "--org", "1234567"], &["disable", "--org", "1234567"], &["accounts"]] {
            assert!(config_of(args, &sweep).is_ok(), "{args:?}");
        }
        for args in [&["sweep"][..], &["enroll", "--org", "1234567"]] {
            let err = config_of(args, &sweep).unwrap_err();
            assert_eq!(err.variable, "SWEEP_SLICE_SIZE", "{args:?}");
        }
        let org_users = [("IAM_USER_PATH", "managed")];
        assert!(config_of(&["status"], &org_users).is_ok());
        assert!(config_of(&["sweep"], &org_users).is_ok());
        assert_eq!(config_of(&["accounts"], &org_users).unwrap_err().variable, "IAM_USER_PATH");
        assert_eq!(config_of(&["enroll", "--org", "1234567"], &org_users).unwrap_err().variable, "IAM_USER_PATH");
        // Every command reads the registry and the SDK's settings.
        assert_eq!(
            config_of(&["status"], &[("SDK_ATTEMPT_TIMEOUT", "20s")]).unwrap_err().variable,
            "SDK_ATTEMPT_TIMEOUT"
        );
    }
}
