"""scheduled-rotation against faults on the wire, and killed with SIGKILL.

Each worker sweeps a registry of two orgs: A, whose automatic rotation (every 7
days) is due, and B, whose previous key's grace period (given to a manual
rotation an hour before) is over. A fault hits the k-th request of the run; the
orgs must keep a working key they know (the key vault's current one) and never
more than two IAM keys, and an org whose evaluation failed keeps its keys as
they were; the next day's run, without faults, must converge: A rotated, B's
previous key deactivated, IAM holding exactly the keys the records name, the
vault holding each current key, no claim left.

By default every fault kind hits every request and all its retries (an outage of
that call), and `lost` also hits a single attempt: the SDK retries the other
single-attempt faults as if nothing happened (never forwarded, nothing applied),
which the rotate-key matrix shows for every operation these runs use.
WIRE_FULL=1 runs every kind as a single-attempt fault too.
"""
import os
import random
import time
from datetime import timedelta

from harness import (KINDS, WORKERS, FunctionError, Snapshot, Worker, cell, clean_run, cli, close_all, converged,
                     disturbed, diverged, fault_scenarios, holds, longest_first, report, retire, run_parallel, settle,
                     stack_fixture)

FULL = os.environ.get("WIRE_FULL") == "1"
KILL_POINTS = 10
SEED = 20261124
DAY = timedelta(days=1)
CYCLE = timedelta(days=8)  # from one fault run to the next: A's 7-day rotation is due again


stack = stack_fixture("wire-scheduled")


def new_world(worker):
    """The worker's two orgs and the time of its next run, in the state every scenario
    starts from (A: a current and an inactive previous key; B: one key)."""
    a, b = worker.new_org("a"), worker.new_org("b")
    worker.now += timedelta(minutes=15)
    worker.proxy.reset()
    statuses = [worker.rotate(org) for org in (a, b)]
    cli(worker.cli_env, "policy", "--org", a, "--enable", "--interval", "7d", capture=True)
    day = worker.now.replace(hour=0, minute=0, second=0)
    worker.world = {"a": a, "b": b, "at": day + CYCLE + timedelta(hours=12)}
    if any(status != 200 for status, _ in statuses):
        assert disturbed(worker.proxy.log()), statuses
        retire_world(worker)
        return
    first = cycle(worker, None)  # retires the world if disturbed
    assert not first["problems"] or first["disturbed"], first


def retire_world(worker):
    """Takes the worker's orgs out of its registry: the next scenario starts afresh."""
    world = worker.world
    retire(worker, (world["a"], world["b"]))
    worker.now = world["at"]


def outcome_of(result, killed):
    if isinstance(result, FunctionError):
        text = str(result)
        if "SweepFailed" in text:  # the run could not list the registry: the invocation fails, Lambda retries
            return "nostart", [] if killed or "ListObjectsV2" in text or "GetObject" in text else [text[:200]]
        return ("killed", []) if killed else ("crash", [f"the function failed: {text[:200]}"])
    return ("failed" if result["failed"] else "ok"), []


