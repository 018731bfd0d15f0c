"""Changing a running pipeline: ``reconfigure`` to a new configuration, ``add_kernel``, and a kernel's
configuration for its next start.

``ChangesMixin`` is part of :class:`shmpiped.manager.PipelineManager`, kept in
its own file so that the manager's module stays about the lifecycle; the
steps of a reconfiguration live in :mod:`shmpiped.reconfigure`.  Every change
validates first and, when a step fails, leaves the running pipeline as it was.
"""

from __future__ import annotations

import time

from . import realtime
from .config import KernelConfig, PipelineConfig, SharedMemoryConfig
from .errors import ConfigValidationError, StateTransitionError, WorkerProcessError
from .state import PipelineState
from .streams import default_notify, provision_stream, write_initial_value


class ChangesMixin:
    """reconfigure / begin_reconfigure, replace_kernel_config, add_kernel."""

    # ------------------------------------------------------------------ reconfiguration
    def begin_reconfigure(self, config, timeout: float | None = None):
        """Start changing the running pipeline to ``config`` (same namespace); returns the
        ``shmpiped.reconfigure.Reconfiguration`` to ``poll()`` and then ``commit()`` or ``rollback()``.

        Only what differs stops and starts: unchanged workers, sources, sinks and
        streams (with their contents) keep running.  Raises, with the old
        pipeline running again, if a step fails.
        """
        from .reconfigure import Reconfiguration

        if not isinstance(config, PipelineConfig):
            config = PipelineConfig.from_dict(config, base_path=self.config.base_path)
        with self._lock:
            self.poll_events()
            self._require("reconfigure", PipelineState.RUNNING, PipelineState.PAUSED, PipelineState.FAILED)
            from .validation import raise_for_invalid

            raise_for_invalid(config, self.registry)
            self.realtime_problems = realtime.check_pipeline(config)
            return Reconfiguration(self, config, timeout).begin()

    def reconfigure(self, config, timeout: float | None = None) -> dict:
        """Change the running pipeline to ``config`` and wait until its new workers run; on any failure
        the old pipeline runs again and WorkerProcessError (or the build's error) is raised."""
        change = self.begin_reconfigure(config, timeout)
        while (outcome := change.poll()) == "pending":
            time.sleep(0.005)
        with self._lock:
            if outcome == "ready":
                change.commit()
                return {"reconfigured": True, "plan": change.plan.describe()}
            change.rollback()
        raise WorkerProcessError(change.error)

    def _after_reconfiguration(self, reason: str) -> None:
        self._event("reconfigured", reason=reason)
        self._leave_failed(reason)

    def replace_kernel_config(self, kernel: KernelConfig) -> None:
        """Use ``kernel`` (same name) the next time that worker is (re)started."""
        with self._lock:
            if kernel.name not in self.kernel_configs:
                raise KeyError(kernel.name)
            self.kernel_configs[kernel.name] = kernel
            self.config = self.config.replace(
                kernels=tuple(kernel if k.name == kernel.name else k for k in self.config.kernels))

    def add_kernel(self, kernel, *, shared_memory=(), timeout: float | None = None) -> dict:
        with self._lock:
            self.poll_events()
            if self._state not in (PipelineState.RUNNING, PipelineState.PAUSED):
                raise StateTransitionError(
                    f"add_kernel requires a RUNNING or PAUSED pipeline; current state is '{self._state.value}'")
            candidate = self._candidate_with(kernel, shared_memory)
            kernel = candidate.kernels[-1]
            new_specs = candidate.shared_memory[len(self.config.shared_memory):]
            from .validation import raise_for_invalid

            raise_for_invalid(candidate, self.registry)
            self._check_loadable([kernel])
            previous = self.config
            try:
                notify = default_notify(candidate)
                for spec in new_specs:
                    stream, was_created = provision_stream(spec, candidate, self.slots, notify[spec.name],
                                                           shared=self._block.shared)
                    self.streams[spec.name] = stream
                    if was_created:
                        self.owned_streams.add(spec.name)
                    if spec.initial is not None:
                        write_initial_value(stream, spec, candidate)
                self.config = candidate
                self.kernel_configs[kernel.name] = kernel
                handle = self._spawn(kernel, len(candidate.kernels) - 1)
                self._wait_started([handle], timeout if timeout is not None else self.worker_start_timeout)
            except BaseException:
                handle = self.workers.pop(kernel.name, None)
                if handle is not None:
                    self._stop_workers([handle], timeout=1.0, force=True)
                self._failures = [f for f in self._failures if f.get("kernel") != kernel.name]
                self.kernel_configs.pop(kernel.name, None)
                self._pool.release_record(kernel.name)
                for spec in new_specs:
                    stream = self.streams.pop(spec.name, None)
                    if stream is not None:
                        stream.close()
                        if spec.name in self.owned_streams:
                            stream.unlink()
                            self.owned_streams.discard(spec.name)
                self.config = previous
                raise
            self._event("kernel_added", kernel=kernel.name)
            return self.status()

    def _candidate_with(self, kernel, shared_memory) -> PipelineConfig:
        names = {k.name for k in self.config.kernels} | {s.name for s in self.config.sources} | {
            s.name for s in self.config.sinks}
        kernel_dict = kernel.to_dict() if isinstance(kernel, KernelConfig) else dict(kernel)
        if kernel_dict.get("name") in names:
            raise ConfigValidationError(f"pipeline node '{kernel_dict.get('name')}' already exists")
        stream_dicts = [s.to_dict() if isinstance(s, SharedMemoryConfig) else dict(s) for s in shared_memory]
        for item in stream_dicts:
            if item.get("name") in self.streams:
                raise ConfigValidationError(f"shared memory '{item.get('name')}' already exists")
        document = self.config.to_dict()
        document["shared_memory"] = list(document["shared_memory"]) + stream_dicts
        document["kernels"] = list(document.get("kernels", [])) + [kernel_dict]
        candidate = PipelineConfig.from_dict(document, base_path=self.config.base_path)
        return candidate.replace(source_path=self.config.source_path)
