"""The stack the consumers' tests use (`running_stack`): the local AWS endpoint with credentials
enforced, the org enrolled with a reader principal in the org's own AWS account
(a second account), the functions of template.yaml behind the API Gateway
stand-in, and the consumers' AWS configuration, written once, as the org writes it.

Run by scripts/test.sh after `cargo build --bins` (target/debug/rotate-key,
scheduled-rotation and s3-key-rotation-credentials).
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gateway import Deployment, Gateway, token  # noqa: E402
from local_aws import LOG_KEY, MANAGED_BUCKET, REGION, REGISTRY_BUCKET, ROOT, TARGET, VENV_BIN, LocalAws, cli  # noqa: E402

ORG = "7654321"
OTHER_ORG = "1234567"
ORG_ACCOUNT = "210987654321"  # the org's own AWS account, where its consumers run
OTHER_ACCOUNT = "220987654321"  # the other org's
READER_ROLE = "log-reader"
ORG_ADMIN = "org-admin"  # the org's user whose keys its machines hold; it assumes the reader role
HELPER = TARGET / "s3-key-rotation-credentials"
ISSUER = "https://auth.example.test/"
AUDIENCE = "s3-key-rotation"
JWT_SECRET = "local-test-signing-secret-of-the-identity-provider"
SCHEDULED_EVENT = json.loads((ROOT / "events" / "scheduled-event.json").read_text())
# The long-lived consumer's --refresh: botocore runs the helper again once fewer than
# 15 minutes remain, so this consumer reads the vault every 20 seconds.
LONG_LIVED_REFRESH = 920
REFRESH_EVERY = LONG_LIVED_REFRESH - 15 * 60


def reader_arn(account=ORG_ACCOUNT):
    return f"arn:aws:iam::{account}:role/{READER_ROLE}"


def org_account_identities(aws, operator, account):
    """In the org's own account: a user whose keys the org's machines hold, and the reader
    role it assumes, which may read the org's secret in the vault (the home account's) and
    the secrets of its own account. Returns the user's key (id, secret)."""
    iam = aws.client("iam", aws.organization_key(account, operator))
    iam.create_user(UserName=ORG_ADMIN)
    key = iam.create_access_key(UserName=ORG_ADMIN)["AccessKey"]
    user_arn = f"arn:aws:iam::{account}:user/{ORG_ADMIN}"
    iam.put_user_policy(UserName=ORG_ADMIN, PolicyName="assume-reader", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": reader_arn(account)}]}))
    iam.create_role(RoleName=READER_ROLE, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": user_arn}}]}))
    iam.put_role_policy(RoleName=READER_ROLE, PolicyName="read-bucket-key", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": [
                f"arn:aws:secretsmanager:{REGION}:123456789012:secret:s3-key-rotation/org-*",
                f"arn:aws:secretsmanager:{REGION}:{account}:secret:*"]},
            {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}]}))
    return key["AccessKeyId"], key["SecretAccessKey"]


