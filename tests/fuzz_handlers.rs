//! Property-based fuzzing of the functions' handlers, on the in-memory services.
//!
//! - rotate-key and rotation-policy get generated API Gateway HTTP API
//!   (payload 2.0) events, built as JSON and read by
//!   `lambda_http::request::from_str` as the runtime reads them: methods, paths,
//!   stages, headers (content type, content encoding, accept, duplicates,
//!   unicode, very long values), query strings (raw and as a map, duplicate and
//!   malformed parameters), JSON / form / XML / text / binary bodies (plain or
//!   base64), deep nesting, and the authorizer's claims (org, scopes; unicode).
//! - scheduled-rotation gets generated EventBridge events (any `detail`, any
//!   `time`), read as the runtime reads them.
//!
//! Each case starts from a world of two enrolled orgs in various states (keys
//! or none, recent rotations, an interrupted rotation, a rotation policy) and
//! sends one to three requests. The in-memory services have no faults, so the
//! properties are: no panic; no 5xx; every refusal a 4xx in the function's own
//! error shape that changed nothing; every 200 a well-formed success whose
//! effect is what the services hold; never a secret where none belongs.
//!
//! `FUZZ_CASES` sets the cases per property (default 256: the test suite's run);
//! `scripts/bench.sh` runs a long one. Each property prints its counts.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::time::Instant;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use lambda_http::http::HeaderMap;
use lambda_http::{Body, Request, Response};
use lambda_runtime::{Context, LambdaEvent};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestCaseResult, TestRunner};
use serde_json::{json, Map, Value};

use s3_key_rotation::api::rotate_key::{self, RotateKeySettings};
use s3_key_rotation::api::rotation_policy::{self, PolicyPorts, PolicySettings};
use s3_key_rotation::config::Config;
use s3_key_rotation::core::domain::{is_event_time, KeyState, OrgId, OrgRecord};
use s3_key_rotation::core::memory::{FaultMode, MemoryWorld};
use s3_key_rotation::core::ports::IamKey;
use s3_key_rotation::core::sweep::SweepSettings;
use s3_key_rotation::scheduled::{self, SweepDetail};

const ROTATE_KEY_EVENT: &str = include_str!("../events/rotate-key.json");
const POLICY_EVENT: &str = include_str!("../events/policy-update-rotation-policy.json");
const SCHEDULED_EVENT: &str = include_str!("../events/scheduled-event.json");

const ORG_A: &str = "1234567";
const ORG_B: &str = "7654321";
const NOT_ENROLLED: &str = "2468135";
/// The requests' time, as in events/: 2026-11-22T04:51:11Z.
const T: i64 = 1_795_323_071_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// What every in-memory secret starts with (`MemoryKeys::create_key`).
const SECRET_MARK: &str = "memory-secret-";

// ---------------------------------------------------------------------------
// Running a property: FUZZ_CASES cases, counts printed.

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// What a property saw: requests by answer.
#[derive(Default)]
struct Tally {
    requests: u64,
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn saw(&mut self, outcome: impl Into<String>) {
        self.requests += 1;
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }
}

/// Runs `test` on `cases()` generated inputs; a failure panics with the
/// smallest input proptest found. Prints the counts on stderr (not captured),
/// so that a run can be quoted. It runs on a thread of its own with a large
/// stack: the generators nest deeply (an unoptimised build overflows a test
/// thread's 2 MiB).
fn run_property<S>(
    name: &'static str,
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value, &mut Tally) -> TestCaseResult + Send + 'static,
) where
    S: Strategy,
    S::Value: Debug,
{
    let thread = std::thread::Builder::new().name(name.to_owned()).stack_size(256 << 20);
    let runner = thread.spawn(move || run_on_this_thread(name, strategy(), test)).expect("a thread");
    if let Err(panic) = runner.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run_on_this_thread<S>(name: &str, strategy: S, test: impl Fn(S::Value, &mut Tally) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(cases()) };
    let cases = config.cases;
    let tally = RefCell::new(Tally::default());
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |input| test(input, &mut tally.borrow_mut()));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let tally = tally.into_inner();
    let outcomes: Vec<String> = tally.outcomes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "fuzz {name}: {cases} cases, {} requests, {:.1} s; {}",
        tally.requests,
        started.elapsed().as_secs_f64(),
        outcomes.join(", ")
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

// ---------------------------------------------------------------------------
// The world: two enrolled orgs in generated states.

fn config() -> Config {
    Config::from_lookup(|name| (name == "REGISTRY_BUCKET").then(|| "registry".to_owned())).expect("a configuration")
}

fn rotate_key_settings() -> RotateKeySettings {
    let config = config();
    RotateKeySettings { caller: config.caller_rules(), rotation: config.rotation_settings() }
}

fn policy_settings() -> PolicySettings {
    config().policy_settings()
}

fn sweep_settings() -> SweepSettings {
    config().sweep_settings()
}

#[derive(Debug, Clone)]
struct OrgSetup {
    /// Rotations before T, in minutes before it (oldest first).
    rotations: Vec<i64>,
    /// A rotation that crashed at its `n`th service call, `minutes` before T
    /// (its claim is still held when that is less than the lease, 5 minutes).
    interrupted: Option<(usize, i64)>,
    /// An automatic rotation policy set after the rotations.
    policy: Option<&'static str>,
    state: KeyState,
}

fn org_setup() -> impl Strategy<Value = OrgSetup> {
    (
        prop_oneof![
            1 => Just(vec![]),
            3 => prop::collection::vec(prop_oneof![1i64..60, 61i64..200_000], 1..=5),
        ],
        prop::option::weighted(0.2, (1usize..12, prop_oneof![1i64..5, 6i64..600])),
        prop::option::weighted(0.3, select(vec!["7d", "30d", "90d", "365d"])),
        prop_oneof![
            6 => Just(KeyState::Enabled),
            1 => Just(KeyState::Disabled),
            1 => Just(KeyState::PendingDeletion),
            1 => Just(KeyState::Expired),
        ],
    )
        .prop_map(|(mut rotations, interrupted, policy, state)| {
            rotations.sort_unstable_by(|a, b| b.cmp(a));
            OrgSetup { rotations, interrupted, policy, state }
        })
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).expect("a valid org id")
}

/// The state a request may change, to compare before and after.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    records: Vec<Option<OrgRecord>>,
    keys: Vec<Vec<IamKey>>,
    vault: Vec<Option<String>>,
}

struct World {
    world: MemoryWorld,
    rotate: RotateKeySettings,
    policy: PolicySettings,
}

impl World {
    /// Enrolls both orgs at the start of 2026 and brings each to its setup,
    /// through the handlers themselves (and a crash of the in-memory services).
    async fn new(a: &OrgSetup, b: &OrgSetup) -> Self {
        let world = Self { world: MemoryWorld::new(), rotate: rotate_key_settings(), policy: policy_settings() };
        let enrolled = DateTime::<Utc>::from_timestamp_millis(T - 325 * DAY).expect("a time");
        for (id, setup) in [(ORG_A, a), (ORG_B, b)] {
            world.world.enroll(&org(id), enrolled).await;
            for minutes in &setup.rotations {
                world.rotate_key(rotate_key_request(id, T - minutes * MINUTE)).await;
            }
            if let Some(interval) = setup.policy {
                let at = T - setup.rotations.last().map_or(DAY, |m| m * MINUTE);
                world.policy(policy_request(id, at, interval)).await;
            }
            if let Some((nth, minutes)) = setup.interrupted {
                world.world.faults.inject(nth, FaultMode::Crash);
                world.rotate_key(rotate_key_request(id, T - minutes * MINUTE)).await;
                world.world.faults.clear();
            }
            if setup.state != KeyState::Enabled {
                let mut record = world.world.registry.get(&org(id)).expect("enrolled");
                record.state = setup.state;
                world.world.registry.put(record);
            }
        }
        world
    }

