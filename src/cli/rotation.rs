//! `rotate` (a new key for an org now, as the operator) and `policy` (its
//! automatic rotation on or off).

use clap::{ArgGroup, Args};
use secrecy::ExposeSecret;

use super::{at, not_found, parse_org, policy_line, Context, ACTOR};
use crate::core::domain::{OrgId, Trigger};
use crate::core::duration::{Duration, DurationError};
use crate::core::policy::{update_policy, PolicyChange, PolicyError};
use crate::core::rotation::{rotate as rotate_key, RotationError, RotationRequest};

#[derive(Debug, Args)]
pub(super) struct Rotate {
    #[arg(long, value_parser = parse_org)]
    org: OrgId,
    /// Keep the previous key active this long (e.g. 24h, at most 7d).
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Print the new secret access key (it is shown nowhere else; the key vault keeps it).
    #[arg(long)]
    show_secret: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("switch").required(true).args(["enable", "disable"])))]
pub(super) struct Policy {
    #[arg(long, value_parser = parse_org)]
    org: OrgId,
    #[arg(long, requires = "interval")]
    enable: bool,
    #[arg(long, conflicts_with = "interval")]
    disable: bool,
    /// integer[unit], unit d, h, m or s: 30d, 720h, 604800s.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse().map_err(|e: DurationError| e.to_string())
}

pub(super) async fn rotate(ctx: &Context, Rotate { org, grace, show_secret }: Rotate) -> Result<(), String> {
    let request = RotationRequest {
        org,
        now: ctx.now,
        trigger: Trigger::Operator,
        actor: ACTOR.into(),
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: None,
        grace,
    };
    let rotated =
        rotate_key(ctx.adapters.ports(), &ctx.config.rotation_settings(), &request).await.map_err(|e| match e {
            // In the command line's words, not the API's field name.
            RotationError::GraceTooLong { requested, max } => {
                format!("--grace {requested} is longer than the maximum of {max}")
            }
            e => e.to_string(),
        })?;
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
            ctx.adapters.vault.secret_name(&rotated.org)
        );
    }
    Ok(())
}

pub(super) async fn policy(ctx: &Context, Policy { org, enable, interval, .. }: Policy) -> Result<(), String> {
    let change = match (enable, interval) {
        (true, Some(interval)) => PolicyChange::enable(interval).map_err(|e| e.to_string())?,
        _ => PolicyChange::Disable,
    };
    let record = update_policy(&ctx.adapters.registry, &ctx.adapters.audit, &org, change, ctx.now.at(), ACTOR, None)
        .await
        .map_err(|e| match e {
            PolicyError::KeyNotFound => not_found(&org),
            e => e.to_string(),
        })?;
    println!("org {org}: {}", policy_line(&record, &ctx.config));
    Ok(())
}
