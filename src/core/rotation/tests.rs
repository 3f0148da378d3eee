use std::sync::atomic::Ordering;

use chrono::TimeDelta;
use secrecy::ExposeSecret;

use super::*;
use crate::core::memory::{FaultMode, MemoryWorld};

struct World {
    world: MemoryWorld,
    settings: RotationSettings,
    org: OrgId,
    start: DateTime<Utc>,
}

impl std::ops::Deref for World {
    type Target = MemoryWorld;
    fn deref(&self) -> &MemoryWorld {
        &self.world
    }
}

impl World {
    async fn enrolled() -> Self {
        let world = Self {
            world: MemoryWorld::new(),
            settings: RotationSettings::default(),
            org: OrgId::parse("1234567").unwrap(),
            start: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc),
        };
        world.world.enroll(&world.org, world.start).await;
        world
    }
    fn request(&self, at: DateTime<Utc>, id: &str) -> RotationRequest {
        RotationRequest {
            org: self.org.clone(),
            now: DecisionTime::from(at),
            trigger: Trigger::Api,
            actor: "admin@example.com".into(),
            rotation_id: id.into(),
            request_id: None,
            grace: None,
        }
    }
    /// The sweep at `at`, with this world's rotation settings.
    async fn sweep_at(&self, at: DateTime<Utc>) -> crate::core::sweep::Summary {
        use crate::core::sweep::{sweep, SweepRequest, SweepSettings};
        let settings = SweepSettings {
            rotation: self.settings.clone(),
            grace: Duration::from_hours(24),
            warnings: Vec::new(),
            concurrency: 1,
            retire_in_use: Default::default(),
        };
        let req = SweepRequest {
            now: DecisionTime::from(at),
            dry_run: false,
            deadline: None,
            margin: std::time::Duration::ZERO,
        };
        sweep(self.ports(), &settings, &req).await.unwrap()
    }
    async fn rotate_at(&self, at: DateTime<Utc>, id: &str) -> Result<Rotated, RotationError> {
        rotate(self.ports(), &self.settings, &self.request(at, id)).await
    }
    fn record(&self) -> OrgRecord {
        self.registry.get(&self.org).unwrap()
    }
    fn user(&self) -> String {
        self.org.user_name()
    }
    fn key_ids(&self) -> Vec<String> {
        self.keys.keys_of(&self.user()).into_iter().map(|k| k.access_key_id).collect()
    }
    /// The org has a key it knows (the record's current) and it works.
    fn assert_has_working_known_key(&self) {
        let record = self.record();
        let current = record.current.expect("a current key");
        assert!(
            self.keys.works(&self.user(), &current.access_key_id),
            "current key {} must work",
            current.access_key_id
        );
        assert!(self.key_ids().len() <= 2);
    }
}

fn minutes(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

#[tokio::test]
async fn the_first_rotation_issues_the_first_key() {
    let w = World::enrolled().await;
    let rotated = w.rotate_at(w.start, "r1").await.unwrap();
    assert_eq!(rotated.version, 1);
    assert!(rotated.previous.is_none());
    assert_eq!(rotated.expires_at, w.start + TimeDelta::days(90));
    assert!(w.keys.works(&w.user(), &rotated.access_key_id));
    let record = w.record();
    assert_eq!(record.current.unwrap().access_key_id, rotated.access_key_id);
    assert!(record.pending.is_none());
    assert_eq!(record.policy.last_rotation_at, Some(w.start));
    assert_eq!(w.vault.current_key(&w.org), Some(rotated.access_key_id.clone()), "the vault holds the current key");
    let events = w.notifier.published();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail_type, "Bucket Key Rotated");
    assert!(!events[0].detail.to_string().contains("memory-secret"));
    // The secret is handed out, never printed.
    assert!(rotated.secret_access_key.expose_secret().starts_with("memory-secret-"));
    assert!(!format!("{rotated:?}").contains("memory-secret"));
    let json = serde_json::to_string(&w.record()).unwrap();
    assert!(!json.contains("memory-secret"));
    assert!(w.audit.entries().iter().all(|e| !format!("{e:?}").contains("memory-secret")));
}

