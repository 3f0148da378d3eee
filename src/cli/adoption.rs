//! `enroll --adopt`: brings in orgs that existed before this service (an IAM
//! user with live keys), by `--org` or from a CSV file checked whole first
//! (`orgs_csv`), a few at a time with a progress bar, then a summary.

use futures::StreamExt;

use super::{at, count, progress, Context, ACTOR};
use crate::core::domain::OrgId;
use crate::core::enrollment::{adopt, AdoptSettings, Adopted, Adoption};

pub(super) async fn adopt_all(
    ctx: &Context,
    wanted: Vec<Adoption>,
    concurrency: usize,
    dry_run: bool,
) -> Result<(), String> {
    let config = &ctx.config;
    let settings = AdoptSettings {
        enroll: config.enroll_settings().map_err(|e| e.to_string())?,
        max_key_age: config.rotation.max_key_age,
        longest_warning: config
            .sweep
            .expiry_warnings
            .iter()
            .copied()
            .max()
            .unwrap_or(crate::core::duration::Duration::from_secs(0)),
        grace: config.rotation.rotation_grace_period,
    };
    let adapters = &ctx.adapters;
    let total = wanted.len();
    let bar = progress(total, if dry_run { "checking" } else { "adopting" });
    let verbose = total <= 20;
    let (mut adopted, mut existing, mut failed) = (0, 0, 0);
    let settings = &settings;
    let mut outcomes = futures::stream::iter(wanted)
        .map(|adoption| async move {
            let done = adopt(
                &adapters.registry,
                &adapters.keys,
                &adapters.audit,
                settings,
                &adoption,
                ctx.now.at(),
                ACTOR,
                dry_run,
            )
            .await
            .map_err(|e| e.to_string());
            (adoption.org, done)
        })
        .buffer_unordered(concurrency);
    while let Some((org, done)) = outcomes.next().await {
        bar.inc(1);
        match done {
            Ok(done) if done.created => {
                adopted += 1;
                if verbose || dry_run {
                    bar.suspend(|| println!("{}", describe(&org, &done, settings, dry_run)));
                }
                if !done.other_policies.is_empty() {
                    bar.suspend(|| {
                        eprintln!(
                            "note: org {org}: the user has other policies, kept: {}",
                            done.other_policies.join(", ")
                        )
                    });
                }
            }
            Ok(_) => {
                existing += 1;
                if verbose {
                    bar.suspend(|| println!("org {org} is enrolled already; nothing changed"));
                }
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("error: org {org}: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    let verb = if dry_run { "would be adopted" } else { "adopted" };
    println!(
        "{}: {adopted} {verb}, {existing} enrolled already, {failed} failed{}",
        count(total, "org", "orgs"),
        if dry_run { " (dry run: nothing was changed)" } else { "" }
    );
    if failed > 0 {
        return Err(format!(
            "{failed} of {} could not be adopted (running the command again retries them)",
            count(total, "org", "orgs")
        ));
    }
    Ok(())
}

/// One line per adopted org: its keys and when the current one expires.
fn describe(org: &OrgId, done: &Adopted, settings: &AdoptSettings, dry_run: bool) -> String {
    let record = &done.record;
    let current = record.current.as_ref().expect("an adopted org has a current key");
    let expiry = current.expiry(settings.max_key_age);
    let window = if current.expires_at.is_some() { " (migration window)" } else { "" };
    let previous = record.previous.as_ref().map_or(String::new(), |p| {
        let state = if p.is_active() { format!("retires {}", at(p.retire_at())) } else { "inactive".to_owned() };
        format!(", previous key {} ({state})", p.key.access_key_id)
    });
    format!(
        "{} org {org}: user {}{}, current key {} created {}, expires {}{window}{previous}; the vault holds no secret \
         until the first rotation",
        if dry_run { "would adopt" } else { "adopted" },
        record.iam_user,
        record.account_id.as_ref().map(|a| format!(" in account {a}")).unwrap_or_default(),
        current.access_key_id,
        at(current.created_at),
        at(expiry),
    )
}
