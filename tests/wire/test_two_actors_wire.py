"""Two actors on the wire (issue 19, item 4): a second actor acts at the k-th
request of the first one's run, for every k of the first actor's clean run.

The first actor runs through the worker's proxy; a pause there (`arm(k, None,
hook=...)`) holds its k-th request back while the second actor runs to its end
through functions of its own (other processes, another proxy, so that the first
proxy's count stays the first actor's), then lets it go on. Actors:

- `api`: rotate-key through HTTP (no grace period, no Idempotency-Key);
- `idem`: rotate-key with an Idempotency-Key (both actors of a pair: the same key);
- `sched`: scheduled-rotation, an EventBridge event at its `time`;
- `cli`: an operator's sweep, `s3-key-rotation sweep --at <time>`.

The first actor acts at the scenario's time T; the second at T (`same`), a day
later (`later`: an operator's `sweep --at <tomorrow>`, a later scheduled run) or
90 minutes earlier (`old`: a redelivered slice's time). The org starts from the same
state in every scenario: its key rotated by rotate-key at T-7d-2h (a current and an
inactive previous key), a 7-day automatic rotation due since T-2h, so that a sweep
at any of these times finds it due (`-manual` pairs: automatic rotation off, a sweep
has nothing to do but repair); an automatic rotation keeps the previous key active
for ROTATION_GRACE_PERIOD (24 h).

A claim's lease is judged on the real clock, never on a run's time
(docs/architecture.md, "The time model"): an actor at a later time must not take over a
live claim. No scenario waits for a lease to expire.

Invariants, checked while the first actor is paused (before and after the second
one) and once both are done:
- the org holds a working key it knows: the vault's current key works (and, at the
  end, the record's current key has its secret in the vault and works);
- IAM never holds more than two keys of the org;
- any 200's key works: the second actor's right after its answer (and at the end,
  unless the first actor's later rotate-key replaced it), the first actor's at the
  end, and it is the record's current key;
- every promised grace period holds: a previous key that a committed rotation
  keeps active until `retireAt` is still Active in IAM while the latest actor time
  is before `retireAt`, unless a later rotate-key took its place (the org asked for
  a new key; IAM's 2-key quota leaves no room for three);
- a due rotation happens once: at most one sweep rotates, and only as the scenario's
  first rotation (after any rotation the key is not due at any of its times; never
  without automatic rotation); the version moves by the rotations the actors report
  (API answers with distinct keys, sweeps' `rotated`), and by at least one; with one
  Idempotency-Key, one rotation and one key;
- the vault's current secret is the record's current key, no claim is left, IAM
  holds exactly the keys the record names, in the states it says (`~` when not).
A refusal is fine: 409 from rotate-key, a sweep reporting the org's rotation
"already in progress" (`busy`) or "not due" (`undue`: planned before another rotation
committed). Any other failure of an actor, or a mismatch a sweep reports, is a problem.
"""
import json
import os
import re
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from harness import (WORKERS, FaultProxy, FunctionError, Snapshot, Worker, cli, close_all, converged, current_id,
                     disturbed, diverged, elapsed, retire, run_parallel, settle, stack_fixture, table)
from local_aws import TARGET

DAY = timedelta(days=1)
WHEN = {"same": timedelta(0), "later": DAY, "old": -timedelta(minutes=90)}
# From one scenario to the next: the next one's rotate-key (7 days and 2 hours before its
# time) comes after every actor of the last one (at most a day after its time).
CYCLE = timedelta(days=9)
# The first actor's request waits while the second acts: the SDK must wait for it too.
ATTEMPT_TIMEOUT, OPERATION_TIMEOUT = 20, 25
ENV = {"VERIFY_WITHIN": "3s"}  # a key deleted under a rotation fails its check in seconds, not 20
ACTORS = {
    "api": "rotate-key",
    "idem": "rotate-key with an Idempotency-Key",
    "sched": "scheduled-rotation",
    "cli": "s3-key-rotation sweep --at",
}
SWEEPS = ("sched", "cli")
# (first, second, the second's time, automatic rotation on): each is a column of its first
# actor's matrix. Without automatic rotation ("-manual": the org's policy is off) a sweep
# at a later time has nothing to do but repair what it takes for an interrupted rotation.
PAIRS = [
    ("api", "sched", "same", True),
    ("api", "sched", "later", True),
    ("api", "sched", "old", True),
    ("api", "cli", "later", False),
    ("api", "api", "same", True),
    ("idem", "idem", "same", True),
    ("sched", "api", "same", True),
    ("sched", "api", "later", True),
    ("sched", "sched", "same", True),
    ("sched", "sched", "later", True),
    ("sched", "sched", "old", True),
    ("cli", "sched", "same", True),
]


