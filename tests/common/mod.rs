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
    /// The libfaketime offset file of a server started with [`LocalAws::start_faked`].
    clock: Option<tempfile::NamedTempFile>,
}

impl LocalAws {
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A server under libfaketime (`scripts/tools.sh`
    /// installs the Debian package): [`LocalAws::set_clock`] moves its clock
    /// while it runs, so that IAM gives keys made then their dates.
    pub fn start_faked() -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("a clock file");
        writeln!(file, "+0").expect("write the clock file");
        Self::spawn(Some(file))
    }

    /// The faked clock's offset from now, in libfaketime's words (`-100d`, `+0`).
    pub fn set_clock(&self, offset: &str) {
        let file = self.clock.as_ref().expect("a server started with start_faked");
        std::fs::write(file.path(), format!("{offset}\n")).expect("write the clock file");
    }

    fn spawn(clock: Option<tempfile::NamedTempFile>) -> Self {
        let mut command = Command::new(venv_bin().join("python"));
        if let Some(file) = &clock {
            let library = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
                .iter()
                .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketime.so.1")))
                .find(|p| p.exists())
                .expect("libfaketime (Debian package faketime; scripts/tools.sh installs it)");
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", file.path())
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                // Without this, libfaketime's wrapper of pthread_cond_timedwait lets Python's
                // waits for the GIL run to their timeout: measured, a request took 80 ms, not 5
                // (the 300-org adoption test 430 s).
                .env("FAKETIME_FORCE_MONOTONIC_FIX", "0");
        }
        let mut child = command
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
        Self { child, _stdin: stdin, port, clock }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SDK configuration for this endpoint with the given credentials.
    pub fn sdk(&self, access_key_id: &str, secret: &str) -> SdkConfig {
        self.sdk_session(access_key_id, secret, None)
    }

    /// [`LocalAws::sdk`] with a session token (an assumed role's credentials).
    pub fn sdk_session(&self, access_key_id: &str, secret: &str, token: Option<&str>) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            // The system clock, which the SDK's own loader would set and
            // AssumeRoleProvider (member accounts) requires.
            .time_source(aws_sdk_iam::Config::builder().build().time_source().expect("the system clock"))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret,
                token.map(str::to_owned),
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
    config_with(endpoint, &[])
}

/// [`config`] with more variables (they win over the defaults).
pub fn config_with(endpoint: &str, extra: &[(String, String)]) -> Config {
    let vars = [
        ("REGISTRY_BUCKET", "registry"),
        ("MANAGED_BUCKET", "logs"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("ROTATIONS_PER_HOUR", "100"),
    ];
    Config::from_lookup(|name| {
        extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    })
    .expect("config")
}

/// moto's default account: the home account of the stacks.
pub const HOME_ACCOUNT: &str = "123456789012";
/// The member role's name (member-account.yaml's `RoleName` default).
pub const MEMBER_ROLE: &str = "s3-key-rotation-member";
/// The external id the member roles require (`MEMBER_ROLE_EXTERNAL_ID`).
pub const EXTERNAL_ID: &str = "s3kr-test-external-id";

/// The ARN of the member role of `account`.
pub fn member_role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/{MEMBER_ROLE}")
}

/// The role AWS Organizations makes in a member account (always assumable on moto).
pub fn organization_role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/OrganizationAccountAccessRole")
}

/// A member account of a [`Stack::with_members`]: named in
/// MEMBER_ACCOUNT_ROLES, with member-account.yaml deployed into it, or not
/// (its role then cannot be assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Deployed(&'static str),
    Undeployed(&'static str),
}

impl Member {
    pub fn account(self) -> &'static str {
        match self {
            Member::Deployed(a) | Member::Undeployed(a) => a,
        }
    }
}

