"""The control socket's client: ``send_command`` and the ``shmpiped ctl`` command's words and output."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from .control_protocol import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    ControlError,
    ControlUnavailable,
    default_socket_path,
    jsonable,
)

__all__ = ["CTL_USAGE", "answering_sockets", "choose_socket", "ctl_main", "format_status", "parse_ctl_words",
           "send_command"]

EXIT_OK = 0
EXIT_ERROR = 1              # the daemon answered ok=false
EXIT_USAGE = 64             # EX_USAGE: bad words on the command line
EXIT_UNAVAILABLE = 69       # EX_UNAVAILABLE: no daemon answering on the socket


def send_command(path: str, command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request and return its ``result``.

    Raises ControlError when the daemon answers ``ok: false`` (or answers
    nonsense), ControlUnavailable when no daemon answers on ``path``.
    """
    path = os.fspath(path)
    data = (json.dumps({"command": command, **args}, default=jsonable) + "\n").encode("utf-8")
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


# --------------------------------------------------------------------------- finding the daemon


def answering_sockets(directory: str | None = None) -> dict[str, str]:
    """{name: path} of the control sockets in ``directory`` (default: where daemons of this user put
    theirs) that accept a connection; the name is the file's stem (the namespace, or ``default-<pid>``)."""
    directory = directory or os.path.dirname(default_socket_path())
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(".sock"))
    except OSError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(directory, name)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(path)
            except OSError:
                continue  # a socket file left by a daemon that is gone, or not ours to use
        found[name[:-len(".sock")]] = path
    return found


def choose_socket(namespace: str | None) -> str:
    """The control socket ``ctl`` talks to: the namespace's when one is given; else the default
    namespace's when it answers, else the one daemon that answers; several: ControlUnavailable naming them."""
    if namespace:
        return default_socket_path(namespace)
    default = default_socket_path()
    found = answering_sockets(os.path.dirname(default))
    if default in found.values() or not found:
        return default
    if len(found) == 1:
        return next(iter(found.values()))
    raise ControlUnavailable(f"{len(found)} daemons answer in {os.path.dirname(default)}: {', '.join(found)}; "
                             "pass --namespace NAME (or --socket PATH)")


def _who_answers(path: str) -> str:
    """What to add to 'no daemon on PATH': the daemons that do answer, and the namespaces running here."""
    from ..shm_inventory import describe_live_namespaces

    found = answering_sockets(os.path.dirname(path))
    sockets = (f"control sockets answering in {os.path.dirname(path)}: {', '.join(found)} (pass --namespace NAME)"
               if found else f"no control socket answers in {os.path.dirname(path)}")
    return f"{sockets}; {describe_live_namespaces()}"


# --------------------------------------------------------------------------- shmpiped ctl

CTL_USAGE = """\
usage: shmpiped ctl COMMAND

  status                                   state and per-worker health, rate, exec time
  pause | resume                           pause or resume every worker
  restart [WORKER]                         restart failed/dead workers, or WORKER
  reload                                   re-read the pipeline file (as SIGHUP)
  stop                                     stop the daemon gracefully
  synthetic start STREAM PATTERN [RATE_HZ] drive STREAM with a synthetic pattern
  synthetic stop STREAM                    stop that synthetic input

--json (anywhere) prints the daemon's answer as JSON.
Without --namespace or --socket: the default namespace's daemon, else the one daemon that answers.
exit status: 0 done, 1 the daemon refused, 64 bad usage, 69 no daemon answering"""


class _Usage(Exception):
    pass


def parse_ctl_words(words: list[str]) -> tuple[dict, bool]:
    """``ctl`` words -> (request without ``_peer``, want raw JSON); raises _Usage."""
    raw = "--json" in words
    words = [word for word in words if word != "--json"]
    if not words:
        raise _Usage("a command is required")
    return _parse_command(words[0], words[1:]), raw


def _parse_command(command: str, rest: list[str]) -> dict:
    if command == "status":
        if rest:
            raise _Usage(f"status takes only --json, got {' '.join(rest)!r}")
        return {"command": "status"}
    if command in ("pause", "resume", "stop", "reload"):
        if rest:
            raise _Usage(f"{command} takes no arguments, got {' '.join(rest)!r}")
        return {"command": command}
    if command == "restart":
        if len(rest) > 1:
            raise _Usage("restart takes at most one WORKER")
        return {"command": "restart", "worker": rest[0] if rest else None}
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
                    "pattern": args[1], "rate_hz": rate_hz}
        if action == "stop" and len(args) == 1:
            return {"command": "synthetic", "action": "stop", "stream": args[0]}
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
        hint = f"\n{_who_answers(path)}" if "no shmpiped daemon is listening" in str(exc) else ""
        return EXIT_UNAVAILABLE, f"error: {exc}{hint}"
    except ControlError as exc:
        return EXIT_ERROR, f"error: {command}: {exc}"
    if raw:
        return EXIT_OK, json.dumps(result, indent=2, sort_keys=True, default=jsonable)
    if command == "status":
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
