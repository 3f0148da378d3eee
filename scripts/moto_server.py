"""Local AWS endpoint for s3-key-rotation: moto server on a loopback port.

Differences from a plain `moto_server`:
- it binds the port the OS picks (or --port) and prints `PORT <n>` on stdout
  once it accepts connections, so a test harness never races for a port;
- an IAM access key that is not `Active` no longer authenticates (moto 5.2.5
  accepts inactive keys), so "the old key stops working" can be observed when
  credential enforcement is on (`POST /moto-api/reset-auth`, body `0`).
It exits when its standard input closes, so it never outlives its parent.
"""
import argparse
import sys
import threading

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
        DomainDispatcherApplication(create_backend_app),
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
