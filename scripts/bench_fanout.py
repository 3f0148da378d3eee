"""Benchmark of the fanned-out sweep (scheduled-rotation as dispatcher, sweep-worker per slice) on the local stack.

What it sets up (scripts/local_aws.py, one moto endpoint):
- N member accounts (111111111111, 222222222222, ...), each with the role of
  member-account.yaml (`s3-key-rotation-member`, trusting the home account with
  an external id), created through the always-assumable
  OrganizationAccountAccessRole; the sweep's queue with a dead-letter queue
  (redrive after 3 receives), as template.yaml declares them;
- ORGS orgs spread evenly over the member accounts. One is enrolled by the CLI
  (`s3-key-rotation enroll`, MEMBER_ACCOUNT_ROLES set): its registry record is
  the template of the others, which are written directly (record, placement
  marker, placement.json; each IAM user with its tag and read-only policy
  created in its account through the member role), in a thread pool. A
  fraction `--due` of them has a current key (in its account) created 10 days
  ago under a 7-day automatic policy: due for rotation.

What it measures, for three runs of the schedule (each: the dispatcher, then
the workers on every slice):
1. the day's first run: full check (every org's IAM keys listed) and the due
   orgs rotated;
2. an hourly run later that day: nothing due (one record read per org);
3. the next day's first run: a full check with nothing due.
- dispatch: `scheduled-rotation` with SWEEP_QUEUE_URL set, under a Lambda
  Runtime API (scripts/gateway.py), invoked (warm) with
  events/scheduled-event.json at the run's time: wall time, the manifest's
  dispatchMs, slices, the AWS requests it made (by kind), the SQS bodies' size;
- workers: the queue's messages received one at a time (BatchSize 1, as the
  event source mapping) and handed to `sweep-worker` as SQS events, `--workers`
  sandboxes at once; a message not in batchItemFailures is deleted. Per slice:
  wall time (min/median/max); per run: AWS requests per org (the endpoint's
  counts, without the SQS calls of this driver), by kind, peak memory of each
  worker process (VmHWM); and the checks: every slice complete in one delivery,
  orgsSeen == ORGS, rotated == the due orgs, nothing failed, the queues empty,
  the new keys in the users' accounts.

Then it projects a deployment of 100,000 orgs over 20 member accounts at real
AWS latency (per-request latencies assumed per service, printed with the
results) from the measured request mix per idle, full-checked and rotated org:
time of a 1,000-org slice (the worker's SWEEP_CONCURRENCY of 8 orgs at once,
a free place taking the next org at once) against Lambda's 15
minutes, worker-seconds per run and the worker concurrency that finishes a run
within one schedule period; and the dispatcher's time for 100,000 orgs.

The local numbers are the binaries' and moto's on this machine (moto serves
one request at a time per core, in Python): they compare runs and builds, they
are not AWS's. Prints the report (Markdown) on stdout, progress on stderr.
"""
import argparse
import collections
import concurrent.futures
import hashlib
import heapq
import json
import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
from botocore.config import Config

from bench import Build, iso, log, percentile, request_kinds, stats
from gateway import ACCOUNT_ID, Function, RuntimeApi
from local_aws import REGION, REGISTRY_BUCKET, ROOT, LocalAws
from sqs_delivery import EventSourceMapping, sqs_event

MEMBER_ROLE = "s3-key-rotation-member"
ENROLLMENT_ROLE = "s3-key-rotation-enrollment"  # member-account.yaml's EnrollmentRoleName
EXTERNAL_ID = "bench-fanout-external-id"
USER_PATH = "/managed-s3/"
USER_POLICY = "s3-key-rotation-read-own-prefix"  # src/aws/iam.rs POLICY_NAME
WORKER_TIMEOUT = 900  # template.yaml: SweepWorkerFunction and ScheduledRotationFunction
WORKER_MEMORY = 512
SWEEP_CONCURRENCY = 8  # the default (config/sweep.rs), as deployed

# The projection: a deployment of PROJECTED_ORGS orgs over PROJECTED_ACCOUNTS member accounts.
PROJECTED_ORGS = 100_000
PROJECTED_ACCOUNTS = 20
PROJECTED_SLICE = 1000
SCHEDULE_PERIOD_S = 3600  # ScheduleRate's default, rate(1 hour)
DEFAULT_WORKERS = 10  # SweepWorkerConcurrency's default (template.yaml)
LAMBDA_LIMIT_S = 900
DEADLINE_MARGIN_S = 20  # DEADLINE_MARGIN's default: no org starts later than this before the deadline
# Assumed latency of one request at real AWS (same region, warm connections), in ms.
LATENCY_MS = {
    "S3 read": 20,  # GetObject / HeadObject of a small object
    "S3 write": 40,  # PutObject (conditional too), DeleteObject
    "S3 list": 100,  # ListObjectsV2, a page of up to 1,000 keys (a key's one-item page: as a read)
    "IAM": 80,  # a global control-plane API, slower than the data planes
    "STS": 100,  # AssumeRole
    "SecretsManager": 40,
    "EventBridge": 30,
    "SQS": 20,
}
# A new IAM key works everywhere only after a few seconds (eventual consistency): the rotation's
# verification (src/aws/verifier.rs) retries its listing with backoff 250 ms, 500 ms, 1 s, 2 s, 4 s, 4 s...
PROPAGATION_S = (2.0, 5.0)  # assumed: seconds until a new key works
IAM_MUTATING_TPS = 20  # the order of IAM's default throttling of mutating calls, per account


def member_accounts(n):
    if not 1 <= n <= 99:
        raise ValueError("--accounts: 1 to 99")
    return [str(i) * 12 if i < 10 else f"{i:02d}" * 6 for i in range(1, n + 1)]


def boto(aws, service, credentials=None, pool=32):
    credentials = credentials or {"AccessKeyId": "test", "SecretAccessKey": "test"}
    return boto3.client(service, endpoint_url=aws.endpoint, region_name=REGION,
                        aws_access_key_id=credentials["AccessKeyId"],
                        aws_secret_access_key=credentials["SecretAccessKey"],
                        aws_session_token=credentials.get("SessionToken"),
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=pool, read_timeout=120,
                                      retries={"total_max_attempts": 3, "mode": "standard"}))


