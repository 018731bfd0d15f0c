"""Kernels that rearrange elements without arithmetic: flatten and concatenate."""

from __future__ import annotations

import math

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.checks import is_integer, require_same_dtype, stream_dtype


class FlattenKernel(Kernel):
    """output (1-D) = the input raveled in C order."""

    kind = "cpu.flatten"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        input_shape = tuple(shared_memory[config.input].shape)
        output_shape = tuple(shared_memory[config.output].shape)
        if len(output_shape) != 1:
            raise ConfigValidationError(f"kernel {config.name!r} requires a 1D output vector")
        expected = math.prod(input_shape)
        if output_shape[0] != expected:
            raise ConfigValidationError(f"kernel {config.name!r} requires output length {expected}")
        require_same_dtype(config, shared_memory, (config.input, config.output), "flatten input/output")

    def __init__(self, context) -> None:
        super().__init__(context)
        self._input_shape = tuple(context.trigger_input_spec.shape)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        # Reshaping the contiguous output is always a view; the input may be strided.
        self.xp.copyto(output.reshape(self._input_shape), trigger_input)


def concatenated_shape(config, shared_memory) -> tuple[int, tuple[int, ...], numpy.dtype]:
    """Validate a concatenate binding; return (axis, output shape, dtype)."""
    if len(config.inputs) < 2:
        raise ConfigValidationError(f"kernel {config.name!r} requires at least two trigger inputs")
    if config.trigger_policy != "all_new":
        raise ConfigValidationError(f"kernel {config.name!r} requires trigger_policy 'all_new'")
    axis = config.parameters.get("axis", 0)
    if not is_integer(axis):
        raise ConfigValidationError(f"kernel {config.name!r} requires integer parameter 'axis'")
    shapes = [tuple(shared_memory[name].shape) for name in config.inputs]
    ndim = len(shapes[0])
    position = axis + ndim if axis < 0 else axis
    if not 0 <= position < ndim:
        raise ConfigValidationError(f"kernel {config.name!r} axis {axis} is out of bounds")
    if any(len(shape) != ndim for shape in shapes):
        raise ConfigValidationError(f"kernel {config.name!r} requires equal input ranks")
    dtypes = {stream_dtype(shared_memory, name) for name in config.inputs}
    if len(dtypes) != 1:
        raise ConfigValidationError(f"kernel {config.name!r} requires matching input dtypes")
    for shape in shapes[1:]:
        if any(shape[i] != shapes[0][i] for i in range(ndim) if i != position):
            raise ConfigValidationError(
                f"kernel {config.name!r} requires matching non-concatenated dimensions"
            )
    expected = list(shapes[0])
    expected[position] = sum(shape[position] for shape in shapes)
    return position, tuple(expected), dtypes.pop()


class ConcatenateKernel(Kernel):
    """output = concatenate(inputs, axis); needs every input new (trigger_policy all_new)."""

    kind = "cpu.concatenate"
    input_arity = None

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        _, expected_shape, dtype = concatenated_shape(config, shared_memory)
        output = shared_memory[config.output]
        if tuple(output.shape) != expected_shape or stream_dtype(shared_memory, config.output) != dtype:
            raise ConfigValidationError(
                f"kernel {config.name!r} requires output shape {expected_shape} and dtype {dtype.name}"
            )

    def __init__(self, context) -> None:
        super().__init__(context)
        self.axis, _, _ = concatenated_shape(context.config, context.shared_memory)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self.xp.concatenate(trigger_input, axis=self.axis, out=output)
