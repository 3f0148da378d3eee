"""An API Gateway (HTTP API) stand-in that serves the functions of template.yaml.

It reads the template the way a deployment would use it: the HttpApi routes of
each function, their JWT authorizer and AuthorizationScopes, and the functions'
environment, memory and timeout (Refs resolved against the parameters given,
else the template's defaults). For every HTTP request it
1. finds the route (404 `{"message":"Not Found"}` otherwise);
2. authorizes the bearer token like the JWT authorizer: signature, issuer,
   audience, expiry (401 `{"message":"Unauthorized"}`), then the route's scopes
   (403 `{"message":"Forbidden"}`);
3. builds the HTTP API payload-2.0 event with the token's claims and scopes;
4. hands it to the function's binary through a Lambda Runtime API of its own
   (the binary runs as Lambda runs a `bootstrap`, with AWS_LAMBDA_RUNTIME_API
   pointing at it; `concurrency` such processes per function, 1 by default, so
   that concurrent calls run at the same time as in Lambda's sandboxes);
5. turns the function's answer back into HTTP (a function error or timeout is
   500 `{"message":"Internal Server Error"}`, as API Gateway answers).

Tokens are HS256-signed with a secret shared with the test (API Gateway fetches
the issuer's public keys instead; what it checks is the same). Function logs go
to one file per function, so a test can search them.
"""
import base64
import json
import queue
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import jwt

import cfn

from loopback_http import Handler as QuietHandler
from loopback_http import Server

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
ACCOUNT_ID = "123456789012"
API_ID = "localapi01"


def load_template(path=TEMPLATE):
    return cfn.load(path)


@dataclass
class Function:
    name: str  # logical id
    binary: str
    environment: dict
    memory: int
    timeout: int
    log_format: str
    routes: list = field(default_factory=list)  # [(method, path, scopes)]


class Deployment:
    """The functions and routes of the template, with parameters resolved."""

    def __init__(self, parameters, template=None):
        self.template = template or load_template()
        declared = self.template.get("Parameters", {})
        self.parameters = cfn.parameters(self.template, parameters)
        # The stand-in has no queues: a variable naming one (SWEEP_QUEUE_URL) is
        # left unset unless the caller passes the queue, so scheduled-rotation
        # sweeps in-process, as the tests drive it.
        self.parameters.update({name: None for name, r in self.template["Resources"].items()
                                if r["Type"] == "AWS::SQS::Queue"})
        # The stack's other resources (the vault's key, the boundary policy) are
        # left out of the functions' environment unless the caller names them.
        for name, resource in self.template["Resources"].items():
            self.parameters.setdefault(name, None)
            self.parameters.setdefault(f"{name}.Arn", None)
        self.parameters.update({k: v for k, v in parameters.items() if k not in declared})
        self.parameters.setdefault("AWS::Partition", "aws")
        self.parameters.setdefault("AWS::Region", "us-east-1")
        self.parameters.setdefault("AWS::AccountId", ACCOUNT_ID)
        self.functions = {}
        api = self._http_api()
        self.authorizer = api["Properties"]["Auth"]["Authorizers"]
        self.default_authorizer = api["Properties"]["Auth"].get("DefaultAuthorizer")
        globals_ = self.template.get("Globals", {}).get("Function", {})
        for name, resource in self.template["Resources"].items():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            props = resource["Properties"]
            env = dict(globals_.get("Environment", {}).get("Variables", {}))
            env.update(props.get("Environment", {}).get("Variables", {}))
            env = {k: self.resolve(v) for k, v in env.items()}
            # SAM merges the function's LoggingConfig (its LogGroup) into the Globals' (LogFormat).
            logging_config = {**globals_.get("LoggingConfig", {}), **props.get("LoggingConfig", {})}
            function = Function(
                name=name,
                binary=resource["Metadata"]["BuildProperties"]["Binary"],
                environment={k: str(v) for k, v in env.items() if v is not None},
                memory=int(props.get("MemorySize", globals_.get("MemorySize", 128))),
                timeout=int(props.get("Timeout", globals_.get("Timeout", 3))),
                log_format=logging_config.get("LogFormat", "Text"),
            )
            for event in props.get("Events", {}).values():
                if event["Type"] != "HttpApi":
                    continue
                p = event["Properties"]
                auth = p.get("Auth", {})
                scopes = [self.resolve(s) for s in auth.get("AuthorizationScopes", [])]
                authorizer = auth.get("Authorizer", self.default_authorizer)
                function.routes.append((p["Method"].upper(), p["Path"], authorizer, scopes))
            self.functions[name] = function

    def _http_api(self):
        for resource in self.template["Resources"].values():
            if resource["Type"] == "AWS::Serverless::HttpApi":
                return resource
        raise ValueError("the template has no AWS::Serverless::HttpApi")

    def resolve(self, value):
        return cfn.resolve(value, self.parameters, self.template.get("Conditions", {}))

    def route(self, method, path):
        for function in self.functions.values():
            for m, p, authorizer, scopes in function.routes:
                if m == method and p == path:
                    return function, f"{m} {p}", authorizer, scopes
        return None


