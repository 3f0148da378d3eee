//! The scheduled evaluation against a real local AWS endpoint (moto), with
//! credential enforcement on: event times far ahead move the registry's clock.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, TimeDelta, Utc};
use common::{Function, Stack, ORG_A};
use s3_key_rotation::aws::Clients;
use s3_key_rotation::core::domain::DecisionTime;
use s3_key_rotation::core::domain::{KeyState, OrgId, Trigger};
use s3_key_rotation::core::policy::{update_policy, PolicyChange};
use s3_key_rotation::core::ports::Registry;
use s3_key_rotation::core::rotation::{rotate, Rotated, RotationRequest};
use s3_key_rotation::core::sweep::{sweep, Summary, SweepRequest};
use secrecy::ExposeSecret;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T04:51:11Z").unwrap().with_timezone(&Utc)
}

fn org() -> OrgId {
    OrgId::parse(ORG_A).unwrap()
}

/// An enrolled org whose first key was issued at `t0`.
async fn stack_with_a_key() -> (Stack, Rotated) {
    let stack = Stack::start().await;
    stack.enroll(&[ORG_A], t0()).await;
    let first = rotate_now(&stack, t0(), Trigger::Api).await;
    (stack, first)
}

async fn rotate_now(stack: &Stack, at: DateTime<Utc>, trigger: Trigger) -> Rotated {
    let request = RotationRequest {
        org: org(),
        now: DecisionTime::from(at),
        trigger,
        actor: "admin@example.com".into(),
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: None,
        grace: None,
    };
    // An API rotation runs in rotate-key, an automatic one in the sweep.
    let function = if trigger == Trigger::Api { Function::RotateKey } else { Function::SweepWorker };
    rotate(stack.function(function).ports(), &stack.config.rotation_settings(), &request).await.unwrap()
}

async fn run(stack: &Stack, at: DateTime<Utc>) -> Summary {
    let request =
        SweepRequest { now: DecisionTime::from(at), dry_run: false, deadline: None, margin: std::time::Duration::ZERO };
    let summary =
        sweep(stack.function(Function::SweepWorker).ports(), &stack.config.sweep_settings(), &request).await.unwrap();
    assert!(summary.failed.is_empty(), "{summary:?}");
    summary
}

fn key_of(rotated: &Rotated) -> (String, String) {
    (rotated.access_key_id.clone(), rotated.secret_access_key.expose_secret().to_owned())
}

