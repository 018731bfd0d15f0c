"""The daemon's side of control: the commands its loop carries out, tokens at start, events, discovery.

Kept out of ``daemon.py`` so that the loop's module stays about the loop.
Everything here runs in the daemon's main loop (the commands, the events) or
once at start and stop (tokens, the discovery record).

Lifecycle commands (shmpipeline's verbs, queued like every control command):

* ``build``: the daemon builds its pipeline at start, so a built pipeline
  answers as shmpipeline's service does for one already built (nothing to do);
  while workers run it is refused (409), as there.
* ``start``: from ``built`` (after ``stop-workers``) the workers start again;
  otherwise 409 (shmpipeline: "cannot start pipeline while state is ...").
* ``stop-workers`` (HTTP ``/commands/stop``): the workers, sources and sinks
  stop, the streams stay; the pipeline is ``built`` and the supervisor, which
  only supervises a running, paused or failed pipeline, restarts nothing
  until ``start``.
"""

from __future__ import annotations

import logging
import time

from ..errors import StateTransitionError

log = logging.getLogger("shmpiped.daemon")

LIFECYCLE_COMMANDS = ("build", "start", "stop-workers")
SNAPSHOT_EVENT_COMMANDS = frozenset({"pause", "resume", "restart", "synthetic", "build", "start", "stop-workers",
                                     "stop"})


def load_tokens(settings):
    """The control plane's TokenTable from ``settings`` (token file, or one admin token); raises
    TokenFileError (exit 78) when the file cannot be used."""
    from .tokens import TokenTable, load_token_file

    path = settings.token_file or None
    if path and settings.token:
        from .tokens import TokenFileError

        raise TokenFileError("give either --token-file or --token, not both")
    if path:
        table = load_token_file(path)
        log.info("control plane: %d token(s) from %s", len(table.grants), path)
        return table
    if settings.token:
        return TokenTable.single(settings.token)
    return TokenTable()


def run_lifecycle_command(daemon, request: dict) -> dict:
    """Carry out ``build``, ``start`` or ``stop-workers`` (see the module docstring)."""
    manager = daemon.manager
    command = request["command"]
    state = manager.state.value
    if command == "build":
        if state != "built":
            raise StateTransitionError("build is not allowed while the pipeline is active")
    elif command == "start":
        if state != "built":
            raise StateTransitionError(f"cannot start pipeline while state is {state!r}")
        daemon.supervisor.reset()  # a fresh start: a fresh restart budget
        manager.start(wait=False)
    elif command == "stop-workers":
        manager.stop(timeout=float(request.get("timeout", 5.0)), force=bool(request.get("force", False)))
    return {"state": manager.state.value}


def carry_out(daemon, request: dict):
    """Carry out one control command in the daemon's main loop; returns its answer (raises to refuse)."""
    command = request.get("command")  # the control server has logged who asked for what
    manager = daemon.manager
    if command == "status":
        return daemon.published.snapshot if daemon.published else manager.runtime_snapshot()
    if command == "pause":
        manager.pause()
    elif command == "resume":
        manager.resume()
    elif command == "restart":
        worker = request.get("worker")
        daemon.reset_supervision()  # an explicit restart gives the workers their budget back
        return {"restarted": manager.restart(workers=[worker] if worker else None, wait=False)}
    elif command == "stop":
        daemon.request_stop("control command")
    elif command == "synthetic":
        action = request.get("action")
        if action == "start":
            spec = {"stream_name": request["stream"], "pattern": request.get("pattern", "random")}
            if isinstance(request.get("spec"), dict):  # the control plane's full SyntheticInputConfig
                spec = {**request["spec"], "stream_name": request["stream"]}
            elif request.get("rate_hz") is not None:
                spec["rate_hz"] = float(request["rate_hz"])
            return manager.start_synthetic_input(spec)
        if action == "stop":
            manager.stop_synthetic_input(request["stream"])
        else:
            raise ValueError(f"synthetic action must be 'start' or 'stop', got {action!r}")
    elif command in LIFECYCLE_COMMANDS:
        return run_lifecycle_command(daemon, request)
    elif command == "debug" and daemon.settings.debug_commands:
        time.sleep(float(request.get("stall_s", 0)))  # wedges the main loop on purpose (tests)
    else:
        known = "status, pause, resume, restart, stop, reload, synthetic, " + ", ".join(LIFECYCLE_COMMANDS)
        raise ValueError(f"unknown command {command!r}; known commands: {known}")
    return {"state": manager.state.value}


def command_event(request: dict, result=None) -> tuple[str, dict]:
    """The ``command`` event of one control request: its arguments, who sent it, whether it was carried
    out (``ok``, else ``error``); never internal objects."""
    data = {"command": request.get("command"), "ok": not isinstance(result, BaseException)}
    if isinstance(result, BaseException):
        data["error"] = str(result)
    for key in ("worker", "action", "stream", "path"):
        if request.get(key) is not None:
            data[key] = request[key]
    peer = request.get("_peer") or {}
    data["peer"] = peer.get("http") or (f"pid {peer['pid']}" if "pid" in peer else None)
    data["via"] = "http" if "http" in peer else "socket"
    return "command", data


def publish_command_events(hub, events: list, snapshot: dict) -> None:
    """Publish the ``command`` events of the commands just run, and one shmpipeline ``snapshot`` event
    (reason: the last command) with the snapshot that reflects them."""
    if not events:
        return
    for name, data in events:
        hub.publish(name, data)
    reasons = [data["command"] for _, data in events if data["command"] in SNAPSHOT_EVENT_COMMANDS and data["ok"]]
    if reasons:
        hub.publish("snapshot", {"reason": reasons[-1], "snapshot": snapshot})


def announce_control_plane(address: tuple, tokens):
    """Register the HTTP server where shmpipeline's ``discover_local_servers`` looks; None if that fails."""
    from ..control.discovery import LocalControlServerRegistration

    registration = LocalControlServerRegistration(host=address[0], port=address[1],
                                                  token_required=tokens.enabled)
    try:
        registration.register()
    except OSError as exc:
        log.debug("control plane not registered for local discovery: %s", exc)
        return None
    if not tokens.enabled and address[0] not in ("127.0.0.1", "::1", "localhost"):
        log.warning("HTTP on %s without a token file: read endpoints only; control requests answer 403 "
                    "(start with --token-file FILE to enable them)", address[0])
    return registration

