"""rotate-key against faults on the wire: for every request k of a rotation and
every fault kind, once for a single attempt and once for the call and all its
retries, the real binary behind the API Gateway stand-in answers 200, or a 503
(409) that changed nothing; the org keeps a working key it was handed; IAM never
holds more than two keys; and the next call, without faults, succeeds and
converges (IAM holds only keys the record knows, the vault holds the current key)."""
import os
import time
from datetime import timedelta

import pytest
from harness import (KINDS, TRIES, Stack, Worker, current_id, disagreements, disturbed, diverged, known_ids, report,
                     run_parallel)

STEP = timedelta(minutes=15)  # between calls: past the lease, within the hourly rate limit
WORKERS = int(os.environ.get("WIRE_WORKERS", "8"))

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("wire-rotate-key"))
    yield stack
    stack.close()


def changed_fields(before, after):
    return sorted(k for k in set(before or {}) | set(after or {}) if (before or {}).get(k) != (after or {}).get(k))


def settle(worker):
    """The worker's org, in the steady state: a current key and an inactive previous one."""
    for _ in range(TRIES):
        if getattr(worker, "org", None) is not None:
            return worker.org
        worker.org = worker.new_org("r")
        for _ in range(2):
            worker.now += STEP
            worker.proxy.reset()
            status, body = worker.rotate(worker.org)
            if status != 200:
                assert disturbed(worker.proxy.log()), body
                worker.org = None
                break
    assert worker.org, f"no org could be set up in {TRIES} tries: the machine is too loaded"
    return worker.org


def rotate_with_fault(worker, spec):
    k, kind, persist = spec
    obs, org = worker.obs, settle(worker)
    before = obs.record(worker.bucket, org)
    worker.now += STEP
    worker.proxy.arm(k, kind, persist)
    status, body = worker.rotate(org)
    log = worker.proxy.log()
    worker.proxy.reset()
    after = obs.record(worker.bucket, org)
    keys = obs.keys(org)
    problems = diverged(log, worker.ops, k)
    if status == 200:
        if current_id(after) != body["accessKeyId"]:
            problems.append(f"200 with key {body['accessKeyId']}, but the record's current key is {current_id(after)}")
        if not obs.works((body["accessKeyId"], body["secretAccessKey"]), org):
            problems.append("200, but the key handed out does not work")
    elif status in (409, 503):
        if after != before:
            problems.append(f"{status}, but the record changed: {', '.join(changed_fields(before, after))}")
    else:
        problems.append(f"HTTP {status}: {body}")
    if len(keys) > 2:
        problems.append(f"IAM holds {len(keys)} keys")
    known = worker.known_key(org, after)
    if known is None:
        problems.append(f"the record's current key {current_id(after)} was never handed to the org")
    elif not obs.works(known, org):
        problems.append(f"the org's current key {known[0]} does not work")
    vault = obs.vault(org)  # the org's reader principal takes its key from there
    if not obs.works(vault, org):
        problems.append(f"{status}, but the vault's current key {(vault or (None,))[0]} does not work")
    # The next call, without faults, succeeds and converges.
    worker.now += STEP
    next_status, next_body = worker.rotate(org)
    next_log = worker.proxy.log()
    worker.proxy.reset()
    final = obs.record(worker.bucket, org)
    final_keys = obs.keys(org)
    converged = next_status == 200
    if next_status != 200:
        problems.append(f"the next call got {next_status}: {next_body.get('error')}")
    else:
        state = []
        if final.get("pending"):
            state.append("a claim is left in the record")
        if not set(final_keys) <= known_ids(final):
            state.append(f"IAM holds keys the record does not know: {sorted(set(final_keys) - known_ids(final))}")
        if len(final_keys) > 2:
            state.append(f"IAM holds {len(final_keys)} keys")
        state += disagreements(final_keys, final)
        if not obs.works((next_body["accessKeyId"], next_body["secretAccessKey"]), org):
            state.append("the new key does not work")
        vault = obs.vault(org)
        if (vault or (None,))[0] != current_id(final):
            state.append(f"the vault's current key is {(vault or (None,))[0]}, not {current_id(final)}")
        converged = not state
        problems += [f"after the next call: {s}" for s in state]
    load = disturbed(log, next_log)
    if problems or load:
        worker.org = None  # the next scenario of this worker starts from a fresh org
    op = log[k - 1]["kind"] if len(log) >= k else "(not reached)"
    label = f"k={k} {op} {kind}{'+' if persist else ''}"
    return {"k": k, "kind": kind, "persist": persist, "op": op, "label": label,
            "outcome": status, "converged": converged, "problems": problems, "disturbed": load}


def test_every_fault_at_every_request_of_a_rotation(stack, capsys):
    started = time.monotonic()
    workers = [Worker(stack, f"r{i}") for i in range(WORKERS)]
    try:
        # A clean rotation through the proxy counts N, the requests of one rotation.
        first = workers[0]
        org = settle(first)
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
        # Longest first: a stall on every retry costs the operation timeout.
        scenarios = [(k, kind, persist) for persist in (True, False)
                     for kind in sorted(KINDS, key=lambda kind: kind != "stall")
                     for k in range(1, n + 1)]
        results = run_parallel(workers, scenarios, rotate_with_fault)
    finally:
        for w in workers:
            w.close()

    columns = [(kind, persist) for kind in KINDS for persist in (False, True)]
    report("rotate-key", started,
           f"rotate-key under wire faults: {n} requests x {len(KINDS)} kinds x 2 (one attempt / '+' every retry) = "
           f"{len(results)} runs, {WORKERS} workers", ops, columns, results,
           ["cell: HTTP status of the faulted call; '~' the next call did not converge; '!' an invariant broke"],
           capsys)
