"""The pipeline configuration model: frozen, picklable dataclasses (shmpipeline's ``config``).

Owns what a loaded pipeline *is*: its streams (``SharedMemoryConfig``), kernels,
sources and sinks, the ``PipelineConfig`` that groups them, their derived
views (``all_inputs``, ``output_streams``, ``shared_memory_by_name`` ...), the
round trip back to a plain mapping (``to_dict``) and ``locate``, which appends
``(in <file>, line N)`` to a message about an entry.  The keys of the file
format (``TOP_LEVEL_KEYS`` ...) are ``config_keys``', re-exported here; the
real-time block's model is ``config_realtime``'s (``RealtimeConfig``,
``effective_realtime``), re-exported too.

Reading and validating YAML or a mapping is ``config_loading``'s job:
``from_yaml`` and every ``from_dict`` delegate to it, so a file is read and
parsed in that one place.  The dataclasses keep shmpipeline 1.3.0's names and
accept its constructor keywords (``KernelConfig(input=..., output=...)``,
``SourceConfig(stream=...)``).  This module touches no shared memory and knows
neither kernel kinds (the registry checks those) nor producers (``graph``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config_realtime import RealtimeConfig, checked_override, effective_realtime
from .errors import ConfigValidationError

__all__ = [
    "AuxiliaryBinding",
    "InitialValueConfig",
    "KernelConfig",
    "PipelineConfig",
    "RealtimeConfig",
    "SharedMemoryConfig",
    "SinkConfig",
    "SourceConfig",
    "SynchronizationConfig",
    "effective_realtime",
    "gpu_device_index",
    "load_yaml",
]

from .config_keys import (  # noqa: E402,F401 - the file format's keys, re-exported
    INITIAL_KEYS,
    KERNEL_KEYS,
    SINK_KEYS,
    SOURCE_KEYS,
    STREAM_KEYS,
    STREAM_MODES,
    SYNCHRONIZATION_KEYS,
    SYNCHRONIZATION_MODES,
    TOP_LEVEL_KEYS,
    TRIGGER_POLICIES,
)


def _loading():
    """The loading module (imported on first use: it imports this one)."""
    from . import config_loading

    return config_loading


def load_yaml(path: str | os.PathLike):
    """Read a YAML file: ``(data, duplicate keys)`` (see ``config_loading.load_yaml``)."""
    return _loading().load_yaml(path)


_GPU_DEVICE = re.compile(r"cuda(?::([0-9]+))?")


def gpu_device_index(text: str) -> int:
    """The device index of a ``gpu_device``: ``cuda`` -> 0, ``cuda:N`` -> N.

    Case and surrounding white space are ignored; anything else raises ``ValueError``.
    """
    match = _GPU_DEVICE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"gpu_device must be 'cuda' or 'cuda:<index>', got {text!r}")
    return int(match.group(1) or 0)


def _where(source_path: Any, line: int | None) -> str:
    """The location suffix appended to an error message."""
    if source_path and line:
        return f" (in {source_path}, line {line})"
    if source_path:
        return f" (in {source_path})"
    if line:
        return f" (line {line})"
    return ""


# --------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class InitialValueConfig(Mapping):
    """The value a stream is published with at build (``shared_memory[].initial``).

    It reads like the mapping of the YAML entry too (``initial["pattern"]``,
    ``initial.get("value")``), as shmpipeline's plain dict does.
    """

    pattern: str
    value: float | None = None
    seed: int = 0
    mean: float = 0.0
    std: float = 1.0
    values: Any = None
    scale: float = 1.0

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"pattern": self.pattern}
        if self.pattern == "constant":
            out["value"] = self.value
        elif self.pattern == "normal":
            out.update(seed=self.seed, mean=self.mean, std=self.std)
        elif self.pattern == "values":
            values = self.values
            out["values"] = values.tolist() if hasattr(values, "tolist") else copy.deepcopy(values)
        elif self.pattern == "identity":
            out["scale"] = self.scale
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class SharedMemoryConfig:
    """One stream: a named, typed (``numpy.dtype``), fixed-shape array in shared memory."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    storage: str = "cpu"
    gpu_device: str | None = None
    cpu_mirror: bool | None = None
    notify: bool | None = None
    mode: str = "create_or_attach"
    initial: InitialValueConfig | None = None
    namespace: str | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        shape = (self.shape,) if isinstance(self.shape, numbers.Integral) else self.shape
        object.__setattr__(self, "shape", tuple(int(dim) for dim in shape))
        if self.dtype is None:
            raise ConfigValidationError(f"shared memory {self.name!r} must declare a dtype")
        try:
            dtype = np.dtype(self.dtype)
        except Exception as exc:  # noqa: BLE001 - numpy raises several kinds
            raise ConfigValidationError(
                f"invalid dtype for shared memory {self.name!r}: {self.dtype!r}"
            ) from exc
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "storage", str(self.storage).lower())
        if isinstance(self.initial, Mapping) and not isinstance(self.initial, InitialValueConfig):
            initial = _loading().initial_from_mapping(self.name, self.initial, self.shape, dtype.name)
            object.__setattr__(self, "initial", initial)

    @classmethod
    def from_dict(cls, raw: Mapping) -> SharedMemoryConfig:
        """One ``shared_memory`` entry of the YAML format, validated."""
        return _loading().entry_from_mapping("shared_memory", raw)

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def resource_name(self) -> str:
        """The name this stream's segment has in ``/dev/shm`` (``shmpiped.<namespace>.<name>``).

        Graph wiring, ``get_stream`` and messages use ``name``; only the
        operating system sees this one.
        """
        from .shm.layout import stream_segment_name  # naming only: no shared memory is touched

        return stream_segment_name(self.namespace, self.name)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "storage": self.storage,
        }
        for key in ("gpu_device", "cpu_mirror", "notify"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["mode"] = self.mode
        if self.initial is not None:
            out["initial"] = self.initial.to_dict()
        return out


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class AuxiliaryBinding:
    """An auxiliary input: the stream ``name`` seen by the node as ``alias``."""

    alias: str
    name: str


@dataclass(frozen=True)
class SynchronizationConfig:
    """How a multi-input kernel lines up its trigger inputs (spec 3.3)."""

    mode: str = "count"
    on_skew: str = "drop_older"
    max_skew_generations: int = 16
    max_wait_s: float | None = None

    @classmethod
    def from_dict(cls, raw: Mapping, *, context: str = "kernel") -> SynchronizationConfig:
        """A ``synchronization`` mapping, validated; messages name ``context`` (the kernel)."""
        return _loading().synchronization_from_mapping(raw, context)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "mode": self.mode,
            "on_skew": self.on_skew,
            "max_skew_generations": self.max_skew_generations,
        }
        if self.max_wait_s is not None:
            out["max_wait_s"] = self.max_wait_s
        return out


