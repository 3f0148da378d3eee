"""The fanned-out sweep on the wire (issue 19, item 5): `scheduled-rotation` as the
dispatcher (SWEEP_QUEUE_URL set) and `sweep-worker`, both real binaries under the
Lambda Runtime API of scripts/gateway.py, deployed as template.yaml deploys them: a
real SQS queue on the local endpoint (with its dead-letter queue after three
receives), member accounts reached through STS (member-account.yaml's role in each,
MEMBER_ACCOUNT_ROLES naming them), every AWS request of the functions through the
worker's fault proxy.

The test plays Lambda's SQS event source mapping (BatchSize 1,
ReportBatchItemFailures): it receives one message at a time, invokes sweep-worker
with the SQS event Lambda builds (messageId, receiptHandle, body, eventSourceARN)
and deletes the message unless the partial batch answer lists it. A message not
deleted comes back once its visibility timeout passes: the test lets that time pass
(ChangeMessageVisibility to 0 on the receipts it holds; the queue's own timeout,
30 s, is only the backstop), so that a redelivery costs no waiting. Lambda retries
a failed dispatcher invocation once with the same event: the test does too (the
same run id). Every scenario starts from cold function processes (`recycle()`: no
role credentials cached from an earlier scenario), so that the k-th request is the
same request in every run.

The world of each worker: three orgs, H in the home account (enrolled before
member accounts existed; its previous key's grace period, given by a manual
rotation an hour before the run, is over: the run retires it), A in the first
member account (a 7-day automatic rotation, due) and B in the second (nothing due:
the day's full check only). The dispatcher slices them by account (three slices).

Scenarios:
- the matrix: a clean run (the dispatch, then each slice's delivery) counts its
  requests, N; then for every k and every fault kind (`500+`, `503+`, `close+`,
  `lost+`: every retry of the call; `lost`: one attempt, the SDK retries a request
  that AWS applied), the run, checked, then the redeliveries and the next run of the
  schedule, an hour later (faults off), checked for convergence. `lost+` runs on the
  requests that change something: on a read it is `close+` to the client, and AWS
  keeps nothing of it (the matrix shows `=`). WIRE_FULL=1 adds `stall+`, the other
  single-attempt kinds and `lost+` on every request.
- SIGKILL of the function making the k-th request, at seeded k: a killed worker's
  message comes back after its visibility timeout, once the claim its rotation left
  is over (leases run on the real clock: the test waits it out); a killed
  dispatcher is retried by Lambda with the same event.
- a slice delivered twice at once: the member account A slice (A's due rotation)
  received again while its first delivery holds its k-th request (a pause, no
  fault), for every k of that delivery; the second delivery (other processes,
  another proxy) runs to its end in the pause. And both at once, unpaused.
- the dispatcher invoked twice with the same event: at every request k of the first
  invocation, the second one runs to its end (`disp`), or runs and its slices are
  swept (`disp+sweep`: the run finished while the first dispatcher still works); and
  once more after the run finished (Lambda's retry, late).

Invariants, checked after the run (each delivery: an org the slice reports failed
keeps its keys as they were) and once everything settled:
- every org keeps a working key it knows (the vault's current secret works, as does
  the record's current key from the vault) and IAM never holds more than two keys;
- a due rotation happens once (A's key version moves by one in the cycle; H's and
  B's never);
- after the faults stop, the next run converges: the faulted run's slices finished
  by their redeliveries, the next run (`s3-key-rotation sweep --status`)
  finished with every org swept and nothing failed, no mismatch reported, IAM
  holding exactly the keys the records name in the states they say, the vault
  holding each current key, no claim left, nothing in the dead-letter queue.
The run is the first of its day (a full check): its manifest must say so.

Findings are listed in harness.KNOWN (`stale-previous`, which the scheduled matrix
shows too). A dispatcher retried with the same event keeps its run's full check
(it used to rewrite the manifest with fullCheck false). WIRE_FAN=fault,kill,twice,disp
picks the families of scenarios.
"""
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

from harness import (KINDS, SCHEDULED_EVENT, WORKERS, FaultProxy, FunctionError, Snapshot, Worker, cell, clean_run, cli,
                     close_all, converged, disturbed, diverged, elapsed, fault_scenarios, holds, report, retire,
                     run_parallel, settle, stack_fixture, table)
from local_aws import EXTERNAL_ID, TARGET, member_role_arn
from sqs_delivery import MAX_RECEIVES, EventSourceMapping, queue_arn

