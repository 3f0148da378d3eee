//! The fanned-out sweep through a real SQS queue on moto: `scheduled-rotation`'s
//! dispatcher (`handle_dispatch`) queues the slices; the test plays Lambda's
//! event source mapping for `sweep-worker` (BatchSize 1, ReportBatchItemFailures):
//! it receives a message, hands it to `handle_slices` as the SQS event Lambda
//! builds, and deletes it unless the answer lists it as failed. The queue has
//! a 1 s visibility timeout and a dead-letter queue after a few receives.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, TimeDelta, Utc};
use common::{project_root, Function, Member, Stack};
use lambda_runtime::{Context, LambdaEvent};
use s3_key_rotation::aws::queue::SqsSlices;
use s3_key_rotation::core::domain::DecisionTime;
use s3_key_rotation::core::domain::{LeaseTime, OrgId, OrgRecord, Trigger};
use s3_key_rotation::core::enrollment::enroll;
use s3_key_rotation::core::fanout::{run_status, Manifest, RunStatus, Slice};
use s3_key_rotation::core::memory::Passthrough;
use s3_key_rotation::core::policy::{update_policy, PolicyChange};
use s3_key_rotation::core::ports::{Clock, PortError, Registry, Versioned};
use s3_key_rotation::core::rotation::{rotate, Ports, RotationRequest};
use s3_key_rotation::scheduled::{handle_dispatch, handle_slices, SweepDetail};

const A1: &str = "111111111111";
const A2: &str = "222222222222";
const A3: &str = "333333333333";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T04:51:11Z").unwrap().with_timezone(&Utc)
}

/// When every org's automatic rotation (30 days after its first key at t0) is due.
fn due() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-22T05:00:00Z").unwrap().with_timezone(&Utc)
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

/// The sweep's queue and its dead-letter queue.
struct Queues {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    dead: String,
}

impl Queues {
    /// A queue as template.yaml's SweepQueue, with a 1 s visibility timeout
    /// and `max_receives` receives before a message is set aside.
    async fn create(stack: &Stack, max_receives: u32) -> Self {
        let sqs = aws_sdk_sqs::Client::new(&stack.aws.sdk(&stack.admin.0, &stack.admin.1));
        let dead = sqs.create_queue().queue_name("sweep-dead-letter").send().await.unwrap().queue_url.unwrap();
        let dead_arn = Self::arn_of(&sqs, &dead).await;
        let url = sqs
            .create_queue()
            .queue_name("sweep")
            .attributes(QueueAttributeName::VisibilityTimeout, "1")
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dead_arn, "maxReceiveCount": max_receives}).to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let arn = Self::arn_of(&sqs, &url).await;
        Self { sqs, url, arn, dead }
    }

    async fn arn_of(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        attributes[&QueueAttributeName::QueueArn].clone()
    }

    /// The queue as `function` reaches it: with its role's credentials.
    fn slices(&self, stack: &Stack, function: Function) -> SqsSlices {
        SqsSlices::new(aws_sdk_sqs::Client::new(&stack.function_sdk(function)), &self.url)
    }

    /// Messages in the queue: (visible, in flight).
    async fn depth(&self, url: &str) -> (u64, u64) {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        let n = |name: &QueueAttributeName| attributes[name].parse::<u64>().unwrap();
        (
            n(&QueueAttributeName::ApproximateNumberOfMessages),
            n(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// The bodies of the dead-letter queue's messages (left in it).
    async fn dead_letters(&self) -> Vec<Slice> {
        let mut slices = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.dead)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            slices.extend(messages.iter().map(|m| serde_json::from_str::<Slice>(m.body().unwrap()).unwrap()));
        }
        slices.sort_by_key(|s| s.index);
        slices
    }

    /// Receives one message, as the event source mapping polls.
    async fn receive(&self) -> Option<aws_sdk_sqs::types::Message> {
        let got = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        got.messages.unwrap_or_default().into_iter().next()
    }

    /// The event Lambda gives the function for `message` (its JSON shape, parsed as the runtime does).
    fn event(&self, message: &aws_sdk_sqs::types::Message) -> LambdaEvent<SqsEvent> {
        let attributes: serde_json::Map<String, serde_json::Value> = message
            .attributes()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone().into()))
            .collect();
        let json = serde_json::json!({
            "Records": [{
                "messageId": message.message_id(),
                "receiptHandle": message.receipt_handle(),
                "body": message.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": message.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": self.arn,
                "awsRegion": "us-east-1"
            }]
        });
        let event: SqsEvent = serde_json::from_value(json).expect("an SQS event");
        let mut context = Context::default();
        context.request_id = uuid::Uuid::new_v4().to_string();
        // Lambda's deadline: the worker's 900 s timeout.
        let deadline = std::time::SystemTime::now() + Duration::from_secs(900);
        context.deadline = deadline.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        LambdaEvent::new(event, context)
    }

    /// What the event source mapping does with the function's answer: deletes
    /// every message of the batch it does not list as failed.
    async fn settle(&self, message: &aws_sdk_sqs::types::Message, answer: &SqsBatchResponse) -> bool {
        let failed =
            answer.batch_item_failures.iter().any(|f| Some(f.item_identifier.as_str()) == message.message_id());
        if !failed {
            self.sqs
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        !failed
    }

    /// Delivers the queue's messages to the worker until none is left (failed
    /// ones come back after the visibility timeout, until they are set
    /// aside): (deliveries, failed deliveries).
    async fn drain(&self, stack: &Stack, ports: Ports<'_>) -> (usize, usize) {
        let settings = stack.config.sweep_settings();
        let margin = Duration::from_secs(stack.config.sweep.deadline_margin.as_secs());
        let (mut deliveries, mut failures) = (0, 0);
        let started = std::time::Instant::now();
        loop {
            assert!(started.elapsed() < Duration::from_secs(60), "the queue did not drain");
            let Some(message) = self.receive().await else {
                if self.depth(&self.url).await == (0, 0) {
                    return (deliveries, failures);
                }
                continue;
            };
            let slices = self.slices(stack, Function::SweepWorker);
            let answer =
                handle_slices(self.event(&message), ports, Some(&slices), &settings, margin).await.expect("an answer");
            deliveries += 1;
            if !self.settle(&message, &answer).await {
                failures += 1;
            }
        }
    }
}

