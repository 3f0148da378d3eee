"""scripts/fault_proxy.py itself, seen by an AWS SDK (boto3): requests pass through
signed and unchanged; each fault kind reaches the client in the service's own
protocol; `persist` fails the retries of the faulted call and nothing else."""
import json
import re
import urllib.request

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from harness import FaultProxy, Stack, unprovoked_retries
from local_aws import REGISTRY_BUCKET


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("wire-proxy"))
    stack.aws.client("s3", stack.role).create_bucket(Bucket=REGISTRY_BUCKET)
    yield stack
    stack.close()


@pytest.fixture
def proxy(stack):
    proxy = FaultProxy(stack.aws.port, stall_seconds=2)
    yield proxy
    proxy.close()


def through(stack, proxy, service, attempts=1, timeout=60):
    return stack.aws.client(service, stack.role, endpoint=proxy.endpoint, attempts=attempts, timeout=timeout)


def code_of(call):
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["ResponseMetadata"]["HTTPStatusCode"], raised.value.response["Error"]["Code"]


def test_requests_pass_signed_and_are_counted_by_kind(stack, proxy):
    s3, iam, secrets = (through(stack, proxy, s) for s in ("s3", "iam", "secretsmanager"))
    s3.put_object(Bucket=REGISTRY_BUCKET, Key="orgs/p.json", Body=b"{}")
    assert s3.get_object(Bucket=REGISTRY_BUCKET, Key="orgs/p.json")["Body"].read() == b"{}"
    s3.list_objects_v2(Bucket=REGISTRY_BUCKET, Prefix="orgs/")
    assert s3.head_object(Bucket=REGISTRY_BUCKET, Key="orgs/p.json")["ContentLength"] == 2
    iam.list_users()
    secrets.list_secrets()
    assert proxy.kinds() == ["s3:PutObject", "s3:GetObject", "s3:ListObjectsV2", "s3:HeadObject", "iam:ListUsers",
                             "secretsmanager:ListSecrets"]
    assert [e["detail"] for e in proxy.log()[:2]] == ["registry/orgs", "registry/orgs"]
    with pytest.raises(ClientError):  # the endpoint still checks every signature
        stack.aws.client("s3", ("AKIAUNKNOWN000000000", "x"), endpoint=proxy.endpoint, attempts=1).list_buckets()


@pytest.mark.parametrize("kind, expected", [
    ("500", {"s3": (500, "InternalError"), "iam": (500, "InternalFailure"),
             "secretsmanager": (500, "InternalFailure")}),
    ("503", {"s3": (503, "SlowDown"), "iam": (503, "Throttling"), "secretsmanager": (503, "ThrottlingException")}),
])
def test_an_error_answer_is_in_each_protocols_shape(stack, proxy, kind, expected):
    calls = {
        "s3": lambda c: c.list_objects_v2(Bucket=REGISTRY_BUCKET),  # REST-XML
        "iam": lambda c: c.list_users(),  # query
        "secretsmanager": lambda c: c.list_secrets(),  # JSON 1.1
    }
    for service, call in calls.items():
        proxy.arm(1, kind)
        assert code_of(lambda: call(through(stack, proxy, service))) == expected[service], service
        assert proxy.faulted()[0]["fault"] == kind


def test_close_never_reaches_aws_lost_does(stack, proxy):
    s3 = through(stack, proxy, "s3")
    proxy.arm(1, "close")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        s3.put_object(Bucket=REGISTRY_BUCKET, Key="orgs/closed.json", Body=b"{}")
    assert code_of(lambda: s3.head_object(Bucket=REGISTRY_BUCKET, Key="orgs/closed.json"))[0] == 404
    proxy.arm(1, "lost")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        s3.put_object(Bucket=REGISTRY_BUCKET, Key="orgs/lost.json", Body=b"{}")
    assert s3.head_object(Bucket=REGISTRY_BUCKET, Key="orgs/lost.json")["ContentLength"] == 2


def test_a_stall_outlasts_the_clients_timeout(stack, proxy):
    proxy.arm(1, "stall")
    with pytest.raises(ReadTimeoutError):
        through(stack, proxy, "iam", timeout=0.5).list_users()


def test_one_attempt_or_every_retry_of_the_call(stack, proxy):
    iam = through(stack, proxy, "iam", attempts=3)
    proxy.arm(2, "500")
    iam.list_users()
    iam.list_users()  # its second request fails, the retry succeeds
    iam.list_users()
    assert [e["fault"] for e in proxy.log()] == [None, "500", None, None]
    assert unprovoked_retries(proxy.log()) == []
    proxy.arm(2, "503", persist=True)
    iam.list_users()
    assert code_of(iam.list_users) == (503, "Throttling")  # all three attempts
    iam.list_users()  # the next call is another invocation: not faulted
    assert [e["fault"] for e in proxy.log()] == [None, "503", "503", "503", None]
    assert [re.search(r"attempt=\d", e["attempt"])[0] for e in proxy.log()][1:4] == ["attempt=1", "attempt=2",
                                                                                     "attempt=3"]


def test_the_hook_runs_at_the_fault_and_the_control_api_arms_from_outside(stack, proxy):
    hit = []
    proxy.arm(1, "500", hook=lambda: hit.append(proxy.count()))
    with pytest.raises(ClientError):
        through(stack, proxy, "iam").list_users()
    assert hit == [1]

    def control(path, order=None):
        data = json.dumps(order).encode() if order is not None else None
        request = urllib.request.Request(f"{proxy.endpoint}/__fault_proxy__/{path}", data=data,
                                         method="POST" if data is not None else "GET")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    control("arm", {"k": 1, "kind": "503", "persist": False})
    assert code_of(through(stack, proxy, "secretsmanager").list_secrets) == (503, "ThrottlingException")
    assert control("log")["requests"] == 1
    with pytest.raises(ValueError):
        proxy.arm(1, "slow")


def test_a_pause_runs_the_hook_before_forwarding_and_the_request_waits_for_it(stack, proxy):
    s3 = through(stack, proxy, "s3")
    direct = stack.aws.client("s3", stack.role)
    seen = []

    def hook():  # the k-th request has not reached AWS yet; another client acts meanwhile
        seen.append(code_of(lambda: direct.head_object(Bucket=REGISTRY_BUCKET, Key="orgs/paused.json"))[0])
        direct.put_object(Bucket=REGISTRY_BUCKET, Key="orgs/between.json", Body=b"{}")

    proxy.arm(2, None, hook=hook)
    s3.list_objects_v2(Bucket=REGISTRY_BUCKET, Prefix="orgs/")
    s3.put_object(Bucket=REGISTRY_BUCKET, Key="orgs/paused.json", Body=b"{}")  # the 2nd: paused, then forwarded
    assert seen == [404]
    assert s3.head_object(Bucket=REGISTRY_BUCKET, Key="orgs/paused.json")["ContentLength"] == 2
    assert proxy.kinds() == ["s3:ListObjectsV2", "s3:PutObject", "s3:HeadObject"]  # the hook's requests are not counted
    assert [e["fault"] for e in proxy.log()] == [None, None, None]
    with pytest.raises(ValueError):
        proxy.arm(1, None, persist=True)
