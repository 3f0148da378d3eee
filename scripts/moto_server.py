"""Local AWS endpoint for s3-key-rotation: moto server on a loopback port.

Differences from a plain `moto_server`:
- it binds the port the OS picks (or --port) and prints `PORT <n>` on stdout
  once it accepts connections, so a test harness never races for a port;
- an IAM access key that is not `Active` no longer authenticates (moto 5.2.5
  accepts inactive keys), so "the old key stops working" can be observed when
  credential enforcement is on (`POST /moto-api/reset-auth`, body `0`).
It exits when its standard input closes, so it never outlives its parent.

For the benchmarks it counts the AWS requests it serves and the time it spends
serving them: `GET /moto-api/bench/stats` answers {"requests": n, "busySeconds": s}.
"""
import argparse
import json
import sys
import threading
import time

from moto.iam import access_control
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_original_init = access_control.IAMUserAccessKey.__init__


def _active_keys_only(self, account_id, partition, access_key_id, headers):
    _original_init(self, account_id, partition, access_key_id, headers)
    for user in self.backend.list_users("/", None, None):
        for key in user.access_keys:
            if key.access_key_id == access_key_id and key.status != "Active":
                raise access_control.CreateAccessKeyFailure(reason="InvalidId")


access_control.IAMUserAccessKey.__init__ = _active_keys_only


class RequestStats:
    """WSGI middleware: counts requests and their service time (not its own endpoint)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.requests = 0
        self.busy = 0.0

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/moto-api/bench/stats":
            with self.lock:
                body = json.dumps({"requests": self.requests, "busySeconds": self.busy}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        started = time.perf_counter()
        try:
            return list(self.app(environ, start_response))
        finally:
            with self.lock:
                self.requests += 1
                self.busy += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("the local stack listens on loopback only")
    server = make_server(
        args.host,
        args.port,
        RequestStats(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_port}", flush=True)
    # Serve until the parent closes our stdin (or we are killed).
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
