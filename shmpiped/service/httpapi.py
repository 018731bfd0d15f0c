"""The daemon's HTTP server: /metrics, /healthz, /readyz, /status, the control plane and the console.

Read endpoints answer from the last :class:`Published` snapshot that the
daemon's main loop swapped in, already rendered to bytes: a request costs a
reference read and a socket write, so a slow or hostile client never blocks
supervision and a flood of requests does no work per request.  This module
frames HTTP (routing by method and path, JSON bodies of at most 1 MiB,
Server-Sent Event streams); what the control-plane routes do and who may call
them is ``control_plane``'s, the console's files and stream previews are
``preview``'s.  Request threads run at SCHED_IDLE on CPUs no worker uses.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .metrics import exposition, negotiate

log = logging.getLogger("shmpiped.http")

REQUEST_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 1 << 20  # a JSON body (a pipeline document) of at most 1 MiB
SSE_SEND_BUFFER_BYTES = 64 * 1024


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

    def __init__(self, address, handler, get_published, liveness_s, control=None):
        self.service_cpus: set[int] | None = None
        self.control = control  # the ControlPlane, or None: the read-only endpoints alone
        self._previews = None
        self._previews_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.get_published = get_published
        self.liveness_s = liveness_s
        super().__init__(address, handler)


    def previews(self):
        """The stream previews of the console (``preview.PreviewCache``), made on first use."""
        with self._previews_lock:
            if self._previews is None:
                from .preview import PreviewCache

                self._previews = PreviewCache(self.get_published)
            return self._previews

    def close_previews(self) -> None:
        with self._previews_lock:
            if self._previews is not None:
                self._previews.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "shmpiped"
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, fmt, *args):  # access logs only at debug level, and never a query string (tokens)
        log.debug("%s %s %s", self.address_string(), self.command, self.path.split("?", 1)[0])

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

    def _send_json(self, code: int, answer, headers=()) -> None:
        body = answer if isinstance(answer, bytes) else json.dumps(answer, default=str).encode()
        self._send(code, body, "application/json", list(headers))

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if self._control_route(path, query):
            return
        published = self.server.get_published()
        if path == "/healthz":
            alive = published is not None and time.monotonic() - published.taken_at < self.server.liveness_s
            self._send(200 if alive else 503, b"ok\n" if alive else b"supervisor loop is not running\n")
        elif path == "/" or path.startswith("/console/"):
            self._console(path)
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
        elif path.startswith("/preview/"):
            self._preview(path, query)
        else:
            self._send(404, b"not found\n")

    def do_POST(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if not self._control_route(path, query):
            self._refuse(path)

    do_PUT = do_POST  # noqa: N815

    def _refuse(self, path: str = ""):
        allowed = sorted(self.server.control.routes.get(path, {})) if self.server.control else []
        if not allowed and path in _READ_PATHS:
            allowed = ["GET", "HEAD"]
        if not allowed:
            return self._send(404, b"not found\n")
        self.send_response(405)
        self.send_header("Allow", ", ".join(allowed))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_DELETE = do_PATCH = _refuse  # noqa: N815

    # ------------------------------------------------------------------ control plane and console
    def _control_route(self, path: str, query: str) -> bool:
        """Serve ``path`` if it is a control-plane route; False when it is not one."""
        plane = self.server.control
        methods = plane.routes.get(path) if plane is not None else None
        if not methods:
            return False
        method = "GET" if self.command == "HEAD" else self.command
        route = methods.get(method)
        if route is None:
            self._refuse(path)
            return True
        from .control_plane import ApiRequest, HttpError, parse_query

        request = ApiRequest(method, path, parse_query(query), self.headers, peer=self.client_address[0])
        try:
            if route.body:
                request.body = self._json_body()
            answer = plane.dispatch(request, route)
        except HttpError as exc:
            self._send_json(exc.status, {"detail": exc.detail}, exc.headers)
            return True
        if isinstance(answer, (dict, list, bytes)):
            self._send_json(200, answer)
        else:
            self._stream_events(answer)
        return True

    def _json_body(self):
        from .control_plane import HttpError

        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send the body with a Content-Length (no chunked transfer encoding)")
        if not length:
            return None
        try:
            size = int(length)
        except ValueError:
            raise HttpError(400, "Content-Length must be an integer") from None
        if size > MAX_BODY_BYTES or size < 0:
            raise HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
        data = self.rfile.read(size)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"malformed JSON body: {exc}") from None

    def _stream_events(self, chunks) -> None:
        """Write an SSE stream until the client goes, the hub drops it or the server closes."""
        self.close_connection = True
        try:  # a small send buffer: a client that stops reading is noticed (and dropped) within ~64 KiB
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER_BYTES)
        except OSError:
            pass
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Accel-Buffering", "no")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (OSError, ValueError):  # the client went away or stalled past the socket timeout
            pass
        finally:
            chunks.close()

    def _console(self, path: str) -> None:
        try:
            from .preview import CONSOLE_HEADERS, console_asset
        except ImportError:  # pragma: no cover - the console is part of the package
            return self._send(200, b"shmpiped: /metrics /healthz /readyz /status\n")
        found = console_asset(path)
        if found is None:
            return self._send(404, b"not found\n")
        content_type, body = found
        self._send(200, body, content_type, CONSOLE_HEADERS)

    def _preview(self, path: str, query: str) -> None:
        plane = self.server.control
        if plane is not None:
            from .control_plane import ApiRequest, HttpError

            request = ApiRequest("GET", path, {}, self.headers, peer=self.client_address[0], scope="read")
            try:
                plane.authorize(request)
            except HttpError as exc:
                return self._send_json(exc.status, {"detail": exc.detail}, exc.headers)
        cache = self.server.previews()
        status, content_type, body = cache.respond(path, query)
        self._send(status, body, content_type)


_READ_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/status", "/"})


class HttpApi:
    """The endpoints on one address, served by a background thread."""

    def __init__(self, address: str, get_published, liveness_s: float = 2.0, control=None):
        self._server = _Server(parse_address(address), _Handler, get_published, liveness_s, control)
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
        if self._server.control is not None:
            self._server.control.hub.close()  # event streams end within their keepalive interval
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
        self._server.close_previews()