#[tokio::test]
async fn a_second_rotation_retires_the_old_key_and_counts_up() {
    let w = World::enrolled().await;
    let first = w.rotate_at(w.start, "r1").await.unwrap();
    let second = w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
    assert_eq!(second.version, 2);
    let previous = second.previous.unwrap();
    assert_eq!(previous.access_key_id, first.access_key_id);
    assert!(!previous.active);
    assert!(!w.keys.works(&w.user(), &first.access_key_id), "old key deactivated");
    assert!(w.keys.works(&w.user(), &second.access_key_id));
    let record = w.record();
    assert_eq!(record.previous.unwrap().stage(), crate::core::retirement::Stage::Ordered { at: w.start + minutes(1) });
    // The audit entries were committed with the record; the sweep copies them to the trail.
    let actions: Vec<String> = w.audit_trail(&w.org).into_iter().map(|e| e.action).collect();
    assert!(
        actions.iter().any(|a| a.starts_with("rotate")) && actions.iter().any(|a| a == "deactivate previous key"),
        "{actions:?}"
    );
}

/// The request table of docs/architecture.md: what one rotation of an org with a current
/// and a previous key asks of the services, in order.
#[tokio::test]
async fn a_rotation_of_an_org_with_a_previous_key_makes_ten_requests() {
    let w = World::enrolled().await;
    w.rotate_at(w.start, "r1").await.unwrap();
    w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
    let before = w.faults.call_count();
    w.rotate_at(w.start + minutes(2), "r3").await.unwrap();
    let calls = &w.faults.calls()[before..];
    let expected = [
        "registry.load",     // 1. read
        "registry.update",   // 2. claim
        "iam.delete_key",    // 3. make room: the previous key
        "iam.create_key",    // 4. the new key ...
        "vault.put_pending", //    ... recorded with its secret
        "verify",            // 5. it reads the bucket
        "registry.update",   // 6. commit, with its audit entries
        "vault.promote",     // 7. the vault's current secret
        "iam.set_active",    //    the old key deactivated
        "events.publish",    //    Bucket Key Rotated
    ];
    assert_eq!(calls, expected);
}

#[tokio::test]
async fn a_grace_period_keeps_the_old_key_until_it_is_due() {
    let w = World::enrolled().await;
    let first = w.rotate_at(w.start, "r1").await.unwrap();
    let mut req = w.request(w.start + minutes(1), "r2");
    req.grace = Some(Duration::from_hours(24));
    let second = rotate(w.ports(), &w.settings, &req).await.unwrap();
    let previous = second.previous.unwrap();
    assert!(previous.active);
    assert_eq!(previous.retire_at, w.start + minutes(1) + TimeDelta::hours(24));
    assert!(w.keys.works(&w.user(), &first.access_key_id));
    // A second before it is due, the sweep leaves it; at the time, it is retired.
    let due = previous.retire_at;
    assert_eq!(w.sweep_at(due - TimeDelta::seconds(1)).await.retired, 0);
    assert!(w.keys.works(&w.user(), &first.access_key_id));
    assert_eq!(w.sweep_at(due).await.retired, 1);
    assert!(!w.keys.works(&w.user(), &first.access_key_id));
    assert!(w.keys.works(&w.user(), &second.access_key_id));
    assert_eq!(w.sweep_at(due).await.retired, 0, "only once");
}

#[tokio::test]
async fn a_grace_period_longer_than_seven_days_is_refused() {
    let w = World::enrolled().await;
    let before = w.faults.call_count();
    let mut req = w.request(w.start, "r1");
    req.grace = Some(Duration::from_secs(7 * 86_400 + 1));
    let err = rotate(w.ports(), &w.settings, &req).await.unwrap_err();
    assert!(matches!(err, RotationError::GraceTooLong { .. }), "{err}");
    assert_eq!(w.faults.call_count(), before, "nothing touched");
    req.grace = Some(Duration::from_days(7));
    rotate(w.ports(), &w.settings, &req).await.unwrap();
}