class FunctionError(Exception):
    pass


class RuntimeApi:
    """A Lambda Runtime API for one function, and the function's processes under it.

    Lambda runs concurrent invocations of a function in separate execution
    environments ("sandboxes"), each a process of its own that asks its own
    Runtime API for the next event. Here `concurrency` sandboxes (1 by default)
    share one queue of invocations: with more than one, invocations really run
    at the same time. An invocation that finds every sandbox busy waits for
    one (Lambda would start another, up to the account's concurrency); its
    timeout counts from the moment a sandbox takes it, as in Lambda.
    """

    def __init__(self, function, environment, binary_dir, log_path, concurrency=1, queue_timeout=120):
        self.function = function
        self.environment = environment
        self.binary = Path(binary_dir) / function.binary
        self.log_path = Path(log_path)
        self.queue_timeout = queue_timeout
        self.events = queue.Queue()
        self.pending = {}  # request id -> queue of the invoker waiting for the answer
        self.taken = {}  # request id -> (sandbox, deadline) once a sandbox took it
        self.running = 0  # invocations taken and not yet answered
        self.waiting = 0  # sandboxes' requests for work waiting for an invocation
        self.most_running = 0  # the most there ever were at once
        self.lock = threading.Lock()
        self.init_error = None
        # Each invocation's X-Ray trace header (Lambda-Runtime-Trace-Id), in the order invoked:
        # [(request id, header)]; its Root is the trace the invocation's spans continue.
        self.traces = []
        self.polled = threading.Event()
        self.first_poll = None
        self.sandboxes = [_Sandbox(self, i) for i in range(concurrency)]

    @property
    def process(self):
        """The process of the first sandbox (the only one, by default)."""
        return self.sandboxes[0].process

    def _take(self, sandbox, process):
        """The next invocation, for `sandbox`'s `process` (blocks until there is one), or
        None once that process is no longer the sandbox's live one (ended by recycle())."""
        if process is None or process is not sandbox.process or process.poll() is not None:
            return None
        with self.lock:
            if not self.polled.is_set():
                self.first_poll = time.perf_counter()
                self.polled.set()
        sandbox.polled.set()
        with self.lock:
            self.waiting += 1
        try:
            taken = self.events.get()
        finally:
            with self.lock:
                self.waiting -= 1
        if taken is None:  # its process was ended by recycle(): no answer
            return None
        if process is not sandbox.process or process.poll() is not None:
            self.events.put(taken)  # asked for by a process ended since: for a live one
            return None
        request_id, event, timeout, trace = taken
        deadline = time.time() + timeout
        with self.lock:
            self.taken[request_id] = (sandbox, deadline)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        return request_id, event, int(deadline * 1000), trace

    def _answer(self, request_id, kind, body):
        with self.lock:
            waiter = self.pending.get(request_id)
            self._done(request_id)
        if waiter is not None:
            waiter.put((kind, body))

    def _done(self, request_id):
        """The invocation no longer runs (answered, timed out, or its sandbox died); under the lock."""
        if self.taken.pop(request_id, None) is not None:
            self.running -= 1

    def _ensure_running(self):
        for sandbox in self.sandboxes:
            sandbox.ensure_running()

    @property
    def process(self):
        """The first sandbox's process (with one sandbox: the function's process)."""
        return self.sandboxes[0].process

    def processes(self):
        """The processes of the sandboxes started so far (the latest of each), e.g. to read their memory."""
        return [s.process for s in self.sandboxes if s.process is not None]

    def first_poll_at(self, timeout=30):
        """perf_counter() time of the function's first request for work (its init is done)."""
        if not self.polled.wait(timeout):
            raise FunctionError(f"{self.function.binary} did not ask for work within {timeout} s")
        return self.first_poll

    def warm(self, timeout=60):
        """Starts every sandbox and waits until each asks for work (its init is done)."""
        self._ensure_running()
        until = time.time() + timeout
        for sandbox in self.sandboxes:
            if not sandbox.polled.wait(max(0.0, until - time.time())):
                raise FunctionError(f"{self.function.binary} sandbox {sandbox.index} did not start within {timeout} s")

    def recycle(self, timeout=10):
        """Ends the function's processes, as Lambda retires its execution environments when
        it likes: the next invocation starts new ones (a cold start, nothing cached in the
        process from an earlier invocation). Not while an invocation runs."""
        with self.lock:
            if self.taken:
                raise RuntimeError(f"{self.function.binary}: recycle() while an invocation runs")
        for sandbox in self.sandboxes:
            if sandbox.process is not None and sandbox.process.poll() is None:
                sandbox.process.kill()
                sandbox.process.wait()
        # The ended processes' requests for work still wait for an invocation: release them.
        with self.lock:
            waiting = self.waiting
        for _ in range(waiting):
            self.events.put(None)
        until = time.time() + timeout
        while time.time() < until:
            with self.lock:
                if self.waiting == 0:
                    return
            time.sleep(0.01)
        raise RuntimeError(f"{self.function.binary}: its ended processes' requests for work did not end")

    def invoke(self, event, trace=None):
        """Runs one invocation; returns the function's JSON answer or raises FunctionError.
        `trace`: its X-Ray trace header (Lambda-Runtime-Trace-Id), a new sampled root by default."""
        self._ensure_running()
        request_id = str(uuid.uuid4())
        waiter = queue.Queue()
        trace = trace or xray_trace_header()
        with self.lock:
            self.pending[request_id] = waiter
            self.traces.append((request_id, trace))
        queued_until = time.time() + self.queue_timeout
        self.events.put((request_id, json.dumps(event).encode(), self.function.timeout, trace))
        try:
            while True:
                try:
                    kind, body = waiter.get(timeout=0.1)
                    break
                except queue.Empty:
                    with self.lock:
                        sandbox, deadline = self.taken.get(request_id, (None, None))
                    if sandbox is None:
                        if all(s.process.poll() is not None for s in self.sandboxes):
                            raise FunctionError(f"{self.function.binary} exited with {self.process.returncode}")
                        if time.time() > queued_until:
                            raise FunctionError(f"no sandbox of {self.function.binary} was free for {self.queue_timeout} s")
                        continue
                    if sandbox.process.poll() is not None:
                        raise FunctionError(f"{self.function.binary} exited with {sandbox.process.returncode}")
                    if time.time() > deadline:
                        sandbox.process.kill()
                        raise FunctionError(f"{self.function.binary} timed out after {self.function.timeout} s")
        finally:
            with self.lock:
                del self.pending[request_id]
                self._done(request_id)
        if kind == "error":
            raise FunctionError(body.decode(errors="replace"))
        return json.loads(body)

    def close(self):
        # All sandboxes at once: each waits for its process to stop and for its server's next
        # poll (half a second); one after the other, 50 sandboxes took over a minute.
        closing = [threading.Thread(target=sandbox.close) for sandbox in self.sandboxes]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()


