use crate::core::domain::{DecisionTime, KeyState, LeaseTime, OrgId, OrgRecord, Trigger};
use crate::core::duration::Duration;
use crate::core::rotation::{rotate, RotationError, RotationRequest, RotationSettings};
use chrono::{DateTime, Utc};
use chrono::{TimeDelta, TimeZone};
use std::time::Duration as StdDuration;

use super::*;
use crate::core::memory::{FaultMode, MemoryWorld};
use crate::core::policy::{apply_policy, next_automatic_rotation, PolicyChange};
use crate::core::ports::{AccessKeys, Clock, IamKey, IamUser};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn settings() -> SweepSettings {
    SweepSettings {
        rotation: RotationSettings::default(),
        grace: Duration::from_hours(24),
        warnings: vec![Duration::from_days(14), Duration::from_days(7), Duration::from_days(1)],
        concurrency: 4,
        retire_in_use: crate::core::sweep::RetireInUse::Report,
    }
}

struct World {
    world: MemoryWorld,
    settings: SweepSettings,
}

impl std::ops::Deref for World {
    type Target = MemoryWorld;
    fn deref(&self) -> &MemoryWorld {
        &self.world
    }
}

impl World {
    fn new() -> Self {
        Self { world: MemoryWorld::new(), settings: settings() }
    }
    /// An enrolled org with its first key issued at `t0`, and automatic
    /// rotation every `interval` days if given.
    async fn org(&self, id: &str, interval: Option<u64>) -> OrgId {
        let org = OrgId::parse(id).unwrap();
        let mut record = self.world.enroll(&org, t0()).await;
        if let Some(days) = interval {
            apply_policy(&mut record, PolicyChange::enable(Duration::from_days(days)).unwrap(), t0());
            self.registry.put(record);
        }
        let req = RotationRequest {
            org: org.clone(),
            now: DecisionTime::from(t0()),
            trigger: Trigger::Operator,
            actor: "test".into(),
            rotation_id: format!("first-{id}"),
            request_id: None,
            grace: None,
        };
        rotate(self.ports(), &self.settings.rotation, &req).await.unwrap();
        org
    }
    async fn run(&self, at: DateTime<Utc>) -> Summary {
        let req = SweepRequest {
            now: DecisionTime::from(at),
            dry_run: false,
            deadline: None,
            margin: StdDuration::from_secs(1),
        };
        sweep(self.ports(), &self.settings, &req).await.unwrap()
    }
    fn record(&self, org: &OrgId) -> OrgRecord {
        self.registry.get(org).unwrap()
    }
    fn current_key(&self, org: &OrgId) -> String {
        self.record(org).current.unwrap().access_key_id
    }
    fn works(&self, org: &OrgId, key: &str) -> bool {
        self.keys.works(&org.user_name(), key)
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.notifier.published().iter().map(|n| n.detail_type).collect()
    }
}

/// Simulated years of daily runs for an org that rotates automatically every
/// 365 days under a 90-day maximum key age, with runs missed now and then
/// (one day a week, and the day each rotation falls due).
#[tokio::test]
async fn automatic_rotation_with_an_interval_past_the_maximum_age_rotates_in_time() {
    let w = World::new();
    let org = w.org("3650001", Some(365)).await;
    let max_age = TimeDelta::days(90);
    let mut rotated_on = Vec::new();
    let mut next_due = next_automatic_rotation(&w.record(&org), &w.settings.rotation).unwrap();
    assert_eq!(next_due, t0() + max_age - TimeDelta::days(2), "the real date, not a year later");
    for day in 1..=730 {
        let at = t0() + TimeDelta::days(day) + TimeDelta::hours(6);
        let missed = day % 7 == 3 || (at > next_due && at - next_due < TimeDelta::days(1));
        if missed {
            continue;
        }
        let summary = w.run(at).await;
        assert!(summary.expired.is_empty() && summary.failed.is_empty(), "day {day}: {summary:?}");
        if !summary.rotated.is_empty() {
            rotated_on.push(day);
        }
        let record = w.record(&org);
        assert_eq!(record.state, KeyState::Enabled, "day {day}");
        let current = record.current.clone().unwrap();
        assert!(at - current.created_at < max_age, "day {day}: the key is never older than the maximum");
        assert!(w.works(&org, &current.access_key_id), "day {day}");
        if let Some(previous) = &record.previous {
            let retired_by = previous.key.created_at + max_age;
            assert!(previous.retire_at() <= retired_by, "day {day}: the old key retires before its maximum age");
        }
        next_due = next_automatic_rotation(&record, &w.settings.rotation).unwrap();
        assert!(next_due < current.created_at + max_age, "day {day}");
    }
    assert!(w.kinds().iter().all(|k| *k != "Bucket Key Expired"));
    // Every rotation came a day or two before the 90 days were up, never a year later.
    let gaps: Vec<i64> = rotated_on.windows(2).map(|d| d[1] - d[0]).collect();
    assert!(rotated_on.len() >= 8 && gaps.iter().all(|g| (87..=89).contains(g)), "{rotated_on:?}");
}

