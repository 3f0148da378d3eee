"""The wire-fault harness: the real function binaries (target/debug, built by
`cargo build --bins`) reach the local AWS endpoint through scripts/fault_proxy.py,
while the checks of the tests go straight to the endpoint.

- `Stack`: one local AWS endpoint (moto) with credential enforcement on, so a
  check that a key "works" is a real signed GetObject of the org's log object.
- `Worker`: a fault proxy, a registry bucket and the functions of template.yaml
  behind an API Gateway stand-in of its own (scripts/gateway.py) whose clock the
  worker moves: rotate-key through HTTP, scheduled-rotation through its Lambda
  Runtime API. Workers run in parallel threads; each one's proxy sees only its
  own functions' requests, so "the k-th request" is well defined per worker.
- `Observer`: what AWS holds (registry record, IAM keys, key vault), read directly.

The SDK timeouts are shortened for the test (SDK_ATTEMPT_TIMEOUT, SDK_OPERATION_TIMEOUT)
and a stall lasts just longer than one attempt, so a stalled call costs seconds.
"""
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from fault_proxy import KINDS as ALL_KINDS  # noqa: E402
from fault_proxy import FaultProxy, unprovoked_retries  # noqa: E402
from gateway import Deployment, FunctionError, Gateway, token  # noqa: E402
from local_aws import LOG_KEY, MANAGED_BUCKET, ROOT, LocalAws, cli, member_env  # noqa: E402

ISSUER = "https://auth.example.test/"
AUDIENCE = "s3-key-rotation"
JWT_SECRET = "local-test-signing-secret-of-the-identity-provider"
ATTEMPT_TIMEOUT = 1  # seconds: SDK_ATTEMPT_TIMEOUT of the functions under test
OPERATION_TIMEOUT = 3  # seconds: SDK_OPERATION_TIMEOUT; room for a stalled attempt, the SDK's first backoff
# (up to 1 s) and the retry, so a single stall is always retried in time
STALL_SECONDS = ATTEMPT_TIMEOUT + 0.5
# WIRE_KINDS=stall,lost: only these fault kinds (a shorter run while working on one).
KINDS = tuple(k for k in ALL_KINDS if k in os.environ.get("WIRE_KINDS", ",".join(ALL_KINDS)).split(","))
WORKERS = int(os.environ.get("WIRE_WORKERS", "8"))  # workers of a matrix, each a proxy and functions of its own
# ROTATION_LEASE of the functions under test: the shortest the configuration allows with
# these SDK timeouts and VERIFY_WITHIN (5 x 3 s + 5 s + 10 s). A lease runs on the real clock,
# not on the worker's (event) clock: a scenario that leaves a claim behind waits it out.
LEASE_SECONDS = 30
VERIFY_WITHIN = 5  # seconds: a new key works at once on the local endpoint
CLOCK_SKEW = 5  # seconds: MAX_CLOCK_SKEW, by which a judge lets a lease run over
VAULT_PREFIX = "s3-key-rotation/org-"
SCHEDULED_EVENT = json.loads((ROOT / "events" / "scheduled-event.json").read_text())


