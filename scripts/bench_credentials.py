"""Times s3-key-rotation-credentials against the local endpoint: one call as a consumer's
tool makes it, from process start to the answer on stdout, through the reader's role
profile (STS AssumeRole, then Secrets Manager GetSecretValue across accounts).

    .venv/bin/python scripts/bench_credentials.py [--binary target/release/s3-key-rotation-credentials] [--runs 20]

Prints the binary's size and the median, fastest and slowest call. The stack is the one
tests/consumers uses (an org enrolled with a reader role in its own account, one rotation).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "consumers"))
sys.path.insert(0, str(ROOT / "scripts"))

from consumer_stack import ORG, ORG_ACCOUNT, OTHER_ACCOUNT, READER_ROLE, consumer_config, org_account_identities, \
    reader_arn  # noqa: E402
from local_aws import LocalAws, cli  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "s3-key-rotation-credentials"))
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    binary = Path(args.binary)
    aws = LocalAws.start()
    try:
        env = aws.provision([ORG])
        operator = (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        admin_key = org_account_identities(aws, operator, ORG_ACCOUNT)
        org_account_identities(aws, operator, OTHER_ACCOUNT)
        enrolled = cli(env, "enroll", "--org", ORG, "--reader-principal", reader_arn(), capture=True).stdout
        arn = next(line.split(" may read the secret ")[1] for line in enrolled.splitlines() if "may read" in line)
        cli(env, "rotate", "--org", ORG, capture=True)
        aws.enforce_credentials()
        with tempfile.TemporaryDirectory() as home:
            consumer_env = consumer_config(Path(home), f"--secret-id {arn}", admin_key)
            consumer_env["AWS_ENDPOINT_URL"] = aws.endpoint
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                done = subprocess.run([str(binary), "--secret-id", arn, "--profile", READER_ROLE],
                                      env=consumer_env, capture_output=True, text=True)
                times.append(time.perf_counter() - started)
                assert done.returncode == 0, done.stderr
    finally:
        aws.stop()
    ms = sorted(t * 1000 for t in times)
    print(f"{binary}: {binary.stat().st_size / 2**20:.2f} MiB")
    print(f"{args.runs} calls through the role profile: median {statistics.median(ms):.0f} ms, "
          f"fastest {ms[0]:.0f} ms, slowest {ms[-1]:.0f} ms")


if __name__ == "__main__":
    main()