class _Sandbox:
    """One execution environment of a function: its process and the Runtime API it polls."""

    def __init__(self, api, index):
        self.api = api
        self.index = index
        self.process = None
        self.polled = threading.Event()
        self.server = Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        sandbox = self
        api = self.api

        class Handler(QuietHandler):

            def _reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    return self._reply(404)
                taken = api._take(sandbox, sandbox.process)
                if taken is None:  # the sandbox's process was ended (recycle())
                    self.close_connection = True
                    return
                request_id, event, deadline_ms, trace = taken
                self._reply(200, event, [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", request_id),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{api.function.binary}"),
                    ("Lambda-Runtime-Trace-Id", trace),
                ])

            def do_POST(self):
                body = self.read_body()
                m = re.fullmatch(r"/2018-06-01/runtime/invocation/([^/]+)/(response|error)", self.path)
                if m:
                    api._answer(m.group(1), m.group(2), body)
                    return self._reply(202, b'{"status":"OK"}')
                if self.path == "/2018-06-01/runtime/init/error":
                    api.init_error = body
                    return self._reply(202, b'{"status":"OK"}')
                self._reply(404)

        return Handler

    def ensure_running(self):
        if self.process is not None and self.process.poll() is None:
            return
        api = self.api
        env = dict(api.environment)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_port}",
            "AWS_LAMBDA_FUNCTION_NAME": api.function.binary,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(api.function.memory),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{api.function.binary}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"local/{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_FORMAT": api.function.log_format.upper(),
            "_HANDLER": "bootstrap",
        })
        self.polled.clear()
        log = open(api.log_path, "ab")
        self.process = subprocess.Popen([str(api.binary)], env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.server.shutdown()
        self.server.server_close()


def xray_trace_header(sampled=True):
    """A new X-Ray trace header as Lambda passes it with active tracing:
    `Root=1-<epoch seconds, 8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1`."""
    return (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};"
            f"Sampled={int(sampled)}")


