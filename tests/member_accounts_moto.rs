//! Member accounts on a real local AWS endpoint (moto): three accounts with
//! member-account.yaml's role deployed (see `Stack::with_members`), the org
//! users placed in them by room, their keys' whole lifecycle with credential
//! enforcement on (the member role's own policy decides what the functions
//! may do there), the isolation of the orgs, and an account whose role was
//! never deployed.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Function, Member, Stack};
use s3_key_rotation::core::accounts::{load_placement, placed_orgs};
use s3_key_rotation::core::domain::DecisionTime;
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
    let a = &stack.enrollment_adapters();
    enroll(&a.registry, &a.keys, &a.audit, &settings, &org(id), t0(), "test")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn rotate_at(stack: &Stack, id: &str, at: DateTime<Utc>) -> Rotated {
    let request = RotationRequest {
        org: org(id),
        now: DecisionTime::from(at),
        trigger: Trigger::Api,
        actor: "admin@example.com".into(),
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: None,
        grace: None,
    };
    rotate(stack.function(Function::RotateKey).ports(), &stack.config.rotation_settings(), &request)
        .await
        .expect("rotated")
}

fn key_of(rotated: &Rotated) -> (String, String) {
    (rotated.access_key_id.clone(), rotated.secret_access_key.expose_secret().to_owned())
}

async fn run(stack: &Stack, at: DateTime<Utc>) -> Summary {
    let request =
        SweepRequest { now: DecisionTime::from(at), dry_run: false, deadline: None, margin: std::time::Duration::ZERO };
    let summary =
        sweep(stack.function(Function::SweepWorker).ports(), &stack.config.sweep_settings(), &request).await.unwrap();
    assert!(summary.failed.is_empty() && summary.mismatches.is_empty(), "{summary:?}");
    summary
}

async fn record(stack: &Stack, id: &str) -> s3_key_rotation::core::domain::OrgRecord {
    stack.adapters.registry.load(&org(id)).await.unwrap().expect("a record").value
}

#[tokio::test(flavor = "multi_thread")]
async fn orgs_are_placed_by_room_and_the_one_no_account_can_take_is_refused() {
    let stack = Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2), Member::Deployed(A3)], 2, &[]).await;
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

/// The vault's current secret of the org (the home account's), as a consumer reads it.
async fn vault_current(stack: &Stack, id: &str) -> (String, String) {
    let secrets = s3_key_rotation::aws::Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true).secrets;
    let secret = secrets
        .get_secret_value()
        .secret_id(format!("s3-key-rotation/org-{id}"))
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("the org's secret");
    let value: serde_json::Value = serde_json::from_str(secret.secret_string().unwrap()).unwrap();
    (value["accessKeyId"].as_str().unwrap().to_owned(), value["secretAccessKey"].as_str().unwrap().to_owned())
}