def vm_hwm_mib(pid):
    """The peak resident memory of a live process (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def kind_class(kind):
    """The latency class of a request kind as scripts/moto_server.py names it ("S3 GetObject registry/orgs/…")."""
    service, _, rest = kind.partition(" ")
    if service != "S3":
        return service
    operation = rest.split(" ")[0]
    if operation.startswith("List"):
        return "S3 list"
    if operation.startswith(("Get", "Head")):
        return "S3 read"
    return "S3 write"


def latency_of(mix):
    """Sum of the assumed latencies of a request mix ({kind: count}), in ms (requests one after another)."""
    return sum(LATENCY_MS[kind_class(k)] * n for k, n in mix.items())


def per_slice_kind(kind):
    """The worker's requests that are per slice, not per org: the slice's state. (STS is counted with the
    orgs: once per delivery and worker process, plus what the rotations cause, see the report.)"""
    return "registry/sweep/" in kind


def unordered_seconds(durations, width):
    """Time for a `futures::stream::iter(..).buffer_unordered(width)` over tasks of these durations (s):
    at most `width` tasks at once, a free place taking the next task at once."""
    running = []
    t = 0.0
    for d in durations:
        if len(running) == width:
            t = heapq.heappop(running)
        heapq.heappush(running, t + d)
    return max(running, default=t)


def verify_wait_s(propagation_s, attempt_s):
    """When src/aws/verifier.rs's listing first succeeds for a key that works after `propagation_s`."""
    t, wait = 0.0, 0.25
    while t < propagation_s:
        t += attempt_s + wait
        wait = min(wait * 2, 4.0)
    return t + attempt_s


def scale_mix(mix, factor):
    return {k: n * factor for k, n in mix.items()}


def add_mix(*mixes):
    total = collections.Counter()
    for mix in mixes:
        for k, n in mix.items():
            total[k] += n
    return dict(total)