def name(pair):
    first, second, when, automatic = pair
    return f"{first}/{second}@{when}{'' if automatic else '-manual'}"


# WIRE_PAIRS=api/sched@later,sched/sched@same: only these pairs (while working on them).
PAIRS = [p for p in PAIRS if name(p) in os.environ.get("WIRE_PAIRS", "").split(",")] or PAIRS


stack = stack_fixture("wire-two-actors")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_worker(stack, name):
    """A worker whose functions wait long for AWS, with a second set of functions (and
    a proxy that only counts) for the second actor, and the CLI's environment for each."""
    worker = Worker(stack, name, attempt_timeout=ATTEMPT_TIMEOUT, operation_timeout=OPERATION_TIMEOUT, **ENV)
    worker.second_proxy = FaultProxy(stack.aws.port)
    worker.second_now = worker.now
    worker.second = worker.functions(worker.second_proxy.endpoint, lambda: worker.second_now, "second")
    # The operator's CLI with the scheduled run's settings, through either proxy.
    settings = dict(worker.function_env, **worker.deployment.functions["ScheduledRotationFunction"].environment)
    worker.cli_through = {False: dict(settings, AWS_ENDPOINT_URL=worker.proxy.endpoint),
                          True: dict(settings, AWS_ENDPOINT_URL=worker.second_proxy.endpoint)}
    worker.disturbances = Counter()  # why scenarios ran again
    for gateway in (worker.gateway, worker.second):
        for function in ("RotateKeyFunction", "ScheduledRotationFunction"):
            gateway.runtimes[function].warm()
    return worker


def close(worker):
    worker.second.close()
    worker.second_proxy.close()
    worker.close()


def new_org(worker):
    """An org rotated once, its automatic rotation on (every 7 days), and the time of the
    worker's next scenario."""
    org = worker.new_org("t")
    worker.now += timedelta(minutes=15)
    worker.proxy.reset()
    status, body = worker.rotate(org)
    if status != 200:
        assert disturbed(worker.proxy.log()), body
        retire(worker, (org,))
        return
    cli(worker.cli_env, "policy", "--org", org, "--enable", "--interval", "7d", capture=True)
    worker.world = org
    worker.at = worker.now.replace(hour=12, minute=0, second=0) + CYCLE


def start_of_scenario(worker, automatic):
    """Brings the worker's org to the state every scenario starts from: its key rotated by
    rotate-key 7 days and 2 hours before the scenario's time (what that leaves for the
    next sweep not done yet: two audit entries, the deactivation's confirmation), the
    one before it deactivated, a 7-day automatic rotation due from 2 hours before the
    scenario's time (`automatic` False: automatic rotation off). The same state each
    time: a first actor's requests are the same in every scenario. False (the org
    retired) if the machine's load disturbed it."""
    record = worker.obs.record(worker.bucket, worker.world)
    if record["policy"].get("automatic", False) != automatic:
        switch = ["--enable", "--interval", "7d"] if automatic else ["--disable"]
        cli(worker.cli_env, "policy", "--org", worker.world, *switch, capture=True)
    # What a rotate-key left for the next sweep (the setup's, the last scenario's) is done
    # first, so that the rotation below leaves the same each time.
    record = worker.obs.record(worker.bucket, worker.world)
    if record.get("auditOutbox") or (record.get("previous") or {}).get("deactivationUnconfirmed"):
        summary = worker.sweep(worker.at - timedelta(days=7, hours=3))
        assert not isinstance(summary, FunctionError) and not summary["failed"], summary
    worker.now = worker.at - timedelta(days=7, hours=2)
    worker.proxy.reset()
    status, body = worker.rotate(worker.world)
    if status == 200:
        return True
    assert disturbed(worker.proxy.log()), body
    retire(worker, (worker.world,))
    return False


def settle_org(worker, automatic=True):
    """The worker's org, in the state every scenario starts from (`start_of_scenario`)."""
    return settle(worker, new_org, lambda w: start_of_scenario(w, automatic), what="org")


# A sweep's refusals of an org, the summary's words for them (not a failure): a rotation
# holds the claim; a plan made before another rotation committed finds it not due any more.
REFUSED = {"already in progress": "busy", "is not due": "undue"}


