"""The control protocol: what a request and an answer are, what each command takes, where the socket is.

Shared by the server (``control_socket``) and the client (``control_client``),
which import it and never each other's internals.  One JSON object per line
(UTF-8, ``\\n``-terminated) in each direction:

    request   {"command": "status" | "pause" | "resume" | "restart" | "stop"
                          | "reload" | "synthetic", ...arguments}
              restart:   {"worker": NAME or null}
              synthetic: {"action": "start", "stream": S, "pattern": P, "rate_hz": R or null}
                         {"action": "stop", "stream": S}
    response  {"ok": true, "result": ...}  or  {"ok": false, "error": "message"}

``check_request`` says why a request cannot be run, showing what to send;
``audit_line`` is the log line of one command.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ShmPipelineError

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024    # what the client accepts (a status snapshot is large)
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
DEFAULT_RUNTIME_DIR = "/run/shmpiped"


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


def jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):        # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode(response: dict) -> bytes:
    return (json.dumps(response, default=jsonable) + "\n").encode("utf-8")


def error(message: str) -> dict:
    return {"ok": False, "error": message}



#: What to send, per command (shown in every refusal).
REQUEST_FORMS = {
    "status": '{"command": "status"}',
    "pause": '{"command": "pause"}',
    "resume": '{"command": "resume"}',
    "stop": '{"command": "stop"}',
    "reload": '{"command": "reload"}',
    "restart": '{"command": "restart", "worker": "NAME"} (or "worker": null for every failed worker)',
    "synthetic start": ('{"command": "synthetic", "action": "start", "stream": "STREAM", "pattern": "PATTERN", '
                        '"rate_hz": HZ} (pattern and rate_hz may be left out; rate_hz may be null)'),
    "synthetic stop": '{"command": "synthetic", "action": "stop", "stream": "STREAM"}',
}

_NAME = "a non-empty string"
_OPTIONAL_NAME = "a non-empty string or null"
_RATE = "a positive finite number or null"

#: The arguments each command takes: name -> what it must be (see ``_fits``).
COMMAND_ARGUMENTS: dict[str, dict[str, str]] = {
    "status": {},
    "pause": {},
    "resume": {},
    "stop": {},
    "reload": {},
    "restart": {"worker": _OPTIONAL_NAME},
    "synthetic start": {"action": _NAME, "stream": _NAME, "pattern": _NAME, "rate_hz": _RATE},
    "synthetic stop": {"action": _NAME, "stream": _NAME},
}
_REQUIRED = {"synthetic start": ("stream",), "synthetic stop": ("stream",)}


def _fits(value: Any, rule: str) -> bool:
    if value is None:
        return rule in (_OPTIONAL_NAME, _RATE)
    if rule in (_NAME, _OPTIONAL_NAME):
        return isinstance(value, str) and value != "" and "\0" not in value
    if rule == _RATE:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
    return False


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "an empty string" if value == "" else f"the string {short(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _form_of(request: dict) -> str | None:
    """The key of REQUEST_FORMS / COMMAND_ARGUMENTS this request is (None: not a command checked here)."""
    command = request.get("command")
    if command == "synthetic":
        return f"synthetic {request.get('action')}" if request.get("action") in ("start", "stop") else "synthetic"
    return command if command in COMMAND_ARGUMENTS else None


def check_request(request: dict) -> str | None:
    """Why ``request`` (a JSON object with a string ``command``) cannot be run, saying what to send;
    None when it can.  Commands other than the documented ones are left to the handler."""
    form = _form_of(request)
    if form is None:
        return None
    if form == "synthetic":
        action = request.get("action")
        return (f"synthetic needs \"action\": \"start\" or \"stop\", got {_kind_of(action)}; send "
                f"{REQUEST_FORMS['synthetic start']} or {REQUEST_FORMS['synthetic stop']}")
    arguments = COMMAND_ARGUMENTS[form]
    send = f"send {REQUEST_FORMS[form]}"
    unknown = sorted(k for k in request if k not in ("command", "_peer") and k not in arguments)
    if unknown:
        what = "takes no arguments" if not arguments else \
            f"takes only {', '.join(repr(k) for k in arguments if k != 'action')}"
        return f"{form} {what}, got {', '.join(short(k) for k in unknown)}; {send}"
    for name in _REQUIRED.get(form, ()):
        if name not in request:
            return f"{form} needs {name!r}; {send}"
    for name, rule in arguments.items():
        if name in request and not _fits(request[name], rule):
            return f"{form}: {name!r} must be {rule}, got {_kind_of(request[name])}; {send}"
    return None


def audit_line(request: dict, peer: dict) -> str:
    """``control: COMMAND ARG=VALUE ... from pid P uid U``: what was asked, and by whom."""
    form = _form_of(request) or short(request.get("command"), 40)
    shown = [f"{key}={short(value, 120)}" for key, value in request.items()
             if key not in ("command", "_peer") and not (key == "action" and form.startswith("synthetic "))]
    return " ".join(["control:", form, *shown, f"from pid {peer.get('pid')} uid {peer.get('uid')}"])


def error_text(exc: Exception) -> str:
    """The answer for a handler's exception: its message, never a bare repr of a key."""
    if isinstance(exc, KeyError) and exc.args:
        key = exc.args[0]
        if isinstance(key, str) and " " in key:
            return key                          # KeyError("unknown stream 'x'"): already a message
        return f"unknown name {short(key)}"
    return str(exc) or type(exc).__name__