FULL = os.environ.get("WIRE_FULL") == "1"
MEMBERS = ("111111111111", "222222222222")
VISIBILITY = 30  # seconds: the test queue's visibility timeout (template.yaml: 5400), a backstop only
KILL_POINTS = 8
SEED = 20261130
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)  # the schedule's rate: the next run comes an hour later
CYCLE = timedelta(days=8)  # from one scenario's run to the next: A's 7-day rotation is due again
RACES = 3  # unpaused double deliveries
# The first invocation of a pause scenario waits while the second acts: its SDK must wait too
# (and its lease be long enough for those timeouts: 5 x 25 s + VERIFY_WITHIN + 10 s).
PATIENT = {"SDK_ATTEMPT_TIMEOUT": "20s", "SDK_OPERATION_TIMEOUT": "25s", "ROTATION_LEASE": "140s"}


stack = stack_fixture("wire-fanout", members=MEMBERS)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class FanWorker(Worker):
    """A worker whose template parameters name its own sweep queue (and dead-letter
    queue) and the member accounts' roles; it plays the event source mapping."""

    def __init__(self, stack, name):
        sqs = stack.aws.client("sqs", stack.role)
        dead = sqs.create_queue(QueueName=f"sweep-dead-letters-{name}")["QueueUrl"]
        url = sqs.create_queue(QueueName=f"sweep-{name}", Attributes={
            "VisibilityTimeout": str(VISIBILITY),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": queue_arn(sqs, dead),
                                         "maxReceiveCount": str(MAX_RECEIVES)})})["QueueUrl"]
        super().__init__(stack, name, parameters={
            "SweepQueue": url,
            "MemberAccountRoles": ",".join(member_role_arn(a) for a in stack.members),
            "MemberRoleExternalId": EXTERNAL_ID,
            # B's key is never rotated: far from the 90-day rule, which would take it away (by design) after
            # the eleventh scenario of a world (8 days each).
            "MaxKeyAge": "3650d",
        })
        self.sqs, self.queue_url, self.dead_url = sqs, url, dead
        self.mapping = EventSourceMapping(sqs, url, failure=FunctionError)
        self.member_cli_env = dict(self.cli_env, **stack.member_env)
        # The operator's CLI with the deployed functions' settings, straight to the endpoint.
        self.operator_env = dict(self.function_env, **self.deployment.functions["SweepWorkerFunction"].environment)
        # The same functions with long SDK timeouts, through the same proxy: the first
        # invocation of a pause scenario.
        self.patient = self.functions(self.proxy.endpoint, lambda: self.now, "patient", **PATIENT)
        self.ops_of = {}  # family -> the clean run's requests that its k counts
        self.second = None
        self.disturbances = Counter()

    def runtime(self, function, gateway=None):
        return (gateway or self.gateway).runtimes[function]

    def second_functions(self):
        """A second set of functions (processes of their own) behind a proxy that only counts."""
        if self.second is None:
            self.second_proxy = FaultProxy(self.stack.aws.port)
            self.second = self.functions(self.second_proxy.endpoint, lambda: self.now, "second")
        return self.second

    def close(self):
        self.patient.close()
        if self.second is not None:
            self.second.close()
            self.second_proxy.close()
        super().close()

    def cold(self):
        """Cold processes for the next invocations, as a new Lambda sandbox: nothing cached."""
        for gateway in filter(None, (self.gateway, self.patient, self.second)):
            for function in ("ScheduledRotationFunction", "SweepWorkerFunction"):
                gateway.runtimes[function].recycle()

    def kill_running(self):
        """SIGKILL for whichever of the dispatcher and the sweep-worker is running (a hook)."""
        for function in ("ScheduledRotationFunction", "SweepWorkerFunction"):
            runtime = self.runtime(function)
            if runtime.running:
                runtime.process.kill()

    # -- the dispatcher, as EventBridge Scheduler invokes it (and Lambda retries it)

    def event(self, at):
        return dict(SCHEDULED_EVENT, id=str(uuid.uuid4()), time=iso(at))

    def dispatch(self, event, gateway=None):
        """One invocation of the dispatcher: the manifest, or the FunctionError."""
        try:
            return self.runtime("ScheduledRotationFunction", gateway).invoke(event)
        except FunctionError as e:
            return e

    # -- the event source mapping (scripts/sqs_delivery.py)

    def receive(self):
        return self.mapping.receive()

    def deliver(self, message, gateway=None):
        """One invocation of sweep-worker with `message`, settled as the event source mapping
        does: deleted unless the answer lists it (or the invocation failed). The answer or the
        FunctionError."""
        return self.mapping.deliver(message, self.runtime("SweepWorkerFunction", gateway).invoke)[0]

    def time_passes(self):
        """The visibility timeout of every message received and not deleted passes."""
        self.mapping.time_passes()

    def depth(self, url=None):
        return self.mapping.depth(url)

    def drain(self, rounds=MAX_RECEIVES + 1):
        """Delivers until the queue is empty, the visibility timeout of what failed passing
        between rounds; (deliveries, failed deliveries)."""
        return self.mapping.drain(self.runtime("SweepWorkerFunction").invoke, rounds)

    def purge(self):
        """Empties both queues (a scenario that went wrong must not leave work to the next)."""
        self.mapping.held.clear()
        for url in (self.queue_url, self.dead_url):
            while True:
                got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                               VisibilityTimeout=0).get("Messages", [])
                if not got:
                    break
                for m in got:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        # A message in flight cannot be received: wait for it (the queue's backstop timeout) if any.
        until = time.monotonic() + VISIBILITY + 5
        while self.depth() and time.monotonic() < until:
            time.sleep(1)
            self.purge_visible()

    def purge_visible(self):
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                       VisibilityTimeout=0).get("Messages", [])
        for m in got:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    # -- what the registry holds of a run

    def state(self, name):
        try:
            body = self.obs.s3.get_object(Bucket=self.bucket, Key=f"sweep/{name}")["Body"].read()
        except self.obs.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def slice_result(self, run, index):
        return self.state(f"runs/{run}/slice-{index:05d}.json")

    def run_status(self, run):
        """`s3-key-rotation sweep --status --run RUN --json`: (exit status, the status or the error)."""
        done = subprocess.run([str(TARGET / "s3-key-rotation"), "sweep", "--status", "--run", run, "--json"],
                              env=self.operator_env, capture_output=True, text=True, timeout=60)
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            return done.returncode, done.stderr.strip()[-300:]