def act(worker, actor, org, at, second):
    """Runs one actor at time `at` (the second actor: through its own functions and
    proxy); returns its outcome: `short` (the matrix's word), `key` (a 200's id and
    secret), `version`, `rotated` (a sweep's), `problems`."""
    label = f"{'the second' if second else 'the first'} actor ({actor} at {iso(at)})"
    out = {"actor": actor, "at": at, "key": None, "version": None, "rotated": False, "problems": []}
    if actor in ("api", "idem"):
        if second:
            worker.second_now = at
        else:
            worker.now = at
        status, body = worker.rotate(org, idempotency_key=worker.idem if actor == "idem" else None,
                                     gateway=worker.second if second else None)
        out["short"] = str(status)
        if status == 200:
            out["key"] = (body["accessKeyId"], body["secretAccessKey"])
            out["version"] = body["keyVersion"]
        elif status != 409:
            out["problems"].append(f"{label}: HTTP {status}: {body.get('error', body)}")
        return out
    if actor == "sched":
        summary = worker.sweep(at, gateway=worker.second if second else None)
        if isinstance(summary, FunctionError):
            out["short"] = "ERR"
            out["problems"].append(f"{label}: the function failed: {str(summary)[:300]}")
            return out
    else:
        run = subprocess.run([str(TARGET / "s3-key-rotation"), "sweep", "--at", iso(at)],
                             env=worker.cli_through[second], capture_output=True, text=True, timeout=120)
        try:
            summary = json.loads(run.stdout)
        except ValueError:
            out["short"] = "ERR"
            out["problems"].append(f"{label}: exit {run.returncode}: {run.stderr.strip()[-300:]}")
            return out
    failed = [f["reason"] for f in summary["failed"] if f["orgId"] == org]
    out["rotated"] = org in summary["rotated"]
    out["short"] = "rot" if out["rotated"] else "-"
    refusal = next((word for words, word in REFUSED.items() if failed and words in failed[0]), None)
    if refusal:
        out["short"] = refusal
    elif failed:
        out["short"] = "fail"
        out["problems"].append(f"{label}: the org failed: {failed[0]}")
    mismatches = [m["reason"] for m in summary["mismatches"] if m["orgId"] == org]
    if mismatches:
        out["problems"].append(f"{label} reported mismatches: {mismatches}")
    return out


def holds(snap, moment):
    """What must hold at every step: the org holds a working key it knows (the vault's
    current one; the record's current one, its secret in the vault), IAM holds at most
    two keys. Its problems."""
    problems = []
    if len(snap.keys) > 2:
        problems.append(f"{moment}: IAM holds {len(snap.keys)} keys")
    if not snap.works(snap.vault):
        problems.append(f"{moment}: the vault's current key {(snap.vault or (None,))[0]} does not work: "
                        "the org holds no working key it knows")
    known = snap.vault_of_current()
    if known is None:
        problems.append(f"{moment}: the record's current key {current_id(snap.record)} has no secret in the vault")
    elif not snap.works(known):
        problems.append(f"{moment}: the record's current key {known[0]} does not work")
    return problems


def glance(worker, org, moment):
    """(snapshot, problems) of the org now."""
    snap = Snapshot(worker, org)
    return snap, holds(snap, moment)


def promises(record):
    """The grace period a record promises: (previous key id, retireAt, the current version), or None."""
    previous = (record or {}).get("previous")
    if previous and not previous.get("deactivatedAt"):
        return previous["accessKeyId"], previous["retireAt"], record["current"]["version"]
    return None


