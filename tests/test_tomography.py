"""cpu.tomographic_controller and gpu.tomographic_controller: maths, validation, real workers, full size.

The maths is checked against the float64 NumPy reference of tests/tomography_helpers.py in both
input forms (eight sensor streams, one batched (8, rows, cols) stream), directly and through real
worker processes; the GPU twin through the emulated device (and a real one where there is one).
The GPU twin's maths on a CuPy stand-in is in tests/test_kernels_gpu_maths.py with the other twins.
The last test runs tests/tomography_full_size.yaml's loop (1 GiB reconstructor) at the 20 Hz its
source is set to, with the test writing the cameras, and checks the commands it produces.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from shmpiped.kernels.tomography import TomographicControllerKernel

from . import tomography_helpers as th
from .conftest import wait_for
from .kernel_helpers import (
    ALLOCATION_LIMIT,
    REGISTRY,
    build_kernel,
    kernel_config,
    peak_allocation,
    stream_specs,
    validation_error,
)

KIND = "cpu.tomographic_controller"
FORMS = [pytest.param(False, id="eight-streams"), pytest.param(True, id="batched")]
FULL_SIZE = Path(__file__).with_name("tomography_full_size.yaml")

def controller(batched, **layout):
    return build_kernel(KIND, th.layouts(batched, **layout), **th.config_fields(batched))


# ------------------------------------------------------------------------------------ maths


@pytest.mark.parametrize("batched", FORMS)
def test_the_commands_match_the_numpy_reference(batched):
    kernel = controller(batched)
    inputs, expected = th.frames(batched, count=4)
    clipped = 0
    for frame, ((images, auxiliary), reference) in enumerate(zip(inputs, expected)):
        output = np.full(5, 77.0, np.float32)
        kernel.compute_into(images, output, auxiliary)
        np.testing.assert_allclose(output, reference, rtol=1e-5, atol=1e-5, err_msg=f"frame {frame}")
        clipped += int(np.sum(np.abs(reference) == 1.0))
    assert clipped, "no actuator reached the command bounds: the clip went untested"


def test_empty_and_negative_tiles_give_zero_centroids():
    kernel = controller(True)
    inputs, _ = th.frames(True, count=1)
    images, auxiliary = inputs[0]
    auxiliary = {**auxiliary, "wfs_slope_offset": np.zeros_like(auxiliary["wfs_slope_offset"])}
    kernel.compute_into(images, np.empty(5, np.float32), auxiliary)
    slopes = kernel.slopes.reshape(8, 2, 3, 2)
    assert np.all(slopes[0, 0, :2] == 0.0)  # sensor 0's first two tiles: sum 0, then negative
    assert np.all(slopes[0, 0, 2] != 0.0) and np.all(slopes[1:] != 0.0)


def test_an_integer_camera_is_calibrated_in_the_output_dtype():
    rng = np.random.default_rng(3)
    calibration = th.random_calibration(rng)
    images = rng.integers(0, 4000, (8, 8, 12)).astype(np.uint16)
    kernel = build_kernel(KIND, th.layouts(True, image_dtype="uint16"), **th.config_fields(True))
    output = np.empty(5, np.float32)
    kernel.compute_into(images, output, calibration)
    np.testing.assert_allclose(output, th.ReferenceController(calibration).step(images), rtol=1e-5, atol=1e-5)


def test_float64_streams_compute_in_float64():
    rng = np.random.default_rng(4)
    calibration = th.random_calibration(rng, dtype="float64")
    images = th.random_images(rng, dtype="float64")
    kernel = build_kernel(KIND, th.layouts(True, dtype="float64"), **th.config_fields(True))
    output = np.empty(5)
    kernel.compute_into(images, output, calibration)
    assert kernel.slopes.dtype == np.float64
    np.testing.assert_allclose(output, th.ReferenceController(calibration).step(images), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", FORMS)
def test_nothing_is_allocated_per_frame(batched):
    layout = {"rows": 64, "cols": 64, "actuators": 64}  # every buffer >= 64 KiB
    kernel = controller(batched, **layout)
    rng = np.random.default_rng(5)
    calibration = th.random_calibration(rng, rows=64, cols=64, actuators=64)
    images = th.random_images(rng, rows=64, cols=64)
    auxiliary = calibration if batched else th.by_sensor(calibration)
    trigger = images if batched else tuple(images)
    output = np.empty(64, np.float32)
    assert peak_allocation(lambda: kernel.compute_into(trigger, output, auxiliary)) < ALLOCATION_LIMIT


def test_the_kind_is_first_class_and_keeps_its_blas_threads():
    """shmpipeline calls it a legacy AO kind; here it resolves without a DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert REGISTRY.get(KIND) is TomographicControllerKernel
    fields = th.config_fields(True, {"blas_threads": 2})
    assert build_kernel(KIND, th.layouts(True), **fields).blas_threads == 2