# -- the world


def enroll(worker, tag, member):
    worker.orgs += 1
    org = f"{worker.name}-{tag}{worker.orgs}"
    worker.obs.put_log(org)
    cli(worker.member_cli_env if member else worker.cli_env, "enroll", "--org", org, capture=True)
    return org


def new_world(worker):
    """The worker's world, in the state every scenario starts from: H (home) with one key,
    A (first member account) with a current and an inactive previous key, a 7-day
    automatic rotation, due at the world's time; B (second member account) with one key."""
    h = enroll(worker, "h", member=False)
    a, b = enroll(worker, "a", member=True), enroll(worker, "b", member=True)
    accounts = [(worker.obs.record(worker.bucket, org) or {}).get("accountId") for org in (h, a, b)]
    assert accounts == [None, *MEMBERS], f"placed in {accounts}"
    worker.now += timedelta(minutes=15)
    worker.proxy.reset()
    statuses = [worker.rotate(org) for org in (h, a, b)]
    cli(worker.member_cli_env, "policy", "--org", a, "--enable", "--interval", "7d", capture=True)
    day = worker.now.replace(hour=0, minute=0, second=0)
    worker.world = {"h": h, "a": a, "b": b, "at": day + CYCLE + timedelta(hours=12)}
    if any(status != 200 for status, _ in statuses):
        assert disturbed(worker.proxy.log()), statuses
        retire_world(worker)
        return
    first = cycle(worker, ("clean",))  # retires the world if disturbed
    assert not first["problems"] or first["disturbed"], first


def retire_world(worker):
    """Takes the worker's orgs out of its registry and empties its queues: the next
    scenario starts afresh (a day later: a new day's full check)."""
    world = worker.world
    retire(worker, orgs_of(world))
    worker.purge()
    worker.now = world["at"] + 2 * DAY


def orgs_of(world):
    return world["h"], world["a"], world["b"]


# A sweep's refusals of an org (not a failure of its evaluation): another rotation holds the
# claim; a plan made before another rotation committed finds it not due any more.
REFUSED = ("already in progress", "is not due")


def keys_of(record):
    return {field: ((record or {}).get(field) or {}).get("accessKeyId") for field in ("current", "previous")}


