//! `disable` / `enable` and `schedule-deletion` / `cancel-deletion`: the
//! changes of an org's key state, made by [`crate::core::admin`]; here their
//! flags and the report of what changed.

use clap::Args;

use super::{at, parse_org, Context, ACTOR};
use crate::core::admin::{self, AdminError, AdminPorts, StateChange};
use crate::core::domain::{KeyState, OrgId};

/// The flags of a change that needs only the org.
#[derive(Debug, Args)]
pub(super) struct Org {
    #[arg(long, value_parser = parse_org)]
    org: OrgId,
}

#[derive(Debug, Args)]
pub(super) struct ScheduleDeletion {
    #[arg(long, value_parser = parse_org)]
    org: OrgId,
    #[arg(long, value_parser = clap::value_parser!(u32).range(7..=30))]
    days: u32,
}

pub(super) async fn disable(ctx: &Context, Org { org }: Org) -> Result<(), String> {
    report(admin::disable(ports(ctx), &org, ctx.now.at(), ACTOR).await, "disabled")
}

pub(super) async fn enable(ctx: &Context, Org { org }: Org) -> Result<(), String> {
    report(admin::enable(ports(ctx), &org, ctx.now.at(), ctx.config.rotation.max_key_age, ACTOR).await, "enabled")
}

pub(super) async fn schedule_deletion(
    ctx: &Context,
    ScheduleDeletion { org, days }: ScheduleDeletion,
) -> Result<(), String> {
    report(admin::schedule_deletion(ports(ctx), &org, ctx.now.at(), days, ACTOR).await, "scheduled for deletion")
}

pub(super) async fn cancel_deletion(ctx: &Context, Org { org }: Org) -> Result<(), String> {
    report(admin::cancel_deletion(ports(ctx), &org, ctx.now.at(), ACTOR).await, "no longer scheduled for deletion")
}

fn ports(ctx: &Context) -> AdminPorts<'_> {
    let adapters = &ctx.adapters;
    AdminPorts { registry: &adapters.registry, keys: &adapters.keys, audit: &adapters.audit }
}

/// What the change did: the org's state, the keys it (de)activated, and what comes next.
fn report(result: Result<StateChange, AdminError>, done: &str) -> Result<(), String> {
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