/// The summary counts the orgs by key state as the run left them, and the
/// keys that reach the maximum age within 14 days and were not rotated.
#[tokio::test]
async fn the_summary_counts_orgs_by_state_and_keys_expiring_soon() {
    let w = World::new();
    let soon = w.org("2000001", None).await; // 90 days at t0 + 90d
    let rotating = w.org("2000002", Some(7)).await; // due: rotated by the run
    let disabled = w.org("2000003", None).await;
    let mut record = w.record(&disabled);
    record.state = KeyState::Disabled;
    w.registry.put(record);
    let expiring = w.org("2000004", None).await;
    let mut record = w.record(&expiring);
    record.current.as_mut().unwrap().created_at = t0() - TimeDelta::days(20); // past 90 days at the run
    w.registry.put(record);
    let summary = w.run(t0() + TimeDelta::days(80)).await;
    assert_eq!(summary.rotated, [rotating]);
    assert_eq!(summary.expired, [expiring]);
    let by_state: Vec<(&str, usize)> = summary.orgs_by_state.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(by_state, [("Disabled", 1), ("Enabled", 2), ("Expired", 1)]);
    assert_eq!(summary.keys_expiring_soon, 1, "only {soon}: the rotated key is new, the expired one is gone");
    // A day before the 14 days start: none.
    let w = World::new();
    w.org("2000005", None).await;
    assert_eq!(w.run(t0() + TimeDelta::days(75)).await.keys_expiring_soon, 0);
    assert_eq!(w.run(t0() + TimeDelta::days(76)).await.keys_expiring_soon, 1);
    // A dry run counts too (the metrics leave dry runs out).
    let req = SweepRequest {
        now: DecisionTime::from(t0() + TimeDelta::days(77)),
        dry_run: true,
        deadline: None,
        margin: StdDuration::from_secs(1),
    };
    let dry = sweep(w.ports(), &w.settings, &req).await.unwrap();
    assert_eq!((dry.orgs_by_state["Enabled"], dry.keys_expiring_soon), (1, 1));
    let mut total = Summary::default();
    total.absorb(dry.clone());
    total.absorb(dry);
    assert_eq!((total.orgs_by_state["Enabled"], total.keys_expiring_soon), (2, 2), "parts add up");
}

/// A failed org says which step failed, in the word the metrics use.
#[tokio::test]
async fn a_failure_names_its_step() {
    let mut steps = std::collections::BTreeSet::new();
    for k in 1..=12 {
        let w = World::new();
        w.org("2100001", Some(7)).await;
        w.faults.inject(k, FaultMode::Fail);
        let req = SweepRequest {
            now: DecisionTime::from(t0() + TimeDelta::days(8)),
            dry_run: false,
            deadline: None,
            margin: StdDuration::from_secs(1),
        };
        // A failed listing stops the run before any org: no org failure to name.
        let Ok(summary) = sweep(w.ports(), &w.settings, &req).await else { continue };
        for failure in &summary.failed {
            match failure.step.as_str() {
                "rotate" => assert!(failure.reason.starts_with("automatic rotation: "), "{failure:?}"),
                "housekeep" => assert!(failure.reason.starts_with("copy a rotation's"), "{failure:?}"),
                "read" => {}
                other => panic!("k={k}: step {other:?} for a due rotation: {failure:?}"),
            }
            steps.insert(failure.step.clone());
        }
    }
    assert!(steps.contains("read") && steps.contains("rotate"), "{steps:?}");
}

#[test]
fn a_step_is_the_actions_name_in_the_plan() {
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = || "AKIA".to_string();
    for action in [
        Action::RollBack { rotation_id: "r".into(), new_access_key_id: None },
        Action::DeleteUnknownKey { access_key_id: id() },
        Action::ReportMissingKey { access_key_id: id() },
        Action::ReportMissingUser { user: "u".into() },
        Action::RepairVault { version: "v".into() },
        Action::DeleteOrg,
        Action::Rotate,
        Action::DeactivatePrevious { access_key_id: id() },
        Action::DeletePrevious { access_key_id: id() },
        Action::Expire { access_key_id: id() },
        Action::Warn { access_key_id: id(), threshold: Duration::from_days(1), expires_at: at },
    ] {
        assert_eq!(serde_json::to_value(&action).unwrap()["action"], action_step(&action), "{action:?}");
    }
}

#[tokio::test]
async fn idle_orgs_cost_one_read_except_in_the_days_full_check_which_finds_keys_made_outside() {
    let w = World::new();
    let idle = w.org("1000001", None).await;
    let due = w.org("1000002", Some(7)).await;
    let first = w.run(t0() + TimeDelta::hours(1)).await;
    assert!(first.full_check, "the day's first run checks everything");

    // A key made outside the system, found only by a full check.
    let stray = w.keys.create_key(&IamUser::home(idle.user_name())).await.unwrap().access_key_id;
    let calls_before = w.faults.call_count();
    let second = w.run(t0() + TimeDelta::hours(2)).await;
    assert!(!second.full_check);
    assert_eq!(second.deleted_keys, 0);
    // The listing, the cursor read and write, and one record read per org: nothing else.
    let calls = &w.faults.calls()[calls_before..];
    assert_eq!(calls.iter().filter(|c| c.starts_with("iam.")).count(), 0, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| **c == "registry.load").count(), 2, "{calls:?}");
    assert!(w.works(&idle, &stray));

    let next_day = w.run(t0() + TimeDelta::days(1) + TimeDelta::hours(1)).await;
    assert!(next_day.full_check, "a new day: full check");
    assert!(!w.works(&idle, &stray), "the key made outside is deleted by the full check");

    // Work the record shows is done between full checks: the automatic rotation on day 7
    // leaves the previous key active for 24 h; its retirement falls after day 8's full check.
    let rotation_day = w.run(t0() + TimeDelta::days(7) + TimeDelta::hours(1)).await;
    assert_eq!(rotation_day.rotated, vec![due.clone()]);
    let previous = w.record(&due).previous.unwrap().key.access_key_id;
    assert!(w.run(t0() + TimeDelta::days(8) + TimeDelta::minutes(30)).await.full_check);
    assert!(w.works(&due, &previous), "within the grace period");
    let retirement = w.run(t0() + TimeDelta::days(8) + TimeDelta::hours(2)).await;
    assert!(!retirement.full_check);
    assert_eq!(retirement.retired, 1);
    assert!(!w.works(&due, &previous));
}

