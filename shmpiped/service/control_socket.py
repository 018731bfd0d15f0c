"""The control socket: a local Unix-domain server, its client, and ``shmpiped ctl``.

Everything that changes a running pipeline goes through here, and only over a
Unix-domain stream socket (never TCP): who may control the daemon is decided by
the socket file's mode (0660: the daemon's user and group) and each request
carries the peer's credentials (``SO_PEERCRED``) so the daemon can log who
asked.

Protocol: one JSON object per line (UTF-8, ``\\n``-terminated) in each
direction; a connection may carry several requests, answered in order.

    request   {"command": "status" | "pause" | "resume" | "restart" | "stop"
                          | "reload" | "synthetic", ...arguments}
              restart:   {"worker": NAME or null}
              synthetic: {"action": "start", "stream": S, "pattern": P, "rate_hz": R or null}
                         {"action": "stop", "stream": S}
    response  {"ok": true, "result": ...}  or  {"ok": false, "error": "message"}

The server only frames: it checks that a request is a JSON object with a string
``command``, adds ``request["_peer"] = {"pid", "uid", "gid"}`` (overwriting
anything the client sent under that key), and calls the handler in the
connection's own thread.  The handler returns the ``result`` (anything JSON
can encode) or raises; the exception's message becomes the ``error``.  Which
commands exist is the handler's business.

Bounds: a request line is at most 64 KiB, a request must arrive within the
read timeout (5 s) and an idle connection is closed after it, at most 32
connections are served at once; a slow or silent client ties up only its own
thread.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable

from ..errors import ShmPipelineError

log = logging.getLogger("shmpiped.control")

__all__ = [
    "ControlError",
    "ControlServer",
    "ControlUnavailable",
    "ctl_main",
    "default_socket_path",
    "format_status",
    "send_command",
]

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024    # what the client accepts (a status snapshot is large)
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
DEFAULT_RUNTIME_DIR = "/run/shmpiped"
_SUN_PATH_MAX = 107                      # sizeof(sockaddr_un.sun_path) - 1 on Linux
_UCRED = struct.Struct("3i")             # struct ucred {pid_t pid; uid_t uid; gid_t gid;}

EXIT_OK = 0
EXIT_ERROR = 1              # the daemon answered ok=false
EXIT_USAGE = 64             # EX_USAGE: bad words on the command line
EXIT_UNAVAILABLE = 69       # EX_UNAVAILABLE: no daemon answering on the socket


class ControlError(ShmPipelineError):
    """The daemon answered, and refused or failed the command (``ok: false``)."""


class ControlUnavailable(ShmPipelineError, ConnectionError):
    """No daemon answers on the control socket (missing, refused, denied, silent)."""


def default_socket_path(namespace: str | None = None) -> str:
    """Where a namespace's control socket lives, the first that applies:

    ``$RUNTIME_DIRECTORY/<namespace>.sock`` (systemd's ``RuntimeDirectory=``;
    of a colon-separated list the first), ``/run/shmpiped/<namespace>.sock``
    when this user may create it (root, or the directory exists and is
    writable), else ``$XDG_RUNTIME_DIR/shmpiped/<namespace>.sock`` (a desktop
    session), else ``/tmp/shmpiped-<uid>/<namespace>.sock``.  The daemon and
    ``shmpiped ctl`` run by the same user agree on it.
    """
    namespace = namespace or "default"
    if "/" in namespace or "\0" in namespace:
        raise ValueError(f"namespace {namespace!r} cannot name a socket file")
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, f"{namespace}.sock")
    if _may_create_in(DEFAULT_RUNTIME_DIR):
        return os.path.join(DEFAULT_RUNTIME_DIR, f"{namespace}.sock")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "shmpiped", f"{namespace}.sock")
    return os.path.join(f"/tmp/shmpiped-{os.getuid()}", f"{namespace}.sock")


def _may_create_in(directory: str) -> bool:
    if os.path.isdir(directory):
        return os.access(directory, os.W_OK | os.X_OK)
    parent = os.path.dirname(directory)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


# --------------------------------------------------------------------------- server


class _RequestTooLarge(Exception):
    pass


class _LineReader:
    """Reads ``\\n``-terminated lines of at most ``limit`` bytes from a socket."""

    def __init__(self, conn: socket.socket, limit: int):
        self.conn = conn
        self.limit = limit
        self.buffer = bytearray()

    def readline(self, deadline: float) -> bytes | None:
        """The next line without its newline; None at EOF; raises TimeoutError
        when ``deadline`` (time.monotonic) passes, _RequestTooLarge past the limit."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                if end > self.limit:
                    raise _RequestTooLarge
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > self.limit:
                raise _RequestTooLarge
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.conn.settimeout(remaining)
            chunk = self.conn.recv(65536)
            if not chunk:           # EOF: a last request without its newline still counts
                line, self.buffer = bytes(self.buffer), bytearray()
                return line or None
            self.buffer += chunk