    async fn rotate_key(&self, request: Request) -> Response<Body> {
        rotate_key::handle(request, self.world.ports(), &self.rotate).await
    }

    async fn policy(&self, request: Request) -> Response<Body> {
        let ports = PolicyPorts { registry: &self.world.registry, audit: &self.world.audit };
        rotation_policy::handle(request, ports, &self.policy).await
    }

    fn snapshot(&self) -> Snapshot {
        let orgs = [ORG_A, ORG_B].map(org);
        Snapshot {
            records: orgs.iter().map(|o| self.world.registry.get(o)).collect(),
            keys: orgs.iter().map(|o| self.world.keys.keys_of(&o.user_name())).collect(),
            vault: orgs.iter().map(|o| self.world.vault.current_key(o)).collect(),
        }
    }

    /// IAM holds only keys the record knows (unless a rotation's claim is
    /// still held: its new key may be in IAM only), among them the current
    /// key. The record may know a previous key IAM no longer has: a rotation
    /// deletes it to make room before it commits, and may then fail.
    fn consistent(&self, id: &str) -> Result<(), TestCaseError> {
        let record = self.world.registry.get(&org(id)).expect("enrolled");
        let iam: Vec<String> = self.world.keys.keys_of(&record.iam_user).into_iter().map(|k| k.access_key_id).collect();
        if let Some(current) = &record.current {
            prop_assert!(iam.contains(&current.access_key_id), "org {}: IAM has the current key", id);
        }
        if record.pending.is_none() {
            let known: Vec<&str> = record.known_key_ids().collect();
            prop_assert!(
                iam.iter().all(|k| known.contains(&k.as_str())),
                "org {}: IAM {:?}, record {:?}",
                id,
                iam,
                known
            );
        }
        Ok(())
    }
}

fn parse_request(event: &Value) -> Result<Request, TestCaseError> {
    lambda_http::request::from_str(&event.to_string())
        .map_err(|e| TestCaseError::fail(format!("the generated event does not parse ({e}): {event}")))
}

fn rotate_key_request(org: &str, epoch_ms: i64) -> Request {
    let mut event: Value = serde_json::from_str(ROTATE_KEY_EVENT).expect("the event file");
    event["requestContext"]["timeEpoch"] = epoch_ms.into();
    event["requestContext"]["authorizer"]["jwt"]["claims"]["org_id"] = org.into();
    lambda_http::request::from_str(&event.to_string()).expect("the event file's event")
}

fn policy_request(org: &str, epoch_ms: i64, interval: &str) -> Request {
    let mut event: Value = serde_json::from_str(POLICY_EVENT).expect("the event file");
    let query =
        format!("Action=UpdateRotationPolicy&KeyId=key-{org}&EnableAutomaticRotation=true&RotationInterval={interval}");
    event["rawQueryString"] = query.into();
    event["requestContext"]["timeEpoch"] = epoch_ms.into();
    event["requestContext"]["authorizer"]["jwt"]["claims"]["org_id"] = org.into();
    lambda_http::request::from_str(&event.to_string()).expect("the event file's event")
}

// ---------------------------------------------------------------------------
// Generated HTTP requests.

#[derive(Debug, Clone)]
enum Authorizer {
    Jwt,
    /// `"authorizer": {}`
    Empty,
    /// no `authorizer` at all
    Missing,
    /// a Lambda authorizer's context instead of a JWT one
    Lambda,
}

#[derive(Debug, Clone)]
struct Claims {
    authorizer: Authorizer,
    org: Option<String>,
    scopes: Option<Vec<String>>,
    scope_claim: Option<String>,
    sub: Option<String>,
    extra: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum Query {
    None,
    /// `rawQueryString` as a client may send it (characters a URI allows).
    Raw(String),
    /// Encoded pairs, as `rawQueryString` (and `queryStringParameters`, duplicates
    /// joined by commas as API Gateway does) or as the map alone.
    Pairs {
        pairs: Vec<(String, String)>,
        raw: bool,
    },
}

#[derive(Debug, Clone)]
enum Payload {
    Text { text: String, base64: bool },
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Http {
    method: String,
    path: String,
    stage: &'static str,
    host: &'static str,
    headers: Vec<(String, String)>,
    cookies: Option<Vec<String>>,
    query: Query,
    body: Option<Payload>,
    claims: Claims,
    time_epoch: i64,
}

const PARAM_NAMES: &[&str] = &[
    "Action",
    "KeyId",
    "EnableAutomaticRotation",
    "RotationInterval",
    "Format",
    "PageSize",
    "PageNumber",
    "action",
    "keyId",
    "RegionId",
    "SignatureNonce",
    "previousKeyGracePeriod",
];

const PARAM_VALUES: &[&str] = &[
    "UpdateRotationPolicy",
    "DescribeKey",
    "ListKeyVersions",
    "CreateKey",
    "key-1234567",
    "key-7654321",
    "key-2468135",
    "key-",
    "True",
    "False",
    "true",
    "FALSE",
    "yes",
    "",
    "XML",
    "xml",
    "JSON",
    "YAML",
    "7d",
    "30d",
    "365d",
    "6d",
    "366d",
    "604800s",
    "8760h",
    "10080m",
    "-7d",
    "1e1d",
    "99999999999999999999d",
    " 30d",
    "0",
    "1",
    "10",
    "100",
    "101",
    "4294967295",
    "4294967296",
    "-1",
    "24h",
    "8d",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    "Application/JSON",
    "application/problem+json",
    "application/vnd.api+json; charset=utf-8",
    "application/json; charset=\"utf-8\"",
    " application/json ",
    "application/json;;",
    "application/json, text/plain",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    "application/xml",
    "text/xml; charset=utf-8",
    "text/plain",
    "text/plain; charset=iso-8859-1",
    "multipart/form-data; boundary=xyz",
    "application/octet-stream",
    "json",
    "application/",
    ";",
    "",
];

fn param_name() -> impl Strategy<Value = String> {
    prop_oneof![4 => select(PARAM_NAMES).prop_map(str::to_owned), 1 => "\\PC{0,12}"]
}

/// A long run of one character, up to `max` of them. API Gateway (HTTP API)
/// takes at most 10 KiB of request line and headers together, and 10 MB of body.
fn long_text(max: usize) -> impl Strategy<Value = String> {
    (1..max, select(vec!["a", "7", "ü", "%", "&", "<", "\\"])).prop_map(|(n, s)| s.repeat(n))
}

fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(PARAM_VALUES).prop_map(str::to_owned),
        2 => "[0-9]{0,22}[dhmsw]?",
        2 => "\\PC{0,24}",
        1 => ".{0,24}",
        // Encoded in the query, a character takes up to 6 bytes of the 10 KiB.
        1 => long_text(1_500),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((param_name(), param_value()), 0..7)
}

/// The parameters of a KMS-style call, mostly well-formed: an action, a key
/// id (often the caller's), the action's parameters, now and then more.
fn rpc_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let listed =
        |values: Vec<&'static str>| prop_oneof![8 => select(values).prop_map(str::to_owned), 1 => param_value()];
    (
        listed(vec!["UpdateRotationPolicy", "DescribeKey", "ListKeyVersions"]),
        listed(vec!["key-1234567", "key-7654321"]),
        prop::option::weighted(0.9, listed(vec!["true", "false", "True", "False"])),
        prop::option::weighted(0.8, listed(vec!["7d", "30d", "365d", "604800s", "8760h"])),
        prop::option::weighted(0.3, listed(vec!["1", "2", "3", "100"])),
        prop::option::weighted(0.3, listed(vec!["1", "2", "10", "100"])),
        prop::option::weighted(0.3, listed(vec!["XML", "JSON", "xml"])),
        prop::collection::vec((param_name(), param_value()), 0..2),
    )
        .prop_map(|(action, key, enable, interval, number, size, format, extra)| {
            let mut pairs = vec![("Action".to_owned(), action), ("KeyId".to_owned(), key)];
            let optional = [
                ("EnableAutomaticRotation", enable),
                ("RotationInterval", interval),
                ("PageNumber", number),
                ("PageSize", size),
                ("Format", format),
            ];
            pairs.extend(optional.into_iter().filter_map(|(name, value)| Some((name.to_owned(), value?))));
            pairs.extend(extra);
            pairs
        })
}