#[tokio::test]
async fn a_key_rotates_automatically_exactly_when_due_and_not_a_second_before() {
    let w = World::new();
    let org = w.org("1", Some(30)).await;
    let first = w.current_key(&org);
    let due = t0() + TimeDelta::days(30);

    let early = w.run(due - TimeDelta::seconds(1)).await;
    assert!(early.rotated.is_empty());
    assert_eq!(w.current_key(&org), first);

    let on_time = w.run(due).await;
    assert_eq!(on_time.rotated, vec![org.clone()]);
    let second = w.current_key(&org);
    assert_ne!(second, first);
    assert_eq!(w.record(&org).policy.next_rotation_at, Some(due + TimeDelta::days(30)));
    assert_eq!(w.vault.current_key(&org), Some(second.clone()), "consumers find the new secret in the vault");
    // The previous key works for the grace period, and not after.
    assert!(w.works(&org, &first));
    w.run(due + TimeDelta::hours(24) - TimeDelta::seconds(1)).await;
    assert!(w.works(&org, &first));
    let retired = w.run(due + TimeDelta::hours(24)).await;
    assert_eq!(retired.retired, 1);
    assert!(!w.works(&org, &first));
    assert!(w.works(&org, &second));
    // After the retention, the inactive key is deleted.
    let deleted = w.run(due + TimeDelta::hours(24) + TimeDelta::days(7)).await;
    assert_eq!(deleted.deleted_keys, 1);
    assert_eq!(w.keys.keys_of(&org.user_name()).len(), 1);
    assert!(w.record(&org).previous.is_none());
    assert_eq!(w.kinds(), ["Bucket Key Rotated", "Bucket Key Rotated"]);
}

#[tokio::test]
async fn a_key_at_the_maximum_age_is_taken_away_after_one_warning_per_threshold() {
    let w = World::new();
    let org = w.org("1", None).await;
    let key = w.current_key(&org);
    let expiry = t0() + TimeDelta::days(90);
    for (at, warned) in [
        (expiry - TimeDelta::days(15), 0),
        (expiry - TimeDelta::days(14), 1),
        (expiry - TimeDelta::days(13), 0),
        (expiry - TimeDelta::days(7), 1),
        (expiry - TimeDelta::days(7), 0),
        (expiry - TimeDelta::hours(1), 1),
        (expiry - TimeDelta::seconds(1), 0),
    ] {
        let summary = w.run(at).await;
        assert_eq!(summary.warned, warned, "at {at}");
        assert!(summary.expired.is_empty());
        assert!(w.works(&org, &key));
    }
    let summary = w.run(expiry).await;
    assert_eq!(summary.expired, vec![org.clone()]);
    assert!(!w.works(&org, &key), "the org lost access");
    assert_eq!(w.record(&org).state, KeyState::Expired);
    assert_eq!(
        w.kinds(),
        [
            "Bucket Key Rotated",
            "Bucket Key Expiring",
            "Bucket Key Expiring",
            "Bucket Key Expiring",
            "Bucket Key Expired"
        ]
    );
    let thresholds: Vec<serde_json::Value> =
        w.notifier.published()[1..4].iter().map(|n| n.detail["threshold"].clone()).collect();
    assert_eq!(thresholds, [serde_json::json!("14d"), serde_json::json!("7d"), serde_json::json!("1d")]);
    // Nothing more happens to an expired key, until a manual rotation restores access.
    let events = w.notifier.published().len();
    let quiet = w.run(expiry + TimeDelta::days(1)).await;
    assert!(quiet.expired.is_empty() && quiet.rotated.is_empty() && quiet.failed.is_empty(), "{quiet:?}");
    assert_eq!((quiet.warned, quiet.retired, quiet.repaired), (0, 0, 0));
    assert_eq!(w.notifier.published().len(), events);
    let req = RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(expiry + TimeDelta::days(2)),
        trigger: Trigger::Api,
        actor: "admin".into(),
        rotation_id: "restore".into(),
        request_id: None,
        grace: None,
    };
    let restored = rotate(w.ports(), &w.settings.rotation, &req).await.unwrap();
    assert!(w.works(&org, &restored.access_key_id));
    assert_eq!(w.record(&org).state, KeyState::Enabled);
    assert_eq!(w.vault.current_key(&org), Some(restored.access_key_id));
}

#[tokio::test]
async fn a_second_run_at_the_same_time_changes_nothing() {
    let w = World::new();
    let due = w.org("1", Some(7)).await;
    let expiring = w.org("2", None).await;
    let warned = w.org("3", None).await;
    w.registry.put({
        let mut r = w.record(&warned);
        r.current.as_mut().unwrap().created_at = t0() + TimeDelta::days(10);
        r
    });
    let at = t0() + TimeDelta::days(90);
    let first = w.run(at).await;
    assert_eq!(first.rotated, vec![due.clone()]);
    assert_eq!(first.expired, vec![expiring.clone()]);
    assert_eq!(first.warned, 1);
    let records: Vec<OrgRecord> = [&due, &expiring, &warned].iter().map(|o| w.record(o)).collect();
    let keys: Vec<_> = [&due, &expiring, &warned].iter().map(|o| w.keys.keys_of(&o.user_name())).collect();
    let events = w.notifier.published().len();
    let second = w.run(at).await;
    assert!(second.rotated.is_empty() && second.expired.is_empty() && second.failed.is_empty());
    assert_eq!((second.warned, second.retired, second.deleted_keys, second.repaired), (0, 0, 0, 0));
    assert_eq!(records, [&due, &expiring, &warned].iter().map(|o| w.record(o)).collect::<Vec<_>>());
    assert_eq!(keys, [&due, &expiring, &warned].iter().map(|o| w.keys.keys_of(&o.user_name())).collect::<Vec<_>>());
    assert_eq!(w.notifier.published().len(), events);
}

