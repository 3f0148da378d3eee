"""The local stack shared by the demo and the Python test suite.

`LocalAws.start()` launches scripts/moto_server.py on a free loopback port,
`provision()` creates the managed bucket (one log object per org), the registry
bucket and a user standing in for the functions' execution role, and returns
the environment the binaries run with. `enforce_credentials()` turns on moto's
credential checks, after which only live keys are accepted.
`deploy_member_account(account)` deploys member-account.yaml's role into a member
account through its OrganizationAccountAccessRole (as tests/common/mod.rs's
`Stack::with_members` does); `member_env(accounts)` is the environment that names
those roles (MEMBER_ACCOUNT_ROLES, MEMBER_ROLE_EXTERNAL_ID).
"""
import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
TARGET = ROOT / "target" / "debug"
REGION = "us-east-1"
REGISTRY_BUCKET = "registry"
MANAGED_BUCKET = "logs"
LOG_KEY = "2026-11-22.log"
HOME_ACCOUNT = "123456789012"  # moto's default account: the home account
MEMBER_ROLE = "s3-key-rotation-member"  # member-account.yaml's RoleName default
ORGANIZATION_ROLE = "OrganizationAccountAccessRole"  # always assumable on scripts/moto_server.py
EXTERNAL_ID = "s3kr-test-external-id"  # the member roles' ExternalId (MEMBER_ROLE_EXTERNAL_ID)
ADMINISTRATOR = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def member_role_arn(account):
    return f"arn:aws:iam::{account}:role/{MEMBER_ROLE}"


def member_env(accounts):
    """The functions' (and the CLI's) variables naming the member accounts' roles."""
    return {"MEMBER_ACCOUNT_ROLES": ",".join(member_role_arn(a) for a in accounts),
            "MEMBER_ROLE_EXTERNAL_ID": EXTERNAL_ID}


