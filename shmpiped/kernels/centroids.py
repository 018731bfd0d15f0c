"""Centroid kernels: spot_centroid, the legacy shack_hartmann_centroid (alias centroid)
and the legacy tip_tilt_controller.

Centroids are accumulated in float64 whatever the image dtype; the plans
below own every buffer, index grid and weight, made once in ``__init__``.
"""

from __future__ import annotations

from types import ModuleType

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.checks import (
    is_integer,
    numeric_parameter,
    require_positive_weight_power,
    stream_dtype,
)

FLOAT64 = numpy.dtype(numpy.float64)


class SpotCentroidPlan:
    """One intensity-weighted centroid of an (H, W) image, relative to the image centre.

    Each pixel ``v = pixel - background`` counts only where ``v > threshold``
    and is weighted by ``v ** weight_power``; the result is ``[cy - (H-1)/2,
    cx - (W-1)/2]``, or zeros when the total weight is not positive.

    ``compute`` never reads a value back to the host (on a GPU that would wait
    for the device every frame): when the total is not positive, the sums are
    replaced by [centre row, centre column, 1], which give exactly [0, 0]. The
    parameters are 0-d float64 arrays, which NumPy applies faster than Python
    numbers, with the same result.
    """

    def __init__(self, xp: ModuleType, shape, threshold=0.0, background=0.0, weight_power=1.0) -> None:
        rows, cols = (int(n) for n in shape)
        self.xp = xp
        self.threshold = xp.asarray(threshold, dtype=FLOAT64)
        self.background = xp.asarray(background, dtype=FLOAT64)
        self.weight_power = xp.asarray(weight_power, dtype=FLOAT64)
        self._subtract_background = background != 0
        self._raise_to_power = weight_power != 1
        self.weights = xp.empty((rows, cols), dtype=FLOAT64)
        self.rejected = xp.empty((rows, cols), dtype=bool)
        # Row and column profiles side by side, so one multiply weights both by their index.
        self.profiles = xp.empty(rows + cols, dtype=FLOAT64)
        self.row_sums, self.col_sums = self.profiles[:rows], self.profiles[rows:]
        self.index = xp.concatenate((xp.arange(rows, dtype=FLOAT64), xp.arange(cols, dtype=FLOAT64)))
        self.weighted_profiles = xp.empty(rows + cols, dtype=FLOAT64)
        self._row_weighted, self._col_weighted = self.weighted_profiles[:rows], self.weighted_profiles[rows:]
        self.sums = xp.empty(3, dtype=FLOAT64)  # [sum(w * row), sum(w * col), sum(w)]
        self.moments = self.sums[:2]
        self._row_moment, self._col_moment, self.total = self.sums[0, ...], self.sums[1, ...], self.sums[2, ...]
        self.center = xp.asarray([(rows - 1) / 2.0, (cols - 1) / 2.0], dtype=FLOAT64)
        self.no_weight = xp.empty((), dtype=bool)
        self._no_weight_sums = xp.asarray([(rows - 1) / 2.0, (cols - 1) / 2.0, 1.0], dtype=FLOAT64)
        self.position = xp.empty(2, dtype=FLOAT64)
        self._zero = xp.zeros((), dtype=FLOAT64)

    def compute(self, image, out) -> None:
        """Write [dy, dx] into ``out`` (shape (2,), any dtype)."""
        xp = self.xp
        weights = self.weights
        xp.copyto(weights, image, casting="unsafe")
        if self._subtract_background:
            xp.subtract(weights, self.background, out=weights)
        xp.less_equal(weights, self.threshold, out=self.rejected)
        xp.copyto(weights, self._zero, where=self.rejected)
        if self._raise_to_power:
            xp.power(weights, self.weight_power, out=weights)
        xp.sum(weights, axis=1, out=self.row_sums)
        xp.sum(weights, axis=0, out=self.col_sums)
        xp.sum(self.row_sums, out=self.total)
        xp.multiply(self.profiles, self.index, out=self.weighted_profiles)
        xp.sum(self._row_weighted, out=self._row_moment)
        xp.sum(self._col_weighted, out=self._col_moment)
        xp.less_equal(self.total, self._zero, out=self.no_weight)
        xp.copyto(self.sums, self._no_weight_sums, where=self.no_weight)  # centre / 1 - centre == 0
        xp.divide(self.moments, self.total, out=self.position)
        xp.subtract(self.position, self.center, out=self.position)
        xp.copyto(out, self.position, casting="unsafe")


def _spot_parameters(config) -> tuple:
    threshold = numeric_parameter(config, "threshold", 0.0)
    background = numeric_parameter(config, "background", 0.0)
    weight_power = numeric_parameter(config, "weight_power", 1.0)
    require_positive_weight_power(config, weight_power)
    return threshold, background, weight_power


