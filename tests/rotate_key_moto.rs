//! rotate-key against a real local AWS endpoint (moto), fed the real event
//! files, with credential enforcement on where a test checks who can read what.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{event, later, parts, Function, Stack, ORG_A, ORG_B};
use s3_key_rotation::api::rotate_key::{handle, RotateKeySettings};
use s3_key_rotation::core::domain::DecisionTime;
use s3_key_rotation::core::domain::OrgId;
use s3_key_rotation::core::ports::Registry;
use s3_key_rotation::core::sweep::{sweep, SweepRequest};

fn settings(stack: &Stack) -> RotateKeySettings {
    RotateKeySettings { caller: stack.config.caller_rules(), rotation: stack.config.rotation_settings() }
}

async fn enrolled_stack() -> Stack {
    let stack = Stack::start().await;
    stack.enroll(&[ORG_A, ORG_B], Utc::now()).await;
    stack
}

/// Rotates through the handler; returns the new key (id, secret) and the body.
async fn rotate(
    stack: &Stack,
    name: &str,
    patch: impl FnOnce(&mut serde_json::Value),
) -> ((String, String), serde_json::Value) {
    let (status, body, headers) =
        parts(handle(event(name, patch), stack.function(Function::RotateKey).ports(), &settings(stack)).await);
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let key = (body["accessKeyId"].as_str().unwrap().to_owned(), body["secretAccessKey"].as_str().unwrap().to_owned());
    (key, body)
}

