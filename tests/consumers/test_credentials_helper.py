"""Consumers follow rotation by themselves: an AWS CLI consumer and a long-lived boto3
consumer in the org's own account, each configured once with a profile whose
credential_process is s3-key-rotation-credentials, keep reading the org's prefix
across a rotation with a grace period, an automatic rotation by the sweep, and a
rotation without grace (which fails the long-lived consumer until its next refresh,
as docs/consumers.md says); the helper's failures are one line, no secret; and a
consumer that runs no process gets the new key pushed by docs/examples/push_rotated_key.py
on the org's `Bucket Key Rotated` event.

The stack (consumer_stack.py) is the local endpoint with credentials enforced, the
functions behind the API Gateway stand-in, the reader role in the org's account.
"""
import http.server
import json
import re
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from consumer_stack import (LOG_KEY, MANAGED_BUCKET, ORG, ORG_ACCOUNT, ORG_ADMIN, READER_ROLE, REFRESH_EVERY,
                            REGION, ROOT, VENV_BIN, Consumer, cli, running_stack)

LOG_TEXT = f"log lines of org {ORG}\n"
EXAMPLES = ROOT / "docs" / "examples"
SLACK = 5  # seconds: a read every 0.5 s, a helper run, a loaded machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("function-logs"), tmp_path_factory.mktemp("consumer-home")) as s:
        yield s


@pytest.fixture(scope="module")
def first_key(stack):
    """The org's first key, issued by rotate-key."""
    return stack.rotate()


@pytest.fixture(scope="module")
def long_lived(stack, first_key):
    consumer = Consumer(stack.consumer_env, "org-logs-long-lived", ORG)
    consumer.wait(lambda reads: any(r["ok"] and r["key"] == first_key for r in reads), 60,
                  "the long-lived consumer read with the org's first key")
    yield consumer
    consumer.close()


