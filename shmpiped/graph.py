"""The pipeline as a graph of nodes and streams (spec section 6.3).

Owns who produces and who consumes each stream, the stream roles derived from
that (source, sink, intermediate, orphan), the edge list, the
multiple-producer check (the single-writer guarantee the stream rings rely
on), and the JSON (``to_dict``) and text (``describe``) views of all of it.

Pure computation over a ``PipelineConfig``: no I/O, no registry.
``validate_pipeline_config`` (the whole-pipeline check, which asks the
registry) lives in ``validation`` and is importable from here too, as in
shmpipeline's ``graph``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .config import PipelineConfig
from .errors import ConfigValidationError

__all__ = ["GraphEdge", "PipelineGraph", "validate_pipeline_config"]  # noqa: F822 - see __getattr__


def __getattr__(name: str):
    # validation imports this module, so its function is fetched on first use.
    if name == "validate_pipeline_config":
        from .validation import validate_pipeline_config

        return validate_pipeline_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class GraphEdge:
    """One directed edge: ``source`` -> ``target`` through ``stream``, in ``role``."""

    source: str
    target: str
    role: str
    stream: str


class PipelineGraph:
    """Producers, consumers, roles and edges of a pipeline's streams."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self._producers: dict[str, dict[str, str]] = {}  # stream -> {node name: node type}
        self._consumers: dict[str, dict[str, str]] = {}
        for source in config.sources:
            self._link(self._producers, source.streams, source.name, "source")
            self._link(self._consumers, source.auxiliary_names, source.name, "source")
        for kernel in config.kernels:
            self._link(self._producers, kernel.outputs, kernel.name, "kernel")
            self._link(self._consumers, kernel.all_inputs, kernel.name, "kernel")
        for sink in config.sinks:
            self._link(self._producers, sink.outputs, sink.name, "sink")
            self._link(self._consumers, (sink.stream, *sink.auxiliary_names), sink.name, "sink")
        self._kernels = {kernel.name: kernel for kernel in config.kernels}
        self._streams = tuple(spec.name for spec in config.shared_memory)

        sources = {name for source in config.sources for name in source.streams}
        sources.update(s for s in self._streams
                       if not self._kernel_producers(s) and self.consumers(s))
        sinks = {sink.stream for sink in config.sinks}
        sinks.update(s for s in self._streams
                     if not self.consumers(s) and self._kernel_producers(s))
        self._source_streams = tuple(sorted(sources))
        self._sink_streams = tuple(sorted(sinks))
        self._orphans = tuple(sorted(
            s for s in self._streams if not self.producers(s) and not self.consumers(s)
        ))

    @classmethod
    def from_config(cls, config: PipelineConfig) -> PipelineGraph:
        """The graph of ``config`` (shmpipeline's spelling of the constructor)."""
        return cls(config)

    @staticmethod
    def _link(table: dict, streams: tuple[str, ...], node: str, node_type: str) -> None:
        for stream in streams:
            table.setdefault(stream, {})[node] = node_type

    def _kernel_producers(self, stream: str) -> tuple[str, ...]:
        return tuple(sorted(
            name for name, node_type in self._producers.get(stream, {}).items()
            if node_type == "kernel"
        ))

    def _writers(self, streams, besides: str) -> tuple[str, ...]:
        """Every node that writes one of ``streams`` (sources as ``name (source)``), ``besides`` left out."""
        found = {f"{name} ({node_type})" if node_type != "kernel" else name
                 for stream in streams for name, node_type in self._producers.get(stream, {}).items()
                 if name != besides}
        return tuple(sorted(found))

    def _kernel(self, name: str):
        try:
            return self._kernels[name]
        except KeyError:
            raise KeyError(f"unknown kernel: {name!r}") from None

    # -- per stream ------------------------------------------------------------------

    def producers(self, stream: str) -> tuple[str, ...]:
        """Sorted names of the sources, kernels and sinks that write ``stream``."""
        return tuple(sorted(self._producers.get(stream, {})))

    def consumers(self, stream: str) -> tuple[str, ...]:
        """Sorted names of the kernels, sources and sinks that read ``stream``."""
        return tuple(sorted(self._consumers.get(stream, {})))

    def source_streams(self) -> tuple[str, ...]:
        """Source outputs, plus read streams that no kernel writes."""
        return self._source_streams

    def sink_streams(self) -> tuple[str, ...]:
        """Sink inputs, plus kernel-written streams that nothing reads."""
        return self._sink_streams

    def orphaned_streams(self) -> tuple[str, ...]:
        """Streams that nothing writes and nothing reads."""
        return self._orphans

    def stream_role(self, stream: str) -> str:
        """``orphan``, ``source+sink``, ``source``, ``sink`` or ``intermediate``."""
        if stream in self._orphans:
            return "orphan"
        is_source = stream in self._source_streams
        is_sink = stream in self._sink_streams
        if is_source and is_sink:
            return "source+sink"
        if is_source:
            return "source"
        if is_sink:
            return "sink"
        return "intermediate"

    # -- per kernel ------------------------------------------------------------------

    def upstream_kernels(self, kernel: str) -> tuple[str, ...]:
        """Kernels that write any input (trigger or auxiliary) of ``kernel``."""
        names = {producer for stream in self._kernel(kernel).all_inputs
                 for producer in self._kernel_producers(stream)}
        names.discard(kernel)
        return tuple(sorted(names))

    def downstream_kernels(self, kernel: str) -> tuple[str, ...]:
        """Kernels that read (trigger or auxiliary) any output of ``kernel``."""
        names: set[str] = set()
        for stream in self._kernel(kernel).all_outputs:
            names.update(self._kernel_consumers(stream))
        names.discard(kernel)
        return tuple(sorted(names))

    def _kernel_consumers(self, stream: str) -> tuple[str, ...]:
        return tuple(sorted(
            name for name, node_type in self._consumers.get(stream, {}).items()
            if node_type == "kernel"
        ))

    # -- edges and checks ------------------------------------------------------------

    @property
    def edges(self) -> tuple[GraphEdge, ...]:
        """Every edge, sources first, then kernels, then sinks, each in config order."""
        edges: list[GraphEdge] = []
        add = lambda *fields: edges.append(GraphEdge(*fields))  # source, target, role, stream
        for node in self.config.sources:
            for binding in node.auxiliary:
                add(binding.name, node.name, f"auxiliary:{binding.alias}", binding.name)
            for index, stream in enumerate(node.streams):
                add(node.name, stream, "source" if index == 0 else f"source:{index}", stream)
        for kernel in self.config.kernels:
            for index, stream in enumerate(kernel.inputs):
                add(stream, kernel.name, "input" if index == 0 else f"input:{index}", stream)
            for binding in kernel.auxiliary:
                add(binding.name, kernel.name, f"auxiliary:{binding.alias}", binding.name)
            for stream in kernel.outputs:
                add(kernel.name, stream, "output", stream)
        for sink in self.config.sinks:
            for binding in sink.auxiliary:
                add(binding.name, sink.name, f"auxiliary:{binding.alias}", binding.name)
            add(sink.stream, sink.name, "sink", sink.stream)
            for stream in sink.outputs:
                add(sink.name, stream, "sink_output", stream)
        return tuple(edges)

    def validation_errors(self) -> list[str]:
        """One error per stream with more than one producer, in stream-name order."""
        errors = []
        for stream in sorted(self._producers):
            producers = self._producers[stream]
            if len(producers) < 2:
                continue
            types = set(producers.values())
            what = f"producer {types.pop()}s" if len(types) == 1 else "producers"
            message = (f"shared memory {stream!r} has multiple {what}: "
                       + ", ".join(sorted(producers)))
            entry = self.config.streams_by_name.get(stream)
            errors.append(self.config.locate(message, entry))
        return errors

    def raise_for_errors(self) -> None:
        """Raise ``ConfigValidationError`` (all errors attached) if there are any."""
        errors = self.validation_errors()
        if errors:
            raise ConfigValidationError(errors[0], errors=errors)

    # -- views -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (the ``graph`` of a runtime snapshot)."""
        config = self.config
        return {
            "shared_memory": [
                {
                    "name": spec.name,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype.name,
                    "storage": spec.storage,
                    "gpu_device": spec.gpu_device,
                    "producers": self.producers(spec.name),
                    "consumers": self.consumers(spec.name),
                    "role": self.stream_role(spec.name),
                }
                for spec in config.shared_memory
            ],
            "sources": [
                {
                    "name": source.name,
                    "kind": source.kind,
                    "stream": source.stream,
                    "streams": list(source.streams),
                    "auxiliary": source.auxiliary_by_alias,
                    "parameters": copy.deepcopy(source.parameters),
                    "downstream_kernels": self._kernel_consumers(source.stream),
                }
                for source in config.sources
            ],
            "kernels": [
                {
                    "name": kernel.name,
                    "kind": kernel.kind,
                    "input": kernel.input,
                    "inputs": list(kernel.inputs),
                    "trigger_policy": kernel.trigger_policy,
                    "output": kernel.output,
                    "outputs": list(kernel.outputs),
                    "auxiliary": kernel.auxiliary_by_alias,
                    "upstream_kernels": self.upstream_kernels(kernel.name),
                    "downstream_kernels": self.downstream_kernels(kernel.name),
                }
                for kernel in config.kernels
            ],
            "sinks": [
                {
                    "name": sink.name,
                    "kind": sink.kind,
                    "stream": sink.stream,
                    "outputs": list(sink.outputs),
                    "auxiliary": sink.auxiliary_by_alias,
                    "parameters": copy.deepcopy(sink.parameters),
                    "upstream_kernels": self._kernel_producers(sink.stream),
                }
                for sink in config.sinks
            ],
            "edges": [asdict(edge) for edge in self.edges],
            "source_streams": self.source_streams(),
            "sink_streams": self.sink_streams(),
            "orphaned_streams": self.orphaned_streams(),
        }

    def describe(self) -> str:
        """A human-readable summary, one line per stream and node."""
        config = self.config
        lines = ["Pipeline Graph"]
        lines += _section("Shared Memory", [
            f"{spec.name} [{spec.storage} {spec.shape} {spec.dtype}]"
            f" role={self.stream_role(spec.name)}"
            f" producers={_listed(self.producers(spec.name), 'external')}"
            f" consumers={_listed(self.consumers(spec.name), 'none')}"
            for spec in config.shared_memory
        ])
        lines += _section("Sources", [
            f"{source.name} ({source.kind}) stream={', '.join(source.streams)}"
            f" auxiliary={_bindings(source.auxiliary)}"
            f" downstream={_listed(self._kernel_consumers(source.stream), 'external')}"
            for source in config.sources
        ])
        lines += _section("Kernels", [
            f"{kernel.name} ({kernel.kind}) inputs={', '.join(kernel.inputs)}"
            f" trigger_policy={kernel.trigger_policy} output={', '.join(kernel.outputs)}"
            f" auxiliary={_bindings(kernel.auxiliary)}"
            f" upstream={_listed(self._writers(kernel.all_inputs, kernel.name), 'external')}"
            f" downstream={_listed(self.downstream_kernels(kernel.name), 'terminal')}"
            for kernel in config.kernels
        ])
        lines += _section("Sinks", [
            f"{sink.name} ({sink.kind}) stream={sink.stream}"
            + (f" outputs={', '.join(sink.outputs)}" if sink.outputs else "")
            + f" auxiliary={_bindings(sink.auxiliary)}"
            f" upstream={_listed(self._writers((sink.stream,), sink.name), 'external')}"
            for sink in config.sinks
        ])
        if self._orphans:
            lines += _section("Orphaned Shared Memory", self._orphans)
        errors = self.validation_errors()
        if errors:
            lines += _section("Validation Errors", errors)
        return "\n".join(lines)


def _section(title: str, rows: Iterable[str]) -> list[str]:
    """A blank line, ``title:``, then ``- row`` per row (``- none`` for no rows)."""
    return ["", f"{title}:"] + ([f"- {row}" for row in rows] or ["- none"])


def _listed(names: tuple[str, ...], empty: str) -> str:
    return ", ".join(names) if names else empty


def _bindings(bindings) -> str:
    return ", ".join(f"{b.alias}={b.name}" for b in bindings) if bindings else "none"
