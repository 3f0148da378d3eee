"""A fault-injecting reverse proxy between the function binaries and the local
AWS endpoint (standard library only).

The functions reach AWS through `AWS_ENDPOINT_URL`; point it at the proxy and
every request is forwarded to the upstream endpoint (moto) unchanged: same
method, path, headers (the SigV4 signature covers the Host header, which is
passed through as signed) and body. The proxy counts the requests and names
each by its kind, `service:Operation` (the service from the signature's
credential scope; the operation from `X-Amz-Target`, the `Action` form field,
or S3's method and path).

For one request of a run, the k-th counted since `arm()`, it injects a fault:

| kind      | what the client sees                                                           |
| --------- | ------------------------------------------------------------------------------ |
| `500`     | HTTP 500 `InternalError` (S3) / `InternalFailure`, in the protocol's own shape |
| `503`     | HTTP 503 throttling: `SlowDown` (S3 XML), `Throttling` (query), `ThrottlingException` (JSON) |
| `close`   | the connection closes without an answer; the request never reached AWS         |
| `lost`    | the request is forwarded (it takes effect), then the connection closes unanswered |
| `stall`   | no answer for `stall_seconds` (not forwarded), then the connection closes      |

With `persist=False` only that attempt fails (the SDK's retry then succeeds);
with `persist=True` every retry of it fails too (same `amz-sdk-invocation-id`;
without one, every later request of the same kind): an outage of that call,
which reaches the error paths. A `hook` runs at the moment of the fault (after
forwarding, for `lost`): a test uses it to kill the client at that very point.

Without a fault (`kind=None`, a pause), the `hook` runs before the k-th request
is forwarded and the request waits until it returns; then it is forwarded and
answered as usual: a test uses it to let a second actor act at that very point
of the first one's run (through another proxy or straight to AWS, so that this
proxy's count stays the first actor's).

In-process: `FaultProxy(upstream_port)`, `.endpoint`, `.arm(k, kind, persist)`,
`.arm(k, None, hook=f)` (a pause), `.log()`, `.close()`. Standalone: `python
scripts/fault_proxy.py --upstream PORT` prints `PORT <n>`, and takes its orders on
paths no AWS client uses:
`POST /__fault_proxy__/arm` `{"k": 3, "kind": "lost", "persist": false}` (`"kind": null`: no fault),
`POST /__fault_proxy__/reset`, `GET /__fault_proxy__/log`.
"""
import argparse
import http.client
import json
import re
import socket
import sys
import threading
import uuid
from urllib.parse import parse_qsl, urlsplit

from loopback_http import Handler as QuietHandler
from loopback_http import Server

KINDS = ("500", "503", "close", "lost", "stall")
CONTROL = "/__fault_proxy__/"
# Not forwarded either way: they concern one connection only.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect", "content-length"}
JSON_SERVICES = {"secretsmanager", "events", "sqs", "kms", "logs"}


