//! `template.yaml`: cfn-lint clean, every function built by cargo-lambda for
//! arm64 on provided.al2023, the registry bucket locked down, every IAM
//! statement naming its actions and resources, the member accounts' roles
//! assumable only when there are any, the sweep fanned out over SweepQueue, and
//! X-Ray active tracing on every function.
//! `member-account.yaml`: cfn-lint clean, a role that trusts only the home
//! account and may touch only the org users under the path.

mod common;

use std::process::Command;

use common::{project_root, venv_bin};
use serde_json::{json, Value};

/// A template of the project as cfn-lint reads it (intrinsics as `{"Ref": …}` objects).
fn template(file: &str) -> Value {
    let script = format!(
        "import json; from cfnlint.decode import decode; t, m = decode({file:?}); assert not m, m; print(json.dumps(t, default=str))"
    );
    let output = Command::new(venv_bin().join("python"))
        .args(["-c", &script])
        .current_dir(project_root())
        .output()
        .expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("template JSON")
}

#[test]
fn every_function_traces_actively_with_x_ray() {
    let t = template("template.yaml");
    assert_eq!(t["Globals"]["Function"]["Tracing"], "Active");
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        // A function's own setting would override the Globals'.
        let own = &function["Properties"]["Tracing"];
        assert!(own.is_null() || *own == "Active", "{name}: Tracing {own}");
    }
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

/// A policy statement and, when it is wrapped in `Fn::If [condition, statement,
/// AWS::NoValue]`, its condition. Any other `Fn::If` fails the test.
fn unwrap_statement(statement: &Value) -> (&Value, Option<&str>) {
    match statement.get("Fn::If") {
        None => (statement, None),
        Some(branches) => {
            let branches = branches.as_array().unwrap();
            assert_eq!(branches.len(), 3, "{statement}");
            assert_eq!(branches[2], json!({"Ref": "AWS::NoValue"}), "a statement or none: {statement}");
            (&branches[1], Some(branches[0].as_str().unwrap()))
        }
    }
}

/// Every statement of every policy of `function`, with its condition.
fn statements_of(function: &Value) -> Vec<(&Value, Option<&str>)> {
    let mut statements = Vec::new();
    for policy in function["Properties"]["Policies"].as_array().unwrap() {
        for statement in policy["Statement"].as_array().unwrap() {
            statements.push(unwrap_statement(statement));
        }
    }
    statements
}

