//! Every file in `events/` is an event Lambda would deliver (API Gateway,
//! EventBridge, SQS): it parses as its type, serializes, and parses again to
//! the same event (so `cargo lambda invoke` and `sam local invoke -e` take it
//! as the tests do).

mod common;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::SqsEvent;
use common::project_root;
use serde_json::Value;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str, text: &str) -> Value {
    let typed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let value = serde_json::to_value(&typed).unwrap();
    let again: T = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), value, "{name}");
    value
}

#[test]
fn every_event_file_parses_serializes_and_parses_again() {
    let mut seen = 0;
    for entry in std::fs::read_dir(project_root().join("events")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        if raw.get("requestContext").is_some() {
            let event = round_trip::<ApiGatewayV2httpRequest>(&name, &text);
            assert_eq!(event["version"], "2.0", "{name}: an HTTP API payload v2");
            assert!(event["requestContext"]["timeEpoch"].as_i64().unwrap() > 0, "{name}: has a time");
            assert!(lambda_http::request::from_str(&text).is_ok(), "{name}: lambda_http takes it");
        } else if raw.get("Records").is_some() {
            // The sweep's queue to sweep-worker: each body one slice of a run.
            let event = round_trip::<SqsEvent>(&name, &text);
            for record in event["Records"].as_array().unwrap() {
                assert_eq!(record["eventSource"], "aws:sqs", "{name}");
                let body = record["body"].as_str().unwrap();
                let slice: s3_key_rotation::core::fanout::Slice =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: the body is not a slice: {e}"));
                assert!(!slice.orgs.is_empty(), "{name}");
            }
        } else {
            let event = round_trip::<EventBridgeEvent<Value>>(&name, &text);
            assert_eq!(event["detail-type"], "Scheduled Event", "{name}");
            assert_eq!(event["source"], "aws.events", "{name}");
        }
        seen += 1;
    }
    assert!(seen >= 14, "{seen} event files");
}