/// `scheduled-rotation`'s dispatcher on the Scheduled Event at `at`.
async fn dispatch_at(stack: &Stack, queues: &Queues, at: DateTime<Utc>) -> Manifest {
    let text = std::fs::read_to_string(project_root().join("events/scheduled-event.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["time"] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    let event: EventBridgeEvent<SweepDetail> = serde_json::from_value(value).unwrap();
    let event = LambdaEvent::new(event, Context::default());
    let c = &stack.config;
    let dispatcher = stack.function(Function::ScheduledRotation);
    let slices = queues.slices(stack, Function::ScheduledRotation);
    handle_dispatch(event, &dispatcher.registry, &slices, &c.members.member_roles, c.sweep.sweep_slice_size)
        .await
        .expect("dispatched")
}

async fn status_of(stack: &Stack, manifest: &Manifest) -> RunStatus {
    run_status(&stack.adapters.registry, Some(&manifest.run_id)).await.unwrap().expect("the run")
}

/// Enrolls `ids` in `stack` (`home`: with adapters that know no member
/// account, as before member accounts were added), issues each its first key
/// at t0 and turns automatic rotation on (every 30 days).
async fn prepare(stack: &Stack, ids: &[String], home: bool) {
    let (home_adapters, home_config) = stack.home_only_adapters();
    let enrollment = stack.enrollment_adapters();
    let (a, config) = if home { (&home_adapters, &home_config) } else { (&enrollment, &stack.config) };
    let settings = config.enroll_settings().unwrap();
    for id in ids {
        enroll(&a.registry, &a.keys, &a.audit, &settings, &org(id), t0(), "test").await.unwrap();
    }
    let a = &stack.adapters;
    for id in ids {
        let request = RotationRequest {
            org: org(id),
            now: DecisionTime::from(t0()),
            trigger: Trigger::Api,
            actor: "admin@example.com".into(),
            rotation_id: uuid::Uuid::new_v4().to_string(),
            request_id: None,
            grace: None,
        };
        rotate(a.ports(), &stack.config.rotation_settings(), &request).await.unwrap();
        let change = PolicyChange::enable("30d".parse().unwrap()).unwrap();
        update_policy(&a.registry, &a.audit, &org(id), change, t0(), "admin", None).await.unwrap();
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i:02}")).collect()
}

async fn records(stack: &Stack, ids: &[String]) -> Vec<Versioned<OrgRecord>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(stack.adapters.registry.load(&org(id)).await.unwrap().expect("a record"));
    }
    out
}