#[tokio::test]
async fn the_key_quota_is_never_exceeded_across_many_rotations() {
    let mut w = World::enrolled().await;
    w.settings.rotations_per_hour = 1000;
    let mut at = w.start;
    for i in 0..25 {
        let mut req = w.request(at, &format!("r{i}"));
        req.grace = Some(Duration::from_hours(if i % 2 == 0 { 24 } else { 0 }));
        let rotated = rotate(w.ports(), &w.settings, &req).await.unwrap();
        assert_eq!(rotated.version, i + 1);
        w.assert_has_working_known_key();
        at += minutes(5);
    }
    assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2);
    assert!(w.record().history.len() <= crate::core::domain::HISTORY_LIMIT);
}

#[tokio::test]
async fn refusals_name_the_reason_and_change_nothing() {
    let w = World::enrolled().await;
    let other = OrgId::parse("999").unwrap();
    let mut req = w.request(w.start, "r1");
    req.org = other;
    let err = rotate(w.ports(), &w.settings, &req).await.unwrap_err();
    assert_eq!(err.to_string(), "Not found IAM key info for orgId: 999");

    for state in [KeyState::Disabled, KeyState::PendingDeletion] {
        let mut record = w.record();
        record.state = state;
        w.registry.put(record.clone());
        let err = w.rotate_at(w.start, "r1").await.unwrap_err();
        assert!(matches!(err, RotationError::NotEnabled { state: s, .. } if s == state), "{err}");
        assert_eq!(w.record(), record);
    }
}

#[tokio::test]
async fn an_expired_key_is_restored_by_a_manual_rotation_but_not_by_the_schedule() {
    let w = World::enrolled().await;
    let first = w.rotate_at(w.start, "r1").await.unwrap();
    // The 90-day rule took the key away.
    let mut record = w.record();
    record.state = KeyState::Expired;
    w.registry.put(record);
    w.keys.set_active(&crate::core::domain::IamUser::home(w.user()), &first.access_key_id, false).await.unwrap();
    let later = w.start + TimeDelta::days(91);
    let mut scheduled = w.request(later, "s1");
    scheduled.trigger = Trigger::Schedule;
    assert!(matches!(rotate(w.ports(), &w.settings, &scheduled).await, Err(RotationError::NotEnabled { .. })));
    let restored = w.rotate_at(later, "r2").await.unwrap();
    assert_eq!(w.record().state, KeyState::Enabled);
    assert!(w.keys.works(&w.user(), &restored.access_key_id));
    assert!(!restored.previous.unwrap().active);
}

#[tokio::test]
async fn the_rate_limit_counts_an_hour_of_api_rotations() {
    let w = World::enrolled().await;
    for i in 0..5 {
        w.rotate_at(w.start + minutes(i), &format!("r{i}")).await.unwrap();
    }
    let err = w.rotate_at(w.start + minutes(10), "r5").await.unwrap_err();
    match err {
        RotationError::RateLimited { limit, retry_after, .. } => {
            assert_eq!(limit, 5);
            assert_eq!(retry_after, Duration::from_secs(50 * 60), "until the oldest leaves the hour");
        }
        other => panic!("{other}"),
    }
    assert!(w.record().pending.is_none());
    w.rotate_at(w.start + minutes(60), "r6").await.unwrap();
    // The operator's rotations are not limited.
    let mut by_hand = w.request(w.start + minutes(61), "o1");
    by_hand.trigger = Trigger::Operator;
    for i in 0..3 {
        by_hand.rotation_id = format!("o{i}");
        rotate(w.ports(), &w.settings, &by_hand).await.unwrap();
    }
}

