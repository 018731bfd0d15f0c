"""One ``shared_memory`` entry of a pipeline file -> one ``SharedMemoryConfig``, every error located.

Owns the field rules of a stream entry: its name (and whether its /dev/shm
file name fits, in the pipeline's namespace), shape, dtype, storage and GPU
device, mode, and its ``initial`` value (pattern, fields, whether the values
fit the dtype and shape).  The generic field machinery (``_Entry``,
``_Report``) and the kernels', sources' and sinks' rules are in
``config_entries``; the limits in ``config_limits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .config import (
    INITIAL_KEYS,
    STREAM_KEYS,
    STREAM_MODES,
    InitialValueConfig,
    SharedMemoryConfig,
    gpu_device_index,
)
from .config_entries import (
    _BAD,
    _REQUIRED,
    _boolean,
    _choice,
    _Entry,
    _Invalid,
    _is_integer,
    _is_real,
    _number,
    _text,
    plain_data,
)
from .config_limits import MAX_GPU_DEVICE_BYTES, shape_problem, short_repr, stream_name_problem


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
            raise _Invalid(f"shape for {name!r} must be a list of positive integers, got {short_repr(value)}")
        if not value:
            raise _Invalid(f"shape for {name!r} must contain at least one dimension")
        for dim in value:
            if not _is_integer(dim):
                raise _Invalid(f"shape for {name!r} dimensions must be integers, got {short_repr(dim)}")
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
            raise _Invalid(f"invalid dtype for shared memory {name!r}: {short_repr(value)}") from exc
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
            if dtype is not _BAD:
                _check_constant(sub, name, fields["value"], dtype)
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


def _check_constant(entry: _Entry, name: str, value: int | float, dtype: str) -> None:
    """The constant can be stored in ``dtype`` (NumPy refuses 300 for uint8, inf for int32)."""
    try:
        np.asarray(value, dtype=dtype)
    except (OverflowError, ValueError):
        entry.fail(f"initial value {short_repr(value)} for shared memory {name!r} cannot be stored "
                   f"as {dtype}", "value")


def _check_layout(entry: _Entry, name: str, namespace: Any, shape: Any, dtype: Any) -> None:
    """The stream's file name and its shape fit a segment (``config_limits``)."""
    if namespace is not _BAD:
        problem = stream_name_problem(name, namespace)
        if problem:
            entry.fail(problem, "name")
    if shape is not _BAD and dtype is not _BAD:
        problem = shape_problem(name, shape, np.dtype(dtype).itemsize)
        if problem:
            entry.fail(problem, "shape")


def _gpu_device(name: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(f"gpu_device for shared memory {name!r}")(value)
        if len(text.encode("utf-8")) > MAX_GPU_DEVICE_BYTES:
            raise _Invalid(f"gpu_device for shared memory {name!r} must be 'cuda' or 'cuda:<index>' of "
                           f"at most {MAX_GPU_DEVICE_BYTES} bytes, got {short_repr(text)}")
        try:
            gpu_device_index(text)
        except ValueError:
            raise _Invalid(f"gpu_device for shared memory {name!r} must be 'cuda' or "
                           f"'cuda:<index>', got {short_repr(text)}") from None
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
        ("cpu", "gpu"), f"storage must be either 'cpu' or 'gpu', got {short_repr(entry.raw.get('storage'))}"
    ), "cpu")
    dtype = entry.get("dtype", _dtype(name, storage), _REQUIRED)
    _check_layout(entry, name, namespace, shape, dtype)
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