class Stack:
    """The local AWS endpoint, provisioned, with credentials enforced; `members`: member
    accounts with member-account.yaml's role deployed (`member_env` names their roles)."""

    def __init__(self, log_dir, members=()):
        self.aws = LocalAws.start()
        self.log_dir = Path(log_dir)
        self.members = tuple(members)
        self.member_env = member_env(self.members) if self.members else {}
        try:
            self.env = self.aws.provision([])
            operator = (self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"])
            for account in self.members:
                # As the operator: member-account.yaml's OperatorPrincipals names them.
                self.aws.deploy_member_account(account, key=operator)
            self.aws.enforce_credentials()
        except Exception:
            self.aws.stop()
            raise
        self.role = (self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"])
        self.observer = Observer(self.aws, self.role, self.members)

    def close(self):
        self.aws.stop()


def stack_fixture(name, members=()):
    """The module's `stack` fixture: one Stack (its logs under a temporary folder `name`)
    for every test of the module."""
    @pytest.fixture(scope="module")
    def stack(tmp_path_factory):
        stack = Stack(tmp_path_factory.mktemp(name), members)
        yield stack
        stack.close()
    return stack


class Observer:
    """Reads AWS directly (not through any proxy), as the functions' role."""

    def __init__(self, aws, role, members=()):
        self.aws = aws
        self.s3 = aws.client("s3", role)
        self.iam = aws.client("iam", role)
        self.secrets = aws.client("secretsmanager", role)
        # A member account's IAM, through its OrganizationAccountAccessRole.
        self.member_iam = {a: aws.client("iam", aws.organization_key(a, role)) for a in members}

    def record(self, bucket, org):
        try:
            body = self.s3.get_object(Bucket=bucket, Key=f"orgs/{org}.json")["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise
        record = json.loads(body)
        # The id of the write that stored it is the registry's bookkeeping (like the
        # object's ETag), not the org's state: "changed nothing" is about the state.
        record.pop("writeId", None)
        return record

    def keys(self, org, account=None):
        """{access key id: status} of the org's IAM user (in `account`, None: the home account's)."""
        iam = self.member_iam[account] if account else self.iam
        listed = iam.list_access_keys(UserName=f"org-{org}")["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in listed}

    def vault(self, org, stage="AWSCURRENT", version=None):
        """The vault's (access key id, secret) at a stage or version, or None."""
        args = {"VersionId": version} if version else {"VersionStage": stage}
        try:
            value = self.secrets.get_secret_value(SecretId=f"{VAULT_PREFIX}{org}", **args)
        except ClientError as e:
            if e.response["Error"]["Code"] in ("ResourceNotFoundException", "InvalidRequestException"):
                return None
            raise
        secret = json.loads(value["SecretString"])
        return secret["accessKeyId"], secret["secretAccessKey"]

    def works(self, key, org):
        return key is not None and self.aws.can_read(key, org)

    def put_log(self, org):
        self.s3.put_object(Bucket=MANAGED_BUCKET, Key=f"{org}/{LOG_KEY}", Body=f"log lines of org {org}\n".encode())


class Snapshot:
    """What AWS holds for one org, read once: its record, its IAM keys (id -> status),
    the vault's current key; `works(key)` asks the bucket once per key."""

    def __init__(self, worker, org):
        self.obs, self.org = worker.obs, org
        self.record = self.obs.record(worker.bucket, org)
        self.keys = self.obs.keys(org, (self.record or {}).get("accountId"))
        self.vault = self.obs.vault(org)
        self._works = {}

    def works(self, key):
        if key is None:
            return False
        if key not in self._works:
            self._works[key] = self.obs.works(key, self.org)
        return self._works[key]

    def vault_of_current(self):
        """The record's current key with its secret, from the vault version the record names."""
        current = self.record.get("current") or {} if self.record else {}
        if self.vault and self.vault[0] == current.get("accessKeyId"):
            return self.vault
        key = self.obs.vault(self.org, version=current["vaultVersion"]) if current.get("vaultVersion") else None
        return key if key and key[0] == current.get("accessKeyId") else None


def current_id(record):
    return (record or {}).get("current", {}).get("accessKeyId")


def known_ids(record):
    ids = {current_id(record)}
    if record and record.get("previous"):
        ids.add(record["previous"]["accessKeyId"])
    return ids - {None}


def holds(snap):
    """What must hold for an org at any time: its problems."""
    problems = []
    if len(snap.keys) > 2:
        problems.append(f"IAM holds {len(snap.keys)} keys")
    if not snap.works(snap.vault):
        problems.append(f"the vault's current key {(snap.vault or (None,))[0]} does not work")
    current = snap.vault_of_current()
    if current is None:
        problems.append(f"the record's current key {current_id(snap.record)} has no secret in the vault")
    elif not snap.works(current):
        problems.append(f"the record's current key {current[0]} does not work")
    return problems


def converged(snap):
    """Where an org's state is not the settled one: no claim, IAM holding exactly the
    keys the record names in the states it says, the vault holding the current key."""
    problems = []
    if snap.record.get("pending"):
        problems.append("a claim is left in the record")
    if set(snap.keys) != known_ids(snap.record):
        problems.append(f"IAM holds {sorted(snap.keys)}, the record names {sorted(known_ids(snap.record))}")
    problems += disagreements(snap.keys, snap.record)
    if (snap.vault or (None,))[0] != current_id(snap.record):
        problems.append(f"the vault's current key is {(snap.vault or (None,))[0]}, not {current_id(snap.record)}")
    return problems


def disagreements(keys, record):
    """Where IAM's key states (`keys`: id -> status) and the record disagree."""
    problems = []
    current, previous = current_id(record), (record or {}).get("previous")
    if keys.get(current) != "Active":
        problems.append(f"the current key {current} is {keys.get(current, 'missing')} in IAM")
    if previous and previous["accessKeyId"] in keys:
        expected = "Inactive" if previous.get("deactivatedAt") else "Active"
        if keys[previous["accessKeyId"]] != expected:
            problems.append(f"the previous key is {keys[previous['accessKeyId']]} in IAM, the record says {expected}")
    return problems


class Worker:
    """A fault proxy and the functions behind it, with a registry bucket of its own.

    `attempt_timeout`/`operation_timeout` (seconds): the functions' SDK timeouts (the
    fault matrices' short ones by default); `env`: more environment for the functions."""

    def __init__(self, stack, name, attempt_timeout=ATTEMPT_TIMEOUT, operation_timeout=OPERATION_TIMEOUT,
                 parameters=None, **env):
        self.stack = stack
        self.name = name
        self.obs = stack.observer
        self.proxy = FaultProxy(stack.aws.port, stall_seconds=STALL_SECONDS)
        self.bucket = f"registry-{name}"
        self.obs.s3.create_bucket(Bucket=self.bucket)
        self.now = datetime.now(timezone.utc).replace(microsecond=0)
        # Direct to the endpoint: the operator's CLI that enrolls the orgs.
        self.cli_env = dict(stack.env, REGISTRY_BUCKET=self.bucket)
        self.deployment = Deployment({
            "RegistryBucket": self.bucket,
            "ManagedBucketName": MANAGED_BUCKET,
            "JwtIssuer": ISSUER,
            "JwtAudience": AUDIENCE,
            "SweepConcurrency": 1,  # one org at a time: the k-th request is the same request in every run
            **(parameters or {}),  # more of the template's parameters (SweepQueue, MemberAccountRoles, ...)
        })
        # A lease long enough for the SDK timeouts given (ROTATION_LEASE is checked against
        # them at start-up), unless the test sets its own.
        env.setdefault("VERIFY_WITHIN", f"{VERIFY_WITHIN}s")
        env.setdefault("ROTATION_LEASE", f"{max(LEASE_SECONDS, 5 * operation_timeout + VERIFY_WITHIN + 10)}s")
        self.function_env = dict(stack.env, SDK_ATTEMPT_TIMEOUT=f"{attempt_timeout}s",
                                 SDK_OPERATION_TIMEOUT=f"{operation_timeout}s", **env)
        # Each function under its template role (for this deployment's parameters), credentials enforced.
        self.credentials = stack.aws.function_credentials(stack.env, self.deployment.parameters)
        self.gateway = self.functions(self.proxy.endpoint, lambda: self.now)
        self.session = requests.Session()
        self.secrets = {}  # access key id -> secret, of every key handed out to a caller
        self.orgs = 0
        self.world = None  # what the next scenario starts from (`settle`), None: to be made anew

    def functions(self, endpoint, clock, name=None, concurrency=1, **env):
        """The functions of template.yaml behind an API Gateway stand-in, reaching AWS at
        `endpoint`, their request time from `clock()`, `concurrency` sandboxes each, `env`
        on top of the worker's environment. The worker's own (`name` None) go through its
        proxy; another set (a second actor: processes of its own) logs under `name`."""
        log_dir = self.stack.log_dir / self.name / (name or "")
        log_dir.mkdir(parents=True, exist_ok=True)
        return Gateway(self.deployment, dict(self.function_env, AWS_ENDPOINT_URL=endpoint, **env), JWT_SECRET,
                       log_dir, credentials=self.credentials, clock=clock, concurrency=concurrency)

    def close(self):
        self.gateway.close()
        self.proxy.close()

    def new_org(self, tag):
        self.orgs += 1
        org = f"{self.name}-{tag}{self.orgs}"
        self.obs.put_log(org)
        cli(self.cli_env, "enroll", "--org", org, capture=True)
        return org

    def rotate(self, org, grace=None, idempotency_key=None, gateway=None):
        """rotate-key through HTTP at the worker's clock (or through `gateway`, at its
        clock): (status, JSON body)."""
        headers = {"Authorization": f"Bearer {token(JWT_SECRET, ISSUER, AUDIENCE, org=org)}"}
        body = None
        if grace:
            headers["Content-Type"] = "application/json"
            body = json.dumps({"previousKeyGracePeriod": grace})
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        url = (gateway or self.gateway).url
        response = requests.post(f"{url}/iam/rotate-key", data=body, headers=headers, timeout=120) if gateway \
            else self.session.post(f"{url}/iam/rotate-key", data=body, headers=headers, timeout=120)
        answer = response.json()
        if response.status_code == 200:
            self.secrets[answer["accessKeyId"]] = answer["secretAccessKey"]
        return response.status_code, answer

    def sweep(self, at, gateway=None):
        """One scheduled-rotation invocation at event time `at` (of the worker's functions,
        or `gateway`'s): the summary, or the FunctionError."""
        event = dict(SCHEDULED_EVENT, id=str(uuid.uuid4()), time=at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        try:
            return (gateway or self.gateway).runtimes["ScheduledRotationFunction"].invoke(event)
        except FunctionError as e:
            return e

    def wait_out_claims(self, orgs):
        """Waits (real time, bounded) until no claim in these orgs' records is within its
        lease: what a killed function leaves behind, and what the next actor may take over."""
        for org in orgs:
            pending = (self.obs.record(self.bucket, org) or {}).get("pending")
            if not pending:
                continue
            until = datetime.fromisoformat(pending["leaseUntil"].replace("Z", "+00:00"))
            wait = (until - datetime.now(timezone.utc)).total_seconds() + CLOCK_SKEW + 0.5
            assert wait <= LEASE_SECONDS + CLOCK_SKEW + 1, f"{org}: a lease until {until}"
            if wait > 0:
                time.sleep(wait)

    def kill_scheduled(self):
        self.gateway.runtimes["ScheduledRotationFunction"].process.kill()

    def known_key(self, org, record):
        """The current key of the record, with its secret if the org was handed it."""
        key_id = current_id(record)
        return (key_id, self.secrets[key_id]) if key_id in self.secrets else None


TRIES = 3  # runs of a scenario that the machine's load disturbed


def close_all(workers, close=None):
    """Closes the workers (`close(worker)`, or its own close()) at once: each waits for its
    functions' processes to stop and its servers' next poll."""
    closing = [threading.Thread(target=close or type(w).close, args=(w,)) for w in workers]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


def settle(worker, build, prepare=None, what="world"):
    """What the worker's next scenario starts from, `worker.world`: the last scenario's,
    unless it retired it (`retire`), else made anew by `build(worker)`, which leaves it None
    when the machine's load disturbed the making (an SDK retry nobody provoked); then
    `prepare(worker)`, if given, brings it to the scenario's start (False: disturbed, and it
    retired the world). Up to TRIES tries."""
    for _ in range(TRIES):
        if worker.world is None:
            build(worker)
        if worker.world is not None and (prepare is None or prepare(worker)):
            return worker.world
    raise AssertionError(f"no {what} could be set up in {TRIES} tries: the machine is too loaded")


def retire(worker, orgs):
    """Takes `orgs` out of the worker's registry: its next scenario starts from a world made anew."""
    for org in orgs:
        worker.obs.s3.delete_object(Bucket=worker.bucket, Key=f"orgs/{org}.json")
    worker.world = None


def clean_run(run):
    """`run()` (a scenario without a fault, whose requests the matrix counts) until the
    machine's load did not disturb it, up to TRIES times: its result."""
    for _ in range(TRIES):
        result = run()
        if not result["disturbed"]:
            break
    return result


def longest_first(columns):
    """The matrix's fault columns, (kind, every retry), in the order their runs are started:
    the longest first (a stall costs the operation timeout, on every retry the most)."""
    return sorted(columns, key=lambda c: (c[0] != "stall", not c[1]))


def fault_scenarios(columns, n, keep=None):
    """A scenario (k, kind, every retry) per column and request k of the clean run's `n`
    (`keep(k, kind, persist)`: only those it keeps), column by column, longest first."""
    return [(k, kind, persist) for kind, persist in longest_first(columns) for k in range(1, n + 1)
            if keep is None or keep(k, kind, persist)]


def run_parallel(workers, scenarios, run):
    """Runs `run(worker, scenario)` for every scenario, each worker taking the next
    one as it is free (scenarios are given longest first); returns the results in order.

    A result whose runs saw a retry the proxy did not provoke (an SDK attempt timed
    out on a loaded machine: a fault nobody injected), or whose fault did not hit the
    request it names, is `disturbed`: the scenario runs again, up to TRIES times;
    `tries` says how often it ran."""
    results = [None] * len(scenarios)
    lock = threading.Lock()
    queue = list(enumerate(scenarios))
    errors = []

    def loop(worker):
        while True:
            with lock:
                if not queue or errors:
                    return
                index, scenario = queue.pop(0)
            try:
                for tries in range(1, TRIES + 1):
                    result = run(worker, scenario)
                    result["tries"] = tries
                    if not result["disturbed"]:
                        break
                else:
                    result["problems"].append(f"disturbed by unprovoked SDK retries in {TRIES} tries: "
                                              "the machine is too loaded for the test's SDK timeouts")
                results[index] = result
            except BaseException as e:  # reported once all threads stopped
                with lock:
                    errors.append((scenario, e))
                return

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        scenario, error = errors[0]
        raise AssertionError(f"the harness failed at {scenario}: {error!r}") from error
    return results


def disturbed(*logs):
    """Whether the logs show a retry the proxy did not provoke."""
    return any(unprovoked_retries(log) for log in logs)


def table(title, header, rows):
    """A compact text table for the lead to quote."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def elapsed(started):
    return f"{time.monotonic() - started:.0f} s"


def diverged(log, ops, k):
    """Whether the run's requests up to the k-th are not the clean run's: the fault did
    not hit the request it names (a retry the load caused shifted them)."""
    return [e["kind"] for e in log[:k]] != ops[:min(k, len(log))]


# What this matrix found and is not fixed yet (fixed since: the lost answer to the claim
# and to the commit, on one attempt or every retry, a commit landing late, and a vault left
# naming a key the rotation deactivated). Each
# finding names the tests that show it, how to recognise its problems, and what is
# observed. "Lost" is what the `lost` fault does; an operation timeout that ends a call
# while a retry is in flight does the same. A problem matching one is reported, not
# failed; a finding no longer seen fails its tests, so that its entry goes once it is fixed.
KNOWN = {
    "stale-previous": (
        {"scheduled", "fanout"},
        lambda r, p: "which IAM does not have" in p and p.startswith(("the next day's run reported",
                                                                       "the next run reported", "the run reported")),
        "a rotation that fails (or whose worker is killed) after making room (DeleteAccessKey of the previous key) "
        "leaves the record naming "
        "the deleted previous key: the next full-check sweep reports the mismatch 'the record names <id>, which "
        "IAM does not have' to the operators until a rotation commits",
    ),
}


def cell(result, short=str):
    """A matrix cell: the outcome, '~' if the next call did not converge, '!' if an invariant broke."""
    return f"{short(result['outcome'])}{'' if result['converged'] else '~'}{'!' if result['problems'] else ''}"


def report(test, started, title, ops, columns, results, notes, capsys, short=str, complete=True):
    """Prints the matrix (a row per request k, a column per fault kind, '+': on every
    retry) and its outcomes; fails on a problem no known finding explains (and, if the
    test ran `complete`ly with every fault kind, on a known finding no longer seen)."""
    by_cell = {(r["k"], r["kind"], r["persist"]): r for r in results}
    rows = [[k, op, *[cell(by_cell[(k, kind, persist)], short) for kind, persist in columns]]
            for k, op in enumerate(ops, 1)]
    header = ["k", "request", *[f"{kind}{'+' if persist else ''}" for kind, persist in columns]]
    outcomes = Counter(short(r["outcome"]) for r in results)
    unexpected, seen = [], {}
    for r in results:
        for p in r["problems"]:
            name = next((n for n, (tests, matches, _) in KNOWN.items() if test in tests and matches(r, p)), None)
            if name:
                seen.setdefault(name, r["label"])
            else:
                unexpected.append(f"{r['label']}: {p}")
    counts = {n: sum(1 for r in results if any(KNOWN[n][1](r, p) for p in r["problems"])) for n in seen}
    rerun = sum(1 for r in results if r.get("tries", 1) > 1)
    lines = [
        table(f"{title}; {elapsed(started)}", header, rows), *notes,
        "outcomes: " + ", ".join(f"{o}: {c}" for o, c in sorted(outcomes.items()))
        + f"; converged: {sum(r['converged'] for r in results)}/{len(results)}; "
        f"run again after an unprovoked SDK retry (machine load): {rerun}",
    ]
    lines += [f"known finding {n} ({counts[n]} runs, e.g. {seen[n]}): {KNOWN[n][2]}" for n in seen]
    lines += [f"UNEXPECTED {u}" for u in unexpected]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not unexpected, "\n".join(unexpected)
    every_kind = set(KINDS) == set(ALL_KINDS) and complete
    gone = [n for n, (tests, _, _) in KNOWN.items() if test in tests and n not in seen and every_kind]
    assert not gone, f"known findings no longer seen (remove them from harness.KNOWN): {gone}"