/// Runs `scripts/local_aws.py` (the one reader of the templates, shared with the
/// Python suites) on this endpoint with `args`, `stdin` on its standard input;
/// returns its standard output.
fn local_aws(aws: &LocalAws, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(venv_bin().join("python"))
        .arg(project_root().join("scripts/local_aws.py"))
        .args(args.iter().take(1))
        .arg(aws.port.to_string())
        .args(args.iter().skip(1))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/local_aws.py");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("scripts/local_aws.py");
    assert!(output.status.success(), "local_aws.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// A function of template.yaml. In the tests each runs under a role holding
/// exactly its template statements ([`Stack::function`], [`Stack::function_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Function {
    RotateKey,
    RotationPolicy,
    ScheduledRotation,
    SweepWorker,
}

impl Function {
    pub const ALL: [Function; 4] =
        [Function::RotateKey, Function::RotationPolicy, Function::ScheduledRotation, Function::SweepWorker];

    /// The function's logical id in template.yaml.
    pub fn logical_id(self) -> &'static str {
        match self {
            Function::RotateKey => "RotateKeyFunction",
            Function::RotationPolicy => "RotationPolicyFunction",
            Function::ScheduledRotation => "ScheduledRotationFunction",
            Function::SweepWorker => "SweepWorkerFunction",
        }
    }
}

/// An IAM client with the credentials of `role_arn`, assumed with `base`'s.
async fn assumed_iam(base: &SdkConfig, role_arn: &str) -> aws_sdk_iam::Client {
    use aws_credential_types::provider::ProvideCredentials;
    let provider =
        aws_config::sts::AssumeRoleProvider::builder(role_arn).session_name("harness").configure(base).build().await;
    provider.provide_credentials().await.unwrap_or_else(|e| panic!("assume {role_arn}: {e:?}"));
    aws_sdk_iam::Client::from_conf(aws_sdk_iam::config::Builder::from(base).credentials_provider(provider).build())
}

/// A local AWS with the registry and managed buckets, a log object per org,
/// an operator (`admin`, who may do anything: the CLI, and the test's own look
/// at AWS), and each function's template role ([`Stack::function`]); credential
/// enforcement is on once it has started.
pub struct Stack {
    pub aws: LocalAws,
    pub config: Config,
    pub admin: (String, String),
    /// The operator's adapters: enrollment, and the test's own look at the registry.
    pub adapters: Adapters,
    /// Variables of this stack beyond the defaults (member accounts, …), in
    /// its config and in [`Stack::function_env`].
    pub env: Vec<(String, String)>,
    /// The member accounts, as MEMBER_ACCOUNT_ROLES lists them.
    pub members: Vec<Member>,
    /// Each function's role: its credentials (id, secret, session token) and adapters.
    roles: Vec<(Function, (String, String, String), Adapters)>,
}

