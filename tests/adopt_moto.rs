//! Orgs that existed before this service, on the local endpoint with
//! credentials enforced: IAM users with live keys made long ago (moto runs
//! under libfaketime, so a key made "100 days ago" carries that date) are
//! adopted, keep their consumers reading through every expiry warning, then
//! follow the normal life of a key; a key that has been used is never deleted
//! without first being deactivated and reported.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{cli, Stack};
use s3_key_rotation::core::domain::OrgId;
use s3_key_rotation::core::ports::Registry;

const LOG: &str = "2026-11-22.log";

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The sweep's summary at `at`, as the CLI prints it.
fn sweep_at(stack: &Stack, at: DateTime<Utc>) -> serde_json::Value {
    let (ok, out, err) = cli(stack, &["sweep", "--at", &iso(at)]);
    assert!(ok, "sweep at {at}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// An org as a provider had it before this service: user `org-{org}` under
/// the users' path, an inline policy of its own, a log object, and a key made
/// `days_ago` days ago for each entry (its secret returned).
async fn existing_org(stack: &Stack, org: &str, days_ago: &[i64]) -> Vec<(String, String)> {
    let iam = stack.iam_of(None).await;
    iam.create_user().user_name(format!("org-{org}")).path("/managed-s3/").send().await.unwrap();
    let legacy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::logs/{org}/*"}}]}}"#
    );
    iam.put_user_policy()
        .user_name(format!("org-{org}"))
        .policy_name("legacy-read")
        .policy_document(legacy)
        .send()
        .await
        .unwrap();
    stack
        .aws
        .s3(&stack.admin.0, &stack.admin.1)
        .put_object()
        .bucket("logs")
        .key(format!("{org}/{LOG}"))
        .body(format!("log lines of org {org}\n").into_bytes().into())
        .send()
        .await
        .unwrap();
    let mut keys = Vec::new();
    for days in days_ago {
        stack.aws.set_clock(&format!("-{days}d"));
        let key = iam.create_access_key().user_name(format!("org-{org}")).send().await.unwrap().access_key.unwrap();
        keys.push((key.access_key_id, key.secret_access_key));
    }
    stack.aws.set_clock("+0");
    keys
}

async fn reads(stack: &Stack, key: &(String, String), org: &str) -> bool {
    stack.aws.s3(&key.0, &key.1).get_object().bucket("logs").key(format!("{org}/{LOG}")).send().await.is_ok()
}

/// One key 100 days old: a plain enroll is refused; a dry run changes
/// nothing; the adoption keeps the key's real date with a migration window;
/// the day's full check deletes nothing; the key reads through every warning
/// and stops at the window's end; a rotation brings the org back and fills
/// the vault.
#[tokio::test(flavor = "multi_thread")]
async fn an_org_with_a_key_older_than_the_maximum_age_is_adopted_and_cut_off_only_after_its_warnings() {
    let stack = Stack::start_faked(&[]).await;
    let org = "4200001";
    let key = existing_org(&stack, org, &[100]).await.remove(0);
    stack.aws.enforce_auth();
    let now = Utc::now();

    let (ok, _, err) = cli(&stack, &["enroll", "--org", org]);
    assert!(!ok && err.contains("enroll --adopt"), "{err}");
    let (ok, out, err) = cli(&stack, &["enroll", "--adopt", "--dry-run", "--org", org]);
    assert!(ok, "{err}");
    assert!(out.contains("would adopt org 4200001") && out.contains(&key.0), "{out}");
    let registry = &stack.adapters.registry;
    assert!(registry.load(&OrgId::parse(org).unwrap()).await.unwrap().is_none(), "the dry run wrote nothing");

    let (ok, out, err) = cli(&stack, &["enroll", "--adopt", "--org", org]);
    assert!(ok, "{err}");
    assert!(out.contains("1 org: 1 adopted"), "{out}");
    assert!(err.contains("inline policy legacy-read"), "the user's other policy is reported: {err}");
    let user = stack.iam_of(None).await.get_user().user_name(format!("org-{org}")).send().await.unwrap().user.unwrap();
    assert_eq!(
        user.permissions_boundary.and_then(|b| b.permissions_boundary_arn),
        Some("arn:aws:iam::123456789012:policy/s3-key-rotation-org-user-boundary".to_owned()),
        "the adopted user is put under the org users' boundary"
    );
    let record = registry.load(&OrgId::parse(org).unwrap()).await.unwrap().unwrap().value;
    let current = record.current.clone().unwrap();
    assert_eq!(current.access_key_id, key.0);
    assert!(now - current.created_at > TimeDelta::days(99), "the real IAM date: {}", current.created_at);
    let (_, status, _) = cli(&stack, &["status", "--org", org]);
    assert!(status.contains("migration window") && status.contains("secret not held"), "{status}");

    let day0 = sweep_at(&stack, now + TimeDelta::minutes(1));
    assert_eq!(day0["fullCheck"], true);
    assert_eq!((day0["deletedKeys"].as_u64(), day0["expired"].as_array().map(Vec::len)), (Some(0), Some(0)), "{day0}");
    assert!(day0["mismatches"].as_array().unwrap().is_empty(), "no vault mismatch for an adopted key: {day0}");
    assert!(reads(&stack, &key, org).await, "the adopted key reads on the day of adoption");
    let mut warned = day0["warned"].as_u64().unwrap();
    for days in [8, 13] {
        let run = sweep_at(&stack, now + TimeDelta::days(days) + TimeDelta::hours(1));
        assert!(run["expired"].as_array().unwrap().is_empty(), "day {days}: {run}");
        assert!(reads(&stack, &key, org).await, "day {days}: still reading");
        warned += run["warned"].as_u64().unwrap();
    }
    assert_eq!(warned, 3, "every warning went out");
    let past = sweep_at(&stack, now + TimeDelta::days(15));
    assert_eq!(past["expired"], serde_json::json!([org]));
    assert!(!reads(&stack, &key, org).await, "past its window the 90-day rule applies");

    let (ok, out, err) = cli(&stack, &["rotate", "--org", org]);
    assert!(ok, "{err}");
    let record = registry.load(&OrgId::parse(org).unwrap()).await.unwrap().unwrap().value;
    let new = record.current.unwrap();
    assert!(new.vault_version.is_some(), "the first rotation fills the vault: {out}");
    let vault = stack.aws.sdk(&stack.admin.0, &stack.admin.1);
    let secret = aws_sdk_secretsmanager::Client::new(&vault)
        .get_secret_value()
        .secret_id(format!("s3-key-rotation/org-{org}"))
        .send()
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(secret.secret_string().unwrap()).unwrap();
    let new_key = (new.access_key_id.clone(), value["secretAccessKey"].as_str().unwrap().to_owned());
    assert_eq!(value["accessKeyId"], new.access_key_id.as_str());
    assert!(reads(&stack, &new_key, org).await, "the rotated key reads");
}

/// Two keys: the newer becomes current, the older previous. The older one
/// keeps being used after the adoption (a consumer has not switched): when its
/// grace period ends the sweep reports it (`stillInUse`) and, by default,
/// retires it. A key made outside the service and used is deactivated and
/// reported, not deleted; one never used is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_previous_key_still_in_use_and_an_unknown_used_key_are_reported_before_anything_is_lost() {
    let stack = Stack::start_faked(&[]).await;
    let org = "4200002";
    let keys = existing_org(&stack, org, &[30, 10]).await;
    stack.aws.enforce_auth();
    let now = Utc::now();
    let (ok, _, err) = cli(&stack, &["enroll", "--adopt", "--org", org]);
    assert!(ok, "{err}");
    let record = stack.adapters.registry.load(&OrgId::parse(org).unwrap()).await.unwrap().unwrap().value;
    assert_eq!(record.current.as_ref().unwrap().access_key_id, keys[1].0, "the newer key is current");
    assert_eq!(record.previous.as_ref().unwrap().key.access_key_id, keys[0].0);
    assert!(reads(&stack, &keys[0], org).await, "the consumer still on the older key (its use is recorded)");

    let after_grace = sweep_at(&stack, now + TimeDelta::days(2));
    assert_eq!(after_grace["stillInUse"], serde_json::json!([org]), "{after_grace}");
    assert_eq!(after_grace["retired"], 1, "RETIRE_IN_USE=report retires it on time, and says so");
    assert!(!reads(&stack, &keys[0], org).await);

    // A key made outside the service: used, then found by the day's full check.
    let iam = stack.iam_of(None).await;
    let (made, _) = (iam.update_access_key().user_name(format!("org-{org}")).access_key_id(&keys[0].0), ());
    made.status(aws_sdk_iam::types::StatusType::Active).send().await.unwrap();
    let forgotten = sweep_at(&stack, now + TimeDelta::days(10)); // retention over: the record forgets the old key
    assert_eq!(forgotten["deletedKeys"], 1, "{forgotten}");
    let stray = iam.create_access_key().user_name(format!("org-{org}")).send().await.unwrap().access_key.unwrap();
    let stray = (stray.access_key_id, stray.secret_access_key);
    assert!(reads(&stack, &stray, org).await, "used once");
    let found = sweep_at(&stack, now + TimeDelta::days(11));
    assert_eq!(found["deletedKeys"], 0, "a used key is not deleted: {found}");
    let reported = found["mismatches"].as_array().unwrap();
    assert!(reported.iter().any(|m| m["reason"].as_str().unwrap().contains(&stray.0)), "{found}");
    assert!(!reads(&stack, &stray, org).await, "deactivated");
    let listed = iam.list_access_keys().user_name(format!("org-{org}")).send().await.unwrap();
    assert!(listed.access_key_metadata().iter().any(|k| k.access_key_id() == Some(stray.0.as_str())), "still there");
    let later = sweep_at(&stack, now + TimeDelta::days(19));
    assert_eq!(later["deletedKeys"], 1, "deleted once KEY_RETENTION has passed: {later}");
}

/// A CSV of a few hundred orgs is checked whole first (a bad line adopts
/// nothing), then adopted with a summary; running it again changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_csv_of_hundreds_of_orgs_is_checked_whole_then_adopted_once() {
    let stack = Stack::start_faked(&[]).await;
    let iam = stack.iam_of(None).await;
    let orgs: Vec<String> = (0..300).map(|i| format!("43{i:05}")).collect();
    stack.aws.set_clock("-20d");
    for org in &orgs {
        iam.create_user().user_name(format!("org-{org}")).path("/managed-s3/").send().await.unwrap();
        iam.create_access_key().user_name(format!("org-{org}")).send().await.unwrap();
    }
    stack.aws.set_clock("+0");
    stack.aws.enforce_auth();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, format!("orgId,iamUser\n{}\nnot an org!,\n{},org-x\n", orgs[0], orgs[0])).unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--adopt", "--csv", bad.to_str().unwrap()]);
    assert!(
        !ok && err.contains("nothing was adopted") && err.contains("line 3") && err.contains("listed twice"),
        "{err}"
    );
    assert!(stack.adapters.registry.list_orgs().await.unwrap().is_empty());

    let good = dir.path().join("orgs.csv");
    let lines: Vec<String> = orgs.iter().map(|o| format!("{o},org-{o}")).collect();
    std::fs::write(&good, format!("orgId,iamUser\n{}\n", lines.join("\n"))).unwrap();
    let (ok, out, err) = cli(&stack, &["enroll", "--adopt", "--csv", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("300 orgs: 300 adopted, 0 enrolled already, 0 failed"), "{out}");
    assert_eq!(stack.adapters.registry.list_orgs().await.unwrap().len(), 300);
    let (ok, out, _) = cli(&stack, &["enroll", "--adopt", "--csv", good.to_str().unwrap()]);
    assert!(ok && out.contains("0 adopted, 300 enrolled already"), "{out}");
}

/// An adoption file is checked whole first, with the member accounts and
/// MAX_KEY_AGE: a bad line anywhere leaves every user as it was (no project
/// policy, no boundary) and writes no record; a file meant for plain `enroll`
/// is refused naming the columns `enroll --adopt --csv` reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_adoption_file_touches_no_user_and_writes_no_record() {
    let stack = Stack::start().await;
    let iam = stack.iam_of(None).await;
    let orgs = ["4400001", "4400002", "4400003"];
    for org in orgs {
        iam.create_user().user_name(format!("org-{org}")).path("/managed-s3/").send().await.unwrap();
        iam.create_access_key().user_name(format!("org-{org}")).send().await.unwrap();
    }
    let untouched = || async {
        assert!(stack.adapters.registry.list_orgs().await.unwrap().is_empty(), "no record");
        for org in orgs {
            let user = iam.get_user().user_name(format!("org-{org}")).send().await.unwrap().user.unwrap();
            assert!(user.permissions_boundary.is_none(), "org {org}: no boundary put");
            let policies = iam.list_user_policies().user_name(format!("org-{org}")).send().await.unwrap();
            assert!(policies.policy_names().is_empty(), "org {org}: no policy put: {policies:?}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("existing.csv");
    let path = csv.to_str().unwrap();

    let late = (Utc::now() + TimeDelta::days(200)).format("%Y-%m-%d").to_string();
    std::fs::write(&csv, format!("orgId,account,expiresAt\n4400001\n4400002,999999999999\n4400003,,{late}\n")).unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--adopt", "--csv", path]);
    assert!(!ok && err.contains("nothing was adopted; 2 problems"), "{err}");
    assert!(err.contains("line 3: account 999999999999 is not a member account"), "{err}");
    assert!(err.contains("line 4: expiresAt") && err.contains("is later than adoption plus MAX_KEY_AGE"), "{err}");
    untouched().await;

    std::fs::write(&csv, "orgId,readerPrincipal\n4400001,arn:aws:iam::210987654321:role/log-reader\n").unwrap();
    let (ok, _, err) = cli(&stack, &["enroll", "--adopt", "--csv", path]);
    assert!(!ok && err.contains("the column readerPrincipal is one of `enroll --csv`"), "{err}");
    assert!(
        err.contains("`enroll --adopt --csv` reads the columns orgId (required) and iamUser, account, expiresAt"),
        "{err}"
    );
    untouched().await;

    std::fs::write(&csv, format!("orgId\n{}\n", orgs.join("\n"))).unwrap();
    let (ok, out, err) = cli(&stack, &["enroll", "--adopt", "--csv", path]);
    assert!(ok, "{err}");
    assert!(out.contains("3 orgs: 3 adopted, 0 enrolled already, 0 failed"), "{out}");
}