def _bindings(auxiliary: Any) -> tuple[AuxiliaryBinding, ...]:
    """Normalise a directly constructed ``auxiliary`` to a tuple of bindings."""
    if not auxiliary:
        return ()
    if isinstance(auxiliary, Mapping):
        return tuple(AuxiliaryBinding(alias, name) for alias, name in auxiliary.items())
    return tuple(
        item if isinstance(item, AuxiliaryBinding) else AuxiliaryBinding(item, item)
        for item in auxiliary
    )


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def _streams(node: str, plural: Any, single: Any, key: str) -> tuple[str, ...]:
    """The stream names of a directly constructed node: ``plural`` if given, else ``single``."""
    names = _names(plural) or _names(single)
    if not names:
        raise ConfigValidationError(f"{node} must declare {key!r} or {key + 's'!r}")
    return names


def _auxiliary_to_yaml(bindings: tuple[AuxiliaryBinding, ...]) -> list | dict:
    if all(b.alias == b.name for b in bindings):
        return [b.name for b in bindings]
    return {b.alias: b.name for b in bindings}


def _realtime_to_yaml(override: dict) -> dict:
    return {"realtime": dict(override)} if override else {}


class _AuxiliaryMixin:
    """Auxiliary-binding accessors shared by kernels, sources and sinks."""

    auxiliary: tuple[AuxiliaryBinding, ...]

    @property
    def auxiliary_names(self) -> tuple[str, ...]:
        return tuple(binding.name for binding in self.auxiliary)

    @property
    def auxiliary_aliases(self) -> tuple[str, ...]:
        return tuple(binding.alias for binding in self.auxiliary)

    @property
    def auxiliary_by_alias(self) -> dict[str, str]:
        return {binding.alias: binding.name for binding in self.auxiliary}


