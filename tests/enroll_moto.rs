//! `s3-key-rotation enroll` (the real CLI binary) against the local AWS endpoint.

mod common;

use common::{cli, Stack};
use s3_key_rotation::core::domain::{KeyState, OrgId};
use s3_key_rotation::core::ports::Registry;

#[tokio::test(flavor = "multi_thread")]
async fn enrolling_creates_a_read_only_user_and_a_keyless_record_and_twice_changes_nothing() {
    let stack = Stack::start().await;

    let (ok, out, err) = cli(&stack, &["enroll", "--org", "1234567"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("enrolled org 1234567: IAM user /managed-s3/org-1234567 reads s3://logs/1234567/"), "{out}");

    let org = OrgId::parse("1234567").unwrap();
    let first = stack.adapters.registry.load(&org).await.unwrap().expect("a record");
    assert_eq!(first.value.state, KeyState::Enabled);
    assert!(first.value.current.is_none(), "no key until the first rotation");
    let iam = s3_key_rotation::aws::Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true).iam;
    let user = iam.get_user().user_name("org-1234567").send().await.unwrap().user.unwrap();
    assert_eq!(user.path, "/managed-s3/");
    let boundary = user.permissions_boundary.expect("the org user is created under a permissions boundary");
    assert_eq!(
        boundary.permissions_boundary_arn.as_deref(),
        Some("arn:aws:iam::123456789012:policy/s3-key-rotation-org-user-boundary"),
        "template.yaml's OrgUserBoundary"
    );
    let policy = iam
        .get_user_policy()
        .user_name("org-1234567")
        .policy_name(s3_key_rotation::aws::iam::POLICY_NAME)
        .send()
        .await
        .unwrap();
    let document = urlencoding::decode(&policy.policy_document).unwrap().into_owned();
    assert!(document.contains("arn:aws:s3:::logs/1234567/*"), "{document}");

    let (ok, out, _) = cli(&stack, &["enroll", "--org", "1234567"]);
    assert!(ok);
    assert!(out.contains("enrolled already; nothing changed"), "{out}");
    let second = stack.adapters.registry.load(&org).await.unwrap().unwrap();
    assert_eq!(second, first, "same record, same etag");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_refuses_bad_input_and_missing_settings_clearly() {
    let stack = Stack::start().await;
    let (ok, _, err) = cli(&stack, &["enroll", "--org", "../etc"]);
    assert!(!ok);
    assert!(err.contains("invalid org id '../etc'"), "{err}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_s3-key-rotation"))
        .args(["enroll", "--org", "1"])
        .env_remove("REGISTRY_BUCKET")
        .env("AWS_ENDPOINT_URL", stack.aws.endpoint())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("REGISTRY_BUCKET is not set"), "{err}");

    let (ok, _, err) = cli(&stack, &["status", "--org", "999"]);
    assert!(!ok);
    assert!(err.contains("Not found IAM key info for orgId: 999"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orgs_own_principal_can_be_granted_read_access_to_its_secret() {
    let stack = Stack::start().await;
    let reader = "arn:aws:iam::210987654321:role/log-reader";

    let (ok, out, err) = cli(&stack, &["enroll", "--org", "1234567", "--reader-principal", reader]);

    assert!(ok, "{out}{err}");
    // The secret's full ARN (random suffix and all): what a consumer in the org's account names it by.
    let arn = out.lines().find_map(|l| l.split(" may read the secret ").nth(1)).expect("the grant's line");
    assert!(
        arn.starts_with("arn:aws:secretsmanager:us-east-1:123456789012:secret:s3-key-rotation/org-1234567-"),
        "{out}"
    );
    let (ok, status, err) = cli(&stack, &["status", "--org", "1234567"]);
    assert!(ok, "{err}");
    assert!(status.lines().any(|l| l == format!("secret   {arn}")), "{status}");
    let secrets = s3_key_rotation::aws::Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true).secrets;
    let policy = secrets.get_resource_policy().secret_id("s3-key-rotation/org-1234567").send().await.unwrap();
    let policy: serde_json::Value = serde_json::from_str(policy.resource_policy().unwrap()).unwrap();
    assert_eq!(policy["Statement"][0]["Principal"]["AWS"], reader);
    assert_eq!(
        policy["Statement"][0]["Action"],
        serde_json::json!(["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"])
    );

    let (ok, _, err) = cli(&stack, &["enroll", "--org", "1234567", "--reader-principal", "*"]);
    assert!(!ok);
    assert!(err.contains("is not an IAM principal ARN"), "{err}");
}

/// The org users in the home account.
async fn org_users(stack: &Stack) -> Vec<String> {
    stack.users_of(None).await.into_iter().filter(|u| u.starts_with("org-")).collect()
}

async fn nothing_created(stack: &Stack, what: &str) {
    assert_eq!(org_users(stack).await, Vec::<String>::new(), "{what}: no IAM user");
    assert!(stack.adapters.registry.list_orgs().await.unwrap().is_empty(), "{what}: no record");
}

/// An enrollment file is checked whole first: a bad line anywhere (here the
/// last) is named with its line and nothing is created, in IAM or the
/// registry; a file without a header or meant for `enroll --adopt` is refused
/// naming the columns `enroll --csv` reads; a bad `--reader-principal` creates
/// nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_enrollment_file_creates_nothing_and_says_which_columns_it_reads() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orgs.csv");
    let path = csv.to_str().unwrap();

    std::fs::write(&csv, "orgId,readerPrincipal\n1234001\n1234002,not-an-arn\n1234001\n").unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--csv", path]);
    assert!(!ok && err.contains("nothing was enrolled; 2 problems"), "{err}");
    assert!(err.contains("line 3: readerPrincipal 'not-an-arn' is not an IAM principal ARN"), "{err}");
    assert!(err.contains("line 4: org 1234001 is listed twice"), "{err}");
    nothing_created(&stack, "a bad reader").await;

    let accepts = "`enroll --csv` reads the columns orgId (required) and readerPrincipal (optional)";
    std::fs::write(&csv, "orgId,iamUser\n1234567,admin\n").unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--csv", path]);
    assert!(!ok && err.contains("the column iamUser is one of `enroll --adopt --csv`"), "{err}");
    assert!(err.contains(accepts), "{err}");
    nothing_created(&stack, "an adoption file").await;

    std::fs::write(&csv, "1234001\n1234002,arn:aws:iam::210987654321:role/log-reader\n").unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--csv", path]);
    assert!(!ok && err.contains("line 1: the first line must name the columns") && err.contains(accepts), "{err}");
    nothing_created(&stack, "no header").await;

    let (ok, _, err) = cli(&stack, &["enroll", "--org", "1234001", "--reader-principal", "not-an-arn"]);
    assert!(!ok && err.contains("is not an IAM principal ARN"), "{err}");
    nothing_created(&stack, "a bad --reader-principal").await;

    // The same file, corrected, enrolls every org and grants its reader.
    let reader = "arn:aws:iam::210987654321:role/log-reader";
    std::fs::write(&csv, format!("orgId,readerPrincipal\n1234001\n1234002,{reader}\n")).unwrap();
    let (ok, out, err) = cli(&stack, &["enroll", "--csv", path]);
    assert!(ok, "{err}");
    let granted = format!("{reader} may read the secret arn:aws:secretsmanager:");
    assert!(out.lines().any(|l| l.contains(&granted) && l.contains(":secret:s3-key-rotation/org-1234002-")), "{out}");
    assert_eq!(org_users(&stack).await, ["org-1234001", "org-1234002"]);
    assert_eq!(stack.adapters.registry.list_orgs().await.unwrap().len(), 2);
}
