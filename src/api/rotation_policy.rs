//! The KMS-style RPC API of the rotation policy (modelled on Alibaba Cloud
//! KMS): `UpdateRotationPolicy`, `DescribeKey`, `ListKeyVersions`.
//!
//! The action comes from the `Action` parameter or the `x-acs-action` header;
//! parameters from the query string, a form body or a JSON body (PascalCase
//! names; a body's value wins over the query's). Answers are JSON, or XML
//! with `Format=XML` or `Accept: application/xml`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lambda_http::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use lambda_http::http::{HeaderMap, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::caller::CallerRules;
use super::{json_response, request_id, request_time};
use crate::core::domain::{OrgId, OrgRecord};
use crate::core::duration::Duration;
use crate::core::policy::{
    automatic_rotation, key_versions, next_automatic_rotation, update_policy, PolicyChange, PolicyError,
};
use crate::core::ports::{AuditLog, PortError, Registry};
use crate::core::rotation::RotationSettings;

/// What the handler needs besides the ports.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub caller: CallerRules,
    /// Shown by DescribeKey with the current key's expiry.
    pub max_key_age: Duration,
    /// Automatic rotation happens at the latest this long before the maximum
    /// age (DescribeKey's `NextRotationDate` shows that real date).
    pub automatic_lead: Duration,
}

/// The services the policy API uses.
#[derive(Clone, Copy)]
pub struct PolicyPorts<'a> {
    pub registry: &'a dyn Registry,
    pub audit: &'a dyn AuditLog,
}

/// An error in the reference's terms: HTTP status, code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn invalid(parameter: &str, why: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidParameter",
            message: format!("The specified parameter is not valid. {parameter}: {why}"),
        }
    }
    fn missing(parameter: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "MissingParameter",
            message: format!("The parameter {parameter} is required but was not given."),
        }
    }
    fn key_not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "Forbidden.KeyNotFound",
            message: "The specified Key is not found.".into(),
        }
    }
    fn unavailable(e: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "ServiceUnavailable",
            message: format!("The service is temporarily unavailable; nothing was changed ({e})."),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::KeyNotFound => Self::key_not_found(),
            PolicyError::IntervalOutOfRange(_) => {
                Self::invalid("RotationInterval", "must be between 7 days and 365 days (7d to 365d)")
            }
            PolicyError::Contended(_) => Self {
                status: StatusCode::CONFLICT,
                code: "Conflict.ConcurrentUpdate",
                message: "The key was changed by another request; try again.".into(),
            },
            PolicyError::Aws(e) => Self::unavailable(e),
        }
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        Self::unavailable(e)
    }
}

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

/// The request's parameters by name.
type Params = BTreeMap<String, String>;

fn query_parameters(req: &Request) -> Params {
    req.query_string_parameters().iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect()
}

fn parameters(req: &Request) -> Result<Params, ApiError> {
    let mut params = query_parameters(req);
    let body: &[u8] = req.body().as_ref();
    if !body.is_empty() {
        let content_type = media_type(req.headers());
        if content_type == "application/x-www-form-urlencoded" {
            for (name, value) in form_urlencoded::parse(body) {
                params.insert(name.into_owned(), value.into_owned());
            }
        } else if content_type == "application/json" || content_type.ends_with("+json") {
            let value: Value =
                serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("not valid JSON ({e})")))?;
            let Value::Object(fields) = value else {
                return Err(ApiError::invalid("body", "must be a JSON object of parameters"));
            };
            for (name, value) in fields {
                let text = match value {
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => continue,
                    _ => return Err(ApiError::invalid(&name, "must be a string, number or boolean")),
                };
                params.insert(name, text);
            }
        } else {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "InvalidParameter",
                message: "The specified parameter is not valid. body: send parameters in the query string, as application/x-www-form-urlencoded or as application/json".into(),
            });
        }
    }
    Ok(params)
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn format_of(params: &Params, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(format) = params.get("Format") {
        return match format.to_ascii_uppercase().as_str() {
            "XML" => Ok(Format::Xml),
            "JSON" => Ok(Format::Json),
            _ => Err(ApiError::invalid("Format", "must be JSON or XML")),
        };
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if (accept.contains("application/xml") || accept.contains("text/xml")) && !accept.contains("json") {
        Ok(Format::Xml)
    } else {
        Ok(Format::Json)
    }
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    params.get(name).map(String::as_str).filter(|v| !v.trim().is_empty()).ok_or_else(|| ApiError::missing(name))
}

fn boolean(params: &Params, name: &str) -> Result<bool, ApiError> {
    let value = required(params, name)?;
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::invalid(name, format!("'{}' is not true or false", shown(value)))),
    }
}

