//! The test harness: a real local AWS endpoint (moto server, started from the
//! project's virtualenv on a free loopback port, one per test), SDK clients
//! for it, and per-test names so tests run in parallel.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::Config;

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's virtualenv's `bin/`, made by `scripts/tools.sh`.
pub fn venv_bin() -> PathBuf {
    let bin = project_root().join(".venv/bin");
    assert!(bin.join("python").exists(), "no .venv: run scripts/tools.sh (scripts/test.sh does) first");
    bin
}

/// A moto server of this test's own. Stops when dropped.
pub struct LocalAws {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
}

impl LocalAws {
    pub fn start() -> Self {
        let mut child = Command::new(venv_bin().join("python"))
            .arg(project_root().join("scripts/moto_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto server");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("moto prints its port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("moto said {line:?}"));
        Self { child, _stdin: stdin, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SDK configuration for this endpoint with the given credentials.
    pub fn sdk(&self, access_key_id: &str, secret: &str) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret,
                None,
                None,
                "test",
            )))
            .build()
    }

    pub fn s3(&self, access_key_id: &str, secret: &str) -> aws_sdk_s3::Client {
        Clients::from_sdk(self.sdk(access_key_id, secret), true).s3
    }

    /// From now on every request must be signed by a known, active IAM key
    /// (moto's `/moto-api/reset-auth`, `text/plain` body `0`).
    pub fn enforce_auth(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            stream,
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0",
            self.port
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok();
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "reset-auth: {answer}");
    }
}

impl Drop for LocalAws {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration a deployment would have, for this stack.
pub fn config(endpoint: &str) -> Config {
    let vars = [
        ("REGISTRY_BUCKET", "registry"),
        ("MANAGED_BUCKET", "logs"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("ROTATIONS_PER_HOUR", "100"),
    ];
    Config::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())).expect("config")
}

/// A local AWS with the registry and managed buckets, a log object per org,
/// and an administrator (standing in for the functions' role) whose key
/// signs every call of the functions.
pub struct Stack {
    pub aws: LocalAws,
    pub config: Config,
    pub admin: (String, String),
    pub adapters: Adapters,
}

pub const ORG_A: &str = "1234567";
pub const ORG_B: &str = "7654321";

impl Stack {
    pub async fn start() -> Self {
        let aws = LocalAws::start();
        let bootstrap = Clients::from_sdk(aws.sdk("test", "test"), true);
        for bucket in ["registry", "logs"] {
            bootstrap.s3.create_bucket().bucket(bucket).send().await.expect("create bucket");
        }
        for org in [ORG_A, ORG_B] {
            bootstrap
                .s3
                .put_object()
                .bucket("logs")
                .key(format!("{org}/2026-11-22.log"))
                .body(ByteStream::from(format!("log lines of org {org}\n").into_bytes()))
                .send()
                .await
                .expect("put log");
        }
        bootstrap.iam.create_user().user_name("rotation-admin").send().await.expect("admin user");
        bootstrap
            .iam
            .put_user_policy()
            .user_name("rotation-admin")
            .policy_name("all")
            .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#)
            .send()
            .await
            .expect("admin policy");
        let key = bootstrap.iam.create_access_key().user_name("rotation-admin").send().await.expect("admin key");
        let key = key.access_key.expect("key");
        let admin = (key.access_key_id, key.secret_access_key);
        let config = config(&aws.endpoint());
        let clients = Clients::from_sdk(aws.sdk(&admin.0, &admin.1), true);
        let adapters = Adapters::new(&clients, &config);
        Self { aws, config, admin, adapters }
    }

    /// Enrolls `orgs` through the core, as the operator's CLI does, at `at`.
    pub async fn enroll(&self, orgs: &[&str], at: chrono::DateTime<chrono::Utc>) {
        let settings = self.config.enroll_settings().expect("MANAGED_BUCKET is set");
        let a = &self.adapters;
        for org in orgs {
            let org = s3_key_rotation::core::domain::OrgId::parse(org).expect("a valid org id");
            s3_key_rotation::core::enrollment::enroll(&a.registry, &a.keys, &a.audit, &settings, &org, at, "test")
                .await
                .expect("enrolled");
        }
    }

    /// The environment a deployed function (or the operator's CLI) has on
    /// this stack: the functions' role's credentials and the settings.
    pub fn function_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.aws.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.admin.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.admin.1.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("REGISTRY_BUCKET", "registry".into()),
            ("MANAGED_BUCKET", "logs".into()),
        ]
    }

    /// Whether `key` can read the log object of `org` (a real signed GetObject).
    pub async fn can_read(&self, key: (&str, &str), org: &str) -> bool {
        let result =
            self.aws.s3(key.0, key.1).get_object().bucket("logs").key(format!("{org}/2026-11-22.log")).send().await;
        result.is_ok()
    }
}

/// Runs the operator CLI (the real binary) with the stack's environment:
/// (success, stdout, stderr).
pub fn cli(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_s3-key-rotation"))
        .args(args)
        .envs(stack.function_env())
        .output()
        .expect("run the CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

/// A real HTTP API v2 event from `events/`, changed by `patch` (to move its
/// time, its org claim, …), as the Lambda runtime hands it to the handler.
pub fn event(name: &str, patch: impl FnOnce(&mut serde_json::Value)) -> lambda_http::Request {
    let text = std::fs::read_to_string(project_root().join("events").join(name)).expect("event file");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("event JSON");
    patch(&mut value);
    lambda_http::request::from_str(&value.to_string()).expect("an API Gateway v2 event")
}

/// Moves an event `seconds` after its recorded time and gives it its own request id.
pub fn later(seconds: i64) -> impl FnOnce(&mut serde_json::Value) {
    move |e| {
        let epoch = e["requestContext"]["timeEpoch"].as_i64().expect("timeEpoch");
        e["requestContext"]["timeEpoch"] = (epoch + seconds * 1000).into();
        e["requestContext"]["requestId"] = format!("request-at-{seconds}").into();
    }
}

/// The status and JSON body of a handler's response.
pub fn parts(
    response: lambda_http::Response<lambda_http::Body>,
) -> (u16, serde_json::Value, lambda_http::http::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: serde_json::Value = serde_json::from_slice(response.body().as_ref()).expect("a JSON body");
    (status, body, headers)
}