class Run:
    """One scheduled run through the worker's functions: the dispatch (and Lambda's retry
    of a failed one), then one pass of the event source mapping over the queue, each
    delivery checked. `who` names the function of each request (by the proxy's count)."""

    def __init__(self, worker, at, event=None, gateway=None):
        self.worker, self.at, self.gateway = worker, at, gateway
        self.event = event or worker.event(at)
        self.who = []  # (first request number, label)
        self.problems = []
        self.dispatches = []  # manifests / FunctionErrors
        self.answers = []  # per delivery: (slice index, answer or FunctionError)
        self.start = {}  # org -> its record when the run started
        self.reported = Counter()  # (run, slice index) -> failures its result reported so far
        self.failed_orgs = {}  # org -> why, as the slices reported it
        self.crashed = []
        self.killed = False
        self.run_id = None

    def mark(self, label):
        self.who.append((self.worker.proxy.count() + 1, label))

    def dispatch(self, retry=True):
        worker = self.worker
        for attempt in (1, 2) if retry else (1,):
            self.mark("disp" if attempt == 1 else "disp(retry)")
            result = worker.dispatch(self.event, self.gateway)
            self.dispatches.append(result)
            if not isinstance(result, FunctionError):
                self.run_id = result["runId"]
                return result
            if "exited with" in str(result):
                self.killed = True
            elif "DispatchFailed" not in str(result):
                self.crashed.append(f"the dispatcher failed: {str(result)[:300]}")
        return None

    def sweep(self, hook=None):
        """One pass over the queue: each message received now, delivered once. `hook(message)`
        may take a delivery over (it returns the answer; a second delivery of the slice may
        then refuse an org another delivery holds)."""
        worker = self.worker
        while (message := worker.receive()) is not None:
            body = json.loads(message["Body"])
            index, run = body["index"], body["runId"]
            self.mark(f"w{index}")
            # What the delivery starts from: the run's start, unless the slice was delivered before.
            again = any(i == index for i, _ in self.answers)
            records = {org: worker.obs.record(worker.bucket, org) if again or org not in self.start
                       else self.start[org] for org in body["orgs"]}
            answer = hook(message) if hook else worker.deliver(message)
            self.answers.append((index, answer))
            if isinstance(answer, FunctionError):
                if "exited with" in str(answer):
                    self.killed = True
                else:
                    self.crashed.append(f"sweep-worker failed on slice {index}: {str(answer)[:300]}")
            after = (worker.slice_result(run, index) or {}).get("summary", {}).get("failed", [])
            before, self.reported[(run, index)] = self.reported[(run, index)], len(after)
            # An org whose evaluation failed in this delivery keeps its keys as they were.
            for failure in after[before:]:
                org = failure["orgId"]
                self.failed_orgs[org] = failure["reason"]
                now = worker.obs.record(worker.bucket, org)
                if hook and any(words in failure["reason"] for words in REFUSED):
                    continue  # another delivery of the slice held the org, or had rotated it
                if org in records and keys_of(now) != keys_of(records[org]):
                    self.problems.append(f"{org} failed ({failure['reason'][:200]}), but its keys changed: "
                                         f"{keys_of(records[org])} -> {keys_of(now)}")

    def outcome(self):
        """The run's word in the matrix."""
        dispatches = self.dispatches
        if self.crashed:
            return "crash"
        if self.killed:
            return "killed"
        if not any(isinstance(d, dict) for d in dispatches):
            return "nostart"
        if len(dispatches) > 1:
            return "retried"
        if any(isinstance(a, dict) and a.get("batchItemFailures") for _, a in self.answers):
            return "redo"
        if self.failed_orgs:
            refused = all(any(w in why for w in REFUSED) for why in self.failed_orgs.values())
            return "busy" if refused else "failed"
        slices = len(dispatches[-1]["slices"])
        if len(self.answers) > slices:
            return "dup"
        return "ok"

    def labels(self, log):
        """`w1 sts:AssumeRole`: each request of the log with the function that made it."""
        out = []
        marks = sorted(self.who)
        for entry in log:
            label = next((name for n, name in reversed(marks) if n <= entry["n"]), "?")
            where = entry["detail"].split("/", 1)[1] if entry["kind"].startswith("s3:") and "/" in entry["detail"] \
                else ""
            out.append(f"{label} {entry['kind']}{' ' + where if where else ''}")
        return out


def unfinished(status):
    """Why a run's status (the manifest and its slices' results) is not finished, or None."""
    results = {r["index"]: r for r in status["results"]}
    waiting = [s["index"] for s in status["manifest"]["slices"] if s["index"] not in results]
    failing = [(i, r.get("error")) for i, r in results.items() if not r["complete"]]
    return f"waiting {waiting}, failing {failing}" if waiting or failing else None


def stored_status(worker, run):
    """A run's manifest and slice results, read from the registry."""
    manifest = worker.state(f"runs/{run}/manifest.json")
    results = [worker.slice_result(run, s["index"]) for s in manifest["slices"]]
    return {"manifest": manifest, "results": [r for r in results if r]}