class Consumer:
    """tests/consumers/boto3_consumer.py running: its reads so far (`reads()`)."""

    def __init__(self, env, profile, org):
        self.process = subprocess.Popen(
            [str(VENV_BIN / "python"), str(Path(__file__).with_name("boto3_consumer.py")), profile,
             MANAGED_BUCKET, f"{org}/{LOG_KEY}"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reads = []
        self._lock = threading.Lock()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.process.stdout:
            with self._lock:
                self._reads.append(json.loads(line))

    def reads(self, since=0.0):
        with self._lock:
            return [r for r in self._reads if r["at"] >= since]

    def wait(self, until, within, what):
        """The reads since now, once `until(reads)` holds (at most `within` seconds)."""
        since = time.time()
        deadline = since + within
        while time.time() < deadline:
            assert self.process.poll() is None, f"the consumer exited: {self.process.stderr.read()}"
            if until(self.reads(since)):
                return self.reads(since)
            time.sleep(0.2)
        raise AssertionError(f"{what} within {within} s; reads: {self.reads(since)[-10:]}")

    def close(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Stack:
    def __init__(self, aws, env, gateway, clock, consumer_env, arn, other_arn, secrets):
        self.aws = aws
        self.env = env
        self.gateway = gateway
        self.clock = clock
        self.consumer_env = consumer_env
        self.arn = arn  # the org's secret, as `enroll --reader-principal` printed it
        self.other_arn = other_arn  # the other org's
        self.secrets = secrets  # every secret the test came across: none may show on stderr

    def rotate(self, grace=None):
        """rotate-key through HTTP at the stack's clock: the new access key id (its secret noted)."""
        headers = {"Authorization": f"Bearer {token(JWT_SECRET, ISSUER, AUDIENCE, org=ORG)}"}
        body = None
        if grace:
            headers["Content-Type"] = "application/json"
            body = json.dumps({"previousKeyGracePeriod": grace})
        answer = requests.post(f"{self.gateway.url}/iam/rotate-key", data=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        self.secrets.append(answer.json()["secretAccessKey"])
        return answer.json()["accessKeyId"]

    def sweep(self, at):
        """One scheduled-rotation invocation at event time `at`: its summary."""
        event = dict(SCHEDULED_EVENT, id=str(uuid.uuid4()), time=at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return self.gateway.runtimes["ScheduledRotationFunction"].invoke(event)

    def record(self, org=ORG):
        return json.loads(cli(self.env, "status", "--org", org, "--json", capture=True).stdout)

    def helper(self, *args, env=None):
        """s3-key-rotation-credentials run as the consumers' tools run it: (exit status, stdout, stderr)."""
        done = subprocess.run([str(HELPER), *args], env=env or self.consumer_env, capture_output=True, text=True,
                              timeout=60)
        return done.returncode, done.stdout, done.stderr


def consumer_config(home, helper_args, admin_key):
    """The org's AWS configuration, written once: the user's keys, the reader profile (the
    reader role, assumed with them), and the consumers' profiles, whose credential_process
    is the helper; `org-logs-loop` names itself as the reader (a mistake the helper refuses)."""
    aws_dir = home / ".aws"
    aws_dir.mkdir()
    (aws_dir / "credentials").write_text(
        f"[{ORG_ADMIN}]\naws_access_key_id = {admin_key[0]}\naws_secret_access_key = {admin_key[1]}\n")
    helper = f"{HELPER} {helper_args}"
    (aws_dir / "config").write_text(f"""[profile {READER_ROLE}]
role_arn = {reader_arn()}
source_profile = {ORG_ADMIN}
region = {REGION}

[profile org-logs]
credential_process = {helper} --profile {READER_ROLE}
region = {REGION}

[profile org-logs-long-lived]
credential_process = {helper} --profile {READER_ROLE} --refresh {LONG_LIVED_REFRESH}s
region = {REGION}

[profile org-logs-loop]
credential_process = {helper} --profile org-logs-loop
region = {REGION}
""")
    return {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(aws_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
        "AWS_ENDPOINT_URL": None,  # set by the caller: the local endpoint
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextmanager
def running_stack(log_dir, home):
    aws = LocalAws.start()
    gateway = None
    try:
        env = aws.provision([ORG, OTHER_ORG])
        operator = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        admin_key = org_account_identities(aws, operator, ORG_ACCOUNT)
        org_account_identities(aws, operator, OTHER_ACCOUNT)
        enrolled = cli(env, "enroll", "--org", ORG, "--reader-principal", reader_arn(), capture=True).stdout
        arn = next(line.split(" may read the secret ")[1] for line in enrolled.splitlines() if "may read" in line)
        enrolled = cli(env, "enroll", "--org", OTHER_ORG, "--reader-principal", reader_arn(OTHER_ACCOUNT),
                       capture=True).stdout
        other_arn = next(line.split(" may read the secret ")[1] for line in enrolled.splitlines() if "may read" in line)
        aws.enforce_credentials()
        # The functions as tests/sdk deploys them (the same template roles), credentials enforced.
        deployment = Deployment({"RegistryBucket": REGISTRY_BUCKET, "ManagedBucketName": MANAGED_BUCKET,
                                 "JwtIssuer": ISSUER, "JwtAudience": AUDIENCE})
        credentials = aws.function_credentials(env, deployment.parameters)
        clock = {"offset": timedelta(0)}
        gateway = Gateway(deployment, env, JWT_SECRET, log_dir, credentials=credentials,
                          clock=lambda: datetime.now(timezone.utc) + clock["offset"])
        consumer_env = consumer_config(home, f"--secret-id {arn}", admin_key)
        consumer_env["AWS_ENDPOINT_URL"] = aws.endpoint
        yield Stack(aws, env, gateway, clock, consumer_env, arn, other_arn, [admin_key[1]])
    finally:
        if gateway is not None:
            gateway.close()
        aws.stop()

