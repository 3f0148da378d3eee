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

from local_aws import LOG_KEY, MANAGED_BUCKET, ROOT, VENV_BIN, LocalAws, cli

ORGS = ["1234567", "7654321", "2468135"]
ORG = ORGS[0]  # the org of the tokens in events/


def step(text):
    print(f"\n== {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def masked(secret):
    return f"of {len(secret)} characters (returned once to the caller, not shown here)"


def main():
    failures = []

    def expect(ok, text):
        print(f"  {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            failures.append(text)

    step("starting the local AWS endpoint (moto server on loopback)")
    aws = LocalAws.start()
    endpoint = aws.endpoint
    print(f"  {endpoint}")
    watch = None
    try:
        step(f"creating the managed bucket '{MANAGED_BUCKET}' with one log object per org, and the registry bucket")
        env = {**os.environ, **aws.provision(ORGS)}
        for org in ORGS:
            print(f"  s3://{MANAGED_BUCKET}/{org}/{LOG_KEY}")

        step("enrolling the orgs with the operator CLI")
        cli(env, "enroll", *[a for org in ORGS for a in ("--org", org)])

        step("turning on credential enforcement: from now on only live keys are accepted")
        aws.enforce_credentials()

        step("starting rotate-key under the Lambda Runtime API (cargo lambda watch), with its template role")
        function_env = {**env, **aws.function_credentials(env)["RotateKeyFunction"]}
        invoke_port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="rotate-key-", suffix=".log", delete=False)
        watch = subprocess.Popen(
            [str(VENV_BIN / "cargo-lambda"), "lambda", "watch", "--ignore-changes", "--quiet",
             "--invoke-address", "127.0.0.1", "--invoke-port", str(invoke_port)],
            cwd=ROOT, env=function_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
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
        expect(aws.can_read(key1, ORG), f"the new key reads s3://logs/{ORG}/")
        expect(not aws.can_read(key1, ORGS[1]), f"the new key cannot read s3://logs/{ORGS[1]}/")

        step("POST /admin/v2/iam/rotateKey, the reference's route (events/rotate-key-reference-route.json)")
        status, second = invoke("rotate-key-reference-route.json")
        expect(status == 200, f"HTTP {status}")
        key2 = (second["currentKeyId"], second["secretAccessKey"])
        print(f"  key v{second['keyVersion']} {key2[0]}, oldKeyId {second['oldKeyId']} ({second['previousKeyStatus']})")
        expect(second["oldKeyId"] == key1[0], "oldKeyId names the first key")
        expect(aws.can_read(key2, ORG), f"the new key reads s3://logs/{ORG}/")
        expect(not aws.can_read(key1, ORG), "the old key no longer works")

        step("a caller without the admin scope (events/rotate-key-wrong-scope.json)")
        status, refused = invoke("rotate-key-wrong-scope.json")
        expect(status == 403, f"HTTP {status}: {refused['error']}")

        step("the registry record (no secret in it)")
        cli(env, "status", "--org", ORG)
    finally:
        if watch is not None:
            os.killpg(watch.pid, 15)
            watch.wait()
        aws.stop()

    if failures:
        sys.exit(f"\ndemo: {len(failures)} check(s) failed")
    print("\ndemo: every check passed")


if __name__ == "__main__":
    main()