fn event_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T04:51:11Z").unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_rotation_issues_a_key_that_reads_its_own_prefix_and_no_other() {
    let stack = enrolled_stack().await;
    stack.aws.enforce_auth();

    let (key, body) = rotate(&stack, "rotate-key.json", |_| {}).await;

    assert_eq!(body["orgId"], ORG_A);
    assert_eq!(body["keyVersion"], 1);
    assert_eq!(body["oldKeyId"], "");
    assert_eq!(body["currentKeyId"], key.0.as_str());
    assert_eq!(body["previousAccessKeyId"], serde_json::Value::Null);
    assert_eq!(body["createdAt"], "2026-11-22T04:51:11Z");
    assert_eq!(body["keyCreationDate"], "2026-11-22T04:51:11Z");
    assert_eq!(body["expiresAt"], "2027-02-20T04:51:11Z", "created + 90 days");
    assert!(stack.can_read((&key.0, &key.1), ORG_A).await, "reads its own prefix");
    assert!(!stack.can_read((&key.0, &key.1), ORG_B).await, "not another org's");
    assert!(!stack.can_read(("AKIAUNKNOWN000000000", "nope"), ORG_A).await, "enforcement is on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_rotation_makes_the_old_key_fail_and_the_new_one_work() {
    let stack = enrolled_stack().await;
    stack.aws.enforce_auth();
    let (first, _) = rotate(&stack, "rotate-key.json", |_| {}).await;
    assert!(stack.can_read((&first.0, &first.1), ORG_A).await);

    let (second, body) = rotate(&stack, "rotate-key-reference-route.json", later(60)).await;

    assert_eq!(body["keyVersion"], 2);
    assert_eq!(body["oldKeyId"], first.0.as_str());
    assert_eq!(body["previousKeyStatus"], "Inactive");
    assert!(!stack.can_read((&first.0, &first.1), ORG_A).await, "the old key stops working");
    assert!(stack.can_read((&second.0, &second.1), ORG_A).await, "the new key works");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_without_key_info_gets_the_reference_not_found() {
    let stack = enrolled_stack().await;
    let request =
        event("rotate-key.json", |e| e["requestContext"]["authorizer"]["jwt"]["claims"]["org_id"] = "999".into());

    let (status, body, _) =
        parts(handle(request, stack.function(Function::RotateKey).ports(), &settings(&stack)).await);

    assert_eq!(status, 404);
    assert_eq!(
        body,
        serde_json::json!({
            "timestamp": "2026-11-22T04:51:11",
            "status": 404,
            "error": "Not found IAM key info for orgId: 999",
            "path": "/iam/rotate-key"
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_two_key_quota_is_never_exceeded_across_many_rotations() {
    let stack = enrolled_stack().await;
    let iam = &stack.adapters;
    let mut last = None;
    for i in 0..8 {
        let name = if i % 2 == 0 { "rotate-key-grace-period.json" } else { "rotate-key.json" };
        let (key, body) = rotate(&stack, name, later(i * 120)).await;
        assert_eq!(body["keyVersion"], i + 1);
        let listed = s3_key_rotation::core::ports::AccessKeys::list_keys(
            &iam.keys,
            &s3_key_rotation::core::ports::IamUser::home("org-1234567"),
        )
        .await
        .unwrap();
        assert!(listed.len() <= 2, "rotation {i}: {listed:?}");
        assert!(listed.iter().any(|k| k.access_key_id == key.0 && k.active));
        last = Some(key);
    }
    let last = last.unwrap();
    stack.aws.enforce_auth();
    assert!(stack.can_read((&last.0, &last.1), ORG_A).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grace_period_keeps_the_old_key_working_until_it_is_retired() {
    let stack = enrolled_stack().await;
    stack.aws.enforce_auth();
    let (first, _) = rotate(&stack, "rotate-key.json", |_| {}).await;

    let (second, body) = rotate(&stack, "rotate-key-grace-period.json", later(60)).await;

    assert_eq!(body["previousKeyStatus"], "Active");
    let rotated_at = event_time() + TimeDelta::seconds(60);
    assert_eq!(
        body["previousKeyRetiresAt"],
        (rotated_at + TimeDelta::hours(24)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
    );
    assert!(stack.can_read((&first.0, &first.1), ORG_A).await, "old key works during the grace period");
    assert!(stack.can_read((&second.0, &second.1), ORG_A).await);

    // Retirement is the sweep's.
    let settings = stack.config.sweep_settings();
    let ports = stack.function(Function::SweepWorker).ports();
    let sweep_at = |now| {
        let settings = settings.clone();
        async move {
            let request = SweepRequest {
                now: DecisionTime::from(now),
                dry_run: false,
                deadline: None,
                margin: std::time::Duration::ZERO,
            };
            sweep(ports, &settings, &request).await.unwrap()
        }
    };
    let just_before = rotated_at + TimeDelta::hours(24) - TimeDelta::seconds(1);
    assert_eq!(sweep_at(just_before).await.retired, 0);
    assert!(stack.can_read((&first.0, &first.1), ORG_A).await, "still works a second before");
    assert_eq!(sweep_at(rotated_at + TimeDelta::hours(24)).await.retired, 1);
    assert!(!stack.can_read((&first.0, &first.1), ORG_A).await, "retired when due");
    assert!(stack.can_read((&second.0, &second.1), ORG_A).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_change_nothing() {
    let stack = enrolled_stack().await;
    rotate(&stack, "rotate-key.json", |_| {}).await;
    let org = OrgId::parse(ORG_A).unwrap();
    let before = stack.adapters.registry.load(&org).await.unwrap().unwrap();

    for (name, status, says) in [
        ("rotate-key-wrong-scope.json", 403, "lacks the required scope"),
        ("rotate-key-not-json.json", 415, "must be application/json"),
    ] {
        let (got, body, _) =
            parts(handle(event(name, later(60)), stack.function(Function::RotateKey).ports(), &settings(&stack)).await);
        assert_eq!(got, status, "{name}: {body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{name}: {body}");
        assert_eq!(body["path"], "/iam/rotate-key");
    }
    let after = stack.adapters.registry.load(&org).await.unwrap().unwrap();
    assert_eq!(after, before, "same record, same etag");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_failure_answers_503_and_leaves_the_record_as_it_was() {
    let stack = enrolled_stack().await;
    let (first, _) = rotate(&stack, "rotate-key.json", |_| {}).await;
    let org = OrgId::parse(ORG_A).unwrap();
    let before = stack.adapters.registry.load(&org).await.unwrap().unwrap().value;
    // The org's IAM user's keys cannot be listed: IAM answers an error for the user.
    let admin = s3_key_rotation::aws::Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true);
    admin
        .iam
        .delete_user_policy()
        .user_name("org-1234567")
        .policy_name(s3_key_rotation::aws::iam::POLICY_NAME)
        .send()
        .await
        .unwrap();
    admin.iam.delete_access_key().user_name("org-1234567").access_key_id(&first.0).send().await.unwrap();
    admin.iam.delete_user().user_name("org-1234567").send().await.unwrap();

    let (status, body, _) = parts(
        handle(event("rotate-key.json", later(60)), stack.function(Function::RotateKey).ports(), &settings(&stack))
            .await,
    );

    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("AWS failed"), "{body}");
    let after = stack.adapters.registry.load(&org).await.unwrap().unwrap().value;
    assert_eq!(after, before);
}

/// A client whose answer was lost retries with the same `Idempotency-Key`:
/// the secret comes back from Secrets Manager, the key still works, nothing
/// else rotated.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_idempotency_key_returns_the_same_working_key_from_the_vault() {
    let stack = enrolled_stack().await;
    stack.aws.enforce_auth();
    let (first, _) = rotate(&stack, "rotate-key.json", |_| {}).await;
    let with_key = |seconds: i64| {
        move |e: &mut serde_json::Value| {
            later(seconds)(e);
            e["headers"]["idempotency-key"] = "lost-answer-1".into();
        }
    };
    let (second, body) = rotate(&stack, "rotate-key.json", with_key(60)).await;
    let (again, body_again) = rotate(&stack, "rotate-key.json", with_key(120)).await;

    assert_eq!(again, second, "the same key id and secret");
    assert_eq!(body_again["keyVersion"], body["keyVersion"]);
    assert_eq!(body_again["oldKeyId"], first.0.as_str());
    assert!(stack.can_read((&again.0, &again.1), ORG_A).await, "the key handed out again works");
    let record = stack.adapters.registry.load(&OrgId::parse(ORG_A).unwrap()).await.unwrap().unwrap().value;
    assert_eq!(record.current.unwrap().access_key_id, second.0);
    assert_eq!(record.recent_rotations.len(), 2, "the repeat was not charged to the rate limit");
    let stored = serde_json::to_string(&record.idempotent_rotations).unwrap();
    assert!(stored.contains("lost-answer-1") && !stored.contains(&second.1), "remembered, without the secret");
}

/// The vault's current version is not where the record says (a rotation
/// crashed before moving it): the next rotation still makes its own current.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_label_is_moved_from_wherever_it_is() {
    let stack = enrolled_stack().await;
    let (first, _) = rotate(&stack, "rotate-key.json", |_| {}).await;
    let (second, _) = rotate(&stack, "rotate-key.json", later(60)).await;
    let record = stack.adapters.registry.load(&OrgId::parse(ORG_A).unwrap()).await.unwrap().unwrap().value;
    let (v1, v2) =
        (record.previous.unwrap().key.vault_version.unwrap(), record.current.unwrap().vault_version.unwrap());
    // Put AWSCURRENT back on the first version, as if the second rotation crashed after its commit.
    let secrets = aws_sdk_secretsmanager::Client::new(&stack.aws.sdk(&stack.admin.0, &stack.admin.1));
    let secret = stack.adapters.vault.secret_name(&OrgId::parse(ORG_A).unwrap());
    let moved = secrets.update_secret_version_stage().secret_id(&secret).version_stage("AWSCURRENT");
    moved.move_to_version_id(&v1).remove_from_version_id(&v2).send().await.unwrap();

    let (third, _) = rotate(&stack, "rotate-key.json", later(120)).await;

    let current = secrets.get_secret_value().secret_id(&secret).version_stage("AWSCURRENT").send().await.unwrap();
    let value: serde_json::Value = serde_json::from_str(current.secret_string().unwrap()).unwrap();
    assert_eq!(value["accessKeyId"], third.0.as_str());
    assert_ne!(third.0, second.0);
    assert_ne!(third.0, first.0);
}
