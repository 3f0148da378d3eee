"""Benchmarks of s3-key-rotation on the local stack (run by scripts/bench.sh).

Every measure runs for each build given (`--build NAME DIR`, e.g. the binaries
of the revision before a change and those of the working tree; by default one
build, BENCH_BINARIES or target/release), each build on a local endpoint of its
own, the builds in turn (a call, a sweep run, a start of each), so that a change
of the machine's load falls on all of them alike.

- AWS requests by kind: the requests of one steady-state rotate-key call (an
  org that already has a current and a previous key), by service, operation and
  S3 key prefix, as the local endpoint names them (scripts/moto_server.py), in
  the order of their first use; the most common sequence of the latency calls.
- rotation latency: rotate-key invoked through the API Gateway stand-in and a
  Lambda Runtime API, 200 times after two warm-up calls (the first one starts
  the function and issues the org's first key, the second gives it a previous
  key), with a sweep (`s3-key-rotation sweep`, the scheduled run's work) between
  two calls, outside what is measured, as the hourly schedule runs between two
  rotations of an org: p50/p99 of the whole call, of the time the local
  endpoint spent serving its AWS requests, and of the rest (our code, the SDK,
  the runtime and the stand-in); AWS requests per rotation.
- the rotation floor: the simplest rotation that is still one, by a bare boto3
  client on the same endpoint, for an org of the same shape (enrolled by the
  CLI; a current and a previous, inactive, key), as many calls, one at a time:
  IAM ListAccessKeys, DeleteAccessKey (the previous, inactive key: room for the
  new one), CreateAccessKey, UpdateAccessKey (the current key to Inactive). It
  skips what the function adds (the registry, the vault, the event, the HTTP
  API and the Runtime API), so it bounds what a request cut can win.
- sweep scale: N enrolled orgs (default 100, 1000, 5000), 10% due for automatic
  rotation; the sweep as the operator CLI runs it (`s3-key-rotation sweep`):
  wall time, AWS requests per org (counted by the local endpoint), peak memory
  (the process's max RSS). Three runs, each with 10% due: the baseline, the
  simplest correct approach (one org at a time, every org's IAM keys checked:
  SWEEP_CONCURRENCY=1 on the day's first run); a typical run (8 at once, the
  day's full check already done); the day's full check (8 at once). And the
  floor: the time the local endpoint needs to serve the minimum requests of such
  a sweep (one listing page per 1000 orgs, one record read per org, six calls
  per due rotation), issued by a bare HTTP client at the same concurrency.
- cold start: each function's binary started under a Lambda Runtime API with
  an event waiting, time to its first request for work (init) and to its first
  answer; and the binaries' stripped sizes (x86_64 here; the arm64
  `bootstrap`s of `sam build` too when present).

Prints a report (Markdown) on stdout, starting with one table of the main
measures (measure | each build | floor); progress on stderr.
"""
import argparse
import collections
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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway import Deployment, Gateway, RuntimeApi, token
from local_aws import MANAGED_BUCKET, REGISTRY_BUCKET, ROOT, LocalAws

RELEASE = Path(os.environ.get("BENCH_BINARIES", ROOT / "target" / "release"))  # the script checks itself on debug builds
SAM_BUILD = ROOT / ".aws-sam" / "build"
FUNCTIONS = ["rotate-key", "rotation-policy", "scheduled-rotation"]
CALLS_PER_ROTATION_MIN = 6  # claim write, CreateAccessKey, vault put, commit write, UpdateAccessKey, PutEvents
ISSUER, AUDIENCE, SECRET = "https://auth.bench.test/", "s3-key-rotation", "bench-signing-secret"
ORG = "1234567"
FLOOR = "floor"


@dataclass
class Build:
    name: str
    binaries: Path
    description: str

    @classmethod
    def at(cls, name, directory):
        directory = Path(directory)
        revision = directory / "REVISION"  # written by scripts/bench.sh
        if revision.exists():
            description = revision.read_text().strip()
        else:
            try:
                description = f"binaries in {directory.resolve().relative_to(ROOT)}"
            except ValueError:
                description = f"binaries in {directory}"
        return cls(name, directory, description)

    def cli(self):
        return str(self.binaries / "s3-key-rotation")


def log(text):
    print(text, file=sys.stderr, flush=True)


def stats(aws):
    with urllib.request.urlopen(f"{aws.endpoint}/moto-api/bench/stats", timeout=10) as r:
        return json.load(r)


def request_kinds(aws, since):
    """The kinds of the requests the endpoint served from the `since`-th on."""
    with urllib.request.urlopen(f"{aws.endpoint}/moto-api/bench/requests?from={since}", timeout=10) as r:
        return json.load(r)["requests"]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(value):
    return f"{value:.1f} ms"


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


