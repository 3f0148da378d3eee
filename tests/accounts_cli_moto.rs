//! The operator CLI's member-account commands (the real binary) against the
//! local AWS endpoint: `enroll` says where it placed an org, `accounts` shows
//! each account's orgs and room and whether its role can be assumed, the
//! managed bucket's policy lets the member accounts in, and `sweep --status`
//! explains that no run was fanned out yet.

mod common;

use std::process::Command;

use common::Stack;
use s3_key_rotation::core::ports::Registry;

const DEPLOYED: &str = "111111111111";
const NOT_DEPLOYED: &str = "222222222222";
const ROLE: &str = "s3-key-rotation-member";

fn role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/{ROLE}")
}

/// The CLI with the stack's environment, two member accounts (one whose role
/// was never deployed) and room for `cap` orgs in each.
fn cli(stack: &Stack, cap: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_s3-key-rotation"))
        .args(args)
        .envs(stack.operator_env())
        .env("MEMBER_ACCOUNT_ROLES", format!("{},{}", role_arn(NOT_DEPLOYED), role_arn(DEPLOYED)))
        .env("ORGS_PER_ACCOUNT", cap)
        .env("MEMBER_ROLE_EXTERNAL_ID", common::EXTERNAL_ID)
        .output()
        .expect("run the CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_show_placement_room_and_which_roles_can_be_assumed() {
    let stack = Stack::start().await;
    stack.deploy_member_account(DEPLOYED);

    // Both have the same room, and the first listed is the one whose role
    // cannot be assumed: it is passed over, and the line says where the org went.
    let (ok, out, err) = cli(&stack, "5", &["enroll", "--org", "1000001"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("enrolled org 1000001 in account {DEPLOYED}")), "{out}");

    let (ok, out, err) = cli(&stack, "5", &["accounts"]);
    assert!(!ok, "a role that cannot be assumed is an error: {out}");
    assert!(err.contains("the role of 1 member account cannot be assumed"), "{err}");
    let row =
        |account: &str| out.lines().find(|l| l.starts_with(account)).unwrap_or_else(|| panic!("{out}")).to_owned();
    let words = |line: String| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(words(row(DEPLOYED))[1..4], ["1", "4", "yes"], "{out}");
    assert_eq!(words(row(NOT_DEPLOYED))[1..4], ["0", "5", "NO"], "{out}");

    // Once both are assumable, enrollments go round them by room, and each
    // line says where the org went.
    stack.deploy_member_account(NOT_DEPLOYED);
    let (ok, out, err) = cli(&stack, "1", &["enroll", "--org", "1000002", "--org", "1000003"]);
    assert!(!ok, "the second new org finds no room: {out}");
    assert_eq!(out.matches(&format!(" in account {NOT_DEPLOYED}: ")).count(), 1, "{out}");
    assert!(err.contains("every member account is full"), "{err}");
    let (ok, out, _) = cli(&stack, "1", &["accounts", "--json"]);
    assert!(ok, "{out}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for row in &rows[1..] {
        assert_eq!(
            (row["orgs"].as_u64(), row["room"].as_u64(), row["assumable"].as_bool()),
            (Some(1), Some(0), Some(true))
        );
    }
    let (ok, out, _) = cli(&stack, "1", &["status"]);
    assert!(ok);
    let placed: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().last()).filter(|a| a.len() == 12).collect();
    assert_eq!(placed.len(), 2, "the status table names each org's account: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bucket_policy_names_the_member_accounts_and_keeps_the_other_statements() {
    let stack = Stack::start().await;
    let s3 = stack.aws.s3(&stack.admin.0, &stack.admin.1);
    let other = r#"{"Version":"2012-10-17","Statement":[{"Sid":"ProviderWrites","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"s3:PutObject","Resource":"arn:aws:s3:::logs/*"}]}"#;
    s3.put_bucket_policy().bucket("logs").policy(other).send().await.unwrap();

    let (ok, printed, err) = cli(&stack, "10", &["accounts", "--bucket-policy"]);
    assert!(ok, "{err}");
    let statement: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let principals = statement["Principal"]["AWS"].to_string();
    assert!(principals.contains(DEPLOYED) && principals.contains(NOT_DEPLOYED), "{principals}");
    let current = s3.get_bucket_policy().bucket("logs").send().await.unwrap().policy.unwrap();
    assert!(!current.contains("S3KeyRotationMemberAccounts"), "printing changes nothing");

    for _ in 0..2 {
        let (ok, out, err) = cli(&stack, "10", &["accounts", "--apply-bucket-policy"]);
        assert!(ok, "{err}");
        assert!(out.contains("bucket logs"), "{out}");
    }
    let policy: serde_json::Value =
        serde_json::from_str(&s3.get_bucket_policy().bucket("logs").send().await.unwrap().policy.unwrap()).unwrap();
    let sids: Vec<&str> = policy["Statement"].as_array().unwrap().iter().filter_map(|s| s["Sid"].as_str()).collect();
    assert_eq!(sids, ["ProviderWrites", "S3KeyRotationMemberAccounts"], "applied twice: one statement");
    let users = policy["Statement"][1]["Condition"]["ArnLike"]["aws:PrincipalArn"].to_string();
    assert!(users.contains(&format!("arn:aws:iam::{DEPLOYED}:user/managed-s3/org-*")), "{users}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_status_before_any_fanned_out_run_says_so() {
    let stack = Stack::start().await;
    let (ok, _, err) = cli(&stack, "10", &["sweep", "--status"]);
    assert!(!ok);
    assert!(err.contains("no fanned-out run yet") && err.contains("SWEEP_QUEUE_URL"), "{err}");
    let (ok, _, err) = cli(&stack, "10", &["sweep", "--status", "--run", "20261124T230000Z"]);
    assert!(!ok);
    assert!(err.contains("no run 20261124T230000Z"), "{err}");
}

/// A count left too high (a crash between a deleted org's two writes) is made
/// the markers' number again by `accounts --recount`, which says what changed.
#[tokio::test(flavor = "multi_thread")]
async fn accounts_recount_brings_a_drifted_count_back_to_the_orgs_placed() {
    let stack = Stack::start().await;
    stack.deploy_member_account(DEPLOYED);
    stack.deploy_member_account(NOT_DEPLOYED);
    let (ok, _, err) = cli(&stack, "5", &["enroll", "--org", "1000001", "--org", "1000002"]);
    assert!(ok, "{err}");
    let registry = &stack.adapters.registry;
    let doc = registry.get_doc("placement.json").await.unwrap().expect("the counts");
    let mut counts: serde_json::Value = serde_json::from_str(&doc.value).unwrap();
    counts["accounts"][DEPLOYED] = 4.into();
    registry.put_doc("placement.json", &counts.to_string(), Some(&doc.etag)).await.unwrap();
    let (ok, out, _) = cli(&stack, "5", &["accounts", "--json"]);
    assert!(ok);
    let orgs_of = |out: &str, account: &str| {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|row| row["account"] == account)
            .and_then(|row| row["orgs"].as_u64())
    };
    assert_eq!(orgs_of(&out, DEPLOYED), Some(4), "the drifted count: {out}");

    let (ok, out, err) = cli(&stack, "5", &["accounts", "--json", "--recount"]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("recount: account {DEPLOYED}: 4 → 1 org")), "{err}");
    assert_eq!((orgs_of(&out, DEPLOYED), orgs_of(&out, NOT_DEPLOYED)), (Some(1), Some(1)), "{out}");
    let (ok, _, err) = cli(&stack, "5", &["accounts", "--recount"]);
    assert!(ok);
    assert!(err.contains("every count matched its markers"), "{err}");
}