fn query(function: Function) -> impl Strategy<Value = Query> {
    let rpc_weight = match function {
        Function::RotateKey => 1,
        Function::Policy => 8,
    };
    prop_oneof![
        3 => Just(Query::None),
        rpc_weight => (rpc_pairs(), prop::bool::weighted(0.9)).prop_map(|(pairs, raw)| Query::Pairs { pairs, raw }),
        2 => (pairs(), prop::bool::weighted(0.8)).prop_map(|(pairs, raw)| Query::Pairs { pairs, raw }),
        1 => "[A-Za-z0-9=&%+._~!$'()*,;:@/?-]{0,60}".prop_map(Query::Raw),
    ]
}

/// A JSON value of any shape (bounded).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        param_value().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((param_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn nested(depth: usize, object: bool) -> String {
    if object {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

fn xml_body(pairs: &[(String, String)]) -> String {
    let fields: String = pairs.iter().map(|(k, v)| format!("<{k}>{v}</{k}>")).collect();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Request>{fields}</Request>")
}

fn form(pairs: Vec<(String, String)>) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// The parameters as a JSON object; now and then a value is not a string.
fn json_params(pairs: Vec<(String, String)>, other: Vec<Value>) -> String {
    let mut fields: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
    for (value, name) in other.into_iter().zip(PARAM_NAMES) {
        fields.insert((*name).to_owned(), value);
    }
    Value::Object(fields).to_string()
}

/// A body and the content type that goes with it.
fn body_text(function: Function) -> impl Strategy<Value = (String, &'static str)> {
    const JSON: &str = "application/json";
    const FORM: &str = "application/x-www-form-urlencoded";
    let grace = prop_oneof![
        3 => select(vec!["24h", "0s", "7d", "8d", "168h", "24", "", "1d ", "-1h", "99999999999999999999d"]).prop_map(Value::from),
        1 => json_value(),
    ];
    let (grace_weight, rpc_weight) = match function {
        Function::RotateKey => (8, 1),
        Function::Policy => (1, 4),
    };
    prop_oneof![
        grace_weight => (grace, prop::collection::vec((param_name(), json_value()), 0..2)).prop_map(|(grace, extra)| {
            let mut fields: Map<String, Value> = extra.into_iter().collect();
            fields.insert("previousKeyGracePeriod".into(), grace);
            (Value::Object(fields).to_string(), JSON)
        }),
        rpc_weight => rpc_pairs().prop_map(|p| (form(p), FORM)),
        rpc_weight => (rpc_pairs(), prop::collection::vec(json_value(), 0..2)).prop_map(|(p, other)| (json_params(p, other), JSON)),
        1 => prop::collection::vec((param_name(), json_value()), 0..7)
            .prop_map(|fields| (Value::Object(fields.into_iter().collect()).to_string(), JSON)),
        1 => pairs().prop_map(|p| (form(p), FORM)),
        1 => pairs().prop_map(|p| (xml_body(&p), "application/xml")),
        1 => json_value().prop_map(|v| (v.to_string(), JSON)),
        1 => ".{0,200}".prop_map(|text| (text, "text/plain")),
        1 => (0usize..5_000, any::<bool>()).prop_map(|(depth, object)| (nested(depth, object), JSON)),
        1 => long_text(70_000).prop_map(|text| (text, "text/plain")),
        1 => long_text(70_000).prop_map(|text| (json!({"previousKeyGracePeriod": text, "KeyId": text}).to_string(), JSON)),
        1 => Just((String::new(), JSON)),
    ]
}

/// A body (or none) and the content-type header sent with it: mostly the
/// body's own, else another, a malformed one, or none.
fn payload(function: Function) -> impl Strategy<Value = (Option<Payload>, Option<String>)> {
    let content_type = prop_oneof![
        12 => Just(None),
        3 => select(CONTENT_TYPES).prop_map(|s| Some(Some(s.to_owned()))),
        1 => header_value().prop_map(|s| Some(Some(s))),
        1 => Just(Some(None)),
    ];
    let text = (body_text(function), prop::bool::weighted(0.3), content_type.clone()).prop_map(
        |((text, natural), base64, content_type)| {
            (Some(Payload::Text { text, base64 }), content_type.unwrap_or_else(|| Some(natural.to_owned())))
        },
    );
    let bytes = (prop::collection::vec(any::<u8>(), 0..300), content_type).prop_map(|(bytes, content_type)| {
        (Some(Payload::Bytes(bytes)), content_type.unwrap_or_else(|| Some("application/octet-stream".to_owned())))
    });
    let none = prop_oneof![
        4 => Just(None),
        1 => select(CONTENT_TYPES).prop_map(|s| Some(s.to_owned())),
    ];
    let none_weight = match function {
        Function::RotateKey => 4,
        // The KMS SDK sends its parameters in the query string.
        Function::Policy => 8,
    };
    prop_oneof![
        none_weight => none.prop_map(|content_type| (None, content_type)),
        8 => text,
        1 => bytes,
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![6 => "\\PC{0,40}", 1 => long_text(4_000)]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let content_encoding = prop_oneof![
        6 => Just(None),
        2 => select(vec!["gzip", "br", "deflate", "identity", "gzip, br", ""]).prop_map(|s| Some(s.to_owned())),
        1 => header_value().prop_map(Some),
    ];
    let accept = prop_oneof![
        2 => Just(None),
        4 => select(vec![
            "application/json",
            "application/xml",
            "text/xml",
            "application/xml, application/json",
            "application/xml;q=0.9",
            "*/*",
            "text/html",
        ])
        .prop_map(|s| Some(s.to_owned())),
        1 => header_value().prop_map(Some),
    ];
    let action = prop_oneof![
        4 => Just(None),
        2 => select(vec!["UpdateRotationPolicy", "DescribeKey", "ListKeyVersions", "CreateKey", ""]).prop_map(|s| Some(s.to_owned())),
        1 => header_value().prop_map(Some),
    ];
    let idempotency = prop_oneof![
        6 => Just(None),
        2 => "[0-9a-f-]{0,40}".prop_map(Some),
        1 => header_value().prop_map(Some),
    ];
    let extra = prop::collection::vec(
        ("[a-z][a-z0-9-]{0,15}".prop_filter("the host is set apart", |n| n != "host"), header_value()),
        0..4,
    );
    // A second content-type: API Gateway joins repeated headers with commas.
    let repeated = prop::option::weighted(0.1, select(CONTENT_TYPES).prop_map(str::to_owned));
    (content_encoding, accept, action, idempotency, extra, repeated).prop_map(
        |(content_encoding, accept, action, idempotency, extra, repeated)| {
            let mut headers = Vec::new();
            let named = [
                ("content-encoding", content_encoding),
                ("accept", accept),
                ("x-acs-action", action),
                ("idempotency-key", idempotency),
                ("content-type", repeated),
            ];
            for (name, value) in named {
                if let Some(value) = value {
                    headers.push((name.to_owned(), value));
                }
            }
            headers.extend(extra);
            headers
        },
    )
}

/// The claims of an org admin's token (as the gateway's authorizer passes
/// them), mostly; else anything.
fn claims() -> impl Strategy<Value = Claims> {
    let admin = (select(vec![ORG_A, ORG_B]), prop::option::weighted(0.5, "\\PC{0,30}")).prop_map(|(org, sub)| Claims {
        authorizer: Authorizer::Jwt,
        org: Some(org.to_owned()),
        scopes: Some(vec!["admin".to_owned()]),
        scope_claim: Some("admin".to_owned()),
        sub,
        extra: Vec::new(),
    });
    prop_oneof![3 => admin, 2 => any_claims()]
}

fn any_claims() -> impl Strategy<Value = Claims> {
    let authorizer = prop_oneof![
        12 => Just(Authorizer::Jwt),
        1 => Just(Authorizer::Empty),
        1 => Just(Authorizer::Missing),
        1 => Just(Authorizer::Lambda),
    ];
    let org = prop_oneof![
        12 => select(vec![ORG_A, ORG_B]).prop_map(|s| Some(s.to_owned())),
        2 => Just(Some(NOT_ENROLLED.to_owned())),
        1 => Just(None),
        2 => select(vec![
            " 1234567 ",
            "1234567\n",
            "\u{ff11}\u{ff12}\u{ff13}\u{ff14}\u{ff15}\u{ff16}\u{ff17}",
            "1234567\u{200b}",
            "org-\u{fc}",
            "../1234567",
            "1234567/../7654321",
            "",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "[1234567]",
        ])
        .prop_map(|s| Some(s.to_owned())),
        2 => "\\PC{0,60}".prop_map(Some),
    ];
    let scopes = prop_oneof![
        6 => Just(Some(vec!["admin".to_owned()])),
        1 => Just(None),
        1 => Just(Some(vec![])),
        1 => select(vec!["read", "ADMIN", "admin ", "admin.iam:write"]).prop_map(|s| Some(vec![s.to_owned()])),
        1 => prop::collection::vec("\\PC{0,10}", 0..3).prop_map(Some),
    ];
    let scope_claim = prop_oneof![
        3 => Just(None),
        3 => select(vec!["admin", "openid admin", "[admin read]", "admin,read", "read", "", " admin "]).prop_map(|s| Some(s.to_owned())),
        1 => "\\PC{0,20}".prop_map(Some),
    ];
    let sub = prop::option::weighted(0.8, "\\PC{0,30}");
    let extra = prop::collection::vec(("\\PC{0,10}", "\\PC{0,20}"), 0..3);
    (authorizer, org, scopes, scope_claim, sub, extra).prop_map(|(authorizer, org, scopes, scope_claim, sub, extra)| {
        Claims { authorizer, org, scopes, scope_claim, sub, extra }
    })
}

fn time_epoch() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => (0i64..3 * 60 * MINUTE).prop_map(|d| T + d),
        1 => select(vec![
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            T - 30 * 365 * DAY,
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            DateTime::<Utc>::MAX_UTC.timestamp_millis(),
        ]),
    ]
}