/// Each org rotated exactly once by the run at `due()`: key version 2, made
/// then, and one automatic rotation in its history; no claim left.
fn rotated_exactly_once(records: &[Versioned<OrgRecord>]) {
    for Versioned { value: r, .. } in records {
        let current = r.current.as_ref().expect("a key");
        assert_eq!((current.version, current.created_at), (2, due()), "org {}", r.org_id);
        assert!(r.pending.is_none(), "org {}: a claim is left", r.org_id);
        let rotations: Vec<(Option<u32>, DateTime<Utc>)> =
            r.history.iter().filter(|h| h.event == "rotated").map(|h| (h.version, h.at)).collect();
        assert_eq!(rotations, [(Some(1), t0()), (Some(2), due())], "org {}", r.org_id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_org_is_swept_exactly_once_per_run_across_the_slices_and_a_repeated_slice_changes_nothing() {
    let members = [Member::Deployed(A1), Member::Deployed(A2), Member::Deployed(A3)];
    let stack = Stack::with_members(&members, 5, &[("SWEEP_SLICE_SIZE", "3")]).await;
    let home = ids("h", 5);
    let placed = ids("m", 15);
    prepare(&stack, &home, true).await;
    prepare(&stack, &placed, false).await;
    let all: Vec<String> = home.iter().chain(&placed).cloned().collect();
    let queues = Queues::create(&stack, 3).await;

    let manifest = dispatch_at(&stack, &queues, due()).await;

    assert_eq!(manifest.orgs, 20);
    assert!(manifest.full_check && !manifest.dry_run);
    // Home 5 orgs and each member account's 5: two slices each (3 + 2), the
    // accounts taking turns.
    let by_account: Vec<(Option<&str>, usize)> =
        manifest.slices.iter().map(|s| (s.account.as_deref(), s.orgs)).collect();
    let expected = [None, Some(A1), Some(A2), Some(A3), None, Some(A1), Some(A2), Some(A3)];
    assert_eq!(by_account, expected.iter().zip([3, 3, 3, 3, 2, 2, 2, 2]).map(|(a, n)| (*a, n)).collect::<Vec<_>>());
    assert_eq!(queues.depth(&queues.url).await, (8, 0), "one message a slice");

    let (deliveries, failures) = queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await;

    assert_eq!((deliveries, failures), (8, 0));
    let status = status_of(&stack, &manifest).await;
    assert!(status.finished(), "{status:#?}");
    assert!(status.results.iter().all(|r| r.deliveries == 1 && r.error.is_none()));
    assert_eq!(status.total.orgs_seen, 20);
    let rotated: BTreeSet<OrgId> = status.total.rotated.iter().cloned().collect();
    assert_eq!(status.total.rotated.len(), 20, "no org twice");
    assert_eq!(rotated, all.iter().map(|id| org(id)).collect(), "every org once");
    assert!(status.total.failed.is_empty() && status.total.mismatches.is_empty(), "{:?}", status.total);
    let after = records(&stack, &all).await;
    rotated_exactly_once(&after);
    for (r, id) in after.iter().zip(&all) {
        let account = r.value.account_id.as_deref();
        assert_eq!(account.is_none(), home.contains(id), "org {id} swept with its account");
    }

    // The same slice delivered again (SQS delivers at least once): success, nothing changes.
    let slice = Slice {
        run_id: manifest.run_id.clone(),
        index: 5,
        account: Some(A1.into()),
        orgs: vec![org("m10"), org("m13")],
        evaluated_at: due(),
        full_check: true,
        dry_run: false,
    };
    let before = status_of(&stack, &manifest).await;
    assert_eq!(before.results.iter().find(|r| r.index == 5).unwrap().orgs, 2, "the slice as dispatched");
    queues
        .sqs
        .send_message()
        .queue_url(&queues.url)
        .message_body(serde_json::to_string(&slice).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await,
        (1, 0),
        "answered as a success"
    );
    let again = records(&stack, &all).await;
    for (b, a) in after.iter().zip(&again) {
        assert_eq!(a.etag, b.etag, "org {}: not written again", a.value.org_id);
    }
    assert_eq!(status_of(&stack, &manifest).await, before, "the run's results unchanged");
}

/// A registry that stands still at a chosen point, as a worker whose process
/// dies there: loads of `frozen` orgs never return, nor does the commit
/// of key version 2 of `freeze_commit_of`.
struct Freezing<'a> {
    inner: &'a dyn Registry,
    frozen: BTreeSet<OrgId>,
    freeze_commit_of: Option<OrgId>,
    /// How many calls stand still.
    stopped: std::sync::atomic::AtomicUsize,
}

impl<'a> Freezing<'a> {
    fn new(inner: &'a dyn Registry, frozen: &[&str], freeze_commit_of: Option<&str>) -> Self {
        let frozen = frozen.iter().map(|id| org(id)).collect();
        Self { inner, frozen, freeze_commit_of: freeze_commit_of.map(org), stopped: Default::default() }
    }

    async fn stand_still(&self) {
        self.stopped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
}

#[async_trait::async_trait]
impl Passthrough for Freezing<'_> {
    fn inner(&self) -> &dyn Registry {
        self.inner
    }
    async fn before_load(&self, o: &OrgId) {
        if self.frozen.contains(o) {
            self.stand_still().await;
        }
    }
    async fn on_update(&self, record: &OrgRecord, etag: &str) -> Result<String, PortError> {
        // The commit of a rotation: the claim released with a new current key.
        let commit = record.pending.is_none() && record.current.as_ref().is_some_and(|c| c.version == 2);
        if self.freeze_commit_of.as_ref() == Some(&record.org_id) && commit {
            self.stand_still().await;
        }
        self.inner.update(record, etag).await
    }
}

/// Delivers the queue's one message to a worker that dies (its future
/// dropped) once `done` has rotated and `stops` calls stand still where
/// `registry` freezes; the message comes back after its visibility timeout.
async fn crash_after(stack: &Stack, queues: &Queues, registry: &Freezing<'_>, done: &str, stops: usize) {
    let message = queues.receive().await.expect("the slice");
    let ports = Ports { registry, ..stack.function(Function::SweepWorker).ports() };
    let settings = stack.config.sweep_settings();
    let slices = queues.slices(stack, Function::SweepWorker);
    let worker = handle_slices(queues.event(&message), ports, Some(&slices), &settings, Duration::from_secs(20));
    let there = async {
        loop {
            let r = stack.adapters.registry.load(&org(done)).await.unwrap().unwrap().value;
            let stopped = registry.stopped.load(std::sync::atomic::Ordering::SeqCst);
            if r.current.as_ref().is_some_and(|c| c.version == 2) && r.audit_outbox.is_empty() && stopped == stops {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        answer = worker => panic!("the worker was to stand still, it answered {answer:?}"),
        reached = tokio::time::timeout(Duration::from_secs(20), there) => reached.expect("the worker got there"),
    }
    // The worker's future is dropped here: the process died.
    // Not deleted: in flight, or visible again once its visibility timeout passed.
    let (visible, in_flight) = queues.depth(&queues.url).await;
    assert_eq!(visible + in_flight, 1, "the message is still in the queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_between_two_orgs_leaves_the_rest_of_the_slice_to_the_redelivery() {
    let stack = Stack::with_members(&[Member::Deployed(A1)], 10, &[("SWEEP_SLICE_SIZE", "3")]).await;
    let all = ids("c", 3);
    prepare(&stack, &all, false).await;
    let queues = Queues::create(&stack, 3).await;
    let manifest = dispatch_at(&stack, &queues, due()).await;
    assert_eq!(manifest.slices.len(), 1);

    let frozen = Freezing::new(&stack.function(Function::SweepWorker).registry, &["c02", "c03"], None);
    crash_after(&stack, &queues, &frozen, "c01", 2).await;
    let partway = records(&stack, &all).await;
    assert_eq!(partway.iter().map(|r| r.value.current.as_ref().unwrap().version).collect::<Vec<_>>(), [2, 1, 1]);
    assert!(status_of(&stack, &manifest).await.waiting == [0], "no result yet");

    // The message comes back after its visibility timeout; the redelivery finishes the slice.
    assert_eq!(queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await, (1, 0));
    let after = records(&stack, &all).await;
    rotated_exactly_once(&after);
    assert_eq!(after[0].etag, partway[0].etag, "the org done before the crash is not written again");
    let status = status_of(&stack, &manifest).await;
    assert!(status.finished(), "{status:#?}");
    assert_eq!(status.total.rotated, [org("c02"), org("c03")]);
    for id in &all {
        let keys = stack.iam_of(Some(A1)).await.list_access_keys().user_name(format!("org-{id}")).send().await.unwrap();
        assert_eq!(keys.access_key_metadata().len(), 2, "org {id}: the old key in its grace period and the new one");
    }

    // The next run has nothing to do.
    let next = dispatch_at(&stack, &queues, due() + TimeDelta::hours(1)).await;
    assert!(!next.full_check, "the day's full check is done");
    assert_eq!(queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await, (1, 0));
    let status = status_of(&stack, &next).await;
    assert!(status.finished());
    assert_eq!((status.total.orgs_seen, status.total.rotated.len(), status.total.repaired), (3, 0, 0));
    for (b, a) in after.iter().zip(records(&stack, &all).await) {
        assert_eq!(a.etag, b.etag, "org {}: nothing written", a.value.org_id);
    }
}

/// The real clock, `ahead` later: the time a redelivery sees once the
/// message's visibility timeout (90 minutes) has passed.
struct Later(TimeDelta);

impl Clock for Later {
    fn now(&self) -> LeaseTime {
        LeaseTime::from_utc(Utc::now() + self.0)
    }
}

/// A worker that dies in the middle of an org's rotation (its key created,
/// the commit not written) leaves a claim whose lease runs on the real clock.
/// The redelivery, which comes after the message's visibility timeout, long
/// after the lease, decides at the run's same time: it rolls the claim back
/// and rotates the org, and finishes the slice.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_mid_rotation_leaves_a_claim_its_redelivery_rolls_back_and_rotates() {
    let stack =
        Stack::with_members(&[Member::Deployed(A1)], 10, &[("SWEEP_SLICE_SIZE", "3"), ("SWEEP_CONCURRENCY", "1")])
            .await;
    let all = ids("c", 3);
    prepare(&stack, &all, false).await;
    let queues = Queues::create(&stack, 3).await;
    let manifest = dispatch_at(&stack, &queues, due()).await;

    let frozen = Freezing::new(&stack.function(Function::SweepWorker).registry, &["c03"], Some("c02"));
    crash_after(&stack, &queues, &frozen, "c01", 1).await;
    let claimed = stack.adapters.registry.load(&org("c02")).await.unwrap().unwrap().value;
    let pending = claimed.pending.clone().expect("c02's rotation claimed the record");
    assert_eq!(claimed.current.as_ref().unwrap().version, 1, "not committed");
    let keys_of = |id: &'static str| {
        let stack = &stack;
        async move {
            let listed = stack.iam_of(Some(A1)).await.list_access_keys().user_name(format!("org-{id}")).send().await;
            let mut ids: Vec<String> =
                listed.unwrap().access_key_metadata().iter().map(|k| k.access_key_id().unwrap().to_owned()).collect();
            ids.sort();
            ids
        }
    };
    let iam_during = keys_of("c02").await;
    assert_eq!(iam_during.len(), 2, "the old key and the uncommitted new one: {iam_during:?}");
    let uncommitted = iam_during.iter().find(|k| !claimed.known_key_ids().any(|known| known == k.as_str())).cloned();
    let uncommitted = uncommitted.expect("a key the record does not know");

    assert!(pending.lease_until > LeaseTime::from_utc(Utc::now()), "the claim's lease runs on the real clock");

    let after_visibility_timeout = Later(TimeDelta::minutes(90));
    let redelivery = Ports { clock: &after_visibility_timeout, ..stack.function(Function::SweepWorker).ports() };
    assert_eq!(queues.drain(&stack, redelivery).await, (1, 0));
    let status = status_of(&stack, &manifest).await;
    assert!(status.finished());
    assert_eq!(
        status.total.rotated,
        [org("c02"), org("c03")],
        "the redelivery finished c02's rotation: {:#?}",
        status.total
    );
    let r = stack.adapters.registry.load(&org("c02")).await.unwrap().unwrap().value;
    assert!(r.pending.is_none(), "the claim rolled back");
    let current = r.current.unwrap();
    assert_eq!((current.version, current.created_at), (2, due()), "rotated once, at the run's time");
    let iam_after = keys_of("c02").await;
    assert_eq!(iam_after.len(), 2, "{iam_after:?}");
    assert!(!iam_after.contains(&uncommitted), "the uncommitted key is deleted");
    assert!(iam_after.contains(&current.access_key_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slices_of_an_account_whose_role_cannot_be_assumed_end_in_the_dead_letter_queue() {
    let members = [Member::Deployed(A1), Member::Deployed(A2)];
    let stack = Stack::with_members(&members, 10, &[("SWEEP_SLICE_SIZE", "2")]).await;
    let all = ids("d", 6);
    prepare(&stack, &all, false).await; // d01 d03 d05 in A1, d02 d04 d06 in A2
    stack.remove_member_role(A2).await;
    let queues = Queues::create(&stack, 2).await;

    let manifest = dispatch_at(&stack, &queues, due()).await;
    let (deliveries, failures) = queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await;

    let of_a2: Vec<usize> =
        manifest.slices.iter().filter(|s| s.account.as_deref() == Some(A2)).map(|s| s.index).collect();
    assert_eq!(of_a2.len(), 2);
    assert_eq!((deliveries, failures), (2 + 2 * 2, 2 * 2), "A2's slices are received twice each");
    let dead = queues.dead_letters().await;
    assert_eq!(dead.iter().map(|s| s.index).collect::<Vec<_>>(), of_a2, "A2's slices are set aside");
    assert!(dead.iter().all(|s| s.account.as_deref() == Some(A2)));
    assert_eq!(queues.depth(&queues.url).await, (0, 0));

    let status = status_of(&stack, &manifest).await;
    assert!(!status.finished());
    let failing: Vec<usize> = status.failing().map(|r| r.index).collect();
    assert_eq!(failing, of_a2);
    let role = common::member_role_arn(A2);
    for result in status.failing() {
        let error = result.error.as_deref().unwrap();
        assert!(error.contains(&format!("the role {role} of account {A2} could not be assumed")), "{error}");
        assert_eq!(result.deliveries, 2);
    }
    assert!(status.results.iter().filter(|r| !of_a2.contains(&r.index)).all(|r| r.complete && r.error.is_none()));
    let mut rotated = status.total.rotated.clone();
    rotated.sort();
    assert_eq!(rotated, [org("d01"), org("d03"), org("d05")], "A1's orgs are rotated");
    assert!(status.total.failed.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_run_of_a_day_checks_every_org_fully_and_once_it_finished_the_next_run_does_not() {
    let stack = Stack::start_with_env(&[("SWEEP_SLICE_SIZE", "1")]).await;
    let all = vec![common::ORG_A.to_owned(), common::ORG_B.to_owned()];
    prepare(&stack, &all, true).await;
    let queues = Queues::create(&stack, 3).await;
    let day = DateTime::parse_from_rfc3339("2026-11-23T05:00:00Z").unwrap().with_timezone(&Utc);

    let first = dispatch_at(&stack, &queues, day).await;
    assert!(first.full_check);
    // The first run has not finished: the next one checks fully too.
    let second = dispatch_at(&stack, &queues, day + TimeDelta::minutes(30)).await;
    assert!(second.full_check);
    assert_eq!(queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await, (4, 0));
    let status = status_of(&stack, &second).await;
    assert!(status.finished() && status.total.full_check, "{status:#?}");

    assert_eq!((first.full_check_completed.as_ref(), second.full_check_completed.as_ref()), (None, None));
    let third = dispatch_at(&stack, &queues, day + TimeDelta::hours(1)).await;
    assert!(!third.full_check, "the day's full check finished");
    // The heartbeat: the dispatch that recorded it names the run (its metric says 1).
    assert_eq!(third.full_check_completed.as_ref(), Some(&second.run_id));
    queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await;
    assert!(!status_of(&stack, &third).await.total.full_check);
    let later = dispatch_at(&stack, &queues, day + TimeDelta::hours(2)).await;
    assert!(!later.full_check);
    assert_eq!(later.full_check_completed, None, "once a day");
    queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await;

    let next_day = dispatch_at(&stack, &queues, day + TimeDelta::days(1)).await;
    assert!(next_day.full_check, "a new day");
    queues.drain(&stack, stack.function(Function::SweepWorker).ports()).await;
    assert!(status_of(&stack, &next_day).await.finished());
    let recorded = dispatch_at(&stack, &queues, day + TimeDelta::days(1) + TimeDelta::hours(1)).await;
    assert!(!recorded.full_check);
    assert_eq!(recorded.full_check_completed.as_ref(), Some(&next_day.run_id));
}
