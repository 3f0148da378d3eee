//! `accounts`: the member accounts the org users live in — each with its
//! orgs, its room and whether its role can be assumed — and the managed
//! bucket's policy statement that lets their users read it.

use clap::Args;
use futures::StreamExt;

use super::Context;
use crate::core::accounts::{bucket_statement, load_placement, merge_bucket_policy, recount};
use crate::core::ports::{AccessKeys, Registry};

#[derive(Debug, Args)]
pub(super) struct Accounts {
    /// One JSON object per account.
    #[arg(long)]
    json: bool,
    /// Print the managed bucket's policy statement for the member accounts (changes nothing).
    #[arg(long, conflicts_with = "apply_bucket_policy")]
    bucket_policy: bool,
    /// Put that statement into the managed bucket's policy (the bucket's other statements are kept).
    #[arg(long)]
    apply_bucket_policy: bool,
    /// Recompute each account's count of placed orgs from its markers first
    /// (counts can only drift upward; the daily full run does it too).
    #[arg(long, conflicts_with_all = ["bucket_policy", "apply_bucket_policy"])]
    recount: bool,
}

pub(super) async fn accounts(ctx: &Context, args: Accounts) -> Result<(), String> {
    let members = &ctx.config.members.member_roles;
    if args.bucket_policy || args.apply_bucket_policy {
        let bucket = ctx.config.enroll_settings().map_err(|e| e.to_string())?.managed_bucket;
        if members.is_empty() {
            return Err("no member accounts (MEMBER_ACCOUNT_ROLES is empty): the bucket needs no statement".into());
        }
        let statement = bucket_statement(&bucket, members, &ctx.config.org_users.iam_user_path);
        if args.bucket_policy {
            println!("{}", serde_json::to_string_pretty(&statement).map_err(|e| e.to_string())?);
            return Ok(());
        }
        return apply(ctx, &bucket, statement).await;
    }
    let registry = &ctx.adapters.registry;
    if args.recount {
        let (before, after) = recount(registry, members).await.map_err(|e| e.to_string())?;
        for member in members {
            let (was, is) = (before.count(&member.account_id), after.count(&member.account_id));
            if was != is {
                eprintln!("recount: account {}: {was} → {is} org{}", member.account_id, if is == 1 { "" } else { "s" });
            }
        }
        if before == after {
            eprintln!("recount: every count matched its markers");
        }
    }
    let (placement, _) = load_placement(registry).await.map_err(|e| e.to_string())?;
    let enrolled = registry.list_orgs().await.map_err(|e| e.to_string())?.len();
    let placed: usize = members.iter().map(|m| placement.count(&m.account_id)).sum();
    let cap = ctx.config.org_users.orgs_per_account;
    // Every role assumed at once: one slow account does not hold up the list.
    let checks: Vec<Result<(), String>> = futures::stream::iter(members)
        .map(|m| async move { ctx.adapters.keys.check_account(Some(&m.account_id)).await.map_err(|e| e.to_string()) })
        .buffered(8)
        .collect()
        .await;
    let home_orgs = enrolled.saturating_sub(placed);
    if args.json {
        println!("{}", serde_json::json!({"account": "home", "orgs": home_orgs}));
    } else {
        println!("{:<14} {:>6} {:>6}  {:<10} ROLE", "ACCOUNT", "ORGS", "ROOM", "ASSUMABLE");
        println!("{:<14} {:>6} {:>6}  {:<10} -", "home", home_orgs, "-", "-");
    }
    let (mut unreachable, mut room_left) = (0, 0);
    for (member, check) in members.iter().zip(checks) {
        let orgs = placement.count(&member.account_id);
        let room = cap.saturating_sub(orgs);
        room_left += room;
        if check.is_err() {
            unreachable += 1;
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "account": member.account_id, "role": member.role_arn, "orgs": orgs, "room": room,
                    "assumable": check.is_ok(), "error": check.as_ref().err(),
                })
            );
        } else {
            let assumable = if check.is_ok() { "yes" } else { "NO" };
            println!("{:<14} {:>6} {:>6}  {:<10} {}", member.account_id, orgs, room, assumable, member.role_arn);
            if let Err(e) = check {
                println!("  {e}");
            }
        }
    }
    if !args.json {
        println!(
            "{} enrolled; room for {room_left} more in {}",
            super::count(enrolled, "org", "orgs"),
            super::count(members.len(), "member account", "member accounts")
        );
    }
    if unreachable > 0 {
        let accounts = super::count(unreachable, "member account", "member accounts");
        return Err(format!("the role of {accounts} cannot be assumed"));
    }
    Ok(())
}

/// Puts `statement` into the bucket's policy, keeping every other statement.
async fn apply(ctx: &Context, bucket: &str, statement: serde_json::Value) -> Result<(), String> {
    let s3 = &ctx.clients.s3;
    let current = match s3.get_bucket_policy().bucket(bucket).send().await {
        Ok(output) => output.policy,
        Err(e) if crate::aws::error_code(&e) == Some("NoSuchBucketPolicy") => None,
        Err(e) => return Err(crate::aws::classify("s3", "GetBucketPolicy", &e).to_string()),
    };
    let merged = merge_bucket_policy(current.as_deref(), statement)?;
    s3.put_bucket_policy()
        .bucket(bucket)
        .policy(&merged)
        .send()
        .await
        .map_err(|e| crate::aws::classify("s3", "PutBucketPolicy", &e).to_string())?;
    println!("bucket {bucket}: the member accounts' statement is in its policy ({} bytes of 20480)", merged.len());
    Ok(())
}