fn number(params: &Params, name: &str, default: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(text) => text.parse::<u32>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("'{}' is not a whole number from {} to {}", shown(text), range.start(), range.end()),
            )
        }),
    }
}

fn shown(text: &str) -> String {
    text.chars().take(40).flat_map(char::escape_debug).collect()
}

fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Handles one request. Always answers: every refusal is an error body with its status.
#[tracing::instrument(skip_all, fields(org = tracing::field::Empty, action = tracing::field::Empty, status = tracing::field::Empty))]
pub async fn handle(req: Request, ports: PolicyPorts<'_>, settings: &PolicySettings) -> Response<Body> {
    let now = request_time(&req);
    let request_id = request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let params = parameters(&req);
    // A body that cannot be read is refused in the format the query string or Accept asks for.
    let format = format_of(params.as_ref().unwrap_or(&query_parameters(&req)), req.headers()).unwrap_or(Format::Json);
    let result = match params {
        Ok(params) => respond(&req, &params, ports, settings, now.at(), &request_id).await,
        Err(e) => Err(e),
    };
    let response = match result {
        Ok((action, mut body)) => {
            body.insert("RequestId".into(), Value::String(request_id));
            render(StatusCode::OK, &format!("{action}Response"), Value::Object(body), format)
        }
        Err(e) => {
            if e.status.is_server_error() {
                warn!(code = e.code, message = %e.message, "failed");
            } else {
                info!(code = e.code, message = %e.message, "refused");
            }
            let body = json!({"RequestId": request_id, "Code": e.code, "Message": e.message});
            render(e.status, "Error", body, format)
        }
    };
    tracing::Span::current().record("status", response.status().as_u16());
    response
}

async fn respond(
    req: &Request,
    params: &Params,
    ports: PolicyPorts<'_>,
    settings: &PolicySettings,
    now: DateTime<Utc>,
    request_id: &str,
) -> Result<(&'static str, Map<String, Value>), ApiError> {
    format_of(params, req.headers())?;
    let caller = settings.caller.caller(req).map_err(|f| ApiError {
        status: StatusCode::FORBIDDEN,
        code: "Forbidden.NoPermission",
        message: f.to_string(),
    })?;
    tracing::Span::current().record("org", caller.org.as_str());
    let header_action = req.headers().get("x-acs-action").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let action = params.get("Action").cloned().or(header_action).ok_or_else(|| ApiError::missing("Action"))?;
    tracing::Span::current().record("action", action.as_str());
    let action: &'static str = match action.as_str() {
        "UpdateRotationPolicy" => "UpdateRotationPolicy",
        "DescribeKey" => "DescribeKey",
        "ListKeyVersions" => "ListKeyVersions",
        other => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "InvalidAction.NotFound",
                message: format!("The specified action '{}' is not found; this API serves UpdateRotationPolicy, DescribeKey and ListKeyVersions.", shown(other)),
            })
        }
    };
    let key_id = required(params, "KeyId")?;
    // A key of another org, or of no org, is "not found": existence does not leak.
    if key_id != caller.org.key_id() {
        return Err(ApiError::key_not_found());
    }
    let org = caller.org;
    let body = match action {
        "UpdateRotationPolicy" => {
            let enable = boolean(params, "EnableAutomaticRotation")?;
            let change = if enable {
                let text = required(params, "RotationInterval")?;
                let interval: Duration = text.parse().map_err(|e| ApiError::invalid("RotationInterval", e))?;
                PolicyChange::enable(interval)?
            } else {
                PolicyChange::Disable
            };
            update_policy(ports.registry, ports.audit, &org, change, now, &caller.subject, Some(request_id.to_owned()))
                .await?;
            Map::new()
        }
        "DescribeKey" => {
            let record = load(ports.registry, &org).await?;
            let mut body = Map::new();
            body.insert("KeyMetadata".into(), key_metadata(&record, settings));
            body
        }
        _ => {
            let page_number = number(params, "PageNumber", 1, 1..=u32::MAX)?;
            let page_size = number(params, "PageSize", 10, 1..=100)?;
            let record = load(ports.registry, &org).await?;
            let versions = key_versions(&record);
            let page: Vec<Value> = versions
                .iter()
                .skip((page_number as usize - 1).saturating_mul(page_size as usize))
                .take(page_size as usize)
                .map(|v| {
                    json!({
                        "KeyId": record.key_id,
                        "KeyVersionId": v.version.to_string(),
                        "CreationDate": iso(v.created_at),
                        "AccessKeyId": v.access_key_id,
                        "Status": v.status.as_str(),
                    })
                })
                .collect();
            let mut body = Map::new();
            body.insert("KeyVersions".into(), json!({ "KeyVersion": page }));
            body.insert("TotalCount".into(), versions.len().into());
            body.insert("PageNumber".into(), page_number.into());
            body.insert("PageSize".into(), page_size.into());
            body
        }
    };
    Ok((action, body))
}