def check_settled(worker, world, run_id, next_run, start_versions):
    """After the redeliveries and the next run: (problems of invariants, where it has not
    converged). `run_id`: the faulted run's (None: it never dispatched)."""
    problems, state = [], []
    if run_id:
        status = stored_status(worker, run_id)
        if unfinished(status):
            state.append(f"the run {run_id} did not finish: {unfinished(status)}")
        mismatches = [m for r in status["results"] for m in r["summary"]["mismatches"]]
        if mismatches:
            problems.append(f"the run reported {[m['reason'][:200] for m in mismatches]}")
    problems += [f"the next run: {p}" for p in next_run.crashed]
    if not next_run.run_id:
        state.append("the next run was not dispatched")
    else:
        code, status = worker.run_status(next_run.run_id)
        if not isinstance(status, dict):
            state.append(f"sweep --status --run {next_run.run_id}: exit {code}: {status}")
        else:
            if unfinished(status):
                state.append(f"the next run did not finish: {unfinished(status)}")
            if code != 0 or status["total"]["failed"]:
                state.append(f"sweep --status of the next run: exit {code}, failed "
                             f"{[(f['orgId'], f['reason'][:200]) for f in status['total']['failed']]}")
            if status["total"]["orgsSeen"] != 3:
                state.append(f"the next run saw {status['total']['orgsSeen']} orgs of 3")
            if status["total"]["mismatches"]:
                problems.append(f"the next run reported {[m['reason'][:200] for m in status['total']['mismatches']]}")
    if worker.depth(worker.dead_url):
        state.append(f"{worker.depth(worker.dead_url)} slice(s) in the dead-letter queue")
    h, a, b = orgs_of(world)
    for org in (h, a, b):
        snap = Snapshot(worker, org)
        record = snap.record
        state += [f"{org}: {p}" for p in converged(snap)]
        problems += [f"{org} at the end: {p}" for p in holds(snap)]
        version = (record.get("current") or {}).get("version", 0)
        moved = version - start_versions[org]
        if org == a and moved != 1:
            (problems if moved > 1 else state).append(f"{org}: the due rotation happened {moved} times")
        if org != a and moved:
            problems.append(f"{org}: rotated {moved} times, nothing was due")
        if org == h and not (record.get("previous") or {}).get("deactivatedAt"):
            state.append(f"{org}: the previous key was not retired")
    return problems, state