class Report:
    """The sections of the report, and the rows of its summary table (measure | each build | floor)."""

    def __init__(self, builds):
        self.columns = [b.name for b in builds] + [FLOOR]
        self.summary = []  # (measure, {column: text})
        self.sections = []

    def row(self, measure, **values):
        self.summary.append((measure, values))

    def section(self, text):
        self.sections.append(text)

    def summary_table(self):
        lines = ["| measure | " + " | ".join(self.columns) + " |",
                 "| --- |" + " ---: |" * len(self.columns)]
        for measure, values in self.summary:
            lines.append(f"| {measure} | " + " | ".join(values.get(c, "-") for c in self.columns) + " |")
        return "\n".join(lines) + "\n"


class Scale:
    def __init__(self, n, build, due_fraction=0.1):
        self.n = n
        self.build = build
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
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write("orgId\n" + "\n".join(self.orgs) + "\n")
        log(f"  enrolling {self.n} orgs")
        started = time.perf_counter()
        subprocess.run([self.build.cli(), "enroll", "--csv", f.name, "--concurrency", "16"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        self.enroll_seconds = time.perf_counter() - started
        os.unlink(f.name)
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
        seconds, rss, out = measure_in_child([self.build.cli(), "sweep", "--at", at.isoformat()], env)
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


def bench_scale(sizes, builds, report):
    rows = []
    for n in sizes:
        scales = []
        try:
            for build in builds:
                log(f"sweep scale: {n} orgs, {build.name}")
                scales.append(Scale(n, build))
                scales[-1].setup()
            # Each run for every build in turn, so that a change of the machine's load falls on all builds.
            # Every 8 days the same orgs are due again (a 7-day interval); the later runs also delete
            # each previous key to make room (one more call per rotation than the baseline).
            base, ours, full = {}, {}, {}
            for scale in scales:
                base[scale] = scale.sweep(scale.now, 1, full_check=True)
                log(f"  {scale.build.name}, baseline (sequential, full check): {base[scale]['seconds']:.2f} s")
            for scale in scales:
                typical_at = scale.now + timedelta(days=8)
                scale.mark_fully_checked(typical_at)
                ours[scale] = scale.sweep(typical_at, 8, full_check=False)
                log(f"  {scale.build.name}, sweep (concurrency 8): {ours[scale]['seconds']:.2f} s")
            for scale in scales:
                full[scale] = scale.sweep(scale.now + timedelta(days=16), 8, full_check=True)
                log(f"  {scale.build.name}, the day's full check (concurrency 8): {full[scale]['seconds']:.2f} s")
            floor = scales[-1].floor()  # the same for every build: measured once per size
            log(f"  floor: {floor[0]} requests in {floor[1]:.2f} s")
        finally:
            for scale in scales:
                scale.close()
        rows += [(n, sc.build, len(sc.due), sc.enroll_seconds, ours[sc], full[sc], base[sc], floor) for sc in scales]
    lines = ["### Sweep scale (10% of orgs due for rotation)\n",
             "| orgs | build | due | sweep | requests/org | peak RSS | floor (min. requests) | sweep/floor "
             "| day's full check | baseline: sequential, full check | baseline/sweep | enroll (CLI, 16 at once) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, build, due, enroll_s, ours, full, base, (count, floor) in rows:
        lines.append(
            f"| {n} | {build.name} | {due} | {ours['seconds']:.2f} s | {ours['requests'] / n:.2f} "
            f"| {ours['rss_mib']:.1f} MiB | {floor:.2f} s ({count} req) | {ours['seconds'] / floor:.1f}x "
            f"| {full['seconds']:.2f} s ({full['requests'] / n:.2f} req/org, {full['rss_mib']:.1f} MiB) "
            f"| {base['seconds']:.2f} s ({base['requests'] / n:.2f} req/org, {base['rss_mib']:.1f} MiB) "
            f"| {base['seconds'] / ours['seconds']:.1f}x | {enroll_s:.1f} s |")
    report.section("\n".join(lines) + "\n")
    for n in sizes:
        of_n = [r for r in rows if r[0] == n]
        count, floor = of_n[0][7]
        due = of_n[0][2]
        report.row(f"sweep, {n} orgs ({due} due): typical run, 8 at once",
                   **{b.name: f"{o['seconds']:.2f} s" for _, b, _, _, o, _, _, _ in of_n},
                   floor=f"{floor:.2f} s")
        report.row(f"sweep, {n} orgs: AWS requests per org",
                   **{b.name: f"{o['requests'] / n:.2f}" for _, b, _, _, o, _, _, _ in of_n},
                   floor=f"{count / n:.2f}")
        report.row(f"sweep, {n} orgs: the day's full check, 8 at once",
                   **{b.name: f"{f['seconds']:.2f} s ({f['requests'] / n:.2f} req/org)"
                      for _, b, _, _, _, f, _, _ in of_n})
        report.row(f"sweep, {n} orgs: baseline, sequential full check",
                   **{b.name: f"{s['seconds']:.2f} s ({s['requests'] / n:.2f} req/org)"
                      for _, b, _, _, _, _, s, _ in of_n})
        report.row(f"sweep, {n} orgs: peak RSS",
                   **{b.name: f"{o['rss_mib']:.1f} MiB" for _, b, _, _, o, _, _, _ in of_n})


class Calls:
    """Timings and requests of a series of sequential calls on one local endpoint."""

    def __init__(self, aws):
        self.aws = aws
        self.total, self.in_aws, self.requests, self.kinds = [], [], [], []

    def measure(self, call):
        before = stats(self.aws)
        started = time.perf_counter()
        call()
        elapsed = time.perf_counter() - started
        after = stats(self.aws)
        self.total.append(elapsed * 1000)
        self.in_aws.append((after["busySeconds"] - before["busySeconds"]) * 1000)
        self.requests.append(after["requests"] - before["requests"])
        self.kinds.append(tuple(request_kinds(self.aws, before["requests"])[:self.requests[-1]]))

    def rest(self):
        return [t - a for t, a in zip(self.total, self.in_aws)]

    def sequence(self):
        """The most common sequence of request kinds, and how many calls made it."""
        return collections.Counter(self.kinds).most_common(1)[0]

    def variants(self):
        """How the other calls' requests differ from the most common sequence: ["3 calls: 13 requests, +1 `kind`"]."""
        common = collections.Counter(self.sequence()[0])
        lines = []
        for kinds, calls in collections.Counter(self.kinds).most_common()[1:]:
            counts = collections.Counter(kinds)
            changes = [f"{counts[k] - common[k]:+d} `{k}`" for k in merge_in_order([self.sequence()[0], kinds])
                       if counts[k] != common[k]]
            order = "" if changes else ", in another order"
            lines.append(f"{calls} call{'s' if calls > 1 else ''}: {len(kinds)} requests{order}, " + ", ".join(changes))
        return lines


def steady_state_keys(aws, org):
    keys = aws.client("iam").list_access_keys(UserName=f"org-{org}")["AccessKeyMetadata"]
    return sorted(k["Status"] for k in keys)


class Rotations:
    """An org on a local endpoint of its own, and `rotate()`, one rotation of it; in the steady state
    (a current and a previous key) once `warm_up()` has run."""

    def __init__(self, build):
        self.aws = LocalAws.start()
        self.gateway = None
        self.env = self.aws.provision([ORG])
        self.env["RUST_LOG"] = "warn"
        subprocess.run([build.cli(), "enroll", "--org", ORG], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def warm_up(self):
        self.rotate()  # the first key (and the first call's own costs: the function's cold start)
        self.between()
        self.rotate()  # a second key: the first one is now the previous key
        self.between()

    def between(self):
        """What happens between two rotations of an org (outside the measured calls)."""

    def check_steady_state(self):
        keys = steady_state_keys(self.aws, ORG)
        assert keys == ["Active", "Inactive"], f"not the steady state (a current and a previous key): {keys}"

    def close(self):
        if self.gateway is not None:
            self.gateway.close()
        self.aws.stop()


class RotateKey(Rotations):
    """rotate-key through the API Gateway stand-in and a Lambda Runtime API."""

    def __init__(self, build, calls):
        super().__init__(build)
        deployment = Deployment({"RegistryBucket": REGISTRY_BUCKET, "ManagedBucketName": MANAGED_BUCKET,
                                 "JwtIssuer": ISSUER, "JwtAudience": AUDIENCE, "RotationsPerHour": calls + 10})
        self.gateway = Gateway(deployment, self.env, SECRET, tempfile.mkdtemp(prefix="bench-logs-"),
                               credentials=self.aws.function_credentials(self.env, deployment.parameters),
                               binary_dir=build.binaries)
        self.bearer = token(SECRET, ISSUER, AUDIENCE, org=ORG)
        self.cli = build.cli()
        self.sweep_env = dict(self.env)
        self.sweep_env.update(next(f.environment for f in deployment.functions.values()
                                   if f.binary == "scheduled-rotation"))

    def between(self):
        """The scheduled sweep, as it runs between two rotations of an org (rate limit: ROTATIONS_PER_HOUR,
        default 5; schedule: hourly): it does what was left to it, e.g. copying the audit entries a
        rotation queued in the org's record to the audit trail, which the next rotation would otherwise
        write itself once the record's queue is full."""
        done = subprocess.run([self.cli, "sweep"], env=self.sweep_env, check=True, capture_output=True, text=True)
        summary = json.loads(done.stdout)
        assert not summary["failed"] and not summary["rotated"], summary

    def rotate(self):
        request = urllib.request.Request(f"{self.gateway.url}/iam/rotate-key", method="POST",
                                         headers={"Authorization": f"Bearer {self.bearer}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
            r.read()


class FloorRotation(Rotations):
    """The simplest rotation that is still one (IAM only), by a bare boto3 client with the functions' key."""

    def __init__(self, build):
        super().__init__(build)
        self.iam = self.aws.client("iam", (self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"]))

    def rotate(self):
        user = f"org-{ORG}"
        keys = self.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        for key in keys:
            if key["Status"] == "Inactive":  # the previous key: room for the new one (2 keys per user)
                self.iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        self.iam.create_access_key(UserName=user)
        for key in keys:
            if key["Status"] == "Active":  # the current key becomes the previous one
                self.iam.update_access_key(UserName=user, AccessKeyId=key["AccessKeyId"], Status="Inactive")


def merge_in_order(sequences):
    """The kinds of all sequences, each once, in an order that keeps each sequence's order of first use."""
    merged = []
    for sequence in sequences:
        after = -1
        for kind in dict.fromkeys(sequence):
            if kind in merged:
                after = max(after, merged.index(kind))
            else:
                merged.insert(after + 1, kind)
                after += 1
    return merged


def bench_latency(calls, builds, report):
    columns = [b.name for b in builds] + [FLOOR]
    log(f"rotation latency: {calls} rotate-key calls of each build through the Runtime API, "
        f"and {calls} IAM-only rotations by a bare boto3 client (the floor), in turn")
    clients = {}
    try:
        for build in builds:
            clients[build.name] = RotateKey(build, calls)
        clients[FLOOR] = FloorRotation(builds[-1])
        for client in clients.values():
            client.warm_up()
        measured = {name: Calls(client.aws) for name, client in clients.items()}
        for _ in range(calls):  # one call of each in turn: a change of the machine's load falls on all
            for name, client in clients.items():
                client.check_steady_state()
                measured[name].measure(client.rotate)
                client.between()
    finally:
        for client in clients.values():
            client.close()

    sequences = {name: m.sequence() for name, m in measured.items()}
    lines = [f"### AWS requests of one steady-state rotate-key call, by kind (in the order of first use)\n",
             "| request | " + " | ".join(columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    counts = {name: collections.Counter(seq) for name, (seq, _) in sequences.items()}
    for kind in merge_in_order(seq for seq, _ in sequences.values()):
        lines.append(f"| `{kind}` | " + " | ".join(str(counts[c][kind] or "") for c in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{len(sequences[c][0])}**" for c in columns) + " |")
    lines.append("\nThe sequence of " + ", ".join(f"{c}: {sequences[c][1]} of {calls} calls" for c in columns) + ".")
    for name in columns:
        for variant in measured[name].variants():
            lines.append(f"- {name}, {variant}".rstrip(", "))
    lines.append("")
    report.section("\n".join(lines))

    lines = [f"### Rotation latency ({calls} steady-state rotate-key calls, one at a time; builds: HTTP → stand-in → "
             "Runtime API → function; floor: boto3 → endpoint)\n",
             "| | whole call p50 | p99 | mean | AWS (endpoint busy) p50 | p99 | the rest p50 | p99 "
             "| AWS requests per call |",
             "| --- |" + " ---: |" * 8]
    for name in columns:
        m = measured[name]
        rest = m.rest()
        lines.append(f"| {name} | {ms(percentile(m.total, 50))} | {ms(percentile(m.total, 99))} "
                     f"| {ms(statistics.mean(m.total))} | {ms(percentile(m.in_aws, 50))} "
                     f"| {ms(percentile(m.in_aws, 99))} | {ms(percentile(rest, 50))} | {ms(percentile(rest, 99))} "
                     f"| {statistics.median(m.requests):.0f} |")
    lines.append("\nThe rest: our code, the SDK, the runtime and the stand-in (the floor: boto3).\n")
    report.section("\n".join(lines))

    report.row("AWS requests per steady-state rotate-key call (median)",
               **{c: f"{statistics.median(measured[c].requests):.0f}" for c in columns})
    report.row("rotate-key latency p50 (whole call)", **{c: ms(percentile(measured[c].total, 50)) for c in columns})
    report.row("rotate-key latency p99 (whole call)", **{c: ms(percentile(measured[c].total, 99)) for c in columns})
    report.row("of which AWS (endpoint busy), p50", **{c: ms(percentile(measured[c].in_aws, 50)) for c in columns})


def bench_cold_start(runs, builds, report):
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
    log(f"cold start: {runs} starts of each function of each build, in turn")
    rows = [(binary, build, [], []) for binary in FUNCTIONS for build in builds]
    for _ in range(runs):
        for binary, build, init_ms, first_ms in rows:
            function = Function(binary, binary, {}, 256, 30, "JSON")
            api = RuntimeApi(function, env, build.binaries, os.devnull)
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
    lines = [f"### Cold start (x86_64 binaries, {runs} starts each, median)\n",
             "| function | build | process start → asks for its first event | → first event answered |",
             "| --- | --- | ---: | ---: |"]
    for binary, build, init_ms, first_ms in rows:
        first = ms(statistics.median(first_ms)) if first_ms else "(needs AWS: not measured)"
        lines.append(f"| {binary} | {build.name} | {ms(statistics.median(init_ms))} | {first} |")
    report.section("\n".join(lines) + "\n")
    report.row("rotate-key cold start: process start → first event answered (median)",
               **{b.name: ms(statistics.median(f)) for binary, b, _, f in rows if binary == "rotate-key"})


def sizes(builds, report):
    built = {}
    if SAM_BUILD.exists():
        for fn in SAM_BUILD.iterdir():
            if (fn / "bootstrap").exists():
                built[fn.name] = (fn / "bootstrap").stat().st_size
    logical = {"rotate-key": "RotateKeyFunction", "rotation-policy": "RotationPolicyFunction",
               "scheduled-rotation": "ScheduledRotationFunction"}
    lines = ["### Binary sizes (stripped in release builds)\n",
             "| binary | " + " | ".join(f"x86_64, {b.name}" for b in builds) + " | arm64 bootstrap (sam build) |",
             "| --- |" + " ---: |" * (len(builds) + 1)]
    for binary in FUNCTIONS + ["s3-key-rotation"]:
        x86 = " | ".join(f"{(b.binaries / binary).stat().st_size / 2**20:.1f} MiB" for b in builds)
        arm = built.get(logical.get(binary, ""))
        lines.append(f"| {binary} | {x86} | {f'{arm / 2**20:.1f} MiB' if arm else '-'} |")
    report.section("\n".join(lines) + "\n")
    report.row("rotate-key binary size (x86_64)",
               **{b.name: f"{(b.binaries / 'rotate-key').stat().st_size / 2**20:.1f} MiB" for b in builds})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", nargs=2, action="append", metavar=("NAME", "DIR"),
                        help="a build to measure: its name and the folder of its binaries (repeat to compare; "
                             "default: BENCH_BINARIES or target/release)")
    parser.add_argument("--sizes", default="100,1000,5000", help="org counts of the sweep benchmark")
    parser.add_argument("--calls", type=int, default=200, help="rotate-key calls of the latency benchmark")
    parser.add_argument("--starts", type=int, default=20, help="cold starts per function")
    parser.add_argument("--only", choices=["scale", "latency", "cold", "sizes"])
    args = parser.parse_args()
    builds = [Build.at(name, directory) for name, directory in (args.build or [("build", RELEASE)])]
    if len({b.name for b in builds} | {FLOOR}) != len(builds) + 1:
        parser.error(f"the builds need distinct names, other than {FLOOR!r}")
    report = Report(builds)
    started_at = datetime.now(timezone.utc)
    if args.only in (None, "latency"):
        bench_latency(args.calls, builds, report)
    if args.only in (None, "scale"):
        bench_scale([int(n) for n in args.sizes.split(",")], builds, report)
    if args.only in (None, "cold"):
        bench_cold_start(args.starts, builds, report)
    if args.only in (None, "sizes"):
        sizes(builds, report)
    print(f"## s3-key-rotation benchmarks, {started_at:%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs, local AWS endpoint (moto)\n")
    for build in builds:
        print(f"- {build.name}: {build.description}")
    print(f"- {FLOOR}: the least the work needs on the same endpoint — rotate-key: a bare boto3 client's IAM-only "
          "rotation (ListAccessKeys, DeleteAccessKey, CreateAccessKey, UpdateAccessKey), one at a time; "
          "sweep: the endpoint serving the sweep's minimum requests to a bare HTTP client\n")
    print(report.summary_table())
    for section in report.sections:
        print(section)


if __name__ == "__main__":
    main()