async fn load(registry: &dyn Registry, org: &OrgId) -> Result<OrgRecord, ApiError> {
    Ok(registry.load(org).await?.ok_or_else(ApiError::key_not_found)?.value)
}

/// DescribeKey's `KeyMetadata`: the reference's fields and ours; never a secret.
fn key_metadata(record: &OrgRecord, settings: &PolicySettings) -> Value {
    let max_key_age = settings.max_key_age;
    let rotation =
        RotationSettings { max_key_age, automatic_lead: settings.automatic_lead, ..RotationSettings::default() };
    let mut m = Map::new();
    let mut put = |name: &str, value: Value| {
        m.insert(name.to_owned(), value);
    };
    put("KeyId", record.key_id.clone().into());
    put("KeyState", record.state.as_str().into());
    put("CreationDate", iso(record.created_at).into());
    put(
        "Description",
        format!("IAM access key of org {} for s3://{}/{}", record.org_id, record.bucket, record.prefix).into(),
    );
    put("AutomaticRotation", automatic_rotation(record).into());
    if let Some(interval) = record.policy.interval {
        put("RotationInterval", interval.to_seconds_string().into());
    }
    if let Some(at) = record.policy.last_rotation_at {
        put("LastRotationDate", iso(at).into());
    }
    if let Some(at) = next_automatic_rotation(record, &rotation) {
        put("NextRotationDate", iso(at).into());
    }
    put("MaxKeyAge", max_key_age.to_seconds_string().into());
    if let Some(current) = &record.current {
        put("PrimaryKeyVersion", current.version.to_string().into());
        put("PrimaryAccessKeyId", current.access_key_id.clone().into());
        put("KeyExpirationDate", iso(current.expiry(max_key_age)).into());
    }
    Value::Object(m)
}

fn render(status: StatusCode, root: &str, body: Value, format: Format) -> Response<Body> {
    match format {
        Format::Json => json_response(status, &body),
        Format::Xml => {
            let mut text = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
            write_xml(&mut text, root, &body);
            let mut response = Response::new(Body::Text(text));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, "application/xml".parse().expect("static header"));
            headers.insert(CACHE_CONTROL, "no-store".parse().expect("static header"));
            response
        }
    }
}

