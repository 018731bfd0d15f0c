"""Configuration checks shared by the built-in kernels, with the spec's messages.

Each helper raises ``ConfigValidationError`` naming the kernel; none of them
touches arrays, so GPU twins share them unchanged.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy

from shmpiped.errors import ConfigValidationError

REQUIRED = object()


def is_number(value: Any) -> bool:
    """True for ints and floats (Python or numpy), never for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, numpy.bool_))


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, numpy.bool_))


def numeric_parameter(config, name: str, default: Any = REQUIRED):
    """Return parameter ``name`` (int or float kept as given), or ``default`` when absent."""
    value = config.parameters.get(name, default)
    if value is REQUIRED or not is_number(value):
        raise ConfigValidationError(f"kernel {config.name!r} requires numeric parameter {name!r}")
    return value


def stream_dtype(shared_memory: Mapping[str, Any], name: str) -> numpy.dtype:
    return numpy.dtype(shared_memory[name].dtype)


def require_same_shape_and_dtype(config, shared_memory: Mapping[str, Any]) -> None:
    """The primary input and output have the same shape and the same dtype."""
    source, target = shared_memory[config.input], shared_memory[config.output]
    if tuple(source.shape) != tuple(target.shape):
        raise ConfigValidationError(f"kernel {config.name!r} requires matching input/output shapes")
    if stream_dtype(shared_memory, config.input) != stream_dtype(shared_memory, config.output):
        raise ConfigValidationError(f"kernel {config.name!r} requires matching input/output dtypes")


def require_same_dtype(config, shared_memory: Mapping[str, Any], names, description: str) -> None:
    if len({stream_dtype(shared_memory, name) for name in names}) != 1:
        raise ConfigValidationError(f"kernel {config.name!r} requires matching dtypes for {description}")


def require_binary_streams(config, shared_memory: Mapping[str, Any]) -> None:
    """Input, the one auxiliary and the output all share shape and dtype."""
    names = (config.input, config.auxiliary[0].name, config.output)
    if len({tuple(shared_memory[name].shape) for name in names}) != 1:
        raise ConfigValidationError(
            f"kernel {config.name!r} requires matching shapes for input, auxiliary, and output"
        )
    require_same_dtype(config, shared_memory, names, "binary-operation streams")


def require_positive_weight_power(config, value) -> None:
    if float(value) <= 0.0:
        raise ConfigValidationError(f"kernel {config.name!r} requires 'weight_power' to be positive")
