//! `status` (one org's key, or a table of every org) and `audit` (an org's
//! audit trail): they read, never change anything.

use chrono::{DateTime, Utc};
use clap::Args;
use futures::{StreamExt, TryStreamExt};

use super::{at, not_found, parse_org, policy_line, Context};
use crate::aws::Adapters;
use crate::config::Config;
use crate::core::domain::{OrgId, OrgRecord};
use crate::core::policy::{automatic_rotation, next_automatic_rotation};
use crate::core::ports::{AccessKeys, Registry};
use crate::core::retirement::Stage;

#[derive(Debug, Args)]
pub(super) struct Status {
    /// One org; without it, every enrolled org.
    #[arg(long, value_parser = parse_org)]
    org: Option<OrgId>,
    /// JSON: the org's record, or one record per line for all orgs.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct Audit {
    #[arg(long, value_parser = parse_org)]
    org: OrgId,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON entry per line.
    #[arg(long)]
    json: bool,
}

pub(super) async fn status(ctx: &Context, Status { org, json }: Status) -> Result<(), String> {
    let Some(org) = org else { return status_table(&ctx.adapters, &ctx.config, json, ctx.now.at()).await };
    let record = load(&ctx.adapters, &org).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?);
    } else {
        // Each key's last use, as IAM saw it (a failure to ask is shown, not fatal).
        let mut uses = Vec::new();
        for id in record.known_key_ids() {
            let seen = match ctx.adapters.keys.last_used(&record.user(), id).await {
                Ok(Some(used)) => format!("last used {} ({} in {})", at(used.at), used.service, used.region),
                Ok(None) => "never used".to_owned(),
                Err(e) => format!("last use unknown: {e}"),
            };
            uses.push((id.to_owned(), seen));
        }
        print_status(&record, &ctx.config, ctx.now.at(), &uses);
        // The full ARN the org's consumers name the secret by (a failure to ask is shown, not fatal).
        match ctx.adapters.vault.secret_arn(&org).await {
            Ok(Some(arn)) => println!("secret   {arn}"),
            Ok(None) => println!("secret   none yet (the first rotation, or a reader's grant, creates it)"),
            Err(e) => println!("secret   {} (its ARN is unknown: {e})", ctx.adapters.vault.secret_name(&org)),
        }
    }
    Ok(())
}

pub(super) async fn audit(ctx: &Context, Audit { org, limit, json }: Audit) -> Result<(), String> {
    let mut entries = ctx.adapters.audit.newest_first(&org, limit).await.map_err(|e| e.to_string())?;
    // Entries a rotation committed with the record and the sweep has not yet
    // copied to the trail belong in it already.
    let record = Registry::load(&ctx.adapters.registry, &org).await.map_err(|e| e.to_string())?;
    let queued = record.map(|v| v.value.audit_outbox).unwrap_or_default();
    entries.extend(queued.into_iter().filter(|e| !entries.contains(e)).collect::<Vec<_>>());
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    entries.truncate(limit);
    if entries.is_empty() {
        load(&ctx.adapters, &org).await?;
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
    Ok(())
}

async fn load(adapters: &Adapters, org: &OrgId) -> Result<OrgRecord, String> {
    Registry::load(&adapters.registry, org)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value)
        .ok_or_else(|| not_found(org))
}

fn days_hours(d: chrono::TimeDelta) -> String {
    if d.num_days() != 0 {
        format!("{}d{}h", d.num_days(), d.num_hours() % 24)
    } else {
        format!("{}h{}m", d.num_hours(), d.num_minutes() % 60)
    }
}

fn print_status(record: &OrgRecord, config: &Config, now: DateTime<Utc>, uses: &[(String, String)]) {
    let used = |id: &str| uses.iter().find(|(k, _)| k == id).map_or(String::new(), |(_, u)| format!("; {u}"));
    println!(
        "org {}  state {}  user {}  reads s3://{}/{}",
        record.org_id,
        record.state,
        record.user(),
        record.bucket,
        record.prefix
    );
    match &record.current {
        Some(c) => {
            let expires = c.expiry(config.rotation.max_key_age);
            let window = if c.expires_at.is_some() { " (migration window)" } else { "" };
            let vault =
                if c.vault_version.is_some() { "" } else { "; secret not held (the next rotation fills the vault)" };
            println!(
                "current  v{} {} created {} (age {}), expires {}{window} (in {}){vault}{}",
                c.version,
                c.access_key_id,
                at(c.created_at),
                days_hours(now - c.created_at),
                at(expires),
                days_hours(expires - now),
                used(&c.access_key_id)
            );
        }
        None => println!("current  none (the first rotation issues the first key)"),
    }
    if let Some(p) = &record.previous {
        let status = match p.stage() {
            Stage::Ordered { at: when } | Stage::Deactivated { at: when } => format!("inactive since {}", at(when)),
            Stage::InGrace { retire_at } => format!("active until {}", at(retire_at)),
        };
        println!("previous v{} {} {status}{}", p.key.version, p.key.access_key_id, used(&p.key.access_key_id));
    }
    println!("policy   {}", policy_line(record, config));
    if let Some(when) = record.deletion_at {
        println!("deletion after {}", at(when));
    }
    if let Some(p) = &record.pending {
        println!(
            "pending  rotation {} since {} (lease until {})",
            p.rotation_id,
            at(p.started_at),
            at(p.lease_until.as_utc())
        );
    }
}

/// Every org, in id order, records read a few at a time and printed as they come.
async fn status_table(adapters: &Adapters, config: &Config, json: bool, now: DateTime<Utc>) -> Result<(), String> {
    let orgs = adapters.registry.list_orgs().await.map_err(|e| e.to_string())?;
    if !json {
        println!(
            "{:<12} {:<16} {:>4} {:<22} {:>8} {:<20} {:<20} {:<20} {:<12}",
            "ORG", "STATE", "VER", "ACCESS KEY", "AGE", "AUTO ROTATION", "NEXT ROTATION", "EXPIRES", "ACCOUNT"
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
            "{:<12} {:<16} {:>4} {:<22} {:>8} {:<20} {:<20} {:<20} {:<12}",
            record.org_id.as_str(),
            record.state.as_str(),
            current.map_or("-".into(), |c| format!("v{}", c.version)),
            current.map_or("-", |c| c.access_key_id.as_str()),
            current.map_or("-".into(), |c| days_hours(now - c.created_at)),
            auto,
            fmt(next_automatic_rotation(&record, &config.rotation_settings())),
            fmt(current.map(|c| c.expiry(config.rotation.max_key_age))),
            record.account_id.as_deref().unwrap_or("home"),
        );
    }
    if !json {
        println!("{}", super::count(count, "org", "orgs"));
    }
    Ok(())
}
