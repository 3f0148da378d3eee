//! HTTP glue shared by the API Gateway functions: who the caller is (the JWT
//! authorizer's claims), what "now" is (the event's time), the content type of
//! a body, and the error shapes of the two reference APIs.

pub mod caller;
pub mod rotate_key;
pub mod rotation_policy;

use lambda_http::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

use crate::core::domain::DecisionTime;

/// The decision time of a request: when API Gateway received it
/// (`requestContext.timeEpoch`), see [`DecisionTime::of_api_request`].
pub fn request_time(req: &Request) -> DecisionTime {
    let sent = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => Some(ctx.time_epoch),
        _ => None,
    };
    DecisionTime::of_api_request(sent)
}

/// API Gateway's request id, else the Lambda request id.
pub fn request_id(req: &Request) -> Option<String> {
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) if ctx.request_id.is_some() => ctx.request_id.clone(),
        _ => req.lambda_context_ref().map(|c| c.request_id.clone()),
    }
}

/// Whether the request declares a JSON body (`application/json`, or any
/// `+json` type, with or without parameters).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// A JSON response that no cache keeps (every answer of ours may name keys).
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
    response
}