/// The access keys IAM has for the org's user in `account`: (id, active).
async fn iam_keys(stack: &Stack, account: &str, id: &str) -> Vec<(String, bool)> {
    let listed = stack.iam_of(Some(account)).await.list_access_keys().user_name(format!("org-{id}")).send().await;
    let mut keys: Vec<(String, bool)> = listed
        .expect("the user's keys")
        .access_key_metadata()
        .iter()
        .map(|k| (k.access_key_id().unwrap().to_owned(), k.status() == Some(&aws_sdk_iam::types::StatusType::Active)))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_account_orgs_key_rotates_retires_and_expires_under_the_member_roles_policy() {
    let stack = Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2), Member::Deployed(A3)], 10, &[]).await;
    stack.aws.enforce_auth();
    let id = common::ORG_A;
    stack.enroll(&[id], t0()).await;
    assert_eq!(record(&stack, id).await.account_id.as_deref(), Some(A1));
    let user = stack.iam_of(Some(A1)).await.get_user().user_name(format!("org-{id}")).send().await.unwrap();
    assert_eq!(
        user.user.unwrap().permissions_boundary.and_then(|b| b.permissions_boundary_arn),
        Some(format!("arn:aws:iam::{A1}:policy/s3-key-rotation-org-user-boundary")),
        "created through the enrollment role, under the boundary of its own account"
    );

    // The first key, issued by a manual rotation, reads the org's prefix.
    let first = rotate_at(&stack, id, t0()).await;
    let first_key = key_of(&first);
    assert!(stack.can_read((&first_key.0, &first_key.1), id).await, "the first key reads its prefix");
    assert_eq!(iam_keys(&stack, A1, id).await, [(first_key.0.clone(), true)], "the key is in account {A1}");

    // A second manual rotation: the old key stops working at once.
    let t1 = t0() + TimeDelta::minutes(1);
    let second = rotate_at(&stack, id, t1).await;
    let second_key = key_of(&second);
    assert_eq!(second.version, 2);
    assert!(!stack.can_read((&first_key.0, &first_key.1), id).await, "the old key stops working");
    assert!(stack.can_read((&second_key.0, &second_key.1), id).await, "the new key works");

    // Automatic rotation by the sweep when due, with its 24 h grace period.
    let a = stack.function(Function::RotationPolicy);
    let change = PolicyChange::enable("30d".parse().unwrap()).unwrap();
    update_policy(&a.registry, &a.audit, &org(id), change, t1, "admin", None).await.unwrap();
    let due = t1 + TimeDelta::days(30);
    assert!(run(&stack, due - TimeDelta::seconds(1)).await.rotated.is_empty(), "not a second early");
    assert_eq!(run(&stack, due).await.rotated, [org(id)]);
    let current = record(&stack, id).await.current.unwrap();
    assert_eq!((current.version, current.created_at), (3, due));
    let third_key = vault_current(&stack, id).await;
    assert_eq!(third_key.0, current.access_key_id, "the vault holds the current key");
    assert!(stack.can_read((&third_key.0, &third_key.1), id).await, "the automatic key works");
    assert!(stack.can_read((&second_key.0, &second_key.1), id).await, "its predecessor during the grace period");
    assert!(run(&stack, due + TimeDelta::hours(24) - TimeDelta::seconds(1)).await.retired == 0);
    assert!(stack.can_read((&second_key.0, &second_key.1), id).await);
    assert_eq!(run(&stack, due + TimeDelta::hours(24)).await.retired, 1);
    assert!(!stack.can_read((&second_key.0, &second_key.1), id).await, "and not after");
    assert!(stack.can_read((&third_key.0, &third_key.1), id).await);

    // The 90-day rule: with automatic rotation off, the key expires at created + 90 d.
    update_policy(&a.registry, &a.audit, &org(id), PolicyChange::Disable, due + TimeDelta::days(2), "admin", None)
        .await
        .unwrap();
    let expiry = due + TimeDelta::days(90);
    assert!(run(&stack, expiry - TimeDelta::seconds(1)).await.expired.is_empty());
    assert!(stack.can_read((&third_key.0, &third_key.1), id).await);
    assert_eq!(run(&stack, expiry).await.expired, [org(id)]);
    assert!(!stack.can_read((&third_key.0, &third_key.1), id).await, "the expired key no longer reads");
    assert_eq!(record(&stack, id).await.state, KeyState::Expired);
    let keys = iam_keys(&stack, A1, id).await;
    assert!(keys.iter().all(|(_, active)| !active), "no active key left in {A1}: {keys:?}");
    assert!(stack.users_of(None).await == ["rotation-admin"], "nothing in the home account");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orgs_key_reads_no_other_orgs_prefix_in_its_account_another_one_or_the_home_account() {
    let stack = Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2), Member::Deployed(A3)], 10, &[]).await;
    // An org enrolled before the member accounts were added: its user is in the home account.
    let (home, home_config) = stack.home_only_adapters();
    let settings = home_config.enroll_settings().unwrap();
    enroll(&home.registry, &home.keys, &home.audit, &settings, &org("2000"), t0(), "test").await.unwrap();
    stack.enroll(&["2001", "2002", "2003", "2004"], t0()).await;
    put_logs(&stack, &["2000", "2001", "2002", "2003", "2004"]).await;
    stack.aws.enforce_auth();
    let placed = [("2000", None), ("2001", Some(A1)), ("2002", Some(A2)), ("2003", Some(A3)), ("2004", Some(A1))];
    let mut keys = Vec::new();
    for (id, account) in placed {
        assert_eq!(record(&stack, id).await.account_id.as_deref(), account, "org {id}");
        keys.push((id, key_of(&rotate_at(&stack, id, t0()).await)));
    }
    assert!(stack.users_of(None).await.contains(&"org-2000".to_string()));

    for (id, key) in &keys {
        for (other, _) in placed {
            let reads = stack.can_read((&key.0, &key.1), other).await;
            assert_eq!(reads, *id == other, "the key of org {id} reading org {other}'s prefix");
        }
    }
    assert!(!stack.can_read(("AKIAUNKNOWN000000000", "nope"), "2001").await, "enforcement is on");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_whose_role_cannot_be_assumed_is_passed_over_by_enrollments_and_fails_its_slices_only() {
    use s3_key_rotation::core::fanout::{dispatch, run_status, sweep_slice};
    let stack =
        Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2), Member::Undeployed(GONE)], 10, &[]).await;
    stack.enroll(&["3001", "3002"], t0()).await; // A1, A2: the first listed among equals

    // The third would have the most room in GONE, whose role was never
    // deployed: that account is passed over (else, keeping the most room, it
    // would take and fail every enrollment) and the org goes to A1.
    try_enroll(&stack, "3003").await.expect("placed elsewhere");
    assert_eq!(record(&stack, "3003").await.account_id.as_deref(), Some(A1));
    let (placement, _) = load_placement(&stack.adapters.registry).await.unwrap();
    assert_eq!(placement.count(GONE), 0, "no place taken: {placement:?}");
    assert_eq!((placement.count(A1), placement.count(A2)), (2, 1));
    assert!(placed_orgs(&stack.adapters.registry, GONE).await.unwrap().is_empty(), "no marker");

    // When no other account can take the org, the refusal is the answer, named.
    let alone = Stack::with_members(&[Member::Undeployed(GONE)], 10, &[]).await;
    let err = try_enroll(&alone, "3004").await.unwrap_err();
    // Enrollment goes through the account's enrollment role.
    let role = format!("arn:aws:iam::{GONE}:role/s3-key-rotation-enrollment");
    assert!(err.contains(&format!("the role {role} of account {GONE} could not be assumed")), "{err}");
    assert!(err.contains("AccessDenied") || err.contains("Not authorized"), "STS's reason: {err}");
    assert!(alone.adapters.registry.load(&org("3004")).await.unwrap().is_none(), "no record");
    assert_eq!(load_placement(&alone.adapters.registry).await.unwrap().0.count(GONE), 0);

    // An account that worked and no longer does (its role deleted): the
    // sweep's slices of that account fail, naming the role; the others finish.
    let stack =
        Stack::with_members(&[Member::Deployed(A1), Member::Deployed(A2)], 10, &[("SWEEP_SLICE_SIZE", "2")]).await;
    stack.enroll(&["3001", "3002", "3003", "3004", "3005"], t0()).await;
    let a = stack.function(Function::RotationPolicy);
    for id in ["3001", "3002", "3003", "3004", "3005"] {
        rotate_at(&stack, id, t0()).await;
        let change = PolicyChange::enable("30d".parse().unwrap()).unwrap();
        update_policy(&a.registry, &a.audit, &org(id), change, t0(), "admin", None).await.unwrap();
    }
    let (dispatcher, a) = (stack.function(Function::ScheduledRotation), stack.function(Function::SweepWorker));
    stack.remove_member_role(A2).await;
    stack.aws.enforce_auth();

    let queue = s3_key_rotation::core::memory::MemoryQueue::default();
    let due = t0() + TimeDelta::days(30);
    let manifest =
        dispatch(&dispatcher.registry, &queue, &stack.config.members.member_roles, 2, DecisionTime::from(due), false)
            .await
            .unwrap();
    assert_eq!(manifest.orgs, 5);
    let slices = queue.take();
    assert_eq!(slices.len(), manifest.slices.len());
    for slice in &slices {
        let result = sweep_slice(a.ports(), &stack.config.sweep_settings(), slice, None, std::time::Duration::ZERO)
            .await
            .unwrap();
        if slice.account.as_deref() == Some(A2) {
            assert!(!result.complete, "{result:?}");
            let error = result.error.as_deref().unwrap_or_default();
            assert!(
                error.contains(&format!(
                    "the role {} of account {A2} could not be assumed",
                    common::member_role_arn(A2)
                )),
                "{error}"
            );
            assert_eq!(result.summary.orgs_seen, 0, "nothing of the account was touched");
        } else {
            assert!(result.complete && result.error.is_none(), "{result:?}");
        }
    }
    let status = run_status(&a.registry, None).await.unwrap().expect("the run");
    let failing: Vec<(usize, Option<&str>)> = status.failing().map(|r| (r.index, r.account.as_deref())).collect();
    let of_a2: Vec<(usize, Option<&str>)> =
        manifest.slices.iter().filter(|s| s.account.as_deref() == Some(A2)).map(|s| (s.index, Some(A2))).collect();
    assert!(!of_a2.is_empty());
    assert_eq!(failing, of_a2, "exactly the slices of {A2} fail: {status:#?}");
    assert!(!status.finished());
    let mut rotated = status.total.rotated.clone();
    rotated.sort();
    assert_eq!(rotated, [org("3001"), org("3003"), org("3005")], "every org of {A1} rotated");
    assert!(status.total.failed.is_empty(), "{:?}", status.total.failed);
    for id in ["3002", "3004"] {
        assert_eq!(record(&stack, id).await.current.unwrap().version, 1, "org {id} of {A2} untouched");
    }
}

