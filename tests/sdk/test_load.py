"""rotate-key under load, through the API Gateway stand-in with a pool of
function processes (50 sandboxes, as Lambda would run 50 concurrent calls),
every call released at once by a barrier.

What the system guarantees, and so what these tests assert: a rotation claims
the org's record with a compare-and-swap and holds the claim until it commits,
so rotations of one org never overlap. A call that finds the claim held is
refused (409); one that comes after a commit may rotate again, up to
ROTATIONS_PER_HOUR (5) in the hour, then 429. How many calls come "after" is a
matter of timing, so "exactly one 200" is not a guarantee: between 1 and 5
are. That they ran one after another is: each 200 names the key the one
before it issued as its old key, with the next version. At the end the record,
IAM and the last answer agree, and the key handed out last is the one that works.
"""
import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest

from conftest import running_stack

ROTATIONS_PER_HOUR = 5  # the template's default
SANDBOXES = 50
ONE_ORG = "8000000"
MANY_ORGS = [str(8000001 + i) for i in range(50)]
CALLS_PER_ORG = 4


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    orgs = [ONE_ORG, *MANY_ORGS]
    with running_stack(tmp_path_factory.mktemp("function-logs"), orgs, orgs, concurrency=SANDBOXES) as stack:
        stack.gateway.runtimes["RotateKeyFunction"].warm()
        yield stack


def rotate_at_once(stack, orgs):
    """One bodiless POST /iam/rotate-key per entry of `orgs` (an org's admin
    token each), all released together; returns [(org, status, body)]."""
    requests = [
        urllib.request.Request(f"{stack.url}/iam/rotate-key", data=b"", method="POST",
                               headers={"Authorization": f"Bearer {stack.token(org)}"})
        for org in orgs
    ]
    barrier = threading.Barrier(len(requests))
    answers = [None] * len(requests)

    def call(i):
        barrier.wait(timeout=60)
        try:
            with urllib.request.urlopen(requests[i], timeout=120) as response:
                answers[i] = (orgs[i], response.status, json.loads(response.read()))
        except urllib.error.HTTPError as e:
            answers[i] = (orgs[i], e.code, json.loads(e.read() or b"{}"))
        except OSError as e:  # no answer at all (e.g. the client's timeout)
            answers[i] = (orgs[i], "no answer", {"error": str(e)})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "every call answered"
    assert None not in answers, "every call answered"
    return answers


def iam_keys(stack, org):
    functions_key = (stack.env["AWS_ACCESS_KEY_ID"], stack.env["AWS_SECRET_ACCESS_KEY"])
    listed = stack.aws.client("iam", functions_key).list_access_keys(UserName=f"org-{org}")
    return {k["AccessKeyId"]: k["Status"] for k in listed["AccessKeyMetadata"]}


def check_org(stack, org, answers):
    """The guarantees for one org that started without a key; returns its 200s."""
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {200, 409, 429}, f"org {org}: {statuses}"
    rotated = sorted((body for status, body in answers if status == 200), key=lambda b: b["keyVersion"])
    assert 1 <= len(rotated) <= ROTATIONS_PER_HOUR, f"org {org}: {statuses}"
    # One after another: each rotation's old key is the key the one before issued.
    assert rotated[0]["oldKeyId"] == "" and rotated[0]["keyVersion"] == 1
    for before, after in zip(rotated, rotated[1:]):
        assert after["oldKeyId"] == before["currentKeyId"], f"org {org}: rotations overlapped"
        assert after["keyVersion"] == before["keyVersion"] + 1
    if statuses[429]:
        assert len(rotated) == ROTATIONS_PER_HOUR, f"org {org}: 429 only once the hour's rotations are used"
    for status, body in answers:
        if status != 200:
            assert body["status"] == status and body["path"] == "/iam/rotate-key", body
    # The record, IAM and the last answer agree; that key works, the older ones do not.
    last = rotated[-1]
    record = stack.status(org)
    assert record.get("pending") is None
    assert record["current"]["accessKeyId"] == last["currentKeyId"]
    known = {record["current"]["accessKeyId"]} | ({record["previous"]["accessKeyId"]} if "previous" in record else set())
    keys = iam_keys(stack, org)
    assert set(keys) == known and len(keys) <= 2, f"org {org}: IAM {keys}, record {known}"
    assert keys[last["currentKeyId"]] == "Active"
    assert stack.aws.can_read((last["currentKeyId"], last["secretAccessKey"]), org)
    for older in rotated[:-1]:
        assert not stack.aws.can_read((older["currentKeyId"], older["secretAccessKey"]), org)
    return rotated


def report(capsys, what, answers, stack):
    statuses = Counter(status for _, status, _ in answers)
    running = stack.gateway.runtimes["RotateKeyFunction"].most_running
    with capsys.disabled():
        print(f"\nload: {what}: " + ", ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))
              + f" (at most {running} invocations ran at once)")


def test_fifty_calls_on_one_org_rotate_it_one_at_a_time(load, capsys):
    answers = rotate_at_once(load, [ONE_ORG] * 50)

    report(capsys, "50 calls on one org", answers, load)
    assert load.gateway.runtimes["RotateKeyFunction"].most_running > 1, "the calls overlapped"
    check_org(load, ONE_ORG, [(status, body) for _, status, body in answers])


def test_two_hundred_calls_over_fifty_orgs_leave_each_org_one_working_key_a_caller_holds(load, capsys):
    answers = rotate_at_once(load, [org for org in MANY_ORGS for _ in range(CALLS_PER_ORG)])

    report(capsys, f"{len(answers)} calls over {len(MANY_ORGS)} orgs", answers, load)
    rotations = Counter()
    for org in MANY_ORGS:
        rotated = check_org(load, org, [(status, body) for o, status, body in answers if o == org])
        rotations[len(rotated)] += 1
    with capsys.disabled():
        print("load: rotations per org: " + ", ".join(f"{n} rotation(s): {orgs} orgs" for n, orgs in sorted(rotations.items())))