/// A crash between any two calls of an automatic rotation: the next run
/// (after the lease) repairs it, and the org always has a working key.
#[tokio::test]
async fn a_crash_at_any_step_of_an_automatic_rotation_is_repaired_by_the_next_run() {
    let steps = {
        let w = World::new();
        w.org("1", Some(30)).await;
        let before = w.faults.call_count();
        w.run(t0() + TimeDelta::days(30)).await;
        w.faults.call_count() - before
    };
    assert!(steps > 10, "{steps}");
    for step in 1..=steps {
        let w = World::new();
        let org = w.org("1", Some(30)).await;
        let first = w.current_key(&org);
        w.faults.inject(step, FaultMode::Crash);
        let req = SweepRequest {
            now: DecisionTime::from(t0() + TimeDelta::days(30)),
            dry_run: false,
            deadline: None,
            margin: StdDuration::ZERO,
        };
        let _ = sweep(w.ports(), &w.settings, &req).await;
        let calls = w.faults.calls();
        w.faults.clear();
        let context = format!("crash at step {step} of {steps}: {calls:?}");
        let current = w.current_key(&org);
        assert!(w.works(&org, &current), "{context}");
        // The next run comes once any claim's lease is over on the shared clock.
        w.clock.advance(TimeDelta::minutes(10));
        if current == first {
            // Not committed: the next run, after the lease, rotates.
            let summary = w.run(t0() + TimeDelta::days(30) + TimeDelta::minutes(10)).await;
            assert!(summary.failed.is_empty(), "{context}: {summary:?}");
            assert_eq!(summary.rotated, vec![org.clone()], "{context}");
        } else {
            // Committed: the next run finishes what is left (the vault).
            let summary = w.run(t0() + TimeDelta::days(30) + TimeDelta::minutes(10)).await;
            assert!(summary.failed.is_empty(), "{context}: {summary:?}");
        }
        let record = w.record(&org);
        let mut known: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
        let mut present: Vec<String> = w.keys.keys_of(&org.user_name()).into_iter().map(|k| k.access_key_id).collect();
        known.sort();
        present.sort();
        assert_eq!(known, present, "{context}");
        assert!(record.pending.is_none(), "{context}");
        assert_eq!(w.vault.current_key(&org), Some(w.current_key(&org)), "{context}: the vault holds the current key");
        assert!(w.works(&org, &w.current_key(&org)), "{context}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_the_run_midway_progress_shows_how_far_and_the_next_run_completes() {
    let mut w = World::new();
    w.settings.concurrency = 1;
    let mut orgs = Vec::new();
    for i in 0..10 {
        orgs.push(w.org(&format!("{i:02}"), Some(7)).await);
    }
    w.faults.set_delay(StdDuration::from_millis(100));
    let at = t0() + TimeDelta::days(7);
    let req = SweepRequest {
        now: DecisionTime::from(at),
        dry_run: false,
        deadline: Some(tokio::time::Instant::now() + StdDuration::from_secs(8)),
        margin: StdDuration::from_secs(2),
    };
    let reported = std::sync::Mutex::new(Vec::new());
    let partial =
        sweep_with_progress(w.ports(), &w.settings, &req, |done, total| reported.lock().unwrap().push((done, total)))
            .await
            .unwrap();
    assert!(!partial.complete);
    assert!(!partial.rotated.is_empty() && partial.rotated.len() < 10, "{partial:?}");
    // Progress counts up from 0 of 10 to the orgs the run evaluated, one by one.
    let expected: Vec<(usize, usize)> = (0..=partial.orgs_seen).map(|done| (done, 10)).collect();
    assert_eq!(reported.into_inner().unwrap(), expected);
    let stopped = partial.stopped_after.clone().unwrap();
    assert_eq!(partial.rotated.last(), Some(&stopped));
    let json = serde_json::to_value(&partial).unwrap();
    assert_eq!(json["complete"], false);
    assert_eq!(json["stoppedAfter"], stopped.as_str());

    let rest = w.run(at).await;
    assert!(rest.complete);
    assert_eq!(rest.resumed_after, Some(stopped));
    let mut all: Vec<OrgId> = partial.rotated.iter().chain(rest.rotated.iter()).cloned().collect();
    all.sort();
    assert_eq!(all, orgs, "every org rotated exactly once");
}

#[tokio::test]
async fn a_dry_run_reports_and_changes_nothing() {
    let w = World::new();
    let org = w.org("1", Some(7)).await;
    let before = w.record(&org);
    let calls_before = w.faults.calls();
    let req = SweepRequest {
        now: DecisionTime::from(t0() + TimeDelta::days(90)),
        dry_run: true,
        deadline: None,
        margin: StdDuration::ZERO,
    };
    let summary = sweep(w.ports(), &w.settings, &req).await.unwrap();
    assert_eq!(summary.planned, vec![(org.clone(), Action::Rotate)]);
    assert!(summary.rotated.is_empty());
    assert_eq!(w.record(&org), before);
    let writes: Vec<&str> = w.faults.calls()[calls_before.len()..]
        .iter()
        .copied()
        .filter(|c| {
            !c.ends_with("load")
                && !c.ends_with("list_keys")
                && !c.ends_with("list_orgs")
                && !c.ends_with("get_state")
                && !c.ends_with("current_version")
        })
        .collect();
    assert!(writes.is_empty(), "a dry run only reads: {writes:?}");
}

#[tokio::test]
async fn one_orgs_failure_never_stops_the_others() {
    let w = World::new();
    let a = w.org("a", Some(7)).await;
    let b = w.org("b", Some(7)).await;
    // Org a's IAM user vanished: its rotation fails, b's goes on.
    w.keys.delete_user(&IamUser::home(a.user_name())).await.unwrap();
    let summary = w.run(t0() + TimeDelta::days(7)).await;
    assert_eq!(summary.rotated, vec![b]);
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].org_id, a);
    assert!(
        summary.mismatches.iter().any(|m| m.org_id == a && m.reason.contains("IAM user org-a does not exist")),
        "{summary:?}"
    );
}

