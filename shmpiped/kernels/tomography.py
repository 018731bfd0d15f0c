"""shmpipeline's fused tomographic AO controller (``cpu.tomographic_controller`` and its GPU twin).

One worker does what a tomographic loop with eight Shack-Hartmann wavefront
sensors does per frame:

1. calibrate each image: ``(image - dark) * inverse_flat``;
2. tiled centroids (t x t tiles, [dy, dx] relative to the tile centre, [0, 0]
   for a tile whose sum is not positive), all eight sensors at once;
3. slopes = ``slope_gain * centroids - slope_offset``, laid end to end: sensor
   0's (tiles_y, tiles_x, 2) first;
4. ``residual = reconstructor @ slopes + reconstructor_bias``;
5. ``state = leak * state + control_gain * residual`` (state starts at zero);
6. ``output = clip(command_gain * state - command_offset, command_low, command_high)``
   (maximum with the low bound, then minimum with the high one).

The images come either as eight (rows, cols) trigger streams, whose auxiliary
aliases are ``wfs<i>_dark``, ``wfs<i>_inverse_flat`` and
``wfs<i>_slope_offset``, or as one batched (8, rows, cols) stream with
``wfs_dark``, ``wfs_inverse_flat`` and ``wfs_slope_offset`` of batched shapes.
Both forms compute in one (8, rows, cols) buffer, so the centroid stage is one
set of array calls either way.

Everything is computed in the output's floating dtype; images of another real
dtype (a uint16 camera) are cast into the work buffer, calibrations combine
with it as NumPy/CuPy promote them. The reconstructor must have the output's
dtype: the matrix-vector product then reads it in place (BLAS sgemv
or dgemv, or the device's), where any other dtype would convert the whole
matrix every frame. The per-frame cost is reading that matrix once: 1 GiB for
the shmpipeline example's 4096 x 65536 float32, bounded by memory bandwidth.
``blas_threads`` (1 by default, see ``linear.blas_threads``) sets the worker's
BLAS threads.
"""

from __future__ import annotations

import numpy

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.checks import is_integer, numeric_parameter, stream_dtype
from shmpiped.kernels.linear import blas_threads

SENSORS = 8
#: Per-sensor calibration aliases, without the "wfs<i>_" / "wfs_" prefix.
SENSOR_SUFFIXES = ("dark", "inverse_flat", "slope_offset")
#: Auxiliaries of the actuator space, each of shape (actuators,).
ACTUATOR_ALIASES = ("reconstructor_bias", "command_offset", "command_low", "command_high")
#: Gains of the control law, each 1.0 unless given.
GAIN_PARAMETERS = ("slope_gain", "leak", "control_gain", "command_gain")


def _sensor_alias(batched: bool, index: int, suffix: str) -> str:
    return f"wfs_{suffix}" if batched else f"wfs{index}_{suffix}"


def _expected_aliases(batched: bool) -> set[str]:
    sensors = range(1 if batched else SENSORS)
    aliases = {_sensor_alias(batched, i, suffix) for i in sensors for suffix in SENSOR_SUFFIXES}
    return aliases | {"reconstructor", *ACTUATOR_ALIASES}


def _tile_size(config) -> int:
    value = config.parameters.get("tile_size", 4)
    if not is_integer(value) or value <= 0:
        raise ConfigValidationError(f"kernel {config.name!r} requires 'tile_size' to be a positive integer")
    return int(value)