/// Which function a request is for.
#[derive(Debug, Clone, Copy)]
enum Function {
    RotateKey,
    Policy,
}

impl Function {
    /// The methods and paths of the function's routes.
    fn routes(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Function::RotateKey => (&["POST"], &["/iam/rotate-key", "/admin/v2/iam/rotateKey"]),
            Function::Policy => (&["POST", "GET"], &["/"]),
        }
    }
}

fn method(function: Function) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => select(function.routes().0).prop_map(str::to_owned),
        2 => select(vec!["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "post", "PROPFIND"]).prop_map(str::to_owned),
        1 => "[A-Z]{1,12}",
    ]
}

fn path(function: Function) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => select(function.routes().1).prop_map(str::to_owned),
        2 => select(vec![
            "/",
            "/iam/rotate-key",
            "/admin/v2/iam/rotateKey",
            "/iam/rotate-key/",
            "/IAM/ROTATE-KEY",
            "/prod/iam/rotate-key",
            "/iam/rotate-key/../other",
            "/iam//rotate-key",
            "/iam/rotate-key%2F",
            "/iam/rotate-key;x",
            "/x/admin/v2/iam/rotateKey",
            "",
            "//",
            "/%00",
            "/%zz",
        ])
        .prop_map(str::to_owned),
        1 => "/[A-Za-z0-9._~%!$&'()*+,;=:@/-]{0,40}",
        1 => "/\\PC{0,20}",
        1 => (1usize..5_000).prop_map(|n| format!("/{}", "a".repeat(n))),
    ]
}

fn http(function: Function) -> impl Strategy<Value = Http> {
    let cookies = prop::option::weighted(0.1, prop::collection::vec("\\PC{0,20}", 0..3));
    (
        (method(function), path(function), select(vec!["$default", "$default", "$default", "prod"])),
        select(vec!["abcdef1234.execute-api.us-east-1.amazonaws.com", "localhost:3000", "127.0.0.1:8080"]),
        headers(),
        cookies,
        query(function),
        payload(function),
        claims(),
        time_epoch(),
    )
        .prop_map(
            |((method, path, stage), host, mut headers, cookies, query, (body, content_type), claims, time_epoch)| {
                if let Some(content_type) = content_type {
                    headers.insert(0, ("content-type".to_owned(), content_type));
                }
                Http { method, path, stage, host, headers, cookies, query, body, claims, time_epoch }
            },
        )
        .prop_filter("API Gateway's 10 KiB of request line and headers", Http::fits_api_gateway)
}

/// Requests one after another; each `Idempotency-Key` is the request's own
/// (a repeat is the subject of that feature's tests, not of these).
fn requests(function: Function) -> impl Strategy<Value = Vec<Http>> {
    prop::collection::vec(http(function), 1..=3).prop_map(|mut requests| {
        for (i, http) in requests.iter_mut().enumerate() {
            for (name, value) in http.headers.iter_mut() {
                if name == "idempotency-key" {
                    value.push_str(&format!("-{i}"));
                }
            }
        }
        requests
    })
}