#[tokio::test]
async fn unknown_keys_are_deleted_and_orgs_past_their_deletion_date_are_deleted() {
    let w = World::new();
    let org = w.org("1", None).await;
    let stray = w.keys.create_key(&IamUser::home(org.user_name())).await.unwrap();
    let summary = w.run(t0() + TimeDelta::days(1)).await;
    assert_eq!(summary.repaired, 1);
    assert!(!w.keys.keys_of(&org.user_name()).iter().any(|k| k.access_key_id == stray.access_key_id));

    let mut record = w.record(&org);
    record.state = KeyState::PendingDeletion;
    record.deletion_at = Some(t0() + TimeDelta::days(10));
    w.registry.put(record);
    assert!(w.run(t0() + TimeDelta::days(10) - TimeDelta::seconds(1)).await.deleted_orgs.is_empty());
    let summary = w.run(t0() + TimeDelta::days(10)).await;
    assert_eq!(summary.deleted_orgs, vec![org.clone()]);
    assert!(w.registry.get(&org).is_none());
    assert!(!w.keys.user_exists(&org.user_name()));
    assert!(!w.vault.exists(&org));
    assert!(w.audit.entries().iter().any(|e| e.action.starts_with("delete org")));
}

/// The sweep plans from a record read before a rotation claimed the org:
/// the rotation's new key looks unknown and the key looks too old. By the
/// time the plan is carried out, the record says a rotation is under way,
/// and neither key may be touched.
#[tokio::test]
async fn a_plan_made_before_a_rotation_claimed_the_org_does_not_touch_its_keys() {
    let w = World::new();
    let org = w.org("1", None).await;
    let old = w.current_key(&org);
    let at = t0() + TimeDelta::days(90);
    // A rotation claims the org and creates its key after the sweep planned.
    let new = w.keys.create_key(&IamUser::home(org.user_name())).await.unwrap().access_key_id;
    let mut record = w.record(&org);
    record.pending = Some(crate::core::domain::PendingRotation {
        rotation_id: "under-way".into(),
        trigger: Trigger::Api,
        started_at: at,
        lease_until: w.clock.now().after(Duration::from_secs(300)),
        new_access_key_id: None,
    });
    w.registry.put(record);
    let mut outcome = OrgOutcome::default();
    for action in
        [Action::DeleteUnknownKey { access_key_id: new.clone() }, Action::Expire { access_key_id: old.clone() }]
    {
        execute(w.ports(), &w.settings, &org, DecisionTime::from(at), &action, &mut outcome).await.unwrap();
    }
    assert!(w.works(&org, &new), "the rotation's new key survives");
    assert!(w.works(&org, &old), "the current key is left to the rotation");
    assert_eq!((outcome.deleted_keys, outcome.expired), (0, false));
}

/// Two sweeps at the same event time plan an org's due automatic rotation
/// from the same read; one rotates first. The other's plan must not act:
/// one rotation, the promised grace of the previous key held, the vault
/// not moved back.
#[tokio::test]
async fn a_due_rotation_planned_twice_at_the_same_time_happens_once() {
    let w = World::new();
    let org = w.org("1", Some(7)).await;
    let at = t0() + TimeDelta::days(8);
    let (_, stale_plan) = plan_org(w.ports(), &w.settings, &org, at, true).await.unwrap().unwrap();
    assert_eq!(stale_plan, vec![Action::Rotate]);
    let first = w.run(at).await;
    assert_eq!(first.rotated, vec![org.clone()]);
    let after_first = w.record(&org);
    let promised = after_first.previous.clone().expect("the grace period's key");
    assert!(promised.retire_at() > at, "an automatic rotation promises the old key a grace period");
    let mut outcome = OrgOutcome::default();
    for action in &stale_plan {
        execute(w.ports(), &w.settings, &org, DecisionTime::from(at), action, &mut outcome).await.unwrap();
    }
    assert!(!outcome.rotated, "the second plan's rotation is no longer due on the record it would claim");
    let record = w.record(&org);
    assert_eq!(record.current.as_ref().unwrap().version, after_first.current.as_ref().unwrap().version);
    assert!(w.works(&org, &promised.key.access_key_id), "the grace period holds");
    assert_eq!(w.vault.current_key(&org), Some(w.current_key(&org)), "the vault names the current key");
}

/// A plan from a read older than the last rotation names the older vault
/// version as the one to restore: carried out late, it must not move the
/// vault's current secret back.
#[tokio::test]
async fn a_vault_repair_planned_before_a_rotation_never_moves_the_vault_back() {
    let w = World::new();
    let org = w.org("1", None).await;
    let old_version = w.record(&org).current.unwrap().vault_version.unwrap();
    let req = RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(t0() + TimeDelta::days(1)),
        trigger: Trigger::Operator,
        actor: "test".into(),
        rotation_id: "second".into(),
        request_id: None,
        grace: None,
    };
    let rotated = rotate(w.ports(), &w.settings.rotation, &req).await.unwrap();
    let mut outcome = OrgOutcome::default();
    let stale = Action::RepairVault { version: old_version };
    execute(w.ports(), &w.settings, &org, DecisionTime::from(t0() + TimeDelta::days(1)), &stale, &mut outcome)
        .await
        .unwrap();
    assert_eq!(w.vault.current_key(&org), Some(rotated.access_key_id), "the vault still names the new key");
    assert_eq!(outcome.repaired, 0);
}

