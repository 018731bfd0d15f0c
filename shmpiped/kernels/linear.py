"""Linear control kernels: affine_transform (y = A x + b) and leaky_integrator."""

from __future__ import annotations

import math

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.checks import (
    is_integer,
    numeric_parameter,
    require_same_shape_and_dtype,
    stream_dtype,
)


def blas_threads(kernel_config) -> int:
    """BLAS threads of a kernel's worker process: its ``blas_threads`` parameter, 1 by default.

    One by default because a worker is pinned to one CPU, where more BLAS
    threads only take turns with the loop (milliseconds of jitter on large
    matrices).  The manager starts the worker with OPENBLAS_NUM_THREADS,
    OMP_NUM_THREADS and MKL_NUM_THREADS set to it, before NumPy loads BLAS.
    """
    value = kernel_config.parameters.get("blas_threads", 1)
    return value if isinstance(value, int) and value > 0 else 1  # an invalid value fails validation


#: The variables through which OpenBLAS, OpenMP and MKL builds of NumPy take their thread count.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class AffineTransformKernel(Kernel):
    """output = A @ input + b; auxiliary #1 is the matrix A (m, n), #2 the offset b (m,)."""

    kind = "cpu.affine_transform"
    auxiliary_arity = 2

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        name = config.name
        vector = tuple(shared_memory[config.input].shape)
        matrix = tuple(shared_memory[config.auxiliary[0].name].shape)
        offset = tuple(shared_memory[config.auxiliary[1].name].shape)
        output = tuple(shared_memory[config.output].shape)
        if len(vector) != 1:
            raise ConfigValidationError(f"kernel {name!r} requires a 1D input vector")
        if len(matrix) != 2:
            raise ConfigValidationError(f"kernel {name!r} requires a 2D transform matrix")
        if len(offset) != 1:
            raise ConfigValidationError(f"kernel {name!r} requires a 1D offset vector")
        if len(output) != 1:
            raise ConfigValidationError(f"kernel {name!r} requires a 1D output vector")
        if matrix[1] != vector[0]:
            raise ConfigValidationError(
                f"kernel {name!r} requires matrix columns to match input vector length"
            )
        if matrix[0] != offset[0]:
            raise ConfigValidationError(
                f"kernel {name!r} requires matrix rows to match offset vector length"
            )
        if output[0] != matrix[0]:
            raise ConfigValidationError(
                f"kernel {name!r} requires output vector length to match matrix rows"
            )
        streams = (config.input, config.auxiliary[0].name, config.auxiliary[1].name, config.output)
        if len({stream_dtype(shared_memory, stream) for stream in streams}) != 1:
            raise ConfigValidationError(
                f"kernel {name!r} requires matching dtypes across all affine inputs and outputs"
            )
        threads = config.parameters.get("blas_threads", 1)
        if not is_integer(threads) or threads <= 0:
            raise ConfigValidationError(
                f"kernel {name!r} requires 'blas_threads' to be a positive integer"
            )

    def __init__(self, context) -> None:
        super().__init__(context)
        self._matrix_alias = context.config.auxiliary[0].alias
        self._offset_alias = context.config.auxiliary[1].alias
        self.blas_threads = blas_threads(context.config)  # applied by the manager to the worker's environment

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        xp = self.xp
        xp.matmul(auxiliary_inputs[self._matrix_alias], trigger_input, out=output)
        xp.add(output, auxiliary_inputs[self._offset_alias], out=output)


LEAKY_INTEGRATOR_ALIASES = ("gain", "leak", "override_enabled")


def _parameter_required(config, name: str) -> bool:
    """leak/gain parameters are needed unless bound as auxiliaries without an override switch."""
    aliases = {binding.alias for binding in config.auxiliary}
    return name not in aliases or "override_enabled" in aliases


