"""The reduce kernel: sum, mean, max or min of the whole input into a one-element output."""

from __future__ import annotations

import math

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.checks import require_same_dtype

REDUCE_OPERATIONS = ("sum", "mean", "max", "min")


def reduce_operation(config) -> str:
    """The configured reduction: ``parameters.operation``, else the ``operation`` field, else mean."""
    operation = config.parameters.get("operation")
    if operation is None:
        operation = config.operation or "mean"
    return operation


class ReduceKernel(Kernel):
    """output.flat[0] = reduction(input)."""

    kind = "cpu.reduce"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        operation = reduce_operation(config)
        if operation not in REDUCE_OPERATIONS:
            raise ConfigValidationError(
                f"kernel {config.name!r}: unsupported reduce operation {operation!r}; "
                f"expected one of: {', '.join(REDUCE_OPERATIONS)}"
            )
        output_shape = tuple(shared_memory[config.output].shape)
        if math.prod(output_shape) != 1:
            raise ConfigValidationError(
                f"kernel {config.name!r}: reduce output must be a scalar "
                f"(single-element array), got shape {output_shape}"
            )
        require_same_dtype(config, shared_memory, (config.input, config.output), "reduce input/output")

    def __init__(self, context) -> None:
        super().__init__(context)
        xp = self.xp
        self.operation = reduce_operation(context.config)
        self._reduce = getattr(xp, self.operation)
        spec = context.trigger_input_spec
        dtype = numpy.dtype(spec.dtype)
        # NumPy's own accumulator dtype (int16 sums in int64, integer means in float64).
        accumulator = getattr(numpy, self.operation)(numpy.ones(1, dtype=dtype)).dtype
        self._converted = None
        self._accumulator = None
        if accumulator != dtype:
            self._converted = xp.empty(tuple(spec.shape), dtype=accumulator)
            self._accumulator = xp.empty((), dtype=accumulator)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        target = output.reshape(())
        if self._converted is None:
            self._reduce(trigger_input, out=target)
            return
        self.xp.copyto(self._converted, trigger_input, casting="unsafe")
        self._reduce(self._converted, out=self._accumulator)
        self.xp.copyto(target, self._accumulator, casting="unsafe")