class Stack:
    """The local stack of the benchmark: member accounts, queues, the seeded orgs."""

    def __init__(self, n, accounts, due_fraction, slice_size, build, log_dir):
        self.n = n
        self.build = build
        self.accounts = member_accounts(accounts)
        self.slice_size = slice_size
        self.orgs = [str(1000000 + i) for i in range(n)]
        # Every step-th org of each account is due (org i is placed in account i % accounts), so that every
        # slice has its share of due orgs, evenly spaced.
        step = max(1, round(1 / due_fraction)) if due_fraction > 0 else 0
        self.due = {org for i, org in enumerate(self.orgs) if step and (i // accounts) % step == 0}
        self.log_dir = Path(log_dir)

    def setup(self):
        self.aws = LocalAws.start()
        env = self.aws.provision([])
        env.update({
            "MEMBER_ACCOUNT_ROLES": ",".join(f"arn:aws:iam::{a}:role/{MEMBER_ROLE}" for a in self.accounts),
            "MEMBER_ROLE_EXTERNAL_ID": EXTERNAL_ID,
            "SWEEP_SLICE_SIZE": str(self.slice_size),
            "SWEEP_CONCURRENCY": str(SWEEP_CONCURRENCY),
            "ORGS_PER_ACCOUNT": str(max(4500, math.ceil(self.n / len(self.accounts)))),
            "IAM_USER_PATH": USER_PATH,
            "RUST_LOG": "info",
        })
        self.env = env
        self.home_s3 = boto(self.aws, "s3")
        self.sqs = boto(self.aws, "sqs")
        self._member_roles()
        self._queues()
        started = time.perf_counter()
        self._seed()
        self.seed_seconds = time.perf_counter() - started

    def _member_roles(self):
        """member-account.yaml in each member account (scripts/local_aws.py deploys it through
        OrganizationAccountAccessRole, as the operator)."""
        operator = (self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"])
        sts = boto(self.aws, "sts", {"AccessKeyId": operator[0], "SecretAccessKey": operator[1]})
        self.member_iam = {}
        for account in self.accounts:
            self.aws.deploy_member_account(account, operator, external_id=EXTERNAL_ID)
            # The seeding creates the org users through the enrollment role, as `enroll` does.
            member = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ENROLLMENT_ROLE}",
                                     RoleSessionName="bench-fanout-seed", ExternalId=EXTERNAL_ID)["Credentials"]
            self.member_iam[account] = boto(self.aws, "iam", member)

    def _queues(self):
        """SweepQueue and SweepDeadLetterQueue of template.yaml."""
        dlq = self.sqs.create_queue(QueueName="sweep-dead-letters",
                                    Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
        self.dlq_url = dlq
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue_url = self.sqs.create_queue(QueueName="sweep", Attributes={
            "VisibilityTimeout": "5400", "MessageRetentionPeriod": "345600",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})})["QueueUrl"]
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def _seed(self):
        first = self.orgs[0]
        log(f"  enrolling {first} with the CLI (the template of the records)")
        subprocess.run([self.build.cli(), "enroll", "--org", first], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        template = json.loads(self.home_s3.get_object(Bucket=REGISTRY_BUCKET, Key=f"orgs/{first}.json")["Body"].read())
        assert template["accountId"] in self.accounts and template["orgId"] == first, template
        self.account_of = {first: template["accountId"]}
        rest = [a for a in self.accounts if a != template["accountId"]]
        order = [template["accountId"]] + rest
        for i, org in enumerate(self.orgs[1:], start=1):
            self.account_of[org] = order[i % len(order)]
        created = datetime.now(timezone.utc) - timedelta(days=10)
        self.due_created = created
        bucket = template["bucket"]
        prefix_of = lambda org: template["prefix"].replace(first, org)  # noqa: E731 (ORG_PREFIX_TEMPLATE's {orgId})

        def record(org, key_id):
            r = dict(template, orgId=org, keyId=template["keyId"].replace(first, org),
                     iamUser=template["iamUser"].replace(first, org), accountId=self.account_of[org],
                     prefix=prefix_of(org))
            if key_id is not None:
                r["current"] = {"version": 1, "accessKeyId": key_id, "createdAt": iso(created)}
                r["policy"] = {"automatic": True, "interval": "7d", "lastRotationAt": iso(created),
                               "nextRotationAt": iso(created + timedelta(days=7))}
            text = json.dumps(r, indent=2)
            assert first not in text or org == first, f"the template has another field naming its org: {text}"
            return text

        def seed(org):
            iam = self.member_iam[self.account_of[org]]
            user = f"org-{org}"
            if org != first:
                iam.create_user(UserName=user, Path=USER_PATH, PermissionsBoundary=f"arn:aws:iam::{self.account_of[org]}:policy/s3-key-rotation-org-user-boundary", Tags=[{"Key": "s3-key-rotation:org", "Value": org}])
                iam.put_user_policy(UserName=user, PolicyName=USER_POLICY, PolicyDocument=json.dumps({
                    "Version": "2012-10-17", "Statement": [
                        {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
                         "Resource": f"arn:aws:s3:::{bucket}",
                         "Condition": {"StringLike": {"s3:prefix": [prefix_of(org), f"{prefix_of(org)}*"]}}},
                        {"Sid": "ReadOwnObjects", "Effect": "Allow", "Action": "s3:GetObject",
                         "Resource": f"arn:aws:s3:::{bucket}/{prefix_of(org)}*"}]}))
            key_id = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"] if org in self.due else None
            if org != first or key_id is not None:
                self.home_s3.put_object(Bucket=REGISTRY_BUCKET, Key=f"orgs/{org}.json", Body=record(org, key_id).encode())
            if org != first:
                self.home_s3.put_object(Bucket=REGISTRY_BUCKET, Key=f"placement/{self.account_of[org]}/{org}", Body=b"")

        log(f"  seeding {self.n - 1} more orgs over {len(self.accounts)} member accounts ({len(self.due)} due)")
        started = time.perf_counter()
        done = 0
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for _ in pool.map(seed, self.orgs, chunksize=64):
                done += 1
                if done % max(1, self.n // 10) == 0:
                    rate = done / (time.perf_counter() - started)
                    log(f"    {done}/{self.n} orgs ({rate:.0f}/s)")
        counts = collections.Counter(self.account_of.values())
        self.home_s3.put_object(Bucket=REGISTRY_BUCKET, Key="placement.json",
                                Body=json.dumps({"accounts": dict(sorted(counts.items()))}, indent=2).encode())

    def state(self, name):
        return json.loads(self.home_s3.get_object(Bucket=REGISTRY_BUCKET, Key=f"sweep/{name}")["Body"].read())

    def probe_full_check(self, at):
        """Whether the dispatcher would make the run at `at` a full check: a dry run dispatched (it changes
        no state but its own manifest), its messages purged."""
        function = Function("ScheduledRotationFunction", "scheduled-rotation", {}, WORKER_MEMORY, WORKER_TIMEOUT,
                            "JSON")
        api = RuntimeApi(function, dict(self.env, SWEEP_QUEUE_URL=self.queue_url), self.build.binaries,
                         self.log_dir / "scheduled-rotation.log")
        with open(ROOT / "events" / "scheduled-event-dry-run.json") as f:
            event = json.load(f)
        event.update(time=iso(at), id=str(uuid.uuid4()))
        try:
            manifest = api.invoke(event)
        finally:
            api.close()
        assert manifest["dryRun"], manifest
        self.sqs.purge_queue(QueueUrl=self.queue_url)
        return manifest["fullCheck"]

    def unreadable_results(self):
        """The distinct errors the dispatcher logged for slice results it could not read."""
        errors = []
        path = self.log_dir / "scheduled-rotation.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if "a slice result is not valid" in line:
                try:
                    error = json.loads(line)["fields"]["error"]
                except (ValueError, KeyError):
                    error = line[:300]
                error = error.split(" at line ")[0]
                if error not in errors:
                    errors.append(error)
        return errors

    def mark_fully_checked(self, run):
        """What the dispatcher records once a full-check run finished every slice (src/core/fanout.rs)."""
        state = {"latestRun": run.manifest["runId"], "fullyCheckedOn": run.at.strftime("%Y-%m-%d")}
        self.home_s3.put_object(Bucket=REGISTRY_BUCKET, Key="sweep/fanout.json", Body=json.dumps(state).encode())

    def queue_depth(self, url):
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in attributes["Attributes"].values())

    def close(self):
        self.aws.stop()


class Run:
    """One run of the schedule at `at`: the dispatch, then every slice by the workers."""

    def __init__(self, stack, name, at, workers, expect_rotated, expect_full_check):
        self.stack, self.name, self.at, self.workers = stack, name, at, workers
        self.expect_rotated, self.expect_full_check = expect_rotated, expect_full_check

    def dispatch(self):
        stack = self.stack
        env = dict(stack.env, SWEEP_QUEUE_URL=stack.queue_url)
        function = Function("ScheduledRotationFunction", "scheduled-rotation", {}, WORKER_MEMORY, WORKER_TIMEOUT,
                            "JSON")
        api = RuntimeApi(function, env, stack.build.binaries, stack.log_dir / "scheduled-rotation.log")
        with open(ROOT / "events" / "scheduled-event.json") as f:
            event = json.load(f)
        event.update(time=iso(self.at), id=str(uuid.uuid4()))
        try:
            api.warm()
            before = stats(stack.aws)
            started = time.perf_counter()
            manifest = api.invoke(event)
            self.dispatch_wall = time.perf_counter() - started
            after = stats(stack.aws)
        finally:
            api.close()
        self.dispatch_requests = after["requests"] - before["requests"]
        self.dispatch_kinds = collections.Counter(request_kinds(stack.aws, before["requests"])[:self.dispatch_requests])
        self.manifest = manifest
        stored = stack.state(f"runs/{manifest['runId']}/manifest.json")
        assert stored == manifest, (stored, manifest)
        assert manifest["orgs"] == stack.n, manifest
        assert manifest["fullCheck"] == self.expect_full_check, manifest
        assert sum(s["orgs"] for s in manifest["slices"]) == stack.n, manifest
        log(f"  {self.name}: dispatched {len(manifest['slices'])} slices in {self.dispatch_wall:.2f} s "
            f"(dispatchMs {manifest['dispatchMs']}, {self.dispatch_requests} requests)")

    def sweep(self):
        stack = self.stack
        expected = len(self.manifest["slices"])
        function = Function("SweepWorkerFunction", "sweep-worker", {}, WORKER_MEMORY, WORKER_TIMEOUT, "JSON")
        api = RuntimeApi(function, stack.env, stack.build.binaries, stack.log_dir / "sweep-worker.log",
                         concurrency=self.workers, queue_timeout=WORKER_TIMEOUT)
        lock = threading.Lock()
        self.slices = []  # (index, account, orgs, wall s, body bytes)
        self.bodies = {}  # index -> the message body
        self.failures = []
        handled = [0]
        # Lambda's event source mapping (BatchSize 1, ReportBatchItemFailures), for every sandbox.
        mapping = EventSourceMapping(boto(stack.aws, "sqs"), stack.queue_url, region=REGION)

        def worker():
            idle_since = time.time()
            while True:
                with lock:
                    if handled[0] >= expected:
                        return
                message = mapping.receive(wait_seconds=1, visibility=WORKER_TIMEOUT)
                if message is None:
                    if time.time() - idle_since > 30:
                        return  # the others are still sweeping, or a message is lost: the checks say which
                    continue
                idle_since = time.time()
                body = json.loads(message["Body"])
                started = time.perf_counter()
                # Deleted unless the answer lists it, or the function failed (the whole batch comes back).
                answer, deleted = mapping.deliver(message, api.invoke)
                wall = time.perf_counter() - started
                if not deleted:
                    with lock:
                        self.failures.append((body.get("index"),
                                              answer if isinstance(answer, dict) else {"error": str(answer)}))
                with lock:
                    handled[0] += 1
                    self.slices.append((body["index"], body.get("account"), len(body["orgs"]), wall,
                                        len(message["Body"].encode())))
                    self.bodies[body["index"]] = message["Body"]

        try:
            api.warm()
            before = stats(stack.aws)
            started = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(self.workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.sweep_wall = time.perf_counter() - started
            after = stats(stack.aws)
            self.memory_mib = [vm_hwm_mib(p.pid) for p in api.processes() if p.poll() is None]
            self.most_running = api.most_running
        finally:
            api.close()
        kinds = request_kinds(stack.aws, before["requests"])[:after["requests"] - before["requests"]]
        self.kinds = collections.Counter(k for k in kinds if not k.startswith("SQS "))  # not the driver's
        self.requests = sum(self.kinds.values())
        self._check()
        log(f"  {self.name}: {len(self.slices)} slices swept in {self.sweep_wall:.1f} s by {self.workers} sandboxes, "
            f"{self.requests / stack.n:.2f} requests/org, rotated {self.rotated}")

    def _check(self):
        stack = self.stack
        run = self.manifest["runId"]
        assert not self.failures, f"{self.name}: slices failed: {self.failures[:3]}"
        assert sorted(s[0] for s in self.slices) == [s["index"] for s in self.manifest["slices"]], \
            f"{self.name}: not every slice was delivered: {sorted(s[0] for s in self.slices)}"
        self.results = [stack.state(f"runs/{run}/slice-{s['index']:05d}.json") for s in self.manifest["slices"]]
        problems = [(r["index"], r.get("error"), r["deliveries"]) for r in self.results
                    if not r["complete"] or r.get("error") or r["deliveries"] != 1]
        assert not problems, f"{self.name}: slices not complete in one delivery: {problems[:5]}"
        seen = sum(r["summary"]["orgsSeen"] for r in self.results)
        rotated = [o for r in self.results for o in r["summary"]["rotated"]]
        failed = [f for r in self.results for f in r["summary"]["failed"]]
        assert seen == stack.n, f"{self.name}: orgsSeen {seen} != {stack.n}"
        assert not failed, f"{self.name}: failed orgs: {failed[:5]}"
        assert sorted(rotated) == sorted(self.expect_rotated), \
            f"{self.name}: rotated {len(rotated)} orgs, expected {len(self.expect_rotated)}"
        assert all(r["summary"]["fullCheck"] == self.expect_full_check for r in self.results)
        self.rotated = len(rotated)
        self.duration_ms = [r["summary"]["durationMs"] for r in self.results]
        assert stack.queue_depth(stack.queue_url) == 0, f"{self.name}: messages left in the queue"
        assert stack.queue_depth(stack.dlq_url) == 0, f"{self.name}: messages in the dead-letter queue"
        for org in sorted(self.expect_rotated)[:5]:  # the new keys are in the users' own accounts
            keys = stack.member_iam[stack.account_of[org]].list_access_keys(UserName=f"org-{org}")["AccessKeyMetadata"]
            assert len(keys) == 2, f"{self.name}: org {org} has {len(keys)} keys in {stack.account_of[org]}"

    def status(self):
        """The run as the operator CLI (and the next dispatch: `run_status`) reads it."""
        done = subprocess.run([self.stack.build.cli(), "sweep", "--status", "--json", "--run", self.manifest["runId"]],
                              env=self.stack.env, check=True, capture_output=True, text=True)
        status = json.loads(done.stdout)
        self.status_results = len(status["results"])
        self.status_waiting = len(status["waiting"])
        self.status_finished = not status["waiting"] and all(r["complete"] for r in status["results"])
        return self.status_finished

    def redeliver(self, index):
        """Delivers a finished slice's message once more (SQS delivers at least once): what the worker does."""
        stack = self.stack
        name = f"runs/{self.manifest['runId']}/slice-{index:05d}.json"
        before_result = stack.state(name)
        function = Function("SweepWorkerFunction", "sweep-worker", {}, WORKER_MEMORY, WORKER_TIMEOUT, "JSON")
        api = RuntimeApi(function, stack.env, stack.build.binaries, stack.log_dir / "sweep-worker.log")
        body = self.bodies[index]
        message = {"MessageId": str(uuid.uuid4()), "ReceiptHandle": uuid.uuid4().hex, "Body": body,
                   "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": str(int(time.time() * 1000)),
                                  "SenderId": ACCOUNT_ID,
                                  "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000))},
                   "MD5OfBody": hashlib.md5(body.encode()).hexdigest()}
        try:
            api.warm()
            before = stats(stack.aws)
            started = time.perf_counter()
            answer = api.invoke(sqs_event(message, stack.queue_arn, REGION))
            wall = time.perf_counter() - started
            after = stats(stack.aws)
        finally:
            api.close()
        after_result = stack.state(name)
        self.redelivery = {
            "index": index, "orgs": len(json.loads(body)["orgs"]), "requests": after["requests"] - before["requests"],
            "seconds": wall, "failed": bool(answer.get("batchItemFailures")),
            "deliveries": (before_result["deliveries"], after_result["deliveries"]),
            "rotated": (len(before_result["summary"]["rotated"]), len(after_result["summary"]["rotated"])),
        }
        log(f"  {self.name}: slice {index} delivered again: {self.redelivery}")

    def per_org_kinds(self):
        return collections.Counter({k: n for k, n in self.kinds.items() if not per_slice_kind(k)})

    def per_slice_kinds(self):
        return collections.Counter({k: n for k, n in self.kinds.items() if per_slice_kind(k)})


def run_times(now):
    """The three runs' times: the day's first run, an hourly run the same day, the next day's first run
    (before the rotated orgs' previous keys retire, 24 h after the first run)."""
    now = now.replace(microsecond=0)
    day = now.replace(hour=0, minute=0, second=0)
    first = min(max(now, day + timedelta(minutes=5)), day + timedelta(hours=23, minutes=50))
    return first, first + timedelta(minutes=2), day + timedelta(days=1, minutes=1)


def fmt_s(seconds):
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def mix_text(mix, digits=2):
    return ", ".join(f"{n:.{digits}f} `{k}`" for k, n in sorted(mix.items(), key=lambda kv: -kv[1]) if n > 0.0005)


def report(stack, runs, args, started_at, total_seconds):
    first, hourly, next_day = runs
    out = []
    p = out.append
    p(f"## s3-key-rotation fan-out benchmark, {started_at:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
      "local AWS endpoint (moto)\n")
    p(f"- binaries: {stack.build.description}")
    p(f"- {stack.n} orgs over {len(stack.accounts)} member accounts ({stack.n // len(stack.accounts)} each, "
      f"one IAM user per org in its account), {len(stack.due)} due for rotation in the first run; "
      f"slices of at most {stack.slice_size} orgs; {args.workers} worker sandboxes at once; "
      f"SWEEP_CONCURRENCY {SWEEP_CONCURRENCY}; the template's defaults otherwise (24 h grace, new keys verified)")
    p(f"- seeding (1 CLI enrollment, the rest written directly, 16 threads): {stack.seed_seconds:.0f} s; "
      f"whole benchmark {total_seconds / 60:.1f} min")
    p("- the machine is shared (another engineer's tests ran at the same time): timings are noisy, "
      "and moto (Python) is slower than AWS per request but has no network latency; read the request "
      "counts as exact, the times as this machine's\n")

    p("### Measured (local)\n")
    names = ["1. day's first run: full check, due orgs rotated", "2. hourly run: nothing due",
             "3. next day's first run: full check, nothing due"]
    p("| measure | " + " | ".join(names) + " |")
    p("| --- |" + " ---: |" * len(runs))

    def row(label, f):
        p(f"| {label} | " + " | ".join(f(r) for r in runs) + " |")

    row("dispatch: wall time (warm invoke)", lambda r: fmt_s(r.dispatch_wall))
    row("dispatch: manifest's dispatchMs", lambda r: f"{r.manifest['dispatchMs']} ms")
    row("dispatch: AWS requests", lambda r: str(r.dispatch_requests))
    row("slices (orgs each)", lambda r: f"{len(r.manifest['slices'])} "
        f"({min(s['orgs'] for s in r.manifest['slices'])}–{max(s['orgs'] for s in r.manifest['slices'])})")
    row("slice wall time min / median / max", lambda r: " / ".join(
        fmt_s(f([s[3] for s in r.slices])) for f in (min, statistics.median, max)))
    row("slice durationMs (worker's summary), median", lambda r: f"{statistics.median(r.duration_ms):.0f} ms")
    row("workers' wall time, all slices", lambda r: fmt_s(r.sweep_wall))
    row("worker-seconds (sum of slice times)", lambda r: fmt_s(sum(s[3] for s in r.slices)))
    row("AWS requests per org (workers)", lambda r: f"{r.requests / stack.n:.3f}")
    row("… of which the slice's state, per slice", lambda r: f"{sum(r.per_slice_kinds().values()) / len(r.slices):.1f}")
    row("STS AssumeRole calls (workers)", lambda r: str(r.kinds.get("STS AssumeRole", 0)))
    row("peak memory per worker process (VmHWM)",
        lambda r: " / ".join(f"{m:.1f}" for m in r.memory_mib) + " MiB")
    row("orgs seen / rotated / failed", lambda r: f"{sum(x['summary']['orgsSeen'] for x in r.results)} / "
        f"{r.rotated} / 0")
    row("checks", lambda r: "✓ every slice complete in 1 delivery, queues empty")
    row("`sweep --status --run` (CLI; the dispatcher reads runs the same way)",
        lambda r: f"{r.status_results} results read, {r.status_waiting} waiting "
        + ("✓" if r.status_finished else "**✗ not finished**"))
    p("")
    problems = []
    redelivery = getattr(first, "redelivery", None)
    if not all(r.status_finished for r in runs):
        _, full_again = stack.probe
        errors = stack.unreadable_results()
        text = ("**The slice results are not read back.** `sweep --status` (the same `run_status` the dispatcher "
                "calls) counts slices whose result exists as waiting"
                + (f"; the dispatcher logged \"a slice result is not valid; counted as waiting\": "
                   + "; ".join(f"`` {e} ``" for e in errors) if errors else "") + ".")
        if any("missing field `planned`" in e for e in errors):
            text += (" `Summary.planned` (src/core/sweep.rs) is left out of the JSON when empty "
                     "(`skip_serializing_if = \"Vec::is_empty\"`) and has no `#[serde(default)]`, so no result "
                     "without a dry run's plan parses.")
        text += (f" So the dispatcher never records the day's full check: a dry-run dispatch at run 2's time "
                 f"answered fullCheck = {str(full_again).lower()}"
                 + (" (every hourly run lists every org's IAM keys)" if full_again else "") + ".")
        if stack.worked_around:
            text += (" To measure an hourly run, the benchmark wrote `sweep/fanout.json`'s fullyCheckedOn as a "
                     "working dispatcher would.")
        problems.append(text)
    sts = [r.kinds.get("STS AssumeRole", 0) for r in runs]
    if stack.due and sts[0] - sts[2] > 0.05 * len(stack.due):
        problems.append(
            f"**The member roles are assumed again and again while rotating.** Run 1 made {sts[0]} STS AssumeRole "
            f"calls, run 3 (the same slices, worker processes and accounts, no rotation) {sts[2]}: "
            f"≈ {(sts[0] - sts[2]) / len(stack.due):.2f} more per rotation. The cause, from the code and the SDK's "
            "source: each verification (src/aws/verifier.rs) builds an S3 client from the shared `SdkConfig` with "
            "the new key as its credentials provider, i.e. a new partition of the `SdkConfig`'s identity cache "
            "(aws-smithy-runtime 1.16.2 `LazyCache`: at most 64 partitions, `DEFAULT_MAX_PARTITIONS`, an arbitrary "
            "one evicted when full); past 64 verifications in a process, the member accounts' IAM clients "
            "(src/aws/accounts.rs) lose their cached AssumeRole credentials and assume the role again. At AWS each "
            "costs an STS round trip in the rotation (counted in the projection below) and STS quota; an "
            "identity cache of their own for the member clients (or none for the verifier's one-off client) "
            "would avoid it.")
    # Reading the finished result is all a second delivery should cost (a request or two).
    if redelivery and redelivery["requests"] > 2:
        problems.append(
            f"**A finished slice delivered again is swept again.** Slice {redelivery['index']} of run 1, delivered "
            f"once more (SQS delivers at least once): {redelivery['requests']} AWS requests for "
            f"{redelivery['orgs']} orgs, and its result overwritten (deliveries {redelivery['deliveries'][0]} → "
            f"{redelivery['deliveries'][1]}, rotated {redelivery['rotated'][0]} → {redelivery['rotated'][1]}: the "
            "run's record of its rotations is lost). `sweep_slice` (src/core/fanout.rs) reads the earlier result "
            "with `.ok()`, so an unreadable one counts as none; for the same reason a slice stopped by the "
            "deadline would restart from its first org instead of resuming after `stoppedAfter`.")
    elif redelivery:
        p(f"A finished slice delivered again (slice {redelivery['index']} of run 1): {redelivery['requests']} AWS "
          f"requests, deliveries {redelivery['deliveries'][0]} → {redelivery['deliveries'][1]}, rotated "
          f"{redelivery['rotated'][0]} → {redelivery['rotated'][1]}.\n")
    if problems:
        p("### Problems found\n")
        for text in problems:
            p(f"- {text}")
        p("")

    # The request mix per org, from the three runs (the seeded idle orgs have no key; in run 3 only
    # the orgs rotated in run 1 have one in the vault).
    n, due = stack.n, len(stack.due)
    idle = {k: v / n for k, v in hourly.per_org_kinds().items()}
    k3 = next_day.per_org_kinds()
    keyed_in_3 = max(1, due)
    full = {k: (v / keyed_in_3 if k.startswith("SecretsManager") else v / n) for k, v in k3.items()}
    full_no_vault = {k: v / n for k, v in k3.items() if not k.startswith("SecretsManager")}
    extra = collections.Counter(first.per_org_kinds())
    for k, v in full_no_vault.items():
        extra[k] -= v * n
    rotation = {k: v / max(1, due) for k, v in extra.items() if abs(v) > 0.5}
    slice_kinds = collections.Counter()
    for r in runs:
        slice_kinds.update(r.per_slice_kinds())
    per_slice = {k: v / sum(len(r.slices) for r in runs) for k, v in slice_kinds.items()}

    p("### AWS requests of the workers, by kind (measured; per org, per rotation, per slice)\n")
    p("| request | hourly org (run 2) | full-check org with a key in the vault (run 3) "
      "| a rotation, added (run 1 − run 3) | per slice | assumed latency |")
    p("| --- | ---: | ---: | ---: | ---: | ---: |")
    kinds = list(dict.fromkeys(list(idle) + list(full) + list(rotation) + list(per_slice)))
    for k in kinds:
        cell = lambda d: f"{d[k]:.3f}".rstrip("0").rstrip(".") if abs(d.get(k, 0)) > 0.0005 else ""  # noqa: E731
        p(f"| `{k}` | {cell(idle)} | {cell(full)} | {cell(rotation)} | {cell(per_slice)} "
          f"| {LATENCY_MS[kind_class(k)]} ms |")
    p(f"| **total** | **{sum(idle.values()):.2f}** | **{sum(full.values()):.2f}** | **{sum(rotation.values()):.2f}** "
      f"| **{sum(per_slice.values()):.1f}** | |")
    p("\nSecrets Manager reads of run 3 are divided by the orgs that had a key in the vault "
      f"({due}, those rotated in run 1): in production every org with a key has one. The first run's "
      "dispatch made " + mix_text(first.dispatch_kinds, 0) + ".\n")

    # The projection.
    slices = math.ceil(PROJECTED_ORGS / PROJECTED_ACCOUNTS / PROJECTED_SLICE) * PROJECTED_ACCOUNTS
    per_account = PROJECTED_ORGS // PROJECTED_ACCOUNTS
    idle_s = latency_of(idle) / 1000
    full_s = latency_of(full) / 1000
    rotation_s = latency_of(rotation) / 1000
    verify_attempt_s = LATENCY_MS["S3 list"] / 1000
    overhead_s = latency_of(per_slice) / 1000
    due_every = max(1, round(n / max(1, due)))

    def slice_time(org_s, rotated_s=None):
        durations = [rotated_s if rotated_s is not None and i % due_every == 0 else org_s
                     for i in range(PROJECTED_SLICE)]
        return overhead_s + unordered_seconds(durations, SWEEP_CONCURRENCY)

    cases = [
        ("hourly run, nothing due", slice_time(idle_s), idle_s, None),
        ("daily full check, nothing due", slice_time(full_s), full_s, None),
        (f"day's first run, {100 // due_every}% due (full check + rotations), new keys usable at once",
         slice_time(full_s, full_s + rotation_s), full_s, full_s + rotation_s),
    ]
    for propagation in PROPAGATION_S:
        wait_s = verify_wait_s(propagation, verify_attempt_s) - verify_attempt_s
        cases.append((f"the same, new keys usable after {propagation:.0f} s (the verification retries for "
                      f"{wait_s:.2f} s)", slice_time(full_s, full_s + rotation_s + wait_s), full_s,
                      full_s + rotation_s + wait_s))

    # The dispatcher at 100,000 orgs: every listing page one after another.
    org_pages = math.ceil(PROJECTED_ORGS / 1000)
    marker_pages = PROJECTED_ACCOUNTS * math.ceil(per_account / 1000)
    status_reads = 2 + math.ceil(slices / 16)  # fanout.json, the last manifest, its slice results 16 at once
    sqs_batches = math.ceil(slices / 10)
    dispatch_s = ((org_pages + marker_pages) * LATENCY_MS["S3 list"] + status_reads * LATENCY_MS["S3 read"]
                  + 3 * LATENCY_MS["S3 write"] + sqs_batches * LATENCY_MS["SQS"]) / 1000

    def run_seconds(t, workers):
        """A run's duration with `workers` slices at once: the dispatch, then waves of slices."""
        return dispatch_s + math.ceil(slices / workers) * t

    lat = ", ".join(f"{k} {v} ms" for k, v in LATENCY_MS.items())
    p(f"### Projection: {PROJECTED_ORGS:,} orgs over {PROJECTED_ACCOUNTS} member accounts at AWS latency\n")
    p(f"Assumed latency per request: {lat}. Each org's requests one after another, {SWEEP_CONCURRENCY} orgs at "
      f"once in a worker (SWEEP_CONCURRENCY), a free place taking the next org at once (`buffer_unordered` in "
      f"`sweep_orgs`, src/core/sweep.rs; simulated, every {due_every}th org due as here); per slice {overhead_s * 1000:.0f} ms of state; STS AssumeRole as "
      f"measured (once per delivery to check the account, per worker process and account, and as the "
      f"rotations cause it), spread over the orgs. {slices} slices of "
      f"{PROJECTED_SLICE} ({per_account:,} orgs an account); the request mix measured above. Lambda's limit is "
      f"{LAMBDA_LIMIT_S} s, of which the worker uses up to {LAMBDA_LIMIT_S - DEADLINE_MARGIN_S} s (DEADLINE_MARGIN); "
      f"runs every {SCHEDULE_PERIOD_S // 60} min (ScheduleRate); SweepWorkerConcurrency defaults to "
      f"{DEFAULT_WORKERS}. New IAM keys are eventually consistent: how long until one works is assumed (not "
      "measured), hence two rows.\n")
    p(f"| run | per org (idle / rotated) | slice of {PROJECTED_SLICE:,} orgs | of the 15-min limit "
      f"| worker-time per run ({slices} slices) | run at {DEFAULT_WORKERS} workers (incl. dispatch) "
      f"| workers to finish within {SCHEDULE_PERIOD_S // 60} min |")
    p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, t, org_s, rot_s in cases:
        per_org = f"{org_s * 1000:.0f} ms" + (f" / {rot_s:.2f} s" if rot_s is not None else "")
        limit = f"{t / LAMBDA_LIMIT_S * 100:.0f}%" + (" **over**" if t > LAMBDA_LIMIT_S - DEADLINE_MARGIN_S else "")
        needed = next((w for w in range(1, slices + 1) if run_seconds(t, w) <= SCHEDULE_PERIOD_S), None)
        if t > LAMBDA_LIMIT_S - DEADLINE_MARGIN_S:
            needed = "none: the slices time out"
        p(f"| {label} | {per_org} | {fmt_s(t)} | {limit} | {fmt_s(t * slices)} "
          f"| {fmt_s(run_seconds(t, DEFAULT_WORKERS))} | {needed or 'none: a slice alone is too long'} |")

    local_pages = sum(v for k, v in first.dispatch_kinds.items() if kind_class(k) == "S3 list")
    p(f"\nDispatcher at {PROJECTED_ORGS:,} orgs: {org_pages} pages of `orgs/` and {marker_pages} of the "
      f"{PROJECTED_ACCOUNTS} accounts' markers (listed one after another), the last run's status ({slices} slice "
      f"results, 16 at once), 3 state writes and {sqs_batches} SendMessageBatch: **≈ {fmt_s(dispatch_s)}**, "
      f"far from its 15 minutes (here: {local_pages} pages for {stack.n:,} orgs, dispatchMs "
      f"{first.manifest['dispatchMs']}).\n")

    bodies = [(s[2], s[4]) for r in runs for s in r.slices]
    orgs_in, body_bytes = max(bodies)
    id_len = len(stack.orgs[-1])
    overhead_bytes = body_bytes - orgs_in * (id_len + 3)  # each id quoted, with a comma
    body_of = lambda length: overhead_bytes + PROJECTED_SLICE * (length + 3)  # noqa: E731
    full_check = cases[1][1]
    iam_reads_tps = full.get("IAM ListAccessKeys", 0) * PROJECTED_SLICE / full_check
    mutating = sum(v for k, v in rotation.items() if k.startswith("IAM ") and "List" not in k)
    fastest_rotating = cases[2][1]
    same_account = math.ceil(per_account / PROJECTED_SLICE)
    slowest = cases[-1]
    resumes = ("resumes after the last org it finished" if all(r.status_finished for r in runs)
               else "should resume where it stopped — but with the results unreadable (above) it starts over, "
                    "so such a slice would never finish and ends in the dead-letter queue after 3 receives")
    p("Notes:")
    p(f"- IAM throttles per account (AWS's defaults are of the order of {IAM_MUTATING_TPS} requests/s for mutating "
      f"calls; reads are throttled too). One slice's full check lists keys at ≈ {iam_reads_tps:.0f}/s; its "
      f"rotations make at most ≈ {mutating * PROJECTED_SLICE / due_every / fastest_rotating:.1f} mutating IAM "
      f"calls/s. The dispatcher queues the slices with the accounts taking turns (`plan_slices`), so "
      f"{DEFAULT_WORKERS} workers at once tend to sweep {DEFAULT_WORKERS} different accounts: "
      f"≈ {iam_reads_tps * math.ceil(DEFAULT_WORKERS / PROJECTED_ACCOUNTS):.0f} ListAccessKeys/s per account in a "
      f"full check (queued account by account, {same_account} slices of one account at once would make "
      f"≈ {iam_reads_tps * same_account:.0f}/s).")
    p(f"- Rotations dominate a slice with many orgs due ({fmt_s(slowest[1])} in the last row). A slice stopped by "
      f"the deadline is delivered again 90 min later and {resumes}.")
    p(f"- Memory: at most {max(m for r in runs for m in r.memory_mib):.0f} MiB per worker process here "
      f"(debug build, {stack.slice_size}-org slices), against the {WORKER_MEMORY} MiB configured.")
    p(f"- SQS: a {PROJECTED_SLICE:,}-org slice's message is ≈ {body_of(id_len) / 1024:.0f} KiB with "
      f"{id_len}-character org ids (here: {body_bytes / 1024:.1f} KiB for {orgs_in}); with 48-character ids "
      f"(the most `OrgId` allows) ≈ {body_of(48) / 1024:.0f} KiB: ten of those would be "
      f"≈ {10 * body_of(48) / 1024:.0f} KiB, so `SqsSlices::send` closes a SendMessageBatch at ten messages or "
      "256 KiB, whichever comes first.")
    p(f"- {PROJECTED_ORGS:,} orgs over {PROJECTED_ACCOUNTS} accounts is {per_account:,} an account, above "
      f"ORGS_PER_ACCOUNT's default 4,500 (at the default: {math.ceil(PROJECTED_ORGS / 4500)} accounts, "
      f"{math.ceil(PROJECTED_ORGS / 4500) * math.ceil(4500 / PROJECTED_SLICE)} slices, some of 500). The mix "
      f"per org is the one measured at {stack.n:,} orgs.")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binaries", default=os.environ.get("BENCH_BINARIES", ROOT / "target" / "release"),
                        help="the folder of the binaries (scheduled-rotation, sweep-worker, s3-key-rotation)")
    parser.add_argument("--orgs", type=int, default=20000)
    parser.add_argument("--accounts", type=int, default=5, help="member accounts")
    parser.add_argument("--slice-size", type=int, default=1000, help="SWEEP_SLICE_SIZE")
    parser.add_argument("--due", type=float, default=0.1, help="fraction of the orgs due for rotation")
    parser.add_argument("--workers", type=int, default=2, help="sweep-worker sandboxes at once")
    parser.add_argument("--keep-logs", action="store_true", help="keep the functions' logs (their folder is printed)")
    args = parser.parse_args()
    if args.orgs < args.accounts or not 0 <= args.due <= 1:
        parser.error("at least one org per account, and --due from 0 to 1")
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    build = Build.at("build", args.binaries)
    log_dir = tempfile.mkdtemp(prefix="bench-fanout-logs-")
    stack = Stack(args.orgs, args.accounts, args.due, args.slice_size, build, log_dir)
    log(f"fan-out: {args.orgs} orgs, {args.accounts} member accounts, {len(stack.due)} due; logs in {log_dir}")
    try:
        stack.setup()
        log(f"  seeded in {stack.seed_seconds:.0f} s")
        first_at, hourly_at, next_day_at = run_times(datetime.now(timezone.utc))
        runs = [Run(stack, "run 1 (full check, due rotated)", first_at, args.workers, stack.due, True),
                Run(stack, "run 2 (hourly)", hourly_at, args.workers, set(), False),
                Run(stack, "run 3 (next day's full check)", next_day_at, args.workers, set(), True)]
        for i, run in enumerate(runs):
            if i == 1:
                # The next run of the day should not be a full check: does the dispatcher see the first one finished?
                stack.probe = runs[0].status_finished, stack.probe_full_check(run.at)
                stack.worked_around = not runs[0].status_finished
                if stack.worked_around:
                    log("  the dispatcher does not see run 1 finished: recording its full check as it would")
                    stack.mark_fully_checked(runs[0])
            run.dispatch()
            run.sweep()
            run.status()
            if i == 0:
                run.redeliver(0)
    finally:
        stack.close()
    print(report(stack, runs, args, started_at, time.perf_counter() - started))
    if not args.keep_logs:
        for path in Path(log_dir).glob("*.log"):
            path.unlink()
        os.rmdir(log_dir)


if __name__ == "__main__":
    main()