class LeakyIntegratorKernel(Kernel):
    """state = leak * state + gain * input; output = state (state starts at zero).

    leak and gain come from the parameters or from single-element auxiliary
    streams of those aliases. With an ``override_enabled`` auxiliary bound, the
    auxiliary leak/gain apply only while it is non-zero, the parameters otherwise.
    Integer streams integrate in float64 and are cast once per frame.
    """

    kind = "cpu.leaky_integrator"
    auxiliary_arity = None

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        require_same_shape_and_dtype(config, shared_memory)
        if len(shared_memory[config.input].shape) != 1:
            raise ConfigValidationError(f"kernel {config.name!r} requires 1D input and output vectors")
        for binding in config.auxiliary:
            if binding.alias not in LEAKY_INTEGRATOR_ALIASES:
                raise ConfigValidationError(
                    f"kernel {config.name!r} does not accept auxiliary alias {binding.alias!r}; "
                    f"allowed aliases are: {', '.join(LEAKY_INTEGRATOR_ALIASES)}"
                )
            spec = shared_memory[binding.name]
            if math.prod(tuple(spec.shape)) != 1 or numpy.dtype(spec.dtype).kind not in "biuf":
                raise ConfigValidationError(
                    f"kernel {config.name!r} requires auxiliary {binding.alias!r} "
                    "to be a single-element numeric stream"
                )
        for name in ("leak", "gain"):
            if _parameter_required(config, name) or name in config.parameters:
                numeric_parameter(config, name)

    def __init__(self, context) -> None:
        super().__init__(context)
        xp = self.xp
        config = context.config
        shape = tuple(context.output_spec.shape)
        dtype = numpy.dtype(context.output_spec.dtype)
        work = dtype if dtype.kind in "fc" else numpy.dtype(numpy.float64)
        parameters = config.parameters
        self.leak = parameters.get("leak")
        self.gain = parameters.get("gain")
        aliases = {binding.alias for binding in config.auxiliary}
        self._leak_alias = "leak" if "leak" in aliases else None
        self._gain_alias = "gain" if "gain" in aliases else None
        self._override_alias = "override_enabled" if "override_enabled" in aliases else None
        self.state = xp.zeros(shape, dtype=work)
        self._gain_term = xp.empty(shape, dtype=work)
        self._input_buffer = None if work == dtype else xp.empty(shape, dtype=work)
        # [leak, gain] as 0-d arrays (NumPy multiplies by them faster than by Python numbers):
        # the parameters, overwritten each frame by the auxiliaries that apply.
        parameter_values = [0 if value is None else value for value in (self.leak, self.gain)]
        self._coefficients = xp.asarray(parameter_values, dtype=work)
        self._leak_coefficient, self._gain_coefficient = self._coefficients[0, ...], self._coefficients[1, ...]
        # Whether the auxiliaries apply: always without a switch; with one, set on the device
        # each frame (never read back to the host) after the parameters are restored.
        self._use_auxiliary = xp.ones((), dtype=bool)
        self._parameters = self._coefficients.copy() if self._override_alias is not None else None

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        xp = self.xp
        use_auxiliary = self._use_auxiliary
        # copyto drops the unit dimensions of a single-element stream copied into a 0-d array.
        if self._override_alias is not None:
            switch = auxiliary_inputs[self._override_alias]
            xp.copyto(use_auxiliary, switch, casting="unsafe")  # the cast to bool tests non-zero
            xp.copyto(self._coefficients, self._parameters)
        if self._leak_alias is not None:
            leak = auxiliary_inputs[self._leak_alias]
            xp.copyto(self._leak_coefficient, leak, casting="unsafe", where=use_auxiliary)
        if self._gain_alias is not None:
            gain = auxiliary_inputs[self._gain_alias]
            xp.copyto(self._gain_coefficient, gain, casting="unsafe", where=use_auxiliary)
        source = trigger_input
        if self._input_buffer is not None:
            xp.copyto(self._input_buffer, trigger_input, casting="unsafe")
            source = self._input_buffer
        xp.multiply(self.state, self._leak_coefficient, out=self.state)
        xp.multiply(source, self._gain_coefficient, out=self._gain_term)
        xp.add(self.state, self._gain_term, out=self.state)
        xp.copyto(output, self.state, casting="unsafe")
