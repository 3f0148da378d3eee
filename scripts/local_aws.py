"""The local stack shared by the demo and the Python test suite.

`LocalAws.start()` launches scripts/moto_server.py on a free loopback port,
`provision()` creates the managed bucket (one log object per org), the registry
bucket and a user standing in for the functions' execution role, and returns
the environment the binaries run with. `enforce_credentials()` turns on moto's
credential checks, after which only live keys are accepted.
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
        """A boto3 client signed with `key` (id, secret), of this endpoint (or another
        one in front of it), making at most `attempts` attempts (standard retry mode)
        that each wait `timeout` seconds for an answer; reused for the same arguments."""
        args = (service, key, endpoint, attempts, timeout)
        with self._clients_lock:
            if args not in self._clients:
                self._clients[args] = boto3.client(
                    service, endpoint_url=endpoint or self.endpoint, region_name=REGION,
                    aws_access_key_id=key[0], aws_secret_access_key=key[1],
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
