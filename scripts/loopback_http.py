"""The HTTP servers of the local harness (standard library only): threaded, on
loopback, HTTP/1.1 with persistent connections, silent about requests and about
peers that go away (a function process stopped, a client that gave up)."""
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many callers at once (a load test releases them together): room for them to queue.
    request_queue_size = 256

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError, socket.timeout)):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        """The request body, sent with a Content-Length or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return data
                data += chunk
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
