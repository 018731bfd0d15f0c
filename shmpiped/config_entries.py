"""One entry of a pipeline file -> one frozen model object, every field error located.

Owns the field rules of the shmpipeline format (spec section 1): what each
key of a ``shared_memory``, ``kernels``, ``sources`` or ``sinks`` entry may
hold, its default, and the message naming the field, the entry and its line
when it is wrong.  Every error of an entry is reported, not just the first
(``_Report`` collects them).  ``config_loading`` runs these parsers over a
whole document, and over one entry for the model's ``from_dict``
classmethods (``config_loading.entry_from_mapping``).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .config import (
    INITIAL_KEYS,
    KERNEL_KEYS,
    SINK_KEYS,
    SOURCE_KEYS,
    STREAM_KEYS,
    STREAM_MODES,
    SYNCHRONIZATION_KEYS,
    SYNCHRONIZATION_MODES,
    TRIGGER_POLICIES,
    AuxiliaryBinding,
    InitialValueConfig,
    KernelConfig,
    SharedMemoryConfig,
    SinkConfig,
    SourceConfig,
    SynchronizationConfig,
    _where,
    gpu_device_index,
)

# --------------------------------------------------------------------------- field parsers


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


def plain_data(value: Any) -> Any:
    """Deep copy of YAML data into plain dicts and lists (picklable, no lines)."""
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    return copy.deepcopy(value)


def _parameters(owner: str) -> Callable[[Any], dict]:
    def parse(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise _Invalid(f"parameters for {owner} must be a mapping")
        return plain_data(value)
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
            fields["values"] = plain_data(raw["values"])
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


# -- entries


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
