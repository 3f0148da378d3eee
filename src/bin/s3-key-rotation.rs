//! Operator CLI of s3-key-rotation. Configured by the same environment
//! variables as the functions (REGISTRY_BUCKET, MANAGED_BUCKET, …, and the
//! SDK's own, such as AWS_ENDPOINT_URL), so a script can enroll an org and
//! then call the functions with the same settings.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::Config;
use s3_key_rotation::core::domain::{OrgId, Trigger};
use s3_key_rotation::core::enrollment::{enroll, grant_vault_reader};
use s3_key_rotation::core::rotation::{rotate, RotationRequest};
use secrecy::ExposeSecret;

#[derive(Debug, Parser)]
#[command(
    name = "s3-key-rotation",
    version,
    about = "Operate s3-key-rotation: enroll orgs, inspect and rotate their bucket keys",
    after_help = "Examples:\n  REGISTRY_BUCKET=registry MANAGED_BUCKET=logs s3-key-rotation enroll --org 1234567\n  REGISTRY_BUCKET=registry s3-key-rotation status --org 1234567 --json\n  REGISTRY_BUCKET=registry s3-key-rotation rotate --org 1234567 --show-secret"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll an org: its IAM user, read-only policy on its prefix, and registry record (idempotent).
    Enroll {
        /// The org id (repeat for several orgs).
        #[arg(long = "org", required = true, value_parser = parse_org)]
        orgs: Vec<OrgId>,
        /// Let this AWS principal of the org (an IAM ARN) read the org's secret in the key vault.
        #[arg(long)]
        reader_principal: Option<String>,
    },
    /// Show an org's key record (never a secret).
    Status {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate an org's key now (as the operator).
    Rotate {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        /// Keep the previous key active this long (e.g. 24h, at most 7d).
        #[arg(long, value_parser = parse_duration)]
        grace: Option<s3_key_rotation::core::duration::Duration>,
        /// Print the new secret access key (it is shown nowhere else).
        #[arg(long)]
        show_secret: bool,
    },
}

fn parse_org(text: &str) -> Result<OrgId, String> {
    OrgId::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<s3_key_rotation::core::duration::Duration, String> {
    text.parse().map_err(|e: s3_key_rotation::core::duration::DurationError| e.to_string())
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
    match cli.command {
        Command::Enroll { orgs, reader_principal } => {
            let settings = config.enroll_settings().map_err(|e| e.to_string())?;
            let mut failed = 0;
            for org in &orgs {
                match enroll(&adapters.registry, &adapters.keys, &adapters.audit, &settings, org, now, "operator").await
                {
                    Ok(done) if done.created => println!(
                        "enrolled org {org}: IAM user {}{} reads s3://{}/{}",
                        settings.iam_user_path, done.record.iam_user, done.record.bucket, done.record.prefix
                    ),
                    Ok(_) => println!("org {org} is enrolled already; nothing changed"),
                    Err(e) => {
                        eprintln!("error: org {org}: {e}");
                        failed += 1;
                        continue;
                    }
                }
                if let Some(principal) = &reader_principal {
                    match grant_vault_reader(&adapters.vault, &adapters.audit, org, principal, now, "operator").await {
                        Ok(()) => println!("  {principal} may read the secret {}", adapters.vault.secret_name(org)),
                        Err(e) => {
                            eprintln!("error: org {org}: {e}");
                            failed += 1;
                        }
                    }
                }
            }
            if failed > 0 {
                return Err(format!("{failed} of {} orgs could not be enrolled", orgs.len()));
            }
        }
        Command::Status { org, json } => {
            let record = s3_key_rotation::core::ports::Registry::load(&adapters.registry, &org)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("Not found IAM key info for orgId: {org}"))?
                .value;
            if json {
                println!("{}", serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "org {}  state {}  user {}  reads s3://{}/{}",
                    record.org_id, record.state, record.iam_user, record.bucket, record.prefix
                );
                match &record.current {
                    Some(c) => println!(
                        "current  v{} {} created {} (expires {})",
                        c.version,
                        c.access_key_id,
                        c.created_at,
                        c.created_at + config.max_key_age.to_chrono()
                    ),
                    None => println!("current  none (the first rotation issues the first key)"),
                }
                if let Some(p) = &record.previous {
                    let status = match p.deactivated_at {
                        Some(at) => format!("inactive since {at}"),
                        None => format!("active until {}", p.retire_at),
                    };
                    println!("previous v{} {} {status}", p.key.version, p.key.access_key_id);
                }
                if let Some(p) = &record.pending {
                    println!(
                        "pending  rotation {} since {} (lease until {})",
                        p.rotation_id, p.started_at, p.lease_until
                    );
                }
            }
        }
        Command::Rotate { org, grace, show_secret } => {
            let request = RotationRequest {
                org,
                now,
                trigger: Trigger::Operator,
                actor: "operator".into(),
                rotation_id: uuid::Uuid::new_v4().to_string(),
                request_id: None,
                grace,
            };
            let rotated =
                rotate(adapters.ports(), &config.rotation_settings(), &request).await.map_err(|e| e.to_string())?;
            println!(
                "rotated org {}: v{} {} (expires {})",
                rotated.org, rotated.version, rotated.access_key_id, rotated.expires_at
            );
            if let Some(p) = &rotated.previous {
                let state = if p.active { format!("active until {}", p.retire_at) } else { "inactive".into() };
                println!("previous key {} is {state}", p.access_key_id);
            }
            if show_secret {
                println!("secret access key: {}", rotated.secret_access_key.expose_secret());
            } else {
                println!("secret access key: not shown (use --show-secret)");
            }
        }
    }
    Ok(())
}
