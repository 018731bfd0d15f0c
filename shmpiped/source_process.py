"""Sources that run in a process of their own (``process: true``): the manager's side.

A source thread shares the manager's interpreter lock with everything the
daemon does (its loop, HTTP threads, sinks), so a 500 Hz camera's pacing
jitters with the daemon's load.  With ``process: true`` the source runs in a
fresh interpreter started like a worker (``spawning.start_child``: the
manager's ``sys.path``, its ``__main__`` re-run when the plugin class lives
there) with the source's effective real-time settings
(``PipelineConfig.realtime_for``: policy, priority, the pipeline's CPUs,
memory lock) applied there; the process itself is ``shmpiped.source_runner``.

``SourceProcess`` offers what the manager, the reconfiguration and
``status()`` use of an ``endpoints.SourceController`` (``start``, ``stop``,
``alive``, ``failure``, ``take_failure``, ``snapshot``), plus ``pid``,
``wait_started``, ``respawn`` (the supervisor's restart) and ``health``.  It
reads what the process reports from its telemetry record in the pipeline's
control block (never a message): its snapshot has the thread source's keys
plus ``pid``, ``process`` (True), ``health``, ``last_metric_age_s``,
``restarts``, ``exitcode``, and the ``realtime`` (requested; effective as
the kernel holds it) and ``proc`` entries of workers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import numpy

from . import health, spawning, worker_output
from . import status as status_parts
from .errors import ConfigValidationError, WorkerProcessError
from .shm import _sync, layout
from .shm.telemetry import RecordSnapshot, monotonic_to_wall
from .source_runner import METRICS_MAX, METRICS_OFFSET, SourceProcessSpec, encode_spec

__all__ = ["SourceProcess"]

#: How long stop() waits after SIGTERM before SIGKILL.
KILL_GRACE_S = 1.0


class SourceProcess:
    """The manager's side of one source running in its own process."""

    component_type = "source"
    process_based = True

    def __init__(self, config, pipeline, pool, source_class, event=None):
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.poll_interval = float(config.poll_interval)
        self.realtime = _realtime_of(pipeline, config)
        # What status.realtime_entry reads of a process: its settings, the CPUs it was given, its wait
        # (None: a source parks on no stream), and the privileges those settings lack here.
        self.affinity = self.realtime.cpus if self.realtime is not None else None
        self.wait_strategy = None
        self.realtime_problems = _privilege_problems(self.realtime)
        self._pipeline = pipeline
        self._pool = pool  # the pipeline's WorkerPool: its control block and its record numbers
        self._source_class = source_class
        self._event = event or (lambda kind, **fields: None)
        self.process: subprocess.Popen | None = None
        self.record_index: int | None = None
        self.spawn_token = 0
        self.started_at: float | None = None
        self.stopping = False
        self.restarts = 0
        self._failure: dict | None = None
        self._failure_taken = False

    # -- lifecycle ---------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        """Spawn the process (``wait_started`` waits for its loop).  Raises ConfigValidationError, naming the
        class, when no other process could load the plugin class."""
        if self.process is not None:
            raise RuntimeError(f"source {self.name!r} was already started")
        why = spawning.why_unloadable(self._source_class)
        if why:
            cls = self._source_class
            raise ConfigValidationError(self._pipeline.locate(
                f"source {self.name!r} has process: true, but its class {cls.__qualname__} (module "
                f"{cls.__module__}) cannot be loaded in another process: {why}", self.config))
        self._spawn()

    def _spawn(self) -> None:
        block = self._pool.block
        self.record_index = self._pool.record_index(self.name)
        self.spawn_token = secrets.randbits(63) or 1
        block.reset_record(self.record_index, self.name, self.spawn_token)
        spec = SourceProcessSpec(
            source=self.config, source_class=self._source_class,
            shared_memory=dict(self._pipeline.streams_by_name), namespace=self._pipeline.namespace
            or layout.DEFAULT_NAMESPACE, block_name=block.name, record_index=self.record_index,
            spawn_token=self.spawn_token, config_base_dir=str(self._pipeline.base_path), parent_pid=os.getpid(),
            realtime=self.realtime)
        output, output_env = worker_output.relay.spawn_options()
        process = spawning.start_child("shmpiped.source_runner:main", self.name, stdin=subprocess.PIPE,
                                       close_fds=True, env=output_env, **output)
        worker_output.relay.follow(process, self.name)
        try:
            process.stdin.write(encode_spec(spec))
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: failure says why
        self.process = process
        self.stopping = False
        self.started_at = time.time()
        self._failure, self._failure_taken = None, False
        self._event("source_spawned", kernel=self.name, pid=process.pid)

    def wait_started(self, timeout: float) -> None:
        """Return once the process runs its loop; WorkerProcessError (with its error) if it fails first."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self._snapshot()
            if snap is not None and snap.state in (layout.WS_RUNNING, layout.WS_PAUSED, layout.WS_STOPPED):
                self._event("source_started", kernel=self.name, pid=self.pid)
                return
            if not self.alive:
                failure = self.failure
                why = failure["error"] if failure else f"its process exited with status {self.exitcode}"
                raise WorkerProcessError(f"source {self.name!r} failed: {why}")
            if time.monotonic() >= deadline:
                raise WorkerProcessError(f"timed out waiting for source {self.name!r} to start ({timeout:g} s)")
            time.sleep(0.005)

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Ask the process to stop (its stop word), then SIGTERM and SIGKILL what is left; True once ended."""
        process = self.process
        if process is None:
            return True
        self.stopping = True
        if process.poll() is None and self._pool.block is not None:
            self._pool.block.request_stop(self.record_index)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._event("source_stopped", kernel=self.name, pid=process.pid, exitcode=process.returncode)
        return process.poll() is not None

    def respawn(self, timeout: float = 1.0) -> None:
        """A new process for this source (the old one, if still there, is stopped first)."""
        self.stop(timeout)
        self.restarts += 1
        self._spawn()

    # -- failure -----------------------------------------------------------------
    @property
    def failure(self) -> dict | None:
        """The failure record once the process ended badly (not by our own stop), else None."""
        if self._failure is None and self.process is not None:
            code = self.process.poll()
            if code is not None and code != 0 and not (self.stopping and code < 0):
                self._failure = self._failure_record(code)
        return self._failure

    def take_failure(self) -> dict | None:
        failure = self.failure
        if failure is None or self._failure_taken:
            return None
        self._failure_taken = True
        return dict(failure)

    def _failure_record(self, code: int) -> dict:
        snap = self._snapshot()
        text = snap.error if snap is not None else ""
        if text:
            error, _, trace = text.partition("\n")
        else:
            error, trace = _exit_description(code), None
        return {
            "type": "source_failed",
            "kernel": self.name,
            "component_type": "source",
            "kind": self.kind,
            "stream": self.config.stream,
            "pid": self.pid,
            "exit_code": code if code >= 0 else None,
            "signal": signal.Signals(-code).name if code < 0 and -code in _SIGNALS else None,
            "error": error,
            "traceback": trace or None,
            "time": time.time(),
        }

    # -- status ------------------------------------------------------------------
    def _snapshot(self) -> RecordSnapshot | None:
        """A consistent copy of this spawn's record (None before it wrote one, or once it is gone)."""
        block = self._pool.block
        if block is None or self.record_index is None:
            return None
        buffer = numpy.empty(layout.REC_SIZE, dtype=numpy.uint8)
        if not _sync.copy_record(block.record_address(self.record_index), layout.REC_SIZE, buffer):
            return None
        snap = _SourceRecordSnapshot(buffer)
        return snap if snap.spawn_token == self.spawn_token else None

    def health(self, snap=None) -> str:
        block = self._pool.block
        paused = block is not None and block.paused
        idle_s = health.idle_and_age(snap, time.monotonic_ns())[0] if snap is not None else None
        return health.derive_health(failed=self.failure is not None, alive=self.alive, paused=paused,
                                    snapshot=snap, running=not paused, idle_s=idle_s,
                                    read_timeout=self.poll_interval)

    def snapshot(self) -> dict:
        """The thread source's keys, plus pid, process, health, restarts, exitcode, realtime and proc."""
        snap = self._snapshot()
        now_ns = time.monotonic_ns()
        alive = self.alive
        frames = snap.frames if snap is not None else 0
        effective = throughput = 0.0
        last_write_time = last_write_ms = None
        age = None
        if snap is not None:
            started = snap.field(layout.REC_STARTED_NS)
            last_frame = snap.field(layout.REC_LAST_FRAME_NS)
            end = now_ns if alive or not last_frame else last_frame
            if started and frames:
                effective = frames / max((end - started) / 1e9, 1e-12)
            throughput = health.rolling_throughput(snap.completion_window_ns())
            if last_frame:
                last_write_time = monotonic_to_wall(last_frame)
                last_write_ms = snap.field(layout.REC_LAST_EXEC_NS) / 1e6
            age = health.idle_and_age(snap, now_ns)[1]
        failure = self.failure
        entry = {
            "name": self.name,
            "kind": self.kind,
            "stream": self.config.stream,
            "streams": list(self.config.streams),
            "coordinated_generation_count": frames,
            "poll_interval": self.poll_interval,
            "alive": alive,
            "frames_written": frames,
            "effective_rate_hz": effective,
            "throughput_hz": throughput,
            "started_at": self.started_at,
            "last_write_time": last_write_time,
            "last_write_duration_ms": last_write_ms,
            "last_error": failure["error"] if failure else None,
            "plugin_metrics": snap.plugin_metrics() if snap is not None else {},
            "pid": self.pid,
            "process": True,
            "health": self.health(snap),
            "last_metric_age_s": age if alive else None,
            "restarts": self.restarts,
            "exitcode": self.exitcode,
        }
        entry["realtime"], entry["proc"] = status_parts.realtime_entry(self, alive, self.realtime_problems)
        return entry


