"""Element-wise kernels: copy, scale, add_constant, elementwise_* and scale_offset.

Each writes straight into the output view; dtype conversions (an integer
stream scaled by a float, an integer division) go through buffers made in
``__init__`` (see ``casting.CastingUfunc``).
"""

from __future__ import annotations

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.casting import CastingUfunc, loop_dtype
from shmpiped.kernels.checks import (
    numeric_parameter,
    require_binary_streams,
    require_same_shape_and_dtype,
)


def _output_layout(context) -> tuple[tuple[int, ...], numpy.dtype]:
    spec = context.output_spec
    return tuple(spec.shape), numpy.dtype(spec.dtype)


def _require_parameter_in_range(config, shared_memory, name: str, ufunc_name: str, value) -> None:
    """An integer constant must fit the stream's integer dtype (NumPy refuses 300 for uint8)."""
    dtype = numpy.dtype(shared_memory[config.input].dtype)
    try:
        loop_dtype(ufunc_name, dtype, value)
    except OverflowError as exc:
        raise ConfigValidationError(
            f"kernel {config.name!r} parameter {name!r} is out of range for {dtype.name}"
        ) from exc


class CopyKernel(Kernel):
    """output = input."""

    kind = "cpu.copy"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        require_same_shape_and_dtype(config, shared_memory)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self.xp.copyto(output, trigger_input)


class _ScalarOperationKernel(Kernel):
    """output = ufunc(input, parameter) for one required numeric parameter."""

    parameter_name = ""
    ufunc_name = ""

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        require_same_shape_and_dtype(config, shared_memory)
        value = numeric_parameter(config, cls.parameter_name)
        _require_parameter_in_range(config, shared_memory, cls.parameter_name, cls.ufunc_name, value)

    def __init__(self, context) -> None:
        super().__init__(context)
        shape, dtype = _output_layout(context)
        self.parameter = numeric_parameter(context.config, self.parameter_name)
        self._apply = CastingUfunc(self.xp, self.ufunc_name, (dtype, self.parameter), dtype, shape)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self._apply(trigger_input, self.parameter, output)


class ScaleKernel(_ScalarOperationKernel):
    """output = input * factor."""

    kind = "cpu.scale"
    parameter_name = "factor"
    ufunc_name = "multiply"


class AddConstantKernel(_ScalarOperationKernel):
    """output = input + constant."""

    kind = "cpu.add_constant"
    parameter_name = "constant"
    ufunc_name = "add"


class _BinaryElementwiseKernel(Kernel):
    """output = ufunc(input, auxiliary) for streams of one shape and dtype."""

    auxiliary_arity = 1
    ufunc_name = ""

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        require_binary_streams(config, shared_memory)

    def __init__(self, context) -> None:
        super().__init__(context)
        shape, dtype = _output_layout(context)
        self._alias = context.config.auxiliary[0].alias
        self._apply = CastingUfunc(self.xp, self.ufunc_name, (dtype, dtype), dtype, shape)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self._apply(trigger_input, auxiliary_inputs[self._alias], output)


class ElementwiseAddKernel(_BinaryElementwiseKernel):
    kind = "cpu.elementwise_add"
    ufunc_name = "add"


class ElementwiseSubtractKernel(_BinaryElementwiseKernel):
    kind = "cpu.elementwise_subtract"
    ufunc_name = "subtract"


class ElementwiseMultiplyKernel(_BinaryElementwiseKernel):
    kind = "cpu.elementwise_multiply"
    ufunc_name = "multiply"


class ElementwiseDivideKernel(_BinaryElementwiseKernel):
    kind = "cpu.elementwise_divide"
    ufunc_name = "divide"


class ScaleOffsetKernel(Kernel):
    """output = gain * input - offset, the offset being the one auxiliary stream."""

    kind = "cpu.scale_offset"
    auxiliary_arity = 1

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        require_binary_streams(config, shared_memory)
        gain = numeric_parameter(config, "gain")
        _require_parameter_in_range(config, shared_memory, "gain", "multiply", gain)

    def __init__(self, context) -> None:
        super().__init__(context)
        shape, dtype = _output_layout(context)
        self.gain = numeric_parameter(context.config, "gain")
        self._alias = context.config.auxiliary[0].alias
        work_dtype = loop_dtype("multiply", dtype, self.gain)
        # An integer stream with a float gain is computed in floating point, cast once at the end.
        self._scaled = None if work_dtype == dtype else self.xp.empty(shape, dtype=work_dtype)
        self._multiply = CastingUfunc(self.xp, "multiply", (dtype, self.gain), work_dtype, shape)
        self._subtract = CastingUfunc(self.xp, "subtract", (work_dtype, dtype), dtype, shape)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        scaled = output if self._scaled is None else self._scaled
        self._multiply(trigger_input, self.gain, scaled)
        self._subtract(scaled, auxiliary_inputs[self._alias], output)
