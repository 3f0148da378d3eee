//! What is due for an org: [`plan`] decides it from the record, the IAM keys
//! and the vault (a pure function); [`plan_org`] reads what it needs.

use super::*;
use crate::core::domain::{KeyState, LeaseTime, OrgId, OrgRecord};
use crate::core::duration::Duration;
use crate::core::policy::next_automatic_rotation;
use crate::core::ports::{IamKey, PortError, Versioned};
use crate::core::retirement::{judge_unknown, Due, Unknown};
use crate::core::rotation::Ports;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One thing due for an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// A rotation whose lease expired: delete its uncommitted key, release the claim.
    #[serde(rename_all = "camelCase")]
    RollBack { rotation_id: String, new_access_key_id: Option<String> },
    /// A key IAM has and the record does not know (never delivered).
    #[serde(rename_all = "camelCase")]
    DeleteUnknownKey { access_key_id: String },
    /// A key the record knows and IAM does not have: reported, not changed.
    #[serde(rename_all = "camelCase")]
    ReportMissingKey { access_key_id: String },
    /// The org's IAM user does not exist: reported, not changed.
    #[serde(rename_all = "camelCase")]
    ReportMissingUser { user: String },
    /// The vault's current secret is not the current key's.
    #[serde(rename_all = "camelCase")]
    RepairVault { version: String },
    /// `PendingDeletion` past its date: keys, user, secret, record.
    DeleteOrg,
    /// Automatic rotation is due.
    Rotate,
    #[serde(rename_all = "camelCase")]
    DeactivatePrevious { access_key_id: String },
    #[serde(rename_all = "camelCase")]
    DeletePrevious { access_key_id: String },
    /// The current key reached the maximum age: access is taken away.
    #[serde(rename_all = "camelCase")]
    Expire { access_key_id: String },
    #[serde(rename_all = "camelCase")]
    Warn { access_key_id: String, threshold: Duration, expires_at: DateTime<Utc> },
}

/// Decides what is due for one org at the run's time `now`. `iam` is the
/// user's keys (`None`: the user is missing); `vault_current` the vault's
/// current version; `lease_now` the shared clock's time, by which a claim's
/// lease is judged (never the run's time, which may be hours old or ahead).
pub fn plan(
    record: &OrgRecord,
    iam: Option<&[IamKey]>,
    vault_current: Option<&str>,
    now: DateTime<Utc>,
    lease_now: LeaseTime,
    settings: &SweepSettings,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(pending) = &record.pending {
        if !pending.lease_until.is_over_at(lease_now) {
            return actions; // a rotation is under way: leave the org alone
        }
        actions.push(Action::RollBack {
            rotation_id: pending.rotation_id.clone(),
            new_access_key_id: pending.new_access_key_id.clone(),
        });
    }
    let iam = iam.unwrap_or_default();
    for key in iam {
        // A used unknown key deactivated by an earlier run waits out its retention.
        let fate = judge_unknown(record, &key.access_key_id, None, now, settings.rotation.retention);
        if matches!(fate, Unknown::Delete | Unknown::AskLastUse) {
            actions.push(Action::DeleteUnknownKey { access_key_id: key.access_key_id.clone() });
        }
    }
    for known in record.known_key_ids() {
        if !iam.iter().any(|k| k.access_key_id == known) {
            actions.push(Action::ReportMissingKey { access_key_id: known.to_owned() });
        }
    }
    if let Some(version) = record.current.as_ref().and_then(|c| c.vault_version.as_deref()) {
        if vault_current != Some(version) {
            actions.push(Action::RepairVault { version: version.to_owned() });
        }
    }
    if record.state == KeyState::PendingDeletion {
        if record.deletion_at.is_some_and(|at| at <= now) {
            actions.push(Action::DeleteOrg);
        }
        return actions;
    }
    let due = next_automatic_rotation(record, &settings.rotation).is_some_and(|at| at <= now);
    if record.state == KeyState::Enabled && due {
        actions.push(Action::Rotate);
        return actions;
    }
    if let Some(previous) = &record.previous {
        let id = previous.key.access_key_id.clone();
        match previous.due(now, settings.rotation.retention) {
            Some(Due::Deactivate) => actions.push(Action::DeactivatePrevious { access_key_id: id }),
            Some(Due::Delete) => actions.push(Action::DeletePrevious { access_key_id: id }),
            None => {}
        }
    }
    if record.state != KeyState::Enabled {
        return actions;
    }
    if let Some(current) = &record.current {
        let expires_at = current.expiry(settings.rotation.max_key_age);
        if expires_at <= now {
            actions.push(Action::Expire { access_key_id: current.access_key_id.clone() });
        } else {
            let tightest = settings
                .warnings
                .iter()
                .filter(|w| expires_at - w.to_chrono() <= now && !record.warnings_sent.contains(w))
                .min();
            if let Some(threshold) = tightest {
                actions.push(Action::Warn {
                    access_key_id: current.access_key_id.clone(),
                    threshold: *threshold,
                    expires_at,
                });
            }
        }
    }
    actions
}

