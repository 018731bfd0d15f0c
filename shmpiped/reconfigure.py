"""Changing a running pipeline's configuration without tearing it down first.

``plan(old, new)`` says what differs: streams added, removed or changed (same
name, another layout), and the kernels, sources and sinks to start, stop or
restart; everything else keeps running untouched, its streams and their
contents included.  ``Reconfiguration`` applies a plan to a running manager in
two steps, so that a caller with a loop to keep (the daemon) never waits on
it:

1. ``begin()`` checks what it can without touching anything (every kernel
   class can be loaded, the new streams fit in /dev/shm), creates the added
   streams, stops what changes, replaces the changed streams, spawns the new
   workers and starts the new sources and sinks.  If a step fails, what it
   did is undone and the error raised: the old pipeline runs again.
2. ``poll()`` until every new worker has reached its loop (``"ready"``), one
   died (``"failed"``) or ``timeout`` passed; then ``commit()`` (removes the
   streams and records the new configuration no longer uses) or
   ``rollback()`` (stops the new parts, restores the replaced streams and
   restarts the old kernels, sources and sinks: the old pipeline runs again).

``PipelineManager.reconfigure(config)`` does both steps and waits.  A
namespace change cannot be applied in place: the caller builds a second
manager (see ``shmpiped.service.daemon``).  This module works on the
manager's insides under its lock; it is its only other user.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

from .config import PipelineConfig
from .errors import ConfigValidationError, SharedMemoryError, WorkerProcessError
from .shm import layout
from .shm_inventory import room_left, stream_bytes
from .streams import default_notify, provision_stream, record_producers, write_initial_value

log = logging.getLogger("shmpiped.manager")


def _endpoint_streams(config) -> set[str]:
    names = {binding.name for binding in config.auxiliary}
    names.update(getattr(config, "streams", ()) or ())
    names.update(getattr(config, "outputs", ()) or ())
    if getattr(config, "stream", None):
        names.add(config.stream)
    return names


@dataclass(frozen=True)
class Plan:
    """What changes between two configurations of one pipeline (names, in the new file's order)."""

    added_streams: tuple[str, ...] = ()
    removed_streams: tuple[str, ...] = ()
    changed_streams: tuple[str, ...] = ()
    start_kernels: tuple[str, ...] = ()     # new kernels, and changed ones (stopped first)
    stop_kernels: tuple[str, ...] = ()      # removed kernels, and changed ones
    restart_endpoints: tuple[str, ...] = ()  # sources and sinks stopped, then started again if still there

    @property
    def unchanged(self) -> bool:
        return not any((self.added_streams, self.removed_streams, self.changed_streams, self.start_kernels,
                        self.stop_kernels, self.restart_endpoints))

    def describe(self) -> str:
        parts = []
        for label, names in (("streams added", self.added_streams), ("removed", self.removed_streams),
                             ("changed", self.changed_streams), ("kernels (re)started", self.start_kernels),
                             ("stopped", self.stop_kernels), ("sources/sinks restarted", self.restart_endpoints)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts) or "nothing changes"


def plan(old: PipelineConfig, new: PipelineConfig, down: set[str] = frozenset()) -> Plan:
    """What it takes to go from ``old`` to ``new`` (``down``: kernels without a live worker, restarted too)."""
    old_streams, new_streams = old.streams_by_name, new.streams_by_name
    changed = tuple(n for n in new_streams if n in old_streams and old_streams[n] != new_streams[n])
    touched = set(changed) | (set(old_streams) - set(new_streams))
    old_kernels = {k.name: k for k in old.kernels}
    new_kernels = {k.name: k for k in new.kernels}
    start = tuple(
        k.name for k in new.kernels
        if old_kernels.get(k.name) != k or k.name in down or touched & {*k.all_inputs, *k.all_outputs})
    stop = tuple(n for n in old_kernels if n not in new_kernels or n in start)
    old_endpoints = {e.name: e for e in (*old.sources, *old.sinks)}
    new_endpoints = {e.name: e for e in (*new.sources, *new.sinks)}
    restart = tuple(
        name for name in dict.fromkeys((*old_endpoints, *new_endpoints))
        if old_endpoints.get(name) != new_endpoints.get(name)
        or touched & _endpoint_streams(old_endpoints.get(name) or new_endpoints[name]))
    return Plan(
        added_streams=tuple(n for n in new_streams if n not in old_streams),
        removed_streams=tuple(n for n in old_streams if n not in new_streams),
        changed_streams=changed,
        start_kernels=start,
        stop_kernels=stop,
        restart_endpoints=restart,
    )


def check_room(specs, slots: int) -> None:
    """Raise SharedMemoryError, naming the total and the room left, when these new streams cannot fit."""
    needed = sum(stream_bytes(spec, slots) for spec in specs)
    free = room_left()
    if needed and free is not None and needed > free:
        raise SharedMemoryError(
            errno.ENOSPC, f"the new streams need {needed / 2**20:.1f} MiB in {layout.DEV_SHM} and only "
                f"{free / 2**20:.1f} MiB are free; make room (docker --shm-size, or a smaller pipeline)")


class Reconfiguration:
    """One change of a running manager's configuration (see the module docstring)."""

    def __init__(self, manager, config: PipelineConfig, timeout: float | None = None):
        self.manager = manager
        self.old = manager.config
        self.new = config
        self.timeout = float(timeout if timeout is not None else manager.worker_start_timeout)
        down = {name for name, handle in manager.workers.items() if not handle.alive}
        down |= {f["kernel"] for f in manager._failures if f.get("component_type", "worker") == "worker"}
        self.plan = plan(self.old, config, down)
        # What has been done so far, so that a rollback undoes exactly that:
        self._created: list[str] = []            # streams created (added, or replacing a changed one)
        self._replaced: list[str] = []           # changed streams whose old segment is gone
        self._stopped_endpoints: list[str] = []  # old sources and sinks stopped
        self._stopped_kernels: list[str] = []    # old workers stopped
        self._spawned: list = []                 # new workers
        self._started_endpoints: list[str] = []  # new sources and sinks
        self._deadline = 0.0
        self.error: str | None = None

    # -- step 1 ---------------------------------------------------------------------
    def begin(self) -> "Reconfiguration":
        manager, plan_ = self.manager, self.plan
        if self.new.namespace != self.old.namespace:
            raise ValueError("a namespace change needs a new PipelineManager, not a reconfiguration")
        manager._check_loadable([k for k in self.new.kernels if k.name in plan_.start_kernels])
        new_specs = self.new.streams_by_name
        check_room([new_specs[n] for n in (*plan_.added_streams, *plan_.changed_streams)], manager.slots)
        log.info("reconfiguring: %s", plan_.describe())
        try:
            self._provision(plan_.added_streams, self.new)
            self._stopped_endpoints = [n for n in plan_.restart_endpoints if n in manager._sources or
                                       n in manager._sinks]
            manager._stop_endpoints(self._stopped_endpoints)
            self._stopped_kernels = [n for n in plan_.stop_kernels if n in manager.workers]
            manager._stop_workers([manager.workers[n] for n in self._stopped_kernels], timeout=5.0, force=True)
            for name in self._stopped_kernels:
                manager.workers.pop(name)
            self._replace_changed()
            self._use(self.new)
            self._spawned = [manager._spawn(k, i) for i, k in enumerate(self.new.kernels)
                             if k.name in plan_.start_kernels]
            self._started_endpoints = self._start_endpoints(self.new, plan_.restart_endpoints)
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.rollback()
            raise
        self._deadline = time.monotonic() + self.timeout
        return self

    def _provision(self, names, config: PipelineConfig) -> None:
        manager = self.manager
        notify = default_notify(config)
        for name in names:
            spec = config.stream(name)
            stream, created = provision_stream(spec, config, manager.slots, notify[name],
                                               shared=manager._block.shared)
            manager.streams[name] = stream
            if created:
                manager.owned_streams.add(name)
                self._created.append(name)
            if spec.initial is not None:
                write_initial_value(stream, spec, config)

    def _replace_changed(self) -> None:
        manager = self.manager
        for name in self.plan.changed_streams:
            old = manager.streams.pop(name)
            old.close()
            if name in manager.owned_streams:
                old.unlink()
            manager.owned_streams.discard(name)
            self._replaced.append(name)
        self._provision(self.plan.changed_streams, self.new)

    def _use(self, config: PipelineConfig) -> None:
        manager = self.manager
        manager.config = config
        manager.kernel_configs = {k.name: k for k in config.kernels}

    def _start_endpoints(self, config: PipelineConfig, names) -> list[str]:
        """Start the sinks, then the sources, of ``config`` named in ``names``; returns the names started."""
        manager, started = self.manager, []
        for endpoint in (*config.sinks, *config.sources):
            if endpoint.name in names:
                (manager._start_sink if endpoint in config.sinks else manager._start_source)(endpoint)
                started.append(endpoint.name)
        return started

    # -- step 2 ---------------------------------------------------------------------
    def poll(self) -> str:
        """``"pending"``, ``"ready"`` (every new worker reached its loop) or ``"failed"`` (see ``error``)."""
        if self.error is not None:
            return "failed"
        manager = self.manager
        for handle in self._spawned:
            if manager._pool.note_started(handle):
                continue
            if not handle.alive:
                record = manager._pool.failure_record(handle)
                self.error = f"worker {handle.name!r} of the new configuration failed: {record['error']}"
                return "failed"
            if time.monotonic() >= self._deadline:
                self.error = f"worker {handle.name!r} of the new configuration did not start within {self.timeout:g} s"
                return "failed"
            return "pending"
        return "ready"

    def commit(self) -> None:
        """Keep the new configuration: remove what it no longer uses."""
        manager = self.manager
        for name in self.plan.removed_streams:
            stream = manager.streams.pop(name, None)
            if stream is not None:
                stream.close()
                if name in manager.owned_streams:
                    stream.unlink()
            manager.owned_streams.discard(name)
        record_producers(manager.streams, self.new)  # what writes each kept stream now
        new_kernels = {k.name for k in self.new.kernels}
        for name in self.plan.stop_kernels:
            if name not in new_kernels:
                manager._pool.release_record(name)
        restarted = set(self.plan.start_kernels) | set(self.plan.restart_endpoints)
        manager._failures = [f for f in manager._failures if f.get("kernel") not in restarted]
        manager._after_reconfiguration(f"reconfigured: {self.plan.describe()}")

    def rollback(self) -> None:
        """Undo what was done: stop the new parts and run the old configuration again."""
        manager = self.manager
        log.warning("reconfiguration rolled back: %s", self.error)
        manager._stop_endpoints(self._started_endpoints)
        spawned = [h for h in self._spawned if manager.workers.get(h.name) is h]
        manager._stop_workers(spawned, timeout=2.0, force=True)
        for handle in spawned:
            manager.workers.pop(handle.name, None)
            manager._failures = [f for f in manager._failures if f.get("kernel") != handle.name]
        for name in self._created:
            stream = manager.streams.pop(name, None)
            if stream is not None:
                stream.close()
                stream.unlink()
            manager.owned_streams.discard(name)
        self._use(self.old)
        try:
            self._provision(self._replaced, self.old)  # the old layouts again; their contents are lost
            for index, kernel in enumerate(self.old.kernels):
                if kernel.name in self._stopped_kernels:
                    manager._spawn(kernel, index)
            self._start_endpoints(self.old, self._stopped_endpoints)
        except (OSError, ConfigValidationError, SharedMemoryError, WorkerProcessError) as exc:
            log.error("could not restore the previous configuration completely: %s", exc)
            raise
        finally:
            manager._after_reconfiguration(f"reconfiguration rolled back: {self.error}")
