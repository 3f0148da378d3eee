//! The operator CLI (the real binary) against the local AWS endpoint: every
//! verb as an operator uses it, checked by what the org can and cannot do.

mod common;

use common::{cli, Stack, ORG_A, ORG_B};
use s3_key_rotation::core::domain::{KeyState, OrgId};
use s3_key_rotation::core::ports::Registry;

async fn state(stack: &Stack, org: &str) -> KeyState {
    let org = OrgId::parse(org).unwrap();
    stack.adapters.registry.load(&org).await.unwrap().expect("a record").value.state
}

fn ok(stack: &Stack, args: &[&str]) -> String {
    let (ok, out, err) = cli(stack, args);
    assert!(ok, "{args:?} failed: {out}{err}");
    out
}

fn refused(stack: &Stack, args: &[&str]) -> String {
    let (ok, out, err) = cli(stack, args);
    assert!(!ok, "{args:?} should have failed: {out}");
    err
}

/// The new key's id and secret, from `rotate --show-secret`.
fn rotate(stack: &Stack, org: &str) -> (String, String) {
    let out = ok(stack, &["rotate", "--org", org, "--show-secret"]);
    let id = out.split_whitespace().find(|w| w.starts_with("AKIA")).expect("a key id").to_owned();
    let secret = out.lines().find_map(|l| l.strip_prefix("secret access key: ")).expect("the secret").to_owned();
    (id, secret)
}

#[tokio::test(flavor = "multi_thread")]
async fn enroll_from_csv_then_status_of_all_orgs_as_a_table_and_as_json_lines() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orgs.csv");
    std::fs::write(&csv, format!("orgId,readerPrincipal\n{ORG_A}\n{ORG_B},arn:aws:iam::210987654321:role/reader\n\n"))
        .unwrap();
    let out = ok(&stack, &["enroll", "--csv", csv.to_str().unwrap()]);
    assert!(out.contains(&format!("enrolled org {ORG_A}")), "{out}");
    assert!(out.contains("arn:aws:iam::210987654321:role/reader may read the secret"), "{out}");
    rotate(&stack, ORG_A);

    let table = ok(&stack, &["status"]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("ORG"), "{table}");
    assert!(rows[1].starts_with(ORG_A) && rows[1].contains("Enabled") && rows[1].contains("v1"), "{table}");
    assert!(rows[2].starts_with(ORG_B) && rows[2].contains(" - "), "no key yet: {table}");
    assert_eq!(rows.last().unwrap(), &"2 orgs");

    let lines = ok(&stack, &["status", "--json"]);
    let records: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["orgId"], ORG_A);
    assert!(!lines.contains("secret"), "{lines}");

    // A bad file is refused with its line number, and nothing is enrolled from it.
    std::fs::write(&csv, "orgId\n../etc\n2468135\n").unwrap();
    let err = refused(&stack, &["enroll", "--csv", csv.to_str().unwrap()]);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(ok(&stack, &["status"]).lines().last().unwrap(), "2 orgs");
}