pub const ORG_A: &str = "1234567";
pub const ORG_B: &str = "7654321";

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(&[], Vec::new()).await
    }

    /// A stack whose org users live in member accounts: `members` in the
    /// order of MEMBER_ACCOUNT_ROLES, each [`Member::Deployed`] one with the
    /// role of member-account.yaml, ORGS_PER_ACCOUNT `orgs_per_account`,
    /// MEMBER_ROLE_EXTERNAL_ID [`EXTERNAL_ID`], and `extra_env` besides.
    pub async fn with_members(members: &[Member], orgs_per_account: usize, extra_env: &[(&str, &str)]) -> Self {
        let roles: Vec<String> = members.iter().map(|m| member_role_arn(m.account())).collect();
        let mut env = vec![
            ("MEMBER_ACCOUNT_ROLES".to_owned(), roles.join(",")),
            ("MEMBER_ROLE_EXTERNAL_ID".to_owned(), EXTERNAL_ID.to_owned()),
            ("ORGS_PER_ACCOUNT".to_owned(), orgs_per_account.to_string()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::start_with(members, env).await
    }

    /// A stack of the home account only, with `extra_env` on top of the defaults.
    pub async fn start_with_env(extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).await
    }

    /// A stack of the home account whose local AWS runs under a clock the
    /// test moves ([`LocalAws::set_clock`]).
    pub async fn start_faked(extra_env: &[(&str, &str)]) -> Self {
        let env = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_on(LocalAws::start_faked(), &[], env).await
    }

    async fn start_with(members: &[Member], env: Vec<(String, String)>) -> Self {
        Self::start_on(LocalAws::start(), members, env).await
    }

    async fn start_on(aws: LocalAws, members: &[Member], env: Vec<(String, String)>) -> Self {
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
        let operator = serde_json::json!({"AWS_ACCESS_KEY_ID": admin.0, "AWS_SECRET_ACCESS_KEY": admin.1}).to_string();
        for member in members {
            if let Member::Deployed(account) = member {
                local_aws(&aws, &["deploy-member-account", account], &operator);
            }
        }
        // The org users' permissions boundary (template.yaml's OrgUserBoundary).
        let mut env = env;
        let boundary = local_aws(&aws, &["home-boundary"], "");
        env.push(("ORG_USER_BOUNDARY".to_owned(), boundary.trim().to_owned()));
        let config = config_with(&aws.endpoint(), &env);
        let clients = Clients::from_sdk(aws.sdk(&admin.0, &admin.1), true);
        let adapters = Adapters::new(&clients, &config);
        let mut stack = Self { aws, config, admin, adapters, env, members: members.to_vec(), roles: Vec::new() };
        // Each function's role, for the variables this stack's functions have.
        let operator: serde_json::Map<String, serde_json::Value> =
            stack.operator_env().into_iter().map(|(k, v)| (k, v.into())).collect();
        let credentials: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
            serde_json::from_str(&local_aws(
                &stack.aws,
                &["function-credentials"],
                &serde_json::Value::from(operator).to_string(),
            ))
            .expect("the functions' credentials");
        for function in Function::ALL {
            let env = &credentials[function.logical_id()];
            let key = (
                env["AWS_ACCESS_KEY_ID"].clone(),
                env["AWS_SECRET_ACCESS_KEY"].clone(),
                env["AWS_SESSION_TOKEN"].clone(),
            );
            let clients = Clients::from_sdk(stack.aws.sdk_session(&key.0, &key.1, Some(&key.2)), true);
            let adapters = Adapters::new(&clients, &stack.config);
            stack.roles.push((function, key, adapters));
        }
        stack.aws.enforce_auth();
        stack
    }

    /// Deploys member-account.yaml into `account` (after the stack started, as
    /// an operator adding an account does), through its Organizations role.
    pub fn deploy_member_account(&self, account: &str) {
        let operator: serde_json::Map<String, serde_json::Value> =
            self.operator_env().into_iter().map(|(k, v)| (k, v.into())).collect();
        local_aws(&self.aws, &["deploy-member-account", account], &serde_json::Value::from(operator).to_string());
    }

    /// The adapters `function` runs with: its template role's credentials.
    pub fn function(&self, function: Function) -> &Adapters {
        &self.roles.iter().find(|(f, _, _)| *f == function).expect("every function has a role").2
    }

    /// SDK configuration with `function`'s role's credentials.
    pub fn function_sdk(&self, function: Function) -> SdkConfig {
        let (_, key, _) = self.roles.iter().find(|(f, _, _)| *f == function).expect("every function has a role");
        self.aws.sdk_session(&key.0, &key.1, Some(&key.2))
    }

    /// The environment `function`'s binary runs with on this stack: its
    /// template role's credentials and the settings.
    /// scheduled-rotation without SWEEP_QUEUE_URL (not a template configuration:
    /// the template always sets it, and its role only dispatches) sweeps every
    /// org in process, the sweep-worker's work: it runs under that role.
    pub fn function_env(&self, function: Function) -> Vec<(String, String)> {
        let mut env = self.operator_env();
        let in_process = !env.iter().any(|(k, v)| k == "SWEEP_QUEUE_URL" && !v.is_empty());
        let function =
            if function == Function::ScheduledRotation && in_process { Function::SweepWorker } else { function };
        let (_, key, _) = self.roles.iter().find(|(f, _, _)| *f == function).expect("every function has a role");
        for (name, value) in
            [("AWS_ACCESS_KEY_ID", &key.0), ("AWS_SECRET_ACCESS_KEY", &key.1), ("AWS_SESSION_TOKEN", &key.2)]
        {
            env.retain(|(k, _)| k != name);
            env.push((name.to_owned(), value.clone()));
        }
        env
    }

    /// An IAM client of `account` (`None`: the home account) that may do
    /// anything there, to look at what the functions did (a member account's
    /// through its OrganizationAccountAccessRole); works with credential
    /// enforcement on.
    pub async fn iam_of(&self, account: Option<&str>) -> aws_sdk_iam::Client {
        let sdk = self.aws.sdk(&self.admin.0, &self.admin.1);
        match account {
            None => aws_sdk_iam::Client::new(&sdk),
            Some(account) => assumed_iam(&sdk, &organization_role_arn(account)).await,
        }
    }

    /// Deletes the member role of `account` (an operator deleting the
    /// member-account.yaml stack): from then on it cannot be assumed.
    pub async fn remove_member_role(&self, account: &str) {
        let iam = self.iam_of(Some(account)).await;
        let policies = iam.list_role_policies().role_name(MEMBER_ROLE).send().await.expect("the role's policies");
        for name in policies.policy_names() {
            iam.delete_role_policy().role_name(MEMBER_ROLE).policy_name(name).send().await.expect("delete policy");
        }
        iam.delete_role().role_name(MEMBER_ROLE).send().await.expect("delete the member role");
    }

    /// Adapters of the same stack configured without member accounts: how
    /// the functions enrolled orgs before member accounts were added (their
    /// users are in the home account).
    pub fn home_only_adapters(&self) -> (Adapters, Config) {
        let env: Vec<(String, String)> =
            self.env.iter().filter(|(k, _)| !k.starts_with("MEMBER_") && k != "ORGS_PER_ACCOUNT").cloned().collect();
        let config = config_with(&self.aws.endpoint(), &env);
        let clients = Clients::from_sdk(self.aws.sdk(&self.admin.0, &self.admin.1), true);
        (Adapters::new(&clients, &config), config)
    }

    /// The names of the IAM users of `account` (`None`: the home account), sorted.
    pub async fn users_of(&self, account: Option<&str>) -> Vec<String> {
        let listed = self.iam_of(account).await.list_users().send().await.expect("list users");
        let mut names: Vec<String> = listed.users().iter().map(|u| u.user_name().to_owned()).collect();
        names.sort();
        names
    }

    /// The operator's adapters for `enroll`: a member account's users are
    /// created through its enrollment role (`MEMBER_ENROLLMENT_ROLE`).
    pub fn enrollment_adapters(&self) -> Adapters {
        let clients = Clients::from_sdk(self.aws.sdk(&self.admin.0, &self.admin.1), true);
        Adapters::new(&clients, &self.config.for_enrollment())
    }

    /// Enrolls `orgs` through the core, as the operator's CLI does, at `at`.
    pub async fn enroll(&self, orgs: &[&str], at: chrono::DateTime<chrono::Utc>) {
        let settings = self.config.enroll_settings().expect("MANAGED_BUCKET is set");
        let a = &self.enrollment_adapters();
        for org in orgs {
            let org = s3_key_rotation::core::domain::OrgId::parse(org).expect("a valid org id");
            s3_key_rotation::core::enrollment::enroll(&a.registry, &a.keys, &a.audit, &settings, &org, at, "test")
                .await
                .expect("enrolled");
        }
    }

    /// The environment of the operator's CLI on this stack: the operator's
    /// credentials (who may do anything) and the settings.
    pub fn operator_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", self.aws.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.admin.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.admin.1.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("REGISTRY_BUCKET", "registry".into()),
            ("MANAGED_BUCKET", "logs".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env
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
        .envs(stack.operator_env())
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