@dataclass(frozen=True)
class KernelConfig(_AuxiliaryMixin):
    """A kernel: one worker process computing outputs from trigger inputs.

    ``input``/``output`` are the first of ``inputs``/``outputs``; either form
    may be given to the constructor (the plural wins when both are).
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    auxiliary: tuple[AuxiliaryBinding, ...] = ()
    operation: str | None = None
    parameters: dict = field(default_factory=dict)
    read_timeout: float = 1.0
    pause_sleep: float = 0.01
    poll_interval: float = 1e-5
    trigger_policy: str = None  # type: ignore[assignment]  # None -> default of spec 1.2
    synchronization: SynchronizationConfig = field(default_factory=SynchronizationConfig)
    propagate_frame_id: bool = False
    line: int | None = field(default=None, compare=False)
    input: str | None = field(default=None, repr=False)
    output: str | None = field(default=None, repr=False)
    cpu: int | None = None              # pin this worker to that CPU (issue 13)
    realtime: dict = field(default_factory=dict)  # override of the pipeline's realtime settings

    def __post_init__(self) -> None:
        inputs = _streams(f"kernel {self.name!r}", self.inputs, self.input, "input")
        outputs = _streams(f"kernel {self.name!r}", self.outputs, self.output, "output")
        set_ = object.__setattr__
        set_(self, "inputs", inputs)
        set_(self, "outputs", outputs)
        set_(self, "input", inputs[0])
        set_(self, "output", outputs[0])
        set_(self, "auxiliary", _bindings(self.auxiliary))
        set_(self, "parameters", dict(self.parameters or {}))
        if self.trigger_policy is None:
            set_(self, "trigger_policy", "all_new" if len(inputs) > 1 else "any_new")
        if self.synchronization is None:
            set_(self, "synchronization", SynchronizationConfig())
        set_(self, "realtime", checked_override(f"kernel {self.name!r}", self.realtime))

    @classmethod
    def from_dict(cls, raw: Mapping) -> KernelConfig:
        """One ``kernels`` entry of the YAML format, validated."""
        return _loading().entry_from_mapping("kernels", raw)

    @property
    def trigger_inputs(self) -> tuple[str, ...]:
        return self.inputs

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return self.outputs

    @property
    def all_inputs(self) -> tuple[str, ...]:
        return self.inputs + self.auxiliary_names

    @property
    def requires_matching_frame_id(self) -> bool:
        return self.synchronization.mode == "matching_frame_id"

    @property
    def tracks_frame_id(self) -> bool:
        return bool(self.propagate_frame_id) or self.requires_matching_frame_id

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
        }
        if self.auxiliary:
            out["auxiliary"] = _auxiliary_to_yaml(self.auxiliary)
        if self.operation is not None:
            out["operation"] = self.operation
        out.update(
            parameters=copy.deepcopy(self.parameters),
            read_timeout=self.read_timeout,
            pause_sleep=self.pause_sleep,
            poll_interval=self.poll_interval,
            trigger_policy=self.trigger_policy,
            synchronization=self.synchronization.to_dict(),
            propagate_frame_id=self.propagate_frame_id,
        )
        out.update({} if self.cpu is None else {"cpu": self.cpu}, **_realtime_to_yaml(self.realtime))
        return out


@dataclass(frozen=True)
class SourceConfig(_AuxiliaryMixin):
    """A source: a manager-owned thread plugin that writes streams.

    ``stream`` is the first of ``streams``; either may be given to the constructor.
    """

    name: str
    kind: str
    streams: tuple[str, ...] = ()
    auxiliary: tuple[AuxiliaryBinding, ...] = ()
    parameters: dict = field(default_factory=dict)
    poll_interval: float = 0.01
    read_timeout: float | None = None
    line: int | None = field(default=None, compare=False)
    stream: str | None = field(default=None, repr=False)
    process: bool = False               # run in a process of its own (issue 13), with the realtime settings
    realtime: dict = field(default_factory=dict)  # override of the pipeline's realtime settings

    def __post_init__(self) -> None:
        streams = _streams(f"source {self.name!r}", self.streams, self.stream, "stream")
        object.__setattr__(self, "streams", streams)
        object.__setattr__(self, "stream", streams[0])
        object.__setattr__(self, "auxiliary", _bindings(self.auxiliary))
        object.__setattr__(self, "parameters", dict(self.parameters or {}))
        object.__setattr__(self, "realtime", checked_override(f"source {self.name!r}", self.realtime))

    @classmethod
    def from_dict(cls, raw: Mapping) -> SourceConfig:
        """One ``sources`` entry of the YAML format, validated."""
        return _loading().entry_from_mapping("sources", raw)

    @property
    def output_streams(self) -> tuple[str, ...]:
        return self.streams

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "streams": list(self.streams)}
        if self.auxiliary:
            out["auxiliary"] = _auxiliary_to_yaml(self.auxiliary)
        out.update(parameters=copy.deepcopy(self.parameters), poll_interval=self.poll_interval)
        if self.read_timeout is not None:
            out["read_timeout"] = self.read_timeout
        out.update({"process": True} if self.process else {}, **_realtime_to_yaml(self.realtime))
        return out


@dataclass(frozen=True)
class SinkConfig(_AuxiliaryMixin):
    """A sink: a manager-owned thread plugin that reads one stream (and may write ``outputs``)."""

    name: str
    kind: str
    stream: str
    auxiliary: tuple[AuxiliaryBinding, ...] = ()
    parameters: dict = field(default_factory=dict)
    read_timeout: float = 1.0
    pause_sleep: float = 0.01
    consume_timeout: float | None = None
    outputs: tuple[str, ...] = ()
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", _names(self.outputs))
        object.__setattr__(self, "auxiliary", _bindings(self.auxiliary))
        object.__setattr__(self, "parameters", dict(self.parameters or {}))

    @classmethod
    def from_dict(cls, raw: Mapping) -> SinkConfig:
        """One ``sinks`` entry of the YAML format, validated."""
        return _loading().entry_from_mapping("sinks", raw)

    @property
    def output_streams(self) -> tuple[str, ...]:
        """The streams this sink writes itself (stateful endpoints)."""
        return self.outputs

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "stream": self.stream}
        if self.outputs:
            out["outputs"] = list(self.outputs)
        if self.auxiliary:
            out["auxiliary"] = _auxiliary_to_yaml(self.auxiliary)
        out.update(
            parameters=copy.deepcopy(self.parameters),
            read_timeout=self.read_timeout,
            pause_sleep=self.pause_sleep,
        )
        if self.consume_timeout is not None:
            out["consume_timeout"] = self.consume_timeout
        return out


# --------------------------------------------------------------------------- the pipeline


def _cwd() -> Path:
    return Path.cwd().resolve()


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: its streams and the nodes that read and write them.

    ``base_path`` (where relative files are found) and ``source_path`` (the
    file it was loaded from, or None) are ``pathlib.Path``\\ s.
    """

    shared_memory: tuple[SharedMemoryConfig, ...]
    kernels: tuple[KernelConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    namespace: str | None = None
    base_path: Path = field(default_factory=_cwd)
    source_path: Path | None = field(default=None, compare=False)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)

    def __post_init__(self) -> None:
        for key in ("kernels", "sources", "sinks"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if not isinstance(self.realtime, RealtimeConfig):
            object.__setattr__(self, "realtime", RealtimeConfig.from_dict(self.realtime))
        streams = tuple(
            spec if spec.namespace == self.namespace
            else dataclasses.replace(spec, namespace=self.namespace)
            for spec in self.shared_memory
        )
        object.__setattr__(self, "shared_memory", streams)
        object.__setattr__(self, "base_path", Path(self.base_path))
        if self.source_path is not None:
            object.__setattr__(self, "source_path", Path(self.source_path))

    # -- loading (config_loading does the work) ---------------------------------------

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PipelineConfig:
        """Load and validate a pipeline file; errors name the file and line."""
        return _loading().load_pipeline_file(path)

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping,
        base_path: str | os.PathLike | None = None,
        *,
        source_path: str | os.PathLike | None = None,
    ) -> PipelineConfig:
        """Validate a mapping of the YAML format (lines are unknown)."""
        return _loading().pipeline_from_mapping(mapping, base_path, source_path)

    def to_dict(self) -> dict:
        """A plain (JSON/YAML-serialisable) mapping that ``from_dict`` accepts."""
        out: dict[str, Any] = {}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        out["shared_memory"] = [spec.to_dict() for spec in self.shared_memory]
        out["kernels"] = [kernel.to_dict() for kernel in self.kernels]
        out["sources"] = [source.to_dict() for source in self.sources]
        out["sinks"] = [sink.to_dict() for sink in self.sinks]
        if not self.realtime.is_default:
            out["realtime"] = self.realtime.to_dict()
        return out

    def realtime_for(self, node: Any) -> RealtimeConfig:
        """The real-time settings kernel or source ``node`` (an entry or its name) runs with."""
        entry = self.node(node) if isinstance(node, str) else node
        return effective_realtime(self.realtime, getattr(entry, "realtime", None))

    # -- look-ups --------------------------------------------------------------------

    @property
    def streams_by_name(self) -> dict[str, SharedMemoryConfig]:
        return {spec.name: spec for spec in self.shared_memory}

    @property
    def shared_memory_by_name(self) -> dict[str, SharedMemoryConfig]:
        """shmpipeline's name for ``streams_by_name``."""
        return self.streams_by_name

    def stream(self, name: str) -> SharedMemoryConfig:
        for spec in self.shared_memory:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown shared memory: {name!r}")

    def node(self, name: str) -> KernelConfig | SourceConfig | SinkConfig:
        for entry in (*self.kernels, *self.sources, *self.sinks):
            if entry.name == name:
                return entry
        raise KeyError(f"unknown pipeline node: {name!r}")

    def locate(self, message: str, entry: Any = None) -> str:
        """``message`` plus ``(in <file>, line N)`` for ``entry``.

        ``entry`` is a config entry (anything with ``line``), a node or stream
        name (nodes are looked up first), a line number, or None.
        """
        line = None
        if isinstance(entry, int) and not isinstance(entry, bool):
            line = entry
        elif isinstance(entry, str):
            found = next(
                (e for e in (*self.kernels, *self.sources, *self.sinks, *self.shared_memory)
                 if e.name == entry),
                None,
            )
            line = None if found is None else found.line
        elif entry is not None:
            line = getattr(entry, "line", None)
        return message + _where(self.source_path, line)

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes`` applied, re-running the whole-config checks."""
        new = dataclasses.replace(self, **changes)
        errors = _loading().whole_config_errors_of(new)
        if errors:
            raise ConfigValidationError(errors[0], errors=errors)
        return new