def scenario(worker, spec):
    """One scenario: `spec` = (first, second, when, automatic, k); k=0 and second None:
    the first actor's clean run, which counts its requests."""
    first, second, when, automatic, k = spec
    org = settle_org(worker, automatic)
    at = worker.at
    at2 = at + WHEN[when] if second else at
    worker.idem = f"idem-{uuid.uuid4().hex}"
    start = worker.obs.record(worker.bucket, org)
    seen = {}

    def hook():  # the first actor's k-th request waits for this
        try:
            seen["before"], seen["before_problems"] = glance(worker, org, f"at k={k}, before the second actor")
            seen["second"] = act(worker, second, org, at2, second=True)
            seen["after"], seen["after_problems"] = glance(worker, org, f"at k={k}, after the second actor")
        except BaseException as e:  # noqa: BLE001 -- reported with the scenario
            seen["error"] = e

    worker.second_proxy.reset()
    if k:
        worker.proxy.arm(k, None, hook=hook)
    else:
        worker.proxy.reset()
    one = act(worker, first, org, at, second=False)
    log, log2 = worker.proxy.log(), worker.second_proxy.log()
    worker.proxy.reset()
    if "error" in seen:
        raise seen["error"]
    two = seen.get("second")
    end = Snapshot(worker, org)
    problems = list(one["problems"])
    if two:
        problems += two["problems"] + seen["before_problems"] + seen["after_problems"]
    latest = max(at, at2)

    # Any 200's key works.
    if two and two["key"]:
        after = seen["after"]
        if not after.works(two["key"]):
            problems.append(f"the second actor's 200 key {two['key'][0]} does not work right after its answer")
        elif current_id(after.record) != two["key"][0]:
            problems.append(f"right after the second actor's 200 with key {two['key'][0]}, the record's current key "
                            f"is {current_id(after.record)}")
        replaced = one["key"] is not None and one["key"][0] != two["key"][0]
        if not replaced and not end.works(two["key"]):
            problems.append(f"the second actor's 200 key {two['key'][0]} does not work at the end "
                            f"(IAM: {end.keys.get(two['key'][0], 'deleted')})")
    # A 200's key works until a later rotation replaces it: two admins rotating at once,
    # the later commit wins (its rotation retires the first's key, as any rotation does).
    superseded = bool(one["key"] and two and two["key"] and two["version"] > one["version"])
    if one["key"] and not superseded:
        if not end.works(one["key"]):
            problems.append(f"the first actor answered 200 with key {one['key'][0]}, which does not work "
                            f"(IAM: {end.keys.get(one['key'][0], 'deleted')})")
        if current_id(end.record) != one["key"][0]:
            problems.append(f"the first actor answered 200 with key {one['key'][0]}, but the record's current key "
                            f"is {current_id(end.record)}")

    # The org holds a working key it knows; never more than two IAM keys.
    problems += holds(end, "at the end")

    # Every promised grace period holds.
    apis = [o for o in (one, two) if o and o["key"]]
    snaps = [s for s in (seen.get("before"), seen.get("after"), end) if s]
    for key_id, retire_at, version in {p for p in (promises(s.record) for s in snaps) if p}:
        if iso(latest) >= retire_at:
            continue
        if any(o["version"] > version for o in apis):
            continue  # a later rotate-key took its place
        if end.keys.get(key_id) != "Active":
            problems.append(f"the previous key {key_id} was promised to stay active until {retire_at} (version "
                            f"{version}'s rotation), but at {iso(latest)} it is {end.keys.get(key_id, 'deleted')} "
                            "in IAM")

    # A due rotation happens once: by the first rotation of the scenario (any later
    # rotation makes it not due at any of the scenario's times).
    v0 = (start.get("current") or {}).get("version", 0)
    delta = (end.record.get("current") or {}).get("version", 0) - v0
    sweeps = sum(o["rotated"] for o in (one, two) if o)
    keys = {o["key"][0]: o["version"] for o in apis}
    if sweeps > 1:
        problems.append(f"the due rotation happened {sweeps} times (version +{delta})")
    if delta != len(keys) + sweeps:
        problems.append(f"version +{delta}, but the actors report {len(keys)} rotate-key rotation(s) and {sweeps} "
                        "automatic one(s)")
    elif sweeps == 1 and v0 + 1 in keys.values():
        by_sweep = min(set(range(v0 + 1, v0 + delta + 1)) - set(keys.values()))
        problems.append(f"an automatic rotation (version {by_sweep}) followed rotate-key's (version {v0 + 1}), "
                        "when none was due any more: the due rotation happened twice")
    if sweeps and not automatic:
        problems.append("a sweep rotated the key of an org whose automatic rotation is off")
    if delta < 1:
        problems.append("nothing rotated")
    if first == "idem" and two and (len(keys) > 1 or delta > 1):
        problems.append(f"one Idempotency-Key, {len(keys)} keys handed out and version +{delta}")

    # Settled: the vault's current secret is the record's current key; no claim left.
    state = converged(end)
    problems += [f"at the end: {s}" for s in state]

    load = ("an SDK retry nobody provoked" if disturbed(log, log2)
            else "the run ended before its k-th request" if k and two is None
            else "its requests before the k-th were not the clean run's" if k and diverged(log, worker.ops[first], k)
            else None)
    if load:
        worker.disturbances[load] += 1
        if os.environ.get("WIRE_DEBUG"):
            with open(os.environ["WIRE_DEBUG"], "a") as f:
                f.write(json.dumps({"spec": spec, "load": load, "ops": [e["kind"] for e in log],
                                    "clean": worker.ops.get(first) if k else None, "log": log}, default=str) + "\n")
    if problems or load:
        retire(worker, (org,))
    else:
        worker.at = at + CYCLE
    op = log[k - 1]["kind"] if 0 < k <= len(log) else "(not reached)"
    return {"pair": (first, second, when, automatic), "k": k, "op": op, "label": f"{name(spec[:4])} k={k} {op}",
            "one": one, "two": two, "settled": not state, "problems": problems, "disturbed": load,
            "ops": [e["kind"] for e in log], "second_ops": [e["kind"] for e in log2]}


