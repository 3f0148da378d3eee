//! Prints the policy documents the service writes at run time, built by the same
//! functions the service calls, for tests/permissions/test_evaluated.py, which
//! evaluates them with IAM's semantics next to the templates' policies.
//!
//! Reads a JSON object on standard input:
//! `{"env": {VARIABLE: value, ...}, "orgs": ["1234567", ...], "readers": [ARN, ...]}`
//! (`env`: the functions' variables, read as the functions read them) and prints
//! `{"userPolicies": {org: document}, "readerPolicies": {ARN: document},
//! "bucketStatement": statement or null}`: each org user's inline policy
//! (`IamUsers` writes it at enrollment, for the org's prefix in the managed bucket),
//! each vault secret's resource policy for a reader (`enroll --reader-principal`),
//! and the managed bucket's statement for the member accounts
//! (`accounts --bucket-policy`).
use std::collections::BTreeMap;
use std::io::Read;

use s3_key_rotation::aws::vault::reader_policy;
use s3_key_rotation::config::Config;
use s3_key_rotation::core::accounts::bucket_statement;
use s3_key_rotation::core::domain::OrgId;
use s3_key_rotation::core::enrollment::user_policy;
use serde_json::{json, Value};

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("read standard input");
    let input: Value = serde_json::from_str(&input).expect("standard input is JSON");
    let env: BTreeMap<String, String> = serde_json::from_value(input["env"].clone()).expect("env: variables");
    let config = Config::from_lookup(|name| env.get(name).cloned()).expect("the variables configure the service");
    let settings = config.enroll_settings().expect("MANAGED_BUCKET is set");
    let mut users = serde_json::Map::new();
    for org in input["orgs"].as_array().expect("orgs: a list") {
        let org = OrgId::parse(org.as_str().expect("an org id")).expect("a valid org id");
        let document = user_policy(&config.org_users.partition, &settings.managed_bucket, &settings.prefix_of(&org));
        users.insert(org.as_str().to_owned(), document);
    }
    let mut readers = serde_json::Map::new();
    for reader in input["readers"].as_array().expect("readers: a list") {
        let reader = reader.as_str().expect("an ARN");
        readers.insert(reader.to_owned(), reader_policy(reader));
    }
    let bucket = (!config.members.member_roles.is_empty()).then(|| {
        bucket_statement(&settings.managed_bucket, &config.members.member_roles, &config.org_users.iam_user_path)
    });
    let out = json!({"userPolicies": users, "readerPolicies": readers, "bucketStatement": bucket});
    println!("{out}");
}
