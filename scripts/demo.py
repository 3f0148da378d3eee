"""The main job of s3-key-rotation, run on the embedded default.

1. starts the local AWS endpoint (moto server on a free loopback port);
2. creates the managed bucket with log objects and the registry bucket;
3. enrolls a few orgs with the operator CLI (`s3-key-rotation enroll`);
4. turns on credential enforcement, so every call must be signed by a live key;
5. invokes `rotate-key` through a real Lambda Runtime API (`cargo lambda watch`
   + `cargo lambda invoke` with the files in events/), twice;
6. shows that each returned key reads its org's prefix, not another org's,
   and that the old key no longer works.
It exits non-zero if anything is not as it should be.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
ORGS = ["1234567", "7654321", "2468135"]
ORG = ORGS[0]  # the org of the tokens in events/


def step(text):
    print(f"\n== {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "moto_server.py")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        sys.exit(f"demo: moto did not start: {line!r}")
    return proc, int(line.split()[1])


def client(service, endpoint, key=("test", "test")):
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def can_read(endpoint, key, org):
    try:
        client("s3", endpoint, key).get_object(Bucket="logs", Key=f"{org}/2026-11-22.log")
        return True
    except Exception:
        return False


def masked(secret):
    return f"of {len(secret)} characters (returned once to the caller, not shown here)"


def main():
    failures = []

    def expect(ok, text):
        print(f"  {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            failures.append(text)

    step("starting the local AWS endpoint (moto server on loopback)")
    moto, port = start_moto()
    endpoint = f"http://127.0.0.1:{port}"
    print(f"  {endpoint}")
    watch = None
    try:
        step("creating the managed bucket 'logs' with one log object per org, and the registry bucket")
        s3 = client("s3", endpoint)
        for bucket in ("registry", "logs"):
            s3.create_bucket(Bucket=bucket)
        for org in ORGS:
            s3.put_object(Bucket="logs", Key=f"{org}/2026-11-22.log", Body=f"log lines of org {org}\n".encode())
            print(f"  s3://logs/{org}/2026-11-22.log")

        # The functions' role, standing in for the Lambda execution role.
        iam = client("iam", endpoint)
        iam.create_user(UserName="rotation-functions")
        iam.put_user_policy(UserName="rotation-functions", PolicyName="functions", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        role_key = iam.create_access_key(UserName="rotation-functions")["AccessKey"]
        env = dict(os.environ)
        env.update({
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": role_key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": role_key["SecretAccessKey"],
            "REGISTRY_BUCKET": "registry",
            "MANAGED_BUCKET": "logs",
        })

        step("enrolling the orgs with the operator CLI")
        cli = [str(ROOT / "target" / "debug" / "s3-key-rotation")]
        subprocess.run(cli + ["enroll"] + [a for org in ORGS for a in ("--org", org)], env=env, check=True)

        step("turning on credential enforcement: from now on only live keys are accepted")
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

        step("starting rotate-key under the Lambda Runtime API (cargo lambda watch)")
        invoke_port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="rotate-key-", suffix=".log", delete=False)
        watch = subprocess.Popen(
            [str(VENV_BIN / "cargo-lambda"), "lambda", "watch", "--ignore-changes", "--quiet",
             "--invoke-address", "127.0.0.1", "--invoke-port", str(invoke_port)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", invoke_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("demo: the Lambda Runtime API did not start")
                time.sleep(0.2)

        def invoke(event_file):
            out = subprocess.run(
                [str(VENV_BIN / "cargo-lambda"), "lambda", "invoke", "rotate-key", "--invoke-address", "127.0.0.1",
                 "--invoke-port", str(invoke_port), "--output-format", "json",
                 "--data-file", str(ROOT / "events" / event_file)],
                cwd=ROOT, env=env, capture_output=True, text=True, check=True,
            )
            response = json.loads(out.stdout)
            return response["statusCode"], json.loads(response["body"])

        step(f"POST /iam/rotate-key as an admin of org {ORG} (events/rotate-key.json)")
        status, first = invoke("rotate-key.json")
        expect(status == 200, f"HTTP {status}")
        key1 = (first["accessKeyId"], first["secretAccessKey"])
        print(f"  key v{first['keyVersion']} {key1[0]}, secret {masked(key1[1])}, expires {first['expiresAt']}")
        expect(can_read(endpoint, key1, ORG), f"the new key reads s3://logs/{ORG}/")
        expect(not can_read(endpoint, key1, ORGS[1]), f"the new key cannot read s3://logs/{ORGS[1]}/")

        step("POST /admin/v2/iam/rotateKey, the reference's route (events/rotate-key-reference-route.json)")
        status, second = invoke("rotate-key-reference-route.json")
        expect(status == 200, f"HTTP {status}")
        key2 = (second["currentKeyId"], second["secretAccessKey"])
        print(f"  key v{second['keyVersion']} {key2[0]}, oldKeyId {second['oldKeyId']} ({second['previousKeyStatus']})")
        expect(second["oldKeyId"] == key1[0], "oldKeyId names the first key")
        expect(can_read(endpoint, key2, ORG), f"the new key reads s3://logs/{ORG}/")
        expect(not can_read(endpoint, key1, ORG), "the old key no longer works")

        step("a caller without the admin scope (events/rotate-key-wrong-scope.json)")
        status, refused = invoke("rotate-key-wrong-scope.json")
        expect(status == 403, f"HTTP {status}: {refused['error']}")

        step("the registry record (no secret in it)")
        subprocess.run(cli + ["status", "--org", ORG], env=env, check=True)
    finally:
        if watch is not None:
            os.killpg(watch.pid, 15)
            watch.wait()
        moto.stdin.close()
        moto.wait(timeout=10)

    if failures:
        sys.exit(f"\ndemo: {len(failures)} check(s) failed")
    print("\ndemo: every check passed")


if __name__ == "__main__":
    main()