def peer_credentials(conn: socket.socket) -> dict:
    """``{"pid", "uid", "gid"}`` of the process at the other end (SO_PEERCRED)."""
    pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return {"pid": pid, "uid": uid, "gid": gid}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):        # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _encode(response: dict) -> bytes:
    return (json.dumps(response, default=_jsonable) + "\n").encode("utf-8")


def _error(message: str) -> dict:
    return {"ok": False, "error": message}


class ControlServer:
    """Serves JSON-lines requests on a Unix-domain stream socket in background threads.

    ``handler(request) -> result`` runs in the connection's thread; see the
    module docstring for the protocol.  ``start()`` binds and listens (and
    raises ``OSError`` if another live server listens at ``path``);
    ``close()`` stops accepting, ends the connections, joins the threads and
    unlinks the socket file (only if it is still the one this server bound).
    """

    def __init__(self, path: str, handler: Callable[[dict], Any], *, mode: int = 0o660,
                 read_timeout: float = READ_TIMEOUT_S, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_connections: int = MAX_CONNECTIONS):
        self._path = os.path.abspath(os.fspath(path))
        self.handler = handler
        self.mode = mode
        self.read_timeout = read_timeout
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None     # (st_dev, st_ino) of the bound socket file
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ControlServer:
        if self._listener is not None or self._closed:
            raise RuntimeError("a ControlServer starts once")
        path = self._path
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise OSError(errno.ENAMETOOLONG,
                          f"control socket path is {len(os.fsencode(path))} bytes, the limit is "
                          f"{_SUN_PATH_MAX}: choose a shorter --socket", path)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _remove_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # bind() creates the file with 0777 & ~umask: bind under a umask that
            # yields ``mode`` so the socket is never more open than asked, even
            # for an instant.  The umask is process-wide for these few
            # microseconds; the chmod below makes the mode exact regardless.
            old_umask = os.umask(0o777 & ~self.mode)
            try:
                listener.bind(path)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, "another process took the control socket while "
                                  "this one started (another shmpiped daemon?); stop it or choose "
                                  "another --socket", path) from None
                raise
            finally:
                os.umask(old_umask)
            os.chmod(path, self.mode)
            st = os.stat(path)
            self._identity = (st.st_dev, st.st_ino)
            listener.listen(64)
            listener.setblocking(False)
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:
            listener.close()
            self._unlink_own()
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="shmpiped.control", daemon=True)
        self._thread.start()
        log.debug("control socket listening at %s (mode %o)", path, self.mode)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving and unlink the socket; safe to call twice, or from a handler."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not current:
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        self._unlink_own()
        with self._lock:
            connections = dict(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RD)     # wakes a blocked read; an answer in flight still goes out
            except OSError:
                pass
        for thread in connections.values():
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _unlink_own(self) -> None:
        """Unlink the socket file if it is still ours (not a successor's)."""
        if self._identity is None:
            return
        try:
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove control socket %s: %s", self._path, exc)
        self._identity = None

    # ------------------------------------------------------------------ threads
    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._listener or self._stopping.is_set():
                        continue
                    try:
                        conn, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as exc:   # EMFILE and the like: back off, keep serving
                        log.warning("control socket: accept failed: %s", exc)
                        time.sleep(0.1)
                        continue
                    self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        with self._lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                          name="shmpiped-control-conn")
                self._connections[conn] = thread
        if full:
            conn.setblocking(False)
            try:                         # a fresh socket's buffer takes one short line without blocking
                conn.send(_encode(_error(f"too many control connections (limit {self.max_connections})")))
            except OSError:
                pass
            conn.close()
            return
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                peer = peer_credentials(conn)
            except OSError as exc:
                log.warning("control socket: cannot read peer credentials, closing: %s", exc)
                return
            reader = _LineReader(conn, self.max_request_bytes)
            while not self._stopping.is_set():
                try:
                    line = reader.readline(time.monotonic() + self.read_timeout)
                except _RequestTooLarge:
                    self._send(conn, _error(f"request line exceeds {self.max_request_bytes} bytes"))
                    return
                except TimeoutError:
                    if reader.buffer:
                        self._send(conn, _error(f"request not completed within {self.read_timeout:g} s"))
                    return
                except OSError:
                    return
                if line is None:
                    return
                if not self._send(conn, self._respond(line, peer)):
                    return
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            conn.close()

    def _respond(self, line: bytes, peer: dict) -> dict:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(f"malformed JSON request: {exc}")
        if not isinstance(request, dict):
            return _error("a request must be a JSON object")
        if not isinstance(request.get("command"), str):
            return _error("a request must have a 'command' string")
        request["_peer"] = dict(peer)
        try:
            result = self.handler(request)
        except Exception as exc:  # noqa: BLE001 - every failure is the client's answer
            log.debug("control command %r from pid %s failed", request["command"], peer["pid"], exc_info=True)
            return _error(str(exc) or type(exc).__name__)
        return {"ok": True, "result": result}

    def _send(self, conn: socket.socket, response: dict) -> bool:
        try:
            data = _encode(response)
        except (TypeError, ValueError) as exc:
            data = _encode(_error(f"the answer could not be encoded as JSON: {exc}"))
        try:
            conn.settimeout(self.read_timeout)   # a client that never reads loses its answer, not our thread
            conn.sendall(data)
            return True
        except OSError:
            return False


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse when something does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket: remove it or choose "
                              "another --socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
            log.info("removed stale control socket %s (nothing listened on it)", path)
        except FileNotFoundError:
            pass
        return
    except FileNotFoundError:
        return
    except (TimeoutError, BlockingIOError):
        pass                    # a backlog that is full: someone is listening
    except PermissionError:
        raise PermissionError(errno.EACCES, "cannot check whether a daemon listens on the existing "
                              "control socket (permission denied): remove it or choose another "
                              "--socket", path) from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on this control socket (another "
                  "shmpiped daemon?); stop it or choose another --socket", path)


