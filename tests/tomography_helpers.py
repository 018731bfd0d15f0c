"""The tomographic controller's test inputs and its plain NumPy reference.

Shared by tests/test_tomography.py and the GPU-twin checks of
tests/test_kernels_gpu_maths.py. Streams are named after the aliases (the
eight-sensor form's ``wfs3_dark`` alias reads stream ``wfs3_dark``), images
are ``wfs<i>`` (or ``wfs`` batched) and the command is ``y``.
"""

from __future__ import annotations

import numpy as np

SENSORS = 8
ACTUATOR_ALIASES = ("reconstructor_bias", "command_offset", "command_low", "command_high")
PARAMETERS = {"tile_size": 4, "slope_gain": 1.5, "leak": 0.9, "control_gain": 0.4, "command_gain": 2.0}


def image_streams(batched: bool) -> tuple[str, ...]:
    return ("wfs",) if batched else tuple(f"wfs{i}" for i in range(SENSORS))


def sensor_aliases(batched: bool, suffix: str) -> tuple[str, ...]:
    return (f"wfs_{suffix}",) if batched else tuple(f"wfs{i}_{suffix}" for i in range(SENSORS))


def layouts(batched: bool, rows: int = 8, cols: int = 12, tile: int = 4, actuators: int = 5,
            dtype: str = "float32", image_dtype: str | None = None) -> dict:
    """name -> (shape, dtype) of every stream of one controller (kernel_helpers.stream_specs' form)."""
    lead = (SENSORS,) if batched else ()
    image, centroids = (*lead, rows, cols), (*lead, rows // tile, cols // tile, 2)
    slopes = SENSORS * (rows // tile) * (cols // tile) * 2
    out = {name: (image, image_dtype or dtype) for name in image_streams(batched)}
    for suffix, shape in (("dark", image), ("inverse_flat", image), ("slope_offset", centroids)):
        out.update((alias, (shape, dtype)) for alias in sensor_aliases(batched, suffix))
    out["reconstructor"] = ((actuators, slopes), dtype)
    out.update((alias, ((actuators,), dtype)) for alias in ACTUATOR_ALIASES)
    out["y"] = ((actuators,), dtype)
    return out


def config_fields(batched: bool, parameters: dict | None = None) -> dict:
    """KernelConfig fields (inputs, outputs, auxiliary, parameters, trigger_policy) for ``layouts``."""
    aliases = [alias for suffix in ("dark", "inverse_flat", "slope_offset") for alias in sensor_aliases(batched, suffix)]
    aliases += ["reconstructor", *ACTUATOR_ALIASES]
    return {"inputs": image_streams(batched), "outputs": ("y",), "auxiliary": {alias: alias for alias in aliases},
            "parameters": dict(PARAMETERS if parameters is None else parameters), "trigger_policy": "all_new"}


def random_images(rng, rows=8, cols=12, tile=4, dtype="float32") -> np.ndarray:
    """Eight (rows, cols) images, with an all-zero tile and a negative-sum tile in sensor 0."""
    images = rng.uniform(0.0, 10.0, (SENSORS, rows, cols))
    images[0, :tile, :tile] = 0.0
    images[0, :tile, tile:2 * tile] = -1.0
    return images.astype(dtype)


def random_calibration(rng, rows=8, cols=12, tile=4, actuators=5, dtype="float32") -> dict:
    """Calibrations by alias for the batched form (see ``by_sensor`` for the eight-sensor form).

    The darks leave the test tiles of ``random_images`` empty and negative; the
    command bounds are narrow enough that some actuators clip.
    """
    slopes = SENSORS * (rows // tile) * (cols // tile) * 2
    dark = rng.uniform(-0.5, 0.5, (SENSORS, rows, cols))
    dark[0, :tile, :2 * tile] = 0.0
    values = {
        "wfs_dark": dark,
        "wfs_inverse_flat": rng.uniform(0.5, 1.5, (SENSORS, rows, cols)),
        "wfs_slope_offset": rng.uniform(-0.1, 0.1, (SENSORS, rows // tile, cols // tile, 2)),
        "reconstructor": rng.standard_normal((actuators, slopes)) * 0.2,
        "reconstructor_bias": rng.uniform(-0.2, 0.2, actuators),
        "command_offset": rng.uniform(-0.2, 0.2, actuators),
        "command_low": np.full(actuators, -1.0),
        "command_high": np.full(actuators, 1.0),
    }
    return {alias: value.astype(dtype) for alias, value in values.items()}


def by_sensor(calibration: dict) -> dict:
    """The batched calibrations split into the eight-sensor form's aliases."""
    out = {alias: value for alias, value in calibration.items() if not alias.startswith("wfs_")}
    for suffix in ("dark", "inverse_flat", "slope_offset"):
        for i in range(SENSORS):
            out[f"wfs{i}_{suffix}"] = calibration[f"wfs_{suffix}"][i]
    return out


def tile_centroids(image: np.ndarray, tile: int) -> np.ndarray:
    """[dy, dx] of every tile relative to its centre, [0, 0] where the tile's sum is not positive."""
    rows, cols = image.shape
    blocks = np.asarray(image, np.float64).reshape(rows // tile, tile, cols // tile, tile).transpose(0, 2, 1, 3)
    index = np.arange(tile, dtype=np.float64)
    total = blocks.sum(axis=(2, 3))
    moments = np.stack([(blocks * index[:, None]).sum(axis=(2, 3)), (blocks * index).sum(axis=(2, 3))], axis=-1)
    safe = np.where(total > 0, total, 1.0)[..., None]
    return np.where((total > 0)[..., None], moments / safe - (tile - 1) / 2, 0.0)


class ReferenceController:
    """The controller's maths in float64, one frame at a time, from the batched calibrations."""

    def __init__(self, calibration: dict, parameters: dict | None = None) -> None:
        self.calibration = {alias: np.asarray(value, np.float64) for alias, value in calibration.items()}
        self.parameters = {"tile_size": 4, "slope_gain": 1.0, "leak": 1.0, "control_gain": 1.0,
                           "command_gain": 1.0, **(PARAMETERS if parameters is None else parameters)}
        self.state = np.zeros(self.calibration["reconstructor"].shape[0])

    def slopes(self, images: np.ndarray) -> np.ndarray:
        c, p = self.calibration, self.parameters
        calibrated = (np.asarray(images, np.float64) - c["wfs_dark"]) * c["wfs_inverse_flat"]
        centroids = np.stack([tile_centroids(image, p["tile_size"]) for image in calibrated])
        return (p["slope_gain"] * centroids - c["wfs_slope_offset"]).reshape(-1)

    def step(self, images: np.ndarray) -> np.ndarray:
        c, p = self.calibration, self.parameters
        residual = c["reconstructor"] @ self.slopes(images) + c["reconstructor_bias"]
        self.state = p["leak"] * self.state + p["control_gain"] * residual
        command = p["command_gain"] * self.state - c["command_offset"]
        return np.minimum(np.maximum(command, c["command_low"]), c["command_high"])


def frames(batched: bool, count: int = 3, seed: int = 7) -> tuple[list, list]:
    """``count`` frames as (trigger input, auxiliary inputs by alias), and the reference's commands."""
    rng = np.random.default_rng(seed)
    calibration = random_calibration(rng)
    auxiliary = calibration if batched else by_sensor(calibration)
    reference = ReferenceController(calibration)
    inputs, expected = [], []
    for _ in range(count):
        images = random_images(rng)
        inputs.append((images if batched else tuple(images), auxiliary))
        expected.append(reference.step(images))
    return inputs, expected