# ------------------------------------------------------------------------------- validation


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def _case(batched=False, layout=None, parameters=None, **fields):
    """(layouts, config fields) of a controller with the given changes."""
    layouts = {**th.layouts(batched), **(layout or {})}
    config = th.config_fields(batched, {**th.PARAMETERS, **(parameters or {})})
    return layouts, {**config, **fields}


BATCHED_AUXILIARY = th.config_fields(True)["auxiliary"]
EIGHT_AUXILIARY = th.config_fields(False)["auxiliary"]

INVALID = {
    "policy": (_case(True, trigger_policy="any_new"),
               "kernel 'k' requires trigger_policy 'all_new' (one frame from every sensor per command)"),
    "three inputs": (_case(inputs=("wfs0", "wfs1", "wfs2")),
                     "kernel 'k' takes either one batched (8, rows, cols) input or 8 sensor inputs, got 3"),
    "missing alias": (_case(True, auxiliary=_without(BATCHED_AUXILIARY, "command_high")),
                      "missing: ['command_high'], not expected: []"),
    "alias of the other form": (_case(True, auxiliary={**BATCHED_AUXILIARY, "wfs0_dark": "wfs_dark"}),
                                "kernel 'k' with a batched input needs exactly the auxiliary aliases"),
    "eight-stream alias missing": (_case(auxiliary=_without(EIGHT_AUXILIARY, "wfs5_inverse_flat")),
                                   "with 8 sensor inputs needs exactly the auxiliary aliases"),
    "batched shape": (_case(True, layout={"wfs": ((7, 8, 12), "float32")}),
                      "kernel 'k' requires its batched input to have shape (8, rows, cols), not (7, 8, 12)"),
    "unequal images": (_case(layout={"wfs3": ((8, 16), "float32")}),
                       "kernel 'k' requires its 8 sensor inputs to be 2D images of one shape"),
    "tile": (_case(parameters={"tile_size": 3}),
             "kernel 'k' requires image dimensions (8, 12) divisible by tile_size 3"),
    "tile type": (_case(parameters={"tile_size": 4.0}), "kernel 'k' requires 'tile_size' to be a positive integer"),
    "columns": (_case(layout={"reconstructor": ((5, 97), "float32")}),
                "kernel 'k' requires reconstructor columns to equal the slope count 96 "
                "(8 sensors x 2 x 3 tiles x 2), got shape (5, 97)"),
    "output": (_case(layout={"y": ((4,), "float32")}),
               "kernel 'k' requires output shape (5,) (the reconstructor's rows), got (4,)"),
    "dark": (_case(layout={"wfs2_dark": ((8, 8), "float32")}),
             "kernel 'k' requires auxiliary 'wfs2_dark' ('wfs2_dark') to have shape (8, 12), not (8, 8)"),
    "batched offset": (_case(True, layout={"wfs_slope_offset": ((2, 3, 2), "float32")}),
                       "requires auxiliary 'wfs_slope_offset' ('wfs_slope_offset') to have shape (8, 2, 3, 2)"),
    "bounds": (_case(layout={"command_low": ((5, 1), "float32")}),
               "requires auxiliary 'command_low' ('command_low') to have shape (5,), not (5, 1)"),
    "gain": (_case(parameters={"leak": "0.9"}), "kernel 'k' requires numeric parameter 'leak'"),
    "borrow": (_case(parameters={"borrow_gpu_inputs": "yes"}),
               "kernel 'k' requires 'borrow_gpu_inputs' to be true or false"),
    "blas threads": (_case(parameters={"blas_threads": 0}),
                     "kernel 'k' requires 'blas_threads' to be a positive integer"),
    "integer output": (_case(layout={"y": ((5,), "int32")}),
                       "kernel 'k' requires a floating-point output (float32 or float64), not int32"),
    "matrix dtype": (_case(layout={"reconstructor": ((5, 96), "float64")}),
                     "kernel 'k' requires the reconstructor 'reconstructor' to have the output's dtype float32 "
                     "(not float64): any other would be converted whole every frame"),
    "complex": (_case(layout={"command_offset": ((5,), "complex64")}),
                "kernel 'k' requires real-valued streams, but 'command_offset' is complex64"),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_wiring_says_what_to_change(case):
    (layouts, fields), message = case
    assert message in validation_error(KIND, layouts, **fields)


def test_the_example_forms_validate():
    for batched in (False, True):
        REGISTRY.validate(kernel_config(KIND, **th.config_fields(batched)), stream_specs(th.layouts(batched)))
    borrowed = th.config_fields(True, {**th.PARAMETERS, "borrow_gpu_inputs": True})
    build_kernel(KIND, th.layouts(True), **borrowed)


# ----------------------------------------------------------------------------- real workers


def pipeline_config(namespace, batched, storage="cpu", parameters=None):
    """The controller alone, its streams named as in tests/tomography_helpers.py."""
    extra = {"storage": "gpu", "gpu_device": "cuda:0"} if storage == "gpu" else {}
    streams = [{"name": name, "shape": list(shape), "dtype": dtype, **extra}
               for name, (shape, dtype) in th.layouts(batched).items()]
    if storage == "gpu":
        streams[-1]["cpu_mirror"] = True  # the command, read back by the test
    fields = th.config_fields(batched, parameters)
    kernel = {"name": "tomo", "kind": f"{storage}.tomographic_controller", "inputs": list(fields["inputs"]),
              "output": "y", "auxiliary": fields["auxiliary"], "parameters": fields["parameters"],
              "trigger_policy": "all_new"}
    if not batched:
        kernel["synchronization"] = {"mode": "matching_frame_id", "max_skew_generations": 4, "max_wait_s": 1.0}
    return {"namespace": namespace, "shared_memory": streams, "kernels": [kernel]}


def drive(manager, batched, count=6, seed=8):
    """Write calibrations, then ``count`` camera frames one at a time; each command must match the reference."""
    rng = np.random.default_rng(seed)
    calibration = th.random_calibration(rng)
    for alias, value in (calibration if batched else th.by_sensor(calibration)).items():
        manager.get_stream(alias).write(value)
    reference = th.ReferenceController(calibration)
    commands = manager.get_stream("y")
    for frame_id in range(1, count + 1):
        images = th.random_images(rng)
        if batched:
            manager.get_stream("wfs").write(images, frame_id=frame_id)
        else:
            for index, image in enumerate(images):
                manager.get_stream(f"wfs{index}").write(image, frame_id=frame_id)
        wait_for(lambda fid=frame_id: commands.frame_id == fid, timeout=20,
                 describe=lambda: str(manager.status()["workers"]["tomo"]))
        np.testing.assert_allclose(commands.read_host(), reference.step(images), rtol=1e-5, atol=1e-5,
                                   err_msg=f"frame {frame_id}")
    worker = manager.status()["workers"]["tomo"]
    assert worker["frames_processed"] == count


@pytest.mark.parametrize("batched", FORMS)
def test_a_real_worker_computes_the_reference_commands(batched, namespace, manager_factory):
    manager = manager_factory(pipeline_config(namespace, batched))
    manager.build()
    manager.start(wait=True)
    drive(manager, batched)


@pytest.mark.parametrize("batched", FORMS)
def test_the_gpu_twin_computes_the_reference_commands_on_the_device(batched, gpu, namespace, manager_factory):
    manager = manager_factory(pipeline_config(namespace, batched, storage="gpu"))
    manager.build()
    manager.start(wait=True)
    drive(manager, batched)


# -------------------------------------------------------------------------------- full size


def full_size_pipeline(namespace) -> dict:
    """tests/tomography_full_size.yaml with the test as the cameras, and leak 0 (each command from its frame)."""
    config = yaml.safe_load(FULL_SIZE.read_text())
    config["namespace"] = namespace
    config.pop("sources")
    for spec in config["shared_memory"]:
        if spec["name"] == "tomo_reconstructor":
            spec.pop("initial")  # the test writes a random one in place
        if spec["name"] in ("tomo_command_low", "tomo_command_high"):
            spec["initial"]["value"] = 0.05 if spec["name"].endswith("high") else -0.05
    config["kernels"][0]["parameters"]["leak"] = 0.0
    return config


def test_the_full_size_loop_driven_at_the_example_rate_gives_correct_commands(namespace, manager_factory):
    """Eight 256x256 cameras at 20 Hz, a 4096 x 65536 float32 reconstructor (1 GiB), for 4 s.

    Speed is a figure (``shmpiped bench pipeline tests/tomography_full_size.yaml``), not asserted
    here: this checks that the loop keeps up without failing and that its commands are right.
    """
    manager = manager_factory(full_size_pipeline(namespace))
    manager.build()
    rng = np.random.default_rng(2401)
    matrix = manager.get_stream("tomo_reconstructor")
    view = matrix.next_slot()
    rng.standard_normal(out=view, dtype=np.float32)
    view *= np.float32(1e-3)
    matrix.publish()
    manager.start(wait=True)

    frame_sets = [rng.uniform(0.0, 100.0, (8, 256, 256)).astype(np.float32) for _ in range(3)]
    cameras = [manager.get_stream(f"tomo_wfs{i}_raw") for i in range(8)]
    commands = manager.get_stream("tomo_dm_command")
    period, start, frame_id = 1 / 20, time.monotonic(), 0
    while time.monotonic() - start < 4.0:
        frame_id += 1
        for camera, image in zip(cameras, frame_sets[frame_id % 3]):
            camera.write(image, frame_id=frame_id)
        time.sleep(max(0.0, start + frame_id * period - time.monotonic()))
    wait_for(lambda: commands.frame_id == frame_id, timeout=10,
             describe=lambda: str(manager.status()["workers"]["tomo_controller"]))

    status = manager.status()
    assert status["workers"]["tomo_controller"]["frames_processed"] > 1  # it ran while the cameras did
    assert status["summary"]["failed_workers"] == 0
    # dark 0, inverse flat 1, offsets 0, gains 1 but control_gain 0.28, leak 0:
    slopes = np.stack([th.tile_centroids(image, 4) for image in frame_sets[frame_id % 3]]).astype(np.float32)
    residual = np.matmul(view, slopes.reshape(-1))  # float32, as the kernel: a float64 one would copy 2 GiB
    expected = np.clip(0.28 * residual, -0.05, 0.05)
    np.testing.assert_allclose(commands.read(), expected, rtol=1e-4, atol=1e-6)
    assert 0 < np.mean(np.abs(expected) == 0.05) < 1, "the command bounds should clip some actuators only"