# --------------------------------------------------------------------------- client


def send_command(path: str, command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request and return its ``result``.

    Raises ControlError when the daemon answers ``ok: false`` (or answers
    nonsense), ControlUnavailable when no daemon answers on ``path``.
    """
    path = os.fspath(path)
    data = (json.dumps({"command": command, **args}, default=_jsonable) + "\n").encode("utf-8")
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request is {len(data)} bytes, the limit is {MAX_REQUEST_BYTES}")
    deadline = time.monotonic() + timeout
    hint = "is the daemon running? pass --socket PATH to use another control socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise ControlUnavailable(f"no shmpiped daemon is listening on {path} ({exc.strerror}); "
                                     f"{hint}") from None
        except PermissionError:
            raise ControlUnavailable(f"permission denied on control socket {path}: run as the daemon's "
                                     "user or a member of the socket's group") from None
        except TimeoutError:
            raise ControlUnavailable(f"the daemon did not accept a connection on {path} within "
                                     f"{timeout:g} s") from None
        except OSError as exc:
            raise ControlUnavailable(f"cannot connect to control socket {path}: "
                                     f"{exc.strerror or exc}; {hint}") from None
        reply = bytearray()
        try:
            try:
                sock.sendall(data)
            except BrokenPipeError:
                pass  # refused before reading (too many connections): its answer may be waiting to be read
            while b"\n" not in reply:
                if len(reply) > MAX_RESPONSE_BYTES:
                    raise ControlError(f"the answer on {path} exceeds {MAX_RESPONSE_BYTES} bytes")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            raise ControlUnavailable(f"no answer from the daemon on {path} within {timeout:g} s") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ControlUnavailable(f"the daemon on {path} dropped the connection ({exc.strerror})") from None
    line = bytes(reply).partition(b"\n")[0]
    if not line:
        raise ControlUnavailable(f"the daemon on {path} closed the connection without an answer")
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"malformed answer from {path}: {exc}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError(f"malformed answer from {path}: {line[:200]!r}")
    if not response["ok"]:
        raise ControlError(str(response.get("error") or "the daemon refused the command"))
    return response.get("result")


# --------------------------------------------------------------------------- shmpiped ctl

CTL_USAGE = """\
usage: shmpiped ctl COMMAND

  status [--json]                          state and per-worker health, rate, exec time
  pause | resume                           pause or resume every worker
  restart [WORKER]                         restart failed/dead workers, or WORKER
  reload                                   re-read the pipeline file (as SIGHUP)
  stop                                     stop the daemon gracefully
  synthetic start STREAM PATTERN [RATE_HZ] drive STREAM with a synthetic pattern
  synthetic stop STREAM                    stop that synthetic input

exit status: 0 done, 1 the daemon refused, 64 bad usage, 69 no daemon answering"""


class _Usage(Exception):
    pass


def parse_ctl_words(words: list[str]) -> tuple[dict, bool]:
    """``ctl`` words -> (request without ``_peer``, want raw JSON); raises _Usage."""
    words = list(words)
    if not words:
        raise _Usage("a command is required")
    command, rest = words[0], words[1:]
    if command == "status":
        if rest not in ([], ["--json"]):
            raise _Usage(f"status takes only --json, got {' '.join(rest)!r}")
        return {"command": "status"}, bool(rest)
    if command in ("pause", "resume", "stop", "reload"):
        if rest:
            raise _Usage(f"{command} takes no arguments, got {' '.join(rest)!r}")
        return {"command": command}, False
    if command == "restart":
        if len(rest) > 1:
            raise _Usage("restart takes at most one WORKER")
        return {"command": "restart", "worker": rest[0] if rest else None}, False
    if command == "synthetic":
        action, args = (rest[0], rest[1:]) if rest else (None, [])
        if action == "start" and len(args) in (2, 3):
            rate_hz = None
            if len(args) == 3:
                try:
                    rate_hz = float(args[2])
                except ValueError:
                    raise _Usage(f"RATE_HZ must be a number, got {args[2]!r}") from None
                if not rate_hz > 0 or rate_hz == float("inf"):
                    raise _Usage(f"RATE_HZ must be positive and finite, got {args[2]!r}")
            return {"command": "synthetic", "action": "start", "stream": args[0],
                    "pattern": args[1], "rate_hz": rate_hz}, False
        if action == "stop" and len(args) == 1:
            return {"command": "synthetic", "action": "stop", "stream": args[0]}, False
        raise _Usage("synthetic start STREAM PATTERN [RATE_HZ] | synthetic stop STREAM")
    raise _Usage(f"unknown command {command!r}")


def ctl_main(path: str, words: list[str], timeout: float = 10.0) -> tuple[int, str]:
    """Run ``shmpiped ctl WORDS`` against ``path``: (exit status, text to print)."""
    if words and words[0] in ("help", "-h", "--help"):
        return EXIT_OK, CTL_USAGE
    try:
        request, raw = parse_ctl_words(words)
    except _Usage as exc:
        return EXIT_USAGE, f"error: {exc}\n{CTL_USAGE}"
    command = request.pop("command")
    try:
        result = send_command(path, command, timeout=timeout, **request)
    except ControlUnavailable as exc:
        return EXIT_UNAVAILABLE, f"error: {exc}"
    except ControlError as exc:
        return EXIT_ERROR, f"error: {command}: {exc}"
    if command == "status":
        if raw:
            return EXIT_OK, json.dumps(result, indent=2, sort_keys=True)
        return EXIT_OK, format_status(result if isinstance(result, dict) else {})
    return EXIT_OK, _format_done(command, request, result)


def _format_done(command: str, request: dict, result: Any) -> str:
    what = command
    if command == "restart" and request.get("worker"):
        what = f"restart {request['worker']}"
    elif command == "synthetic":
        what = f"synthetic {request['action']} {request['stream']}"
    text = f"{what}: ok"
    if isinstance(result, dict):
        if "restarted" in result:
            restarted = result["restarted"]
            names = ", ".join(map(str, restarted)) if isinstance(restarted, (list, tuple)) else restarted
            text += f" (restarted: {names or 'none'})"
        if result.get("state"):
            text += f" (state: {result['state']})"
        if result.get("error"):
            text += f" ({result['error']})"
    return text


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def format_status(status: dict) -> str:
    """A few human lines from a ``status()`` / ``runtime_snapshot()`` dict."""
    lines = [f"state: {status.get('state', '?')}    namespace: {status.get('namespace') or 'default'}"]
    summary = status.get("summary") or {}
    if summary:
        lines.append(
            "workers: {t} total, {a} active, {i} idle, {w} waiting, {p} paused, {f} failed, {s} stopped".format(
                t=summary.get("workers_total", 0), a=summary.get("active_workers", 0),
                i=summary.get("idle_workers", 0), w=summary.get("waiting_workers", 0),
                p=summary.get("paused_workers", 0), f=summary.get("failed_workers", 0),
                s=summary.get("stopped_workers", 0)))
    workers = status.get("workers") or {}
    if workers:
        width = max(6, *(len(str(name)) for name in workers))
        lines.append(f"{'WORKER':<{width}}  {'HEALTH':<13} {'RATE_HZ':>9} {'AVG_EXEC_US':>11} "
                     f"{'P99_EXEC_US':>11} {'RESTARTS':>8} {'PID':>8}")
        for name, w in workers.items():
            w = w or {}
            lines.append(f"{name:<{width}}  {str(w.get('health', '?')):<13} "
                         f"{_number(w.get('throughput_hz'), '.1f'):>9} "
                         f"{_number(w.get('avg_exec_us'), '.1f'):>11} "
                         f"{_number(w.get('p99_exec_us'), '.1f'):>11} "
                         f"{_number(w.get('restarts'), 'd'):>8} {_number(w.get('pid'), 'd'):>8}")
    for stream, s in (status.get("synthetic_sources") or {}).items():
        s = s or {}
        lines.append(f"synthetic: {stream} ({s.get('pattern', '?')}, "
                     f"{_number(s.get('rate_hz'), 'g')} Hz requested, "
                     f"{_number(s.get('effective_rate_hz'), '.1f')} Hz effective)")
    failures = status.get("failures") or []
    if failures:
        lines.append(f"failures ({len(failures)}):")
        for f in failures[-5:]:
            f = f or {}
            who = f.get("kernel") or f.get("name") or f.get("component_type") or "?"
            lines.append(f"  {who}: {f.get('error') or 'failed'}")
    return "\n".join(lines)
