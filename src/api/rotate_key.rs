//! `POST /iam/rotate-key` (and the reference's `POST /admin/v2/iam/rotateKey`):
//! rotate the caller's org key now and return the new key once.

use chrono::{DateTime, Utc};
use lambda_http::http::header::{ALLOW, RETRY_AFTER};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::caller::CallerRules;
use super::{is_json, json_response, request_id, request_time};
use crate::core::domain::{DecisionTime, Trigger};
use crate::core::duration::Duration;
use crate::core::ports::PortError;
use crate::core::rotation::{
    rotate_idempotent, Idempotency, Ports, Rotated, RotationError, RotationRequest, RotationSettings,
};
use crate::metrics::rotation_line;

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
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: a request body must be application/json".into(),
        ));
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
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Bad Request: previousKeyGracePeriod must be a string such as \"24h\"".into(),
                ))
            }
            (other, _) => {
                let shown: String = other.chars().take(64).flat_map(char::escape_debug).collect();
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("Bad Request: unknown field '{shown}'; the only field is previousKeyGracePeriod"),
                ));
            }
        }
    }
    Ok(grace)
}

/// The header a client sends to make a rotation safe to retry.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The request's `Idempotency-Key` (1 to 64 of `A-Z a-z 0-9 _ -`), if it
/// carries one, with the digest of its body that tells another request under
/// the same key apart.
fn idempotency(req: &Request) -> Result<Option<Idempotency>, String> {
    let mut values = req.headers().get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let invalid = "Bad Request: the Idempotency-Key header must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'";
    if values.next().is_some() {
        return Err("Bad Request: send the Idempotency-Key header once".into());
    }
    let key = value.to_str().map_err(|_| invalid.to_owned())?;
    let valid =
        (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(invalid.into());
    }
    let digest = Sha256::digest(req.body().as_ref());
    let fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(Idempotency { key: key.to_owned(), fingerprint }))
}

/// Handles one request. Always answers: every refusal is a JSON error with its status.
#[tracing::instrument(skip_all, fields(org = tracing::field::Empty, status = tracing::field::Empty))]
pub async fn handle(req: Request, ports: Ports<'_>, settings: &RotateKeySettings) -> Response<Body> {
    let now = request_time(&req);
    let response = respond(&req, ports, settings, now).await;
    tracing::Span::current().record("status", response.status().as_u16());
    response
}