/// Standard base64 (the encoding API Gateway gives a binary body).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Http {
    /// Whether API Gateway (HTTP API) takes the request: at most 10 KiB of
    /// request line and headers together.
    fn fits_api_gateway(&self) -> bool {
        let query = match &self.query {
            Query::None => 0,
            Query::Raw(raw) => raw.len(),
            Query::Pairs { pairs, .. } => {
                form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().len()
            }
        };
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        self.method.len() + self.path.len() + query + headers + 16 <= 10_240
    }

    /// The body as the function reads it.
    fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            None => Vec::new(),
            Some(Payload::Text { text, .. }) => text.clone().into_bytes(),
            Some(Payload::Bytes(bytes)) => bytes.clone(),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// The API Gateway HTTP API (payload 2.0) event of this request.
    fn event(&self) -> Value {
        let mut headers = Map::new();
        for (name, _) in &self.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), self.header(name).into());
            }
        }
        headers.insert("host".into(), self.host.into());
        let mut claims = Map::new();
        if let Some(org) = &self.claims.org {
            claims.insert("org_id".into(), org.clone().into());
        }
        if let Some(scope) = &self.claims.scope_claim {
            claims.insert("scope".into(), scope.clone().into());
        }
        if let Some(sub) = &self.claims.sub {
            claims.insert("sub".into(), sub.clone().into());
        }
        for (name, value) in &self.claims.extra {
            claims.entry(name.clone()).or_insert_with(|| value.clone().into());
        }
        let mut context = json!({
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": self.host,
            "domainPrefix": "abcdef1234",
            "http": {"method": self.method, "path": self.path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10", "userAgent": "fuzz"},
            "requestId": "fuzz-0000-4000-8000-000000000001",
            "routeKey": "$default",
            "stage": self.stage,
            "time": "22/Nov/2026:04:51:11 +0000",
            "timeEpoch": self.time_epoch,
        });
        match self.claims.authorizer {
            Authorizer::Jwt => {
                let mut jwt = json!({ "claims": claims });
                if let Some(scopes) = &self.claims.scopes {
                    jwt["scopes"] = json!(scopes);
                }
                context["authorizer"] = json!({ "jwt": jwt });
            }
            Authorizer::Empty => context["authorizer"] = json!({}),
            Authorizer::Lambda => context["authorizer"] = json!({"lambda": {"org_id": ORG_A, "scope": "admin"}}),
            Authorizer::Missing => {}
        }
        let mut event = json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": self.path,
            "headers": headers,
            "requestContext": context,
            "isBase64Encoded": false,
        });
        if let Some(cookies) = &self.cookies {
            event["cookies"] = json!(cookies);
        }
        match &self.query {
            Query::None => {}
            Query::Raw(raw) => event["rawQueryString"] = raw.clone().into(),
            Query::Pairs { pairs, raw } => {
                let mut map: Map<String, Value> = Map::new();
                for (name, value) in pairs {
                    let joined = match map.get(name).and_then(Value::as_str) {
                        Some(before) => format!("{before},{value}"),
                        None => value.clone(),
                    };
                    map.insert(name.clone(), joined.into());
                }
                event["queryStringParameters"] = Value::Object(map);
                if *raw {
                    let text = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
                    event["rawQueryString"] = text.into();
                }
            }
        }
        match &self.body {
            None => {}
            Some(Payload::Text { text, base64: false }) => event["body"] = text.clone().into(),
            Some(Payload::Text { text, base64: true }) => {
                event["body"] = base64(text.as_bytes()).into();
                event["isBase64Encoded"] = true.into();
            }
            Some(Payload::Bytes(bytes)) => {
                event["body"] = base64(bytes).into();
                event["isBase64Encoded"] = true.into();
            }
        }
        event
    }
}

