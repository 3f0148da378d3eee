//! `template.yaml`: cfn-lint clean, every function built by cargo-lambda for
//! arm64 on provided.al2023, the registry bucket locked down, and every IAM
//! statement naming its actions and resources.

mod common;

use std::process::Command;

use common::{project_root, venv_bin};
use serde_json::Value;

/// The template as cfn-lint reads it (intrinsics as `{"Ref": …}` objects).
fn template() -> Value {
    let output = Command::new(venv_bin().join("python"))
        .args(["-c", "import json; from cfnlint.decode import decode; t, m = decode('template.yaml'); assert not m, m; print(json.dumps(t, default=str))"])
        .current_dir(project_root())
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("template JSON")
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    template["Resources"].as_object().unwrap().iter().filter(|(_, r)| r["Type"] == kind).collect()
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    }
}

#[test]
fn cfn_lint_passes() {
    let output = Command::new(venv_bin().join("cfn-lint"))
        .arg("template.yaml")
        .current_dir(project_root())
        .output()
        .expect("run cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_function_is_a_cargo_lambda_binary_for_arm64_on_al2023() {
    let t = template();
    let globals = &t["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Architectures"], serde_json::json!(["arm64"]));
    assert_eq!(globals["Handler"], "bootstrap");
    let functions = resources_of_type(&t, "AWS::Serverless::Function");
    assert!(!functions.is_empty());
    for (name, function) in functions {
        assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda", "{name}");
        assert_eq!(function["Properties"]["CodeUri"], "./", "{name}");
        let binary = function["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        assert!(project_root().join(format!("src/bin/{binary}.rs")).exists(), "{name}: no binary {binary}");
    }
}

fn routes_of(t: &Value, function: &str) -> Vec<String> {
    let events = t["Resources"][function]["Properties"]["Events"].as_object().unwrap();
    let mut routes: Vec<String> = events
        .values()
        .map(|e| {
            let p = &e["Properties"];
            assert_eq!(p["ApiId"], serde_json::json!({"Ref": "HttpApi"}), "{function}");
            assert_eq!(p["Auth"]["AuthorizationScopes"], serde_json::json!([{"Ref": "AdminScope"}]), "{function}");
            format!(
                "{} {} {}",
                p["Method"].as_str().unwrap(),
                p["Path"].as_str().unwrap(),
                p["Auth"]["Authorizer"].as_str().unwrap()
            )
        })
        .collect();
    routes.sort();
    routes
}

#[test]
fn every_route_is_behind_the_jwt_authorizer_with_the_admin_scope() {
    let t = template();
    let api = &t["Resources"]["HttpApi"]["Properties"];
    // Both authorizers accept the same identity provider's tokens; they differ in the header read.
    for (authorizer, header) in [("JwtAuthorizer", "Authorization"), ("AcsBearerAuthorizer", "x-acs-bearer-token")] {
        let config = &api["Auth"]["Authorizers"][authorizer];
        assert_eq!(config["IdentitySource"], format!("$request.header.{header}"));
        assert_eq!(config["JwtConfiguration"]["issuer"], serde_json::json!({"Ref": "JwtIssuer"}));
        assert_eq!(config["JwtConfiguration"]["audience"], serde_json::json!([{"Ref": "JwtAudience"}]));
    }
    assert_eq!(api["Auth"]["DefaultAuthorizer"], "JwtAuthorizer");
    assert!(api["DefaultRouteSettings"]["ThrottlingRateLimit"].is_object());
    assert_eq!(
        routes_of(&t, "RotateKeyFunction"),
        ["POST /admin/v2/iam/rotateKey JwtAuthorizer", "POST /iam/rotate-key JwtAuthorizer"]
    );
    assert_eq!(routes_of(&t, "RotationPolicyFunction"), ["GET / AcsBearerAuthorizer", "POST / AcsBearerAuthorizer"]);
}

#[test]
fn the_registry_bucket_is_encrypted_private_and_versioned() {
    let t = template();
    let bucket = &t["Resources"]["RegistryBucket"]["Properties"];
    assert!(bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        ["SSEAlgorithm"]
        .is_string());
    let block = bucket["PublicAccessBlockConfiguration"].as_object().unwrap();
    assert_eq!(block.len(), 4);
    assert!(block.values().all(|v| v == true), "{block:?}");
    assert_eq!(bucket["VersioningConfiguration"]["Status"], "Enabled");
}

#[test]
fn function_policies_name_their_actions_and_resources() {
    let t = template();
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        for policy in function["Properties"]["Policies"].as_array().unwrap() {
            for statement in policy["Statement"].as_array().unwrap() {
                assert_eq!(statement["Effect"], "Allow", "{name}");
                for action in as_list(&statement["Action"]) {
                    let action = action.as_str().unwrap();
                    assert!(!action.contains('*'), "{name}: wildcard action {action}");
                }
                for resource in as_list(&statement["Resource"]) {
                    assert_ne!(resource, "*", "{name}: every resource");
                    let text = resource.to_string();
                    if text.contains(":iam::") {
                        assert!(
                            text.contains("${IamUserPath}org-*"),
                            "{name}: IAM access limited to the org users' path: {text}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_scheduled_function_runs_on_a_schedule_with_a_failure_destination() {
    let t = template();
    let function = &t["Resources"]["ScheduledRotationFunction"]["Properties"];
    let schedule = &function["Events"]["Schedule"];
    assert_eq!(schedule["Type"], "ScheduleV2");
    assert_eq!(schedule["Properties"]["ScheduleExpression"], serde_json::json!({"Ref": "ScheduleRate"}));
    assert_eq!(t["Parameters"]["ScheduleRate"]["Default"], "rate(1 hour)");
    assert!(function["Timeout"].as_u64().unwrap() >= 300);
    assert_eq!(function["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Type"], "SQS");
    // EventBridge can deliver the notifications to their queue.
    let policy = &t["Resources"]["NotificationsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(policy["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(policy["Action"], "sqs:SendMessage");
}
