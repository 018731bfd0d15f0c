"""The manager's sources, sinks, synthetic inputs and viewers: everything of a pipeline that is not a
kernel's worker.

``EndpointsMixin`` is part of :class:`shmpiped.manager.PipelineManager`, kept
in its own file so that the manager's module stays about the lifecycle.  It
uses the manager's ``config``, ``streams``, ``registry``, ``namespace``,
``worker_start_timeout``, its lock, state, pause event, worker pool, failure
list and event log, and fills ``_sources``, ``_sinks``, ``_synthetic`` and
``_viewers``.
"""

from __future__ import annotations

from .errors import ConfigValidationError, StateTransitionError
from .state import PipelineState


class EndpointsMixin:
    """Sources and sinks (threads, or processes with ``process: true``), synthetic inputs, viewers."""

    # ------------------------------------------------------------------ sources, sinks, synthetic
    def _start_sinks(self) -> None:
        for config in self.config.sinks:
            self._start_sink(config)

    def _start_sources(self) -> None:
        for config in self.config.sources:
            self._start_source(config)

    def _start_sink(self, config) -> None:
        from .endpoints import SinkController

        self._start_endpoint(config, (config.stream, *config.outputs), self.registry.create_sink, SinkController,
                             self._sinks)

    def _start_source(self, config) -> None:
        if getattr(config, "process", False):  # in a process of its own, with its real-time settings
            from .source_process import SourceProcess

            source = SourceProcess(config, self.config, self._pool, self.registry.get_source(config.kind),
                                   self._event)
            self._sources[config.name] = source
            source.start()
            source.wait_started(self.worker_start_timeout)
            return
        from .endpoints import SourceController

        self._start_endpoint(config, config.streams, self.registry.create_source, SourceController, self._sources)

    def _source_processes(self) -> dict:
        """The sources that run in processes of their own, by name (restarted like workers)."""
        return {name: s for name, s in self._sources.items() if getattr(s, "process_based", False)}

    def _restart_source_process(self, name: str, timeout: float, wait: bool) -> None:
        source = self._sources[name]
        source.respawn()
        self._failures = [f for f in self._failures if f.get("kernel") != name]
        self._endpoint_failures_seen.discard(name)
        self._event("source_restarted", kernel=name, pid=source.pid, restarts=source.restarts)
        if wait:
            source.wait_started(timeout)

    def _start_endpoint(self, config, stream_names, create, controller_class, table: dict) -> None:
        """Build a source or sink plugin on its streams and start its controller thread."""
        streams = {name: self.streams[name] for name in stream_names}
        auxiliary = {b.alias: self.streams[b.name] for b in config.auxiliary}
        plugin = create(config, self.config.streams_by_name, auxiliary, config_base_dir=str(self.config.base_path))
        controller = controller_class(config, plugin, streams, self._pause_event)
        table[config.name] = controller
        controller.start()

    def _stop_endpoints(self, names, timeout: float = 5.0) -> None:
        """Stop the sources, then the sinks, of these names (those that run)."""
        for table in (self._sources, self._sinks):
            for name in [n for n in names if n in table]:
                table[name].stop(timeout)
        self._collect_endpoint_failures()
        for table in (self._sources, self._sinks):
            for name in names:
                table.pop(name, None)

    def source_status(self) -> dict:
        return {name: c.snapshot() for name, c in self._sources.items()}

    def sink_status(self) -> dict:
        return {name: c.snapshot() for name, c in self._sinks.items()}

    def start_synthetic_input(self, spec) -> dict:
        from .synthetic import SyntheticInputConfig, SyntheticInputController

        with self._lock:
            if self._state not in (PipelineState.BUILT, PipelineState.RUNNING,
                                   PipelineState.PAUSED, PipelineState.FAILED):
                raise StateTransitionError("synthetic inputs require the pipeline to be built first")
            if not isinstance(spec, SyntheticInputConfig):
                spec = SyntheticInputConfig(**dict(spec))
            if spec.stream_name not in self.streams:
                raise KeyError(f"unknown shared memory stream: {spec.stream_name!r}")
            for source in self.config.sources:
                if spec.stream_name in source.streams:
                    raise ConfigValidationError(
                        f"stream '{spec.stream_name}' is already driven by source '{source.name}'")
            producers = [k.name for k in self.config.kernels if spec.stream_name in k.outputs]
            if producers:
                raise ConfigValidationError(
                    f"stream '{spec.stream_name}' is already written by kernel '{producers[0]}'")
            self.stop_synthetic_input(spec.stream_name)
            controller = SyntheticInputController(spec, self.streams[spec.stream_name])
            controller.start()
            self._synthetic[spec.stream_name] = controller
            self._event("synthetic_input_started", stream=spec.stream_name, pattern=spec.pattern,
                        rate_hz=spec.rate_hz)
            return controller.snapshot()

    def stop_synthetic_input(self, stream_name: str, timeout: float = 2.0) -> None:
        controller = self._synthetic.pop(stream_name, None)
        if controller is not None:
            controller.stop(timeout)
            self._event("synthetic_input_stopped", stream=stream_name)

    def stop_all_synthetic_inputs(self, timeout: float = 2.0) -> None:
        for name in list(self._synthetic):
            self.stop_synthetic_input(name, timeout)

    def synthetic_input_status(self) -> dict:
        return {name: c.snapshot() for name, c in self._synthetic.items()}

    # ------------------------------------------------------------------ viewers
    def open_viewer(self, stream_name: str, **options):
        """Spawn a viewer process on ``stream_name`` (read-only; it never slows the writer).

        ``options`` go to :class:`shmpiped.viewer.ViewerProcess` (``mode``,
        ``png_path``, ``interval``, ...).  ``close_viewers()`` ends them all.
        """
        from .viewer import ViewerProcess

        if self._state not in (PipelineState.BUILT, PipelineState.RUNNING, PipelineState.PAUSED,
                               PipelineState.FAILED):
            raise StateTransitionError("viewers require the pipeline to be built first")
        self.get_stream(stream_name)
        viewer = ViewerProcess(stream_name, self.namespace, **options)
        self._viewers.append(viewer)
        return viewer

    def close_viewers(self, timeout: float = 2.0) -> None:
        while self._viewers:
            self._viewers.pop().close(timeout)