class SpotCentroidKernel(Kernel):
    """output (2,) = centroid of one spot in a 2-D image, relative to its centre."""

    kind = "cpu.spot_centroid"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        if len(shared_memory[config.input].shape) != 2:
            raise ConfigValidationError(f"kernel {config.name!r} requires a 2D input image")
        if tuple(shared_memory[config.output].shape) != (2,):
            raise ConfigValidationError(f"kernel {config.name!r} requires output shape (2,)")
        if stream_dtype(shared_memory, config.input) != stream_dtype(shared_memory, config.output):
            raise ConfigValidationError(f"kernel {config.name!r} requires matching image/output dtypes")
        _spot_parameters(config)

    def __init__(self, context) -> None:
        super().__init__(context)
        threshold, background, weight_power = _spot_parameters(context.config)
        self._plan = SpotCentroidPlan(
            self.xp, context.trigger_input_spec.shape, threshold, background, weight_power
        )

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self._plan.compute(trigger_input, output)


class TileCentroidPlan:
    """Per-tile centroids of an (H, W) image cut into t x t tiles, vectorised.

    The float64 copy of the image is viewed as (H/t, t, W/t, t); row and
    column profiles of every tile are reduced at once. Tiles whose sum is
    not positive give [0, 0]. The constants are 0-d float64 arrays made once:
    NumPy converts a Python number on every call, and ``cupy.copyto`` makes a
    host array for one.
    """

    def __init__(self, xp: ModuleType, shape, tile_size: int) -> None:
        rows, cols = (int(n) for n in shape)
        t = int(tile_size)
        tiles_y, tiles_x = rows // t, cols // t
        self.xp = xp
        self.image = xp.empty((rows, cols), dtype=FLOAT64)
        self.tiles = self.image.reshape(tiles_y, t, tiles_x, t)
        self.row_profiles = xp.empty((tiles_y, t, tiles_x), dtype=FLOAT64)
        self.col_profiles = xp.empty((tiles_y, tiles_x, t), dtype=FLOAT64)
        # Full-size weights: a broadcast operand would make NumPy buffer (allocate) per call.
        local = xp.arange(t, dtype=FLOAT64)
        self.row_weights = xp.ascontiguousarray(xp.broadcast_to(local.reshape(1, t, 1), self.row_profiles.shape))
        self.col_weights = xp.ascontiguousarray(xp.broadcast_to(local, self.col_profiles.shape))
        self.totals = xp.empty((tiles_y, tiles_x), dtype=FLOAT64)
        self.empty = xp.empty((tiles_y, tiles_x), dtype=bool)
        self.slopes = xp.empty((tiles_y, tiles_x, 2), dtype=FLOAT64)
        self._slope_rows = self.slopes[..., 0]  # strided views, made once
        self._slope_cols = self.slopes[..., 1]
        self.center = xp.asarray((t - 1) / 2.0, dtype=FLOAT64)
        self._zero = xp.zeros((), dtype=FLOAT64)
        self._one = xp.ones((), dtype=FLOAT64)

    def compute(self, image, out) -> None:
        """Write (H/t, W/t, 2) [dy, dx] per tile into ``out``."""
        xp = self.xp
        xp.copyto(self.image, image, casting="unsafe")
        xp.sum(self.tiles, axis=3, out=self.row_profiles)
        xp.sum(self.row_profiles, axis=1, out=self.totals)
        xp.multiply(self.row_profiles, self.row_weights, out=self.row_profiles)
        xp.sum(self.row_profiles, axis=1, out=self._slope_rows)
        xp.sum(self.tiles, axis=1, out=self.col_profiles)
        xp.multiply(self.col_profiles, self.col_weights, out=self.col_profiles)
        xp.sum(self.col_profiles, axis=2, out=self._slope_cols)
        xp.less_equal(self.totals, self._zero, out=self.empty)
        xp.copyto(self.totals, self._one, where=self.empty)
        for plane in (self._slope_rows, self._slope_cols):
            xp.divide(plane, self.totals, out=plane)
            xp.subtract(plane, self.center, out=plane)
            xp.copyto(plane, self._zero, where=self.empty)
        xp.copyto(out, self.slopes, casting="unsafe")


