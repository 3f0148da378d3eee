//! Where an interrupted run stopped and the day's full check, kept in the
//! registry for the next run.

use crate::core::domain::OrgId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an interrupted run stopped, kept in the registry for the next run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Cursor {
    pub(super) resume_after: Option<OrgId>,
    /// The UTC day whose full check (every org's IAM keys and vault) completed.
    #[serde(default, skip_serializing_if = "FullCheckDay::is_none")]
    pub(super) fully_checked_on: FullCheckDay,
}

/// The day's full check, as the in-process run's cursor and the fan-out's
/// state both keep it: once a day (until a run completes it) every org's IAM
/// keys and vault are checked against its record; the other runs look further
/// only where the record itself shows work (a claim, something due).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FullCheckDay(Option<chrono::NaiveDate>);

impl FullCheckDay {
    /// Whether a run deciding at `now` makes the full check: none completed on its UTC day yet.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.0 != Some(now.date_naive())
    }
    /// A run deciding at `now` made the full check and finished it.
    pub fn completed(&mut self, now: DateTime<Utc>) {
        self.0 = Some(now.date_naive());
    }
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

pub(super) const CURSOR: &str = "cursor.json";
