"""The source process itself (``process: true``): its plugin, its streams, its loop, its reports.

Started by ``shmpiped.source_process.SourceProcess`` through ``shmpiped.spawning``
(a fresh interpreter with the manager's ``sys.path``) with a pickled envelope
on standard input: where its telemetry record is (so even a failure to load
its plugin is reported there), how to re-import the manager's ``__main__``
when the plugin class lives there, then the :class:`SourceProcessSpec`.

``run`` applies the source's effective real-time settings to this process
(``shmpiped.realtime.apply``: CPUs, memory lock, policy and priority), builds
the plugin with the registry as a source thread would (same validation, same
context), attaches its streams as their producer (it is their one writer) and
its auxiliaries as a reader, and runs the thread controller's own loop
(``endpoints.SourceController``) here, in the main thread.

Nothing is sent per frame.  The plugin's pause and stop "events" are the
words a worker reads: the control block's pause flag and the record's stop
request.  Per write one ``record_frame`` (exec time: the write's duration;
completion times give the rolling rate); while idle a heartbeat.  At most
every ``METRICS_INTERVAL_NS`` the process touches its heartbeat, checks its
parent is alive (it stops when it is gone) and stores ``plugin_metrics()`` as
JSON in the record's latency window (a source records no latency sample),
under the record's seqlock.  A failure writes the error and traceback into
the record and exits 1, like a worker; a stop (the word, SIGTERM, the parent
gone) exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy

from . import child
from .endpoints import SourceController, _CallRunner
from .shm import _sync, layout

__all__ = ["METRICS_MAX", "METRICS_OFFSET", "SourceProcessSpec", "encode_spec", "main", "run"]

#: How often the process refreshes its plugin_metrics, checks its parent and touches its heartbeat.
METRICS_INTERVAL_NS = 250_000_000
#: Longest single sleep of the process's stop "event", so a stop request is seen promptly.
STOP_SLICE_S = 0.02
#: plugin_metrics JSON in the record: a u64 length, then the text, in the latency window.
METRICS_OFFSET = layout.REC_LATENCY_WINDOW
METRICS_MAX = layout.REC_ERROR_TEXT - METRICS_OFFSET - 8


@dataclass(frozen=True)
class SourceProcessSpec:
    """Everything the source process needs, picklable."""

    source: object                      # SourceConfig
    source_class: type                  # resolved by the manager's registry; pickled by reference
    shared_memory: dict                 # every stream of the pipeline: name -> SharedMemoryConfig
    namespace: str
    block_name: str
    record_index: int
    spawn_token: int
    config_base_dir: str
    parent_pid: int
    realtime: object = None             # the effective RealtimeConfig, None: leave the process as it is


class _Stop(Exception):
    """SIGTERM, or the parent gone: end the loop and exit 0."""


def _on_sigterm(signum, frame):
    raise _Stop()


class SharedStopFlag:
    """The plugin's stop "event" in the source process: the record's stop request word.

    It offers what plugins use of a ``threading.Event`` (``is_set``, ``wait``,
    ``set``).  The loop and the plugins ask it all the time (each loop turn,
    each slice of a plugin's wait), so it also runs the process's housekeeping
    when due (``due``, monotonic ns), in the main thread only: a plugin that
    blocks in ``read()`` or ``produce()`` still touches the heartbeat, reports
    its metrics and notices its parent is gone.
    """

    def __init__(self, record, housekeeping):
        self._address = record.address + layout.REC_STOP_REQUEST
        self._set = False
        self._housekeeping = housekeeping
        self._main_thread = threading.get_ident()
        self.due = 0

    def is_set(self) -> bool:
        if self._set or _sync.load_u64(self._address):
            return True
        now = time.monotonic_ns()
        if now >= self.due and threading.get_ident() == self._main_thread:
            self._housekeeping(now)
        return self._set

    def set(self) -> None:
        self._set = True

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while not self.is_set():
            remaining = STOP_SLICE_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, STOP_SLICE_S))
        return True


class SharedPauseFlag:
    """The plugin's pause "event" in the source process: the pipeline's pause flag."""

    def __init__(self, block):
        self._block = block

    def is_set(self) -> bool:
        return self._block.paused


class ProcessSourceLoop(SourceController):
    """The thread controller's loop, run in the source process's main thread, reporting to its record."""

    def __init__(self, config, plugin, streams, stop_flag, pause_flag, record, parent_pid: int):
        self.record = record
        self.parent_pid = parent_pid
        self._stop_flag = stop_flag
        self._metrics_text = b""
        super().__init__(config, plugin, streams, pause_flag)
        self._stop = stop_flag  # the record's stop word (the context's event already is; this makes sure)

    def run_here(self) -> None:
        """``open()`` the plugin, then run the loop in this thread until a stop or a failure."""
        self.plugin.open()
        if self._call_timeout is not None:
            self._runner = _CallRunner(f"shmpiped-source-{self.name}-call")
        self.record.start(os.getpid(), None)  # the rate counts from here, not from the imports
        self.record.set_state(layout.WS_RUNNING)
        self.started_at = time.time()
        self._meter.start()
        self.housekeeping(time.monotonic_ns())
        self._main()
        self.housekeeping(time.monotonic_ns())

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, _Stop):  # SIGTERM inside the loop is a stop, not a failure
            super()._fail(exc)

    def _completed(self, n: int, began: float) -> None:
        exec_ns = int((time.perf_counter() - began) * 1e9)
        now = time.monotonic_ns()
        count = self.stream.count
        for _ in range(n):
            self.record.record_frame(exec_ns, now, count, 0)

    def housekeeping(self, now: int) -> None:
        """Heartbeat, parent check, plugin_metrics (the stop flag calls it every METRICS_INTERVAL_NS)."""
        self._stop_flag.due = now + METRICS_INTERVAL_NS
        self.record.heartbeat(now)
        if os.getppid() != self.parent_pid:
            self._stop_flag.set()
        text = json.dumps(self._plugin_metrics(), default=str, separators=(",", ":")).encode("utf-8")
        if len(text) > METRICS_MAX:
            text = json.dumps({"error": f"plugin_metrics() gave {len(text)} bytes of JSON; at most "
                                        f"{METRICS_MAX} are kept"}).encode("utf-8")
        if text != self._metrics_text:
            self._metrics_text = text
            _store_metrics(self.record, text)


def _store_metrics(record, text: bytes) -> None:
    """Write the plugin_metrics JSON into the record under its seqlock (the process is its only writer)."""
    lock = record.address + layout.REC_SEQLOCK
    start = layout.HEADER_SIZE + record.index * layout.REC_SIZE + METRICS_OFFSET
    memory = record.block.segment.bytes
    _sync.add_u64(lock, 1)  # odd: a copy taken now is retried (a full barrier)
    memory[start + 8: start + 8 + len(text)] = numpy.frombuffer(text, dtype=numpy.uint8)
    memory[start: start + 8] = numpy.frombuffer(len(text).to_bytes(8, "little"), dtype=numpy.uint8)
    _sync.add_u64(lock, 1)


def _apply_realtime(settings, name: str) -> None:
    """Apply the source's effective real-time settings to this process: its CPUs (the pipeline's
    ``realtime.cpus``), memory lock, then policy and priority.  What could not be applied is said once on
    stderr (the manager's log); with ``required`` it raises instead (a failure, like a worker's)."""
    if settings is None or settings.is_default:
        return
    from . import realtime

    errors = realtime.apply(settings, settings.cpus)
    if errors:
        print(f"shmpiped source {name!r}: real-time settings not applied: {'; '.join(errors)}", file=sys.stderr,
              flush=True)


def run(spec: SourceProcessSpec) -> int:
    """Run the source until asked to stop; returns the process exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    from .kernels.registry import KernelRegistry
    from .shm.stream import Stream

    record = None
    streams: list = []
    config = spec.source
    try:
        block, record = child.claim_record(spec.block_name, spec.record_index, spec.spawn_token)
        record.start(os.getpid(), None)
        record.set_state(layout.WS_STARTING)
        _apply_realtime(spec.realtime, config.name)

        def attach(name: str, role: str):
            stream_spec = spec.shared_memory[name]
            gpu = stream_spec.gpu_device if stream_spec.storage == "gpu" else None
            stream = Stream.attach(name, spec.namespace, gpu_device=gpu, role=role)
            streams.append(stream)
            return stream

        outputs = {name: attach(name, "producer") for name in config.streams}  # it is their one writer
        auxiliary = {binding.alias: attach(binding.name, "reader") for binding in config.auxiliary}
        loop = None

        def housekeeping(now: int) -> None:
            if loop is not None:
                loop.housekeeping(now)

        stop_flag = SharedStopFlag(record, housekeeping)
        pause_flag = SharedPauseFlag(block)
        registry = KernelRegistry(lazy_sources={config.kind: lambda: spec.source_class})
        plugin = registry.create_source(config, spec.shared_memory, auxiliary, config_base_dir=spec.config_base_dir,
                                        stop_event=stop_flag, pause_event=pause_flag)
        loop = ProcessSourceLoop(config, plugin, outputs, stop_flag, pause_flag, record, spec.parent_pid)
        loop.run_here()
        if loop.failure is not None:
            return child.report_failure(record, "source", config.name, loop.last_error, loop.traceback)
        record.set_state(layout.WS_STOPPED)
        return 0
    except _Stop:
        if record is not None:
            record.set_state(layout.WS_STOPPED)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then we exit
        return child.report_failure(record, "source", config.name, *child.explain(exc, typed=False))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for stream in streams:
            stream.close()


def encode_spec(spec: SourceProcessSpec) -> bytes:
    """What the manager writes to a new source process's standard input (see ``main``)."""
    return child.encode_envelope(spec, "source", spec.source.name)


def main() -> int:
    """Entry point of a source process (started by ``shmpiped.spawning``)."""
    envelope = child.read_envelope()
    try:
        spec = child.load_spec(envelope)
    except BaseException as exc:  # noqa: BLE001 - reported where the manager reads failures
        return child.report_unloadable(envelope, exc)
    return run(spec)
