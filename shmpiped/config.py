"""Pipeline configuration: YAML -> frozen dataclasses, with every load-time check.

Owns the pipeline file format (the shmpipeline YAML: ``shared_memory``,
``kernels``, ``sources``, ``sinks``, ``namespace``), the frozen and picklable
entry dataclasses that travel to workers, the load-time validation rules of
spec section 1 with *every* error collected and located by file and line, and
the round trip back to a plain mapping (``to_dict``).

It touches no shared memory, and it knows neither kernel kinds (the registry
checks those) nor producers (``graph.py`` checks those).
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
from typing import Any, Callable

import numpy as np
import yaml

from .errors import ConfigValidationError

__all__ = [
    "AuxiliaryBinding",
    "InitialValueConfig",
    "KernelConfig",
    "PipelineConfig",
    "SharedMemoryConfig",
    "SinkConfig",
    "SourceConfig",
    "SynchronizationConfig",
    "gpu_device_index",
    "load_yaml",
]

TOP_LEVEL_KEYS = ("shared_memory", "kernels", "sources", "sinks", "namespace")
STREAM_KEYS = (
    "name", "shape", "dtype", "storage", "gpu_device", "cpu_mirror", "notify", "mode", "initial",
)
KERNEL_KEYS = (
    "name", "kind", "input", "inputs", "output", "outputs", "auxiliary", "operation",
    "parameters", "read_timeout", "pause_sleep", "poll_interval", "trigger_policy",
    "synchronization", "propagate_frame_id",
)
SOURCE_KEYS = (
    "name", "kind", "stream", "streams", "auxiliary", "parameters", "poll_interval", "read_timeout",
)
SINK_KEYS = (
    "name", "kind", "stream", "outputs", "auxiliary", "parameters", "read_timeout", "pause_sleep",
    "consume_timeout",
)
SYNCHRONIZATION_KEYS = ("mode", "on_skew", "max_skew_generations", "max_wait_s", "timeout")
STREAM_MODES = ("create", "attach", "create_or_attach", "replace")
TRIGGER_POLICIES = ("any_new", "all_new")
SYNCHRONIZATION_MODES = ("count", "matching_frame_id")
INITIAL_KEYS = {
    "constant": ("pattern", "value"),
    "normal": ("pattern", "seed", "mean", "std"),
    "values": ("pattern", "values"),
    "identity": ("pattern", "scale"),
}


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class InitialValueConfig:
    """The value a stream is published with at build (``shared_memory[].initial``)."""

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


@dataclass(frozen=True)
class SharedMemoryConfig:
    """One stream: a named, typed, fixed-shape array in shared memory."""

    name: str
    shape: tuple[int, ...]
    dtype: str
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
            dtype_name = np.dtype(self.dtype).name
        except Exception as exc:  # noqa: BLE001 - numpy raises several kinds
            raise ConfigValidationError(
                f"invalid dtype for shared memory {self.name!r}: {self.dtype!r}"
            ) from exc
        object.__setattr__(self, "dtype", dtype_name)
        object.__setattr__(self, "storage", str(self.storage).lower())

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.numpy_dtype.itemsize

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "storage": self.storage,
        }
        for key in ("gpu_device", "cpu_mirror", "notify"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["mode"] = self.mode
        if self.initial is not None:
            out["initial"] = self.initial.to_dict()
        return out


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


def _auxiliary_to_yaml(bindings: tuple[AuxiliaryBinding, ...]) -> list | dict:
    if all(b.alias == b.name for b in bindings):
        return [b.name for b in bindings]
    return {b.alias: b.name for b in bindings}


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
    """A kernel: one worker process computing outputs from trigger inputs."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", _names(self.inputs))
        object.__setattr__(self, "outputs", _names(self.outputs))
        object.__setattr__(self, "auxiliary", _bindings(self.auxiliary))
        object.__setattr__(self, "parameters", dict(self.parameters or {}))
        if self.trigger_policy is None:
            policy = "all_new" if len(self.inputs) > 1 else "any_new"
            object.__setattr__(self, "trigger_policy", policy)
        if self.synchronization is None:
            object.__setattr__(self, "synchronization", SynchronizationConfig())

    @property
    def input(self) -> str:
        return self.inputs[0]

    @property
    def output(self) -> str:
        return self.outputs[0]

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
        return out


@dataclass(frozen=True)
class SourceConfig(_AuxiliaryMixin):
    """A source: a manager-owned thread plugin that writes streams."""

    name: str
    kind: str
    streams: tuple[str, ...]
    auxiliary: tuple[AuxiliaryBinding, ...] = ()
    parameters: dict = field(default_factory=dict)
    poll_interval: float = 0.01
    read_timeout: float | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", _names(self.streams))
        object.__setattr__(self, "auxiliary", _bindings(self.auxiliary))
        object.__setattr__(self, "parameters", dict(self.parameters or {}))

    @property
    def stream(self) -> str:
        return self.streams[0]

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
        return out