/// JSON as the reference writes it in XML: an object's fields become child
/// elements, an array repeats its element.
fn write_xml(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| write_xml(out, name, item)),
        Value::Object(fields) => {
            out.push_str(&format!("<{name}>"));
            fields.iter().for_each(|(k, v)| write_xml(out, k, v));
            out.push_str(&format!("</{name}>"));
        }
        Value::Null => out.push_str(&format!("<{name}/>")),
        Value::String(s) => out.push_str(&format!("<{name}>{}</{name}>", escape(s))),
        other => out.push_str(&format!("<{name}>{other}</{name}>")),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not representable in XML 1.0, even as a reference.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::core::domain::KeyState;
    use crate::core::memory::{Faults, MemoryAudit, MemoryRegistry};
    use crate::core::rotation::commit_rotation;

    const UPDATE: &str = include_str!("../../events/policy-update-rotation-policy.json");
    const UPDATE_SDK: &str = include_str!("../../events/policy-update-rotation-policy-sdk.json");
    const UPDATE_FORM: &str = include_str!("../../events/policy-update-rotation-policy-form.json");
    const DESCRIBE: &str = include_str!("../../events/policy-describe-key.json");
    const DESCRIBE_XML: &str = include_str!("../../events/policy-describe-key-xml.json");
    const LIST: &str = include_str!("../../events/policy-list-key-versions.json");
    const LIST_JSON_BODY: &str = include_str!("../../events/policy-list-key-versions-json-body.json");

    struct Fixture {
        faults: Arc<Faults>,
        registry: MemoryRegistry,
        audit: MemoryAudit,
        settings: PolicySettings,
    }

    fn rotated_at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
    }

    impl Fixture {
        fn new() -> Self {
            let faults = Arc::new(Faults::default());
            let f = Self {
                registry: MemoryRegistry::new(faults.clone()),
                audit: MemoryAudit::new(faults.clone()),
                faults,
                settings: PolicySettings {
                    caller: CallerRules { org_claim: "org_id".into(), admin_scopes: vec!["admin".into()] },
                    max_key_age: Duration::from_days(90),
                    automatic_lead: Duration::from_days(2),
                },
            };
            let org = OrgId::parse("1234567").unwrap();
            let mut record =
                OrgRecord::enrolled(&org, "logs", "1234567/", Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
            commit_rotation(
                &mut record,
                "AKIAFIRST",
                rotated_at() - chrono::TimeDelta::days(10),
                Duration::from_secs(0),
                None,
            );
            commit_rotation(&mut record, "AKIASECOND", rotated_at(), Duration::from_secs(0), None);
            f.registry.put(record);
            f
        }

        async fn call(&self, event: &str, patch: impl FnOnce(&mut Value)) -> (u16, String, HeaderMap) {
            let mut value: Value = serde_json::from_str(event).unwrap();
            patch(&mut value);
            let request = lambda_http::request::from_str(&value.to_string()).unwrap();
            let response =
                handle(request, PolicyPorts { registry: &self.registry, audit: &self.audit }, &self.settings).await;
            let status = response.status().as_u16();
            let text = String::from_utf8(response.body().as_ref().to_vec()).unwrap();
            (status, text, response.headers().clone())
        }

        async fn json(&self, event: &str, patch: impl FnOnce(&mut Value)) -> (u16, Value) {
            let (status, text, headers) = self.call(event, patch).await;
            assert_eq!(headers["content-type"], "application/json");
            (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
        }

        fn record(&self) -> OrgRecord {
            self.registry.get(&OrgId::parse("1234567").unwrap()).unwrap()
        }
    }

    /// UpdateRotationPolicy enabling rotation every `interval`, as query parameters.
    fn enable_every(interval: &str) -> impl FnOnce(&mut Value) {
        query(&[
            ("Action", "UpdateRotationPolicy"),
            ("KeyId", "key-1234567"),
            ("EnableAutomaticRotation", "true"),
            ("RotationInterval", interval),
        ])
    }

    /// Sets query parameters of an event (both forms API Gateway gives).
    fn query(pairs: &[(&str, &str)]) -> impl FnOnce(&mut Value) {
        let map: Map<String, Value> =
            pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
        let raw = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter()).finish();
        move |e| {
            e["queryStringParameters"] = Value::Object(map);
            e["rawQueryString"] = raw.into();
        }
    }

    #[tokio::test]
    async fn every_event_file_is_answered() {
        let f = Fixture::new();
        for (event, action) in [
            (UPDATE, "UpdateRotationPolicy"),
            (UPDATE_SDK, "UpdateRotationPolicy"),
            (UPDATE_FORM, "UpdateRotationPolicy"),
            (DESCRIBE, "DescribeKey"),
            (LIST, "ListKeyVersions"),
            (LIST_JSON_BODY, "ListKeyVersions"),
        ] {
            let (status, body) = f.json(event, |_| {}).await;
            assert_eq!(status, 200, "{action}: {body}");
            assert!(body["RequestId"].as_str().is_some_and(|id| id.starts_with("1a2b3c4d-")), "{body}");
        }
        let (status, text, headers) = f.call(DESCRIBE_XML, |_| {}).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/xml");
        roxmltree::Document::parse(&text).unwrap();
    }

    #[tokio::test]
    async fn rotation_intervals_from_7_to_365_days_are_accepted_and_nothing_else() {
        let f = Fixture::new();
        for (interval, seconds) in [
            ("7d", 604_800),
            ("604800s", 604_800),
            ("8760h", 31_536_000),
            ("365d", 31_536_000),
            ("30d", 2_592_000),
            ("10080m", 604_800),
        ] {
            let (status, body) = f.json(UPDATE, enable_every(interval)).await;
            assert_eq!(status, 200, "{interval}: {body}");
            assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["RequestId"]);
            let (_, described) = f.json(DESCRIBE, |_| {}).await;
            assert_eq!(described["KeyMetadata"]["RotationInterval"], format!("{seconds}s"), "{interval}");
        }
        for interval in
            ["6d", "366d", "0d", "-7d", "7", "7w", "7.5d", " 7d", "7d ", "99999999999999999999d", "", "d", "1e1d"]
        {
            let before = f.record();
            let (status, body) = f.json(UPDATE, enable_every(interval)).await;
            assert_eq!(status, 400, "{interval:?}: {body}");
            let expected = if interval.is_empty() { "MissingParameter" } else { "InvalidParameter" };
            assert_eq!(body["Code"], expected, "{interval:?}: {body}");
            assert!(body["Message"].as_str().unwrap().contains("RotationInterval"), "{body}");
            assert_eq!(f.record(), before, "{interval:?}: nothing stored");
        }
    }

    #[tokio::test]
    async fn booleans_are_true_or_false_in_any_case() {
        let f = Fixture::new();
        for (text, enabled) in [("true", true), ("True", true), ("TRUE", true), ("false", false), ("False", false)] {
            let (status, body) = f
                .json(
                    UPDATE,
                    query(&[
                        ("Action", "UpdateRotationPolicy"),
                        ("KeyId", "key-1234567"),
                        ("EnableAutomaticRotation", text),
                        ("RotationInterval", "30d"),
                    ]),
                )
                .await;
            assert_eq!(status, 200, "{text}: {body}");
            assert_eq!(f.record().policy.automatic, enabled, "{text}");
        }
        for text in ["yes", "1", "0", "on", "tru", ""] {
            let (status, body) = f
                .json(
                    UPDATE,
                    query(&[
                        ("Action", "UpdateRotationPolicy"),
                        ("KeyId", "key-1234567"),
                        ("EnableAutomaticRotation", text),
                    ]),
                )
                .await;
            assert_eq!(status, 400, "{text}: {body}");
            assert!(body["Message"].as_str().unwrap().contains("EnableAutomaticRotation"), "{body}");
        }
        // Disabling needs no interval; enabling does.
        let (status, body) = f
            .json(
                UPDATE,
                query(&[
                    ("Action", "UpdateRotationPolicy"),
                    ("KeyId", "key-1234567"),
                    ("EnableAutomaticRotation", "true"),
                ]),
            )
            .await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (400, "MissingParameter"));
        assert!(body["Message"].as_str().unwrap().contains("RotationInterval"));
    }

    #[tokio::test]
    async fn enabling_sets_the_next_rotation_and_describe_shows_it() {
        let f = Fixture::new();
        let (status, _) = f.json(UPDATE, |_| {}).await; // 30d
        assert_eq!(status, 200);
        let (_, body) = f.json(DESCRIBE, |_| {}).await;
        let m = &body["KeyMetadata"];
        assert_eq!(m["KeyId"], "key-1234567");
        assert_eq!(m["KeyState"], "Enabled");
        assert_eq!(m["AutomaticRotation"], "Enabled");
        assert_eq!(m["RotationInterval"], "2592000s");
        assert_eq!(m["LastRotationDate"], "2026-11-01T00:00:00Z");
        assert_eq!(m["NextRotationDate"], "2026-12-01T00:00:00Z");
        assert_eq!(m["PrimaryKeyVersion"], "2");
        assert_eq!(m["PrimaryAccessKeyId"], "AKIASECOND");
        assert_eq!(m["KeyExpirationDate"], "2027-01-30T00:00:00Z");
        assert_eq!(m["MaxKeyAge"], "7776000s");
        assert!(f
            .audit
            .entries()
            .iter()
            .any(|e| e.action == "update rotation policy" && e.actor == "admin@example.com"));
        // Disabled key: the policy may change, rotation is suspended.
        let mut record = f.record();
        record.state = KeyState::Disabled;
        f.registry.put(record);
        let (status, _) = f.json(UPDATE_SDK, |_| {}).await; // 604800s
        assert_eq!(status, 200);
        let (_, body) = f.json(DESCRIBE, |_| {}).await;
        assert_eq!(body["KeyMetadata"]["AutomaticRotation"], "Suspended");
        assert_eq!(body["KeyMetadata"]["RotationInterval"], "604800s");
        // Disabling clears the next rotation date.
        let (status, _) = f.json(UPDATE_FORM, |_| {}).await;
        assert_eq!(status, 200);
        let (_, body) = f.json(DESCRIBE, |_| {}).await;
        assert_eq!(body["KeyMetadata"]["AutomaticRotation"], "Disabled");
        assert!(body["KeyMetadata"].get("NextRotationDate").is_none());
    }

    #[tokio::test]
    async fn an_interval_past_the_maximum_key_age_shows_the_real_next_rotation() {
        // Given a key made on 1 November and a 90-day maximum age,
        let f = Fixture::new();
        // when automatic rotation is set to once a year (accepted, as by the reference),
        let (status, body) = f.json(UPDATE, enable_every("365d")).await;
        assert_eq!(status, 200, "{body}");
        // then the next rotation is shown before the key expires, not a year later.
        let (_, body) = f.json(DESCRIBE, |_| {}).await;
        let m = &body["KeyMetadata"];
        assert_eq!(m["RotationInterval"], "31536000s");
        assert_eq!(m["KeyExpirationDate"], "2027-01-30T00:00:00Z");
        assert_eq!(m["NextRotationDate"], "2027-01-28T00:00:00Z", "two days (the lead) before expiry");
    }

    #[tokio::test]
    async fn key_versions_are_listed_newest_first_and_paged() {
        let f = Fixture::new();
        let (status, body) = f.json(LIST, |_| {}).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["TotalCount"], 2);
        assert_eq!(body["PageNumber"], 1);
        assert_eq!(body["PageSize"], 10);
        let versions = body["KeyVersions"]["KeyVersion"].as_array().unwrap();
        assert_eq!(versions[0]["KeyVersionId"], "2");
        assert_eq!(versions[0]["Status"], "Primary");
        assert_eq!(versions[0]["AccessKeyId"], "AKIASECOND");
        assert_eq!(versions[0]["CreationDate"], "2026-11-01T00:00:00Z");
        assert_eq!(versions[1]["KeyVersionId"], "1");
        assert_eq!(versions[1]["Status"], "Previous");
        let (_, page2) = f
            .json(
                LIST,
                query(&[
                    ("Action", "ListKeyVersions"),
                    ("KeyId", "key-1234567"),
                    ("PageNumber", "2"),
                    ("PageSize", "1"),
                ]),
            )
            .await;
        assert_eq!(page2["KeyVersions"]["KeyVersion"][0]["KeyVersionId"], "1");
        assert_eq!(page2["TotalCount"], 2);
        for (name, value) in [("PageSize", "0"), ("PageSize", "101"), ("PageNumber", "0"), ("PageNumber", "x")] {
            let (status, body) =
                f.json(LIST, query(&[("Action", "ListKeyVersions"), ("KeyId", "key-1234567"), (name, value)])).await;
            assert_eq!(status, 400, "{name}={value}: {body}");
            assert!(body["Message"].as_str().unwrap().contains(name));
        }
    }

    #[tokio::test]
    async fn a_key_of_another_org_or_of_no_org_is_not_found() {
        let f = Fixture::new();
        for key in ["key-7654321", "key-1234567x", "1234567", "key-../x"] {
            for event in [DESCRIBE, LIST] {
                let action = if event == DESCRIBE { "DescribeKey" } else { "ListKeyVersions" };
                let (status, body) = f.json(event, query(&[("Action", action), ("KeyId", key)])).await;
                assert_eq!(status, 404, "{key}: {body}");
                assert_eq!(body["Code"], "Forbidden.KeyNotFound");
                assert_eq!(body["Message"], "The specified Key is not found.");
            }
        }
        // An enrolled caller whose record is gone: the same answer.
        let (status, body) = f
            .json(DESCRIBE, |e| {
                e["requestContext"]["authorizer"]["jwt"]["claims"]["org_id"] = "555".into();
                e["queryStringParameters"]["KeyId"] = "key-555".into();
            })
            .await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (404, "Forbidden.KeyNotFound"));
    }

    #[tokio::test]
    async fn unknown_actions_missing_parameters_and_callers_without_scope_are_refused() {
        let f = Fixture::new();
        let (status, body) =
            f.json(DESCRIBE, query(&[("Action", "ScheduleKeyDeletion"), ("KeyId", "key-1234567")])).await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (400, "InvalidAction.NotFound"));
        let (status, body) = f.json(DESCRIBE, query(&[("KeyId", "key-1234567")])).await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (400, "MissingParameter"));
        assert!(body["Message"].as_str().unwrap().contains("Action"));
        let (status, body) = f.json(DESCRIBE, query(&[("Action", "DescribeKey")])).await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (400, "MissingParameter"));
        assert!(body["Message"].as_str().unwrap().contains("KeyId"));
        let (status, body) = f
            .json(DESCRIBE, |e| {
                e["requestContext"]["authorizer"]["jwt"]["scopes"] = json!(["read"]);
                e["requestContext"]["authorizer"]["jwt"]["claims"]["scope"] = "read".into();
            })
            .await;
        assert_eq!(status, 403, "{body}");
        let (status, body) =
            f.json(DESCRIBE, query(&[("Action", "DescribeKey"), ("KeyId", "key-1234567"), ("Format", "YAML")])).await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (400, "InvalidParameter"));
        let (status, _) = f.json(UPDATE_FORM, |e| e["headers"]["content-type"] = "text/plain".into()).await;
        assert_eq!(status, 415);
    }

    #[tokio::test]
    async fn an_aws_failure_is_503_and_changes_nothing() {
        let f = Fixture::new();
        let before = f.record();
        f.faults.inject(2, crate::core::memory::FaultMode::Fail); // the conditional write
        let (status, body) = f.json(UPDATE, |_| {}).await;
        assert_eq!((status, body["Code"].as_str().unwrap()), (503, "ServiceUnavailable"), "{body}");
        assert_eq!(f.record(), before);
    }

    #[tokio::test]
    async fn xml_answers_have_the_reference_shapes() {
        let f = Fixture::new();
        let (_, text, _) = f.call(DESCRIBE_XML, |_| {}).await;
        let doc = roxmltree::Document::parse(&text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "DescribeKeyResponse");
        let child = |node: roxmltree::Node<'_, '_>, name: &str| {
            node.children().find(|c| c.has_tag_name(name)).and_then(|c| c.text().map(str::to_owned))
        };
        let metadata = root.children().find(|c| c.has_tag_name("KeyMetadata")).unwrap();
        assert_eq!(child(metadata, "KeyId").as_deref(), Some("key-1234567"));
        assert_eq!(child(metadata, "KeyState").as_deref(), Some("Enabled"));
        assert_eq!(child(root, "RequestId").as_deref(), Some("1a2b3c4d-0000-4000-8000-000000000005"));

        let (_, text, _) = f.call(LIST, |e| e["headers"]["accept"] = "application/xml".into()).await;
        let doc = roxmltree::Document::parse(&text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "ListKeyVersionsResponse");
        let versions = root.children().find(|c| c.has_tag_name("KeyVersions")).unwrap();
        let ids: Vec<String> = versions
            .children()
            .filter(|c| c.has_tag_name("KeyVersion"))
            .filter_map(|v| child(v, "KeyVersionId"))
            .collect();
        assert_eq!(ids, ["2", "1"]);
        assert_eq!(child(root, "TotalCount").as_deref(), Some("2"));

        let update_xml = query(&[
            ("Action", "UpdateRotationPolicy"),
            ("KeyId", "key-1234567"),
            ("EnableAutomaticRotation", "false"),
            ("Format", "xml"),
        ]);
        let (_, text, _) = f.call(UPDATE, update_xml).await;
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "UpdateRotationPolicyResponse");
        assert!(child(doc.root_element(), "RequestId").is_some());

        let bad = query(&[("Action", "<Nope & \"'\u{1}>"), ("KeyId", "key-1234567"), ("Format", "XML")]);
        let (status, text, _) = f.call(UPDATE, bad).await;
        assert_eq!(status, 400);
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "Error");
        assert_eq!(child(doc.root_element(), "Code").as_deref(), Some("InvalidAction.NotFound"));
        assert!(child(doc.root_element(), "Message").unwrap().contains("'<Nope & "), "escaped and read back");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary query strings and bodies: always a 2xx or 4xx with a
        /// well-formed body, never a panic.
        #[test]
        fn arbitrary_requests_get_a_well_formed_answer(
            pairs in prop::collection::vec((
                prop_oneof![Just("Action".to_owned()), Just("KeyId".to_owned()), Just("EnableAutomaticRotation".to_owned()), Just("RotationInterval".to_owned()), Just("Format".to_owned()), Just("PageSize".to_owned()), Just("PageNumber".to_owned()), ".{0,12}"],
                prop_oneof![Just("UpdateRotationPolicy".to_owned()), Just("DescribeKey".to_owned()), Just("ListKeyVersions".to_owned()), Just("key-1234567".to_owned()), Just("True".to_owned()), Just("XML".to_owned()), "[0-9]{0,22}[dhmsw]?", ".{0,24}"],
            ), 0..6),
            body in prop::option::of(".{0,64}"),
            content_type in prop_oneof![Just("application/json"), Just("application/x-www-form-urlencoded"), Just("text/plain"), Just("application/xml")],
        ) {
            let f = Fixture::new();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let pairs: Vec<(String, String)> = pairs;
            let (status, text, headers) = runtime.block_on(f.call(UPDATE, move |e| {
                let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                query(&refs)(e);
                if let Some(body) = body {
                    e["body"] = body.into();
                    e["headers"]["content-type"] = content_type.into();
                }
            }));
            prop_assert!((200..300).contains(&status) || (400..500).contains(&status), "{} {}", status, text);
            if headers["content-type"] == "application/xml" {
                prop_assert!(roxmltree::Document::parse(&text).is_ok(), "{}", text);
            } else {
                let body: Value = serde_json::from_str(&text).unwrap();
                prop_assert!(body["RequestId"].is_string());
                if status >= 400 {
                    prop_assert!(body["Code"].is_string() && body["Message"].is_string());
                }
            }
        }
    }
}