class TomographicControllerKernel(Kernel):
    """Eight calibrated Shack-Hartmann sensors -> tomographic reconstruction -> clipped DM command.

    shmpipeline 1.3.0 lists this kind among its legacy AO kernels; shmpiped
    keeps it first-class, like ``cpu.shack_hartmann_centroid`` (see
    ``registry.LEGACY_AO_KERNEL_KINDS``): it is the only way to run that
    release's tomographic example, and resolving it does not warn.
    ``borrow_gpu_inputs`` (shmpipeline's GPU option to use the input tensor
    without a copy) is accepted and has no effect: shmpiped always hands the
    kernel zero-copy views of the input slots.
    """

    kind = "cpu.tomographic_controller"
    input_arity = None
    auxiliary_arity = None

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        name = config.name
        if config.trigger_policy != "all_new":
            raise ConfigValidationError(
                f"kernel {name!r} requires trigger_policy 'all_new' (one frame from every sensor per command)"
            )
        inputs = tuple(config.trigger_inputs)
        if len(inputs) not in (1, SENSORS):
            raise ConfigValidationError(
                f"kernel {name!r} takes either one batched (8, rows, cols) input or 8 sensor inputs, "
                f"got {len(inputs)}"
            )
        batched = len(inputs) == 1
        aliases = set(config.auxiliary_aliases)
        expected = _expected_aliases(batched)
        if aliases != expected:
            form = "a batched input" if batched else "8 sensor inputs"
            raise ConfigValidationError(
                f"kernel {name!r} with {form} needs exactly the auxiliary aliases {sorted(expected)}; "
                f"missing: {sorted(expected - aliases)}, not expected: {sorted(aliases - expected)}"
            )
        tile = _tile_size(config)
        for parameter in GAIN_PARAMETERS:
            numeric_parameter(config, parameter, 1.0)
        borrow = config.parameters.get("borrow_gpu_inputs", False)
        if not isinstance(borrow, bool):
            raise ConfigValidationError(f"kernel {name!r} requires 'borrow_gpu_inputs' to be true or false")
        threads = config.parameters.get("blas_threads", 1)
        if not is_integer(threads) or threads <= 0:
            raise ConfigValidationError(f"kernel {name!r} requires 'blas_threads' to be a positive integer")

        shapes = {stream: tuple(shared_memory[stream].shape) for stream in config.all_inputs}
        if batched:
            if len(shapes[inputs[0]]) != 3 or shapes[inputs[0]][0] != SENSORS:
                raise ConfigValidationError(
                    f"kernel {name!r} requires its batched input to have shape (8, rows, cols), "
                    f"not {shapes[inputs[0]]}"
                )
            image = shapes[inputs[0]][1:]
        else:
            image = shapes[inputs[0]]
            if len(image) != 2 or any(shapes[stream] != image for stream in inputs):
                raise ConfigValidationError(
                    f"kernel {name!r} requires its 8 sensor inputs to be 2D images of one shape, "
                    f"got {[shapes[stream] for stream in inputs]}"
                )
        if image[0] % tile or image[1] % tile:
            raise ConfigValidationError(
                f"kernel {name!r} requires image dimensions {image} divisible by tile_size {tile}"
            )
        centroids = (image[0] // tile, image[1] // tile, 2)
        slope_count = SENSORS * centroids[0] * centroids[1] * 2
        stream_of = config.auxiliary_by_alias
        matrix = shapes[stream_of["reconstructor"]]
        if len(matrix) != 2 or matrix[1] != slope_count:
            raise ConfigValidationError(
                f"kernel {name!r} requires reconstructor columns to equal the slope count {slope_count} "
                f"(8 sensors x {centroids[0]} x {centroids[1]} tiles x 2), got shape {matrix}"
            )
        actuators = (matrix[0],)
        output = tuple(shared_memory[config.output].shape)
        if output != actuators:
            raise ConfigValidationError(
                f"kernel {name!r} requires output shape {actuators} (the reconstructor's rows), got {output}"
            )
        expected_shapes = {alias: actuators for alias in ACTUATOR_ALIASES}
        for index in range(1 if batched else SENSORS):
            for suffix, shape in zip(SENSOR_SUFFIXES, (image, image, centroids)):
                expected_shapes[_sensor_alias(batched, index, suffix)] = (SENSORS, *shape) if batched else shape
        for alias, shape in expected_shapes.items():
            if shapes[stream_of[alias]] != shape:
                raise ConfigValidationError(
                    f"kernel {name!r} requires auxiliary {alias!r} ({stream_of[alias]!r}) to have shape {shape}, "
                    f"not {shapes[stream_of[alias]]}"
                )
        cls._check_dtypes(config, shared_memory)

    @classmethod
    def _check_dtypes(cls, config, shared_memory) -> None:
        """A floating output; the reconstructor of that dtype; every other stream real-valued."""
        name = config.name
        work = stream_dtype(shared_memory, config.output)
        if work.kind != "f":
            raise ConfigValidationError(
                f"kernel {name!r} requires a floating-point output (float32 or float64), not {work}"
            )
        matrix = config.auxiliary_by_alias["reconstructor"]
        if stream_dtype(shared_memory, matrix) != work:
            raise ConfigValidationError(
                f"kernel {name!r} requires the reconstructor {matrix!r} to have the output's dtype {work} "
                f"(not {stream_dtype(shared_memory, matrix)}): any other would be converted whole every frame"
            )
        for stream in config.all_inputs:
            if stream_dtype(shared_memory, stream).kind not in "biuf":
                raise ConfigValidationError(
                    f"kernel {name!r} requires real-valued streams, but {stream!r} is "
                    f"{stream_dtype(shared_memory, stream)}"
                )

    def __init__(self, context) -> None:
        super().__init__(context)
        xp = self.xp
        config = context.config
        self.blas_threads = blas_threads(config)  # applied by the manager to the worker's environment
        self.batched = len(config.trigger_inputs) == 1
        work = numpy.dtype(context.output_spec.dtype)
        shape = tuple(context.trigger_input_spec.shape)
        rows, cols = shape[1:] if self.batched else shape
        self.tile_size = tile = _tile_size(config)
        self.gains = {name: numeric_parameter(config, name, 1.0) for name in GAIN_PARAMETERS}
        self._slope_gain, self._leak, self._control_gain, self._command_gain = (
            xp.asarray(self.gains[name], dtype=work) for name in GAIN_PARAMETERS
        )  # 0-d arrays of the work dtype: NumPy applies them faster than Python numbers, without promotion

        self.calibrated = xp.empty((SENSORS, rows, cols), dtype=work)
        tiles_y, tiles_x = rows // tile, cols // tile
        self.slopes = xp.empty(SENSORS * tiles_y * tiles_x * 2, dtype=work)
        self.slopes_by_sensor = self.slopes.reshape(SENSORS, tiles_y, tiles_x, 2)
        self.centroids = TileCentroids(xp, self.calibrated, tile, self.slopes_by_sensor)
        actuators = int(context.output_spec.shape[0])
        self.residual = xp.empty(actuators, dtype=work)
        self.state = xp.zeros(actuators, dtype=work)

        # Per image: its calibration aliases and the buffers it fills (all 8 sensors at once when batched).
        if self.batched:
            targets = [(self.calibrated, self.slopes_by_sensor)]
        else:
            targets = [(self.calibrated[i], self.slopes_by_sensor[i]) for i in range(SENSORS)]
        self._sensors = tuple(
            (*(_sensor_alias(self.batched, i, suffix) for suffix in SENSOR_SUFFIXES), calibrated, slopes)
            for i, (calibrated, slopes) in enumerate(targets)
        )

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        xp = self.xp
        images = (trigger_input,) if self.batched else trigger_input
        for image, (dark, inverse_flat, _, calibrated, _) in zip(images, self._sensors):
            xp.copyto(calibrated, image, casting="unsafe")
            xp.subtract(calibrated, auxiliary_inputs[dark], out=calibrated)
            xp.multiply(calibrated, auxiliary_inputs[inverse_flat], out=calibrated)
        self.centroids.compute()
        xp.multiply(self.slopes, self._slope_gain, out=self.slopes)
        for _, _, slope_offset, _, slopes in self._sensors:
            xp.subtract(slopes, auxiliary_inputs[slope_offset], out=slopes)
        xp.matmul(auxiliary_inputs["reconstructor"], self.slopes, out=self.residual)
        xp.add(self.residual, auxiliary_inputs["reconstructor_bias"], out=self.residual)
        xp.multiply(self.state, self._leak, out=self.state)
        xp.multiply(self.residual, self._control_gain, out=self.residual)
        xp.add(self.state, self.residual, out=self.state)
        xp.multiply(self.state, self._command_gain, out=output)
        xp.subtract(output, auxiliary_inputs["command_offset"], out=output)
        xp.maximum(output, auxiliary_inputs["command_low"], out=output)
        xp.minimum(output, auxiliary_inputs["command_high"], out=output)


class TileCentroids:
    """Tiled centroids of a stack of images, every tile of every image in one set of array calls.

    ``images`` is the (n, H, W) buffer the kernel fills before each call;
    ``out``, of shape (n, H/t, W/t, 2) and the images' dtype, receives
    [dy, dx] per tile. Each run of t pixels along a row is one row of an
    (n*H*W/t, t) matrix: one product with [1, column index] gives every tile
    row's sum and column-weighted sum (NumPy sums a length-t last axis several
    times slower), then the t rows of each tile are summed, the row-weighted
    one with the row index. A tile whose total is not positive gives [0, 0];
    its total is replaced by 1 before the division, so a device never reads the
    mask back. Computed in the images' dtype; every buffer is made here.
    """

    def __init__(self, xp, images, tile: int, out) -> None:
        n, rows, cols = images.shape
        tiles_y, tiles_x = rows // tile, cols // tile
        dtype = images.dtype
        self.xp = xp
        self.segments = images.reshape(n * rows * tiles_x, tile)
        local = xp.arange(tile, dtype=dtype)
        self.weights = xp.stack((xp.ones(tile, dtype=dtype), local), axis=1)  # (t, 2): [1, column index]
        self.row_sums = xp.empty((n * rows * tiles_x, 2), dtype=dtype)  # [sum, column-weighted sum]
        by_tile = self.row_sums.reshape(n, tiles_y, tile, tiles_x, 2)
        self._by_tile, self._tile_row_sums = by_tile, by_tile[..., 0]
        self.row_weighted = xp.empty((n, tiles_y, tile, tiles_x), dtype=dtype)
        # Full-size row index: a broadcast operand would make NumPy buffer (allocate) per call.
        self.row_index = xp.ascontiguousarray(xp.broadcast_to(local.reshape(tile, 1), self.row_weighted.shape))
        self.sums = xp.empty((n, tiles_y, tiles_x, 2), dtype=dtype)  # [total, column-weighted total]
        self.totals, self._column_moments = self.sums[..., 0], self.sums[..., 1]
        self.empty = xp.empty((n, tiles_y, tiles_x), dtype=bool)
        self.center = xp.asarray((tile - 1) / 2.0, dtype=dtype)
        self._zero = xp.zeros((), dtype=dtype)
        self._one = xp.ones((), dtype=dtype)
        self.planes = (out[..., 0], out[..., 1])  # strided views, made once

    def compute(self) -> None:
        """Write the centroids of the images' current contents into ``out``."""
        xp = self.xp
        dy, dx = self.planes
        xp.matmul(self.segments, self.weights, out=self.row_sums)
        xp.sum(self._by_tile, axis=2, out=self.sums)
        xp.multiply(self._tile_row_sums, self.row_index, out=self.row_weighted)
        xp.sum(self.row_weighted, axis=2, out=dy)
        xp.copyto(dx, self._column_moments)
        xp.less_equal(self.totals, self._zero, out=self.empty)
        xp.copyto(self.totals, self._one, where=self.empty)
        for plane in self.planes:
            xp.divide(plane, self.totals, out=plane)
            xp.subtract(plane, self.center, out=plane)
            xp.copyto(plane, self._zero, where=self.empty)
