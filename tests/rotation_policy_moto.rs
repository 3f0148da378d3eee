//! rotation-policy against a real local AWS endpoint (moto), fed the real
//! event files: the policy is stored in the registry and read back.

mod common;

use chrono::Utc;
use common::{event, Function, Stack, ORG_A, ORG_B};
use s3_key_rotation::api::rotation_policy::{handle, PolicyPorts};
use s3_key_rotation::core::domain::DecisionTime;
use s3_key_rotation::core::domain::{OrgId, Trigger};
use s3_key_rotation::core::ports::Registry;
use s3_key_rotation::core::rotation::{rotate, RotationRequest};

async fn call(stack: &Stack, name: &str, patch: impl FnOnce(&mut serde_json::Value)) -> (u16, String) {
    let settings = stack.config.policy_settings();
    let function = stack.function(Function::RotationPolicy);
    let ports = PolicyPorts { registry: &function.registry, audit: &function.audit };
    let response = handle(event(name, patch), ports, &settings).await;
    (response.status().as_u16(), String::from_utf8(response.body().as_ref().to_vec()).unwrap())
}

async fn stack_with_a_rotated_org() -> Stack {
    let stack = Stack::start().await;
    stack.enroll(&[ORG_A, ORG_B], Utc::now()).await;
    let request = RotationRequest {
        org: OrgId::parse(ORG_A).unwrap(),
        now: DecisionTime::from(
            chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").unwrap().with_timezone(&Utc),
        ),
        trigger: Trigger::Operator,
        actor: "test".into(),
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: None,
        grace: None,
    };
    rotate(stack.adapters.ports(), &stack.config.rotation_settings(), &request).await.unwrap();
    stack
}

#[tokio::test(flavor = "multi_thread")]
async fn enabling_then_describing_shows_the_stored_policy_and_the_next_rotation() {
    let stack = stack_with_a_rotated_org().await;

    let (status, body) = call(&stack, "policy-update-rotation-policy.json", |_| {}).await;
    assert_eq!(status, 200, "{body}");

    let org = OrgId::parse(ORG_A).unwrap();
    let stored = stack.adapters.registry.load(&org).await.unwrap().unwrap().value;
    assert!(stored.policy.automatic);
    assert_eq!(stored.policy.interval.unwrap().to_string(), "30d");
    let (status, body) = call(&stack, "policy-describe-key.json", |_| {}).await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let metadata = &body["KeyMetadata"];
    assert_eq!(metadata["AutomaticRotation"], "Enabled");
    assert_eq!(metadata["RotationInterval"], "2592000s");
    assert_eq!(metadata["LastRotationDate"], "2026-11-01T00:00:00Z");
    assert_eq!(metadata["NextRotationDate"], "2026-12-01T00:00:00Z");
    assert_eq!(metadata["PrimaryKeyVersion"], "1");

    let (status, body) = call(&stack, "policy-update-rotation-policy-form.json", |_| {}).await;
    assert_eq!(status, 200, "{body}");
    let stored = stack.adapters.registry.load(&org).await.unwrap().unwrap().value;
    assert!(!stored.policy.automatic);
    assert_eq!(stored.policy.next_rotation_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_orgs_key_is_not_found_and_unchanged() {
    let stack = stack_with_a_rotated_org().await;
    let other = OrgId::parse(ORG_B).unwrap();
    let before = stack.adapters.registry.load(&other).await.unwrap().unwrap();

    let (status, body) = call(&stack, "policy-update-rotation-policy.json", |e| {
        // API Gateway gives the query both ways; set both.
        e["queryStringParameters"]["KeyId"] = format!("key-{ORG_B}").into();
        let raw = e["rawQueryString"].as_str().unwrap().replace(&format!("key-{ORG_A}"), &format!("key-{ORG_B}"));
        e["rawQueryString"] = raw.into();
    })
    .await;

    assert_eq!(status, 404, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["Code"], "Forbidden.KeyNotFound");
    assert_eq!(stack.adapters.registry.load(&other).await.unwrap().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn xml_and_json_answers_parse_and_match_the_reference_shapes() {
    let stack = stack_with_a_rotated_org().await;
    let (status, xml) = call(&stack, "policy-describe-key-xml.json", |_| {}).await;
    assert_eq!(status, 200);
    let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "DescribeKeyResponse");
    let metadata = doc.root_element().children().find(|n| n.has_tag_name("KeyMetadata")).unwrap();
    let names: Vec<&str> = metadata.children().filter(|n| n.is_element()).map(|n| n.tag_name().name()).collect();
    for field in ["KeyId", "KeyState", "CreationDate", "AutomaticRotation", "LastRotationDate", "PrimaryKeyVersion"] {
        assert!(names.contains(&field), "{field} in {names:?}");
    }

    let (status, json) = call(&stack, "policy-list-key-versions-json-body.json", |_| {}).await;
    assert_eq!(status, 200, "{json}");
    let body: serde_json::Value = serde_json::from_str(&json).unwrap();
    let version = &body["KeyVersions"]["KeyVersion"][0];
    for field in ["KeyId", "KeyVersionId", "CreationDate"] {
        assert!(version[field].is_string(), "{field}: {body}");
    }
    assert_eq!(body["PageSize"], 5);
    assert_eq!(body["TotalCount"], 1);
    assert!(body["RequestId"].is_string());
}
