//! Member accounts on a real local AWS endpoint (moto): three accounts with
//! member-account.yaml's role deployed (see `Stack::with_members`), the org
//! users placed in them by room, their keys' whole lifecycle with credential
//! enforcement on (the member role's own policy decides what the functions
//! may do there), the isolation of the orgs, and an account whose role was
//! never deployed.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Member, Stack, HOME_ACCOUNT, MEMBER_ROLE};
use s3_key_rotation::core::accounts::{load_placement, placed_orgs};
use s3_key_rotation::core::domain::{KeyState, OrgId, Trigger};
use s3_key_rotation::core::enrollment::enroll;
use s3_key_rotation::core::policy::{update_policy, PolicyChange};
use s3_key_rotation::core::ports::Registry;
use s3_key_rotation::core::rotation::{rotate, Rotated, RotationRequest};
use s3_key_rotation::core::sweep::{sweep, Summary, SweepRequest};
use secrecy::ExposeSecret;

const A1: &str = "111111111111";
const A2: &str = "222222222222";
const A3: &str = "333333333333";
/// Named in MEMBER_ACCOUNT_ROLES, its role never deployed.
const GONE: &str = "444444444444";

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T04:51:11Z").unwrap().with_timezone(&Utc)
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

/// Puts a log object for each org (the stack has ORG_A's and ORG_B's).
async fn put_logs(stack: &Stack, orgs: &[&str]) {
    let s3 = stack.aws.s3(&stack.admin.0, &stack.admin.1);
    for o in orgs {
        s3.put_object()
            .bucket("logs")
            .key(format!("{o}/2026-11-22.log"))
            .body(aws_sdk_s3::primitives::ByteStream::from(format!("log lines of org {o}\n").into_bytes()))
            .send()
            .await
            .expect("put log");
    }
}

async fn try_enroll(stack: &Stack, id: &str) -> Result<(), String> {
    let settings = stack.config.enroll_settings().unwrap();
    let a = &stack.adapters;
    enroll(&a.registry, &a.keys, &a.audit, &settings, &org(id), t0(), "test").await.map(|_| ()).map_err(|e| e.to_string())
}

async fn rotate_at(stack: &Stack, id: &str, at: DateTime<Utc>) -> Rotated {
    let request = RotationRequest {
        org: org(id),
        now: at,
        trigger: Trigger::Api,
        actor: "admin@example.com".into(),
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: None,
        grace: None,
    };
    rotate(stack.adapters.ports(), &stack.config.rotation_settings(), &request).await.expect("rotated")
}

fn key_of(rotated: &Rotated) -> (String, String) {
    (rotated.access_key_id.clone(), rotated.secret_access_key.expose_secret().to_owned())
}

async fn run(stack: &Stack, at: DateTime<Utc>) -> Summary {
    let request = SweepRequest { now: at, dry_run: false, deadline: None, margin: std::time::Duration::ZERO };
    let summary = sweep(stack.adapters.ports(), &stack.config.sweep_settings(), &request).await.unwrap();
    assert!(summary.failed.is_empty() && summary.mismatches.is_empty(), "{summary:?}");
    summary
}

async fn record(stack: &Stack, id: &str) -> s3_key_rotation::core::domain::OrgRecord {
    stack.adapters.registry.load(&org(id)).await.unwrap().expect("a record").value
}

#[tokio::test(flavor = "multi_thread")]
async fn orgs_are_placed_by_room_and_the_one_no_account_can_take_is_refused() {
    let stack =
        Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2), Member::Deployed(A3)], 2, &[]).await;
    // Enforced from the start: the member role's policy must allow every call.
    stack.aws.enforce_auth();
    let ids = ["1001", "1002", "1003", "1004", "1005", "1006"];
    for id in ids {
        try_enroll(&stack, id).await.unwrap_or_else(|e| panic!("{id}: {e}"));
    }

    let expected = [A1, A2, A3, A1, A2, A3];
    for (id, account) in ids.iter().zip(expected) {
        let r = record(&stack, id).await;
        assert_eq!(r.account_id.as_deref(), Some(account), "org {id}: the account with the most room");
        assert_eq!(r.state, KeyState::Enabled);
    }
    for (account, orgs) in [(A1, ["1001", "1004"]), (A2, ["1002", "1005"]), (A3, ["1003", "1006"])] {
        let users = stack.users_of(Some(account)).await;
        assert_eq!(users, orgs.map(|o| format!("org-{o}")), "the users of account {account}");
        let user = stack.iam_of(Some(account)).await.get_user().user_name(format!("org-{}", orgs[0])).send().await;
        let user = user.expect("the user exists in its account").user.unwrap();
        assert_eq!(user.path, "/managed-s3/");
        assert_eq!(user.arn, format!("arn:aws:iam::{account}:user/managed-s3/org-{}", orgs[0]));
        assert_eq!(placed_orgs(&stack.adapters.registry, account).await.unwrap(), orgs.map(org), "markers");
    }
    assert_eq!(stack.users_of(None).await, ["rotation-admin"], "no org user in the home account");

    let before = load_placement(&stack.adapters.registry).await.unwrap().0;
    let err = try_enroll(&stack, "1007").await.unwrap_err();
    assert!(
        err.contains("every member account is full (3 accounts of 2 orgs each)") && err.contains("ORGS_PER_ACCOUNT"),
        "{err}"
    );
    assert!(stack.adapters.registry.load(&org("1007")).await.unwrap().is_none(), "no record");
    let (after, _) = load_placement(&stack.adapters.registry).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.accounts.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{after:?}");
    for account in [A1, A2, A3] {
        assert!(!stack.users_of(Some(account)).await.contains(&"org-1007".to_string()));
    }
    assert_eq!(stack.users_of(None).await, ["rotation-admin"]);

    // Enrolling a placed org again changes nothing and takes no place.
    try_enroll(&stack, "1004").await.unwrap();
    assert_eq!(load_placement(&stack.adapters.registry).await.unwrap().0, before);
}