/// An operator's sweep a day ahead (`--at`) planned from a read made just
/// before a rotation claimed the org: the rotation's new key looks unknown
/// and, by the sweep's event time, the claim's lease long over. The lease
/// is judged on the shared clock, so the key and the claim survive.
#[tokio::test]
async fn a_sweep_at_a_later_time_never_takes_a_live_claim_for_a_crashed_one() {
    let w = World::new();
    let org = w.org("1", None).await;
    let stale = w.record(&org);
    // A rotation that has claimed the org and created its key, and is still running.
    w.faults.inject(5, FaultMode::Crash); // load, claim, create, vault put, verify
    let req = RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(t0() + TimeDelta::hours(1)),
        trigger: Trigger::Api,
        actor: "admin".into(),
        rotation_id: "running".into(),
        request_id: None,
        grace: None,
    };
    assert!(rotate(w.ports(), &w.settings.rotation, &req).await.is_err());
    w.faults.clear();
    let claimed = w.record(&org);
    assert!(claimed.pending.is_some());
    let iam = w.keys.keys_of(&org.user_name());
    let new = iam.iter().find(|k| !stale.known_key_ids().any(|id| id == k.access_key_id)).unwrap();
    let tomorrow = t0() + TimeDelta::days(1);
    let actions = plan(&stale, Some(&iam), None, tomorrow, w.clock.now(), &w.settings);
    assert!(actions.contains(&Action::DeleteUnknownKey { access_key_id: new.access_key_id.clone() }));
    let mut outcome = OrgOutcome::default();
    for action in &actions {
        let _ = execute(w.ports(), &w.settings, &org, DecisionTime::from(tomorrow), action, &mut outcome).await;
    }
    assert!(w.works(&org, &new.access_key_id), "the running rotation's key survives");
    assert_eq!(w.record(&org).pending, claimed.pending, "its claim too");
    // And the plan of a fresh read at that time leaves the org alone.
    let fresh = plan(&claimed, Some(&iam), None, tomorrow, w.clock.now(), &w.settings);
    assert!(fresh.is_empty(), "{fresh:?}");
}

/// IAM listed after another actor's rotation made room (the previous key
/// deleted under its claim): the plan's older read still names that key,
/// but no mismatch is reported to the operators.
#[tokio::test]
async fn a_key_deleted_by_a_rotation_after_the_plans_read_is_not_reported_missing() {
    let w = World::new();
    let org = w.org("1", None).await;
    let second = RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(t0() + TimeDelta::days(1)),
        trigger: Trigger::Operator,
        actor: "test".into(),
        rotation_id: "second".into(),
        request_id: None,
        grace: None,
    };
    rotate(w.ports(), &w.settings.rotation, &second).await.unwrap();
    let stale = w.record(&org);
    let previous = stale.previous.clone().unwrap().key.access_key_id;
    // A third rotation claims the org and deletes the previous key to make room, and is still running.
    w.faults.inject(4, FaultMode::Crash); // load, claim, delete the previous key, create
    let third =
        RotationRequest { rotation_id: "third".into(), now: DecisionTime::from(t0() + TimeDelta::days(2)), ..second };
    assert!(rotate(w.ports(), &w.settings.rotation, &third).await.is_err());
    w.faults.clear();
    let iam = w.keys.keys_of(&org.user_name());
    let at = t0() + TimeDelta::days(2);
    let actions = plan(&stale, Some(&iam), None, at, w.clock.now(), &w.settings);
    assert!(actions.contains(&Action::ReportMissingKey { access_key_id: previous }), "{actions:?}");
    let mut outcome = OrgOutcome::default();
    for action in &actions {
        let _ = execute(w.ports(), &w.settings, &org, DecisionTime::from(at), action, &mut outcome).await;
    }
    assert!(outcome.mismatches.is_empty(), "{:?}", outcome.mismatches);
}

/// An org adopted with a key 100 days old: the day's full check leaves it
/// alone (no deletion, no vault mismatch, no rotation), every warning goes
/// out, the key keeps working until the migration window ends, then the
/// 90-day rule takes it.
#[tokio::test]
async fn an_adopted_org_keeps_its_old_key_through_every_warning_then_expires() {
    use crate::core::enrollment::{adopt, AdoptSettings, Adoption, EnrollSettings};
    let w = World::new();
    let org = OrgId::parse("4100001").unwrap();
    let ids = w.keys.existing_user(None, &org.user_name(), &[(t0() - TimeDelta::days(100), true)]);
    let settings = AdoptSettings {
        enroll: EnrollSettings {
            iam_user_path: "/managed-s3/".into(),
            managed_bucket: "logs".into(),
            prefix_template: "{orgId}/".into(),
            members: Vec::new(),
            orgs_per_account: 10,
        },
        max_key_age: Duration::from_days(90),
        longest_warning: Duration::from_days(14),
        grace: Duration::from_hours(24),
    };
    let adoption = Adoption { org: org.clone(), user_name: None, account: None, expires_at: None };
    adopt(&w.registry, &w.keys, &w.audit, &settings, &adoption, t0(), "op", false).await.unwrap();
    let day0 = w.run(t0() + TimeDelta::hours(1)).await;
    assert!(day0.full_check);
    assert_eq!((day0.deleted_keys, day0.rotated.len(), day0.expired.len()), (0, 0, 0), "{day0:?}");
    assert!(day0.mismatches.is_empty() && day0.failed.is_empty(), "{day0:?}");
    assert!(w.works(&org, &ids[0]));
    let mut warned = day0.warned;
    for day in [8, 13] {
        let run = w.run(t0() + TimeDelta::days(day) + TimeDelta::hours(1)).await;
        assert!(run.expired.is_empty() && run.failed.is_empty(), "day {day}: {run:?}");
        assert!(w.works(&org, &ids[0]), "day {day}: still reading");
        warned += run.warned;
    }
    assert_eq!(warned, 3, "the 14-, 7- and 1-day warnings");
    let past = w.run(t0() + TimeDelta::days(14) + TimeDelta::hours(1)).await;
    assert_eq!(past.expired, vec![org.clone()]);
    assert!(!w.works(&org, &ids[0]), "past the window the 90-day rule applies");
}

