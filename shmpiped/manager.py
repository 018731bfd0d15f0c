"""PipelineManager: the lifecycle of one pipeline in this process.

``build()`` validates the configuration, takes ownership of the namespace,
removes stale segments a crashed owner left behind and builds every stream;
``start()`` spawns one worker process per kernel and starts the source and
sink threads; ``pause()``/``resume()``/``stop()``/``shutdown()``/``restart()``
and ``add_kernel()`` follow shmpipeline's state machine (spec section 2),
minus the quirks of its section 13.

The manager never blocks on a worker: workers report through their telemetry
records, which ``status()`` reads, and their exit is seen with a non-blocking
``poll()``.  Every path out (an exception in ``build``/``start``, Ctrl-C, a
crash of a worker) leaves no worker running and, after ``shutdown()``, no
segment of ours in /dev/shm.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref

from . import measure, realtime, spawning
from . import status as status_parts
from .config import KernelConfig, PipelineConfig
from .errors import (
    ConfigValidationError,
    StateTransitionError,
    WorkerProcessError,
)
from .graph import PipelineGraph
from .manager_changes import ChangesMixin
from .manager_endpoints import EndpointsMixin
from .placement import PlacementPolicy, available_cpus, place
from .scheduling import normalize_placement_policy
from .shm import layout
from .shm.stream import Stream
from .shm.telemetry import NamespaceBlock
from .shm_inventory import check_room
from .state import PipelineState
from .streams import (
    default_notify,
    note_damaged_segments,
    provision_stream,
    remove_stale_segments,
    write_initial_value,
)
from .workers import WorkerHandle, WorkerPool

log = logging.getLogger("shmpiped.manager")

EVENTS_MAXLEN = 256


class PipelineManager(ChangesMixin, EndpointsMixin):
    """Builds, runs and observes one pipeline (shmpipeline's API, made observable)."""

    def __init__(
        self,
        config,
        *,
        spawn_method: str = "spawn",
        placement_policy: PlacementPolicy | None = None,
        registry=None,
        worker_start_timeout: float = 10.0,
        config_base_path=None,
        slots: int = layout.DEFAULT_SLOTS,
        wait_strategy: str = "futex",
        telemetry: bool = True,
    ):
        if isinstance(config, (str, os.PathLike)):
            config = PipelineConfig.from_yaml(config)
        elif not isinstance(config, PipelineConfig):
            config = PipelineConfig.from_dict(config, base_path=config_base_path)
        self.config: PipelineConfig = config
        self.spawn_method = spawn_method  # accepted for compatibility: workers are always fresh interpreters
        self.placement_policy = normalize_placement_policy(placement_policy)
        self._registry = registry
        self.worker_start_timeout = float(worker_start_timeout)
        self.slots = int(slots)
        self.wait_strategy = wait_strategy
        self.telemetry = telemetry
        self._state = PipelineState.INITIALIZED
        self._lock = threading.RLock()
        self.streams: dict[str, Stream] = {}
        self.owned_streams: set[str] = set()
        self._pool = WorkerPool(self._event)
        self.kernel_configs: dict[str, KernelConfig] = {k.name: k for k in config.kernels}
        self._failures: list[dict] = []
        self._events: collections.deque = collections.deque(maxlen=EVENTS_MAXLEN)
        self._last_metrics: dict[str, dict] = {}
        self._restart_counts: dict[str, int] = collections.Counter()
        self._pause_event = threading.Event()
        self._sources: dict = {}
        self._sinks: dict = {}
        self._synthetic: dict = {}
        self._endpoint_failures_seen: set[str] = set()
        self._overruns_seen: dict[str, int] = {}
        self._viewers: list = []
        self.realtime_problems: list[str] = []  # privileges the pipeline's real-time settings lack (build)

    # ------------------------------------------------------------------ basics
    @property
    def state(self) -> PipelineState:
        return self._state

    @property
    def _block(self) -> NamespaceBlock | None:
        return self._pool.block

    @property
    def workers(self) -> dict[str, WorkerHandle]:
        """Kernel name -> the handle of its current worker process."""
        return self._pool.handles

    @property
    def namespace(self) -> str:
        return self.config.namespace or layout.DEFAULT_NAMESPACE

    @property
    def shares_namespace(self) -> bool:
        """True when the pipeline runs in the shared default namespace (no ``namespace:`` given):
        other pipelines may run there too, and ownership is per stream.  An explicit namespace
        is claimed whole."""
        return self.config.namespace is None

    @property
    def registry(self):
        """The registry given, else the process's default one (so kinds registered on
        ``get_default_registry()`` are found, as in shmpipeline)."""
        if self._registry is None:
            from .kernels.registry import get_default_registry

            self._registry = get_default_registry()
        return self._registry

    @property
    def graph(self) -> PipelineGraph:
        return PipelineGraph(self.config)

    def __enter__(self) -> "PipelineManager":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(force=True)

    def _set_state(self, new: PipelineState, reason: str) -> None:
        old = self._state
        if old == new:
            return
        self._state = new
        log.info("state transition: %s -> %s (%s)", old.value, new.value, reason)
        self._event("state_changed", previous=old.value, state=new.value, reason=reason)

    def _event(self, kind: str, **fields) -> None:
        self._events.append({"time": time.time(), "type": kind, **fields})

    def _require(self, action: str, *allowed: PipelineState) -> None:
        if self._state not in allowed:
            raise StateTransitionError(f"cannot {action} pipeline while state is '{self._state.value}'")

    # ------------------------------------------------------------------ build
    def build(self) -> "PipelineManager":
        with self._lock:
            self._require("build", PipelineState.INITIALIZED, PipelineState.STOPPED)
            self._events.clear()
            self._failures.clear()
            self._last_metrics.clear()
            log.info("validating pipeline config")
            from .validation import raise_for_invalid

            if spawning.running_parent_main:
                raise RuntimeError(
                    "a worker process re-ran the top-level code of your script to load a kernel class "
                    "defined in it, and that code builds a pipeline: put it under "
                    "`if __name__ == \"__main__\":`")
            raise_for_invalid(self.config, self.registry)
            self._check_loadable(self.config.kernels)
            # Its CPUs exist here, and its real-time privileges (required: refuse; else one warning).
            self.realtime_problems = realtime.check_pipeline(self.config)
            check_room(self.config, self.slots)  # before anything exists: the total needed, and the fix
            block = NamespaceBlock.acquire(self.config.namespace, shared=self.shares_namespace)
            created: list[Stream] = []
            opened: list[Stream] = []
            try:
                removed = remove_stale_segments(self.namespace)
                if removed:
                    log.warning("removed %d stale segment(s) of namespace %r: %s",
                                len(removed), self.namespace, ", ".join(removed))
                    self._event("stale_segments_removed", segments=removed)
                notify = default_notify(self.config)
                for spec in self.config.shared_memory:
                    stream, was_created = provision_stream(spec, self.config, self.slots, notify[spec.name],
                                                           shared=block.shared)
                    (created if was_created else opened).append(stream)
                    if spec.initial is not None:
                        write_initial_value(stream, spec, self.config)
            except BaseException:
                for stream in created:
                    stream.close()
                    stream.unlink()
                for stream in opened:
                    stream.close()
                block.close(unlink=True)
                raise
            _shutdown_at_exit(self)
            self.streams = {s.name: s for s in created + opened}
            prefaulted = realtime.prefault_streams(self.config, self.streams.values())  # with lock_memory
            if prefaulted is not None:
                self._event("streams_prefaulted", bytes=prefaulted[0], seconds=prefaulted[1])
            self._pool.block, self._pool.streams = block, self.streams  # the control block lives in the pool
            self.owned_streams = {s.name for s in created}
            self.kernel_configs = {k.name: k for k in self.config.kernels}
            self._set_state(PipelineState.BUILT, "streams built")
            return self

    def _check_loadable(self, kernels) -> None:
        """Raise, naming the class, its module and why, if a worker could not load a kernel's class."""
        errors = []
        for kernel in kernels:
            cls = self.registry.get(kernel.kind)
            why = spawning.why_unloadable(cls)
            if why:
                errors.append(self.config.locate(
                    f"kernel {kernel.name!r}: its class {cls.__qualname__} (module {cls.__module__}) "
                    f"cannot be loaded in a worker process: {why}", kernel))
        if errors:
            raise ConfigValidationError(errors[0], errors=errors)

    # ------------------------------------------------------------------ start / stop
    def start(self, wait: bool = True) -> "PipelineManager":
        """Spawn the workers and start sources and sinks.

        With ``wait`` (the default) it returns once every worker has reached
        its loop, and raises (leaving nothing running) if one fails first.
        ``wait=False`` returns at once: workers report ``starting`` until they
        are ready, and a failure shows up in ``status()`` like any other.
        """
        with self._lock:
            self.poll_events()
            self._require("start", PipelineState.BUILT)
            self._failures.clear()
            self._last_metrics.clear()
            self._pause_event.clear()
            self._block.set_paused(False)
            spinning = {self._wait_of(k)[0] for k in self.config.kernels} - {"futex"}
            if spinning and len(self.config.kernels) >= len(available_cpus()):
                log.warning("wait strategy %r spins: with %d workers on %d CPUs, spinning workers will "
                            "take CPU time from each other; it needs a dedicated core per worker",
                            "/".join(sorted(spinning)), len(self.config.kernels), len(available_cpus()))
            try:
                self._start_sinks()
                for index, kernel in enumerate(self.config.kernels):
                    self._spawn(kernel, index)
                if wait:
                    self._wait_started(list(self.workers.values()), self.worker_start_timeout)
                self._start_sources()
            except BaseException:
                self._stop_all(timeout=1.0, force=True)
                self._failures.clear()
                raise
            self._set_state(PipelineState.RUNNING, "workers started")
            return self

    def _wait_of(self, kernel: KernelConfig) -> tuple[str, float]:
        """A worker's wait strategy and spin time: its realtime ``wait``, else the manager's."""
        settings = self.config.realtime_for(kernel)
        return (settings.wait if settings.wait != "futex" else self.wait_strategy), settings.spin_s

    def _spawn(self, kernel: KernelConfig, index: int) -> WorkerHandle:
        cpu_slot, affinity = place(self.placement_policy, self.config, kernel, index)
        shared = {name: self.config.stream(name) for name in (*kernel.all_inputs, *kernel.all_outputs)}
        wait, spin_s = self._wait_of(kernel)
        return self._pool.spawn(
            kernel, index, cpu_slot, kernel_class=self.registry.get(kernel.kind), shared_memory=shared,
            namespace=self.namespace, config_base_dir=str(self.config.base_path),
            wait_strategy=wait, spin_s=spin_s, telemetry=self.telemetry,
            realtime=self.config.realtime_for(kernel), affinity=affinity)

    def _wait_started(self, handles: list[WorkerHandle], timeout: float) -> None:
        def died(handle: WorkerHandle) -> None:
            self._collect_worker_failure(handle)
            self.raise_if_failed()

        self._pool.wait_started(handles, timeout, died)

    def pause(self) -> None:
        with self._lock:
            self.poll_events()
            self._require("pause", PipelineState.RUNNING)
            self._block.set_paused(True)
            self._pause_event.set()
            self._pool.wake(self.workers.values())
            self._set_state(PipelineState.PAUSED, "pause requested")

    def resume(self) -> None:
        with self._lock:
            self.poll_events()
            self._require("resume", PipelineState.PAUSED)
            self._block.set_paused(False)
            self._pause_event.clear()
            self._set_state(PipelineState.RUNNING, "resume requested")

    def stop(self, timeout: float = 5.0, force: bool = False) -> None:
        with self._lock:
            self.poll_events()
            if self._state == PipelineState.BUILT:
                return
            self._require("stop", PipelineState.RUNNING, PipelineState.PAUSED, PipelineState.FAILED)
            self._stop_all(timeout=timeout, force=force)
            self._set_state(PipelineState.BUILT, "stop requested")

    def _stop_all(self, timeout: float, force: bool) -> None:
        for controller in self._sources.values():
            controller.stop(timeout)
        self._collect_endpoint_failures()
        self._sources.clear()
        self._stop_workers(list(self.workers.values()), timeout, force)
        self.workers.clear()
        for controller in self._sinks.values():
            controller.stop(timeout)
        self._collect_endpoint_failures()
        self._sinks.clear()
        self._pause_event.clear()
        if self._block is not None:
            self._block.set_paused(False)

    def _stop_workers(self, handles: list[WorkerHandle], timeout: float, force: bool) -> None:
        self._pool.stop(handles, timeout, force, self._remember_metrics)

    def shutdown(self, unlink: bool = True, unlink_external: bool = False, force: bool = False) -> None:
        with self._lock:
            self.close_viewers()
            self.stop_all_synthetic_inputs()
            if self._state in (PipelineState.RUNNING, PipelineState.PAUSED, PipelineState.FAILED):
                self._stop_all(timeout=5.0, force=force)
            for name, stream in list(self.streams.items()):
                remove = unlink and (unlink_external or name in self.owned_streams)
                if not remove and name in self.owned_streams and not stream.closed:
                    stream.mark_kept()
                stream.close()
                if remove:
                    stream.unlink()
            self.streams.clear()
            self.owned_streams.clear()
            if self._block is not None:
                self._block.close(unlink=True)
                self._pool.block = None
            self._set_state(PipelineState.STOPPED, "shutdown")

    # ------------------------------------------------------------------ restart / add_kernel
    def restart(self, timeout: float | None = None, *, workers=None, wait: bool = True) -> list[str]:
        """Respawn workers: the failed or dead ones, or exactly ``workers`` when given.

        Returns the names restarted.  From ``failed`` the pipeline goes back to
        ``running`` (``paused`` if it was paused) once no failure remains.
        ``wait=False`` returns without waiting for the new workers to start.
        """
        with self._lock:
            self.poll_events()
            self._require("restart workers", PipelineState.RUNNING, PipelineState.PAUSED, PipelineState.FAILED)
            sources = self._source_processes()
            if workers is not None:
                names = list(workers)
                unknown = [n for n in names if n not in self.kernel_configs and n not in sources]
                if unknown:
                    raise KeyError(f"unknown worker: {', '.join(repr(n) for n in unknown)}")
            else:
                names = [n for n in self.workers if not self.workers[n].alive]
                names += [f["kernel"] for f in self._failures
                          if f.get("component_type", "worker") == "worker" and f["kernel"] not in names]
                names += [n for n, s in sources.items() if s.failure is not None or not s.alive]
            if not names:
                log.info("restart: every worker is healthy, nothing to do")
                return []
            wait_s = timeout if timeout is not None else self.worker_start_timeout
            for name in [n for n in names if n in sources]:
                self._restart_source_process(name, wait_s, wait)
            handles = []
            for name in [n for n in names if n not in sources]:
                old = self.workers.get(name)
                if old is not None:
                    self._stop_workers([old], timeout=1.0, force=True)
                self._failures = [f for f in self._failures if f.get("kernel") != name]
                config = self.kernel_configs[name]
                index = next(i for i, k in enumerate(self.config.kernels) if k.name == name)
                handle = self._spawn(config, index)
                self._restart_counts[name] += 1
                self._event("worker_restarted", kernel=name, pid=handle.pid, restarts=self._restart_counts[name])
                handles.append(handle)
            if wait:
                self._wait_started(handles, wait_s)
            self._leave_failed(reason="workers restarted")
            return names

    def _leave_failed(self, reason: str) -> None:
        """From ``failed`` back to ``running`` (``paused`` if it was paused) once no failure remains."""
        if self._state == PipelineState.FAILED and not self._failures:
            paused = self._pause_event.is_set()
            self._set_state(PipelineState.PAUSED if paused else PipelineState.RUNNING, reason)

    # ------------------------------------------------------------------ streams
    def get_stream(self, name: str) -> Stream:
        try:
            return self.streams[name]
        except KeyError:
            raise KeyError(f"unknown shared memory stream: {name!r}") from None

    # ------------------------------------------------------------------ failures and events
    def poll_events(self) -> list[dict]:
        """Notice dead workers and failed endpoints; returns the new failure records."""
        with self._lock:
            before = len(self._failures)
            for handle in list(self.workers.values()):
                if handle.stopping or handle.process is None:
                    continue
                code = handle.process.poll()
                if code is None:
                    self._pool.note_started(handle)
                elif code != 0:
                    self._collect_worker_failure(handle)
                elif not handle.exit_reported:  # left on its own, cleanly: stopped, not failed
                    handle.exit_reported = True
                    self._remember_metrics(handle)
                    self._event("worker_stopped", kernel=handle.name, pid=handle.pid, exitcode=0)
                    log.warning("worker %r exited on its own (status 0)", handle.name)
            self._collect_endpoint_failures()
            note_damaged_segments(self.streams, self._block, self.config, self._failures, self._event)
            if self._failures and self._state in (PipelineState.RUNNING, PipelineState.PAUSED):
                first = self._failures[0]
                self._set_state(PipelineState.FAILED,
                                f"{first.get('component_type', 'worker')} {first['kernel']!r} failed")
            return self._failures[before:]

    def _collect_worker_failure(self, handle: WorkerHandle) -> None:
        if any(f.get("kernel") == handle.name for f in self._failures):
            return
        self._remember_metrics(handle)
        record = self._pool.failure_record(handle)
        self._failures.append(record)
        self._event("worker_failed", kernel=handle.name, pid=handle.pid, error=record["error"])
        log.error("worker %r failed: %s", handle.name, record["error"])

    def _collect_endpoint_failures(self) -> None:
        for controller in (*self._sources.values(), *self._sinks.values()):
            failure = getattr(controller, "failure", None)
            if failure and failure["kernel"] not in self._endpoint_failures_seen:
                self._endpoint_failures_seen.add(failure["kernel"])
                self._failures.append(dict(failure))
                self._event(failure["type"], kernel=failure["kernel"], error=failure.get("error"))

    @property
    def failures(self) -> tuple[dict, ...]:
        self.poll_events()
        return tuple(dict(f) for f in self._failures)

    @property
    def events(self) -> tuple[dict, ...]:
        self.poll_events()
        return tuple(self._events)

    def raise_if_failed(self) -> None:
        self.poll_events()
        if self._failures:
            first = self._failures[0]
            raise WorkerProcessError(
                f"{first.get('component_type', 'worker')} {first['kernel']!r} failed: {first['error']}")

    # ------------------------------------------------------------------ status
    def _remember_metrics(self, handle: WorkerHandle) -> None:
        snap = self._pool.snapshot_of(handle)
        if snap is not None and snap.frames:
            self._last_metrics[handle.name] = status_parts.worker_metrics(handle, snap, time.monotonic_ns())

    def _note_overruns(self, name: str, overruns: int) -> None:
        """Log an event when a worker's overrun count rose since the last look."""
        seen = self._overruns_seen.get(name, 0)
        if overruns > seen:
            self._event("overrun_burst", kernel=name, overruns=overruns - seen, total=overruns)
        self._overruns_seen[name] = overruns

    def status(self, poll: bool = True) -> dict:
        with self._lock:
            if poll:
                self.poll_events()
            now_ns = time.monotonic_ns()
            failed = {f.get("kernel") for f in self._failures}
            snaps = {name: self._pool.snapshot_of(h) for name, h in self.workers.items()}
            workers = {}
            for name, handle in self.workers.items():
                entry, metrics = status_parts.worker_entry(
                    handle, snaps[name], now_ns, failed=name in failed, state=self._state.value,
                    restarts=self._restart_counts[name], realtime_problems=self.realtime_problems)
                workers[name] = entry
                if metrics is not None:
                    self._last_metrics[name] = metrics
                if "overruns" in entry:
                    self._note_overruns(name, entry["overruns"])
            sources = {name: c.snapshot() for name, c in self._sources.items()}
            sinks = {name: c.snapshot() for name, c in self._sinks.items()}
            graph = self.graph
            return {
                "state": self._state.value,
                "namespace": self.namespace,
                "workers": workers,
                "sources": sources,
                "sinks": sinks,
                "failures": [dict(f) for f in self._failures],
                "metrics": {k: dict(v) for k, v in self._last_metrics.items()},
                "synthetic_sources": self.synthetic_input_status(),
                "streams": status_parts.stream_entries(self.streams, self.owned_streams, graph),
                "end_to_end": status_parts.end_to_end(self.config, graph, snaps),
                "histogram_bounds_s": list(layout.HIST_BOUNDS_S),
                "placement_policy": self.placement_policy.describe(),
                "summary": status_parts.summary(workers, sources, sinks),
            }

    def runtime_snapshot(self, poll: bool = True) -> dict:
        status = self.status(poll=poll)
        return {"timestamp": time.time(), **status, "graph": self.graph.to_dict()}

    # ------------------------------------------------------------------ benchmark
    def terminal_streams(self) -> list[str]:
        """Kernel primary outputs that nothing in the pipeline reads."""
        return measure.terminal_streams(self.config)

    def benchmark(self, duration_s: float = 5.0, source=None, output_stream: str | None = None,
                  warmup_s: float = 0.5, poll_interval: float = 1e-4) -> dict:
        """Measure the running pipeline at ``output_stream`` for ``duration_s``.

        Reports throughput, inter-arrival spacing and the true end-to-end
        latency of every frame that arrives (now - its origin timestamp), plus
        each worker's exec-time figures.  ``source`` (a SyntheticInputConfig or
        dict) drives an input for the run.  The measurement is
        :func:`shmpiped.measure.benchmark`; ``poll_interval`` is accepted for
        compatibility (the measurement parks on the stream instead of polling).
        """
        self.poll_events()
        if self._state != PipelineState.RUNNING:
            raise StateTransitionError("benchmark requires the pipeline to be RUNNING")
        return measure.benchmark(self, duration_s, source=source, output_stream=output_stream,
                                 warmup_s=warmup_s)


# ---------------------------------------------------------------------- helpers


def _shutdown_at_exit(manager: PipelineManager) -> None:
    """Shut ``manager`` down when the interpreter exits, if the caller did not."""
    ref = weakref.ref(manager)

    def hook() -> None:
        live = ref()
        if live is not None and live.state != PipelineState.STOPPED:
            live.shutdown(force=True)

    atexit.register(hook)


def attach(name: str, namespace: str | None = None, *, readonly: bool | None = None,
           gpu_device: str | bool | None = None) -> Stream:
    """Attach to a stream of a running pipeline by its logical name.

    External camera, mirror or analysis processes use this to write a source
    stream or read any stream: ``shmpiped.attach("frames", namespace="ao")``.
    A stream a kernel or source of a running pipeline writes is attached for
    reading (its ``write()`` raises PermissionError naming the producer;
    ``readonly=False`` is refused): see ``Stream.attach``.
    A GPU stream is read through its CPU mirror, or, with ``gpu_device``
    (its device, or True), through its device memory as CuPy arrays.
    """
    return Stream.attach(name, namespace, readonly=readonly, gpu_device=gpu_device)


__all__ = ["PipelineManager", "PipelineState", "WorkerHandle", "attach", "remove_stale_segments"]