class ShackHartmannCentroidKernel(Kernel):
    """output (H/t, W/t, 2) = per-tile [dy, dx] relative to the tile centre.

    shmpipeline marks this kind legacy; shmpiped keeps it first-class (it is the
    first stage of every Shack-Hartmann loop, the demo's included).  Its alias
    ``cpu.centroid`` stays deprecated.
    """

    kind = "cpu.shack_hartmann_centroid"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        tile_size = config.parameters.get("tile_size")
        if not is_integer(tile_size) or tile_size <= 0:
            raise ConfigValidationError(f"kernel {config.name!r} requires a positive integer 'tile_size'")
        image = tuple(shared_memory[config.input].shape)
        output = tuple(shared_memory[config.output].shape)
        if len(image) != 2:
            raise ConfigValidationError(f"kernel {config.name!r} requires a 2D input image")
        if len(output) != 3 or output[2] != 2:
            raise ConfigValidationError(f"kernel {config.name!r} requires output shape (rows, cols, 2)")
        if image[0] % tile_size or image[1] % tile_size:
            raise ConfigValidationError(
                f"kernel {config.name!r} requires image dimensions divisible by tile_size"
            )
        expected = (image[0] // tile_size, image[1] // tile_size, 2)
        if output != expected:
            raise ConfigValidationError(f"kernel {config.name!r} requires output shape {expected}")
        if stream_dtype(shared_memory, config.input) != stream_dtype(shared_memory, config.output):
            raise ConfigValidationError(f"kernel {config.name!r} requires matching image/output dtypes")

    def __init__(self, context) -> None:
        super().__init__(context)
        self.tile_size = int(context.config.parameters["tile_size"])
        self._plan = TileCentroidPlan(self.xp, context.trigger_input_spec.shape, self.tile_size)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self._plan.compute(trigger_input, output)


class CentroidKernel(ShackHartmannCentroidKernel):
    """Legacy alias of shack_hartmann_centroid."""

    kind = "cpu.centroid"
    deprecated = True


class TipTiltControllerKernel(Kernel):
    """Legacy: spot centroid c, state = leak*state + control_gain*c, output = M @ state + b.

    Auxiliary #1 is the 2x2 matrix M, #2 the (2,) bias b. Integer streams are
    computed in float64 and cast once per frame.
    """

    kind = "cpu.tip_tilt_controller"
    auxiliary_arity = 2
    deprecated = True

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        image = tuple(shared_memory[config.input].shape)
        matrix = tuple(shared_memory[config.auxiliary[0].name].shape)
        bias = tuple(shared_memory[config.auxiliary[1].name].shape)
        output = tuple(shared_memory[config.output].shape)
        if len(image) != 2 or matrix != (2, 2):
            raise ConfigValidationError(f"kernel {config.name!r} requires a 2D image and 2x2 matrix")
        if bias != (2,) or output != (2,):
            raise ConfigValidationError(f"kernel {config.name!r} requires 2-vector bias and output")
        streams = (config.input, config.auxiliary[0].name, config.auxiliary[1].name, config.output)
        if len({stream_dtype(shared_memory, name) for name in streams}) != 1:
            raise ConfigValidationError(f"kernel {config.name!r} requires matching dtypes")
        numeric_parameter(config, "leak", 1.0)
        numeric_parameter(config, "control_gain", 1.0)
        _spot_parameters(config)

    def __init__(self, context) -> None:
        super().__init__(context)
        xp = self.xp
        config = context.config
        dtype = numpy.dtype(context.output_spec.dtype)
        work = dtype if dtype.kind in "fc" else FLOAT64
        self.leak = numeric_parameter(config, "leak", 1.0)
        self.control_gain = numeric_parameter(config, "control_gain", 1.0)
        threshold, background, weight_power = _spot_parameters(config)
        self._plan = SpotCentroidPlan(xp, context.trigger_input_spec.shape, threshold, background, weight_power)
        self._matrix_alias = config.auxiliary[0].alias
        self._bias_alias = config.auxiliary[1].alias
        self.state = xp.zeros(2, dtype=work)
        self._centroid = xp.empty(2, dtype=work)
        self._matrix = xp.empty((2, 2), dtype=work)
        self._bias = xp.empty(2, dtype=work)
        self._command = xp.empty(2, dtype=work)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        xp = self.xp
        self._plan.compute(trigger_input, self._centroid)
        xp.multiply(self.state, self.leak, out=self.state)
        xp.multiply(self._centroid, self.control_gain, out=self._centroid)
        xp.add(self.state, self._centroid, out=self.state)
        xp.copyto(self._matrix, auxiliary_inputs[self._matrix_alias], casting="unsafe")
        xp.copyto(self._bias, auxiliary_inputs[self._bias_alias], casting="unsafe")
        xp.matmul(self._matrix, self.state, out=self._command)
        xp.add(self._command, self._bias, out=self._command)
        xp.copyto(output, self._command, casting="unsafe")
