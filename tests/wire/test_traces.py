"""OpenTelemetry traces of the real binaries under the Lambda Runtime API.

An OTLP/HTTP receiver of the test's own (`http/protobuf`, decoded with
opentelemetry-proto) is the functions' OTEL_EXPORTER_OTLP_ENDPOINT. The Runtime
API passes each invocation an X-Ray trace header (`Lambda-Runtime-Trace-Id`,
`Root=1-…;Parent=…;Sampled=1`), and the local AWS endpoint counts the requests
it serves. Checked:

- a rotate-key call through HTTP is one trace, whose id is the X-Ray Root the
  Runtime API passed, under a root span (`faas.trigger` http) whose parent is
  the header's Parent; it holds a span per AWS request (the same requests the
  endpoint served during the call) and the protocol's steps;
- a fanned-out sweep: the dispatcher's invocation is one trace (its X-Ray
  Root) and hands it on in each slice's message (`AWSTraceHeader`); the
  sweep-worker invocation that sweeps the slice continues that trace (its root
  span's parent is the dispatcher's `sweep.dispatch` span) and its slice span
  links the trace Lambda passed for it; a span per AWS request again, and the
  steps of the automatic rotation the slice makes;
- no secret anywhere in what the receiver got: neither the key handed to the
  caller, nor any `SecretAccessKey` in the key vault, nor the functions' own
  secret key;
- with the endpoint a closed port, or a peer that never answers, rotate-key
  still answers 200 at once (the export is bounded and after the answer).
"""
import json
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import requests
from harness import SCHEDULED_EVENT, Stack, Worker, cli
from loopback_http import Handler, Server
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

STEPS = ("rotation.claim", "rotation.make_room", "rotation.create", "rotation.verify", "rotation.commit",
         "rotation.finish")
WAIT = 15  # seconds: at most, for an invocation's spans once it answered (they are flushed right after)


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every request's body as received, and its spans decoded."""

    def __init__(self):
        self.bodies = []
        self.spans = []  # dicts: service, trace, span, parent, name, attributes, events, links
        self.lock = threading.Lock()
        receiver = self

        class Otlp(Handler):
            def do_POST(self):
                body = self.read_body()
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.add(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = Server(("127.0.0.1", 0), Otlp)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def add(self, body):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "service": resource.get("service.name"),
                        "trace": span.trace_id.hex(),
                        "span": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "name": span.name,
                        "attributes": attributes(span.attributes),
                        "events": [(e.name, attributes(e.attributes)) for e in span.events],
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    })
        with self.lock:
            self.bodies.append(body)
            self.spans += spans

    def trace(self, trace_id, root_name, timeout=WAIT):
        """The spans of a trace, once its root span named `root_name` arrived."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self.lock:
                spans = [s for s in self.spans if s["trace"] == trace_id]
            if any(s["name"] == root_name for s in spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"no root span {root_name!r} of trace {trace_id} within {timeout} s: "
                             f"{sorted({(s['name'], s['trace']) for s in self.spans})}")

    def of(self, service):
        with self.lock:
            return [s for s in self.spans if s["service"] == service]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def attributes(key_values):
    out = {}
    for kv in key_values:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


def xray(header):
    """(OTel trace id, parent span id) of an X-Ray trace header `Root=1-xxxxxxxx-yyyy…;Parent=…;…`."""
    fields = dict(part.split("=", 1) for part in header.split(";"))
    _, epoch, rest = fields["Root"].split("-")
    return epoch + rest, fields.get("Parent")


def aws_requests(spans):
    """The AWS requests of a trace, from the SDK's operation spans: Counter of 'Service Operation'."""
    return Counter(f"{s['attributes']['rpc.service'].replace(' ', '')} {s['attributes']['rpc.method']}"
                   for s in spans if s["attributes"].get("rpc.system") == "aws-api")