def _resolve(value, parameters, conditions):
    """member-account.yaml's intrinsics (`Ref`, `Fn::Sub`, `Fn::If`, `Fn::Not`, `Fn::Equals`,
    `AWS::NoValue`) resolved as CloudFormation does when it creates the stack; `_NO_VALUE` is
    `AWS::NoValue` (a port of tests/common/mod.rs's `resolve`)."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("Ref", "Fn::Sub", "Fn::If", "Fn::Not",
                                                                             "Fn::Equals"):
        (key, arg), = value.items()
        if key == "Ref":
            return _NO_VALUE if arg == "AWS::NoValue" else parameters[arg]
        if key == "Fn::Sub":
            text = str(arg)
            while "${" in text:
                start = text.index("${")
                end = text.index("}", start)
                text = text[:start] + parameters[text[start + 2:end]] + text[end + 1:]
            return text
        if key == "Fn::If":
            name, yes, no = arg
            holds = _resolve(conditions[name], parameters, conditions) is True
            return _resolve(yes if holds else no, parameters, conditions)
        if key == "Fn::Not":
            return _resolve(arg[0], parameters, conditions) is not True
        return _resolve(arg[0], parameters, conditions) == _resolve(arg[1], parameters, conditions)
    if isinstance(value, dict):
        resolved = {k: _resolve(v, parameters, conditions) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
    if isinstance(value, list):
        return [v for v in (_resolve(v, parameters, conditions) for v in value) if v is not _NO_VALUE]
    return value


_NO_VALUE = object()


class LocalAws:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._clients = {}
        self._clients_lock = threading.Lock()  # boto3 builds clients one thread at a time

    @classmethod
    def start(cls):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "moto_server.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            raise RuntimeError(f"the local AWS endpoint did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def client(self, service, key=("test", "test"), endpoint=None, attempts=2, timeout=60):
        """A boto3 client signed with `key` (id, secret[, session token]), of this endpoint (or another
        one in front of it), making at most `attempts` attempts (standard retry mode)
        that each wait `timeout` seconds for an answer; reused for the same arguments."""
        args = (service, key, endpoint, attempts, timeout)
        with self._clients_lock:
            if args not in self._clients:
                self._clients[args] = boto3.client(
                    service, endpoint_url=endpoint or self.endpoint, region_name=REGION,
                    aws_access_key_id=key[0], aws_secret_access_key=key[1],
                    aws_session_token=key[2] if len(key) > 2 else None,
                    config=Config(s3={"addressing_style": "path"}, read_timeout=timeout,
                                  retries={"total_max_attempts": attempts, "mode": "standard"}),
                )
            return self._clients[args]

    def provision(self, orgs):
        """Buckets, one log object per org and the functions' credentials; returns their environment."""
        s3 = self.client("s3")
        for bucket in (REGISTRY_BUCKET, MANAGED_BUCKET):
            s3.create_bucket(Bucket=bucket)
        for org in orgs:
            s3.put_object(Bucket=MANAGED_BUCKET, Key=f"{org}/{LOG_KEY}", Body=f"log lines of org {org}\n".encode())
        iam = self.client("iam")
        iam.create_user(UserName="rotation-functions")
        iam.put_user_policy(UserName="rotation-functions", PolicyName="functions", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        role_key = iam.create_access_key(UserName="rotation-functions")["AccessKey"]
        return {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": role_key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": role_key["SecretAccessKey"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "REGISTRY_BUCKET": REGISTRY_BUCKET,
            "MANAGED_BUCKET": MANAGED_BUCKET,
        }

    def deploy_member_account(self, account, external_id=EXTERNAL_ID):
        """Deploys member-account.yaml into `account` as an operator does through the AWS
        Organizations role: each resource (a role), its trust policy and inline policies
        resolved with the stack's parameters (HomeAccountId: the home account, ExternalId:
        `external_id`, the others' defaults). The Organizations role itself gets the policy
        AWS gives it (`*`), so that a test can still look into the account once credentials
        are enforced (`organization_key`). Before `enforce_credentials()`."""
        from cfnlint.decode import decode
        template, matches = decode(str(ROOT / "member-account.yaml"))
        assert not matches, matches
        parameters = {name: p["Default"] for name, p in template["Parameters"].items() if "Default" in p}
        parameters.update({"AWS::Partition": "aws", "AWS::AccountId": account, "HomeAccountId": HOME_ACCOUNT,
                           "ExternalId": external_id})
        iam = self.client("iam", self.organization_key(account, ("test", "test")))
        for resource in template["Resources"].values():
            assert resource["Type"] == "AWS::IAM::Role", "only roles are deployed here"
            properties = _resolve(resource["Properties"], parameters, template.get("Conditions", {}))
            name = properties["RoleName"]
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(properties["AssumeRolePolicyDocument"]))
            for policy in properties.get("Policies", []):
                iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"],
                                    PolicyDocument=json.dumps(policy["PolicyDocument"]))
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"AWS": f"arn:aws:iam::{HOME_ACCOUNT}:root"}}]}
        iam.create_role(RoleName=ORGANIZATION_ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=ORGANIZATION_ROLE, PolicyName="AdministratorAccess",
                            PolicyDocument=json.dumps(ADMINISTRATOR))

    def organization_key(self, account, key):
        """Credentials (id, secret, token) of `account`'s OrganizationAccountAccessRole, assumed with `key`."""
        credentials = self.client("sts", key).assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{ORGANIZATION_ROLE}", RoleSessionName="local-aws")["Credentials"]
        return credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"]

    def enforce_credentials(self):
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

    def can_read(self, key, org):
        """Whether an access key (id, secret) reads the org's log object in the managed bucket."""
        try:
            self.client("s3", key).get_object(Bucket=MANAGED_BUCKET, Key=f"{org}/{LOG_KEY}")
            return True
        except Exception:
            return False


def cli(env, *args, capture=False):
    """Runs the operator CLI built by `cargo build --bins`."""
    return subprocess.run([str(TARGET / "s3-key-rotation"), *args], env=env, check=True,
                          capture_output=capture, text=True)
