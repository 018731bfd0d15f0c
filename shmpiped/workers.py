"""The manager's worker processes: spawn them, see them reach their loop, stop them, read what they report.

A ``WorkerHandle`` is the manager's side of one spawn: its process, its
telemetry record and the spawn token that tells this spawn's record from an
earlier one's.  ``WorkerPool`` holds the handles of one pipeline.  Nothing
here blocks on a worker beyond a stop or a start it was asked to wait for;
a worker's exit is seen with a non-blocking ``poll()``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from typing import Callable

from . import spawning, worker_output
from .config import KernelConfig
from .errors import WorkerProcessError
from .kernels.linear import BLAS_THREAD_VARIABLES, blas_threads
from .shm import layout
from .worker import WorkerSpec, encode_spec


class WorkerHandle:
    """The manager's side of one spawned worker."""

    def __init__(self, config: KernelConfig, index: int, record_index: int, cpu_slot: int | None):
        self.config = config
        self.index = index
        self.record_index = record_index
        self.cpu_slot = cpu_slot
        self.spawn_token = 0
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.stopping = False
        self.exit_reported = False
        self.realtime = None            # RealtimeConfig it was started with (its merged settings)
        self.affinity: tuple | None = None  # the CPUs it runs on (set by itself)
        self.wait_strategy = "futex"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.process.poll() if self.process else None


def exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"worker was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker was killed by signal {-code}"
    return f"worker exited with code {code}"


class WorkerPool:
    """The worker processes of one pipeline, by kernel name.

    ``block`` (the pipeline's control block) and ``streams`` (name -> handle,
    to wake parked workers) are set by the manager once it has built them;
    ``event(kind, **fields)`` records lifecycle events.
    """

    def __init__(self, event: Callable[..., None]):
        self.handles: dict[str, WorkerHandle] = {}
        self.block = None
        self.streams: dict = {}
        self._event = event
        self._record_indices: dict[str, int] = {}

    # -- spawning -----------------------------------------------------------------
    def record_index(self, name: str) -> int:
        """The telemetry record of worker ``name``: the same one across its restarts."""
        if name not in self._record_indices:
            used = set(self._record_indices.values())
            free = next((i for i in range(layout.REC_CAPACITY) if i not in used), None)
            if free is None:
                raise WorkerProcessError(f"a pipeline holds at most {layout.REC_CAPACITY} workers")
            self._record_indices[name] = free
        return self._record_indices[name]

    def release_record(self, name: str) -> None:
        self._record_indices.pop(name, None)

    def spawn(self, kernel: KernelConfig, index: int, cpu_slot: int | None, **spec_fields) -> WorkerHandle:
        """Start a worker for ``kernel``; ``spec_fields`` complete its WorkerSpec."""
        handle = WorkerHandle(kernel, index, self.record_index(kernel.name), cpu_slot)
        handle.spawn_token = secrets.randbits(63) or 1
        handle.realtime, handle.affinity = spec_fields.get("realtime"), spec_fields.get("affinity")
        handle.wait_strategy = spec_fields.get("wait_strategy", "futex")
        self.block.reset_record(handle.record_index, kernel.name, handle.spawn_token)
        spec = WorkerSpec(kernel=kernel, block_name=self.block.name, record_index=handle.record_index,
                          spawn_token=handle.spawn_token, cpu_slot=cpu_slot, parent_pid=os.getpid(),
                          **spec_fields)
        threads = str(blas_threads(kernel))
        output, output_env = worker_output.relay.spawn_options()  # pipes to the log relay, or inherited
        process = spawning.start_child("shmpiped.worker:main", kernel.name, stdin=subprocess.PIPE, close_fds=True,
                                       env={**dict.fromkeys(BLAS_THREAD_VARIABLES, threads), **output_env},
                                       **output)
        worker_output.relay.follow(process, kernel.name)
        try:
            process.stdin.write(encode_spec(spec))
            process.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: the manager's poll reports why
        handle.process = process
        self.handles[kernel.name] = handle
        self._event("worker_spawned", kernel=kernel.name, pid=process.pid, cpu_slot=cpu_slot)
        return handle

    # -- telemetry ------------------------------------------------------------------
    def snapshot_of(self, handle: WorkerHandle):
        """The telemetry of this spawn of the worker (None before it wrote any)."""
        if self.block is None:
            return None
        snap = self.block.snapshot(handle.record_index)
        return snap if snap is not None and snap.spawn_token == handle.spawn_token else None

    def note_started(self, handle: WorkerHandle) -> bool:
        """True once the worker has reached its loop (recording the event the first time)."""
        if handle.started_at is not None:
            return True
        snap = self.snapshot_of(handle)
        if snap is None or snap.state not in (layout.WS_RUNNING, layout.WS_PAUSED):
            return False
        handle.started_at = time.time()
        self._event("worker_started", kernel=handle.name, pid=handle.pid, cpu_slot=handle.cpu_slot)
        return True

    def wait_started(self, handles: list[WorkerHandle], timeout: float,
                     on_death: Callable[[WorkerHandle], None]) -> None:
        """Return once every worker reached its loop; ``on_death(handle)`` (which should raise) when one
        exits first; WorkerProcessError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        pending = {h.name: h for h in handles}
        while pending:
            for name, handle in list(pending.items()):
                if self.note_started(handle):
                    del pending[name]
                elif not handle.alive:
                    on_death(handle)
                    raise WorkerProcessError(f"worker {name!r} exited during start")
            if not pending:
                break
            if time.monotonic() >= deadline:
                raise WorkerProcessError(f"timed out waiting for workers to start: {', '.join(sorted(pending))}")
            time.sleep(0.005)

    def failure_record(self, handle: WorkerHandle) -> dict:
        """What a failed worker left: its error line and traceback (from its record), or how it died."""
        code = handle.process.poll()
        snap = self.snapshot_of(handle)
        error_text = snap.error if snap is not None else ""
        if error_text:
            error, _, trace = error_text.partition("\n")
        else:
            error, trace = exit_description(code), None
        return {
            "type": "worker_failed",
            "component_type": "worker",
            "kernel": handle.name,
            "time": time.time(),
            "pid": handle.pid,
            "cpu_slot": handle.cpu_slot,
            "exit_code": code if code is not None and code >= 0 else None,
            "signal": signal.Signals(-code).name if code is not None and code < 0 else None,
            "error": error,
            "traceback": trace,
        }

    # -- stopping -------------------------------------------------------------------
    def wake(self, handles) -> None:
        """Wake workers parked on their inputs so they see a stop or pause at once."""
        for handle in handles:
            for name in handle.config.inputs:
                stream = self.streams.get(name)
                if stream is not None and not stream.closed:
                    stream.wake_all()

    def stop(self, handles: list[WorkerHandle], timeout: float, force: bool,
             on_stopped: Callable[[WorkerHandle], None]) -> None:
        """Ask each worker to stop, wake it, then terminate (``force``: kill) what is left after ``timeout``."""
        for handle in handles:
            handle.stopping = True
            if self.block is not None:
                self.block.request_stop(handle.record_index)
        self.wake(handles)
        deadline = time.monotonic() + timeout
        for handle in handles:
            if handle.process is None:
                continue
            try:
                handle.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                (handle.process.kill if force else handle.process.terminate)()
                try:
                    handle.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    handle.process.kill()
                    handle.process.wait()
            on_stopped(handle)
            self._event("worker_stopped", kernel=handle.name, pid=handle.pid, exitcode=handle.process.returncode)