def cell(result):
    two = result["two"]["short"] if result["two"] else "?"
    return f"{result['one']['short']}/{two}{'' if result['settled'] else '~'}{'!' if result['problems'] else ''}"


def shape(problem):
    """A problem without its key ids and times, to group the scenarios that show it."""
    problem = re.sub(r"\bAKIA[0-9A-Z]+", "<key>", problem)
    problem = re.sub(r"\borg [\w-]+", "org <org>", problem)
    problem = re.sub(r"\bversion \d+", "version <n>", problem)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?", "<time>", problem)


def test_a_second_actor_at_every_request_of_the_first(stack, capsys):
    started = time.monotonic()
    workers = [make_worker(stack, f"t{i}") for i in range(WORKERS)]
    try:
        # The clean run of each kind of first actor counts its requests.
        firsts = sorted({p[0] for p in PAIRS}, key=list(ACTORS).index)
        clean = run_parallel(workers, [(first, None, "same", True, 0) for first in firsts], scenario)
        for result in clean:
            first = result["pair"][0]
            expected = "200" if first in ("api", "idem") else "rot"
            assert result["one"]["short"] == expected and not result["problems"], (first, result)
        ops = {result["pair"][0]: result["ops"] for result in clean}
        for w in workers:
            w.ops = ops
        scenarios = [(*pair, k) for pair in PAIRS for k in range(1, len(ops[pair[0]]) + 1)]
        # Longest first: the sweeps' runs are the longer ones.
        scenarios.sort(key=lambda s: (s[0] not in SWEEPS, s[1] not in SWEEPS))
        results = run_parallel(workers, scenarios, scenario)
    finally:
        close_all(workers, close)

    lines = []
    for first in firsts:
        pairs = [p for p in PAIRS if p[0] == first]
        by = {(r["pair"], r["k"]): r for r in results if r["pair"][0] == first}
        rows = [[k, op, *[cell(by[(p, k)]) if (p, k) in by else "?" for p in pairs]]
                for k, op in enumerate(ops[first], 1)]
        header = ["k", f"{first}'s request", *[name(p).split("/", 1)[1] for p in pairs]]
        lines.append(table(f"first actor {first} ({ACTORS[first]}), the second acting before its k-th request",
                           header, rows))
    failing = defaultdict(list)
    for r in results:
        for p in r["problems"]:
            failing[(name(r["pair"]), shape(p))].append(r)
    outcomes = Counter(cell(r).rstrip("~!") for r in results)
    rerun = sum(1 for r in results if r.get("tries", 1) > 1)
    why = sum((w.disturbances for w in workers), Counter())
    lines += [
        "cell: first/second actor's outcome (HTTP status; sweeps: rot rotated, - nothing to do, busy: a rotation "
        "in progress, undue: not due any more, fail, ERR); '~' not settled at the end; '!' an invariant broke",
        f"two actors: {len(PAIRS)} pairs, {len(results)} runs, {WORKERS} workers; {elapsed(started)}; "
        f"run again (disturbed: {', '.join(f'{n}x {r}' for r, n in why.items()) or 'never'}): {rerun}",
        "outcomes: " + ", ".join(f"{o}: {c}" for o, c in sorted(outcomes.items())),
        f"scenarios with a broken invariant: {sum(1 for r in results if r['problems'])}/{len(results)} in "
        f"{len({name(r['pair']) for r in results if r['problems']})}/{len(PAIRS)} pairs",
    ]
    for (pair, problem), rs in sorted(failing.items()):
        ks = ",".join(str(r["k"]) for r in sorted(rs, key=lambda r: r["k"]))
        example = next(p for p in rs[0]["problems"] if shape(p) == problem)
        lines.append(f"FAIL {pair} k={ks} (e.g. {rs[0]['op']}): {example}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    if failing:
        pytest.fail(f"{len(failing)} kinds of broken invariants in "
                    f"{len({pair for pair, _ in failing})} pairs (the FAIL lines above)", pytrace=False)