/// An adopted key expires at the end of its migration window, not at its
/// creation plus the maximum age: four days before that window ends, the
/// summary counts it among the keys expiring soon (the dashboard's figure).
#[tokio::test]
async fn an_adopted_key_near_the_end_of_its_window_is_counted_as_expiring_soon() {
    use crate::core::enrollment::{adopt, AdoptSettings, Adoption, EnrollSettings};
    // Given an org adopted with a key made 100 days ago, whose window ends in 14 days
    let w = World::new();
    let org = OrgId::parse("4100002").unwrap();
    w.keys.existing_user(None, &org.user_name(), &[(t0() - TimeDelta::days(100), true)]);
    let settings = AdoptSettings {
        enroll: EnrollSettings {
            iam_user_path: "/managed-s3/".into(),
            managed_bucket: "logs".into(),
            prefix_template: "{orgId}/".into(),
            members: Vec::new(),
            orgs_per_account: 10,
        },
        max_key_age: Duration::from_days(90),
        longest_warning: Duration::from_days(14),
        grace: Duration::from_hours(24),
    };
    let adoption = Adoption { org: org.clone(), user_name: None, account: None, expires_at: None };
    adopt(&w.registry, &w.keys, &w.audit, &settings, &adoption, t0(), "op", false).await.unwrap();
    let expires_at = w.record(&org).current.unwrap().expiry(Duration::from_days(90));
    // When the sweep runs four days before that
    let run = w.run(expires_at - TimeDelta::days(4)).await;
    // Then the key is counted as expiring soon
    assert!(run.expired.is_empty() && run.failed.is_empty(), "{run:?}");
    assert_eq!(run.keys_expiring_soon, 1, "{run:?}");
}

/// A warning marked as sent whose publication fails is unmarked for the
/// next run; when even that write fails, the warning would never go out:
/// the failure says so (and an ERROR is logged), rather than a plain
/// publish failure that the next run seems to retry.
#[tokio::test]
async fn a_warning_whose_sent_mark_cannot_be_taken_back_is_reported_as_lost() {
    // Given an org 13 days from its key's maximum age (the 14-day warning is due)
    let w = World::new();
    let org = w.org("4200001", None).await;
    let at = t0() + TimeDelta::days(77);
    let publish_at = {
        // Where the run publishes, found on a copy of the same world
        let probe = World::new();
        probe.org("4200001", None).await;
        let before = probe.faults.call_count();
        assert_eq!(probe.run(at).await.warned, 1);
        let calls = probe.faults.calls();
        calls[before..].iter().position(|c| *c == "events.publish").expect("a publication") + 1
    };
    // When the publication fails and every call after it fails too
    w.faults.inject(publish_at, FaultMode::Crash);
    let run = w.run(at).await;
    w.faults.clear();
    // Then the warning is reported as lost, naming its threshold
    assert_eq!(run.warned, 0);
    let failure = run.failed.iter().find(|f| f.step == "warn").expect("the warning's failure");
    assert!(failure.reason.contains("could not be taken back"), "{failure:?}");
    assert!(failure.reason.contains("14d"), "{failure:?}");
    assert_eq!(w.record(&org).warnings_sent, [Duration::from_days(14)], "the mark stayed");
}

/// The previous key of a rotation with a grace period signs requests after
/// the rotation: at the end of its grace it is reported (event, summary);
/// `report` deactivates it anyway, `defer` waits another grace period.
#[tokio::test]
async fn a_previous_key_still_in_use_is_reported_and_deferred_on_request() {
    for mode in [RetireInUse::Report, RetireInUse::Defer] {
        let mut w = World::new();
        w.settings.retire_in_use = mode;
        let org = w.org("1", None).await;
        let req = RotationRequest {
            org: org.clone(),
            now: DecisionTime::from(t0() + TimeDelta::days(1)),
            trigger: Trigger::Operator,
            actor: "test".into(),
            rotation_id: "second".into(),
            request_id: None,
            grace: Some(Duration::from_hours(24)),
        };
        rotate(w.ports(), &w.settings.rotation, &req).await.unwrap();
        let previous = w.record(&org).previous.unwrap().key.access_key_id;
        w.keys.mark_used(&org.user_name(), &previous, t0() + TimeDelta::days(1) + TimeDelta::hours(3));
        let run = w.run(t0() + TimeDelta::days(2) + TimeDelta::hours(1)).await;
        assert_eq!(run.still_in_use, vec![org.clone()], "{mode:?}");
        let event = w.notifier.published().into_iter().find(|n| n.detail_type == "Bucket Key Still In Use");
        let event = event.expect("the event").detail;
        assert_eq!(event["accessKeyId"], previous.as_str());
        assert_eq!(event["service"], "s3");
        match mode {
            RetireInUse::Report => assert!(!w.works(&org, &previous), "retired on time"),
            RetireInUse::Defer => {
                assert!(w.works(&org, &previous), "one more grace period");
                let retire_at = w.record(&org).previous.unwrap().retire_at();
                assert_eq!(retire_at, t0() + TimeDelta::days(3) + TimeDelta::hours(1));
            }
        }
    }
}