/// Status and headers of an answer, and its body as text (every answer of
/// ours is text: JSON or XML).
fn answer(response: &Response<Body>) -> Result<(u16, HeaderMap, String), TestCaseError> {
    let status = response.status().as_u16();
    let text = std::str::from_utf8(response.body().as_ref())
        .map_err(|_| TestCaseError::fail(format!("{status}: the body is not UTF-8")))?
        .to_owned();
    Ok((status, response.headers().clone(), text))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn is_iso_z(text: &str) -> bool {
    DateTime::parse_from_rfc3339(text).is_ok() && text.ends_with('Z')
}

// ---------------------------------------------------------------------------
// rotate-key

/// The reference's error shape, `{"timestamp","status","error","path"}`, with
/// the HTTP status.
fn check_rotate_key_error(status: u16, headers: &HeaderMap, body: &Value) -> TestCaseResult {
    let fields: Vec<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    prop_assert_eq!(fields, vec!["timestamp", "status", "error", "path"], "the error shape: {}", body);
    prop_assert_eq!(body["status"].as_u64(), Some(u64::from(status)), "{}", body);
    prop_assert_eq!(&body["path"], "/iam/rotate-key");
    prop_assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", body);
    let timestamp = body["timestamp"].as_str().unwrap_or("");
    prop_assert!(chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S").is_ok(), "{}", body);
    prop_assert!([400, 403, 404, 405, 409, 415, 429].contains(&status), "a documented refusal: {}", body);
    if status == 405 {
        prop_assert_eq!(header_str(headers, "allow"), "POST");
    }
    if status == 429 {
        prop_assert!(header_str(headers, "retry-after").parse::<u64>().is_ok_and(|s| s > 0 && s <= 3600));
    }
    Ok(())
}

fn check_rotate_key_success(http: &Http, request_path: &str, body: &Value, world: &World) -> TestCaseResult {
    prop_assert_eq!(http.method.as_str(), "POST");
    prop_assert!(Function::RotateKey.routes().1.iter().any(|r| request_path.ends_with(r)), "a route: {}", request_path);
    for field in ["orgId", "keyId", "accessKeyId", "secretAccessKey", "oldKeyId", "currentKeyId"] {
        prop_assert!(body[field].is_string(), "{} is a string: {}", field, body);
    }
    for field in ["createdAt", "expiresAt", "keyCreationDate"] {
        prop_assert!(body[field].as_str().is_some_and(is_iso_z), "{} is an ISO 8601 date: {}", field, body);
    }
    prop_assert_eq!(&body["currentKeyId"], &body["accessKeyId"]);
    prop_assert_eq!(&body["keyCreationDate"], &body["createdAt"]);
    prop_assert_eq!(
        &body["oldKeyId"],
        &body.get("previousAccessKeyId").filter(|v| !v.is_null()).cloned().unwrap_or(json!(""))
    );
    let id = body["orgId"].as_str().unwrap_or("");
    let claimed = http.claims.org.as_deref().map(str::trim);
    prop_assert_eq!(Some(id), claimed, "the org is the token's");
    let key_id = format!("key-{id}");
    prop_assert_eq!(body["keyId"].as_str(), Some(key_id.as_str()));
    // The services hold what the answer says.
    let org = org(id);
    let record = world.world.registry.get(&org).expect("a 200 is for an enrolled org");
    let current = record.current.as_ref().expect("a 200 leaves a current key");
    prop_assert_eq!(body["accessKeyId"].as_str(), Some(current.access_key_id.as_str()));
    prop_assert_eq!(body["keyVersion"].as_u64(), Some(u64::from(current.version)));
    prop_assert!(record.pending.is_none(), "the claim is released");
    prop_assert!(world.world.keys.works(&record.iam_user, &current.access_key_id), "the new key works");
    prop_assert_eq!(world.world.vault.current_key(&org), Some(current.access_key_id.clone()));
    prop_assert!(body["secretAccessKey"].as_str().is_some_and(|s| s.starts_with(SECRET_MARK)));
    let mut iam: Vec<String> =
        world.world.keys.keys_of(&record.iam_user).into_iter().map(|k| k.access_key_id).collect();
    let mut known: Vec<String> = record.known_key_ids().map(str::to_owned).collect();
    iam.sort();
    known.sort();
    prop_assert_eq!(iam, known, "after a rotation IAM holds the record's keys");
    Ok(())
}

async fn rotate_key_case(world: &World, http: &Http, tally: &mut Tally) -> TestCaseResult {
    let event = http.event();
    let request = parse_request(&event)?;
    let request_path = request.uri().path().to_owned();
    let before = world.snapshot();
    let response = world.rotate_key(request).await;
    let (status, headers, text) = answer(&response)?;
    tally.saw(status.to_string());
    prop_assert!(status < 500, "never a 5xx on healthy services: {} {}", status, text);
    prop_assert_eq!(header_str(&headers, "content-type"), "application/json");
    prop_assert_eq!(header_str(&headers, "cache-control"), "no-store");
    let body: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    if status == 200 {
        check_rotate_key_success(http, &request_path, &body, world)?;
    } else {
        check_rotate_key_error(status, &headers, &body)?;
        prop_assert!(!text.contains(SECRET_MARK), "no secret in a refusal: {}", text);
        prop_assert_eq!(&world.snapshot(), &before, "a refusal changes nothing: {}", text);
    }
    Ok(())
}

/// One to three generated requests to `function` in a generated world.
fn run_http_property(name: &'static str, function: Function) {
    let strategy = move || (org_setup(), org_setup(), requests(function));
    run_property(name, strategy, move |(a, b, requests), tally| {
        runtime().block_on(async {
            let world = World::new(&a, &b).await;
            for http in &requests {
                match function {
                    Function::RotateKey => rotate_key_case(&world, http, tally).await?,
                    Function::Policy => policy_case(&world, http, tally).await?,
                }
            }
            prop_assert!(world.world.keys.max_keys_seen.load(std::sync::atomic::Ordering::SeqCst) <= 2);
            Ok(())
        })
    });
}

#[test]
fn rotate_key_answers_every_request_with_a_success_or_its_own_4xx() {
    run_http_property("rotate-key", Function::RotateKey);
}

// ---------------------------------------------------------------------------
// rotation-policy

const POLICY_ERROR_CODES: &[(u16, &str)] = &[
    (400, "InvalidParameter"),
    (400, "MissingParameter"),
    (400, "InvalidAction.NotFound"),
    (403, "Forbidden.NoPermission"),
    (404, "Forbidden.KeyNotFound"),
    (415, "InvalidParameter"),
];

/// Whether the request asks for XML without doubt: an `Accept` naming XML and
/// not JSON, and no `Format` parameter anywhere.
fn asks_for_xml(http: &Http) -> bool {
    let accept = http.header("accept").unwrap_or_default().to_ascii_lowercase();
    let wants_xml = accept.is_ascii() && accept.contains("xml") && !accept.contains("json");
    let query = match &http.query {
        Query::None => String::new(),
        Query::Raw(raw) => raw.clone(),
        Query::Pairs { pairs, .. } => pairs.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join("&"),
    };
    let body = String::from_utf8_lossy(&http.body_bytes()).to_ascii_lowercase();
    wants_xml && !query.to_ascii_lowercase().contains("format") && !body.contains("format")
}

/// The root element and its children's texts (by name) of an XML answer.
fn read_xml(text: &str) -> Result<(String, BTreeMap<String, String>), TestCaseError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    let root = doc.root_element();
    let children = root
        .children()
        .filter(|c| c.is_element())
        .map(|c| (c.tag_name().name().to_owned(), c.text().unwrap_or("").to_owned()))
        .collect();
    Ok((root.tag_name().name().to_owned(), children))
}

fn check_policy_answer(status: u16, text: &str, xml: bool, caller_org: Option<&str>) -> Result<String, TestCaseError> {
    if xml {
        let (root, children) = read_xml(text)?;
        prop_assert!(children.get("RequestId").is_some_and(|id| !id.is_empty()), "{}", text);
        if status == 200 {
            let shapes: &[(&str, &[&str])] = &[
                ("UpdateRotationPolicyResponse", &["RequestId"]),
                ("DescribeKeyResponse", &["KeyMetadata", "RequestId"]),
                ("ListKeyVersionsResponse", &["KeyVersions", "TotalCount", "PageNumber", "PageSize", "RequestId"]),
            ];
            let names: Vec<&str> = children.keys().map(String::as_str).collect();
            let mut expected: Vec<&str> =
                shapes.iter().find(|(r, _)| *r == root).map(|(_, f)| f.to_vec()).unwrap_or_default();
            expected.sort_unstable();
            prop_assert_eq!(names, expected, "the success shape of {}: {}", root, text);
            return Ok(root.trim_end_matches("Response").to_owned());
        }
        prop_assert_eq!(root.as_str(), "Error", "{}", text);
        let code = children.get("Code").cloned().unwrap_or_default();
        prop_assert!(POLICY_ERROR_CODES.contains(&(status, code.as_str())), "{} {}", status, text);
        prop_assert!(children.get("Message").is_some_and(|m| !m.is_empty()), "{}", text);
        return Ok(code);
    }
    let body: Value = serde_json::from_str(text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    prop_assert!(body["RequestId"].as_str().is_some_and(|id| !id.is_empty()), "{}", text);
    let mut fields: Vec<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    fields.sort_unstable();
    if status != 200 {
        prop_assert_eq!(fields, vec!["Code", "Message", "RequestId"], "the error shape: {}", text);
        let code = body["Code"].as_str().unwrap_or("");
        prop_assert!(POLICY_ERROR_CODES.contains(&(status, code)), "{} {}", status, text);
        prop_assert!(body["Message"].as_str().is_some_and(|m| !m.is_empty()), "{}", text);
        return Ok(code.to_owned());
    }
    let key_id = format!("key-{}", caller_org.unwrap_or("?"));
    if fields == ["RequestId"] {
        return Ok("UpdateRotationPolicy".into());
    }
    if fields == ["KeyMetadata", "RequestId"] {
        let metadata = &body["KeyMetadata"];
        prop_assert_eq!(metadata["KeyId"].as_str(), Some(key_id.as_str()), "{}", text);
        prop_assert!(["Enabled", "Disabled", "PendingDeletion", "Expired"]
            .contains(&metadata["KeyState"].as_str().unwrap_or("")));
        prop_assert!(
            ["Enabled", "Disabled", "Suspended"].contains(&metadata["AutomaticRotation"].as_str().unwrap_or(""))
        );
        for date in ["CreationDate", "LastRotationDate", "NextRotationDate", "KeyExpirationDate"] {
            prop_assert!(metadata.get(date).is_none_or(|d| d.as_str().is_some_and(is_iso_z)), "{}: {}", date, text);
        }
        return Ok("DescribeKey".into());
    }
    prop_assert_eq!(fields, vec!["KeyVersions", "PageNumber", "PageSize", "RequestId", "TotalCount"], "{}", text);
    let versions = body["KeyVersions"]["KeyVersion"].as_array().cloned().unwrap_or_default();
    let page_size = body["PageSize"].as_u64().unwrap_or(0);
    prop_assert!((1..=100).contains(&page_size) && versions.len() as u64 <= page_size, "{}", text);
    prop_assert!(body["PageNumber"].as_u64().is_some_and(|n| n >= 1), "{}", text);
    for version in versions {
        prop_assert_eq!(version["KeyId"].as_str(), Some(key_id.as_str()), "{}", text);
        prop_assert!(["Primary", "Previous", "Retired"].contains(&version["Status"].as_str().unwrap_or("")));
    }
    Ok("ListKeyVersions".into())
}

async fn policy_case(world: &World, http: &Http, tally: &mut Tally) -> TestCaseResult {
    let event = http.event();
    let request = parse_request(&event)?;
    let before = world.snapshot();
    let response = world.policy(request).await;
    let (status, headers, text) = answer(&response)?;
    prop_assert!(status < 500, "never a 5xx on healthy services: {} {}", status, text);
    prop_assert_eq!(header_str(&headers, "cache-control"), "no-store");
    let xml = match header_str(&headers, "content-type") {
        "application/xml" => true,
        "application/json" => false,
        other => return Err(TestCaseError::fail(format!("content-type {other:?}: {text}"))),
    };
    if asks_for_xml(http) {
        prop_assert!(xml, "XML was asked for: {} {}", status, text);
    }
    let caller_org = http.claims.org.as_deref().map(str::trim);
    let what = check_policy_answer(status, &text, xml, caller_org)?;
    tally.saw(format!("{status} {what}"));
    prop_assert!(!text.contains(SECRET_MARK), "never a secret: {}", text);
    let after = world.snapshot();
    prop_assert_eq!(&after.keys, &before.keys, "IAM is never touched");
    if (status, what.as_str()) == (200, "UpdateRotationPolicy") {
        let changed = caller_org.and_then(|o| [ORG_A, ORG_B].iter().position(|x| *x == o));
        prop_assert!(changed.is_some(), "an enrolled caller's policy");
        for (i, (b, a)) in before.records.iter().zip(&after.records).enumerate() {
            let (b, a) = (b.as_ref().expect("enrolled"), a.as_ref().expect("enrolled"));
            if Some(i) == changed {
                let keys = |r: &OrgRecord| (r.state, r.current.clone(), r.previous.clone(), r.pending.clone());
                prop_assert_eq!(keys(a), keys(b), "a policy change leaves the keys alone");
            } else {
                prop_assert_eq!(a, b, "another org's record is untouched");
            }
        }
    } else {
        prop_assert_eq!(&after, &before, "{} changes nothing: {}", status, text);
    }
    Ok(())
}

#[test]
fn rotation_policy_answers_every_request_with_a_success_or_its_own_4xx() {
    run_http_property("rotation-policy", Function::Policy);
}

// ---------------------------------------------------------------------------
// scheduled-rotation

#[derive(Debug, Clone)]
struct Scheduled {
    time: Option<Value>,
    detail: Option<Value>,
    detail_type: Option<Value>,
}

fn rfc3339(ms: i64, offset_hours: i32, fraction: bool) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).expect("in range");
    let offset = chrono::FixedOffset::east_opt(offset_hours * 3600).expect("a valid offset");
    let format = if fraction { SecondsFormat::Millis } else { SecondsFormat::Secs };
    t.with_timezone(&offset).to_rfc3339_opts(format, offset_hours == 0)
}