def cycle(worker, spec):
    """One scenario, `spec`: ("clean",); (k, kind, persist): a fault at the k-th request of
    the run; ("kill", k, when): SIGKILL at the k-th request ("before" it reaches AWS or
    "after"); ("twice", k): the A slice delivered again while its first delivery holds its
    k-th request (k 0: both at once, unpaused); ("disp", k, sweep): the dispatcher invoked
    again with the same event while the first holds its k-th request (k 0: after the run
    finished), and with `sweep` the second's slices swept then too. Then the redeliveries
    and the next run, an hour later, without faults."""
    world = worker.world
    h, a, b = orgs_of(world)
    at = world["at"]
    obs = worker.obs
    worker.now = at - timedelta(hours=1)
    worker.proxy.reset()
    status, body = worker.rotate(h, grace="60s")
    setup_log = worker.proxy.log()
    assert status == 200 or disturbed(setup_log), body
    start = {org: obs.record(worker.bucket, org) for org in (h, a, b)}
    start_versions = {org: (r.get("current") or {}).get("version", 0) for org, r in start.items()}
    worker.cold()
    family = spec[0] if isinstance(spec[0], str) else "fault"
    paused = family in ("twice", "disp") and spec[1]
    run = Run(worker, at, gateway=worker.patient if paused else None)
    run.start = start
    k, kind, persist, extra = 0, "none", False, None
    seen = {}
    second_logs = []
    if family == "fault":
        k, kind, persist = spec
        worker.proxy.arm(k, kind, persist)
    elif family == "kill":
        k, kind, extra = spec[1], "kill", spec[2]
        worker.proxy.arm(k, "close" if extra == "before" else "lost", hook=worker.kill_running)
    else:
        worker.proxy.reset()
    second = worker.second_functions() if family in ("twice", "disp") else None
    if second is not None:
        worker.second_proxy.reset()

    if family == "twice":
        k = spec[1]
        kind = "twice"

        def take_over(message):
            body = json.loads(message["Body"])
            if body.get("account") != MEMBERS[0]:
                return worker.deliver(message)
            # The same message received again (its visibility ended early): a second delivery.
            worker.sqs.change_message_visibility(QueueUrl=worker.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                                 VisibilityTimeout=0)
            again = worker.receive()
            assert again and again["MessageId"] == message["MessageId"], again

            def second_delivery():
                try:
                    seen["second"] = worker.deliver(again, gateway=second)
                    seen["second_result"] = worker.slice_result(body["runId"], body["index"])
                    seen["after"] = holds_all(worker, world, "after the second delivery")
                except BaseException as e:  # noqa: BLE001 -- reported with the scenario
                    seen["error"] = e

            if k:
                worker.proxy.arm(k, None, hook=second_delivery)
                first = worker.deliver(message, gateway=worker.patient)
            else:
                worker.proxy.reset()
                thread = threading.Thread(target=second_delivery)
                thread.start()
                first = worker.deliver(message)
                thread.join()
            seen["first_log"] = worker.proxy.log()
            seen["first_result"] = worker.slice_result(body["runId"], body["index"])
            return first

        run.dispatch()
        run.sweep(hook=take_over)
    elif family == "disp":
        k, with_sweep = spec[1], spec[2]
        kind = "disp+sweep" if with_sweep else "disp"

        def second_dispatch():
            try:
                seen["second"] = worker.dispatch(run.event, gateway=second)
                if with_sweep:
                    seen["swept"] = worker.drain(rounds=1)
                seen["after"] = holds_all(worker, world, "after the second dispatch")
            except BaseException as e:  # noqa: BLE001
                seen["error"] = e

        if k:
            worker.proxy.arm(k, None, hook=second_dispatch)
            run.dispatch()
        else:
            run.dispatch()
            run.sweep()
            second_dispatch()
        run.sweep()
    else:
        run.dispatch()
        run.sweep()
    log = worker.proxy.log()
    worker.proxy.reset()
    if second is not None:
        second_logs.append(worker.second_proxy.log())
    if "error" in seen:
        raise seen["error"]
    problems = list(run.problems) + run.crashed + seen.get("after", [])
    if family in ("twice", "disp") and k and "second" not in seen:
        problems.append(f"the first never reached its request {k}")
    if family == "twice":
        seen["did"] = f"{did(seen.get('first_result'), a, seen.get('second_result'))}/" \
                      f"{did(seen.get('second_result'), a)}"
    # The run is the first of its day: it checks every org in full, and its manifest says so.
    manifest = worker.state(f"runs/{run.run_id}/manifest.json") if run.run_id else None
    if manifest and not manifest["fullCheck"]:
        problems.append(f"the run's manifest says fullCheck false (the day's first run; its slices said "
                        f"{sorted({r['summary']['fullCheck'] for r in stored_status(worker, run.run_id)['results']})})")
    if isinstance(seen.get("second"), FunctionError):
        problems.append(f"the second invocation failed: {str(seen['second'])[:300]}")
    problems += holds_all(worker, world, "after the run")

    # A killed worker's claim is over (real clock) by the time its message comes back.
    if family == "kill":
        worker.wait_out_claims((h, a, b))
    redelivered = worker.drain()
    run_ids = [run.run_id] if run.run_id else []
    # The next run of the schedule, an hour later, without faults.
    next_run = Run(worker, at + HOUR)
    next_run.dispatch(retry=False)
    next_deliveries = worker.drain()
    more, state = check_settled(worker, world, run.run_id, next_run, start_versions)
    problems += more
    world["at"] = at + CYCLE

    logs = [setup_log, log, worker.proxy.log(), *second_logs]
    first_log = seen.get("first_log", log)
    ops = worker.ops_of.get(family) if k else None
    load = ("an SDK retry nobody provoked" if any(unprovoked(log) for log in logs)
            else "its requests before the k-th were not the clean run's" if k and ops and diverged(first_log, ops, k)
            else None)
    if load:
        worker.disturbances[load] += 1
    if problems or state or load:
        retire_world(worker)
    else:
        worker.purge_visible()
    op = run.labels(log)[k - 1] if family in ("fault", "kill") and 0 < k <= len(log) else \
        first_log[k - 1]["kind"] if 0 < k <= len(first_log) else "(not reached)" if k else "-"
    when = f" {extra}" if family == "kill" else ""
    label = f"k={k} {op} {kind}{'+' if persist else ''}{when}"
    return {"k": k, "kind": kind, "persist": persist, "when": extra if family == "kill" else None, "label": label,
            "family": family, "op": op, "outcome": run.outcome(), "converged": not state, "state": state,
            "problems": problems, "disturbed": load, "ops": [e["kind"] for e in log], "labels": run.labels(log),
            "first_ops": [e["kind"] for e in first_log], "redelivered": redelivered, "next": next_deliveries,
            "second": seen.get("second"), "swept": seen.get("swept"), "who": run.who, "did": seen.get("did")}