def describe(method, path, headers, body):
    """(service, operation, detail) of an AWS request."""
    scope = re.search(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request", headers.get("authorization", ""))
    service = scope.group(1) if scope else "unknown"
    target = headers.get("x-amz-target")
    if target:
        return service, target.rsplit(".", 1)[-1], ""
    url = urlsplit(path)
    if service != "s3":
        fields = dict(parse_qsl(url.query))
        if "form-urlencoded" in headers.get("content-type", ""):
            fields.update(parse_qsl(body.decode(errors="replace")))
        return service, fields.get("Action", f"{method} {url.path}"), ""
    parts = [p for p in url.path.split("/") if p]
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    detail = "/".join(parts[:2])  # the bucket and the first segment of the key
    if len(parts) <= 1:
        if method == "GET":
            return service, "ListObjectsV2" if "list-type" in query else "ListObjects", detail
        return service, {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(
            method, method), detail
    operation = {"GET": "GetObject", "PUT": "CopyObject" if "x-amz-copy-source" in headers else "PutObject",
                 "DELETE": "DeleteObject", "HEAD": "HeadObject", "POST": "PostObject"}.get(method, method)
    return service, operation, detail


def error_answer(service, kind):
    """(status, headers, body) of an AWS error in the service's protocol."""
    request_id = str(uuid.uuid4())
    if kind == "500":
        status, message = 500, "We encountered an internal error. Please try again."
        code = {"s3": "InternalError"}.get(service, "InternalFailure")
    else:
        status, message = 503, "Rate exceeded"
        code = "SlowDown" if service == "s3" else "ThrottlingException" if service in JSON_SERVICES else "Throttling"
    if service == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f'<RequestId>{request_id}</RequestId></Error>')
        return status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], body.encode()
    if service in JSON_SERVICES:
        body = json.dumps({"__type": code, "message": message})
        return status, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code),
                        ("x-amzn-RequestId", request_id)], body.encode()
    kind_of_fault = "Receiver" if status == 500 else "Sender"
    body = (f'<ErrorResponse><Error><Type>{kind_of_fault}</Type><Code>{code}</Code><Message>{message}</Message>'
            f'</Error><RequestId>{request_id}</RequestId></ErrorResponse>')
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


def unprovoked_retries(log):
    """The entries of a log that retry an attempt the proxy did not fault: the client
    gave up on an answer by itself (its attempt timeout, on a loaded machine)."""
    last_fault = {}
    unprovoked = []
    for entry in log:
        number = re.search(r"attempt=(\d+)", entry["attempt"] or "")
        key = entry["invocation"]
        if number and int(number.group(1)) > 1 and key and not last_fault.get(key):
            unprovoked.append(entry)
        last_fault[key] = entry["fault"]
    return unprovoked