/// No function can create a user in a member account: the runtime role they
/// assume may not, and the enrollment role (which may, under the boundary)
/// trusts only the operators.
#[tokio::test(flavor = "multi_thread")]
async fn the_functions_can_neither_create_a_user_nor_assume_the_enrollment_role() {
    use aws_credential_types::provider::ProvideCredentials;
    let stack = Stack::with_members(&[Member::Deployed(A1)], 10, &[]).await;
    // The functions that may assume the member accounts' roles (the dispatcher
    // and rotation-policy may assume none).
    for function in [Function::RotateKey, Function::SweepWorker] {
        let sdk = stack.function_sdk(function);
        let assume = |role: String| {
            let sdk = sdk.clone();
            async move {
                // A session the local endpoint leaves out of the granted = used record:
                // its refusals are this test's probes, not missing statements.
                let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                    .session_name("refusal-probe")
                    .external_id(common::EXTERNAL_ID)
                    .configure(&sdk)
                    .build()
                    .await;
                provider.provide_credentials().await.map(|_| provider)
            }
        };
        let enrollment = assume(format!("arn:aws:iam::{A1}:role/s3-key-rotation-enrollment")).await;
        assert!(enrollment.is_err(), "{function:?} assumed the enrollment role");
        let runtime = assume(common::member_role_arn(A1)).await.expect("the runtime role");
        {
            let iam = aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&sdk).credentials_provider(runtime).build(),
            );
            let created = iam.create_user().user_name("org-9999999").path("/managed-s3/").send().await;
            let err = created.expect_err("the runtime role created a user");
            let status = err.raw_response().map(|r| r.status().as_u16());
            assert_eq!(status, Some(403), "{function:?}: refused, not failed otherwise: {err:?}");
        }
    }
    assert!(!stack.users_of(Some(A1)).await.contains(&"org-9999999".to_owned()));
}