/// A key the record does not know: never used, it is deleted; used, it is
/// deactivated and reported, and deleted only once KEY_RETENTION has passed.
#[tokio::test]
async fn an_unknown_key_that_was_used_is_deactivated_and_deleted_only_after_retention() {
    let w = World::new();
    let org = w.org("1", None).await;
    let stray = w.keys.create_key(&IamUser::home(org.user_name())).await.unwrap().access_key_id;
    w.keys.mark_used(&org.user_name(), &stray, t0() + TimeDelta::hours(2));
    let first = w.run(t0() + TimeDelta::hours(3)).await;
    assert!(first.full_check);
    assert_eq!(first.deleted_keys, 0);
    assert!(first.mismatches.iter().any(|m| m.reason.contains(&stray) && m.reason.contains("deactivated")));
    assert!(w.keys.keys_of(&org.user_name()).iter().any(|k| k.access_key_id == stray && !k.active));
    let within = w.run(t0() + TimeDelta::days(6)).await;
    assert_eq!(within.deleted_keys, 0, "kept through KEY_RETENTION");
    let after = w.run(t0() + TimeDelta::days(8)).await;
    assert_eq!(after.deleted_keys, 1);
    assert!(!w.keys.keys_of(&org.user_name()).iter().any(|k| k.access_key_id == stray));
    assert!(w.record(&org).quarantined.is_empty());
}

/// The sweep quarantines a used key the registry did not know; with the
/// current key it fills IAM's two places. A rotation then is refused with
/// an error that names the key, when it goes and how to remove it (not
/// IAM's quota error); once its retention is over, the rotation itself
/// deletes it, as the sweep would, and rotates.
#[tokio::test]
async fn a_quarantined_key_that_fills_the_second_place_is_named_by_the_refusal_then_deleted_after_retention() {
    // Given an org whose user holds its current key and a used stray key, quarantined by the sweep
    let w = World::new();
    let org = w.org("4300001", None).await;
    let stray = w.keys.create_key(&IamUser::home(org.user_name())).await.unwrap().access_key_id;
    w.keys.mark_used(&org.user_name(), &stray, t0() + TimeDelta::hours(2));
    w.run(t0() + TimeDelta::hours(3)).await;
    assert_eq!(w.record(&org).quarantined.len(), 1);
    let rotate_at = |at: DateTime<Utc>, id: &str| RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(at),
        trigger: Trigger::Api,
        actor: "admin".into(),
        rotation_id: id.into(),
        request_id: None,
        grace: None,
    };
    // When the org's admin rotates within the retention
    let err = rotate(w.ports(), &w.settings.rotation, &rotate_at(t0() + TimeDelta::days(1), "r1")).await.unwrap_err();
    // Then the refusal names the key and the way out, and nothing changed
    let text = err.to_string();
    assert!(matches!(err, RotationError::SlotsHeld { .. }), "{text}");
    assert!(text.contains(&stray) && text.contains("delete-access-key") && text.contains("2026-01-08"), "{text}");
    assert!(w.record(&org).pending.is_none(), "the claim is released");
    assert_eq!(w.keys.keys_of(&org.user_name()).len(), 2);
    // And after the retention the rotation deletes it and rotates
    let rotated = rotate(w.ports(), &w.settings.rotation, &rotate_at(t0() + TimeDelta::days(8), "r2")).await.unwrap();
    let ids: Vec<String> = w.keys.keys_of(&org.user_name()).into_iter().map(|k| k.access_key_id).collect();
    assert!(ids.contains(&rotated.access_key_id) && !ids.contains(&stray), "{ids:?}");
    assert!(w.record(&org).quarantined.is_empty());
}

/// A rotation that crashed after its own check of the new key (which
/// signed a request with it): the key was never delivered, so the run that
/// rolls the claim back deletes it rather than keeping it as someone's.
#[tokio::test]
async fn a_crashed_rotations_own_key_is_deleted_though_its_check_used_it() {
    let w = World::new();
    let org = w.org("1", None).await;
    w.faults.inject(6, FaultMode::Crash); // load, claim, create, vault put, verify, commit
    let req = RotationRequest {
        org: org.clone(),
        now: DecisionTime::from(t0() + TimeDelta::hours(1)),
        trigger: Trigger::Api,
        actor: "admin".into(),
        rotation_id: "crashed".into(),
        request_id: None,
        grace: None,
    };
    assert!(rotate(w.ports(), &w.settings.rotation, &req).await.is_err());
    w.faults.clear();
    let current = w.current_key(&org);
    let own = w.keys.keys_of(&org.user_name()).into_iter().find(|k| k.access_key_id != current).unwrap();
    w.keys.mark_used(&org.user_name(), &own.access_key_id, t0() + TimeDelta::hours(1));
    w.clock.advance(TimeDelta::minutes(10));
    let run = w.run(t0() + TimeDelta::hours(2)).await;
    assert!(run.failed.is_empty() && run.mismatches.is_empty(), "{run:?}");
    assert!(!w.keys.keys_of(&org.user_name()).iter().any(|k| k.access_key_id == own.access_key_id));
    assert!(w.record(&org).quarantined.is_empty() && w.record(&org).pending.is_none());
}

#[test]
fn disabled_and_pending_deletion_orgs_do_not_rotate() {
    let org = OrgId::parse("1").unwrap();
    let mut record = OrgRecord::enrolled(&org, "logs", "1/", t0());
    crate::core::rotation::commit_rotation(&mut record, "AKIA1", t0(), Duration::from_secs(0), None);
    apply_policy(&mut record, PolicyChange::enable(Duration::from_days(7)).unwrap(), t0());
    let keys = [IamKey { access_key_id: "AKIA1".into(), active: true, created_at: None }];
    let later = t0() + TimeDelta::days(100);
    let lease_now = LeaseTime::from_utc(later);
    assert!(plan(&record, Some(&keys), None, later, lease_now, &settings()).contains(&Action::Rotate));
    for state in [KeyState::Disabled, KeyState::PendingDeletion, KeyState::Expired] {
        record.state = state;
        let actions = plan(&record, Some(&keys), None, later, lease_now, &settings());
        assert!(actions.is_empty(), "{state}: {actions:?}");
    }
}
