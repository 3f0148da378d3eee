//! The key vault on the local endpoint, through the operator CLI (the real
//! binary) and the sweep: every secret the service creates names the vault's
//! KMS key, and a deleted org's secret is scheduled for deletion with the
//! recovery window (restorable, readable by no one), never purged.

mod common;

use std::process::Command;

use common::{cli, project_root, venv_bin, Stack, ORG_A, ORG_B};
use s3_key_rotation::aws::{Adapters, Clients};

const READER: &str = "arn:aws:iam::210987654321:role/log-reader";

fn ok(stack: &Stack, args: &[&str]) -> String {
    let (ok, out, err) = cli(stack, args);
    assert!(ok, "{args:?} failed: {out}{err}");
    out
}

fn secret_of(org: &str) -> String {
    format!("s3-key-rotation/org-{org}")
}

/// The vault's key on the stack's endpoint as the template makes it (a
/// symmetric key with rotation on, and an alias), made by the operator: its ARN.
fn create_vault_key(stack: &Stack) -> String {
    let script = "import sys, boto3\n\
                  kms = boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                  \x20   aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
                  key = kms.create_key(Description='s3-key-rotation key vault', KeySpec='SYMMETRIC_DEFAULT',\n\
                  \x20   KeyUsage='ENCRYPT_DECRYPT')['KeyMetadata']\n\
                  kms.enable_key_rotation(KeyId=key['KeyId'])\n\
                  kms.create_alias(AliasName='alias/s3-key-rotation-vault', TargetKeyId=key['KeyId'])\n\
                  print(key['Arn'])\n";
    let output = Command::new(venv_bin().join("python"))
        .args(["-c", script, &stack.aws.endpoint(), &stack.admin.0, &stack.admin.1])
        .current_dir(project_root())
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A stack whose vault has its own KMS key (VAULT_KMS_KEY_ID, as the
/// template sets it), with `extra_env` besides: the stack and the key's ARN.
async fn stack_with_vault_key(extra_env: &[(&str, &str)]) -> (Stack, String) {
    let mut stack = Stack::start_with_env(extra_env).await;
    let key = create_vault_key(&stack);
    assert!(key.starts_with("arn:aws:kms:us-east-1:"), "{key}");
    stack.env.push(("VAULT_KMS_KEY_ID".into(), key.clone()));
    stack.config = common::config_with(&stack.aws.endpoint(), &stack.env);
    let clients = Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true);
    stack.adapters = Adapters::new(&clients, &stack.config);
    (stack, key)
}

fn secrets(stack: &Stack) -> aws_sdk_secretsmanager::Client {
    Clients::from_sdk(stack.aws.sdk(&stack.admin.0, &stack.admin.1), true).secrets
}

#[tokio::test(flavor = "multi_thread")]
async fn every_secret_the_service_creates_is_encrypted_with_the_vault_key() {
    let (stack, key) = stack_with_vault_key(&[]).await;

    // Given one org's secret made by granting its reader, another's by its first rotation.
    ok(&stack, &["enroll", "--org", ORG_A, "--reader-principal", READER]);
    ok(&stack, &["enroll", "--org", ORG_B]);
    ok(&stack, &["rotate", "--org", ORG_B]);
    ok(&stack, &["rotate", "--org", ORG_A]);

    // Then every secret of the vault names the key.
    let listed = secrets(&stack).list_secrets().send().await.unwrap();
    let mut names: Vec<&str> = listed.secret_list().iter().filter_map(|s| s.name()).collect();
    names.sort();
    assert_eq!(names, [secret_of(ORG_A), secret_of(ORG_B)]);
    for name in names {
        let described = secrets(&stack).describe_secret().secret_id(name).send().await.unwrap();
        assert_eq!(described.kms_key_id(), Some(key.as_str()), "{name}");
        assert!(described
            .version_ids_to_stages()
            .is_some_and(|v| v.values().any(|s| s.iter().any(|s| s == "AWSCURRENT"))));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_vault_key_secrets_stay_on_the_aws_managed_key() {
    // The local demo's configuration: VAULT_KMS_KEY_ID unset.
    let stack = Stack::start().await;
    ok(&stack, &["enroll", "--org", ORG_A]);
    ok(&stack, &["rotate", "--org", ORG_A]);
    let described = secrets(&stack).describe_secret().secret_id(secret_of(ORG_A)).send().await.unwrap();
    assert_eq!(described.kms_key_id(), None, "aws/secretsmanager: DescribeSecret omits the key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_orgs_secret_waits_out_the_recovery_window_readable_by_no_one_and_can_be_restored() {
    let (stack, key) = stack_with_vault_key(&[("VAULT_RECOVERY_WINDOW", "7d")]).await;
    ok(&stack, &["enroll", "--org", ORG_A, "--reader-principal", READER]);
    ok(&stack, &["rotate", "--org", ORG_A]);
    let secret = secret_of(ORG_A);
    let before = secrets(&stack).get_secret_value().secret_id(&secret).send().await.unwrap();
    assert!(secrets(&stack).get_resource_policy().secret_id(&secret).send().await.unwrap().resource_policy().is_some());

    // When the org is deleted: scheduled, then swept past its date.
    ok(&stack, &["schedule-deletion", "--org", ORG_A, "--days", "7"]);
    let at = (chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339();
    let run: serde_json::Value = serde_json::from_str(&ok(&stack, &["sweep", "--at", &at])).unwrap();
    assert_eq!(run["deletedOrgs"], serde_json::json!([ORG_A]), "{run}");

    // Then its secret is scheduled for deletion, not purged, and grants no reader.
    let described = secrets(&stack).describe_secret().secret_id(&secret).send().await.expect("still there");
    assert!(described.deleted_date().is_some(), "scheduled for deletion: {described:?}");
    assert_eq!(described.kms_key_id(), Some(key.as_str()));
    let policy = secrets(&stack).get_resource_policy().secret_id(&secret).send().await.unwrap();
    assert_eq!(policy.resource_policy(), None, "the reader was revoked before the deletion");
    let listed = secrets(&stack).list_secrets().send().await.unwrap();
    assert!(listed.secret_list().is_empty(), "a secret scheduled for deletion is not listed");

    // And an operator can still restore it, with its value, within the window.
    secrets(&stack).restore_secret().secret_id(&secret).send().await.expect("restorable");
    let described = secrets(&stack).describe_secret().secret_id(&secret).send().await.unwrap();
    assert_eq!(described.deleted_date(), None);
    let after = secrets(&stack).get_secret_value().secret_id(&secret).send().await.unwrap();
    assert_eq!(after.version_id(), before.version_id());
    assert_eq!(after.secret_string(), before.secret_string());
}