def cycle(worker, spec):
    """One scenario: B's manual rotation, the run at the world's time with the fault
    of `spec` (None: none; (k, kind, persist); ("kill", k, before|after)), its
    checks, then the next day's run and its checks."""
    world = worker.world
    a, b, at = world["a"], world["b"], world["at"]
    obs = worker.obs
    worker.now = at - timedelta(hours=1)
    worker.proxy.reset()
    status, body = worker.rotate(b, grace="60s")
    setup_log = worker.proxy.log()
    assert status == 200 or disturbed(setup_log), body
    before = {org: obs.record(worker.bucket, org) for org in (a, b)}
    killed = spec is not None and spec[0] == "kill"
    if spec is None:
        k, kind, persist = 0, "none", False
        worker.proxy.reset()
    elif killed:
        k, kind, persist = spec[1], "kill", False
        worker.proxy.arm(k, "close" if spec[2] == "before" else "lost", hook=worker.kill_scheduled)
    else:
        k, kind, persist = spec
        worker.proxy.arm(k, kind, persist)
    result = worker.sweep(at)
    log = worker.proxy.log()
    worker.proxy.reset()
    outcome, problems = outcome_of(result, killed)
    failed = {f["orgId"]: f["reason"] for f in result["failed"]} if isinstance(result, dict) else {}
    for org in (a, b):
        snap = Snapshot(worker, org)
        problems += [f"{org} after the run: {p}" for p in holds(snap)]
        if org in failed:
            for field in ("current", "previous"):
                if (snap.record or {}).get(field) != (before[org] or {}).get(field):
                    problems.append(f"{org} failed ({failed[org]}), but its {field} key changed")
    if killed:
        # Lambda retries a failed asynchronous invocation with the same event: the same time.
        retried = worker.sweep(at)
        if not isinstance(retried, dict) or retried["failed"]:
            problems.append(f"the retry at the same time: {getattr(retried, 'get', lambda _: retried)('failed')}")
        for org in (a, b):
            problems += [f"{org} after the retry: {p}" for p in holds(Snapshot(worker, org))]
    # The next day's run, without faults, converges. A day has passed for the
    # claim a killed run left too: its lease (real time) is waited out.
    if killed:
        worker.wait_out_claims((a, b))
    rerun = worker.sweep(at + DAY)
    state = []
    if not isinstance(rerun, dict) or not rerun["complete"] or rerun["failed"]:
        state.append(f"the run failed: {rerun if not isinstance(rerun, dict) else rerun['failed']}")
    elif rerun["mismatches"]:
        problems.append(f"the next day's run reported {[m['reason'] for m in rerun['mismatches']]}")
    for org in (a, b):
        snap = Snapshot(worker, org)
        record = snap.record
        state += [f"{org}: {p}" for p in converged(snap) + holds(snap)]
        if org == a and record["policy"].get("lastRotationAt", "") < at.strftime("%Y-%m-%dT%H:%M:%S"):
            state.append(f"{org}: the due rotation did not happen")
        if org == b and not (record.get("previous") or {}).get("deactivatedAt"):
            state.append(f"{org}: the previous key was not retired")
    problems += [f"after the next day's run: {s}" for s in state]
    world["at"] = at + CYCLE
    load = disturbed(setup_log, log, worker.proxy.log()) or (k > 0 and diverged(log, worker.ops, k))
    if problems or load:
        retire_world(worker)
    op = log[k - 1]["kind"] if 0 < k <= len(log) else "(not reached)"
    label = f"k={k} {op} {kind}{'+' if persist else ''}{' ' + spec[2] if killed else ''}"
    return {"k": k, "kind": kind, "persist": persist, "when": spec[2] if killed else None, "label": label,
            "op": op, "outcome": outcome, "converged": not state, "problems": problems, "disturbed": load,
            "ops": [e["kind"] for e in log], "summary": result}


def sweep_with_fault(worker, spec):
    settle(worker, new_world)
    return cycle(worker, spec)


def test_every_fault_at_every_request_of_a_scheduled_run_and_sigkill_at_random_points(stack, capsys):
    started = time.monotonic()
    workers = [Worker(stack, f"s{i}") for i in range(WORKERS)]
    try:
        # A clean run, from the state every scenario starts from, counts N.
        clean = clean_run(lambda: sweep_with_fault(workers[0], None))
        assert clean["outcome"] == "ok" and not clean["problems"] and not clean["disturbed"], clean
        summary = clean["summary"]
        assert len(summary["rotated"]) == 1 and summary["retired"] == 1, summary
        ops = clean["ops"]
        n = len(ops)
        for w in workers:
            w.ops = ops
        columns = [(kind, True) for kind in KINDS] + [(kind, False) for kind in KINDS if FULL or kind == "lost"]
        columns = longest_first(columns)
        scenarios = fault_scenarios(columns, n)
        rng = random.Random(SEED)
        kills = [("kill", rng.randint(1, n), rng.choice(["before", "after"])) for _ in range(KILL_POINTS)]
        results = run_parallel(workers, scenarios + kills, sweep_with_fault)
    finally:
        close_all(workers)

    short = {"ok": "ok", "failed": "fail", "nostart": "nost", "crash": "CRASH", "killed": "kill"}.get
    kills = [r for r in results if r["kind"] == "kill"]
    report("scheduled", started,
           f"scheduled-rotation under wire faults: {n} requests x {len(columns)} fault columns ('+' every retry) "
           f"= {len(scenarios)} runs, and {KILL_POINTS} SIGKILLs (seed {SEED}), {WORKERS} workers",
           ops, columns, results,
           ["cell: ok / fail (an org's evaluation failed, reported in the summary) / nost (the run could not start: "
            "the invocation fails and Lambda retries it) / CRASH; '~' the next day's run did not converge; "
            "'!' an invariant broke",
            "SIGKILL (then Lambda's retry at the same time, then the next day's run): "
            + ", ".join(f"k={r['k']} {r['op']} {r['when']}: {cell(r, short)}" for r in kills)],
           capsys, short)