def _claim_value(value):
    """HTTP API passes every claim to the function as a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(_claim_value(v) for v in value) + "]"
    return json.dumps(value)


def in_process_role(name, env):
    """The role function `name` runs under with the variables `env`: its own, but for
    scheduled-rotation without SWEEP_QUEUE_URL. The template always sets that variable (the
    function only dispatches, and its role holds only what dispatching needs); without it the
    binary sweeps every org in process, which is the sweep-worker's work, so it runs under the
    sweep-worker's role (as the tests that drive that mode run it)."""
    if name == "ScheduledRotationFunction" and not env.get("SWEEP_QUEUE_URL"):
        return "SweepWorkerFunction"
    return name


class Gateway:
    """The HTTP side: `Gateway(deployment, environment, jwt_secret, log_dir, credentials=…)`, then `.url`.
    `clock` (default: the real time) gives the request time of each event."""

    def __init__(self, deployment, environment, jwt_secret, log_dir, *, credentials, binary_dir=ROOT / "target" / "debug",
                 concurrency=1, clock=None):
        """`credentials`: {logical id: environment} giving each function its role's credentials
        (`LocalAws.function_credentials`); `concurrency`: sandboxes per function (see
        RuntimeApi); 1 runs one invocation at a time."""
        self.deployment = deployment
        self.jwt_secret = jwt_secret
        # The request time API Gateway stamps on each event (a test may move it).
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.log_dir = Path(log_dir)
        self.runtimes = {}
        # A runtime per function (its processes start at its first event); the
        # functions without routes (scheduled-rotation) are invoked directly.
        for name, function in deployment.functions.items():
            env = dict(environment)
            env.update(function.environment)
            env.update(credentials[in_process_role(name, env)])
            self.runtimes[name] = RuntimeApi(function, env, binary_dir, self.log_dir / f"{function.binary}.log",
                                             concurrency=concurrency)
        self.server = Server(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def logs(self):
        """Everything the functions wrote to stdout and stderr so far."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        closing = [threading.Thread(target=runtime.close) for runtime in self.runtimes.values()]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()

    def authorize(self, authorizer, headers):
        """Claims and scopes of a valid bearer token, or None (401)."""
        config = self.deployment.authorizer[authorizer]
        source = config["IdentitySource"]
        header = source.removeprefix("$request.header.").lower()
        value = headers.get(header, "").strip()
        if value[:7].lower() == "bearer ":  # the prefix is optional, as in API Gateway
            value = value[7:].strip()
        if not value:
            return None
        jwt_config = config["JwtConfiguration"]
        try:
            claims = jwt.decode(
                value, self.jwt_secret, algorithms=["HS256"],
                issuer=self.deployment.resolve(jwt_config["issuer"]),
                audience=[self.deployment.resolve(a) for a in jwt_config["audience"]],
                options={"require": ["exp", "iss"]},
            )
        except jwt.InvalidTokenError:
            return None
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = scope.split() if isinstance(scope, str) else list(scope)
        return {k: _claim_value(v) for k, v in claims.items()}, scopes

    def event(self, method, target, headers, body, route_key, claims, scopes):
        url = urlsplit(target)
        query = {}
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
        now = self.clock()
        text = None
        encoded = False
        if body:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                text, encoded = base64.b64encode(body).decode(), True
        event = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": url.path,
            "rawQueryString": url.query,
            "headers": headers,
            "requestContext": {
                "accountId": ACCOUNT_ID,
                "apiId": API_ID,
                "authorizer": {"jwt": {"claims": claims, "scopes": scopes}},
                "domainName": f"{API_ID}.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": API_ID,
                "http": {"method": method, "path": url.path, "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": headers.get("user-agent", "")},
                "requestId": base64.b32encode(uuid.uuid4().bytes).decode()[:16],
                "routeKey": route_key,
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "isBase64Encoded": encoded,
        }
        if query:
            event["queryStringParameters"] = query
        if text is not None:
            event["body"] = text
        return event

    def _handler(self):
        gateway = self

        class Handler(QuietHandler):
            def _reply(self, status, body, headers=(("Content-Type", "application/json"),)):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("apigw-requestid", uuid.uuid4().hex[:16])
                self.end_headers()
                self.wfile.write(body)

            def _serve(self):
                body = self.read_body()
                headers = {}
                for k, v in self.headers.items():
                    k = k.lower()
                    headers[k] = f"{headers[k]},{v}" if k in headers else v
                path = urlsplit(self.path).path
                found = gateway.deployment.route(self.command, path)
                if found is None:
                    return self._reply(404, b'{"message":"Not Found"}')
                function, route_key, authorizer, scopes = found
                claims, token_scopes = None, []
                if authorizer and authorizer != "NONE":
                    authorized = gateway.authorize(authorizer, headers)
                    if authorized is None:
                        return self._reply(401, b'{"message":"Unauthorized"}',
                                           [("Content-Type", "application/json"), ("www-authenticate", "Bearer")])
                    claims, token_scopes = authorized
                    if scopes and not set(scopes) & set(token_scopes):
                        return self._reply(403, b'{"message":"Forbidden"}')
                event = gateway.event(self.command, self.path, headers, body, route_key, claims, token_scopes)
                try:
                    answer = gateway.runtimes[function.name].invoke(event)
                except FunctionError:
                    return self._reply(500, b'{"message":"Internal Server Error"}')
                if not isinstance(answer, dict) or "statusCode" not in answer:
                    return self._reply(200, json.dumps(answer).encode())
                payload = answer.get("body") or ""
                payload = base64.b64decode(payload) if answer.get("isBase64Encoded") else payload.encode()
                out = list(answer.get("headers", {}).items())
                for k, values in answer.get("multiValueHeaders", {}).items():
                    out += [(k, v) for v in values]
                out += [("Set-Cookie", c) for c in answer.get("cookies", [])]
                self._reply(int(answer["statusCode"]), payload, out)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


def token(secret, issuer, audience, org=None, scope="admin", org_claim="org_id", lifetime=3600, **extra):
    """An HS256 bearer token as the identity provider would issue it."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": "admin@example.com", "iat": now, "exp": now + lifetime,
              "scope": scope, **extra}
    if org is not None:
        claims[org_claim] = org
    return jwt.encode(claims, secret, algorithm="HS256")
