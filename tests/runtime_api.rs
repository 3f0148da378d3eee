//! The real `rotate-key` binary under a real Lambda Runtime API
//! (`cargo lambda watch`), invoked with the files in `events/` by
//! `cargo lambda invoke`, against the local AWS endpoint.

mod common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{project_root, venv_bin, Function, Stack, ORG_A, ORG_B};

/// `cargo lambda watch` on a free loopback port, with the deployment's
/// environment and one function's role (its template statements, credentials
/// enforced): the function's binary is the one invoked through it. Its whole
/// process group is stopped when dropped.
struct Emulator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Emulator {
    fn start(stack: &Stack, function: Function, log: PathBuf) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let path = format!("{}:{}", venv_bin().display(), std::env::var("PATH").unwrap_or_default());
        let out = File::create(&log).unwrap();
        let child = Command::new(venv_bin().join("cargo-lambda"))
            .args(["lambda", "watch", "--ignore-changes", "--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .current_dir(project_root())
            // Only what a shell would pass: the variables cargo sets for a test
            // process would make `cargo run` rebuild dependencies.
            .env_clear()
            .envs(
                ["HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "TMPDIR"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .env("PATH", path)
            .envs(stack.function_env(function))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start cargo lambda watch");
        let emulator = Self { child, port, log };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "the emulator did not start: {}", emulator.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        emulator
    }

    /// `cargo lambda invoke <function> --data-file events/<file>`: the API Gateway response.
    fn invoke(&self, function: &str, event_file: &str) -> serde_json::Value {
        let output = Command::new(venv_bin().join("cargo-lambda"))
            .args(["lambda", "invoke", function, "--invoke-address", "127.0.0.1", "--output-format", "json"])
            .args(["--invoke-port", &self.port.to_string(), "--data-file"])
            .arg(project_root().join("events").join(event_file))
            .current_dir(project_root())
            .output()
            .expect("cargo lambda invoke");
        assert!(
            output.status.success(),
            "invoke failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
        serde_json::from_slice(&output.stdout).expect("a JSON response")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("--").arg(format!("-{}", self.child.id())).status();
        let _ = self.child.wait();
    }
}

fn body(response: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(response["body"].as_str().expect("a body")).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_functions_handle_the_event_files_through_the_lambda_runtime_api() {
    let stack = Stack::start().await;
    stack.enroll(&[ORG_A, ORG_B], Utc::now()).await;
    stack.aws.enforce_auth();
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::start(&stack, Function::RotateKey, dir.path().join("rotate-key.log"));
    let policy = Emulator::start(&stack, Function::RotationPolicy, dir.path().join("rotation-policy.log"));
    let scheduled = Emulator::start(&stack, Function::ScheduledRotation, dir.path().join("scheduled-rotation.log"));

    let first = emulator.invoke("rotate-key", "rotate-key.json");
    assert_eq!(first["statusCode"], 200, "{first}");
    assert_eq!(first["headers"]["cache-control"], "no-store");
    let first = body(&first);
    let key1 =
        (first["accessKeyId"].as_str().unwrap().to_owned(), first["secretAccessKey"].as_str().unwrap().to_owned());
    assert!(stack.can_read((&key1.0, &key1.1), ORG_A).await);
    assert!(!stack.can_read((&key1.0, &key1.1), ORG_B).await);

    let refused = emulator.invoke("rotate-key", "rotate-key-wrong-scope.json");
    assert_eq!(refused["statusCode"], 403, "{refused}");
    let refused = emulator.invoke("rotate-key", "rotate-key-not-json.json");
    assert_eq!(refused["statusCode"], 415, "{refused}");

    // A second rotation with a body: the first key stays for its 24 h grace period.
    let graced = emulator.invoke("rotate-key", "rotate-key-grace-period.json");
    assert_eq!(graced["statusCode"], 200, "{graced}");
    let graced = body(&graced);
    assert_eq!(graced["oldKeyId"], key1.0.as_str());
    assert_eq!(graced["previousKeyStatus"], "Active");
    let key2 =
        (graced["accessKeyId"].as_str().unwrap().to_owned(), graced["secretAccessKey"].as_str().unwrap().to_owned());
    assert!(stack.can_read((&key1.0, &key1.1), ORG_A).await, "grace period");

    let reference = emulator.invoke("rotate-key", "rotate-key-reference-route.json");
    assert_eq!(reference["statusCode"], 200, "{reference}");
    let reference = body(&reference);
    assert_eq!(reference["oldKeyId"], key2.0.as_str());
    assert_eq!(reference["keyVersion"], 3);
    assert!(!stack.can_read((&key2.0, &key2.1), ORG_A).await, "retired without grace");
    assert!(!stack.can_read((&key1.0, &key1.1), ORG_A).await, "deleted to make room");

    // rotation-policy, every action and format, through the same Runtime API.
    for (file, status) in [
        ("policy-update-rotation-policy.json", 200),
        ("policy-update-rotation-policy-sdk.json", 200),
        ("policy-describe-key.json", 200),
        ("policy-list-key-versions.json", 200),
        ("policy-list-key-versions-json-body.json", 200),
        ("policy-update-rotation-policy-form.json", 200),
    ] {
        let response = policy.invoke("rotation-policy", file);
        assert_eq!(response["statusCode"], status, "{file}: {response}");
    }
    let described = policy.invoke("rotation-policy", "policy-describe-key.json");
    let metadata = body(&described)["KeyMetadata"].clone();
    assert_eq!(metadata["PrimaryKeyVersion"], "3");
    assert_eq!(metadata["RotationInterval"], "604800s", "the SDK-style update stored its interval");
    assert_eq!(metadata["AutomaticRotation"], "Disabled", "the form update disabled it");
    for (file, root) in [
        ("policy-describe-key-xml.json", "<DescribeKeyResponse><KeyMetadata><KeyId>key-1234567</KeyId>"),
        ("policy-list-key-versions-xml.json", "<ListKeyVersionsResponse><KeyVersions><KeyVersion>"),
        ("policy-update-rotation-policy-xml.json", "<UpdateRotationPolicyResponse><RequestId>"),
    ] {
        let xml = policy.invoke("rotation-policy", file);
        assert_eq!(xml["statusCode"], 200, "{file}: {xml}");
        assert_eq!(xml["headers"]["content-type"], "application/xml", "{file}");
        assert!(xml["body"].as_str().unwrap().contains(root), "{file}: {xml}");
    }

    // scheduled-rotation with the Scheduled Event: nothing is due yet.
    let summary = scheduled.invoke("scheduled-rotation", "scheduled-event.json");
    assert_eq!(summary["evaluatedAt"], "2026-11-22T05:00:00Z", "{summary}");
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["orgsSeen"], 2);
    assert_eq!(summary["failed"], serde_json::json!([]));
    let dry = scheduled.invoke("scheduled-rotation", "scheduled-event-dry-run.json");
    assert_eq!(dry["dryRun"], true, "{dry}");

    // The functions logged their work, and no secret.
    let log = [&emulator, &policy, &scheduled].map(Emulator::log_text).concat();
    assert!(log.contains("committed the rotation"), "{log}");
    assert!(log.contains("sweep finished"), "{log}");
    assert!(log.contains("\"CloudWatchMetrics\""), "an embedded-metric line: {log}");
    // Among them, rotate-key's rotations by trigger and the heartbeat of the
    // day's first run, a full check that completed.
    let metrics: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| line.contains("\"_aws\""))
        .filter_map(|line| serde_json::from_str(&line[line.find('{')?..]).ok())
        .collect();
    let api_rotations = metrics.iter().filter(|m| m["Trigger"] == "api" && m["Rotations"] == 1).count();
    assert_eq!(api_rotations, 3, "one a rotation through the API: {metrics:?}");
    assert!(metrics.iter().any(|m| m["FullCheckCompleted"] == 1), "the heartbeat: {metrics:?}");
    for secret in [key1.1.as_str(), key2.1.as_str(), reference["secretAccessKey"].as_str().unwrap()] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// The fanned-out sweep through the real binaries: `scheduled-rotation` with
/// SWEEP_QUEUE_URL dispatches the Scheduled Event's run to the queue (the
/// body it queues is the one of events/sweep-slice-sqs.json), and
/// `sweep-worker`, invoked with that SQS event, sweeps the slice.
#[tokio::test(flavor = "multi_thread")]
async fn the_dispatcher_queues_the_slice_the_worker_sweeps_from_the_sqs_event_file() {
    use s3_key_rotation::core::fanout::run_status;
    let mut stack = Stack::start().await;
    let evaluated_at = chrono::DateTime::parse_from_rfc3339("2026-11-22T05:00:00Z").unwrap().with_timezone(&Utc);
    stack.enroll(&[ORG_A, ORG_B], evaluated_at - chrono::TimeDelta::hours(1)).await;
    let sqs = aws_sdk_sqs::Client::new(&stack.aws.sdk(&stack.admin.0, &stack.admin.1));
    let queue = sqs.create_queue().queue_name("sweep").send().await.unwrap().queue_url.unwrap();
    stack.env.push(("SWEEP_QUEUE_URL".into(), queue.clone()));
    stack.aws.enforce_auth();
    let dir = tempfile::tempdir().unwrap();
    let dispatcher = Emulator::start(&stack, Function::ScheduledRotation, dir.path().join("scheduled-rotation.log"));
    let worker = Emulator::start(&stack, Function::SweepWorker, dir.path().join("sweep-worker.log"));

    let manifest = dispatcher.invoke("scheduled-rotation", "scheduled-event.json");
    assert_eq!(manifest["runId"], "20261122T050000Z", "{manifest}");
    assert_eq!(manifest["orgs"], 2);
    assert_eq!(manifest["fullCheck"], true);
    assert_eq!(manifest["slices"], serde_json::json!([{"index": 0, "orgs": 2}]));
    let received = sqs.receive_message().queue_url(&queue).max_number_of_messages(10).send().await.unwrap();
    let messages = received.messages.unwrap_or_default();
    assert_eq!(messages.len(), 1, "one message for the one slice");
    let queued: serde_json::Value = serde_json::from_str(messages[0].body().unwrap()).unwrap();
    let file = std::fs::read_to_string(project_root().join("events/sweep-slice-sqs.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&file).unwrap();
    let in_file: serde_json::Value = serde_json::from_str(file["Records"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(queued, in_file, "the event file carries what the dispatcher queues");
    let registry = &stack.adapters.registry;
    assert_eq!(run_status(registry, Some("20261122T050000Z")).await.unwrap().expect("the run").waiting, [0]);

    let answer = worker.invoke("sweep-worker", "sweep-slice-sqs.json");
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));
    let status = run_status(registry, Some("20261122T050000Z")).await.unwrap().expect("the run");
    assert!(status.finished(), "{status:?}");
    assert_eq!((status.results.len(), status.results[0].deliveries), (1, 1));
    assert_eq!(status.total.orgs_seen, 2);
    assert!(status.total.failed.is_empty() && status.total.mismatches.is_empty(), "{:?}", status.total);
    let log = dispatcher.log_text() + &worker.log_text();
    assert!(log.contains("run dispatched") && log.contains("slice swept"), "{log}");
}
