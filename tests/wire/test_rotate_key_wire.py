"""rotate-key against faults on the wire: for every request k of a rotation and
every fault kind, once for a single attempt and once for the call and all its
retries, the real binary behind the API Gateway stand-in answers 200, or a 503
(409) that changed nothing; the org keeps a working key it was handed; IAM never
holds more than two keys; and the next call, without faults, succeeds and
converges (IAM holds only keys the record knows, the vault holds the current key)."""
import time
from datetime import timedelta

from harness import (KINDS, TRIES, WORKERS, Snapshot, Worker, close_all, converged, current_id, disturbed, diverged,
                     fault_scenarios, report, run_parallel, settle, stack_fixture)

STEP = timedelta(minutes=15)  # between calls: past the lease, within the hourly rate limit

stack = stack_fixture("wire-rotate-key")


def changed_fields(before, after):
    return sorted(k for k in set(before or {}) | set(after or {}) if (before or {}).get(k) != (after or {}).get(k))


def new_org(worker):
    """The worker's org, in the steady state: a current key and an inactive previous one."""
    worker.world = worker.new_org("r")
    for _ in range(2):
        worker.now += STEP
        worker.proxy.reset()
        status, body = worker.rotate(worker.world)
        if status != 200:
            assert disturbed(worker.proxy.log()), body
            worker.world = None
            return


def rotate_with_fault(worker, spec):
    k, kind, persist = spec
    org = settle(worker, new_org, what="org")
    before = worker.obs.record(worker.bucket, org)
    worker.now += STEP
    worker.proxy.arm(k, kind, persist)
    status, body = worker.rotate(org)
    log = worker.proxy.log()
    worker.proxy.reset()
    after = Snapshot(worker, org)
    problems = []
    if status == 200:
        if current_id(after.record) != body["accessKeyId"]:
            problems.append(f"200 with key {body['accessKeyId']}, but the record's current key is "
                            f"{current_id(after.record)}")
        if not after.works((body["accessKeyId"], body["secretAccessKey"])):
            problems.append("200, but the key handed out does not work")
    elif status in (409, 503):
        if after.record != before:
            problems.append(f"{status}, but the record changed: {', '.join(changed_fields(before, after.record))}")
    else:
        problems.append(f"HTTP {status}: {body}")
    if len(after.keys) > 2:
        problems.append(f"IAM holds {len(after.keys)} keys")
    known = worker.known_key(org, after.record)
    if known is None:
        problems.append(f"the record's current key {current_id(after.record)} was never handed to the org")
    elif not after.works(known):
        problems.append(f"the org's current key {known[0]} does not work")
    if not after.works(after.vault):  # the org's reader principal takes its key from there
        problems.append(f"{status}, but the vault's current key {(after.vault or (None,))[0]} does not work")
    # The next call, without faults, succeeds and converges.
    worker.now += STEP
    next_status, next_body = worker.rotate(org)
    next_log = worker.proxy.log()
    worker.proxy.reset()
    if next_status != 200:
        problems.append(f"the next call got {next_status}: {next_body.get('error')}")
        state = ["the next call failed"]
    else:
        final = Snapshot(worker, org)
        state = converged(final)
        if not final.works((next_body["accessKeyId"], next_body["secretAccessKey"])):
            state.append("the new key does not work")
        problems += [f"after the next call: {s}" for s in state]
    load = disturbed(log, next_log) or diverged(log, worker.ops, k)
    if problems or load:
        worker.world = None  # the next scenario of this worker starts from a fresh org
    op = log[k - 1]["kind"] if len(log) >= k else "(not reached)"
    label = f"k={k} {op} {kind}{'+' if persist else ''}"
    return {"k": k, "kind": kind, "persist": persist, "op": op, "label": label,
            "outcome": status, "converged": not state, "problems": problems, "disturbed": load}


def test_every_fault_at_every_request_of_a_rotation(stack, capsys):
    started = time.monotonic()
    columns = [(kind, persist) for kind in KINDS for persist in (False, True)]
    workers = [Worker(stack, f"r{i}") for i in range(WORKERS)]
    try:
        # A clean rotation through the proxy counts N, the requests of one rotation.
        first = workers[0]
        org = settle(first, new_org, what="org")
        first.now += STEP
        for _ in range(TRIES):
            first.proxy.reset()
            status, body = first.rotate(org)
            if not disturbed(first.proxy.log()):
                break
            first.now += STEP
        assert status == 200 and not disturbed(first.proxy.log()), body
        ops = first.proxy.kinds()
        n = len(ops)
        assert n >= 5, ops
        for w in workers:
            w.ops = ops
        scenarios = fault_scenarios(columns, n)
        results = run_parallel(workers, scenarios, rotate_with_fault)
    finally:
        close_all(workers)

    report("rotate-key", started,
           f"rotate-key under wire faults: {n} requests x {len(KINDS)} kinds x 2 (one attempt / '+' every retry) = "
           f"{len(results)} runs, {WORKERS} workers", ops, columns, results,
           ["cell: HTTP status of the faulted call; '~' the next call did not converge; '!' an invariant broke"],
           capsys)
