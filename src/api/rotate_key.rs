//! `POST /iam/rotate-key` (and the reference's `POST /admin/v2/iam/rotateKey`):
//! rotate the caller's org key now and return the new key once.

use chrono::{DateTime, Utc};
use lambda_http::http::header::{ALLOW, RETRY_AFTER};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret;
use serde::Serialize;
use tracing::{info, warn};

use super::caller::CallerRules;
use super::{is_json, json_response, request_id, request_time};
use crate::core::domain::Trigger;
use crate::core::duration::Duration;
use crate::core::ports::PortError;
use crate::core::rotation::{rotate, Ports, Rotated, RotationError, RotationRequest, RotationSettings};

/// The path every error body names, as the reference does.
pub const ERROR_PATH: &str = "/iam/rotate-key";
/// The routes this function serves.
pub const ROUTES: [&str; 2] = ["/iam/rotate-key", "/admin/v2/iam/rotateKey"];

/// What the handler needs besides the ports.
#[derive(Debug, Clone)]
pub struct RotateKeySettings {
    pub caller: CallerRules,
    pub rotation: RotationSettings,
}

/// The reference's error body: `{"timestamp","status","error","path"}`.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    timestamp: String,
    status: u16,
    error: &'a str,
    path: &'a str,
}

fn error(status: StatusCode, message: &str, now: DateTime<Utc>) -> Response<Body> {
    let body = ErrorBody {
        timestamp: now.format("%Y-%m-%dT%H:%M:%S").to_string(),
        status: status.as_u16(),
        error: message,
        path: ERROR_PATH,
    };
    json_response(status, &body)
}

/// The answer to a successful rotation. It carries the reference's four
/// fields (`oldKeyId`, `currentKeyId`, `secretAccessKey`, `keyCreationDate`)
/// beside ours.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RotatedBody<'a> {
    org_id: &'a str,
    key_id: &'a str,
    key_version: u32,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    created_at: String,
    expires_at: String,
    previous_access_key_id: Option<&'a str>,
    previous_key_status: Option<&'static str>,
    previous_key_retires_at: Option<String>,
    old_key_id: &'a str,
    current_key_id: &'a str,
    key_creation_date: String,
}

fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn success(rotated: &Rotated) -> Response<Body> {
    let previous = rotated.previous.as_ref();
    let body = RotatedBody {
        org_id: rotated.org.as_str(),
        key_id: &rotated.key_id,
        key_version: rotated.version,
        access_key_id: &rotated.access_key_id,
        secret_access_key: rotated.secret_access_key.expose_secret(),
        created_at: iso(rotated.created_at),
        expires_at: iso(rotated.expires_at),
        previous_access_key_id: previous.map(|p| p.access_key_id.as_str()),
        previous_key_status: previous.map(|p| if p.active { "Active" } else { "Inactive" }),
        previous_key_retires_at: previous.map(|p| iso(p.retire_at)),
        old_key_id: previous.map_or("", |p| p.access_key_id.as_str()),
        current_key_id: &rotated.access_key_id,
        key_creation_date: iso(rotated.created_at),
    };
    json_response(StatusCode::OK, &body)
}

/// A request body, when one is sent: `{"previousKeyGracePeriod": "24h"}`.
fn parse_body(req: &Request) -> Result<Option<Duration>, (StatusCode, String)> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json(req.headers()) {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type: a request body must be application/json".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("Bad Request: the body is not valid JSON ({e})")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err((StatusCode::BAD_REQUEST, "Bad Request: the body must be a JSON object".into()));
    };
    let mut grace = None;
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("previousKeyGracePeriod", serde_json::Value::String(text)) => {
                let parsed: Duration = text
                    .parse()
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("Bad Request: previousKeyGracePeriod: {e}")))?;
                grace = Some(parsed);
            }
            ("previousKeyGracePeriod", serde_json::Value::Null) => {}
            ("previousKeyGracePeriod", _) => {
                return Err((StatusCode::BAD_REQUEST, "Bad Request: previousKeyGracePeriod must be a string such as \"24h\"".into()))
            }
            (other, _) => {
                let shown: String = other.chars().take(64).flat_map(char::escape_debug).collect();
                return Err((StatusCode::BAD_REQUEST, format!("Bad Request: unknown field '{shown}'; the only field is previousKeyGracePeriod")));
            }
        }
    }
    Ok(grace)
}

/// Handles one request. Always answers: every refusal is a JSON error with its status.
#[tracing::instrument(skip_all, fields(org = tracing::field::Empty, status = tracing::field::Empty))]
pub async fn handle(req: Request, ports: Ports<'_>, settings: &RotateKeySettings) -> Response<Body> {
    let now = request_time(&req);
    let response = respond(&req, ports, settings, now).await;
    tracing::Span::current().record("status", response.status().as_u16());
    response
}

async fn respond(req: &Request, ports: Ports<'_>, settings: &RotateKeySettings, now: DateTime<Utc>) -> Response<Body> {
    let path = req.uri().path();
    if !ROUTES.iter().any(|route| path.ends_with(route)) {
        return error(StatusCode::NOT_FOUND, "Not Found", now);
    }
    if req.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed: use POST", now);
        response.headers_mut().insert(ALLOW, "POST".parse().expect("static header"));
        return response;
    }
    let caller = match settings.caller.caller(req) {
        Ok(caller) => caller,
        Err(forbidden) => {
            warn!(reason = %forbidden, "refused");
            return error(StatusCode::FORBIDDEN, &forbidden.to_string(), now);
        }
    };
    tracing::Span::current().record("org", caller.org.as_str());
    let grace = match parse_body(req) {
        Ok(grace) => grace,
        Err((status, message)) => return error(status, &message, now),
    };
    let request = RotationRequest {
        org: caller.org.clone(),
        now,
        trigger: Trigger::Api,
        actor: caller.subject,
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: request_id(req),
        grace,
    };
    match rotate(ports, &settings.rotation, &request).await {
        Ok(rotated) => {
            info!(
                access_key_id = %rotated.access_key_id,
                version = rotated.version,
                previous = ?rotated.previous.as_ref().map(|p| &p.access_key_id),
                "rotated"
            );
            success(&rotated)
        }
        Err(e) => {
            let (status, retry_after) = status_of(&e);
            if status.is_server_error() {
                warn!(error = %e, "rotation failed");
            } else {
                info!(reason = %e, "rotation refused");
            }
            let mut response = error(status, &e.to_string(), now);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(RETRY_AFTER, seconds.into());
            }
            response
        }
    }
}

/// The one place where a rotation error becomes an HTTP status (and a Retry-After).
fn status_of(e: &RotationError) -> (StatusCode, Option<u64>) {
    match e {
        RotationError::NotEnrolled(_) => (StatusCode::NOT_FOUND, None),
        RotationError::NotEnabled { .. } | RotationError::InProgress { .. } | RotationError::Contended(_) => (StatusCode::CONFLICT, None),
        RotationError::RateLimited { retry_after, .. } => (StatusCode::TOO_MANY_REQUESTS, Some(retry_after.as_secs())),
        RotationError::GraceTooLong { .. } => (StatusCode::BAD_REQUEST, None),
        RotationError::Aws(PortError::Throttled { .. }) => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
        RotationError::VerificationFailed(_) | RotationError::Aws(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
    }
}
