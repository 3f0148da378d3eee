"""Benchmarks of s3-key-rotation on the local stack (run by scripts/bench.sh).

- sweep scale: N enrolled orgs (default 100, 1000, 5000), 10% due for automatic
  rotation; the sweep as the operator CLI runs it (`s3-key-rotation sweep`,
  release build): wall time, AWS requests per org (counted by the local
  endpoint), peak memory (the process's max RSS). Three runs, each with 10% due:
  the baseline, the simplest correct approach (one org at a time, every org's
  IAM keys checked: SWEEP_CONCURRENCY=1 on the day's first run); a typical run
  (8 at once, the day's full check already done); the day's full check (8 at
  once). And the floor: the time the local endpoint needs to serve the minimum
  requests of such a sweep (one listing page per 1000 orgs, one record read per
  org, six calls per due rotation), issued by a bare HTTP client at the same
  concurrency.
- rotation latency: rotate-key invoked through the API Gateway stand-in and a
  Lambda Runtime API, 200 times: p50/p99 of the whole call, of the time the
  local endpoint spent serving its AWS requests, and of the rest (our code, the
  SDK, the runtime and the stand-in).
- cold start: each function's release binary started under a Lambda Runtime
  API with an event waiting, time to its first request for work (init) and to
  its first answer; and the binaries' stripped sizes (x86_64 here; the arm64
  `bootstrap`s of `sam build` too when present).

Prints a report (Markdown) on stdout; progress on stderr.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway import Deployment, Gateway, RuntimeApi, token
from local_aws import MANAGED_BUCKET, REGISTRY_BUCKET, ROOT, LocalAws

RELEASE = Path(os.environ.get("BENCH_BINARIES", ROOT / "target" / "release"))  # the script checks itself on debug builds
SAM_BUILD = ROOT / ".aws-sam" / "build"
FUNCTIONS = ["rotate-key", "rotation-policy", "scheduled-rotation"]
CALLS_PER_ROTATION_MIN = 6  # claim write, CreateAccessKey, vault put, commit write, UpdateAccessKey, PutEvents
ISSUER, AUDIENCE, SECRET = "https://auth.bench.test/", "s3-key-rotation", "bench-signing-secret"


def log(text):
    print(text, file=sys.stderr, flush=True)


def stats(aws):
    with urllib.request.urlopen(f"{aws.endpoint}/moto-api/bench/stats", timeout=10) as r:
        return json.load(r)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure_in_child(args, env):
    """Runs `args` from a small wrapper process so that its max RSS is its own."""
    wrapper = (
        "import json,resource,subprocess,sys,time\n"
        "t=time.perf_counter()\n"
        "p=subprocess.run(sys.argv[1:],capture_output=True,text=True)\n"
        "s=time.perf_counter()-t\n"
        "r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'seconds':s,'maxrss_kib':r,'rc':p.returncode,'out':p.stdout,'err':p.stderr[-3000:]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper, *args], env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(args[1:3])} failed: {result['err']}")
    return result["seconds"], result["maxrss_kib"] / 1024, result["out"]


class Scale:
    def __init__(self, n, due_fraction=0.1):
        self.n = n
        self.orgs = [str(1000000 + i) for i in range(n)]
        self.due = self.orgs[:: int(1 / due_fraction)]

    def setup(self):
        self.aws = LocalAws.start()
        env = self.aws.provision([])
        env.update({
            # Identical work in both runs: no grace period, no key deletion, no warnings in reach.
            "ROTATION_GRACE_PERIOD": "0s", "KEY_RETENTION": "60d", "RUST_LOG": "warn",
        })
        self.env = env
        cli = str(RELEASE / "s3-key-rotation")
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write("orgId\n" + "\n".join(self.orgs) + "\n")
        log(f"  enrolling {self.n} orgs")
        started = time.perf_counter()
        subprocess.run([cli, "enroll", "--csv", f.name, "--concurrency", "16"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        self.enroll_seconds = time.perf_counter() - started
        log(f"  {self.n} orgs enrolled in {self.enroll_seconds:.1f} s; giving {len(self.due)} a key due for rotation")
        iam, s3 = self.aws.client("iam"), self.aws.client("s3")
        now = datetime.now(timezone.utc)

        def make_due(org):
            key = iam.create_access_key(UserName=f"org-{org}")["AccessKey"]
            obj = s3.get_object(Bucket=REGISTRY_BUCKET, Key=f"orgs/{org}.json")
            record = json.loads(obj["Body"].read())
            created = now - timedelta(days=10)
            record["current"] = {"version": 1, "accessKeyId": key["AccessKeyId"], "createdAt": iso(created)}
            record["policy"] = {"automatic": True, "interval": "7d", "lastRotationAt": iso(created),
                                "nextRotationAt": iso(created + timedelta(days=7))}
            s3.put_object(Bucket=REGISTRY_BUCKET, Key=f"orgs/{org}.json", Body=json.dumps(record).encode())

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(make_due, self.due))
        self.now = now

    def mark_fully_checked(self, at):
        """As if the day's full check had already run (the sweep's cursor says so)."""
        cursor = {"evaluatedAt": iso(at), "resumeAfter": None, "fullyCheckedOn": at.strftime("%Y-%m-%d")}
        self.aws.client("s3").put_object(Bucket=REGISTRY_BUCKET, Key="sweep/cursor.json",
                                         Body=json.dumps(cursor).encode())

    def sweep(self, at, concurrency, full_check):
        env = dict(self.env, SWEEP_CONCURRENCY=str(concurrency))
        before = stats(self.aws)
        seconds, rss, out = measure_in_child(
            [str(RELEASE / "s3-key-rotation"), "sweep", "--at", at.isoformat()], env)
        after = stats(self.aws)
        summary = json.loads(out)
        assert len(summary["rotated"]) == len(self.due), summary
        assert summary["orgsSeen"] == self.n and not summary["failed"], summary
        assert summary["fullCheck"] == full_check, summary
        return {"seconds": seconds, "rss_mib": rss, "requests": after["requests"] - before["requests"],
                "busy": after["busySeconds"] - before["busySeconds"]}

    def floor(self, concurrency=8):
        """The minimum requests of such a sweep, served to a bare client at the same concurrency."""
        count = (self.n + 999) // 1000 + self.n + CALLS_PER_ROTATION_MIN * len(self.due)
        paths = [f"/{REGISTRY_BUCKET}/orgs/{self.orgs[i % self.n]}.json" for i in range(count)]
        host, port = "127.0.0.1", self.aws.port
        local = threading.local()

        def get(path):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", path)
            conn.getresponse().read()

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(get, paths))
        return count, time.perf_counter() - started

    def close(self):
        self.aws.stop()


def bench_scale(sizes):
    rows = []
    for n in sizes:
        log(f"sweep scale: {n} orgs")
        scale = Scale(n)
        scale.setup()
        try:
            # Every 8 days the same orgs are due again (a 7-day interval); the later runs also delete
            # each previous key to make room (one more call per rotation than the baseline).
            base = scale.sweep(scale.now, 1, full_check=True)
            log(f"  baseline (sequential, full check): {base['seconds']:.2f} s")
            typical_at = scale.now + timedelta(days=8)
            scale.mark_fully_checked(typical_at)
            ours = scale.sweep(typical_at, 8, full_check=False)
            log(f"  sweep (concurrency 8): {ours['seconds']:.2f} s")
            full = scale.sweep(scale.now + timedelta(days=16), 8, full_check=True)
            log(f"  sweep, the day's full check (concurrency 8): {full['seconds']:.2f} s")
            count, floor = scale.floor()
            log(f"  floor: {count} requests in {floor:.2f} s")
        finally:
            scale.close()
        rows.append((n, len(scale.due), scale.enroll_seconds, ours, full, base, count, floor))
    print("### Sweep scale (10% of orgs due for rotation)\n")
    print("| orgs | due | sweep | requests/org | peak RSS | floor (min. requests) | sweep/floor "
          "| day's full check | baseline: sequential, full check | baseline/sweep | enroll (CLI, 16 at once) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, due, enroll_s, ours, full, base, count, floor in rows:
        print(f"| {n} | {due} | {ours['seconds']:.2f} s | {ours['requests'] / n:.2f} | {ours['rss_mib']:.1f} MiB "
              f"| {floor:.2f} s ({count} req) | {ours['seconds'] / floor:.1f}x "
              f"| {full['seconds']:.2f} s ({full['requests'] / n:.2f} req/org, {full['rss_mib']:.1f} MiB) "
              f"| {base['seconds']:.2f} s ({base['requests'] / n:.2f} req/org, {base['rss_mib']:.1f} MiB) "
              f"| {base['seconds'] / ours['seconds']:.1f}x | {enroll_s:.1f} s |")
    print()


def bench_latency(calls):
    log(f"rotation latency: {calls} rotate-key calls through the Runtime API")
    aws = LocalAws.start()
    gateway = None
    try:
        env = aws.provision(["1234567"])
        env["RUST_LOG"] = "warn"
        subprocess.run([str(RELEASE / "s3-key-rotation"), "enroll", "--org", "1234567"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        deployment = Deployment({"RegistryBucket": REGISTRY_BUCKET, "ManagedBucketName": MANAGED_BUCKET,
                                 "JwtIssuer": ISSUER, "JwtAudience": AUDIENCE, "RotationsPerHour": calls + 10})
        gateway = Gateway(deployment, env, SECRET, tempfile.mkdtemp(prefix="bench-logs-"), binary_dir=RELEASE)
        bearer = token(SECRET, ISSUER, AUDIENCE, org="1234567")
        total, in_aws, requests = [], [], []
        for i in range(calls + 1):
            before = stats(aws)
            started = time.perf_counter()
            request = urllib.request.Request(f"{gateway.url}/iam/rotate-key", method="POST",
                                             headers={"Authorization": f"Bearer {bearer}"})
            with urllib.request.urlopen(request, timeout=30) as r:
                assert r.status == 200
                r.read()
            elapsed = time.perf_counter() - started
            after = stats(aws)
            if i == 0:
                continue  # the first call includes the function's cold start
            total.append(elapsed * 1000)
            in_aws.append((after["busySeconds"] - before["busySeconds"]) * 1000)
            requests.append(after["requests"] - before["requests"])
    finally:
        if gateway is not None:
            gateway.close()
        aws.stop()
    ours = [t - a for t, a in zip(total, in_aws)]
    print(f"### Rotation latency ({calls} warm rotate-key calls, HTTP → stand-in → Runtime API → function)\n")
    print("| | p50 | p99 | mean |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in (("whole call", total), ("AWS (time the endpoint served our requests)", in_aws),
                         ("the rest: our code, SDK, runtime, stand-in", ours)):
        print(f"| {name} | {percentile(values, 50):.1f} ms | {percentile(values, 99):.1f} ms "
              f"| {statistics.mean(values):.1f} ms |")
    print(f"\nAWS requests per rotation: {statistics.median(requests):.0f} (median)\n")


def bench_cold_start(runs):
    log(f"cold start: {runs} starts of each function")
    env = {"PATH": os.environ.get("PATH", ""), "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "REGISTRY_BUCKET": "registry",
           "MANAGED_BUCKET": "logs", "AWS_EC2_METADATA_DISABLED": "true"}
    # Events handled without any AWS call: the time measured is the binary's own.
    with open(ROOT / "events" / "rotate-key-wrong-scope.json") as f:
        refused = json.load(f)
    events = {
        "rotate-key": refused,
        "rotation-policy": dict(refused, rawPath="/", routeKey="POST /", rawQueryString="Action=DescribeKey"),
        "scheduled-rotation": None,
    }
    from gateway import Function
    rows = []
    for binary in FUNCTIONS:
        init_ms, first_ms = [], []
        for _ in range(runs):
            function = Function(binary, binary, {}, 256, 30, "JSON")
            api = RuntimeApi(function, env, RELEASE, os.devnull)
            try:
                started = time.perf_counter()
                if events[binary] is not None:
                    api.invoke(events[binary])
                    first_ms.append((time.perf_counter() - started) * 1000)
                else:
                    api._ensure_running()
                init_ms.append((api.first_poll_at() - started) * 1000)
            finally:
                api.close()
        rows.append((binary, init_ms, first_ms))
    print(f"### Cold start (release x86_64 binary, {runs} starts each, median)\n")
    print("| function | process start → asks for its first event | → first event answered |")
    print("| --- | ---: | ---: |")
    for binary, init_ms, first_ms in rows:
        first = f"{statistics.median(first_ms):.1f} ms" if first_ms else "(needs AWS: not measured)"
        print(f"| {binary} | {statistics.median(init_ms):.1f} ms | {first} |")
    print()


def sizes():
    print("### Binary sizes (stripped)\n")
    print("| binary | x86_64 (target/release) | arm64 bootstrap (sam build) |")
    print("| --- | ---: | ---: |")
    built = {}
    if SAM_BUILD.exists():
        for fn in SAM_BUILD.iterdir():
            if (fn / "bootstrap").exists():
                built[fn.name] = (fn / "bootstrap").stat().st_size
    logical = {"rotate-key": "RotateKeyFunction", "rotation-policy": "RotationPolicyFunction",
               "scheduled-rotation": "ScheduledRotationFunction"}
    for binary in FUNCTIONS + ["s3-key-rotation"]:
        x86 = (RELEASE / binary).stat().st_size / 2**20
        arm = built.get(logical.get(binary, ""))
        arm_text = f"{arm / 2**20:.1f} MiB" if arm else "-"
        print(f"| {binary} | {x86:.1f} MiB | {arm_text} |")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="org counts of the sweep benchmark")
    parser.add_argument("--calls", type=int, default=200, help="rotate-key calls of the latency benchmark")
    parser.add_argument("--starts", type=int, default=20, help="cold starts per function")
    parser.add_argument("--only", choices=["scale", "latency", "cold", "sizes"])
    args = parser.parse_args()
    print(f"## s3-key-rotation benchmarks, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs, local AWS endpoint (moto)\n")
    if args.only in (None, "sizes"):
        sizes()
    if args.only in (None, "cold"):
        bench_cold_start(args.starts)
    if args.only in (None, "latency"):
        bench_latency(args.calls)
    if args.only in (None, "scale"):
        bench_scale([int(n) for n in args.sizes.split(",")])


if __name__ == "__main__":
    main()