/// The runtime role's trust admits the home account's roles by their path
/// (rotate-key's `/{stack}/rotate-key/`, sweep-worker's `/{stack}/sweep-worker/`), not by
/// a name: a role holding every right whose name merely starts with the home stack's
/// (another stack's function) is refused; the same role under rotate-key's path is
/// admitted. The local endpoint takes the caller's aws:PrincipalArn with its role's path,
/// as AWS does.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_role_trusts_the_functions_roles_by_their_path_not_by_a_name_prefix() {
    use aws_config::sts::AssumeRoleProvider;
    use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
    let stack = Stack::with_members(&[Member::Deployed(A1)], 10, &[]).await;
    let iam = stack.iam_of(None).await;
    let operator = stack.aws.sdk(&stack.admin.0, &stack.admin.1);
    let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{}:user/rotation-admin", common::HOME_ACCOUNT)},
        "Action": "sts:AssumeRole"}]});
    let everything = serde_json::json!({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]});
    let mut admitted = Vec::new();
    for (path, name) in [
        ("/", "s3-key-rotation-staging-RotateKeyFunctionRole-probe"),
        ("/s3-key-rotation/rotate-key/", "s3-key-rotation-RotateKeyFunctionRole-probe"),
    ] {
        iam.create_role()
            .role_name(name)
            .path(path)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap();
        iam.put_role_policy()
            .role_name(name)
            .policy_name("everything")
            .policy_document(everything.to_string())
            .send()
            .await
            .unwrap();
        // Sessions the local endpoint leaves out of the granted = used record (probes).
        let caller = AssumeRoleProvider::builder(format!("arn:aws:iam::{}:role{path}{name}", common::HOME_ACCOUNT))
            .session_name("refusal-probe")
            .configure(&operator)
            .build()
            .await;
        caller.provide_credentials().await.expect("the probe role is assumable");
        let as_caller = operator.to_builder().credentials_provider(SharedCredentialsProvider::new(caller)).build();
        let runtime = AssumeRoleProvider::builder(common::member_role_arn(A1))
            .session_name("refusal-probe")
            .external_id(common::EXTERNAL_ID)
            .configure(&as_caller)
            .build()
            .await;
        admitted.push(runtime.provide_credentials().await.is_ok());
    }
    assert_eq!(admitted, [false, true], "refused by name, admitted by rotate-key's path");
}