def unprovoked(log):
    """The retries in `log` that no fault provoked (an SDK attempt timed out on a loaded
    machine), as `fault_proxy.unprovoked_retries` finds them, but for one kind: a call whose
    first attempts never reached the proxy because its credentials could not be had (the
    member role's AssumeRole faulted, in the SDK's credentials provider) retries, provoked."""
    last_fault = {}
    sts_faulted = False
    out = []
    for entry in log:
        number = re.search(r"attempt=(\d+)", entry["attempt"] or "")
        key = entry["invocation"]
        if number and int(number.group(1)) > 1 and key and not last_fault.get(key) \
                and not (sts_faulted and key not in last_fault):
            out.append(entry)
        last_fault[key] = entry["fault"]
        sts_faulted |= entry["kind"].startswith("sts:") and bool(entry["fault"])
    return out


def did(result, org, other=None):
    """What a delivery did to `org`, from the slice result it wrote: rot (rotated), busy
    (refused: a claim held), undue (no longer due), fail, - (nothing); skip: it wrote nothing
    (its result is `other`, the other delivery's: the slice was finished)."""
    if result is None:
        return "?"
    if other is not None and result == other:
        return "skip"
    summary = result["summary"]
    if org in summary["rotated"]:
        return "rot"
    why = next((f["reason"] for f in summary["failed"] if f["orgId"] == org), None)
    if why is None:
        return "-"
    return "busy" if REFUSED[0] in why else "undue" if REFUSED[1] in why else "fail"


def holds_all(worker, world, moment):
    problems = []
    for org in orgs_of(world):
        problems += [f"{org} {moment}: {p}" for p in holds(Snapshot(worker, org))]
    return problems


def scenario(worker, spec):
    settle(worker, new_world)
    return cycle(worker, spec)


def twice_cell(result):
    """What each delivery did to A (first/second), '~' / '!' as in `cell`."""
    return f"{result['did']}{'' if result['converged'] else '~'}{'!' if result['problems'] else ''}"


def writes(kind):
    """Whether a request (`service:Operation`) changes what AWS holds: `lost` (applied, the answer
    lost) then differs from `close` (never reached AWS). STS AssumeRole keeps nothing."""
    service, operation = kind.split(":", 1)
    if service == "s3":
        return operation in ("PutObject", "DeleteObject", "CopyObject", "PostObject", "DeleteObjects")
    return service != "sts" and operation.startswith(("Create", "Update", "Delete", "Put", "Tag", "Untag",
                                                      "Send", "Change", "Restore", "Attach", "Detach"))


SHORT = {"same": "=", "ok": "ok", "failed": "fail", "busy": "busy", "redo": "redo", "retried": "rtry", "nostart": "nost",
         "dup": "dup", "killed": "kill", "crash": "CRASH"}.get
# WIRE_FAN=fault,kill: only these families of scenarios (while working on them).
FAMILIES = [f for f in ("fault", "kill", "twice", "disp")
            if f in os.environ.get("WIRE_FAN", "fault,kill,twice,disp").split(",")]