fn scheduled_time() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        20 => (-400 * DAY..400 * DAY, -12i32..=12, any::<bool>())
            .prop_map(|(d, offset, fraction)| Some(Value::from(rfc3339(T + d, offset, fraction)))),
        2 => select(vec![
            "0001-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "+262142-12-31T23:59:59Z",
            "-0001-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-22 05:00:00",
            "2026-11-22T05:00:00",
            "",
            "now",
        ])
        .prop_map(|s| Some(Value::from(s))),
        1 => Just(None),
        1 => json_value().prop_map(Some),
    ]
}

fn scheduled() -> impl Strategy<Value = Scheduled> {
    let detail = prop_oneof![
        6 => Just(Some(json!({}))),
        6 => any::<bool>().prop_map(|dry| Some(json!({"dryRun": dry}))),
        1 => select(vec![json!({"dryRun": "true"}), json!({"dryRun": null}), json!(null), json!([]), json!("x")]).prop_map(Some),
        2 => (any::<bool>(), prop::collection::vec((param_name(), json_value()), 0..5)).prop_map(|(dry, fields)| {
            let mut detail: Map<String, Value> = fields.into_iter().collect();
            detail.insert("dryRun".into(), dry.into());
            Some(Value::Object(detail))
        }),
        1 => Just(None),
    ];
    let detail_type = prop_oneof![
        16 => Just(Some(json!("Scheduled Event"))),
        1 => Just(None),
        1 => json_value().prop_map(Some),
    ];
    (scheduled_time(), detail, detail_type).prop_map(|(time, detail, detail_type)| Scheduled {
        time,
        detail,
        detail_type,
    })
}

impl Scheduled {
    fn event(&self) -> Value {
        let mut event: Value = serde_json::from_str(SCHEDULED_EVENT).expect("the event file");
        let fields = event.as_object_mut().expect("an object");
        for (name, value) in [("time", &self.time), ("detail", &self.detail), ("detail-type", &self.detail_type)] {
            match value {
                Some(value) => fields.insert(name.into(), value.clone()),
                None => fields.remove(name),
            };
        }
        event
    }
}

#[test]
fn scheduled_rotation_handles_every_event_it_can_read() {
    let strategy = || (org_setup(), org_setup(), scheduled());
    let settings = sweep_settings();
    run_property("scheduled-rotation", strategy, move |(a, b, input), tally| {
        runtime().block_on(async {
            let world = World::new(&a, &b).await;
            let text = input.event().to_string();
            // The runtime reads the event; one it cannot read is its error, not ours.
            let Ok(event) = serde_json::from_str::<EventBridgeEvent<SweepDetail>>(&text) else {
                tally.saw("unreadable (the runtime's error)");
                return Ok(());
            };
            let (time, dry_run) = (event.time, event.detail.dry_run);
            let before = world.snapshot();
            let started = Utc::now();
            let result = scheduled::handle(
                LambdaEvent::new(event, Context::default()),
                world.world.ports(),
                &settings,
                std::time::Duration::from_secs(10),
            )
            .await;
            let summary = result.map_err(|e| TestCaseError::fail(format!("{e:?}: {text}")))?;
            tally.saw(match (dry_run, summary.rotated.is_empty(), summary.expired.is_empty()) {
                (true, _, _) => "dry run",
                (false, false, _) => "run that rotated",
                (false, true, false) => "run that expired a key",
                (false, true, true) => "other run",
            });
            prop_assert!(summary.failed.is_empty(), "no org fails on healthy services: {:?}: {}", summary.failed, text);
            prop_assert!(summary.complete);
            match time.filter(|t| is_event_time(*t)) {
                Some(time) => prop_assert_eq!(summary.evaluated_at, time),
                // No time, or none EventBridge sends: the clock's.
                None => prop_assert!(started <= summary.evaluated_at && summary.evaluated_at <= Utc::now()),
            }
            if dry_run {
                prop_assert_eq!(world.snapshot(), before, "a dry run changes nothing");
            }
            for id in [ORG_A, ORG_B] {
                world.consistent(id)?;
            }
            prop_assert!(world.world.keys.max_keys_seen.load(std::sync::atomic::Ordering::SeqCst) <= 2);
            Ok(())
        })
    });
}