def aws_cli_read(stack):
    """`aws s3 cp s3://logs/ORG/… -` with the profile `org-logs`, as a shell script runs it: (exit
    status, what it printed, the access key ids its requests were signed with)."""
    done = subprocess.run(
        [str(VENV_BIN / "aws"), "--debug", "s3", "cp", f"s3://{MANAGED_BUCKET}/{ORG}/{LOG_KEY}", "-",
         "--profile", "org-logs"],
        env=stack.consumer_env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, set(re.findall(r"Credential=(\w+)/", done.stderr))


def follows(stack, long_lived, old, new):
    """Both consumers follow the rotation from `old` to `new` without a failed read: the AWS
    CLI at once, the long-lived consumer at its next refresh (every REFRESH_EVERY seconds)."""
    assert aws_cli_read(stack) == (0, LOG_TEXT, {new})
    reads = long_lived.wait(lambda rs: any(r["key"] == new for r in rs), REFRESH_EVERY + SLACK,
                            "the long-lived consumer signed with the new key")
    assert [r for r in reads if not r["ok"]] == []
    assert {r["key"] for r in reads} <= {old, new}, reads
    first_new = next(r for r in reads if r["key"] == new)
    assert all(r["key"] == new for r in reads if r["at"] > first_new["at"]), "it went back to the old key"


def test_the_helper_prints_the_current_key_valid_for_the_refresh_interval(stack, first_key):
    for refresh, seconds in ((None, 30 * 60), ("1h", 3600), ("900s", 900)):
        before = int(time.time())
        status, out, err = stack.helper("--secret-id", stack.arn, "--profile", READER_ROLE,
                                        *(("--refresh", refresh) if refresh else ()))
        after = time.time()
        assert (status, err) == (0, ""), err
        answer = json.loads(out)
        assert list(answer) == ["Version", "AccessKeyId", "SecretAccessKey", "Expiration"]
        assert answer["Version"] == 1 and answer["AccessKeyId"] == first_key
        expiration = datetime.strptime(answer["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        # Now plus the refresh, never later.
        assert before + seconds <= expiration.timestamp() <= after + seconds, (refresh, answer["Expiration"])
        stack.secrets.append(answer["SecretAccessKey"])
        assert stack.aws.can_read((answer["AccessKeyId"], answer["SecretAccessKey"]), ORG)


def test_a_rotation_with_a_grace_period_is_followed_without_a_failed_read(stack, first_key, long_lived):
    assert aws_cli_read(stack) == (0, LOG_TEXT, {first_key})
    new = stack.rotate(grace="1h")
    follows(stack, long_lived, first_key, new)


def test_an_automatic_rotation_by_the_sweep_is_followed_without_a_failed_read(stack, long_lived):
    old = stack.record()["current"]["accessKeyId"]
    cli(stack.env, "policy", "--org", ORG, "--enable", "--interval", "7d", capture=True)
    summary = stack.sweep(datetime.now(timezone.utc) + timedelta(days=8))
    assert len(summary["rotated"]) == 1 and summary["failed"] == [], summary
    stack.clock["offset"] = timedelta(days=8, minutes=1)  # rotate-key's requests come after the sweep's
    new = stack.record()["current"]["accessKeyId"]
    assert new != old
    follows(stack, long_lived, old, new)


def test_a_rotation_without_grace_fails_the_long_lived_consumer_until_its_next_refresh(stack, long_lived):
    old = stack.record()["current"]["accessKeyId"]
    # Right after the consumer ran the helper: its next refresh is 12 to REFRESH_EVERY s away.
    just_read = long_lived.wait(lambda rs: any(r["ok"] and r["refreshAt"] - time.time() >= 12 for r in rs),
                                REFRESH_EVERY + SLACK, "the long-lived consumer ran the helper")
    refresh_at = just_read[-1]["refreshAt"]
    new = stack.rotate()  # no grace: the old key is deactivated at the commit
    rotated = time.time()
    assert aws_cli_read(stack) == (0, LOG_TEXT, {new}), "a process that runs the helper each time never fails"
    reads = long_lived.wait(lambda rs: any(r["key"] == new for r in rs), REFRESH_EVERY + SLACK,
                            "the long-lived consumer signed with the new key")
    after = [r for r in reads if r["at"] >= rotated]
    with_old = [r for r in after if r["key"] == old]
    with_new = [r for r in after if r["key"] == new]
    assert with_old, f"no read between the rotation and the refresh due at {refresh_at}: {reads}"
    assert not any(r["ok"] for r in with_old), with_old
    assert {r["error"] for r in with_old} <= {"InvalidAccessKeyId", "403", "AccessDenied"}, with_old
    assert all(r["ok"] for r in with_new), with_new
    # It failed until its next refresh, and no longer.
    assert refresh_at - 1 <= with_new[0]["at"] <= refresh_at + SLACK, (refresh_at, with_new[0])


def test_each_failure_is_one_line_on_stderr_naming_the_secret_and_its_cause_and_nothing_on_stdout(stack):
    own = f"arn:aws:secretsmanager:{REGION}:{ORG_ACCOUNT}:secret:"
    # A secret of the org's own account that is not an access key (the reader may read it).
    operator = (stack.env["AWS_ACCESS_KEY_ID"], stack.env["AWS_SECRET_ACCESS_KEY"])
    not_a_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE42key"
    stack.secrets.append(not_a_key)
    made = stack.aws.client("secretsmanager", stack.aws.organization_key(ORG_ACCOUNT, operator)).create_secret(
        Name="not-a-bucket-key", SecretString=json.dumps({"accessKeyId": "AKIAEXAMPLE", "password": not_a_key}))
    no_keys = {k: v for k, v in stack.consumer_env.items() if k != "AWS_SHARED_CREDENTIALS_FILE"}
    no_keys["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    vault_missing = re.sub(r"org-\d+-", "org-9999999-", stack.arn)
    cases = [
        # (what, arguments, environment, exit status, what the line says)
        ("another org's secret", ["--secret-id", stack.other_arn, "--profile", READER_ROLE], None, 1,
         "AccessDeniedException: User: arn:aws:sts::210987654321:assumed-role/log-reader/"),
        ("no such secret in the vault's account", ["--secret-id", vault_missing, "--profile", READER_ROLE], None, 1,
         "because no resource-based policy allows the secretsmanager:GetSecretValue action"),
        ("no such secret", ["--secret-id", f"{own}no-such-secret", "--profile", READER_ROLE], None, 1,
         "ResourceNotFoundException"),
        ("no permission", ["--secret-id", stack.arn, "--profile", ORG_ADMIN], None, 1,
         f"AccessDeniedException: User: arn:aws:iam::{ORG_ACCOUNT}:user/{ORG_ADMIN} is not authorized"),
        ("malformed", ["--secret-id", made["ARN"], "--profile", READER_ROLE], None, 1,
         "its AWSCURRENT value is not an access key (JSON with accessKeyId and secretAccessKey)"),
        ("no credentials", ["--secret-id", stack.arn], no_keys, 1, "no credentials: no credentials found in chain"),
        ("no such profile", ["--secret-id", stack.arn, "--profile", "nope"], None, 1,
         "no credentials: profile `nope` was not defined"),
        ("a loop", ["--secret-id", stack.arn, "--profile", "org-logs-loop"], None, 1,
         "(profile org-logs-loop) come from s3-key-rotation-credentials itself (a loop)"),
        ("bad refresh", ["--secret-id", stack.arn, "--refresh", "30"], None, 2, "'30' has no unit"),
        ("no secret id", ["--profile", READER_ROLE], None, 2, "--secret-id <ARN>"),
    ]
    for what, args, env, expected, says in cases:
        status, out, err = stack.helper(*args, env=env)
        assert (status, out) == (expected, ""), (what, status, out, err)
        assert err.startswith("s3-key-rotation-credentials: ") and err.endswith("\n") and err.count("\n") == 1, \
            (what, err)
        assert says in err, (what, err)
        if expected == 1:
            assert f"secret {args[1]}: " in err, (what, err)
        assert not [s for s in stack.secrets if s in err], (what, err)


def test_a_consumer_whose_reader_profile_loops_back_fails_at_once(stack):
    done = subprocess.run([str(VENV_BIN / "aws"), "s3", "cp", f"s3://{MANAGED_BUCKET}/{ORG}/{LOG_KEY}", "-",
                           "--profile", "org-logs-loop"],
                          env=stack.consumer_env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stdout == ""
    assert "come from s3-key-rotation-credentials itself (a loop)" in done.stderr, done.stderr


class ConsumerApi:
    """A stand-in for the settings API of a consumer that keeps the key itself (a SIEM): it
    keeps each key PUT to it with the right bearer token."""

    TOKEN = "consumer-api-token"

    def __init__(self):
        keys = self.keys = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                authorized = self.headers.get("Authorization") == f"Bearer {ConsumerApi.TOKEN}"
                if authorized:
                    keys.append((body["accessKeyId"], body["secretAccessKey"]))
                self.send_response(204 if authorized else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/s3-connector/credentials"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_consumer_that_runs_no_process_gets_the_new_key_pushed_on_the_rotation_event(stack):
    """docs/examples/push_rotated_key.py, run as the org's reader on the real `Bucket Key
    Rotated` event: the provider's rule forwards the org's events (here to a queue the test
    reads, standing for the org's bus), and the example pushes the vault's current key."""
    operator = (stack.env["AWS_ACCESS_KEY_ID"], stack.env["AWS_SECRET_ACCESS_KEY"])
    sqs, events = stack.aws.client("sqs", operator), stack.aws.client("events", operator)
    queue = sqs.create_queue(QueueName="org-7654321-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="org-7654321-rotations", EventPattern=json.dumps({
        "source": ["s3-key-rotation"], "detail-type": ["Bucket Key Rotated"], "detail": {"orgId": [ORG]}}))
    events.put_targets(Rule="org-7654321-rotations", Targets=[{"Id": "org", "Arn": queue_arn}])
    api = ConsumerApi()
    try:
        new = stack.rotate(grace="1h")
        received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=10).get("Messages", [])
        assert len(received) == 1, received
        event = json.loads(received[0]["Body"])
        assert event["detail"]["accessKeyId"] == new and not [s for s in stack.secrets if s in received[0]["Body"]]
        # The example as the org's Lambda function runs it: the reader role's credentials.
        env = dict(stack.consumer_env, AWS_PROFILE=READER_ROLE, SECRET_ARN=stack.arn, CONSUMER_URL=api.url,
                   CONSUMER_TOKEN=ConsumerApi.TOKEN, PYTHONPATH=str(EXAMPLES))
        done = subprocess.run([str(VENV_BIN / "python"), "-c",
                               "import json, sys, push_rotated_key; push_rotated_key.handler(json.load(sys.stdin))"],
                              input=received[0]["Body"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert [key for key, _ in api.keys] == [new]
        assert stack.aws.can_read(api.keys[0], ORG)
        assert json.loads(done.stdout) == {"pushed": new, "rotatedTo": new}
        assert api.keys[0][1] not in done.stdout + done.stderr
    finally:
        api.close()