async fn respond(req: &Request, ports: Ports<'_>, settings: &RotateKeySettings, when: DecisionTime) -> Response<Body> {
    let now = when.at();
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
    let idempotency = match idempotency(req) {
        Ok(idempotency) => idempotency,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message, now),
    };
    let request = RotationRequest {
        org: caller.org.clone(),
        now: when,
        trigger: Trigger::Api,
        actor: caller.subject,
        rotation_id: uuid::Uuid::new_v4().to_string(),
        request_id: request_id(req),
        grace,
    };
    match rotate_idempotent(ports, &settings.rotation, &request, idempotency.as_ref()).await {
        Ok(rotated) => {
            info!(
                access_key_id = %rotated.access_key_id,
                version = rotated.version,
                previous = rotated.previous.as_ref().map_or("none", |p| p.access_key_id.as_str()),
                "rotated"
            );
            // The dashboard's API rotations (an idempotent replay counts again).
            println!("{}", rotation_line(Trigger::Api, 1, Utc::now().timestamp_millis()));
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

/// Seconds a caller is asked to wait while another rotation of its org runs.
const IN_PROGRESS_RETRY_AFTER: u64 = 2;

/// The one place where a rotation error becomes an HTTP status (and a Retry-After).
fn status_of(e: &RotationError) -> (StatusCode, Option<u64>) {
    match e {
        RotationError::NotEnrolled(_) => (StatusCode::NOT_FOUND, None),
        // A rotation takes about a second: worth asking again soon.
        RotationError::InProgress { .. } => (StatusCode::CONFLICT, Some(IN_PROGRESS_RETRY_AFTER)),
        RotationError::NotEnabled { .. }
        | RotationError::Contended(_)
        | RotationError::ReplayUnavailable { .. }
        | RotationError::NotDue(_)
        | RotationError::SlotsHeld { .. } => (StatusCode::CONFLICT, None),
        RotationError::IdempotencyMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, None),
        RotationError::RateLimited { retry_after, .. } => (StatusCode::TOO_MANY_REQUESTS, Some(retry_after.as_secs())),
        RotationError::GraceTooLong { .. } => (StatusCode::BAD_REQUEST, None),
        RotationError::Aws(PortError::Throttled { .. }) => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
        RotationError::VerificationFailed(_) | RotationError::Aws(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
    }
}

#[cfg(test)]
mod tests {

    use chrono::TimeZone;
    use serde_json::{json, Value};

    use super::*;
    use crate::core::domain::{KeyState, OrgId, OrgRecord};
    use crate::core::memory::MemoryWorld;

    const EVENT: &str = include_str!("../../events/rotate-key.json");
    const GRACE: &str = include_str!("../../events/rotate-key-grace-period.json");
    const REFERENCE_ROUTE: &str = include_str!("../../events/rotate-key-reference-route.json");
    const WRONG_SCOPE: &str = include_str!("../../events/rotate-key-wrong-scope.json");
    const NOT_JSON: &str = include_str!("../../events/rotate-key-not-json.json");

    struct Fixture {
        world: MemoryWorld,
        settings: RotateKeySettings,
    }

    impl std::ops::Deref for Fixture {
        type Target = MemoryWorld;
        fn deref(&self) -> &MemoryWorld {
            &self.world
        }
    }

    impl Fixture {
        async fn new() -> Self {
            let f = Self {
                world: MemoryWorld::new(),
                settings: RotateKeySettings {
                    caller: CallerRules { org_claim: "org_id".into(), admin_scopes: vec!["admin".into()] },
                    rotation: RotationSettings::default(),
                },
            };
            f.world.enroll(&OrgId::parse("1234567").unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()).await;
            f
        }
        async fn call(
            &self,
            event: &str,
            patch: impl FnOnce(&mut Value),
        ) -> (u16, Value, lambda_http::http::HeaderMap) {
            let mut value: Value = serde_json::from_str(event).unwrap();
            patch(&mut value);
            let request = lambda_http::request::from_str(&value.to_string()).unwrap();
            let response = handle(request, self.ports(), &self.settings).await;
            let status = response.status().as_u16();
            let body = serde_json::from_slice(response.body().as_ref()).expect("always a JSON body");
            (status, body, response.headers().clone())
        }
        fn record(&self) -> OrgRecord {
            self.registry.get(&OrgId::parse("1234567").unwrap()).unwrap()
        }
        /// Another request's rotation has claimed the org at the event's time, its lease running.
        fn claimed_by(&self, rotation_id: &str) {
            let mut record = self.record();
            let now = Utc.timestamp_millis_opt(1795323071000).unwrap();
            record.pending = Some(crate::core::domain::PendingRotation {
                rotation_id: rotation_id.into(),
                trigger: Trigger::Api,
                started_at: now,
                lease_until: crate::core::domain::LeaseTime::from_utc(Utc::now()).after(Duration::from_secs(300)),
                new_access_key_id: None,
            });
            self.registry.put(record);
        }
    }

    fn claims(e: &mut Value) -> &mut Value {
        &mut e["requestContext"]["authorizer"]["jwt"]["claims"]
    }

    #[tokio::test]
    async fn a_rotation_answers_the_new_key_once_with_no_store() {
        let f = Fixture::new().await;
        let (status, body, headers) = f.call(EVENT, |_| {}).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["content-type"], "application/json");
        for field in ["oldKeyId", "currentKeyId", "secretAccessKey", "keyCreationDate"] {
            assert!(body[field].is_string(), "the reference's required string field {field}: {body}");
        }
        assert_eq!(body["oldKeyId"], "");
        assert_eq!(body["createdAt"], "2026-11-22T04:51:11Z", "now is the event's time");
        let secret = body["secretAccessKey"].as_str().unwrap();
        assert!(!serde_json::to_string(&f.record()).unwrap().contains(secret), "never stored in the registry");
        assert!(f.audit.entries().iter().all(|e| !serde_json::to_string(e).unwrap().contains(secret)));
    }

    #[tokio::test]
    async fn the_caller_must_carry_an_org_claim_and_the_admin_scope() {
        let f = Fixture::new().await;
        type Patch = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(&str, Patch, &str)> = vec![
            (WRONG_SCOPE, Box::new(|_| {}), "lacks the required scope (admin)"),
            (
                EVENT,
                Box::new(|e| {
                    claims(e).as_object_mut().unwrap().remove("org_id");
                }),
                "no org_id claim",
            ),
            (EVENT, Box::new(|e| claims(e)["org_id"] = "../other".into()), "not a valid org id"),
            (
                EVENT,
                Box::new(|e| {
                    e["requestContext"].as_object_mut().unwrap().remove("authorizer");
                }),
                "no JWT authorizer claims",
            ),
            (
                EVENT,
                Box::new(|e| {
                    e["requestContext"]["authorizer"]["jwt"]["scopes"] = Value::Null;
                    claims(e)["scope"] = "read write".into();
                }),
                "lacks the required scope",
            ),
        ];
        for (event, patch, says) in cases {
            let (status, body, _) = f.call(event, patch).await;
            assert_eq!(status, 403, "{body}");
            assert!(body["error"].as_str().unwrap().contains(says), "{body}");
        }
        // The scope may also come only from the `scope` claim, as some issuers write it.
        let (status, body, _) = f
            .call(EVENT, |e| {
                e["requestContext"]["authorizer"]["jwt"]["scopes"] = Value::Null;
                claims(e)["scope"] = "openid admin".into();
            })
            .await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test]
    async fn the_org_comes_from_the_token_never_from_the_body() {
        let f = Fixture::new().await;
        let (status, body, _) = f.call(GRACE, |e| e["body"] = json!({"orgId": "7654321"}).to_string().into()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("unknown field 'orgId'"), "{body}");
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_with_the_field_named() {
        let f = Fixture::new().await;
        let cases = [
            (json!("{"), "application/json", 400, "not valid JSON"),
            (json!("[]"), "application/json", 400, "must be a JSON object"),
            (
                json!(r#"{"previousKeyGracePeriod": 24}"#),
                "application/json",
                400,
                "previousKeyGracePeriod must be a string",
            ),
            (
                json!(r#"{"previousKeyGracePeriod": "24"}"#),
                "application/json",
                400,
                "previousKeyGracePeriod: '24' has no unit",
            ),
            (
                json!(r#"{"previousKeyGracePeriod": "8d"}"#),
                "application/json; charset=utf-8",
                400,
                "8d is longer than the maximum of 7d",
            ),
            (json!(r#"{"previousKeyGracePeriod": "24h"}"#), "text/plain", 415, "must be application/json"),
        ];
        for (body, content_type, status, says) in cases {
            let (got, answer, _) = f
                .call(GRACE, |e| {
                    e["body"] = body.clone();
                    e["headers"]["content-type"] = content_type.into();
                })
                .await;
            assert_eq!(got, status, "{body}: {answer}");
            assert!(answer["error"].as_str().unwrap().contains(says), "{body}: {answer}");
            assert_eq!(answer["path"], "/iam/rotate-key");
        }
        let (status, _, _) = f.call(NOT_JSON, |_| {}).await;
        assert_eq!(status, 415);
        assert!(f.record().current.is_none(), "nothing rotated");
    }

    #[tokio::test]
    async fn a_json_body_with_a_grace_period_and_a_bodiless_post_both_rotate() {
        let f = Fixture::new().await;
        assert_eq!(f.call(REFERENCE_ROUTE, |_| {}).await.0, 200);
        let (status, body, _) = f.call(GRACE, |e| e["requestContext"]["timeEpoch"] = json!(1795323131000i64)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["previousKeyStatus"], "Active");
        assert_eq!(body["previousKeyRetiresAt"], "2026-11-23T04:52:11Z");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_refused() {
        let f = Fixture::new().await;
        let (status, _, _) = f
            .call(EVENT, |e| {
                e["rawPath"] = "/iam/other".into();
                e["requestContext"]["http"]["path"] = "/iam/other".into();
            })
            .await;
        assert_eq!(status, 404);
        let (status, _, headers) = f.call(EVENT, |e| e["requestContext"]["http"]["method"] = "GET".into()).await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "POST");
    }

    #[tokio::test]
    async fn each_refusal_of_the_core_has_its_status() {
        let f = Fixture::new().await;
        // 429 after the hourly limit, with Retry-After.
        for i in 0..5 {
            let (status, _, _) =
                f.call(EVENT, |e| e["requestContext"]["timeEpoch"] = json!(1795323071000i64 + i * 1000)).await;
            assert_eq!(status, 200);
        }
        let (status, body, headers) =
            f.call(EVENT, |e| e["requestContext"]["timeEpoch"] = json!(1795323071000i64 + 60_000)).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(headers["retry-after"], "3540");
        // 409 for a key that is not Enabled.
        let mut record = f.record();
        record.state = KeyState::Disabled;
        f.registry.put(record);
        let (status, body, _) = f.call(EVENT, |e| e["requestContext"]["timeEpoch"] = json!(1795333071000i64)).await;
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains("Disabled"));
        // 503 when AWS fails, and nothing changed.
        let mut record = f.record();
        record.state = KeyState::Enabled;
        f.registry.put(record);
        let before = f.record();
        f.faults.inject(3, crate::core::memory::FaultMode::Fail); // list the keys
        let (status, body, _) = f.call(EVENT, |e| e["requestContext"]["timeEpoch"] = json!(1795333071000i64)).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(f.record(), before);
    }

    #[tokio::test]
    async fn a_rotation_in_progress_is_a_conflict() {
        let f = Fixture::new().await;
        f.claimed_by("other");
        let (status, body, _) = f.call(EVENT, |_| {}).await;
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains("already in progress"));
    }

    fn with_key(key: &str) -> impl FnOnce(&mut Value) + '_ {
        move |e| e["headers"]["idempotency-key"] = key.into()
    }

    fn later(e: &mut Value, minutes: i64) {
        let at = e["requestContext"]["timeEpoch"].as_i64().unwrap() + minutes * 60_000;
        e["requestContext"]["timeEpoch"] = at.into();
    }

    #[tokio::test]
    async fn a_repeated_idempotency_key_gets_the_same_answer_and_rotates_nothing() {
        let f = Fixture::new().await;
        // Given a rotation whose answer the client never saw,
        let (status, first, _) = f.call(EVENT, with_key("retry-1")).await;
        assert_eq!(status, 200, "{first}");
        let after_first = f.record();
        // when the client sends the same request again, an hour later,
        let (status, again, headers) = f
            .call(EVENT, |e| {
                with_key("retry-1")(e);
                later(e, 60);
            })
            .await;
        // then it gets the same key and secret, and nothing rotated or counted.
        assert_eq!(status, 200, "{again}");
        assert_eq!(headers["cache-control"], "no-store");
        for field in ["accessKeyId", "secretAccessKey", "keyVersion", "currentKeyId", "oldKeyId", "keyCreationDate"] {
            assert_eq!(again[field], first[field], "{field}");
        }
        assert_eq!(f.record(), after_first, "no new rotation, no rate-limit charge");
        assert_eq!(f.keys.keys_of("org-1234567").len(), 1);
        // A new key is a new request: it rotates.
        let (status, next, _) = f
            .call(EVENT, |e| {
                with_key("retry-2")(e);
                later(e, 61);
            })
            .await;
        assert_eq!(status, 200, "{next}");
        assert_eq!(next["keyVersion"], 2);
        assert_eq!(next["oldKeyId"], first["accessKeyId"]);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_remembered_for_a_day_and_per_org() {
        let f = Fixture::new().await;
        f.world.enroll(&OrgId::parse("7654321").unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()).await;
        let (_, first, _) = f.call(EVENT, with_key("same")).await;
        // The same key from another org is that org's own request.
        let (status, other, _) = f
            .call(EVENT, |e| {
                with_key("same")(e);
                claims(e)["org_id"] = "7654321".into();
            })
            .await;
        assert_eq!(status, 200, "{other}");
        assert_eq!(other["orgId"], "7654321");
        assert_ne!(other["accessKeyId"], first["accessKeyId"]);
        // After 24 hours the key is forgotten: the same request rotates again.
        let (status, day_later, _) = f
            .call(EVENT, |e| {
                with_key("same")(e);
                later(e, 24 * 60);
            })
            .await;
        assert_eq!(status, 200, "{day_later}");
        assert_eq!(day_later["keyVersion"], 2);
    }

    #[tokio::test]
    async fn another_body_under_the_same_idempotency_key_is_unprocessable() {
        let f = Fixture::new().await;
        let (status, _, _) = f.call(EVENT, with_key("k1")).await;
        assert_eq!(status, 200);
        let before = f.record();
        let (status, body, _) = f
            .call(GRACE, |e| {
                with_key("k1")(e);
                later(e, 1);
            })
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"].as_str().unwrap().contains("Idempotency-Key 'k1' was used for a different request"));
        assert_eq!(body["path"], "/iam/rotate-key");
        assert_eq!(f.record(), before);
    }

    #[tokio::test]
    async fn a_malformed_idempotency_key_is_refused_with_the_header_named() {
        let f = Fixture::new().await;
        let long = "k".repeat(65);
        for bad in ["", "has space", "ключ", "a/b", long.as_str()] {
            let (status, body, _) = f.call(EVENT, with_key(bad)).await;
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
        }
        assert!(f.record().current.is_none(), "nothing rotated");
        let (status, _, _) = f.call(EVENT, with_key(&"k".repeat(64))).await;
        assert_eq!(status, 200, "64 characters are allowed");
    }

    #[tokio::test]
    async fn a_repeat_while_the_first_request_runs_is_asked_to_retry_later() {
        let f = Fixture::new().await;
        // The first request with this key has claimed the org and not committed.
        f.claimed_by("first");
        let (status, body, headers) = f.call(EVENT, with_key("k1")).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(headers["retry-after"], "2");
    }
}