_SIGNALS = {int(s) for s in signal.Signals}


class _SourceRecordSnapshot(RecordSnapshot):
    """A source process's record: a worker's, plus the plugin_metrics JSON it stores."""

    def __init__(self, buffer: numpy.ndarray):
        super().__init__(buffer)
        self.raw = buffer

    def plugin_metrics(self) -> dict:
        """plugin_metrics as the process last stored them ({} before it stored any)."""
        length = int(self.raw[METRICS_OFFSET: METRICS_OFFSET + 8].view("<u8")[0])
        if not 0 < length <= METRICS_MAX:
            return {}
        try:
            value = json.loads(self.raw[METRICS_OFFSET + 8: METRICS_OFFSET + 8 + length].tobytes())
        except ValueError:
            return {"error": "plugin_metrics could not be read back"}
        return value if isinstance(value, dict) else {"value": value}


def _exit_description(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in _SIGNALS else str(-code)
        return f"source process was killed by signal {name}"
    return f"source process exited with code {code}"


def _realtime_of(pipeline, config):
    """The source's effective real-time settings (None for a pipeline model without them)."""
    realtime_for = getattr(pipeline, "realtime_for", None)
    return realtime_for(config) if realtime_for is not None else None


def _privilege_problems(settings) -> list[str]:
    """What this process lacks to apply ``settings`` (none for the defaults)."""
    if settings is None or settings.is_default:
        return []
    from .realtime import privilege_problems

    return privilege_problems(settings)