@dataclass(frozen=True)
class SinkConfig(_AuxiliaryMixin):
    """A sink: a manager-owned thread plugin that reads one stream."""

    name: str
    kind: str
    stream: str
    outputs: tuple[str, ...] = ()
    auxiliary: tuple[AuxiliaryBinding, ...] = ()
    parameters: dict = field(default_factory=dict)
    read_timeout: float = 1.0
    pause_sleep: float = 0.01
    consume_timeout: float | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", _names(self.outputs))
        object.__setattr__(self, "auxiliary", _bindings(self.auxiliary))
        object.__setattr__(self, "parameters", dict(self.parameters or {}))

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


def _cwd() -> str:
    return str(Path.cwd().resolve())


def _where(source_path: str | None, line: int | None) -> str:
    """The location suffix appended to an error message."""
    if source_path and line:
        return f" (in {source_path}, line {line})"
    if source_path:
        return f" (in {source_path})"
    if line:
        return f" (line {line})"
    return ""


@dataclass(frozen=True)
class PipelineConfig:
    """A whole pipeline: its streams and the nodes that read and write them."""

    shared_memory: tuple[SharedMemoryConfig, ...]
    kernels: tuple[KernelConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    namespace: str | None = None
    base_path: str = field(default_factory=_cwd)
    source_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key in ("kernels", "sources", "sinks"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        streams = tuple(
            spec if spec.namespace == self.namespace
            else dataclasses.replace(spec, namespace=self.namespace)
            for spec in self.shared_memory
        )
        object.__setattr__(self, "shared_memory", streams)
        object.__setattr__(self, "base_path", str(self.base_path))
        if self.source_path is not None:
            object.__setattr__(self, "source_path", str(self.source_path))

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PipelineConfig:
        """Load and validate a pipeline file; errors name the file and line."""
        source = Path(path).expanduser().resolve()
        data, duplicates = load_yaml(source)
        return _build(data, str(source.parent), str(source), duplicates)

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping,
        base_path: str | os.PathLike | None = None,
        *,
        source_path: str | os.PathLike | None = None,
    ) -> PipelineConfig:
        """Validate a mapping of the YAML format (lines are unknown)."""
        if not isinstance(mapping, Mapping):
            raise ConfigValidationError(
                f"pipeline config must be a mapping, got {type(mapping).__name__}"
            )
        base = _cwd() if base_path is None else str(base_path)
        return _build(mapping, base, None if source_path is None else str(source_path), ())

    def to_dict(self) -> dict:
        """A plain (JSON/YAML-serialisable) mapping that ``from_dict`` accepts."""
        out: dict[str, Any] = {}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        out["shared_memory"] = [spec.to_dict() for spec in self.shared_memory]
        out["kernels"] = [kernel.to_dict() for kernel in self.kernels]
        out["sources"] = [source.to_dict() for source in self.sources]
        out["sinks"] = [sink.to_dict() for sink in self.sinks]
        return out

    # -- look-ups --------------------------------------------------------------------

    @property
    def streams_by_name(self) -> dict[str, SharedMemoryConfig]:
        return {spec.name: spec for spec in self.shared_memory}

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
        errors = _whole_config_errors(
            new.shared_memory, new.kernels, new.sources, new.sinks, new.base_path,
            {spec.name for spec in new.shared_memory},
            lambda message, line: message + _where(new.source_path, line),
        )
        if new.namespace is not None:
            try:
                _namespace(new.namespace)
            except _Invalid as exc:
                errors.insert(0, str(exc) + _where(new.source_path, None))
        if errors:
            raise ConfigValidationError(errors[0], errors=errors)
        return new


# --------------------------------------------------------------------------- YAML loading


class _LocatedDict(dict):
    """A mapping read from YAML that remembers its line and its keys' lines."""

    __slots__ = ("line", "key_lines")


class _LocatedList(list):
    """A sequence read from YAML that remembers its line and its items' lines."""

    __slots__ = ("line", "item_lines")


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.1 wants a dot in a float; people write 1e-5 and mean a number.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _LineLoader(yaml.SafeLoader):
    """A safe loader recording lines, duplicate keys, and reading 1e-5 as a float.

    Timestamps stay strings, so that every loaded value is JSON-serialisable.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[Any, int]] = []


def _construct_map(loader: _LineLoader, node: yaml.MappingNode):
    data = _LocatedDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    first_explicit = len(node.value) - explicit
    seen = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found unhashable key", key_node.start_mark,
            ) from exc
        line = key_node.start_mark.line + 1
        if index >= first_explicit:
            if key in seen:
                loader.duplicate_keys.append((key, line))
            seen.add(key)
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = line


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode):
    data = _LocatedList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_LineLoader.yaml_implicit_resolvers = {
    first: [resolver for resolver in resolvers if resolver[0] != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789"))
_LineLoader.add_constructor(_MAP_TAG, _construct_map)
_LineLoader.add_constructor(_SEQ_TAG, _construct_seq)


def load_yaml(path: str | os.PathLike) -> tuple[Any, list[tuple[Any, int]]]:
    """Read a YAML file: its data (mappings carry lines) and its duplicate keys.

    Every failure (unreadable file, syntax error, empty file) is a
    ``ConfigValidationError`` naming the file, and the line when known.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigValidationError(f"pipeline config file not found: {source}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigValidationError(f"cannot read pipeline config {source}: {exc}") from exc
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        line = None if mark is None else mark.line + 1
        message = f"invalid YAML: {problem}"
        context_mark = exc.context_mark
        if exc.problem and exc.context and context_mark and context_mark.line + 1 != line:
            message += f" ({exc.context} at line {context_mark.line + 1})"
        raise ConfigValidationError(message + _where(source, line)) from exc
    except yaml.YAMLError as exc:
        raise ConfigValidationError(f"invalid YAML: {exc}" + _where(source, None)) from exc
    finally:
        loader.dispose()
    if data is None:
        raise ConfigValidationError("pipeline config is empty" + _where(source, None))
    if not isinstance(data, Mapping):
        raise ConfigValidationError(
            f"pipeline config must be a mapping, got {_type_name(data)}"
            + _where(source, getattr(data, "line", None) or 1)
        )
    return data, loader.duplicate_keys


def _type_name(value: Any) -> str:
    return "list" if isinstance(value, list) else type(value).__name__


# --------------------------------------------------------------------------- parsing


class _Invalid(Exception):
    """A field value is invalid; the message is the user-facing error."""


_BAD = object()  # a field that failed to parse (its error is already reported)
_REQUIRED = object()  # default of a field that has none: None goes to the parser


class _Report:
    """Collects located error messages."""

    def __init__(self, source_path: str | None) -> None:
        self.source_path = source_path
        self.messages: list[str] = []

    def __call__(self, message: str, line: int | None = None) -> None:
        self.messages.append(message + _where(self.source_path, line))


class _Entry:
    """A raw mapping being parsed: reads fields, reports errors at their lines."""

    def __init__(self, raw: Mapping, report: _Report, parent: _Entry | None = None,
                 line: int | None = None) -> None:
        self.raw = raw
        self.report = report
        self.parent = parent
        self.line = getattr(raw, "line", None) or line or (parent.line if parent else None)
        self.key_lines: dict = getattr(raw, "key_lines", None) or {}
        self._ok = True

    @property
    def ok(self) -> bool:
        return self._ok

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)

    def fail(self, message: str, key: Any = None) -> None:
        self.report(message, self.line if key is None else self.line_of(key))
        self._mark_failed()

    def _mark_failed(self) -> None:
        entry: _Entry | None = self
        while entry is not None:
            entry._ok = False
            entry = entry.parent

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        """The parsed field, ``default`` when absent or null, ``_BAD`` when invalid."""
        value = self.raw.get(key)
        if value is None and default is not _REQUIRED:
            return default
        try:
            return parse(value)
        except _Invalid as exc:
            self.fail(str(exc), key)
            return _BAD

    def reject_unknown(self, allowed: tuple[str, ...], what: str, quote: bool = True) -> None:
        unknown = sorted((key for key in self.raw if key not in allowed), key=str)
        if unknown:
            listed = ", ".join(repr(key) if quote else str(key) for key in unknown)
            lines = [self.key_lines[key] for key in unknown if key in self.key_lines]
            self.report(f"{what} contains unsupported fields: {listed}",
                        min(lines) if lines else self.line)
            self._mark_failed()


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _text(what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"{what} must be a non-empty string")
        return value.strip()
    return parse


def _boolean(what: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _Invalid(f"{what} must be boolean")
        return bool(value)
    return parse


def _number(what: str, *, positive: bool = False, non_negative: bool = False,
            finite: bool = True) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if not _is_real(value) or math.isnan(float(value)):
            raise _Invalid(f"{what} must be a number")
        number = float(value)
        if finite and math.isinf(number):
            raise _Invalid(f"{what} must be finite")
        if positive and number <= 0:
            raise _Invalid(f"{what} must be positive")
        if non_negative and number < 0:
            raise _Invalid(f"{what} must be non-negative")
        return number
    return parse


def _timeout(what: str) -> Callable[[Any], float]:
    return _number(what, positive=True)


def _choice(choices: tuple[str, ...], message: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in choices:
            raise _Invalid(message)
        return text
    return parse


def _stream_names(what: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise _Invalid(f"{what} must be a non-empty list of stream names")
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise _Invalid(f"{what} must contain only non-empty stream names, got {item!r}")
        return tuple(item.strip() for item in value)
    return parse


def _plain(value: Any) -> Any:
    """Deep copy of YAML data into plain dicts and lists (picklable, no lines)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return copy.deepcopy(value)


def _parameters(owner: str) -> Callable[[Any], dict]:
    def parse(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise _Invalid(f"parameters for {owner} must be a mapping")
        return _plain(value)
    return parse


def _auxiliary(owner: str) -> Callable[[Any], tuple[AuxiliaryBinding, ...]]:
    what = f"auxiliary for {owner}"

    def parse(value: Any) -> tuple[AuxiliaryBinding, ...]:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif isinstance(value, (list, tuple)):
            pairs = [(item, item) for item in value]
        else:
            raise _Invalid(
                f"{what} must be a list of stream names or a mapping of alias to stream name"
            )
        bindings = []
        for alias, name in pairs:
            if not isinstance(name, str) or not name.strip():
                raise _Invalid(f"{what} must name streams with non-empty strings, got {name!r}")
            if not isinstance(alias, str) or not alias.strip():
                raise _Invalid(f"{what} aliases must be non-empty strings, got {alias!r}")
            bindings.append(AuxiliaryBinding(alias.strip(), name.strip()))
        return tuple(bindings)
    return parse


def _repeats(items: tuple) -> bool:
    return len(set(items)) != len(items)


def _check_auxiliary_repeats(entry: _Entry, owner: str, auxiliary: Any) -> None:
    if auxiliary is _BAD:
        return
    if _repeats(tuple(b.name for b in auxiliary)):
        entry.fail(f"{owner} cannot reuse the same auxiliary stream more than once", "auxiliary")
    elif _repeats(tuple(b.alias for b in auxiliary)):
        entry.fail(f"{owner} cannot reuse the same auxiliary alias more than once", "auxiliary")


# -- shared_memory entries ---------------------------------------------------------------


def _stream_name(value: Any) -> str:
    name = _text("shared memory name")(value)
    if any(char in name for char in "/\\\0"):
        raise _Invalid(
            f"shared memory name {name!r} must not contain path separators or null bytes"
        )
    return name


def _shape(name: str) -> Callable[[Any], tuple[int, ...]]:
    def parse(value: Any) -> tuple[int, ...]:
        if value is None:
            raise _Invalid(f"shared memory {name!r} must declare a shape")
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"shape for {name!r} must be a list of positive integers, got {value!r}")
        if not value:
            raise _Invalid(f"shape for {name!r} must contain at least one dimension")
        for dim in value:
            if not _is_integer(dim):
                raise _Invalid(f"shape for {name!r} dimensions must be integers, got {dim!r}")
        if any(dim <= 0 for dim in value):
            raise _Invalid(f"shape for {name!r} dimensions must be positive")
        return tuple(int(dim) for dim in value)
    return parse


def _dtype(name: str, storage: Any) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value is None:
            raise _Invalid(f"shared memory {name!r} must declare a dtype")
        try:
            dtype = np.dtype(value)
        except Exception as exc:  # noqa: BLE001 - numpy raises TypeError, ValueError, ...
            raise _Invalid(f"invalid dtype for shared memory {name!r}: {value!r}") from exc
        if dtype.kind not in "biufc":
            if storage == "gpu":
                raise _Invalid(f"unsupported GPU dtype {str(dtype)!r} for shared memory {name!r}")
            raise _Invalid(f"dtype for shared memory {name!r} must be a numeric or bool dtype")
        if not dtype.isnative:
            raise _Invalid(f"dtype for shared memory {name!r} must use native byte order")
        return dtype.name
    return parse


def _initial(entry: _Entry, name: str, shape: Any, dtype: Any) -> Any:
    raw = entry.raw.get("initial")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        entry.fail(f"initial value for shared memory {name!r} must be a mapping", "initial")
        return _BAD
    sub = _Entry(raw, entry.report, parent=entry, line=entry.line_of("initial"))
    pattern = sub.get("pattern", _choice(
        tuple(INITIAL_KEYS),
        f"initial pattern for shared memory {name!r} must be 'constant', 'normal', "
        "'values', or 'identity'",
    ), _REQUIRED)
    if pattern is _BAD:
        return _BAD
    sub.reject_unknown(INITIAL_KEYS[pattern], f"initial value for shared memory {name!r}",
                       quote=False)
    def what(key: str) -> str:
        return f"initial {key} for shared memory {name!r}"

    fields: dict[str, Any] = {}
    if pattern == "constant":
        if not _is_real(raw.get("value")):
            sub.fail(f"initial value for shared memory {name!r} requires a numeric 'value'",
                     "value" if "value" in raw else None)
        else:
            value = raw["value"]
            fields["value"] = int(value) if _is_integer(value) else float(value)
    elif pattern == "normal":
        fields["seed"] = sub.get("seed", _seed(what("seed")), 0)
        fields["mean"] = sub.get("mean", _number(what("mean"), finite=False), 0.0)
        fields["std"] = sub.get("std", _number(what("std"), non_negative=True), 1.0)
        if dtype is not _BAD and np.dtype(dtype).kind != "f":
            sub.fail(f"normal initializer for {name!r} requires a floating-point dtype")
    elif pattern == "values":
        if "values" not in raw:
            sub.fail(f"initial value for shared memory {name!r} requires a 'values' key")
        else:
            fields["values"] = _plain(raw["values"])
            if shape is not _BAD and dtype is not _BAD:
                _check_values(sub, name, fields["values"], shape, dtype)
    else:
        fields["scale"] = sub.get("scale", _number(what("scale"), finite=False), 1.0)
        if shape is not _BAD and len(shape) != 2:
            sub.fail(f"identity initializer for shared memory {name!r} requires a 2D shape, "
                     f"got {shape}")
    if not sub.ok:
        return _BAD
    return InitialValueConfig(pattern=pattern, **fields)


def _seed(what: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not _is_integer(value) or value < 0:
            raise _Invalid(f"{what} must be a non-negative integer")
        return int(value)
    return parse


def _check_values(entry: _Entry, name: str, values: Any, shape: tuple, dtype: str) -> None:
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        entry.fail(f"values initializer for {name!r} cannot be converted to {dtype}", "values")
        return
    if array.shape != tuple(shape):
        entry.fail(f"values initializer for {name!r} has shape {array.shape}, expected "
                   f"{tuple(shape)}", "values")


_GPU_DEVICE = re.compile(r"cuda(?::([0-9]+))?")


def gpu_device_index(text: str) -> int:
    """The device index of a ``gpu_device``: ``cuda`` -> 0, ``cuda:N`` -> N.

    Case and surrounding white space are ignored; anything else raises ``ValueError``.
    """
    match = _GPU_DEVICE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"gpu_device must be 'cuda' or 'cuda:<index>', got {text!r}")
    return int(match.group(1) or 0)


def _gpu_device(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(f"gpu_device for shared memory {name!r}")(value)
        try:
            gpu_device_index(text)
        except ValueError:
            raise _Invalid(f"gpu_device for shared memory {name!r} must be 'cuda' or "
                           f"'cuda:<index>', got {text!r}") from None
        return text.lower()
    return parse


def _parse_stream(entry: _Entry, namespace: str | None) -> SharedMemoryConfig | None:
    entry.reject_unknown(STREAM_KEYS, "shared_memory entry")
    name = entry.get("name", _stream_name, _REQUIRED)
    if name is _BAD:
        return None
    shape = entry.get("shape", _shape(name), _REQUIRED)
    storage = entry.get("storage", _choice(
        ("cpu", "gpu"), f"storage must be either 'cpu' or 'gpu', got {entry.raw.get('storage')!r}"
    ), "cpu")
    dtype = entry.get("dtype", _dtype(name, storage), _REQUIRED)
    gpu_device = entry.get("gpu_device", _gpu_device(name))
    if storage == "gpu" and gpu_device is None:
        entry.fail(f"GPU shared memory {name!r} requires gpu_device", "storage")
    elif storage == "cpu" and gpu_device is not None:
        entry.fail(f"CPU shared memory {name!r} cannot declare gpu_device", "gpu_device")
    cpu_mirror = entry.get("cpu_mirror", _boolean(f"cpu_mirror for shared memory {name!r}"))
    notify = entry.get("notify", _boolean(f"notify for shared memory {name!r}"))
    mode = entry.get("mode", _choice(
        STREAM_MODES,
        f"mode for shared memory {name!r} must be one of 'create', 'attach', "
        "'create_or_attach', or 'replace'",
    ), "create_or_attach")
    initial = _initial(entry, name, shape, dtype)
    if not entry.ok:
        return None
    return SharedMemoryConfig(
        name=name, shape=shape, dtype=dtype, storage=storage, gpu_device=gpu_device,
        cpu_mirror=cpu_mirror, notify=notify, mode=mode, initial=initial,
        namespace=namespace, line=entry.line,
    )


# -- kernels, sources, sinks ---------------------------------------------------------------


def _synchronization(entry: _Entry, owner: str) -> Any:
    raw = entry.raw.get("synchronization")
    if raw is None:
        return SynchronizationConfig()
    if not isinstance(raw, Mapping):
        entry.fail(f"synchronization for {owner} must be a mapping", "synchronization")
        return _BAD
    sub = _Entry(raw, entry.report, parent=entry, line=entry.line_of("synchronization"))
    sub.reject_unknown(SYNCHRONIZATION_KEYS, f"synchronization for {owner}")
    mode = sub.get("mode", _choice(
        SYNCHRONIZATION_MODES,
        f"synchronization mode for {owner} must be either 'count' or 'matching_frame_id'",
    ), "count")
    on_skew = sub.get("on_skew", _choice(
        ("drop_older",), f"synchronization on_skew for {owner} must be 'drop_older'"
    ), "drop_older")
    generations = sub.get("max_skew_generations", _generations(owner), 16)
    if raw.get("max_wait_s") is not None and raw.get("timeout") is not None:
        sub.fail(f"synchronization for {owner} must use either 'max_wait_s' or 'timeout', "
                 "not both", "timeout")
        max_wait = _BAD
    else:
        key = "timeout" if raw.get("timeout") is not None else "max_wait_s"
        max_wait = sub.get(key, _timeout(f"synchronization {key} for {owner}"))
    if not sub.ok:
        return _BAD
    return SynchronizationConfig(mode=mode, on_skew=on_skew, max_skew_generations=generations,
                                 max_wait_s=max_wait)


def _generations(owner: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not _is_integer(value) or value < 1:
            raise _Invalid(f"synchronization max_skew_generations for {owner} must be an "
                           "integer >= 1")
        return int(value)
    return parse


def _reject_both(entry: _Entry, label: str, *pairs: tuple[str, str]) -> None:
    """Fail where an entry uses both the single and the plural form of a key."""
    for single, plural in pairs:
        if entry.has(single) and entry.has(plural):
            entry.fail(f"{label} entry must use either {single!r} or {plural!r}, not both", plural)


def _node_start(entry: _Entry, label: str, keys: tuple[str, ...]) -> tuple[str, str, Any] | None:
    """Reject unknown keys, read name and kind: ``(name, owner, kind)``; None for a bad name."""
    entry.reject_unknown(keys, f"{label} entry")
    name = entry.get("name", _text(f"{label} name"), _REQUIRED)
    if name is _BAD:
        return None
    owner = f"{label} {name!r}"
    return name, owner, entry.get("kind", _text(f"kind for {owner}"), _REQUIRED)


def _one_or_many(entry: _Entry, single: str, plural: str, owner: str) -> Any:
    """``single`` (one stream name) or ``plural`` (a list), as a tuple; one of them is required."""
    if entry.raw.get(single) is not None:
        name = entry.get(single, _text(f"{single} for {owner}"))
        return _BAD if name is _BAD else (name,)
    names = entry.get(plural, _stream_names(f"{plural} for {owner}"))
    if names is None:
        entry.fail(f"{owner} must declare {single!r} or {plural!r}")
        return _BAD
    return names


def _key_used(entry: _Entry, single: str, plural: str) -> str:
    return single if entry.has(single) else plural


def _check_unique(entry: _Entry, owner: str, names: Any, what: str, key: str) -> None:
    """Fail at ``key`` when the parsed stream list ``names`` names a stream twice."""
    if isinstance(names, tuple) and _repeats(names):
        entry.fail(f"{owner} cannot declare the same {what} stream more than once", key)


def _checked_auxiliary(entry: _Entry, owner: str) -> Any:
    auxiliary = entry.get("auxiliary", _auxiliary(owner), ())
    _check_auxiliary_repeats(entry, owner, auxiliary)
    return auxiliary


def _timings(entry: _Entry, owner: str, **defaults: float | None) -> dict[str, Any]:
    """A node's durations in seconds (each positive), by key, with their defaults."""
    return {key: entry.get(key, _timeout(f"{key} for {owner}"), default)
            for key, default in defaults.items()}


def _parse_kernel(entry: _Entry) -> KernelConfig | None:
    _reject_both(entry, "kernel", ("input", "inputs"), ("output", "outputs"))
    start = _node_start(entry, "kernel", KERNEL_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    inputs = _one_or_many(entry, "input", "inputs", owner)
    outputs = _one_or_many(entry, "output", "outputs", owner)
    auxiliary = entry.get("auxiliary", _auxiliary(owner), ())
    operation = entry.get("operation", _text(f"operation for {owner}"))
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, read_timeout=1.0, pause_sleep=0.01, poll_interval=1e-5)
    policy_error = f"trigger_policy for {owner} must be either 'any_new' or 'all_new'"
    trigger_policy = entry.get("trigger_policy", _choice(TRIGGER_POLICIES, policy_error))
    synchronization = _synchronization(entry, owner)
    propagate = entry.get("propagate_frame_id", _boolean(f"propagate_frame_id for {owner}"), False)
    if trigger_policy is None and isinstance(inputs, tuple):
        trigger_policy = "all_new" if len(inputs) > 1 else "any_new"
    if all(isinstance(value, tuple) for value in (inputs, outputs, auxiliary)) and (
        trigger_policy is not _BAD and synchronization is not _BAD
    ):
        _check_kernel_streams(entry, owner, inputs, outputs, auxiliary, trigger_policy,
                              synchronization)
    if not entry.ok:
        return None
    return KernelConfig(
        name=name, kind=kind, inputs=inputs, outputs=outputs, auxiliary=auxiliary,
        operation=operation, parameters=parameters, trigger_policy=trigger_policy,
        synchronization=synchronization, propagate_frame_id=propagate, line=entry.line,
        **timings,
    )


def _check_kernel_streams(entry: _Entry, owner: str, inputs: tuple, outputs: tuple,
                          auxiliary: tuple, trigger_policy: str,
                          synchronization: SynchronizationConfig) -> None:
    _check_unique(entry, owner, inputs, "trigger input", _key_used(entry, "input", "inputs"))
    if synchronization.mode == "matching_frame_id" and trigger_policy != "all_new":
        entry.fail(f"{owner} synchronization mode 'matching_frame_id' requires trigger_policy "
                   "'all_new'", "synchronization")
    _check_unique(entry, owner, outputs, "output", _key_used(entry, "output", "outputs"))
    if set(inputs) & set(outputs):
        entry.fail(f"{owner} cannot use the same shared memory for both input and output")
    _check_auxiliary_repeats(entry, owner, auxiliary)
    names = {binding.name for binding in auxiliary}
    if names & set(inputs):
        entry.fail(f"{owner} cannot reuse the trigger input as auxiliary", "auxiliary")
    if names & set(outputs):
        entry.fail(f"{owner} cannot reuse the output as auxiliary", "auxiliary")


def _parse_source(entry: _Entry) -> SourceConfig | None:
    _reject_both(entry, "source", ("stream", "streams"))
    start = _node_start(entry, "source", SOURCE_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    streams = _one_or_many(entry, "stream", "streams", owner)
    _check_unique(entry, owner, streams, "output", _key_used(entry, "stream", "streams"))
    auxiliary = _checked_auxiliary(entry, owner)
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, poll_interval=0.01, read_timeout=None)
    if not entry.ok:
        return None
    return SourceConfig(name=name, kind=kind, streams=streams, auxiliary=auxiliary,
                        parameters=parameters, line=entry.line, **timings)


def _parse_sink(entry: _Entry) -> SinkConfig | None:
    start = _node_start(entry, "sink", SINK_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    stream = entry.get("stream", _text(f"stream for {owner}"), _REQUIRED)
    raw_outputs = entry.raw.get("outputs")
    outputs: Any = ()
    if raw_outputs is not None and raw_outputs != []:
        outputs = entry.get("outputs", _stream_names(f"outputs for {owner}"))
        _check_unique(entry, owner, outputs, "output", "outputs")
    auxiliary = _checked_auxiliary(entry, owner)
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, read_timeout=1.0, pause_sleep=0.01, consume_timeout=None)
    if not entry.ok:
        return None
    return SinkConfig(name=name, kind=kind, stream=stream, outputs=outputs, auxiliary=auxiliary,
                      parameters=parameters, line=entry.line, **timings)


# -- the whole document ---------------------------------------------------------------------


def _namespace(value: Any) -> str:
    namespace = _text("pipeline config field 'namespace'")(value)
    if any(char in namespace for char in "/\\\0"):
        raise _Invalid(
            "pipeline config field 'namespace' must not contain path separators or null bytes"
        )
    return namespace


def _entries(section: Any, report: _Report, label: str, parse: Callable) -> tuple[list, list]:
    """Parse every entry of a section: (parsed entries, raw names of all entries)."""
    parsed, raw_names = [], []
    item_lines = getattr(section, "item_lines", None) or [None] * len(section)
    for raw, line in zip(section, item_lines):
        if not isinstance(raw, Mapping):
            report(f"{label} entry must be a mapping", line)
            continue
        name = raw.get("name")
        if isinstance(name, str) and name.strip():
            raw_names.append(name.strip())
        result = parse(_Entry(raw, report, line=line))
        if result is not None:
            parsed.append(result)
    return parsed, raw_names


def _build(data: Mapping, base_path: str, source_path: str | None,
           duplicate_keys: Any) -> PipelineConfig:
    report = _Report(source_path)
    for key, line in duplicate_keys:
        report(f"duplicate key {key!r} in the same mapping", line)
    top = _Entry(data, report)
    top.line = None  # a missing top-level key has no line of its own
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        listed = ", ".join(repr(key) for key in sorted(unknown, key=str))
        lines = [top.key_lines[key] for key in unknown if key in top.key_lines]
        report(f"pipeline config contains unsupported fields: {listed}", min(lines, default=None))
    namespace = top.get("namespace", _namespace)
    namespace = None if namespace is _BAD else namespace

    shared_memory = data.get("shared_memory")
    if not isinstance(shared_memory, (list, tuple)) or not shared_memory:
        report("pipeline config must define a non-empty shared_memory list",
               top.line_of("shared_memory"))
        shared_memory = None
    sections: dict[str, Any] = {}  # None: present but not a list
    for key in ("kernels", "sources", "sinks"):
        value = data.get(key)
        if value is None:
            value = []
        elif not isinstance(value, (list, tuple)):
            report(f"pipeline config field {key!r} must be a list", top.line_of(key))
            value = None
        sections[key] = value
    if all(value is not None for value in sections.values()) and not any(sections.values()):
        report("pipeline config must define at least one kernel, source, or sink")

    streams, known = [], None
    if shared_memory is not None:
        streams, known = _entries(shared_memory, report, "shared_memory",
                                  lambda entry: _parse_stream(entry, namespace))
    parsed = {
        key: _entries(sections[key] or [], report, label, parse)[0]
        for key, label, parse in (
            ("kernels", "kernel", _parse_kernel),
            ("sources", "source", _parse_source),
            ("sinks", "sink", _parse_sink),
        )
    }
    report.messages.extend(_whole_config_errors(
        streams, parsed["kernels"], parsed["sources"], parsed["sinks"], base_path,
        None if known is None else set(known),
        lambda message, line: message + _where(source_path, line),
    ))
    if report.messages:
        raise ConfigValidationError(report.messages[0], errors=report.messages)
    return PipelineConfig(
        shared_memory=tuple(streams), kernels=tuple(parsed["kernels"]),
        sources=tuple(parsed["sources"]), sinks=tuple(parsed["sinks"]), namespace=namespace,
        base_path=base_path, source_path=source_path,
    )


def _whole_config_errors(streams, kernels, sources, sinks, base_path: str,
                         known_streams: set[str] | None,
                         locate: Callable[[str, int | None], str]) -> list[str]:
    """The checks across entries (spec 1, step 6), each located at its entry."""
    errors: list[str] = []
    if not os.path.isabs(str(base_path)):
        errors.append(f"pipeline config base_path must be absolute, got {str(base_path)!r}")
    for entries, label in ((streams, "shared memory"), (kernels, "kernel"),
                           (sources, "source"), (sinks, "sink")):
        seen: set[str] = set()
        for entry in entries:
            if entry.name in seen:
                errors.append(locate(f"{label} names must be unique: {entry.name!r}", entry.line))
            seen.add(entry.name)
    section_of: dict[str, str] = {}
    for entries, label in ((kernels, "kernel"), (sources, "source"), (sinks, "sink")):
        for entry in entries:
            first = section_of.setdefault(entry.name, label)
            if first != label:
                errors.append(locate(
                    "pipeline node names must be unique across kernels, sources, and sinks: "
                    f"{entry.name!r}", entry.line,
                ))
    if known_streams is None:
        return errors
    references = (
        [(kernel, "kernel", (*kernel.inputs, *kernel.auxiliary_names, *kernel.outputs))
         for kernel in kernels]
        + [(source, "source", (*source.streams, *source.auxiliary_names)) for source in sources]
        + [(sink, "sink", (sink.stream, *sink.auxiliary_names, *sink.outputs)) for sink in sinks]
    )
    for entry, label, names in references:
        missing = sorted(set(names) - known_streams)
        if missing:
            errors.append(locate(
                f"{label} {entry.name!r} references undefined shared memory: "
                + ", ".join(missing), entry.line,
            ))
    return errors