def test_the_fanned_out_sweep_under_wire_faults_kills_double_deliveries_and_a_retried_dispatcher(stack, capsys):
    started = time.monotonic()
    workers = [FanWorker(stack, f"f{i}") for i in range(WORKERS)]
    try:
        # A clean run, from the state every scenario starts from, counts N.
        clean = clean_run(lambda: scenario(workers[0], ("clean",)))
        assert clean["outcome"] == "ok" and not clean["problems"] and clean["converged"] and not clean["disturbed"], \
            clean
        ops, labels = clean["ops"], clean["labels"]
        n = len(ops)
        disp_ops = [o for o, l in zip(ops, labels) if l.startswith("disp")]
        a_slice = next(label for label in dict.fromkeys(l.split()[0] for l in labels)
                       if label.startswith("w") and any(l.startswith(label + " iam:") for l in labels)
                       and any(l.startswith(label + " sts:") for l in labels))
        twice_ops = [o for o, l in zip(ops, labels) if l.split()[0] == a_slice]
        for w in workers:
            w.ops_of = {"fault": ops, "kill": ops, "disp": disp_ops, "twice": twice_ops}
        with capsys.disabled():
            print(f"\nclean run: {n} requests ({len(disp_ops)} the dispatcher's, {len(twice_ops)} the A slice's); "
                  f"{elapsed(started)}")
        columns = [(kind, True) for kind in KINDS if FULL or kind != "stall"]
        columns += [(kind, False) for kind in KINDS if FULL or kind == "lost"]
        scenarios = []
        rng = random.Random(SEED)
        kills = [("kill", k, rng.choice(["before", "after"])) for k in sorted(rng.sample(range(1, n + 1), KILL_POINTS))]
        if "fault" in FAMILIES:
            scenarios += fault_scenarios(columns, n, keep=lambda k, kind, persist: FULL or (kind, persist) != (
                "lost", True) or writes(ops[k - 1]))
        if "kill" in FAMILIES:
            # The longest (each waits out a lease, idle): early, spread among the others so that
            # few workers wait at once.
            step = max(1, len(scenarios) // (2 * len(kills)))
            for i, kill in enumerate(kills):
                scenarios.insert(i * (step + 1), kill)
        if "disp" in FAMILIES:
            scenarios += [("disp", k, sweep) for sweep in (True, False) for k in range(1, len(disp_ops) + 1)]
            scenarios += [("disp", 0, True)]
        if "twice" in FAMILIES:
            scenarios += [("twice", k) for k in range(1, len(twice_ops) + 1)] + [("twice", 0)] * RACES
        results = run_parallel(workers, scenarios, scenario)
    finally:
        close_all(workers)

    faults = [r for r in results if r["family"] == "fault"]
    # `lost+` on a read is `close+` to the client (no answer, every attempt) and AWS kept nothing of it.
    same = [{"k": k, "kind": "lost", "persist": True, "outcome": "same", "converged": True, "problems": [],
             "label": f"k={k} lost+ (a read: as close+)"}
            for k in range(1, n + 1) if faults and ("lost", True) in columns and not FULL and not writes(ops[k - 1])]
    notes = [
        "cell: = (lost+ on a read: to the client the same as close+, and AWS kept nothing: not run again) / ok / fail (an org's evaluation failed, reported in its slice) / redo (a slice reported back for "
        "redelivery) / rtry (the dispatch failed; Lambda's retry, the same event, dispatched) / dup (a slice "
        "delivered more than once) / busy (an org refused: another delivery held it) / kill / CRASH; "
        "'~' not converged after the redeliveries and the next run; '!' an invariant broke",
    ]
    kill_results = [r for r in results if r["family"] == "kill"]
    if kill_results:
        notes.append("SIGKILL of the function making the k-th request (a killed worker's message comes back after "
                     "its visibility timeout, once the lease is waited out; a killed dispatcher is retried): "
                     + ", ".join(f"k={r['k']} {r['op']} {r['when']}: {cell(r, SHORT)}" for r in kill_results))
    twice = {r["k"]: r for r in results if r["family"] == "twice" and r["k"]}
    if twice:
        notes.append(table(f"the {a_slice} slice (A's due rotation) delivered again while its first delivery holds "
                           "its k-th request; the second delivery runs to its end in the pause. Cell: what each "
                           "did to A: rot, busy (refused: the other's claim), undue (no longer due), - (nothing), "
                           "skip (the slice's result said finished)",
                           ["k", "first delivery's request", "first/second"],
                           [[k, op, twice_cell(twice[k]) if k in twice else "?"]
                            for k, op in enumerate(twice_ops, 1)]))
    races = [r for r in results if r["family"] == "twice" and not r["k"]]
    if races:
        notes.append("both deliveries at once, unpaused: " + ", ".join(twice_cell(r) for r in races))
    disp = {(r["k"], r["kind"]): r for r in results if r["family"] == "disp" and r["k"]}
    if disp:
        notes.append(table("the dispatcher invoked again with the same event (the same run) while the first holds "
                           "its k-th request: disp (the second dispatches), disp+sweep (and its slices are swept)",
                           ["k", "first dispatcher's request", "disp", "disp+sweep"],
                           [[k, op, *[cell(disp[(k, kind)], SHORT) if (k, kind) in disp else "?"
                                      for kind in ("disp", "disp+sweep")]] for k, op in enumerate(disp_ops, 1)]))
    late = [r for r in results if r["family"] == "disp" and not r["k"]]
    if late:
        notes.append("the dispatcher retried after its run finished: " + ", ".join(cell(r, SHORT) for r in late))
    why = sum((w.disturbances for w in workers), Counter())
    notes.append(f"disturbed by machine load, run again: {', '.join(f'{n}x {r}' for r, n in why.items()) or 'never'}")
    not_converged = [f"{r['label']}: {r['state'][:3]}" for r in results if r["state"]]
    notes += [f"NOT CONVERGED {line}" for line in not_converged]
    report("fanout", started,
           f"the fanned-out sweep under wire faults: {n} requests (the dispatcher, then each slice's sweep-worker) "
           f"x {len(columns)} fault columns ('+' every retry) = {len(faults)} runs, {len(kill_results)} SIGKILLs "
           f"(seed {SEED}), {len(twice) + len(races)} double deliveries, {len(disp) + len(late)} double dispatches; "
           f"{WORKERS} workers", clean["labels"], columns if faults else [], results + same, notes, capsys, SHORT,
           complete=FAMILIES == ["fault", "kill", "twice", "disp"])
    assert not not_converged, "\n".join(not_converged)
