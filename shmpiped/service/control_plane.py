"""The HTTP control plane (shmpipeline 1.3.0's API, plus reload and restart): routes, scopes, answers.

``ControlPlane`` knows each endpoint's method, path, the scope it needs and
what it does; ``httpapi`` frames the HTTP.  Reads are answered from the
daemon's last published snapshot (no call into the manager).  Everything that
changes the pipeline is queued to the daemon's main loop with
``Daemon.submit`` -- the very path the Unix control socket uses -- and
answered once the snapshot that reflects it is published.

Scopes (``read`` < ``control`` < ``admin``) come from the token file
(``tokens``).  Read endpoints are open unless the file has a ``read`` line.
Without any token, mutating requests answer 403 saying how to enable them.
Errors are ``{"detail": "..."}`` with shmpipeline's status codes: 400 invalid
input, 401 missing or unknown token, 403 scope too low, 404 unknown name or
path, 409 not allowed in the pipeline's state, 500 a worker failed, 503 too
many event-stream clients, 504 the daemon did not answer in time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

from ..errors import ConfigValidationError, ShmPipelineError, StateTransitionError, WorkerProcessError
from .events import EventHub, TooManySubscribers
from .tokens import TokenTable, scope_level

log = logging.getLogger("shmpiped.http.control")

DISABLED_DETAIL = ("control requests are disabled: start the daemon with --token-file FILE "
                   "(README: Remote control)")
KEEPALIVE_S = 1.0  # shorter than shmpipeline's client read timeout (5 s)
STOP_TIMEOUT_MAX_S = 20.0
COMMANDS = ["build", "start", "pause", "resume", "stop", "shutdown", "reload", "restart"]


class HttpError(Exception):
    def __init__(self, status: int, detail: str, headers: tuple = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict
    headers: Any                        # http.client.HTTPMessage
    body: Any = None                    # the decoded JSON body (None when there was none)
    peer: str = ""
    scope: str = field(default="")      # the scope the route needs (filled in by dispatch)


@dataclass(frozen=True)
class Route:
    scope: str                          # read, control or admin
    run: Callable[[ApiRequest], Any]    # -> dict (a JSON answer) or an iterator of bytes (a stream)
    body: bool = False                  # takes a JSON body


class ControlPlane:
    """The control-plane endpoints over one daemon (``submit``, ``published``, ``document_info``)."""

    def __init__(self, daemon, tokens: TokenTable, hub: EventHub):
        self.daemon = daemon
        self.tokens = tokens
        self.hub = hub
        self._info_cache: dict | None = None
        self.routes: dict[str, dict[str, Route]] = {
            "/health": {"GET": Route("read", self.health)},
            "/info": {"GET": Route("read", self.info)},
            "/status": {"GET": Route("read", self.snapshot)},
            "/snapshot": {"GET": Route("read", self.snapshot)},
            "/graph": {"GET": Route("read", self.graph)},
            "/document": {"GET": Route("read", self.document),
                          "PUT": Route("admin", self.update_document, body=True)},
            "/document/validate": {"POST": Route("read", self.validate_document, body=True)},
            "/document/load": {"POST": Route("admin", self.load_document, body=True)},
            "/commands/build": {"POST": Route("admin", self.build, body=True)},
            "/commands/start": {"POST": Route("control", self._lifecycle("start"), body=True)},
            "/commands/pause": {"POST": Route("control", self._lifecycle("pause"), body=True)},
            "/commands/resume": {"POST": Route("control", self._lifecycle("resume"), body=True)},
            "/commands/stop": {"POST": Route("control", self.stop, body=True)},
            "/commands/shutdown": {"POST": Route("admin", self.shutdown, body=True)},
            "/commands/reload": {"POST": Route("control", self.reload, body=True)},
            "/commands/restart": {"POST": Route("control", self.restart, body=True)},
            "/synthetic/start": {"POST": Route("control", self.synthetic_start, body=True)},
            "/synthetic/stop": {"POST": Route("control", self.synthetic_stop, body=True)},
            "/events": {"GET": Route("read", self.events)},
        }

    # ------------------------------------------------------------------ authorization
    def authorize(self, request: ApiRequest) -> int | None:
        """Check the request's token against the route's scope; raises HttpError 401/403."""
        needed = scope_level(request.scope)
        if needed == 0 and not self.tokens.protects_reads:
            return None
        if needed > 0 and not self.tokens.enabled:
            raise HttpError(403, DISABLED_DETAIL)
        level = self.tokens.level_of(self._presented_token(request))
        if level is None:
            raise HttpError(401, "missing or invalid bearer token", (("WWW-Authenticate", "Bearer"),))
        if level < needed:
            raise HttpError(403, f"operation requires '{request.scope}' scope")
        return level

    @staticmethod
    def _presented_token(request: ApiRequest) -> str | None:
        header = request.headers.get("Authorization")
        if header is not None:
            kind, _, value = header.partition(" ")
            return value.strip() if kind.lower() == "bearer" else None
        if request.path == "/events" and request.method == "GET":  # EventSource cannot set headers
            values = request.query.get("access_token")
            return values[0] if values else None
        return None

    def dispatch(self, request: ApiRequest, route: Route):
        """Authorize and run ``route``; mutations are logged with scope and peer."""
        request.scope = route.scope
        try:
            self.authorize(request)
        except HttpError as refusal:
            if route.scope != "read":
                log.warning("control %s %s from %s (needs %s): refused %d: %s", request.method, request.path,
                            request.peer, route.scope, refusal.status, refusal.detail)
            raise
        if route.scope != "read":
            log.info("control %s %s from %s (scope %s)", request.method, request.path, request.peer, route.scope)
        try:
            return route.run(request)
        except HttpError:
            raise
        except StateTransitionError as exc:
            raise HttpError(409, str(exc)) from None
        except (ConfigValidationError, ValueError, TypeError) as exc:
            raise HttpError(400, str(exc)) from None
        except FileNotFoundError as exc:
            raise HttpError(404, str(exc)) from None
        except KeyError as exc:
            raise HttpError(404, str(exc.args[0]) if exc.args else "not found") from None
        except WorkerProcessError as exc:
            raise HttpError(500, str(exc)) from None
        except TimeoutError:
            raise HttpError(504, "the daemon did not answer in time; the command may still complete") from None
        except ShmPipelineError as exc:  # a reload that could not be applied: the running pipeline is unchanged
            raise HttpError(409, str(exc)) from None

    # ------------------------------------------------------------------ reads
    def _snapshot(self) -> dict:
        published = self.daemon.published
        if published is None:
            raise HttpError(503, "the daemon is starting")
        return published.snapshot

    def health(self, request: ApiRequest) -> dict:
        snapshot = self._snapshot()
        return {"ok": True, "state": snapshot.get("state"), "document_revision": snapshot.get("document_revision")}

    def info(self, request: ApiRequest) -> dict:
        snapshot = self._snapshot()
        if self._info_cache is None:
            from ..registry import get_default_registry
            from ..synthetic import available_synthetic_patterns

            registry = get_default_registry()
            self._info_cache = {
                "kernel_kinds": list(registry.kinds()), "source_kinds": list(registry.source_kinds()),
                "sink_kinds": list(registry.sink_kinds()),
                "synthetic_patterns": list(available_synthetic_patterns())}
        return {"server": "shmpiped", "config_path": snapshot.get("config_path"),
                "config_base_path": snapshot.get("config_base_path"), "state": snapshot.get("state"),
                "commands": list(COMMANDS), **self._info_cache,
                "document_revision": snapshot.get("document_revision"),
                "token_required": self.tokens.enabled}

    def snapshot(self, request: ApiRequest) -> bytes:
        published = self.daemon.published
        if published is None:
            raise HttpError(503, "the daemon is starting")
        return published.status_json  # rendered once per snapshot, shared by /status and /snapshot

    def graph(self, request: ApiRequest) -> dict:
        return self._snapshot().get("graph") or {}

    def document(self, request: ApiRequest) -> dict:
        from ..document import config_to_document

        config = self.daemon.config
        snapshot = self._snapshot()
        return {"config_path": snapshot.get("config_path"), "config_base_path": str(config.base_path),
                "revision": snapshot.get("document_revision"), "document": config_to_document(config)}

    def _candidate(self, document, base_path=None):
        """(config, validation payload) for a document; config is None when it is invalid."""
        from ..config import PipelineConfig
        from ..graph import PipelineGraph
        from ..validation import validate_pipeline_config

        if not isinstance(document, dict):
            raise HttpError(400, "the body must be a pipeline document (a JSON object)")
        from ..document import normalize_document

        try:
            config = PipelineConfig.from_dict(normalize_document(document),
                                              base_path=base_path or self.daemon.config.base_path)
        except ConfigValidationError as exc:
            return None, {"valid": False, "errors": list(exc.errors) or [str(exc)]}
        errors = validate_pipeline_config(config)
        if errors:
            return None, {"valid": False, "errors": list(errors)}
        return config, {"valid": True, "errors": [], "graph": PipelineGraph.from_config(config).to_dict()}

    def validate_document(self, request: ApiRequest) -> dict:
        if request.body is None:
            from ..document import config_to_document

            return self._candidate(config_to_document(self.daemon.config))[1]
        return self._candidate(request.body)[1]

    # ------------------------------------------------------------------ mutations
    def _submit(self, request: ApiRequest, command: dict):
        command["_peer"] = {"http": request.peer}
        return self.daemon.submit(command)

    def _lifecycle(self, command: str) -> Callable[[ApiRequest], bytes]:
        def run(request: ApiRequest) -> bytes:
            self._submit(request, {"command": command})
            return self.snapshot(request)

        return run

    def build(self, request: ApiRequest) -> bytes:
        self._submit(request, {"command": "build"})
        return self.snapshot(request)

    def stop(self, request: ApiRequest) -> bytes:
        body = request.body or {}
        timeout = min(float(body.get("timeout", 5.0)), STOP_TIMEOUT_MAX_S)
        self._submit(request, {"command": "stop-workers", "timeout": timeout, "force": bool(body.get("force"))})
        return self.snapshot(request)

    def shutdown(self, request: ApiRequest) -> dict:
        self._submit(request, {"command": "stop"})
        return {**self._snapshot(), "shutting_down": True}

    def reload(self, request: ApiRequest) -> dict:
        return self._submit(request, {"command": "reload"})

    def restart(self, request: ApiRequest) -> dict:
        worker = (request.body or {}).get("worker")
        if worker is not None and not isinstance(worker, str):
            raise HttpError(400, "'worker' must be a worker's name or null (every failed worker)")
        workers = self._snapshot().get("workers") or {}
        if worker is not None and worker not in workers:
            raise HttpError(404, f"unknown worker {worker!r}; workers: {', '.join(workers) or 'none'}")
        result = self._submit(request, {"command": "restart", "worker": worker})
        return {**result, "snapshot": self._snapshot()}

    def synthetic_start(self, request: ApiRequest) -> dict:
        spec = dict(request.body or {})
        if not isinstance(spec.get("stream_name"), str):
            raise HttpError(400, "'stream_name' is required: the stream the synthetic input writes")
        if spec.get("rate_hz") is None:
            spec.pop("rate_hz", None)
        result = self._submit(request, {"command": "synthetic", "action": "start",
                                        "stream": spec["stream_name"], "spec": spec})
        return {"synthetic_source": result, "snapshot": self._snapshot()}

    def synthetic_stop(self, request: ApiRequest) -> dict:
        body = request.body or {}
        stream = body.get("stream_name")
        if not isinstance(stream, str):
            raise HttpError(400, "'stream_name' is required")
        self._submit(request, {"command": "synthetic", "action": "stop", "stream": stream})
        return {"stream_name": stream, "snapshot": self._snapshot()}

    def _apply(self, request: ApiRequest, config, validation: dict, path: str | None) -> dict:
        self._submit(request, {"command": "apply", "config": config, "path": path})
        snapshot = self._snapshot()
        from ..document import config_to_document

        return {"config_path": snapshot.get("config_path"), "config_base_path": snapshot.get("config_base_path"),
                "revision": snapshot.get("document_revision"),
                "document": config_to_document(self.daemon.config), **validation}

    def update_document(self, request: ApiRequest) -> dict:
        config, validation = self._candidate(request.body)
        if config is None:
            raise HttpError(400, validation["errors"][0])
        return self._apply(request, config, validation, None)

    def load_document(self, request: ApiRequest) -> dict:
        from ..config import PipelineConfig
        from ..validation import validate_pipeline_config

        path = (request.body or {}).get("path")
        if not isinstance(path, str) or not path:
            raise HttpError(400, "'path' is required: the pipeline file to load, on the daemon's machine")
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise HttpError(404, f"{path}: no such pipeline file on the daemon's machine")
        config = PipelineConfig.from_yaml(path)
        errors = validate_pipeline_config(config)
        if errors:
            raise HttpError(400, errors[0])
        from ..graph import PipelineGraph

        validation = {"valid": True, "errors": [], "graph": PipelineGraph.from_config(config).to_dict()}
        return self._apply(request, config, validation, path)

    # ------------------------------------------------------------------ events
    def events(self, request: ApiRequest) -> Iterator[bytes]:
        raw = request.headers.get("Last-Event-ID")
        last_id = None
        if raw is not None:
            try:
                last_id = int(raw)
            except ValueError:
                raise HttpError(400, "Last-Event-ID must be an integer") from None
        try:
            subscription, backlog = self.hub.subscribe(last_id)
        except TooManySubscribers as exc:
            raise HttpError(503, str(exc)) from None
        return self._event_stream(subscription, backlog)

    def _event_stream(self, subscription, backlog) -> Iterator[bytes]:
        try:
            for event in backlog:
                yield encode_sse(event)
            yield encode_sse({"event": "snapshot", "data": {"reason": "initial", "snapshot": self._snapshot()}})
            while not subscription.closed:
                if subscription.overflowed:
                    log.info("event-stream client fell %d events behind: disconnected", self.hub.queue_events)
                    return
                event = subscription.get(KEEPALIVE_S)
                yield b": keepalive\n\n" if event is None else encode_sse(event)
        finally:
            self.hub.unsubscribe(subscription)


def encode_sse(event: dict) -> bytes:
    """One Server-Sent Event: ``id:``, ``event:`` and ``data:`` lines (JSON), then a blank line."""
    lines = []
    if event.get("id") is not None:
        lines.append(f"id: {event['id']}")
    if event.get("event") is not None:
        lines.append(f"event: {event['event']}")
    if event.get("data") is not None:
        lines.extend(f"data: {line}" for line in json.dumps(event["data"], sort_keys=True,
                                                           default=str).splitlines())
    return ("\n".join(lines) + "\n\n").encode()


def parse_query(query: str) -> dict:
    return parse_qs(query, keep_blank_values=True)
