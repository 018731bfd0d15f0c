"""``ManagerService``: one ``PipelineManager`` behind a lock, for in-process transports (shmpipeline's name).

A script or GUI that embeds the manager (rather than talking to a daemon)
gets shmpipeline 1.3.0's service: every operation serialised, answers that
are the runtime snapshot, a numbered event history (512 kept) with a bounded
queue (128) per subscriber -- a subscriber that falls behind loses its oldest
events, then is dropped -- and a background pump that turns the manager's
failures into events.  The daemon does not use this class: its control plane
queues commands to its main loop instead (``shmpiped.service.control_plane``).
"""

from __future__ import annotations

import collections
import queue
import threading
from pathlib import Path
from typing import Any, Mapping

from ..config import PipelineConfig
from ..document import clone_document, config_to_document, load_document, normalize_document
from ..errors import ConfigValidationError, StateTransitionError
from ..graph import PipelineGraph
from ..state import PipelineState

__all__ = ["ManagerService"]

_ACTIVE = (PipelineState.RUNNING, PipelineState.PAUSED, PipelineState.FAILED)


class ManagerService:
    """Owns one manager; see the module docstring."""

    def __init__(self, config, *, spawn_method: str = "spawn", placement_policy=None, registry=None,
                 poll_interval: float = 0.1) -> None:
        if poll_interval <= 0.0:
            raise ValueError("poll_interval must be positive")
        self._spawn_method = spawn_method
        self._placement_policy = placement_policy
        self._registry = registry
        self._poll_interval = float(poll_interval)
        self._config_path: str | None = None
        self._base_path = Path.cwd().resolve()
        self._document = self._initial_document(config)
        self._revision = 1
        self._lock = threading.RLock()
        self._manager = self._new_manager()
        self._event_lock = threading.Lock()
        self._history: collections.deque = collections.deque(maxlen=512)
        self._subscribers: dict[int, queue.Queue] = {}
        self._next_subscriber = 1
        self._next_event = 1
        self._closed = threading.Event()
        self._pump: threading.Thread | None = None

    # -- setup
    def _initial_document(self, config) -> dict:
        if isinstance(config, PipelineConfig):
            self._config_path = None if config.source_path is None else str(config.source_path)
            self._base_path = Path(config.base_path)
            return config_to_document(config)
        if isinstance(config, (str, Path)):
            resolved = Path(config).expanduser().resolve()
            self._config_path, self._base_path = str(resolved), resolved.parent
            return load_document(resolved)
        return normalize_document(config)

    def _new_manager(self):
        from ..manager import PipelineManager

        kwargs: dict[str, Any] = {"spawn_method": self._spawn_method, "registry": self._registry}
        if self._placement_policy is not None:
            kwargs["placement_policy"] = self._placement_policy
        return PipelineManager(PipelineConfig.from_dict(self._document, base_path=self._base_path), **kwargs)

    # -- the event pump
    def start_event_pump(self) -> None:
        if self._pump is not None and self._pump.is_alive():
            return
        self._closed.clear()
        self._pump = threading.Thread(target=self._poll_loop, name="shmpiped-control-poll", daemon=True)
        self._pump.start()

    def close(self) -> None:
        self._closed.set()
        if self._pump is not None and self._pump.is_alive():
            self._pump.join(timeout=2.0)
        with self._lock:
            self._manager.shutdown(force=True)

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            try:
                with self._lock:
                    events = self._manager.poll_events()
                for event in events:
                    self._publish(event.get("type", "event"), event)
            except Exception as exc:  # noqa: BLE001 - reported as an event, the pump goes on
                self._publish("service_error", {"error": str(exc)})
            self._closed.wait(self._poll_interval)

    # -- reads
    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"ok": True, "state": self._manager.state.value, "document_revision": self._revision}

    def info(self) -> dict[str, Any]:
        from ..registry import get_default_registry
        from ..synthetic import available_synthetic_patterns

        with self._lock:
            registry = self._registry or get_default_registry()
            return {"config_path": self._config_path, "config_base_path": str(self._base_path),
                    "state": self._manager.state.value,
                    "commands": ["build", "start", "pause", "resume", "stop", "shutdown"],
                    "kernel_kinds": list(registry.kinds()), "source_kinds": list(registry.source_kinds()),
                    "sink_kinds": list(registry.sink_kinds()),
                    "synthetic_patterns": list(available_synthetic_patterns()),
                    "document_revision": self._revision}

    def document(self) -> dict[str, Any]:
        with self._lock:
            return {"config_path": self._config_path, "config_base_path": str(self._base_path),
                    "revision": self._revision, "document": clone_document(self._document)}

    def status(self) -> dict[str, Any]:
        with self._lock:
            status = self._manager.status(poll=not self._pumping())
            status.update(document_revision=self._revision, config_path=self._config_path,
                          config_base_path=str(self._base_path))
            return status

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def graph(self) -> dict[str, Any]:
        with self._lock:
            config = PipelineConfig.from_dict(self._document, base_path=self._base_path)
            return PipelineGraph.from_config(config).to_dict()

    def validate_document(self, document: Mapping[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            candidate = normalize_document(document) if document is not None else clone_document(self._document)
            return self._validate(candidate)

    # -- document changes (only while no worker runs, as shmpipeline's service)
    def update_document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            payload = self._replace(normalize_document(document), self._config_path, self._base_path)
        self._publish("document_updated", {"reason": "document_updated", **payload})
        return payload

    def load_document_path(self, path) -> dict[str, Any]:
        resolved = Path(path).expanduser().resolve()
        candidate = load_document(str(resolved))
        with self._lock:
            payload = self._replace(candidate, str(resolved), resolved.parent)
        self._publish("document_updated", {"reason": "document_loaded", **payload})
        return payload

    def _replace(self, document: dict, config_path, base_path: Path) -> dict[str, Any]:
        validation = self._validate(document, base_path)
        if validation["errors"]:
            raise ConfigValidationError(validation["errors"][0])
        if self._manager.state in _ACTIVE:
            raise StateTransitionError("cannot replace the server document while the pipeline is active; "
                                       "stop or shutdown first")
        if self._manager.state == PipelineState.BUILT:
            self._manager.shutdown(force=True)
        self._document, self._config_path, self._base_path = clone_document(document), config_path, base_path
        self._revision += 1
        self._manager = self._new_manager()
        return {"config_path": self._config_path, "config_base_path": str(self._base_path),
                "revision": self._revision, "document": clone_document(self._document), **validation}

    def _validate(self, document: Mapping[str, Any], base_path: Path | None = None) -> dict[str, Any]:
        from ..validation import validate_pipeline_config

        try:
            config = PipelineConfig.from_dict(document, base_path=base_path or self._base_path)
        except ConfigValidationError as exc:
            return {"valid": False, "errors": [str(exc)]}
        errors = validate_pipeline_config(config, registry=self._registry)
        payload: dict[str, Any] = {"valid": not errors, "errors": errors}
        if not errors:
            payload["graph"] = PipelineGraph.from_config(config).to_dict()
        return payload

    # -- lifecycle
    def build(self) -> dict[str, Any]:
        def build():
            if self._manager.state == PipelineState.STOPPED:
                self._manager = self._new_manager()
            if self._manager.state == PipelineState.INITIALIZED:
                self._manager.build()
            elif self._manager.state != PipelineState.BUILT:
                raise StateTransitionError("build is not allowed while the pipeline is active")

        return self._run("build", build)

    def start(self) -> dict[str, Any]:
        def start():
            state = self._manager.state
            if state == PipelineState.STOPPED:
                self._manager = self._new_manager()
                state = self._manager.state
            if state == PipelineState.INITIALIZED:
                self._manager.build()
            elif state != PipelineState.BUILT:
                raise StateTransitionError(f"cannot start pipeline while state is {state.value!r}")
            self._manager.start()

        return self._run("start", start)

    def pause(self) -> dict[str, Any]:
        return self._run("pause", lambda: self._manager.pause())

    def resume(self) -> dict[str, Any]:
        return self._run("resume", lambda: self._manager.resume())

    def stop(self, *, timeout: float = 5.0, force: bool = False) -> dict[str, Any]:
        return self._run("stop", lambda: self._manager.stop(timeout=timeout, force=force))

    def shutdown(self, *, unlink: bool = True, unlink_external: bool = False, force: bool = False) -> dict:
        return self._run("shutdown", lambda: self._manager.shutdown(unlink=unlink, unlink_external=unlink_external,
                                                                    force=force))

    def start_synthetic_input(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            controller = self._manager.start_synthetic_input(spec)
            snapshot = self._snapshot()
        self._publish("snapshot", {"reason": "synthetic_start", "snapshot": snapshot})
        return {"synthetic_source": controller, "snapshot": snapshot}

    def stop_synthetic_input(self, stream_name: str, *, timeout: float = 2.0) -> dict[str, Any]:
        with self._lock:
            self._manager.stop_synthetic_input(stream_name, timeout=timeout)
            snapshot = self._snapshot()
        self._publish("snapshot", {"reason": "synthetic_stop", "snapshot": snapshot})
        return {"stream_name": stream_name, "snapshot": snapshot}

    def _run(self, name: str, action) -> dict[str, Any]:
        with self._lock:
            action()
            snapshot = self._snapshot()
        self._publish("snapshot", {"reason": name, "snapshot": snapshot})
        return snapshot

    def _snapshot(self) -> dict[str, Any]:
        snapshot = self._manager.runtime_snapshot(poll=not self._pumping())
        snapshot.update(document_revision=self._revision, config_path=self._config_path)
        return snapshot

    def _pumping(self) -> bool:
        return self._pump is not None and self._pump.is_alive()

    # -- events
    def subscribe(self, *, last_event_id: int | None = None):
        """(subscriber id, its queue, the kept events after ``last_event_id``)."""
        events: queue.Queue = queue.Queue(maxsize=128)
        with self._event_lock:
            subscriber = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[subscriber] = events
            backlog = [] if last_event_id is None else [e for e in self._history if e["id"] > last_event_id]
        return subscriber, events, backlog

    def unsubscribe(self, subscriber_id: int) -> None:
        with self._event_lock:
            self._subscribers.pop(subscriber_id, None)

    def _publish(self, name: str, data: dict[str, Any]) -> None:
        with self._event_lock:
            event = {"id": self._next_event, "event": name, "data": data}
            self._next_event += 1
            self._history.append(event)
            for subscriber, events in list(self._subscribers.items()):
                try:
                    events.put_nowait(event)
                except queue.Full:
                    try:
                        events.get_nowait()  # lose the oldest event
                        events.put_nowait(event)
                    except (queue.Empty, queue.Full):
                        self._subscribers.pop(subscriber, None)