#[tokio::test]
async fn a_rotation_in_progress_blocks_others_until_its_lease_expires() {
    let w = World::enrolled().await;
    w.rotate_at(w.start, "r1").await.unwrap();
    // A rotation that crashed after creating its key.
    w.faults.inject(5, FaultMode::Crash); // load, claim, create, vault put, verify: crash at verify
    assert!(w.rotate_at(w.start + minutes(1), "crashed").await.is_err());
    w.faults.clear();
    let pending = w.record().pending.expect("the crashed claim stays");
    let current = w.record().current.unwrap().access_key_id;
    let orphan = w.key_ids().into_iter().find(|k| *k != current).expect("the crashed rotation's key");
    assert_eq!(w.vault.pending_key(&w.org), Some(orphan.clone()), "its key id was recorded in the vault");
    assert_eq!(w.key_ids().len(), 2);
    let err = w.rotate_at(w.start + minutes(2), "r2").await.unwrap_err();
    assert!(matches!(err, RotationError::InProgress { .. }), "{err}");
    // A request whose event time is a day later changes nothing: leases
    // are judged on the shared clock, which has not moved.
    let err = w.rotate_at(w.start + TimeDelta::days(1), "r2b").await.unwrap_err();
    assert!(matches!(err, RotationError::InProgress { .. }), "an event time is no lease clock: {err}");
    // Once the lease is over on the shared clock (allowing for the skew),
    // the next rotation takes over and deletes the orphan.
    w.clock.advance(pending.lease_until.as_utc() - w.clock.now().as_utc());
    let err = w.rotate_at(w.start + minutes(3), "r2c").await.unwrap_err();
    assert!(matches!(err, RotationError::InProgress { .. }), "within the skew bound: {err}");
    w.clock.advance(crate::core::domain::MAX_CLOCK_SKEW.to_chrono());
    let rotated = w.rotate_at(w.start + minutes(3), "r3").await.unwrap();
    assert!(!w.key_ids().contains(&orphan));
    assert!(w.keys.works(&w.user(), &rotated.access_key_id));
    assert!(w.audit.entries().iter().any(|e| e.key_ids == vec![orphan.clone()]));
}

#[tokio::test]
async fn a_failed_verification_rolls_back() {
    let w = World::enrolled().await;
    let first = w.rotate_at(w.start, "r1").await.unwrap();
    let before = w.record();
    w.faults.inject(5, FaultMode::Fail); // the verify call
    let err = w.rotate_at(w.start + minutes(1), "r2").await.unwrap_err();
    assert!(matches!(err, RotationError::VerificationFailed(_)), "{err}");
    assert_eq!(w.key_ids(), vec![first.access_key_id.clone()]);
    assert_eq!(w.record(), before, "the record is as it was");
}

/// A fault at every step of a rotation (a transient error, or a crash after
/// which nothing reaches AWS), from the state "one key, in use": the org
/// keeps a working key it knows, and the next rotation succeeds.
#[tokio::test]
async fn a_fault_at_any_step_leaves_a_state_the_next_rotation_repairs() {
    // How many calls a clean second rotation makes.
    let steps = {
        let w = World::enrolled().await;
        w.rotate_at(w.start, "r1").await.unwrap();
        let before = w.faults.call_count();
        w.rotate_at(w.start + minutes(1), "r2").await.unwrap();
        w.faults.call_count() - before
    };
    // load, claim, create, vault put, verify, commit, vault promote, deactivate, event
    assert!(steps >= 9, "{steps}");
    for mode in [FaultMode::Fail, FaultMode::Crash] {
        for step in 1..=steps + 1 {
            let w = World::enrolled().await;
            let first = w.rotate_at(w.start, "r1").await.unwrap();
            w.faults.inject(step, mode);
            let result = w.rotate_at(w.start + minutes(1), "r2").await;
            let calls = w.faults.calls();
            w.faults.clear();
            let context = format!("{mode:?} at step {step} of {steps}: {calls:?}");
            w.assert_has_working_known_key();
            let current = w.record().current.unwrap().access_key_id;
            match &result {
                Err(_) => assert_eq!(current, first.access_key_id, "{context}: failure keeps the old state"),
                Ok(rotated) => assert_eq!(current, rotated.access_key_id, "{context}"),
            }
            // The next rotation, once any lease has expired (on the shared
            // clock), succeeds and leaves exactly the keys the record knows.
            w.clock.advance(TimeDelta::minutes(30));
            let next = w.rotate_at(w.start + minutes(30), "r3").await.unwrap_or_else(|e| panic!("{context}: {e}"));
            let record = w.record();
            let mut known: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
            let mut present = w.key_ids();
            known.sort();
            present.sort();
            assert_eq!(known, present, "{context}");
            assert!(w.keys.works(&w.user(), &next.access_key_id), "{context}");
            assert_eq!(
                w.vault.current_key(&w.org),
                Some(next.access_key_id.clone()),
                "{context}: the vault holds the current key"
            );
            assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2, "{context}");
        }
    }
}