class Endpoint:
    """The requests the local AWS endpoint served, counted around an invocation."""

    def __init__(self, aws):
        self.url = aws.endpoint

    def count(self):
        return requests.get(f"{self.url}/moto-api/bench/stats", timeout=10).json()["requests"]

    def served_since(self, start):
        """Counter of 'Service Operation' of the requests served since the count `start`."""
        kinds = requests.get(f"{self.url}/moto-api/bench/requests", params={"from": start}, timeout=10).json()
        return Counter(" ".join(kind.split(" ")[:2]) for kind in kinds["requests"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("wire-traces"))
    receiver = Receiver()
    sqs = stack.aws.client("sqs", stack.role)
    queue = sqs.create_queue(QueueName="sweep-traces", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    worker = Worker(stack, "traces", parameters={"SweepQueue": queue}, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    yield {"stack": stack, "receiver": receiver, "worker": worker, "sqs": sqs, "queue": queue,
           "endpoint": Endpoint(stack.aws)}
    worker.close()
    receiver.close()
    stack.close()


def secrets_of(world, *orgs):
    """Every secret a trace must never hold: the keys handed to callers, the vault's, the functions' own."""
    worker = world["worker"]
    found = set(worker.secrets.values()) | {worker.function_env["AWS_SECRET_ACCESS_KEY"]}
    for role in worker.credentials.values():  # each function's own role credentials
        found |= {role["AWS_SECRET_ACCESS_KEY"], role["AWS_SESSION_TOKEN"]}
    secrets = world["stack"].observer.secrets
    for org in orgs:
        name = f"s3-key-rotation/org-{org}"
        for version in secrets.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]:
            value = json.loads(secrets.get_secret_value(SecretId=name, VersionId=version["VersionId"])["SecretString"])
            found.add(value["secretAccessKey"])
    assert all(found), found
    return found


def assert_no_secret(receiver, secrets):
    with receiver.lock:
        bodies = list(receiver.bodies)
        spans = list(receiver.spans)
    assert bodies, "nothing was exported"
    for secret in secrets:
        assert not any(secret.encode() in body for body in bodies), "a secret was exported"
        assert not any(secret in json.dumps(span, default=str) for span in spans), "a secret is in a span"


def one_trace(spans, trace_id, root, trigger, x_ray_parent):
    """The invocation's spans are one trace under one root span: the runtime's, continuing `x_ray_parent`."""
    roots = [s for s in spans if s["name"] == root]
    assert len(roots) == 1, [s["name"] for s in spans]
    root_span = roots[0]
    assert root_span["trace"] == trace_id
    assert root_span["parent"] == x_ray_parent, "the root span continues the trace it was handed"
    assert root_span["attributes"]["faas.trigger"] == trigger
    ids = {s["span"] for s in spans}
    for s in spans:
        assert s is root_span or s["parent"] in ids, f"{s['name']}: its parent is not in the invocation's trace"
    return root_span


def test_a_rotate_key_call_is_one_trace_continuing_lambdas_with_a_span_per_aws_request(world):
    worker, receiver, endpoint = world["worker"], world["receiver"], world["endpoint"]
    org = worker.new_org("r")
    runtime = worker.gateway.runtimes["RotateKeyFunction"]
    runtime.warm()

    # When: a rotate-key call, its AWS requests counted by the endpoint.
    start = endpoint.count()
    status, answer = worker.rotate(org)
    served = endpoint.served_since(start)
    assert status == 200, answer

    # Then: one trace, the X-Ray Root the Runtime API passed.
    trace_id, parent = xray(runtime.traces[-1][1])
    spans = receiver.trace(trace_id, "rotate-key")
    root = one_trace(spans, trace_id, "rotate-key", "http", parent)
    assert root["service"] == "rotate-key"
    assert all(s["trace"] == trace_id for s in receiver.of("rotate-key")), "the process's spans are the call's"
    assert aws_requests(spans) == served, "a span per AWS request the endpoint served"
    names = {s["name"] for s in spans}
    assert set(STEPS) <= names, sorted(names)
    assert_no_secret(receiver, secrets_of(world, org))


def test_a_slice_swept_by_the_worker_continues_the_dispatchers_trace(world):
    worker, receiver, endpoint, sqs = world["worker"], world["receiver"], world["endpoint"], world["sqs"]
    # Given: an org whose automatic rotation is due at the run's time.
    org = worker.new_org("s")
    assert worker.rotate(org)[0] == 200
    cli(worker.cli_env, "policy", "--org", org, "--enable", "--interval", "7d", capture=True)
    at = worker.now + timedelta(days=8)
    dispatcher = worker.gateway.runtimes["ScheduledRotationFunction"]
    sweeper = worker.gateway.runtimes["SweepWorkerFunction"]
    dispatcher.warm()
    sweeper.warm()

    # When: the dispatcher runs...
    start = endpoint.count()
    manifest = dispatcher.invoke(dict(SCHEDULED_EVENT, id=str(uuid.uuid4()), time=at.strftime("%Y-%m-%dT%H:%M:%SZ")))
    served = endpoint.served_since(start)
    assert manifest["slices"], manifest
    run_trace, run_parent = xray(dispatcher.traces[-1][1])
    run = receiver.trace(run_trace, "scheduled-rotation")
    one_trace(run, run_trace, "scheduled-rotation", "timer", run_parent)
    assert aws_requests(run) == served
    dispatch = [s for s in run if s["name"] == "sweep.dispatch"]
    assert len(dispatch) == 1, sorted(s["name"] for s in run)

    # ... and the event source mapping hands its slices to the worker.
    messages = []
    while got := sqs.receive_message(QueueUrl=world["queue"], MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                     AttributeNames=["All"]).get("Messages", []):
        messages += got
    assert len(messages) == len(manifest["slices"])
    for message in messages:
        header = message["Attributes"].get("AWSTraceHeader")
        assert header and xray(header) == (run_trace, dispatch[0]["span"]), header
        event = {"Records": [{
            "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": {k: v for k, v in message["Attributes"].items()
                           if k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                    "ApproximateFirstReceiveTimestamp", "AWSTraceHeader")},
            "messageAttributes": {}, "md5OfBody": message["MD5OfBody"], "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sweep-traces", "awsRegion": "us-east-1",
        }]}
        start = endpoint.count()
        answer = sweeper.invoke(event)
        served = endpoint.served_since(start)
        assert answer.get("batchItemFailures") == [], answer
        sqs.delete_message(QueueUrl=world["queue"], ReceiptHandle=message["ReceiptHandle"])

        # Then: the worker's invocation is in the dispatcher's trace, under its dispatch span.
        own_trace, _ = xray(sweeper.traces[-1][1])
        until = time.monotonic() + WAIT
        while True:
            swept = [s for s in receiver.trace(run_trace, "sweep-worker") if s["service"] == "sweep-worker"]
            if any(s["name"] == "sweep.slice" for s in swept) or time.monotonic() > until:
                break
            time.sleep(0.05)
        root = one_trace(swept, run_trace, "sweep-worker", "pubsub", dispatch[0]["span"])
        assert root["attributes"]["faas.invocation_id"] == sweeper.traces[-1][0]
        slice_spans = [s for s in swept if s["name"] == "sweep.slice"]
        assert len(slice_spans) == 1
        assert own_trace in {trace for trace, _ in slice_spans[0]["links"]}, "the slice links Lambda's own trace"
        assert aws_requests(swept) == served, "a span per AWS request the endpoint served"
        names = {s["name"] for s in swept}
        assert set(STEPS) <= names, sorted(names)
        rotation = [s for s in swept if s["name"] == "rotate_idempotent"]
        assert rotation and rotation[0]["attributes"]["org"] == org
    assert all(s["trace"] == run_trace for s in receiver.of("sweep-worker")), "one trace: the run's"
    assert_no_secret(receiver, secrets_of(world, org))


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_collector_changes_nothing_for_the_caller(world):
    worker = world["worker"]
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        for name, endpoint in (("closed", f"http://127.0.0.1:{closed_port()}"),
                               ("silent", f"http://127.0.0.1:{silent.getsockname()[1]}")):
            gateway = worker.functions(worker.proxy.endpoint, lambda: worker.now, name,
                                       OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="500")
            try:
                gateway.runtimes["RotateKeyFunction"].warm()
                org = worker.new_org(name[0])
                took = []
                for _ in range(2):  # the second call waits for no export left over by the first
                    started = time.monotonic()
                    status, answer = worker.rotate(org, gateway=gateway)
                    took.append(time.monotonic() - started)
                    assert status == 200, (name, answer)
                    assert answer["secretAccessKey"]
                # A rotation takes well under a second here; the export timeout is half a second.
                assert max(took) < 5, (name, took)
                logs = (worker.stack.log_dir / worker.name / name / "rotate-key.log").read_text()
                assert "could not export this invocation's traces" in logs, logs[-2000:]
                assert "panicked" not in logs
            finally:
                gateway.close()
    finally:
        silent.close()
