"""The lab's simulators (RENAPO, SAT, SMTP sink) and what they share: a threaded HTTPS server and request counters."""
from __future__ import annotations

import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HANDSHAKE_TIMEOUT = 5.0
IO_TIMEOUT = 30.0


class Stats:
    """Request counters per endpoint and outcome, shared by the three servers (read at GET /__lab/stats)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict:
        with self._lock:
            return dict(sorted(self._counts.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class TLSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose TLS handshake runs in the worker thread, so a slow or failing client never blocks
    the accept loop; the SSL context is asked for per connection, so a server can change certificates live."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, context: Callable[[], ssl.SSLContext], stats: Stats, name: str,
                 log: Callable[[str], None] | None = None) -> None:
        self.context, self.stats, self.name = context, stats, name
        self.log = log or (lambda _line: None)
        super().__init__(address, handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def finish_request(self, request, client_address) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.stats.inc(f"{self.name}.tls_refused")
            self.log(f"{self.name} {client_address[0]} TLS handshake refused: {e}")
            return
        try:
            tls.settimeout(IO_TIMEOUT)
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError) as e:
            self.log(f"{self.name} {client_address[0]} connection error: {e}")
        finally:
            tls.close()


class Handler(BaseHTTPRequestHandler):
    """Common replies and one log line per request through the server's log function."""

    server: TLSServer
    server_version = "LabSim/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        self.server.log(f"{self.server.name} {self.client_address[0]} " + format % args)

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, data: dict) -> None:
        self.send_body(status, json.dumps(data, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def serve_stats(self) -> bool:
        """GET /__lab/stats → counters; POST /__lab/stats/reset → zero them. True when the path was one of these."""
        if self.command == "GET" and self.path == "/__lab/stats":
            self.send_json(200, self.server.stats.snapshot())
            return True
        if self.command == "POST" and self.path == "/__lab/stats/reset":
            self.server.stats.reset()
            self.send_json(200, {})
            return True
        return False