fn actions_of(statement: &Value) -> Vec<String> {
    as_list(&statement["Action"]).iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

fn cfn_lint(file: &str) {
    let output =
        Command::new(venv_bin().join("cfn-lint")).arg(file).current_dir(project_root()).output().expect("run cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint {file}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// template.yaml passes cfn-lint: tests/package/test_sam.py (`sam validate --lint`, the same
// cfn-lint) checks it, once per run.
#[test]
fn cfn_lint_passes_on_the_member_account_template() {
    cfn_lint("member-account.yaml");
}

#[test]
fn every_function_is_a_cargo_lambda_binary_for_arm64_on_al2023() {
    let t = template("template.yaml");
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
    let t = template("template.yaml");
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
    let t = template("template.yaml");
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
    let t = template("template.yaml");
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        for (statement, _) in statements_of(function) {
            assert_eq!(statement["Effect"], "Allow", "{name}");
            let actions = actions_of(statement);
            for action in &actions {
                assert!(!action.contains('*'), "{name}: wildcard action {action}");
            }
            for resource in as_list(&statement["Resource"]) {
                assert_ne!(resource, "*", "{name}: every resource");
                if actions.iter().any(|a| a == "sts:AssumeRole") {
                    assert_eq!(resource, json!({"Ref": "MemberAccountRoles"}), "{name}: only the member roles");
                    continue;
                }
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

#[test]
fn the_scheduled_function_runs_on_a_schedule_with_a_failure_destination() {
    let t = template("template.yaml");
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

/// The IAM operations the code calls on the org users: every `"iam", "Operation"`
/// that src/aws/iam.rs reports errors of, and `iam:TagUser`, which CreateUser
/// with tags needs too.
fn iam_actions_of_the_code() -> Vec<String> {
    let source = std::fs::read_to_string(project_root().join("src/aws/iam.rs")).unwrap();
    let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
    let mut actions: Vec<String> =
        source.split("\"iam\", \"").skip(1).map(|rest| format!("iam:{}", &rest[..rest.find('"').unwrap()])).collect();
    assert!(actions.contains(&"iam:CreateUser".to_string()), "{actions:?}");
    if source.contains(".tags(") {
        actions.push("iam:TagUser".into());
    }
    actions.sort();
    actions.dedup();
    actions
}

/// The Allow statements' actions of a role's inline policies (each scoped to
/// the org users under the path), and its Deny statements.
fn role_actions(role: &Value) -> (Vec<String>, Vec<&Value>) {
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for policy in role["Policies"].as_array().unwrap() {
        for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            assert!(statement.get("NotAction").is_none() && statement.get("NotResource").is_none());
            if statement["Effect"] == "Deny" {
                denied.push(statement);
                continue;
            }
            assert_eq!(
                statement["Resource"],
                json!({"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:user${IamUserPath}org-*"}),
                "only the org users under the path"
            );
            for action in actions_of(statement) {
                assert!(action.starts_with("iam:") && !action.contains('*'), "{action}");
                allowed.push(action);
            }
        }
    }
    allowed.sort();
    (allowed, denied)
}

/// The trust statement of a member account's role: the home account, only the
/// principals `principals` names (aws:PrincipalArn), and the external id.
fn assert_trusts(role: &Value, principals: Value) {
    let trust = role["AssumeRolePolicyDocument"]["Statement"].as_array().unwrap();
    assert_eq!(trust.len(), 1, "{trust:?}");
    assert_eq!(trust[0]["Effect"], "Allow");
    assert_eq!(trust[0]["Action"], "sts:AssumeRole");
    assert_eq!(trust[0]["Principal"], json!({"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${HomeAccountId}:root"}}));
    assert_eq!(trust[0]["Condition"]["ArnLike"]["aws:PrincipalArn"], principals, "who may assume it");
    assert_eq!(
        trust[0]["Condition"]["StringEquals"],
        json!({"Fn::If": ["HasExternalId", {"sts:ExternalId": {"Ref": "ExternalId"}}, {"Ref": "AWS::NoValue"}]}),
        "the external id, when there is one"
    );
    assert!(role.get("ManagedPolicyArns").is_none(), "no managed policies");
}

#[test]
fn a_member_account_has_a_runtime_role_an_enrollment_role_for_operators_and_the_boundary() {
    let t = template("member-account.yaml");
    let home = template("template.yaml");
    let parameters = &t["Parameters"];
    assert_eq!(parameters["HomeAccountId"]["AllowedPattern"], "^[0-9]{12}$");
    assert_eq!(parameters["ExternalId"]["Default"], "");
    for (field, of) in
        [("Default", "IamUserPath"), ("AllowedPattern", "IamUserPath"), ("Default", "BoundaryPolicyName")]
    {
        assert_eq!(parameters[of][field], home["Parameters"][of][field], "{of} {field}");
    }
    assert_eq!(parameters["RoleName"]["Default"], "s3-key-rotation-member");
    assert_eq!(parameters["EnrollmentRoleName"]["Default"], home["Parameters"]["MemberEnrollmentRoleName"]["Default"]);
    let mut kinds: Vec<&str> =
        t["Resources"].as_object().unwrap().values().map(|r| r["Type"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["AWS::IAM::ManagedPolicy", "AWS::IAM::Role", "AWS::IAM::Role"]);

    // The runtime role: the home stack's functions and the operators; the key
    // calls, and the sweep's deletion of a user; nothing that creates or grants.
    let runtime = &t["Resources"]["MemberRole"]["Properties"];
    assert_eq!(runtime["RoleName"], json!({"Ref": "RoleName"}));
    assert_trusts(
        runtime,
        json!({"Fn::Split": [",", {"Fn::Join": [",", [
            {"Fn::Sub": "arn:${AWS::Partition}:iam::${HomeAccountId}:role/${HomeStackName}/rotate-key/*"},
            {"Fn::Sub": "arn:${AWS::Partition}:iam::${HomeAccountId}:role/${HomeStackName}/sweep-worker/*"},
            {"Fn::If": ["HasOperators", {"Fn::Join": [",", {"Ref": "OperatorPrincipals"}]}, {"Ref": "AWS::NoValue"}]}
        ]]}]}),
    );
    let (actions, denied) = role_actions(runtime);
    assert!(denied.is_empty());
    assert_eq!(
        actions,
        [
            "iam:CreateAccessKey",
            "iam:DeleteAccessKey",
            "iam:DeleteUser",
            "iam:DeleteUserPolicy",
            "iam:GetAccessKeyLastUsed",
            "iam:ListAccessKeys",
            "iam:UpdateAccessKey"
        ]
    );
    assert_eq!(t["Outputs"]["RoleArn"]["Value"], json!({"Fn::GetAtt": ["MemberRole", "Arn"]}));

    // The enrollment role: the operators only; a user is created, and a policy
    // written to it, only with the boundary, which is never lifted.
    let enrollment = &t["Resources"]["EnrollmentRole"]["Properties"];
    assert_trusts(
        enrollment,
        json!({"Fn::If": ["HasOperators", {"Ref": "OperatorPrincipals"},
            {"Fn::Sub": "arn:${AWS::Partition}:iam::${HomeAccountId}:role/no-operator-named"}]}),
    );
    let (mut actions, denied) = role_actions(enrollment);
    for statement in enrollment["Policies"][0]["PolicyDocument"]["Statement"].as_array().unwrap() {
        let grants = actions_of(statement);
        let writes = grants
            .iter()
            .any(|a| ["iam:CreateUser", "iam:PutUserPolicy", "iam:PutUserPermissionsBoundary"].contains(&a.as_str()));
        if statement["Effect"] == "Allow" && writes {
            assert_eq!(
                statement["Condition"],
                json!({"StringEquals": {"iam:PermissionsBoundary": {"Ref": "OrgUserBoundary"}}}),
                "{grants:?} only under the boundary"
            );
            assert_eq!(grants.len(), 3, "nothing else in the conditioned statement: {grants:?}");
        }
    }
    assert_eq!(denied.len(), 1);
    assert_eq!(actions_of(denied[0]), ["iam:DeleteUserPermissionsBoundary", "iam:AttachUserPolicy"]);
    // Together the two roles make exactly the IAM calls of src/aws/iam.rs.
    actions.extend(role_actions(runtime).0);
    actions.push("iam:PutUserPermissionsBoundary".into());
    actions.sort();
    actions.dedup();
    let mut code = iam_actions_of_the_code();
    code.push("iam:PutUserPermissionsBoundary".into());
    code.sort();
    code.dedup();
    assert_eq!(actions, code, "exactly the IAM calls of src/aws/iam.rs");

    // The boundary: reading the managed bucket, nothing else.
    let boundary = &t["Resources"]["OrgUserBoundary"]["Properties"];
    assert_eq!(boundary["ManagedPolicyName"], json!({"Ref": "BoundaryPolicyName"}));
    assert_eq!(boundary["PolicyDocument"], home["Resources"]["OrgUserBoundary"]["Properties"]["PolicyDocument"]);
    let statements = boundary["PolicyDocument"]["Statement"].as_array().unwrap();
    let granted: Vec<(String, Value)> =
        statements.iter().flat_map(|s| actions_of(s).into_iter().map(|a| (a, s["Resource"].clone()))).collect();
    assert_eq!(
        granted,
        [
            ("s3:GetObject".to_owned(), json!({"Fn::Sub": "arn:${AWS::Partition}:s3:::${ManagedBucketName}/*"})),
            ("s3:ListBucket".to_owned(), json!({"Fn::Sub": "arn:${AWS::Partition}:s3:::${ManagedBucketName}"}))
        ]
    );
}

#[test]
fn in_the_home_account_users_are_created_only_under_the_boundary_and_no_function_may() {
    let t = template("template.yaml");
    // Only the operator's CLI creates org users: the settings are its, in OperatorEnvironment.
    let operator = operator_environment(&t);
    assert_eq!(operator["ORG_USER_BOUNDARY"], "OrgUserBoundary");
    assert_eq!(operator["MEMBER_ENROLLMENT_ROLE"], "MemberEnrollmentRoleName");
    let policy = &t["Resources"]["EnrollmentPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    for statement in policy.as_array().unwrap() {
        let (statement, _) = unwrap_statement(statement);
        let actions = actions_of(statement);
        if statement["Effect"] == "Allow" && actions.iter().any(|a| a == "iam:CreateUser" || a == "iam:PutUserPolicy") {
            assert_eq!(
                statement["Condition"],
                json!({"StringEquals": {"iam:PermissionsBoundary": {"Ref": "OrgUserBoundary"}}})
            );
        }
    }
    let creating = [
        "iam:CreateUser",
        "iam:PutUserPolicy",
        "iam:PutUserPermissionsBoundary",
        "iam:AttachUserPolicy",
        "iam:CreateRole",
        "iam:PutRolePolicy",
        "iam:AttachRolePolicy",
        "iam:CreatePolicyVersion",
        "iam:TagUser",
    ];
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        for (statement, _) in statements_of(function) {
            for action in actions_of(statement) {
                assert!(!creating.contains(&action.as_str()), "{name} may {action}");
            }
        }
    }
}

#[test]
fn the_member_roles_are_assumable_only_when_there_are_any() {
    let t = template("template.yaml");
    let parameter = &t["Parameters"]["MemberAccountRoles"];
    assert_eq!(parameter["Type"], "CommaDelimitedList");
    assert_eq!(parameter["Default"], "");
    assert_eq!(
        t["Conditions"]["HasMemberAccounts"],
        json!({"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "MemberAccountRoles"}]}, ""]}]})
    );
    let env = &t["Resources"]["SweepWorkerFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(env["MEMBER_ACCOUNT_ROLES"], json!({"Fn::Join": [",", {"Ref": "MemberAccountRoles"}]}));
    for (variable, parameter) in
        [("MEMBER_ROLE_EXTERNAL_ID", "MemberRoleExternalId"), ("SWEEP_SLICE_SIZE", "SweepSliceSize")]
    {
        assert_eq!(env[variable], json!({"Ref": parameter}), "{variable}");
    }
    assert_eq!(operator_environment(&t)["ORGS_PER_ACCOUNT"], "OrgsPerAccount");
    assert!(t["Parameters"]["OrgsPerAccount"]["MaxValue"].as_u64().unwrap() <= 5000, "IAM's users per account");

    let mut assuming = Vec::new();
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        let statements = statements_of(function);
        let touches_org_users = statements.iter().any(|(s, _)| actions_of(s).iter().any(|a| a.starts_with("iam:")));
        let mut assumes = 0;
        for (statement, condition) in statements {
            let actions = actions_of(statement);
            if !actions.iter().any(|a| a.starts_with("sts:")) {
                assert_eq!(condition, None, "{name}: only AssumeRole is conditional");
                continue;
            }
            assert_eq!(actions, ["sts:AssumeRole"], "{name}");
            assert_eq!(statement["Resource"], json!({"Ref": "MemberAccountRoles"}), "{name}");
            assert!(statement.get("Condition").is_none(), "{name}");
            assert_eq!(condition, Some("HasMemberAccounts"), "{name}: only with member accounts");
            assumes += 1;
        }
        assert_eq!(assumes, usize::from(touches_org_users), "{name}: AssumeRole iff it touches org users");
        if touches_org_users {
            assuming.push(name.as_str());
        }
    }
    assuming.sort();
    assert_eq!(assuming, ["RotateKeyFunction", "SweepWorkerFunction"], "the dispatcher touches no org user");
}

#[test]
fn the_sweep_worker_takes_one_slice_a_message_from_the_sweep_queue() {
    let t = template("template.yaml");
    let worker = &t["Resources"]["SweepWorkerFunction"];
    assert_eq!(worker["Metadata"]["BuildProperties"]["Binary"], "sweep-worker");
    let timeout = worker["Properties"]["Timeout"].as_u64().unwrap();
    assert_eq!(timeout, 900);
    let events = worker["Properties"]["Events"].as_object().unwrap();
    assert_eq!(events.len(), 1, "only the queue triggers it");
    let event = events.values().next().unwrap();
    assert_eq!(event["Type"], "SQS");
    let p = &event["Properties"];
    assert_eq!(p["Queue"], json!({"Fn::GetAtt": ["SweepQueue", "Arn"]}));
    assert_eq!(p["BatchSize"], 1);
    assert_eq!(p["FunctionResponseTypes"], json!(["ReportBatchItemFailures"]));
    assert_eq!(p["ScalingConfig"]["MaximumConcurrency"], json!({"Ref": "SweepWorkerConcurrency"}));
    assert!(t["Parameters"]["SweepWorkerConcurrency"]["MinValue"].as_u64().unwrap() >= 2, "the SQS minimum");

    let queue = &t["Resources"]["SweepQueue"]["Properties"];
    let visibility = queue["VisibilityTimeout"].as_u64().unwrap();
    assert!(visibility >= timeout, "a slice stays hidden while it is swept: {visibility} < {timeout}");
    assert_eq!(queue["SqsManagedSseEnabled"], true);
    let redrive = &queue["RedrivePolicy"];
    assert_eq!(redrive["deadLetterTargetArn"], json!({"Fn::GetAtt": ["SweepDeadLetterQueue", "Arn"]}));
    let receives = redrive["maxReceiveCount"].as_u64().unwrap();
    assert!((2..=5).contains(&receives), "a failed slice is retried, then set aside: {receives}");
    let retention = queue["MessageRetentionPeriod"].as_u64().unwrap();
    assert!(retention > receives * visibility, "a slice never expires before its last receive");
    let dead = &t["Resources"]["SweepDeadLetterQueue"]["Properties"];
    assert_eq!(dead["MessageRetentionPeriod"], 1209600);
    assert_eq!(dead["SqsManagedSseEnabled"], true);

    // The dispatcher only dispatches: it reads the orgs and writes none, touches
    // no org user, no secret, no notification; the sweep's rights are the worker's.
    let dispatcher: Vec<String> =
        statements_of(&t["Resources"]["ScheduledRotationFunction"]).iter().flat_map(|(s, _)| actions_of(s)).collect();
    for action in &dispatcher {
        assert!(action.starts_with("s3:") || action == "sqs:SendMessage", "the dispatcher may {action}");
    }
    let records = statements_of(&t["Resources"]["ScheduledRotationFunction"])
        .into_iter()
        .filter(|(s, _)| s["Resource"] == json!({"Fn::Sub": "${RegistryBucket.Arn}/orgs/*"}))
        .flat_map(|(s, _)| actions_of(s))
        .collect::<Vec<_>>();
    assert_eq!(records, ["s3:GetObject"], "the dispatcher reads the org records only");
    let placement = statements_of(worker)
        .into_iter()
        .find(|(s, _)| s["Resource"] == json!({"Fn::Sub": "${RegistryBucket.Arn}/placement.json"}))
        .expect("placement.json");
    assert_eq!(actions_of(placement.0), ["s3:GetObject", "s3:PutObject"]);

    for (output, value) in [
        ("SweepQueueUrl", json!({"Ref": "SweepQueue"})),
        ("SweepDeadLetterQueueUrl", json!({"Ref": "SweepDeadLetterQueue"})),
        ("SweepWorkerFunctionArn", json!({"Fn::GetAtt": ["SweepWorkerFunction", "Arn"]})),
    ] {
        assert_eq!(t["Outputs"][output]["Value"], value, "{output}");
    }
}

/// The dispatcher alone sends, the worker alone brings a stopped slice back
/// early, and both only on the sweep queue.
#[test]
fn only_the_dispatcher_sends_and_only_to_the_sweep_queue() {
    let t = template("template.yaml");
    for function in ["ScheduledRotationFunction", "SweepWorkerFunction"] {
        let variables = &t["Resources"][function]["Properties"]["Environment"]["Variables"];
        assert_eq!(variables["SWEEP_QUEUE_URL"], json!({"Ref": "SweepQueue"}), "{function}");
    }
    let mut queue_rights = Vec::new();
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        for (statement, _) in statements_of(function) {
            let actions = actions_of(statement);
            if actions.iter().any(|a| a.starts_with("sqs:")) {
                assert_eq!(statement["Resource"], json!({"Fn::GetAtt": ["SweepQueue", "Arn"]}), "{name}");
                queue_rights.push((name.as_str(), actions));
            }
        }
    }
    assert_eq!(
        queue_rights,
        [
            ("ScheduledRotationFunction", vec!["sqs:SendMessage".to_string()]),
            ("SweepWorkerFunction", vec!["sqs:ChangeMessageVisibility".to_string()])
        ]
    );
}

#[test]
fn the_dispatcher_lists_the_placement_markers_and_a_deletion_removes_one() {
    let t = template("template.yaml");
    for name in ["ScheduledRotationFunction", "SweepWorkerFunction"] {
        let statements = statements_of(&t["Resources"][name]);
        let markers = statements
            .iter()
            .find(|(s, _)| s["Resource"] == json!({"Fn::Sub": "${RegistryBucket.Arn}/placement/*"}))
            .unwrap_or_else(|| panic!("{name}: the placement markers"));
        assert_eq!(actions_of(markers.0), ["s3:DeleteObject"], "{name}");
    }
    let statements = statements_of(&t["Resources"]["ScheduledRotationFunction"]);
    let listing = statements.iter().find(|(s, _)| actions_of(s) == ["s3:ListBucket"]).expect("a listing");
    let prefixes = listing.0["Condition"]["StringLike"]["s3:prefix"].as_array().unwrap();
    assert!(prefixes.contains(&json!("placement/*")), "the dispatcher lists each account's markers: {prefixes:?}");
}

/// The one topic every alarm notifies: the stack's own (created only without
/// `AlarmTopicArn`), or the one passed in.
fn alarm_topic() -> Value {
    json!({"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]})
}

/// An alarm's resource properties, after checking that it notifies the topic
/// both when it fires and when it recovers.
fn alarm<'a>(t: &'a Value, name: &str) -> &'a Value {
    let resource = &t["Resources"][name];
    assert_eq!(resource["Type"], "AWS::CloudWatch::Alarm", "{name}");
    let p = &resource["Properties"];
    assert_eq!(p["AlarmActions"], json!([alarm_topic()]), "{name}: AlarmActions");
    assert_eq!(p["OKActions"], json!([alarm_topic()]), "{name}: OKActions");
    p
}

fn parameter_default(t: &Value, name: &str) -> Value {
    let parameter = &t["Parameters"][name];
    assert!(parameter.is_object(), "no parameter {name}");
    parameter["Default"].clone()
}

#[test]
fn the_alarms_notify_one_topic_of_the_stack_or_the_one_passed_in() {
    let t = template("template.yaml");
    assert_eq!(parameter_default(&t, "AlarmTopicArn"), "");
    assert_eq!(parameter_default(&t, "AlarmEmail"), "");
    assert_eq!(t["Conditions"]["CreateAlarmTopic"], json!({"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}));
    assert_eq!(t["Conditions"]["HasAlarmEmail"], json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}));
    let topic = &t["Resources"]["AlarmTopic"];
    assert_eq!(topic["Type"], "AWS::SNS::Topic");
    assert_eq!(topic["Condition"], "CreateAlarmTopic", "no topic of our own when one is passed in");
    let subscription = &t["Resources"]["AlarmEmailSubscription"];
    assert_eq!(subscription["Type"], "AWS::SNS::Subscription");
    assert_eq!(subscription["Condition"], "HasAlarmEmail");
    let p = &subscription["Properties"];
    assert_eq!(p["Protocol"], "email");
    assert_eq!(p["Endpoint"], json!({"Ref": "AlarmEmail"}));
    assert_eq!(p["TopicArn"], alarm_topic(), "the email subscribes to whichever topic the alarms notify");
    assert_eq!(t["Outputs"]["AlarmTopicArn"]["Value"], alarm_topic());

    // Every alarm of the template notifies it.
    let alarms = resources_of_type(&t, "AWS::CloudWatch::Alarm");
    assert!(alarms.len() >= 16, "{} alarms", alarms.len());
    for (name, _) in alarms {
        alarm(&t, name);
    }
}

#[test]
fn every_dead_letter_and_failure_queue_alarms_once_it_holds_a_message() {
    let t = template("template.yaml");
    // The queues where work ends up that nobody will retry.
    let function = &t["Resources"]["ScheduledRotationFunction"]["Properties"];
    assert_eq!(
        function["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"],
        json!({"Fn::GetAtt": ["SweepFailureQueue", "Arn"]})
    );
    assert_eq!(
        function["Events"]["Schedule"]["Properties"]["DeadLetterConfig"],
        json!({"Arn": {"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]}}),
        "the schedule's dead-letter queue is the template's own, so an alarm can name it"
    );
    assert_eq!(
        t["Resources"]["SweepQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"],
        json!({"Fn::GetAtt": ["SweepDeadLetterQueue", "Arn"]})
    );
    let target = &t["Resources"]["NotificationsRule"]["Properties"]["Targets"][0];
    assert_eq!(target["DeadLetterConfig"]["Arn"], json!({"Fn::GetAtt": ["NotificationsDeadLetterQueue", "Arn"]}));
    // EventBridge may put what it could not deliver there.
    let policy = &t["Resources"]["NotificationsDeadLetterQueuePolicy"]["Properties"];
    assert_eq!(policy["Queues"], json!([{"Ref": "NotificationsDeadLetterQueue"}]));
    let statement = &policy["PolicyDocument"]["Statement"][0];
    assert_eq!(statement["Principal"]["Service"], "events.amazonaws.com");
    assert_eq!(statement["Action"], "sqs:SendMessage");
    assert_eq!(
        statement["Condition"]["ArnEquals"]["aws:SourceArn"],
        json!({"Fn::GetAtt": ["NotificationsRule", "Arn"]})
    );

    assert_eq!(parameter_default(&t, "DeadLetterMessagesThreshold"), 1);
    let mut watched = Vec::new();
    for (name, _) in resources_of_type(&t, "AWS::CloudWatch::Alarm") {
        let p = alarm(&t, name);
        if p["Namespace"] != "AWS/SQS" {
            continue;
        }
        assert_eq!(p["MetricName"], "ApproximateNumberOfMessagesVisible", "{name}");
        assert_eq!(p["Statistic"], "Maximum", "{name}");
        assert_eq!(p["Threshold"], json!({"Ref": "DeadLetterMessagesThreshold"}), "{name}");
        assert_eq!(p["ComparisonOperator"], "GreaterThanOrEqualToThreshold", "{name}");
        assert_eq!(p["EvaluationPeriods"], 1, "{name}");
        assert_eq!(p["Period"], json!({"Ref": "AlarmPeriodSeconds"}), "{name}");
        assert_eq!(p["TreatMissingData"], "notBreaching", "{name}");
        let dimensions = p["Dimensions"].as_array().unwrap();
        assert_eq!(dimensions.len(), 1, "{name}");
        assert_eq!(dimensions[0]["Name"], "QueueName", "{name}");
        let queue = dimensions[0]["Value"]["Fn::GetAtt"][0].as_str().unwrap();
        assert_eq!(dimensions[0]["Value"], json!({"Fn::GetAtt": [queue, "QueueName"]}), "{name}");
        watched.push(queue.to_owned());
    }
    watched.sort();
    assert_eq!(
        watched,
        ["NotificationsDeadLetterQueue", "ScheduleDeadLetterQueue", "SweepDeadLetterQueue", "SweepFailureQueue"]
    );
}

#[test]
fn every_function_alarms_on_its_errors_and_throttles() {
    let t = template("template.yaml");
    let mut watched = Vec::new();
    for (name, _) in resources_of_type(&t, "AWS::CloudWatch::Alarm") {
        let p = alarm(&t, name);
        if p["Namespace"] != "AWS/Lambda" {
            continue;
        }
        let metric = p["MetricName"].as_str().unwrap();
        let threshold = match metric {
            "Errors" => "FunctionErrorsThreshold",
            "Throttles" => "FunctionThrottlesThreshold",
            other => panic!("{name}: {other}"),
        };
        assert_eq!(p["Threshold"], json!({"Ref": threshold}), "{name}");
        assert_eq!(parameter_default(&t, threshold), 1, "{threshold}");
        assert_eq!(p["Statistic"], "Sum", "{name}");
        assert_eq!(p["ComparisonOperator"], "GreaterThanOrEqualToThreshold", "{name}");
        assert_eq!(p["Period"], json!({"Ref": "AlarmPeriodSeconds"}), "{name}");
        assert_eq!(p["TreatMissingData"], "notBreaching", "{name}");
        let dimensions = p["Dimensions"].as_array().unwrap();
        assert_eq!(dimensions.len(), 1, "{name}");
        assert_eq!(dimensions[0]["Name"], "FunctionName", "{name}");
        let function = dimensions[0]["Value"]["Ref"].as_str().unwrap();
        watched.push(format!("{function} {metric}"));
    }
    watched.sort();
    let mut expected: Vec<String> = resources_of_type(&t, "AWS::Serverless::Function")
        .iter()
        .flat_map(|(f, _)| [format!("{f} Errors"), format!("{f} Throttles")])
        .collect();
    expected.sort();
    assert_eq!(watched, expected);
    assert_eq!(expected.len(), 8);
}

#[test]
fn rotate_key_alarms_on_5xx_answers_of_both_its_routes() {
    let t = template("template.yaml");
    let p = alarm(&t, "RotateKey5xxAlarm");
    assert_eq!(p["Threshold"], json!({"Ref": "RotateKey5xxThreshold"}));
    assert_eq!(parameter_default(&t, "RotateKey5xxThreshold"), 1);
    assert_eq!(p["ComparisonOperator"], "GreaterThanOrEqualToThreshold");
    let metrics = p["Metrics"].as_array().unwrap();
    let mut resources = Vec::new();
    let mut ids = Vec::new();
    for m in metrics.iter().filter(|m| m.get("MetricStat").is_some()) {
        assert_eq!(m["ReturnData"], false);
        let stat = &m["MetricStat"];
        assert_eq!(stat["Stat"], "Sum");
        assert_eq!(stat["Period"], json!({"Ref": "AlarmPeriodSeconds"}));
        let metric = &stat["Metric"];
        assert_eq!(metric["Namespace"], "AWS/ApiGateway");
        assert_eq!(metric["MetricName"], "5xx", "HTTP APIs name it 5xx");
        let dims: std::collections::BTreeMap<String, Value> = metric["Dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["Name"].as_str().unwrap().to_owned(), d["Value"].clone()))
            .collect();
        assert_eq!(dims["ApiId"], json!({"Ref": "HttpApi"}));
        assert_eq!(dims["Stage"], "$default");
        assert_eq!(dims["Method"], "POST");
        resources.push(dims["Resource"].as_str().unwrap().to_owned());
        ids.push(m["Id"].as_str().unwrap().to_owned());
    }
    resources.sort();
    assert_eq!(resources, ["/admin/v2/iam/rotateKey", "/iam/rotate-key"], "the routes of RotateKeyFunction");
    let total: Vec<&Value> = metrics.iter().filter(|m| m["ReturnData"] == true).collect();
    assert_eq!(total.len(), 1);
    let expression = total[0]["Expression"].as_str().unwrap();
    for id in &ids {
        assert!(expression.contains(&format!("FILL({id}, 0)")), "{expression}");
    }
    // Route metrics exist only with detailed metrics on.
    assert_eq!(t["Resources"]["HttpApi"]["Properties"]["DefaultRouteSettings"]["DetailedMetricsEnabled"], true);
}

#[test]
fn the_sweep_alarms_on_failed_orgs_newly_expired_orgs_and_a_missing_full_check() {
    let t = template("template.yaml");
    for (name, metric, threshold) in [
        ("SweepFailedOrgsAlarm", "Failed", "SweepFailedOrgsThreshold"),
        ("SweepExpiredOrgsAlarm", "Expired", "SweepExpiredOrgsThreshold"),
    ] {
        let p = alarm(&t, name);
        assert_eq!(p["Namespace"], "S3KeyRotation", "{name}: the sweep's own metrics");
        assert_eq!(p["MetricName"], metric, "{name}");
        assert!(p.get("Dimensions").is_none(), "{name}: the metric without dimensions (every sweeping function)");
        assert_eq!(p["Statistic"], "Sum", "{name}");
        assert_eq!(p["Threshold"], json!({"Ref": threshold}), "{name}");
        assert_eq!(parameter_default(&t, threshold), 1, "{name}: any org");
        assert_eq!(p["ComparisonOperator"], "GreaterThanOrEqualToThreshold", "{name}");
        assert_eq!(p["Period"], json!({"Ref": "SweepAlarmPeriodSeconds"}), "{name}");
        assert_eq!(p["TreatMissingData"], "notBreaching", "{name}: no run, nothing failed");
    }

    let p = alarm(&t, "SweepHeartbeatAlarm");
    assert_eq!(p["Namespace"], "S3KeyRotation");
    assert_eq!(p["MetricName"], "FullCheckCompleted");
    assert!(p.get("Dimensions").is_none());
    assert_eq!(p["Statistic"], "Sum");
    assert_eq!(p["Period"], 3600, "hourly");
    assert_eq!(p["EvaluationPeriods"], json!({"Ref": "HeartbeatHours"}));
    assert_eq!(p["DatapointsToAlarm"], json!({"Ref": "HeartbeatHours"}), "every hour of the window without one");
    assert_eq!(parameter_default(&t, "HeartbeatHours"), 26);
    assert!(t["Parameters"]["HeartbeatHours"]["MaxValue"].as_u64().unwrap() * 3600 <= 7 * 86400, "CloudWatch's 7 days");
    assert_eq!(p["Threshold"], 1);
    assert_eq!(p["ComparisonOperator"], "LessThanThreshold");
    assert_eq!(p["TreatMissingData"], "breaching", "no data is no heartbeat");
}

#[test]
fn every_function_logs_to_a_group_of_the_template_kept_for_the_retention() {
    let t = template("template.yaml");
    assert_eq!(parameter_default(&t, "LogRetentionDays"), 90);
    assert_eq!(t["Globals"]["Function"]["LoggingConfig"]["LogFormat"], "JSON", "JSON logs, the function's group added");
    let groups = resources_of_type(&t, "AWS::Logs::LogGroup");
    for (name, group) in &groups {
        assert_eq!(group["Properties"]["RetentionInDays"], json!({"Ref": "LogRetentionDays"}), "{name}");
    }
    let mut used: Vec<&str> = Vec::new();
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        let group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: LoggingConfig.LogGroup names a group of the template"));
        assert_eq!(t["Resources"][group]["Type"], "AWS::Logs::LogGroup", "{name}");
        assert!(!used.contains(&group), "{name}: a group of its own");
        used.push(group);
    }
    assert_eq!(used.len(), 4);
    // The API's access log is the other group.
    let access = &t["Resources"]["HttpApi"]["Properties"]["AccessLogSettings"];
    assert_eq!(access["DestinationArn"], json!({"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}));
    assert!(!used.contains(&"ApiAccessLogGroup"));
    assert_eq!(groups.len(), 5, "one a function and the access log");
}

#[test]
fn the_access_log_is_one_json_line_a_request_without_any_header() {
    let t = template("template.yaml");
    let format = t["Resources"]["HttpApi"]["Properties"]["AccessLogSettings"]["Format"]["Fn::Sub"]
        .as_str()
        .expect("a Fn::Sub string (the org claim's name is a parameter)");
    let line: Value = serde_json::from_str(&format.replace("${OrgClaim}", "org_id")).expect("JSON");
    for (field, variable) in [
        ("requestId", "$context.requestId"),
        ("route", "$context.routeKey"),
        ("status", "$context.status"),
        ("latencyMs", "$context.responseLatency"),
        ("org", "$context.authorizer.claims.org_id"),
    ] {
        assert_eq!(line[field], variable, "{field}");
    }
    let lower = format.to_lowercase();
    assert!(!lower.contains("authorization") && !lower.contains("header"), "no header, no token: {format}");
}

#[test]
fn only_one_scheduled_run_at_a_time() {
    let t = template("template.yaml");
    let reserved = |name: &str| t["Resources"][name]["Properties"]["ReservedConcurrentExecutions"].clone();
    assert_eq!(reserved("ScheduledRotationFunction"), 1);
    // The worker's concurrency is the queue's MaximumConcurrency: a reservation would only throttle it.
    assert_eq!(reserved("SweepWorkerFunction"), Value::Null);
}

/// The dashboard's body: JSON once `Fn::Sub` has put the resources' names in.
fn dashboard(t: &Value) -> Value {
    let resource = &t["Resources"]["Dashboard"];
    assert_eq!(resource["Type"], "AWS::CloudWatch::Dashboard");
    let text = resource["Properties"]["DashboardBody"]["Fn::Sub"].as_str().expect("a Fn::Sub string");
    let mut body = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        body.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').unwrap();
        let name = &rest[start + 2..end];
        let resource = name.split('.').next().unwrap();
        assert!(
            name.starts_with("AWS::") || t["Resources"].get(resource).is_some(),
            "the dashboard names {name}, which the template does not have"
        );
        body.push_str(&format!("<{name}>"));
        rest = &rest[end + 1..];
    }
    body.push_str(rest);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("the dashboard body is not JSON: {e}\n{body}"))
}

#[test]
fn the_dashboard_shows_what_an_operator_watches_from_metrics_that_are_published() {
    let t = template("template.yaml");
    let body = dashboard(&t);
    let widgets = body["widgets"].as_array().unwrap();
    let titles: Vec<&str> = widgets.iter().filter_map(|w| w["properties"]["title"].as_str()).collect();
    for wanted in [
        "Rotations per hour",
        "Orgs by state",
        "Keys expiring within 14 days",
        "Sweep: slice duration",
        "Sweep: slices",
        "failed orgs by step",
        "rotate-key latency",
        "rotate-key requests and status codes",
    ] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no widget {wanted:?}: {titles:?}");
    }
    let metrics_of = |title: &str| -> Vec<Value> {
        let widget = widgets.iter().find(|w| w["properties"]["title"].as_str().unwrap_or("").contains(title)).unwrap();
        widget["properties"]["metrics"].as_array().unwrap().clone()
    };
    // rotate-key's percentiles and status codes, on both its routes.
    let latency = metrics_of("rotate-key latency");
    for stat in ["p50", "p99"] {
        for route in ["/iam/rotate-key", "/admin/v2/iam/rotateKey"] {
            assert!(
                latency.iter().any(|m| m.to_string().contains(&format!("\"{route}\""))
                    && m.as_array().unwrap().last().unwrap()["stat"] == stat),
                "{stat} of {route}"
            );
        }
    }
    let codes = metrics_of("status codes").iter().map(|m| m[1].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    for code in ["Count", "4xx", "5xx"] {
        assert_eq!(codes.iter().filter(|c| *c == code).count(), 2, "{code} of both routes");
    }
    let states = metrics_of("Orgs by state").iter().map(|m| m[1].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    for state in ["OrgsEnabled", "OrgsExpired", "OrgsDisabled"] {
        assert!(states.iter().any(|s| s == state), "{state}: {states:?}");
    }

    // Every metric of the project's namespace that the dashboard (or an alarm)
    // reads is one the code publishes.
    let source: String = ["src/scheduled.rs", "src/metrics.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(project_root().join(f)).unwrap())
        .collect();
    let mut read: Vec<String> = Vec::new();
    for widget in widgets {
        for metric in widget["properties"]["metrics"].as_array().into_iter().flatten() {
            let text = metric.to_string();
            if metric[0] == "S3KeyRotation" {
                read.push(metric[1].as_str().unwrap().to_owned());
            } else if text.contains("S3KeyRotation") {
                assert!(text.contains("MetricName=\\\"Failed\\\""), "{text}");
                read.push("Failed".into());
            }
        }
    }
    for (_, alarm) in resources_of_type(&t, "AWS::CloudWatch::Alarm") {
        if alarm["Properties"]["Namespace"] == "S3KeyRotation" {
            read.push(alarm["Properties"]["MetricName"].as_str().unwrap().to_owned());
        }
    }
    assert!(read.len() >= 15, "{read:?}");
    for name in read {
        assert!(source.contains(&format!("\"{name}\"")), "{name} is read but no code publishes it");
    }
    assert_eq!(
        t["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"]
            .as_str()
            .map(|url| url.contains("dashboards:name=${Dashboard}")),
        Some(true)
    );
}

/// rotate-key's idempotent replay reads the stored key back from the vault:
/// its role may read the vault's secrets (and only those).
#[test]
fn rotate_key_may_read_back_what_its_replay_answers_with() {
    let t = template("template.yaml");
    let function = &t["Resources"]["RotateKeyFunction"];
    let reading: Vec<Value> = statements_of(function)
        .into_iter()
        .filter(|(s, _)| actions_of(s).iter().any(|a| a == "secretsmanager:GetSecretValue"))
        .map(|(s, _)| s["Resource"].clone())
        .collect();
    assert_eq!(
        reading,
        [
            json!({"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${VaultSecretPrefix}*"})
        ]
    );
}

/// Every function that publishes may publish only the service's own events
/// (`source` s3-key-rotation), and only on the configured bus.
#[test]
fn events_are_published_only_under_the_services_own_source() {
    let t = template("template.yaml");
    let mut publishers = 0;
    for (name, function) in resources_of_type(&t, "AWS::Serverless::Function") {
        for (statement, _) in statements_of(function) {
            if actions_of(statement).iter().any(|a| a.starts_with("events:")) {
                publishers += 1;
                assert_eq!(actions_of(statement), ["events:PutEvents"], "{name}");
                assert_eq!(
                    statement["Condition"],
                    json!({"ForAllValues:StringEquals": {"events:source": "s3-key-rotation"},
                           "Null": {"events:source": "false"}}),
                    "{name}"
                );
            }
        }
    }
    assert_eq!(publishers, 2, "rotate-key and sweep-worker publish (the dispatcher only dispatches)");
}

const VAULT_SECRETS: &str =
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${VaultSecretPrefix}*";

fn sub(text: &str) -> Value {
    json!({"Fn::Sub": text})
}

/// The functions whose roles write the vault (a KeyVault statement that puts secret values).
fn vault_writers(t: &Value) -> Vec<String> {
    let mut writers: Vec<String> = resources_of_type(t, "AWS::Serverless::Function")
        .into_iter()
        .filter(|(_, f)| {
            statements_of(f).iter().any(|(s, _)| actions_of(s).iter().any(|a| a == "secretsmanager:PutSecretValue"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    writers.sort();
    writers
}

/// The statements of the vault key's policy by `Sid`.
fn key_statements(t: &Value) -> std::collections::BTreeMap<String, Value> {
    let statements = t["Resources"]["VaultKey"]["Properties"]["KeyPolicy"]["Statement"].as_array().unwrap();
    statements.iter().map(|s| (s["Sid"].as_str().unwrap().to_owned(), s.clone())).collect()
}

#[test]
fn the_vault_key_is_the_stacks_own_rotated_and_kept_with_the_secrets() {
    let t = template("template.yaml");
    let key = &t["Resources"]["VaultKey"];
    assert_eq!(key["Type"], "AWS::KMS::Key");
    assert_eq!((&key["DeletionPolicy"], &key["UpdateReplacePolicy"]), (&json!("Retain"), &json!("Retain")));
    let properties = &key["Properties"];
    assert_eq!(properties["EnableKeyRotation"], true);
    assert_eq!(
        (&properties["KeySpec"], &properties["KeyUsage"]),
        (&json!("SYMMETRIC_DEFAULT"), &json!("ENCRYPT_DECRYPT"))
    );
    let alias = &t["Resources"]["VaultKeyAlias"];
    assert_eq!(alias["Type"], "AWS::KMS::Alias");
    assert_eq!(alias["Properties"]["TargetKeyId"], json!({"Ref": "VaultKey"}));
    // Every function that uses the vault finds the key and the recovery window in its
    // environment; the CLI, the partition of the org users' policies.
    for function in ["RotateKeyFunction", "ScheduledRotationFunction", "SweepWorkerFunction"] {
        let env = &t["Resources"][function]["Properties"]["Environment"]["Variables"];
        assert_eq!(env["VAULT_KMS_KEY_ID"], json!({"Fn::GetAtt": ["VaultKey", "Arn"]}), "{function}");
        assert_eq!(env["VAULT_RECOVERY_WINDOW"], json!({"Ref": "VaultRecoveryWindow"}), "{function}");
    }
    assert_eq!(operator_environment(&t)["ARN_PARTITION"], "AWS::Partition");
    assert_eq!(t["Outputs"]["VaultKeyArn"]["Value"], json!({"Fn::GetAtt": ["VaultKey", "Arn"]}));
}

#[test]
fn the_recovery_window_parameter_takes_7_to_30_whole_days_and_defaults_to_30() {
    let t = template("template.yaml");
    let parameter = &t["Parameters"]["VaultRecoveryWindow"];
    assert_eq!(parameter["Default"], "30d");
    let pattern = parameter["AllowedPattern"].as_str().unwrap();
    // CloudFormation matches the whole value; Python's fullmatch does the same.
    let script = format!(
        "import re, json; p = re.compile({pattern:?}); \
         print(json.dumps([w for w in ['6d', '7d', '19d', '30d', '31d', '70d', '30', '720h', '0d'] if p.fullmatch(w)]))"
    );
    let output = Command::new(venv_bin().join("python")).args(["-c", &script]).output().expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let accepted: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(accepted, json!(["7d", "19d", "30d"]));
}

/// The key policy, statement by statement: the account administers the key
/// (AWS's default statement, so it can never become unmanageable); the
/// functions that write the vault use it, and only through Secrets Manager
/// for a vault secret; any reader may only decrypt, only through Secrets
/// Manager, only a vault secret. Nothing else.
#[test]
fn the_vault_key_policy_lets_the_writers_and_readers_use_it_only_through_secrets_manager() {
    let t = template("template.yaml");
    let statements = key_statements(&t);
    assert_eq!(
        statements.keys().collect::<Vec<_>>(),
        [
            "AccountAdministersTheKey",
            "FunctionsUseTheKeyThroughSecretsManager",
            "ReadersDecryptTheirOwnSecretThroughSecretsManager"
        ]
    );
    for statement in statements.values() {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert_eq!(statement["Resource"], "*", "in a key policy, * is the key itself: {statement}");
    }

    let admin = &statements["AccountAdministersTheKey"];
    assert_eq!(admin["Principal"], json!({"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")}));
    assert_eq!(admin["Action"], "kms:*");
    assert!(admin.get("Condition").is_none());

    let through_secrets_manager = json!({
        "StringEquals": {"kms:ViaService": sub("secretsmanager.${AWS::Region}.amazonaws.com")},
        "StringLike": {"kms:EncryptionContext:SecretARN": sub(VAULT_SECRETS)}
    });
    let functions = &statements["FunctionsUseTheKeyThroughSecretsManager"];
    let roles: Vec<Value> =
        vault_writers(&t).iter().map(|f| json!({"Fn::GetAtt": [format!("{f}Role"), "Arn"]})).collect();
    assert_eq!(
        vault_writers(&t),
        ["RotateKeyFunction", "SweepWorkerFunction"],
        "the functions that store keys in the vault"
    );
    let mut named = as_list(&functions["Principal"]["AWS"]);
    named.sort_by_key(|v| v.to_string());
    assert_eq!(named, roles, "exactly the roles of the functions that write the vault");
    assert_eq!(actions_of(functions), ["kms:GenerateDataKey", "kms:Decrypt"]);
    assert_eq!(functions["Condition"], through_secrets_manager);

    let readers = &statements["ReadersDecryptTheirOwnSecretThroughSecretsManager"];
    assert_eq!(readers["Principal"], json!({"AWS": "*"}), "readers are enrolled one by one, after deployment");
    assert_eq!(actions_of(readers), ["kms:Decrypt"], "a reader never encrypts, nor manages the key");
    assert_eq!(readers["Condition"], through_secrets_manager);
}

/// The other half of a reader's access: the resource policy enrollment puts
/// on its org's secret names that one principal, for reading only. With the
/// key usable only through Secrets Manager, a reader decrypts exactly the
/// secrets whose GetSecretValue it is granted: its own org's.
#[test]
fn the_secrets_resource_policy_lets_only_its_reader_read_it() {
    let reader = "arn:aws:iam::210987654321:role/log-reader";
    let policy = s3_key_rotation::aws::vault::reader_policy(reader);
    assert_eq!(policy["Version"], "2012-10-17");
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1);
    let statement = &statements[0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(statement["Principal"], json!({"AWS": reader}), "the one reader, never a wildcard");
    assert_eq!(actions_of(statement), ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]);
    assert_eq!(statement["Resource"], "*", "in a resource policy, * is the secret itself");
    assert!(statement.get("Condition").is_none());
    let keys: Vec<&String> = statement.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["Sid", "Effect", "Principal", "Action", "Resource"], "no NotPrincipal, NotAction");
}

/// A deleted org's secret waits out its recovery window; the functions that
/// write the vault may restore it (an org enrolled again meanwhile), those that
/// delete orgs schedule the deletion and revoke the reader; none grants a reader.
#[test]
fn the_vault_writers_may_restore_a_secret_and_the_deleters_revoke_its_reader() {
    let t = template("template.yaml");
    for name in vault_writers(&t) {
        let statements = statements_of(&t["Resources"][&name]);
        let vault: Vec<&Value> = statements.iter().map(|(s, _)| *s).filter(|s| s["Sid"] == "KeyVault").collect();
        assert_eq!(vault.len(), 1, "{name}");
        assert_eq!(vault[0]["Resource"], sub(VAULT_SECRETS), "{name}");
        let actions = actions_of(vault[0]);
        assert!(actions.iter().any(|a| a == "secretsmanager:RestoreSecret"), "{name}: {actions:?}");
        let deletes = actions.iter().any(|a| a == "secretsmanager:DeleteSecret");
        let revokes = actions.iter().any(|a| a == "secretsmanager:DeleteResourcePolicy");
        assert_eq!(deletes, revokes, "{name}: a deletion revokes the reader first");
        assert_eq!(deletes, name != "RotateKeyFunction", "{name}: the sweeping functions delete orgs");
        for (statement, _) in &statements {
            for action in actions_of(statement) {
                assert!(
                    !matches!(action.as_str(), "secretsmanager:PutResourcePolicy" | "secretsmanager:UpdateSecret")
                        && !action.starts_with("kms:"),
                    "{name}: {action} (readers are granted by the operator; the key policy names the roles)"
                );
            }
        }
    }
}

/// The OperatorEnvironment output's `VAR=${Parameter}` pairs: {variable: parameter}.
fn operator_environment(t: &Value) -> std::collections::BTreeMap<String, String> {
    let line = t["Outputs"]["OperatorEnvironment"]["Value"]["Fn::Sub"].as_str().expect("a !Sub line");
    line.split_whitespace()
        .map(|pair| {
            let (variable, value) = pair.split_once('=').expect("VAR=value");
            let parameter = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).expect("VAR=${Parameter}");
            (variable.to_owned(), parameter.to_owned())
        })
        .collect()
}

/// Each function's environment is what its binary reads: every variable the
/// template sets is given to exactly the functions whose binary's areas read
/// it (`config::FUNCTIONS`), none to the others, and none in the Globals; the
/// variables no function reads (the org users', the CLI's) are
/// OperatorEnvironment's, and only those.
#[test]
fn each_function_gets_exactly_the_variables_its_binary_reads() {
    use s3_key_rotation::config::{variables_of, Area, FUNCTIONS};
    let t = template("template.yaml");
    assert_eq!(t["Globals"]["Function"].get("Environment"), None, "no variable for every function: each gets its own");
    let functions = resources_of_type(&t, "AWS::Serverless::Function");
    let environment = |name: &str| -> std::collections::BTreeSet<String> {
        let (_, function) = functions.iter().find(|(n, _)| n.as_str() == name).expect("a function");
        function["Properties"]["Environment"]["Variables"]
            .as_object()
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    };
    let set_anywhere: std::collections::BTreeSet<String> =
        functions.iter().flat_map(|(name, _)| environment(name)).collect();
    assert_eq!(functions.len(), FUNCTIONS.len(), "one binary a function");
    for (name, function) in &functions {
        let binary = function["Metadata"]["BuildProperties"]["Binary"].as_str().expect("a binary");
        let (_, areas) = FUNCTIONS.iter().find(|(b, _)| *b == binary).unwrap_or_else(|| panic!("{binary}"));
        let reads: std::collections::BTreeSet<String> = variables_of(areas).into_iter().map(String::from).collect();
        let given = environment(name);
        let stray: Vec<_> = given.difference(&reads).collect();
        assert!(stray.is_empty(), "{name} ({binary}) is given variables it never reads: {stray:?}");
        let missing: Vec<_> = set_anywhere.intersection(&reads).filter(|v| !given.contains(*v)).collect();
        assert!(missing.is_empty(), "{name} ({binary}) reads variables the template sets for others only: {missing:?}");
    }
    let read_by_a_function: std::collections::BTreeSet<&str> =
        FUNCTIONS.iter().flat_map(|(_, areas)| variables_of(areas)).collect();
    let cli_only: Vec<&str> = variables_of(Area::ALL).into_iter().filter(|v| !read_by_a_function.contains(v)).collect();
    let operator: Vec<String> = operator_environment(&t).into_keys().collect();
    let mut expected: Vec<String> = cli_only.iter().map(|v| v.to_string()).collect();
    expected.sort();
    assert_eq!(operator, expected, "OperatorEnvironment: the variables of the areas only the CLI reads");
}