// ---------------------------------------------------------------------------
// Bodies API Gateway never sends: `isBase64Encoded` with a body that is not base64.

/// `lambda_http` panics ("failed to decode aws base64 encoded body") on such
/// an event while building the request, before any code of ours runs.
/// API Gateway encodes binary bodies itself, so this cannot reach a deployed
/// function; the property pins where the panic is, so that a change of it in
/// the library shows here. Everything that does decode is answered properly.
#[test]
fn a_body_that_is_not_base64_never_reaches_the_handlers() {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let upstream = info.payload().downcast_ref::<String>().is_some_and(|m| m.contains("base64"))
                || info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("base64"));
            if !upstream {
                default(info);
            }
        }));
    });
    let strategy = || {
        let not_base64 = prop_oneof![
            "[A-Za-z0-9+/]{1}([A-Za-z0-9+/]{4}){0,10}",
            "[A-Za-z0-9+/]{0,20}[!*. \u{e9}-][A-Za-z0-9+/]{0,20}",
            "[A-Za-z0-9+/]{2}==[A-Za-z0-9+/]{4}",
        ];
        (not_base64, http(Function::Policy), any::<bool>())
    };
    run_property("not-base64", strategy, |(body, http, to_policy), tally| {
        let mut event = http.event();
        event["body"] = body.into();
        event["isBase64Encoded"] = true.into();
        let text = event.to_string();
        let Ok(parsed) = std::panic::catch_unwind(|| lambda_http::request::from_str(&text)) else {
            tally.saw("lambda_http panicked before the handler");
            return Ok(());
        };
        let request = parsed.map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let world = runtime().block_on(World::new(&org_setup_none(), &org_setup_none()));
        let response = runtime().block_on(async {
            if to_policy {
                world.policy(request).await
            } else {
                world.rotate_key(request).await
            }
        });
        let (status, _, text) = answer(&response)?;
        tally.saw(format!("decoded after all, {status}"));
        prop_assert!(status < 500, "{} {}", status, text);
        Ok(())
    });
}

fn org_setup_none() -> OrgSetup {
    OrgSetup { rotations: Vec::new(), interrupted: None, policy: None, state: KeyState::Enabled }
}

// ---------------------------------------------------------------------------
// What the fuzzing found, minimised.

/// Found by `rotate_key_answers_every_request_with_a_success_or_its_own_4xx`:
/// a `timeEpoch` at the end of chrono's range (year 262142) was taken as "now",
/// and the rotation's claim (`now` + lease) overflowed: a panic. One in the
/// year 9999 answered an `expiresAt` of `+10000-03-30T23:59:59Z`, no ISO 8601
/// date. Neither is a time API Gateway sends: such a request runs at the clock's.
#[test]
fn regression_a_time_epoch_no_api_gateway_sends_is_not_taken_as_now() {
    runtime().block_on(async {
        for epoch in [DateTime::<Utc>::MAX_UTC.timestamp_millis(), 253_402_300_799_999] {
            let world = World::new(&org_setup_none(), &org_setup_none()).await;
            let before = Utc::now();
            let response = world.rotate_key(rotate_key_request(ORG_A, epoch)).await;
            let (status, _, text) = answer(&response).unwrap();
            assert_eq!(status, 200, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            let created: DateTime<Utc> = body["createdAt"].as_str().unwrap().parse().unwrap();
            assert!(created >= before - TimeDelta::seconds(1) && created <= Utc::now(), "the clock's time: {text}");
            assert!(is_iso_z(body["expiresAt"].as_str().unwrap()), "{text}");
        }
    });
}

/// The same for the scheduled event's `time`.
#[test]
fn regression_an_eventbridge_time_no_service_sends_is_not_taken_as_now() {
    runtime().block_on(async {
        for time in ["+262142-12-31T23:59:59Z", "9999-12-31T23:59:59Z"] {
            let setup = OrgSetup { policy: Some("7d"), rotations: vec![60], ..org_setup_none() };
            let world = World::new(&setup, &org_setup_none()).await;
            let mut event: Value = serde_json::from_str(SCHEDULED_EVENT).unwrap();
            event["time"] = time.into();
            let event: EventBridgeEvent<SweepDetail> = serde_json::from_value(event).unwrap();
            let before = Utc::now();
            let summary = scheduled::handle(
                LambdaEvent::new(event, Context::default()),
                world.world.ports(),
                &sweep_settings(),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert!(summary.evaluated_at >= before && summary.evaluated_at <= Utc::now(), "{time}: the clock's time");
            assert!(summary.failed.is_empty(), "{:?}", summary.failed);
        }
    });
}

/// Found by `rotation_policy_answers_every_request_with_a_success_or_its_own_4xx`:
/// with `Accept: application/xml` (or `Format=XML` in the query), a body the
/// function cannot read (here `{}` with no content type: 415; a malformed JSON
/// body: 400) was refused in JSON.
#[test]
fn regression_a_body_that_cannot_be_read_is_refused_in_the_xml_asked_for() {
    runtime().block_on(async {
        let world = World::new(&org_setup_none(), &org_setup_none()).await;
        let cases = [
            (None, Some("application/xml"), "{}", 415),
            (Some("application/json"), Some("application/xml"), "{", 400),
            (Some("application/json"), None, "[]", 400),
        ];
        for (content_type, accept, body, status) in cases {
            let mut event: Value = serde_json::from_str(POLICY_EVENT).unwrap();
            event["body"] = body.into();
            if let Some(content_type) = content_type {
                event["headers"]["content-type"] = content_type.into();
            }
            match accept {
                Some(accept) => event["headers"]["accept"] = accept.into(),
                None => event["rawQueryString"] = "Action=DescribeKey&KeyId=key-1234567&Format=XML".into(),
            }
            let response = world.policy(lambda_http::request::from_str(&event.to_string()).unwrap()).await;
            let (got, headers, text) = answer(&response).unwrap();
            assert_eq!(got, status, "{text}");
            assert_eq!(header_str(&headers, "content-type"), "application/xml", "{text}");
            let (root, children) = read_xml(&text).unwrap();
            assert_eq!(root, "Error");
            assert!(children.contains_key("Code") && children.contains_key("RequestId"), "{text}");
        }
    });
}

/// Found by the long run of `rotate_key_answers_every_request_with_a_success_or_its_own_4xx`:
/// a request whose time is before the org's recorded rotations (an event
/// replayed, or API Gateway's times of concurrent calls out of order) found
/// them all "in the last hour" and was told to retry after the time between
/// them plus an hour: here 30 years. The limit's window is an hour, and so is
/// the longest wait.
#[test]
fn regression_retry_after_is_at_most_the_rate_limits_hour() {
    runtime().block_on(async {
        let setup = OrgSetup { rotations: vec![50, 40, 30, 20, 10], ..org_setup_none() };
        let world = World::new(&setup, &org_setup_none()).await;
        for epoch in [T, T - 30 * 365 * DAY, T - 20 * MINUTE] {
            let response = world.rotate_key(rotate_key_request(ORG_A, epoch)).await;
            let (status, headers, text) = answer(&response).unwrap();
            assert_eq!(status, 429, "{text}");
            let seconds: u64 = header_str(&headers, "retry-after").parse().unwrap();
            assert!((1..=3600).contains(&seconds), "Retry-After {seconds} at {epoch}");
        }
    });
}
