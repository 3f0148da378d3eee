//! What a run did: the summary a run answers and the metrics count, and one
//! org's part of it.

use super::*;
use crate::core::domain::{KeyState, OrgId};
use crate::core::duration::Duration;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A failure of one org, in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgFailure {
    pub org_id: OrgId,
    pub reason: String,
    /// What failed, in a word (the metrics' `Step`): `read` (the record,
    /// IAM keys or vault), `housekeep` (what a rotation left for later), or
    /// the action (`rotate`, `expire`, …, as the dry run's plan names them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
}

/// How far ahead the summary counts keys about to reach the maximum age.
pub const EXPIRING_SOON: Duration = Duration::from_days(14);

/// What a run of the sweep did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Summary {
    pub evaluated_at: DateTime<Utc>,
    pub dry_run: bool,
    /// `false`: the deadline came first; the next run resumes after `stopped_after`.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<OrgId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_after: Option<OrgId>,
    pub orgs_seen: usize,
    /// Whether every org's IAM keys and vault were checked (the day's first
    /// complete run); otherwise only orgs whose record shows work were.
    pub full_check: bool,
    pub rotated: Vec<OrgId>,
    pub retired: usize,
    pub deleted_keys: usize,
    pub deleted_orgs: Vec<OrgId>,
    pub expired: Vec<OrgId>,
    pub warned: usize,
    pub repaired: usize,
    pub mismatches: Vec<OrgFailure>,
    pub failed: Vec<OrgFailure>,
    /// Orgs whose previous key was still used when its grace period ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_in_use: Vec<OrgId>,
    /// The orgs evaluated by key state (`Enabled`, `Expired`, …), as the run left them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub orgs_by_state: BTreeMap<String, usize>,
    /// `Enabled` orgs whose current key reaches the maximum age within
    /// [`EXPIRING_SOON`] (and is not rotated by this run).
    pub keys_expiring_soon: usize,
    /// The dry run's plan: org and action.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<(OrgId, Action)>,
    pub duration_ms: u64,
}

impl Summary {
    /// Adds what `other` (a later part of the same run) did.
    pub fn absorb(&mut self, other: Summary) {
        self.orgs_seen += other.orgs_seen;
        self.full_check |= other.full_check;
        self.rotated.extend(other.rotated);
        self.retired += other.retired;
        self.deleted_keys += other.deleted_keys;
        self.deleted_orgs.extend(other.deleted_orgs);
        self.expired.extend(other.expired);
        self.warned += other.warned;
        self.repaired += other.repaired;
        self.mismatches.extend(other.mismatches);
        self.failed.extend(other.failed);
        self.still_in_use.extend(other.still_in_use);
        for (state, n) in other.orgs_by_state {
            *self.orgs_by_state.entry(state).or_default() += n;
        }
        self.keys_expiring_soon += other.keys_expiring_soon;
        self.planned.extend(other.planned);
        self.duration_ms += other.duration_ms;
    }
}

/// What one org's evaluation did.
#[derive(Debug, Default)]
pub(crate) struct OrgOutcome {
    pub(super) rotated: bool,
    pub(super) still_in_use: bool,
    pub(super) retired: usize,
    pub(super) deleted_keys: usize,
    pub(super) deleted_org: bool,
    pub(super) expired: bool,
    pub(super) warned: usize,
    pub(super) repaired: usize,
    pub(super) mismatches: Vec<String>,
    /// What failed (see [`OrgFailure::step`]) and why.
    pub(super) failure: Option<(&'static str, String)>,
    pub(super) planned: Vec<Action>,
    /// The org's key state as the run left it (`None`: not read, or deleted).
    pub(super) state: Option<KeyState>,
    pub(super) expiring_soon: bool,
}