/// The org's record and what is due for it (`None`: it was deleted meanwhile).
pub(super) async fn plan_org(
    ports: Ports<'_>,
    settings: &SweepSettings,
    org: &OrgId,
    now: DateTime<Utc>,
    full_check: bool,
) -> Result<Option<(OrgRecord, Vec<Action>)>, PortError> {
    let Some(Versioned { value: record, .. }) = ports.registry.load(org).await? else {
        return Ok(None);
    };
    let lease_now = ports.clock.now();
    if !full_check && record.pending.is_none() {
        // What the record alone makes due, were IAM and the vault as it says.
        let as_recorded: Vec<IamKey> = record
            .known_key_ids()
            .map(|id| IamKey { access_key_id: id.to_owned(), active: true, created_at: None })
            .collect();
        let vault = record.current.as_ref().and_then(|c| c.vault_version.as_deref());
        if plan(&record, Some(&as_recorded), vault, now, lease_now, settings).is_empty() {
            return Ok(Some((record, Vec::new())));
        }
    }
    let iam = match ports.keys.list_keys(&record.user()).await {
        Ok(keys) => Some(keys),
        Err(PortError::NoSuchUser) => None,
        Err(e) => return Err(e),
    };
    let vault_current = match (ports.vault, record.current.as_ref().and_then(|c| c.vault_version.as_ref())) {
        (Some(vault), Some(_)) => vault.current_version(org).await?,
        _ => None,
    };
    let mut actions = plan(&record, iam.as_deref(), vault_current.as_deref(), now, lease_now, settings);
    if iam.is_none() && record.state != KeyState::PendingDeletion {
        actions.insert(0, Action::ReportMissingUser { user: record.iam_user.clone() });
    }
    Ok(Some((record, actions)))
}

pub(super) fn action_name(action: &Action) -> &'static str {
    match action {
        Action::RollBack { .. } => "roll back an interrupted rotation",
        Action::DeleteUnknownKey { .. } => "delete an unknown key",
        Action::ReportMissingKey { .. } => "report a missing key",
        Action::ReportMissingUser { .. } => "report a missing IAM user",
        Action::RepairVault { .. } => "repair the vault",
        Action::DeleteOrg => "delete the org",
        Action::Rotate => "automatic rotation",
        Action::DeactivatePrevious { .. } => "deactivate the previous key",
        Action::DeletePrevious { .. } => "delete the previous key",
        Action::Expire { .. } => "expire the current key",
        Action::Warn { .. } => "warn of expiry",
    }
}

/// An action in a word, as the dry run's plan names it (`rollBack`, `rotate`, …).
pub(super) fn action_step(action: &Action) -> &'static str {
    match action {
        Action::RollBack { .. } => "rollBack",
        Action::DeleteUnknownKey { .. } => "deleteUnknownKey",
        Action::ReportMissingKey { .. } => "reportMissingKey",
        Action::ReportMissingUser { .. } => "reportMissingUser",
        Action::RepairVault { .. } => "repairVault",
        Action::DeleteOrg => "deleteOrg",
        Action::Rotate => "rotate",
        Action::DeactivatePrevious { .. } => "deactivatePrevious",
        Action::DeletePrevious { .. } => "deletePrevious",
        Action::Expire { .. } => "expire",
        Action::Warn { .. } => "warn",
    }
}