#[tokio::test(flavor = "multi_thread")]
async fn disable_takes_access_away_enable_gives_it_back_and_deletion_can_be_cancelled() {
    let stack = Stack::start().await;
    ok(&stack, &["enroll", "--org", ORG_A]);
    let key = rotate(&stack, ORG_A);
    stack.aws.enforce_auth();
    assert!(stack.can_read((&key.0, &key.1), ORG_A).await);

    let out = ok(&stack, &["disable", "--org", ORG_A]);
    assert!(out.contains("disabled: state Disabled") && out.contains(&key.0), "{out}");
    assert!(!stack.can_read((&key.0, &key.1), ORG_A).await, "a disabled org loses access");
    assert_eq!(state(&stack, ORG_A).await, KeyState::Disabled);
    let err = refused(&stack, &["rotate", "--org", ORG_A]);
    assert!(err.contains("Disabled"), "{err}");

    ok(&stack, &["enable", "--org", ORG_A]);
    assert!(stack.can_read((&key.0, &key.1), ORG_A).await, "enabled again: the same key works");
    assert_eq!(state(&stack, ORG_A).await, KeyState::Enabled);

    let err = refused(&stack, &["schedule-deletion", "--org", ORG_A, "--days", "6"]);
    assert!(err.contains("7..=30") || err.contains("7 to 30"), "{err}");
    let out = ok(&stack, &["schedule-deletion", "--org", ORG_A, "--days", "7"]);
    assert!(out.contains("deleted after"), "{out}");
    assert!(!stack.can_read((&key.0, &key.1), ORG_A).await);
    let err = refused(&stack, &["enable", "--org", ORG_A]);
    assert!(err.contains("PendingDeletion"), "{err}");

    ok(&stack, &["cancel-deletion", "--org", ORG_A]);
    assert_eq!(state(&stack, ORG_A).await, KeyState::Disabled);
    ok(&stack, &["enable", "--org", ORG_A]);
    assert!(stack.can_read((&key.0, &key.1), ORG_A).await);

    let trail = ok(&stack, &["audit", "--org", ORG_A]);
    let actions: Vec<&str> = trail.lines().map(|l| l.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(actions[..5], ["enable", "cancel-deletion", "schedule-deletion", "enable", "disable"], "{trail}");
    assert!(!trail.contains(&key.1), "no secret in the trail");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_sweep_at_a_later_time_and_the_secret_only_on_request() {
    let stack = Stack::start().await;
    ok(&stack, &["enroll", "--org", ORG_A]);
    let out = ok(&stack, &["rotate", "--org", ORG_A]);
    assert!(out.contains("not shown"), "{out}");
    let key_id = out.split_whitespace().find(|w| w.starts_with("AKIA")).unwrap().to_owned();

    let err = refused(&stack, &["policy", "--org", ORG_A, "--enable", "--interval", "6d"]);
    assert!(err.contains("RotationInterval"), "{err}");
    let out = ok(&stack, &["policy", "--org", ORG_A, "--enable", "--interval", "720h"]);
    assert!(out.contains("every 30d"), "{out}");
    let status = ok(&stack, &["status", "--org", ORG_A]);
    assert!(status.contains("automatic rotation Enabled every 30d"), "{status}");

    // 31 days later: a dry run reports the rotation and changes nothing; a real run rotates.
    let at = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let dry: serde_json::Value = serde_json::from_str(&ok(&stack, &["sweep", "--at", &at, "--dry-run"])).unwrap();
    assert_eq!(dry["rotated"], serde_json::json!([]), "{dry}");
    assert!(dry["planned"].to_string().contains("rotate"), "{dry}");
    assert!(ok(&stack, &["status", "--org", ORG_A]).contains(&key_id));
    let run: serde_json::Value = serde_json::from_str(&ok(&stack, &["sweep", "--at", &at])).unwrap();
    assert_eq!(run["rotated"], serde_json::json!([ORG_A]), "{run}");
    let status = ok(&stack, &["status", "--org", ORG_A]);
    assert!(status.contains("current  v2"), "{status}");

    ok(&stack, &["policy", "--org", ORG_A, "--disable"]);
    assert!(ok(&stack, &["status", "--org", ORG_A]).contains("automatic rotation Disabled"));

    let err = refused(&stack, &["disable", "--org", ORG_B]);
    assert!(err.contains(&format!("Not found IAM key info for orgId: {ORG_B}")), "{err}");
    let err = refused(&stack, &["policy", "--org", ORG_A, "--enable"]);
    assert!(err.contains("--interval"), "{err}");
}

/// What a new operator reads: counts in words ("1 org"), a refused `--grace`
/// in the command line's own words, and an audit trail to the second whose
/// first rotation names no previous key.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_speaks_its_own_words_and_the_audit_trail_reads_to_the_second() {
    let stack = Stack::start().await;
    ok(&stack, &["enroll", "--org", ORG_A]);
    assert_eq!(ok(&stack, &["status"]).lines().last().unwrap(), "1 org");

    let err = refused(&stack, &["rotate", "--org", ORG_A, "--grace", "8d"]);
    assert!(err.contains("--grace 8d is longer than the maximum of 7d"), "{err}");
    assert!(!err.contains("previousKeyGracePeriod"), "the API's field name is not the CLI's: {err}");

    let (first, _) = rotate(&stack, ORG_A);
    ok(&stack, &["rotate", "--org", ORG_A, "--grace", "24h"]);
    ok(&stack, &["policy", "--org", ORG_A, "--enable", "--interval", "30d"]);
    ok(&stack, &["schedule-deletion", "--org", ORG_A, "--days", "7"]);
    let trail = ok(&stack, &["audit", "--org", ORG_A]);
    let to_the_second = |line: &str, after: &str| {
        let rest = line.split(after).nth(1).unwrap_or_else(|| panic!("{after:?} in {line}"));
        let stamp = rest.get(..23).unwrap_or(rest);
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S UTC").is_ok(),
            "a time to the second, not {rest:?}"
        );
    };
    // Newest first: the deletion, the policy, the second rotation, the first.
    let rotations: Vec<&str> = trail.lines().filter(|l| l.contains("rotate (Operator)")).collect();
    assert_eq!(rotations.len(), 2, "{trail}");
    to_the_second(rotations[0], "previous key retires at ");
    assert!(rotations[0].contains(&first), "the second rotation names the first key: {trail}");
    assert!(rotations[1].contains("rotate (Operator), first key"), "{trail}");
    assert!(!rotations[1].contains("previous"), "the first key has no predecessor: {trail}");
    let policy = trail.lines().find(|l| l.contains("update rotation policy")).expect("the policy");
    to_the_second(policy, "next at ");
    let deletion = trail.lines().find(|l| l.contains("schedule-deletion")).expect("the deletion");
    to_the_second(deletion, "deleted after ");
}

/// A call the caller's identity may not make is reported with AWS's error code
/// and message (what an operator needs to fix the policy), not a bare status.
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_call_is_reported_with_its_error_code_and_message() {
    let stack = Stack::start().await;
    let iam = stack.iam_of(None).await;
    iam.create_user().user_name("no-rights").send().await.unwrap();
    let key = iam.create_access_key().user_name("no-rights").send().await.unwrap().access_key.unwrap();
    stack.aws.enforce_auth();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_s3-key-rotation"))
        .args(["enroll", "--org", "5550001"])
        .envs(stack.operator_env())
        .env("AWS_ACCESS_KEY_ID", key.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", key.secret_access_key())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("AccessDenied"), "the error code: {err}");
    assert!(err.contains("no-rights") || err.contains("Access Denied"), "the message: {err}");
    assert!(!err.contains("HTTP 403"), "{err}");
    assert!(!err.contains(key.secret_access_key()), "never the secret");
}
