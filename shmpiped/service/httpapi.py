"""Read-only HTTP endpoints: /metrics, /healthz, /readyz, /status.

Every response comes from the last :class:`Published` snapshot that the
daemon's main loop swapped in, already rendered to bytes: a request costs a
reference read and a socket write, so a slow or hostile client never blocks
supervision and a flood of requests does no work per request.  Nothing here
changes the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .metrics import exposition, negotiate

log = logging.getLogger("shmpiped.http")

REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Published:
    """One immutable snapshot, as served.

    The JSON and each negotiated form of the metrics (text or OpenMetrics,
    plain or gzip) are rendered on the first request that needs them, in that
    request's thread, and then kept: the main loop pays nothing for them, and a
    flood of requests for one snapshot renders each form once.
    """

    taken_at: float            # time.monotonic() when the main loop produced it
    snapshot: dict             # runtime_snapshot() plus the daemon's own figures; never mutated
    ready: bool
    ready_reason: str
    _metrics: dict = field(default_factory=dict, compare=False, repr=False)  # (type, gzip) -> (body, headers)

    @cached_property
    def status_json(self) -> bytes:
        return json.dumps(self.snapshot, default=list).encode()

    def metrics(self, accept: str | None, accept_encoding: str | None) -> tuple[bytes, list[tuple[str, str]]]:
        """/metrics body and headers as prometheus_client negotiates them for these request headers."""
        key = negotiate(accept, accept_encoding)
        cached = self._metrics.get(key)
        if cached is None:  # two racing requests render twice, harmlessly
            cached = self._metrics[key] = exposition(self.snapshot, accept, accept_encoding)
        return cached

    @property
    def metrics_text(self) -> bytes:
        """The classic text exposition, uncompressed."""
        return self.metrics(None, None)[0]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"HTTP address must be HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _lower_this_thread_priority(cpus: set[int] | None) -> None:
    """Serve requests only with CPU time that nothing else wants (Linux: SCHED_IDLE per thread),
    and only on ``cpus`` (those no worker is pinned to) when there are any.

    The pipeline's workers, its source threads and the supervisor loop always
    win the CPU over a scraper, however many requests arrive.
    """
    tid = threading.get_native_id()
    if cpus:
        try:
            os.sched_setaffinity(tid, cpus)
        except (AttributeError, OSError):
            pass
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except (AttributeError, OSError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def process_request_thread(self, request, client_address):
        _lower_this_thread_priority(self.service_cpus)
        super().process_request_thread(request, client_address)

    def handle_error(self, request, client_address):
        """A request that raised: one log record, never socketserver's traceback on stderr.

        A client that resets or drops its connection (a scraper timing out, a
        port scan) is routine: one short line at DEBUG.  Anything else is a bug
        here: one ERROR record with the traceback inside.
        """
        exc = sys.exc_info()[1]
        client = client_address[0] if isinstance(client_address, tuple) and client_address else client_address
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("HTTP client %s dropped the connection: %s", client,
                      getattr(exc, "strerror", None) or type(exc).__name__)
        else:
            log.error("HTTP request from %s failed: %s: %s", client, type(exc).__name__, exc, exc_info=True)

    def __init__(self, address, handler, get_published, liveness_s):
        self.service_cpus: set[int] | None = None
        import socket

        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.get_published = get_published
        self.liveness_s = liveness_s
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "shmpiped"
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, fmt, *args):  # access logs only at debug level: no log line per scrape
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        published = self.server.get_published()
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            alive = published is not None and time.monotonic() - published.taken_at < self.server.liveness_s
            self._send(200 if alive else 503, b"ok\n" if alive else b"supervisor loop is not running\n")
        elif published is None:
            self._send(503, b"starting\n")
        elif path == "/metrics":
            body, headers = published.metrics(self.headers.get("Accept"), self.headers.get("Accept-Encoding"))
            headers = dict(headers)
            content_type = headers.pop("Content-Type")
            self._send(200, body, content_type, [*headers.items(), ("Vary", "Accept, Accept-Encoding")])
        elif path == "/readyz":
            body = (published.ready_reason + "\n").encode()
            self._send(200 if published.ready else 503, body)
        elif path == "/status":
            self._send(200, published.status_json, "application/json")
        elif path == "/":
            self._send(200, b"shmpiped: /metrics /healthz /readyz /status\n")
        else:
            self._send(404, b"not found\n")

    def _refuse(self):
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815


class HttpApi:
    """The endpoints on one address, served by a background thread."""

    def __init__(self, address: str, get_published, liveness_s: float = 2.0):
        self._server = _Server(parse_address(address), _Handler, get_published, liveness_s)
        self._thread = threading.Thread(target=self._server.serve_forever, name="shmpiped-http", daemon=True)

    def keep_off_cpus(self, busy: set[int]) -> None:
        """Serve on the CPUs that are not in ``busy`` (the workers' CPUs and ``realtime.cpus``), if any is
        left; the accept thread moves now, request threads as they start (at SCHED_IDLE)."""
        from ..placement import available_cpus, note_service_confinement

        note_service_confinement()  # workers keep the process's CPUs, whatever the service threads get
        free = set(available_cpus()) - set(busy)
        self._server.service_cpus = free or None
        if self._thread.native_id:
            from ..realtime import name_thread

            name_thread(self._thread.native_id, "shmpiped-http")  # request threads inherit the name
            try:
                os.sched_setaffinity(self._thread.native_id, free or set(available_cpus()))
            except OSError:
                pass

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def start(self) -> "HttpApi":
        self._thread.start()
        log.info("serving /metrics /healthz /readyz /status on http://%s:%d", *self.address)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