/// The vault's current secret of the org, as a consumer reads it, the stage
/// named (without one, AWS and the local endpoint answer AWSCURRENT too; moto
/// 5.2.5 alone answers the first version ever stored).
async fn vault_current(stack: &Stack) -> serde_json::Value {
    let clients = Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true);
    let secret = clients
        .secrets
        .get_secret_value()
        .secret_id(format!("s3-key-rotation/org-{ORG_A}"))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("the org's secret");
    serde_json::from_str(secret.secret_string().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotates_automatically_when_due_and_its_predecessor_works_only_during_the_grace_period() {
    let (stack, first) = stack_with_a_key().await;
    let a = stack.function(Function::RotationPolicy);
    let change = PolicyChange::enable("30d".parse().unwrap()).unwrap();
    update_policy(&a.registry, &a.audit, &org(), change, t0(), "admin", None).await.unwrap();
    stack.aws.enforce_auth();
    let due = t0() + TimeDelta::days(30);
    let first_key = key_of(&first);

    assert!(run(&stack, due - TimeDelta::seconds(1)).await.rotated.is_empty(), "not a second before");
    let summary = run(&stack, due).await;

    assert_eq!(summary.rotated, vec![org()]);
    let record = a.registry.load(&org()).await.unwrap().unwrap().value;
    let current = record.current.unwrap();
    assert_eq!(current.created_at, due);
    let secret = vault_current(&stack).await;
    assert_eq!(secret["accessKeyId"], current.access_key_id.as_str(), "the vault holds the current key");
    let second_key = (current.access_key_id.clone(), secret["secretAccessKey"].as_str().unwrap().to_owned());
    assert!(stack.can_read((&second_key.0, &second_key.1), ORG_A).await, "the vault's secret works");
    assert!(stack.can_read((&first_key.0, &first_key.1), ORG_A).await, "the old key works during the grace period");

    run(&stack, due + TimeDelta::hours(24) - TimeDelta::seconds(1)).await;
    assert!(stack.can_read((&first_key.0, &first_key.1), ORG_A).await);
    assert_eq!(run(&stack, due + TimeDelta::hours(24)).await.retired, 1);
    assert!(!stack.can_read((&first_key.0, &first_key.1), ORG_A).await, "and not after");
    assert!(stack.can_read((&second_key.0, &second_key.1), ORG_A).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_maximum_age_the_org_loses_access_while_the_log_writer_keeps_writing_until_a_manual_rotation() {
    let (stack, first) = stack_with_a_key().await;
    // The log writer: a separate principal that puts the org's logs.
    let admin = Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true);
    admin.iam.create_user().user_name("log-writer").send().await.unwrap();
    admin
        .iam
        .put_user_policy()
        .user_name("log-writer")
        .policy_name("write-logs")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::logs/*"}]}"#)
        .send()
        .await
        .unwrap();
    let writer = admin.iam.create_access_key().user_name("log-writer").send().await.unwrap().access_key.unwrap();
    stack.aws.enforce_auth();
    let first_key = key_of(&first);
    let expiry = t0() + TimeDelta::days(90);

    assert!(run(&stack, expiry - TimeDelta::seconds(1)).await.expired.is_empty());
    assert!(stack.can_read((&first_key.0, &first_key.1), ORG_A).await);
    let summary = run(&stack, expiry).await;

    assert_eq!(summary.expired, vec![org()]);
    assert!(!stack.can_read((&first_key.0, &first_key.1), ORG_A).await, "the org lost access");
    let record = stack.adapters.registry.load(&org()).await.unwrap().unwrap().value;
    assert_eq!(record.state, KeyState::Expired);
    let put = stack
        .aws
        .s3(&writer.access_key_id, &writer.secret_access_key)
        .put_object()
        .bucket("logs")
        .key(format!("{ORG_A}/2027-02-21.log"))
        .body(ByteStream::from_static(b"logging continues\n"))
        .send()
        .await;
    assert!(put.is_ok(), "the log writer keeps writing: {put:?}");

    // A manual rotation restores access.
    let restored = rotate_now(&stack, expiry + TimeDelta::days(1), Trigger::Api).await;
    let restored_key = key_of(&restored);
    assert!(stack.can_read((&restored_key.0, &restored_key.1), ORG_A).await);
    assert_eq!(vault_current(&stack).await["accessKeyId"], restored.access_key_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_warnings_are_published_once_per_threshold() {
    let (stack, first) = stack_with_a_key().await;
    // Read the events back as a consumer would: an EventBridge rule to a queue.
    let clients = Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true);
    let sqs = aws_sdk_sqs::Client::new(&stack.aws.sdk(&stack.admin.0, &stack.admin.1));
    let queue = sqs.create_queue().queue_name("notifications").send().await.unwrap().queue_url.unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    clients
        .events
        .put_rule()
        .name("key-events")
        .event_pattern(r#"{"source":["s3-key-rotation"]}"#)
        .send()
        .await
        .unwrap();
    clients
        .events
        .put_targets()
        .rule("key-events")
        .targets(aws_sdk_eventbridge::types::Target::builder().id("queue").arn(arn).build().unwrap())
        .send()
        .await
        .unwrap();
    let receive = || async {
        let mut out = Vec::new();
        loop {
            let got = sqs.receive_message().queue_url(&queue).max_number_of_messages(10).send().await.unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                sqs.delete_message().queue_url(&queue).receipt_handle(m.receipt_handle.unwrap()).send().await.unwrap();
                out.push(serde_json::from_str::<serde_json::Value>(&m.body.unwrap()).unwrap());
            }
        }
        out
    };
    assert!(receive().await.is_empty(), "the first rotation's event came before the rule");
    let expiry = t0() + TimeDelta::days(90);

    for (at, expected) in [
        (expiry - TimeDelta::days(15), None),
        (expiry - TimeDelta::days(14), Some("14d")),
        (expiry - TimeDelta::days(14), None),
        (expiry - TimeDelta::days(10), None),
        (expiry - TimeDelta::days(7), Some("7d")),
        (expiry - TimeDelta::hours(23), Some("1d")),
        (expiry - TimeDelta::hours(1), None),
    ] {
        run(&stack, at).await;
        let events = receive().await;
        match expected {
            None => assert!(events.is_empty(), "at {at}: {events:?}"),
            Some(threshold) => {
                assert_eq!(events.len(), 1, "at {at}: {events:?}");
                assert_eq!(events[0]["detail-type"], "Bucket Key Expiring");
                assert_eq!(events[0]["source"], "s3-key-rotation");
                assert_eq!(events[0]["detail"]["threshold"], threshold);
                assert_eq!(events[0]["detail"]["accessKeyId"], first.access_key_id.as_str());
                assert!(
                    !events[0].to_string().contains(first.secret_access_key.expose_secret()),
                    "no secret in an event"
                );
            }
        }
    }
    run(&stack, expiry).await;
    let events = receive().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["detail-type"], "Bucket Key Expired");
}