class FaultProxy:
    """A reverse proxy on a free loopback port in front of `127.0.0.1:upstream_port`."""

    def __init__(self, upstream_port, stall_seconds=10.0, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.stall_seconds = stall_seconds
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.reset()
        self.server = Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_port
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def reset(self):
        """No fault armed; the count starts again at 1."""
        with self.lock:
            self._count = 0
            self._log = []
            self._fault = None  # (k, kind, persist, hook)
            self._invocation = None

    def arm(self, k, kind, persist=False, hook=None):
        """From now on, count requests from 1; fault the k-th (and, with `persist`, its retries).
        `kind=None`: no fault; `hook` runs before the k-th request is forwarded, which waits for it."""
        if kind is None and persist:
            raise ValueError("persist needs a fault kind")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS} (or None: a pause)")
        if k < 1:
            raise ValueError("k counts from 1")
        self.reset()
        with self.lock:
            self._fault = (k, kind, persist, hook)

    def count(self):
        with self.lock:
            return self._count

    def log(self):
        """One entry per request since the last arm()/reset(): n, kind, detail, attempt (the SDK's
        `amz-sdk-request`), fault (or None), invocation (`amz-sdk-invocation-id`)."""
        with self.lock:
            return [dict(entry) for entry in self._log]

    def faulted(self):
        """The entries of the requests that got a fault."""
        return [e for e in self.log() if e["fault"]]

    def kinds(self):
        """The kinds of the requests of the run, in order (`service:Operation`)."""
        return [e["kind"] for e in self.log()]

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, kind, detail, headers):
        """Counts one request; returns (fault kind or None, hook): a hook without a
        fault is a pause before forwarding."""
        invocation = headers.get("amz-sdk-invocation-id")
        attempt = headers.get("amz-sdk-request", "")
        with self.lock:
            self._count += 1
            n = self._count
            fault, hook = None, None
            if self._fault is not None:
                k, fault_kind, persist, hook_fn = self._fault
                if n == k:
                    fault, hook = fault_kind, hook_fn
                    self._invocation = (invocation or kind) if persist else None
                elif self._invocation is not None and (invocation or kind) == self._invocation:
                    fault = fault_kind
            self._log.append({"n": n, "kind": kind, "detail": detail, "attempt": attempt, "fault": fault,
                              "invocation": invocation})
            return fault, hook

    def _control(self, handler, method, path, body):
        if method == "POST" and path == CONTROL + "arm":
            order = json.loads(body or b"{}")
            kind = order.get("kind")
            self.arm(int(order["k"]), None if kind is None else str(kind), bool(order.get("persist", False)))
            return 200, {"armed": order}
        if method == "POST" and path == CONTROL + "reset":
            self.reset()
            return 200, {"reset": True}
        if method == "GET" and path == CONTROL + "log":
            return 200, {"requests": self.count(), "log": self.log()}
        return 404, {"error": f"unknown control path {path}"}

    def _forward(self, upstream, method, path, headers, body):
        """Sends the request upstream on the client connection's own upstream
        connection (`upstream`: a one-element list, reconnected as needed);
        returns (status, reason, headers, body)."""
        for _ in (1, 2):
            reused = upstream[0] is not None
            if not reused:
                upstream[0] = http.client.HTTPConnection(*self.upstream, timeout=60)
                upstream[0].connect()
                upstream[0].sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = upstream[0]
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                upstream[0] = None
                if not reused:
                    raise
                continue  # the upstream had closed the idle connection: once more on a new one
            if response.will_close:
                conn.close()
                upstream[0] = None
            return response.status, response.reason, response.getheaders(), data

    def _handler(self):
        proxy = self

        class Handler(QuietHandler):
            def setup(self):
                super().setup()
                # An answer is written as headers, then body: without this, Nagle's
                # algorithm and the client's delayed ACK hold every body back ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.upstream = [None]  # this client connection's connection to the endpoint

            def finish(self):
                super().finish()
                if self.upstream[0] is not None:
                    self.upstream[0].close()

            def _hang_up(self):
                """Closes the connection without a byte of answer."""
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _send(self, status, headers, body, reason=None):
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD" or status in (204, 304):
                    length = dict((k.lower(), v) for k, v in headers).get("content-length")
                    if length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self):
                body = self.read_body()
                if self.path.startswith(CONTROL):
                    status, answer = proxy._control(self, self.command, urlsplit(self.path).path, body)
                    return self._send(status, [("Content-Type", "application/json")], json.dumps(answer).encode())
                lowered = {k.lower(): v for k, v in self.headers.items()}
                service, operation, detail = describe(self.command, self.path, lowered, body)
                fault, hook = proxy._decide(f"{service}:{operation}", detail, lowered)
                if fault is None and hook:
                    hook()  # a pause: the request waits for the hook, then goes on as usual
                if fault in ("500", "503"):
                    if hook:
                        hook()
                    return self._send(*error_answer(service, fault))
                if fault == "close":
                    if hook:
                        hook()
                    return self._hang_up()
                if fault == "stall":
                    if hook:
                        hook()
                    proxy.closing.wait(proxy.stall_seconds)
                    return self._hang_up()
                try:
                    status, reason, headers, data = proxy._forward(self.upstream, self.command, self.path,
                                                                    self.headers.items(), body)
                except OSError as e:
                    return self._send(502, [("Content-Type", "text/plain")], f"upstream: {e}".encode())
                if fault == "lost":
                    if hook:
                        hook()
                    return self._hang_up()
                self._send(status, headers, data, reason)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

        return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=int, required=True, help="port of the AWS endpoint on 127.0.0.1")
    parser.add_argument("--stall-seconds", type=float, default=10.0)
    args = parser.parse_args()
    proxy = FaultProxy(args.upstream, args.stall_seconds)
    print(f"PORT {proxy.port}", flush=True)
    try:
        sys.stdin.read()  # serve until the parent closes our stdin
    except KeyboardInterrupt:
        pass
    proxy.close()


if __name__ == "__main__":
    main()
