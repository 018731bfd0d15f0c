"""The control socket's server: a local Unix-domain server for the daemon's control commands.

Everything that changes a running pipeline goes through here, and only over a
Unix-domain stream socket (never TCP): who may control the daemon is decided by
the socket file's mode (0660: the daemon's user and group) and each request
carries the peer's credentials (``SO_PEERCRED``) so the daemon can log who
asked.  The protocol (one JSON object per line each way; a connection may
carry several requests, answered in order) is ``control_protocol``'s; the
client and ``shmpiped ctl`` are ``control_client``'s, and their names are
importable from here too.

The server frames and checks: a request must be a JSON object with a string
``command``, and the arguments of the commands above must have the types shown
(``check_request``; a wrong one is answered with a message that shows what to
send, and the handler never sees it).  It writes one audit line per command
(``audit_line``: the command, its arguments, the peer), adds
``request["_peer"] = {"pid", "uid", "gid"}`` (overwriting anything the client
sent under that key), and calls the handler in the connection's own thread.
The handler returns the ``result`` (anything JSON can encode) or raises; the
exception's message becomes the ``error``.  Commands not listed above are the
handler's business.

Bounds: a request line is at most 64 KiB, a request must arrive within the
read timeout (5 s) and an idle connection is closed after it, at most 32
connections are served at once; a slow or silent client ties up only its own
thread.  Idle clients never lock an operator out: when every slot is taken, a
new connection takes the slot of the connection that has been waiting longest
for a request (closing it); it is refused only when all 32 are running commands.
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

from .control_client import (  # noqa: F401 - the client's names, where they have always been imported from
    CTL_USAGE,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ctl_main,
    format_status,
    parse_ctl_words,
    send_command,
)
from .control_protocol import (  # noqa: F401 - re-exported likewise
    COMMAND_ARGUMENTS,
    DEFAULT_RUNTIME_DIR,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    READ_TIMEOUT_S,
    REQUEST_FORMS,
    ControlError,
    ControlUnavailable,
    audit_line,
    check_request,
    default_socket_path,
    encode,
    error,
    error_text,
)

log = logging.getLogger("shmpiped.control")

__all__ = [
    "COMMAND_ARGUMENTS",
    "ControlError",
    "ControlServer",
    "ControlUnavailable",
    "audit_line",
    "check_request",
    "ctl_main",
    "default_socket_path",
    "format_status",
    "send_command",
]

_SUN_PATH_MAX = 107                      # sizeof(sockaddr_un.sun_path) - 1 on Linux
_UCRED = struct.Struct("3i")             # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class _RequestTooLarge(Exception):
    pass


class _Connection:
    """One served connection: its thread, and whether it is running a command or waiting for one."""

    def __init__(self, thread: threading.Thread):
        self.thread = thread
        self.busy = False                      # a request is being run and answered
        self.waiting_since = time.monotonic()  # when it started waiting for its next request


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
        self._connections: dict[socket.socket, _Connection] = {}
        #: Connections closed to make room for a newer one (their slot was taken).
        self.evicted_total = 0
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
        for connection in connections.values():
            if connection.thread is not current:
                connection.thread.join(max(0.0, deadline - time.monotonic()))
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
        """Serve ``conn`` in its own thread; when every slot is taken, take the slot of the connection
        that has waited longest for a request, and refuse only when every connection runs a command."""
        evicted = None
        with self._lock:
            if len(self._connections) >= self.max_connections:
                idle = [(c.waiting_since, other) for other, c in self._connections.items() if not c.busy]
                if idle:
                    evicted = min(idle, key=lambda item: item[0])[1]
                    del self._connections[evicted]
                    self.evicted_total += 1
            full = len(self._connections) >= self.max_connections
            if not full:
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                          name="shmpiped-control-conn")
                self._connections[conn] = _Connection(thread)
        if evicted is not None:
            log.debug("control socket: %d connections, closing the one idle longest for a new one",
                      self.max_connections)
            try:
                evicted.shutdown(socket.SHUT_RDWR)   # its thread sees the end and closes it
            except OSError:
                pass
        if full:
            conn.setblocking(False)
            try:                         # a fresh socket's buffer takes one short line without blocking
                conn.send(encode(error(f"too many control connections (limit {self.max_connections})")))
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
                    self._send(conn, error(f"request line exceeds {self.max_request_bytes} bytes"))
                    return
                except TimeoutError:
                    if reader.buffer:
                        self._send(conn, error(f"request not completed within {self.read_timeout:g} s"))
                    return
                except OSError:
                    return
                if line is None:
                    return
                if not self._claim(conn):
                    return                   # its slot went to a newer connection meanwhile
                try:
                    if not self._send(conn, self._respond(line, peer)):
                        return
                finally:
                    self._release(conn)
        finally:
            with self._lock:
                if conn in self._connections and self._connections[conn].thread is threading.current_thread():
                    del self._connections[conn]
            conn.close()

    def _claim(self, conn: socket.socket) -> bool:
        """Mark ``conn`` busy (not evictable); False when it was evicted already."""
        with self._lock:
            connection = self._connections.get(conn)
            if connection is None:
                return False
            connection.busy = True
            return True

    def _release(self, conn: socket.socket) -> None:
        with self._lock:
            connection = self._connections.get(conn)
            if connection is not None:
                connection.busy = False
                connection.waiting_since = time.monotonic()

    def _respond(self, line: bytes, peer: dict) -> dict:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error(f"malformed JSON request: {exc}")
        if not isinstance(request, dict):
            return error("a request must be a JSON object")
        if not isinstance(request.get("command"), str):
            return error("a request must have a 'command' string")
        refusal = check_request(request)
        if request["command"] != "status" or refusal:
            log.log(logging.WARNING if refusal else logging.INFO, "%s%s", audit_line(request, peer),
                    f": refused: {refusal}" if refusal else "")
        if refusal:
            return error(refusal)
        request["_peer"] = dict(peer)
        try:
            result = self.handler(request)
        except Exception as exc:  # noqa: BLE001 - every failure is the client's answer
            log.debug("control command %r from pid %s failed", request["command"], peer["pid"], exc_info=True)
            return error(error_text(exc))
        return {"ok": True, "result": result}

    def _send(self, conn: socket.socket, response: dict) -> bool:
        try:
            data = encode(response)
        except (TypeError, ValueError) as exc:
            data = encode(error(f"the answer could not be encoded as JSON: {exc}"))
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