/// A registry whose `nth` update is written but answered as a conflict:
/// what the SDK reports when a write's answer is lost and its retry meets
/// the write itself (412).
struct LostAnswer<'a> {
    inner: &'a crate::core::memory::MemoryRegistry,
    countdown: std::sync::atomic::AtomicUsize,
    /// What the caller is told: a conflict (the SDK's retry met the write)
    /// or a failure (every retry's answer was lost too).
    told: PortError,
}

#[async_trait::async_trait]
impl crate::core::memory::Passthrough for LostAnswer<'_> {
    fn inner(&self) -> &dyn Registry {
        self.inner
    }
    async fn on_update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        let written = self.inner.update(record, etag).await?;
        match self.countdown.fetch_sub(1, Ordering::SeqCst) {
            1 => Err(self.told.clone()),
            _ => Ok(written),
        }
    }
}

/// The claim's or the commit's answer lost after the write: the rotation
/// recognises its own write, succeeds and hands out the key it committed
/// (before, the caller got 409 while the commit stood and the old key was
/// about to be retired: a lockout).
#[tokio::test]
async fn a_lost_answer_to_the_claim_or_the_commit_is_recognised() {
    let failed = PortError::Unavailable { service: "s3", operation: "PutObject", detail: "timeout".into() };
    for (nth, told, which) in [
        (1, PortError::Conflict, "claim"),
        (2, PortError::Conflict, "commit"),
        (2, failed.clone(), "commit, every retry lost"),
    ] {
        let w = World::enrolled().await;
        let first = w.rotate_at(w.start, "r1").await.unwrap();
        let registry = LostAnswer { inner: &w.registry, countdown: nth.into(), told };
        let ports = Ports { registry: &registry, ..w.ports() };
        let rotated = rotate(ports, &w.settings, &w.request(w.start + minutes(1), "r2"))
            .await
            .unwrap_or_else(|e| panic!("lost answer to the {which}: {e}"));
        let record = w.record();
        assert_eq!(record.current.unwrap().access_key_id, rotated.access_key_id, "{which}");
        assert!(record.pending.is_none(), "{which}");
        assert!(w.keys.works(&w.user(), &rotated.access_key_id), "{which}");
        assert!(!w.keys.works(&w.user(), &first.access_key_id), "{which}: the old key retired");
        assert_eq!(w.vault.current_key(&w.org), Some(rotated.access_key_id.clone()), "{which}");
    }
}

#[tokio::test]
async fn two_concurrent_rotations_one_wins_never_three_keys() {
    for round in 0..20 {
        let w = World::enrolled().await;
        w.rotate_at(w.start, "r0").await.unwrap();
        let at = w.start + minutes(1);
        let (a, b) = tokio::join!(w.rotate_at(at, "a"), w.rotate_at(at, "b"));
        let (won, lost) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (a, b) => panic!("round {round}: exactly one must win: {a:?} / {b:?}"),
        };
        assert!(matches!(lost, RotationError::InProgress { .. } | RotationError::Contended(_)), "{lost}");
        assert_eq!(won.version, 2);
        assert!(w.keys.max_keys_seen.load(Ordering::SeqCst) <= 2);
        w.assert_has_working_known_key();
    }
}
