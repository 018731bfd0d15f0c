"""The gpu.* kernels' maths, checked without a device.

Every class of ``GPU_KERNELS`` is built on ``gpu`` streams with NumPy as its
array namespace (a stand-in for CuPy, which needs the GPU this machine lacks)
and must compute exactly what its CPU twin computes. Then each GPU twin runs
on a stand-in namespace that records every array function it looks up and
the keywords it passes, whose arrays fail the test when read on the host (on
a device that read would wait for the GPU every frame); every recorded
function and keyword must exist in the real CuPy, which imports without a
device.
"""

from __future__ import annotations

import inspect
import types
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

from shmpiped.kernels import KernelContext
from shmpiped.kernels.gpu import GPU_KERNELS
from tests import tomography_helpers as tomography
from tests.conftest import unavailable
from tests.kernel_helpers import REGISTRY, kernel_config, stream_specs

rng = np.random.default_rng(2024)

#: What cupy.ufunc.__call__ accepts (NumPy's ``where=`` is not among them).
CUPY_UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})


def uniform(shape, dtype="float64", low=-5.0, high=5.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def spot_image(shape, center, dtype):
    rows, cols = np.indices(shape)
    spot = 100.0 * np.exp(-((rows - center[0]) ** 2 + (cols - center[1]) ** 2) / 4.5)
    return (spot + uniform(shape, low=0, high=2)).astype(dtype)


def tiles_image():
    image = uniform((24, 32), low=0, high=10)
    image[0:8, 0:8] = 0  # an empty tile
    image[8:16, 8:16] = -1  # a tile with a negative sum
    return image.astype("int16")


@dataclass
class Case:
    """One kernel configuration and the frames it computes."""

    kind: str  # without the "cpu."/"gpu." prefix
    layouts: dict  # stream name -> (shape, dtype); the output is "y"
    frames: list  # (trigger input, auxiliary inputs) per frame, in order
    fields: dict = field(default_factory=dict)  # KernelConfig fields
    label: str = ""


def binary(kind, dtype, low=1.0):
    layouts = {name: ((3, 4), dtype) for name in ("x", "a", "y")}
    frame = (uniform((3, 4), dtype, low, 9), {"a": uniform((3, 4), dtype, 1, 9)})
    return Case(kind, layouts, [frame], {"auxiliary": ("a",)})


SPOT_PARAMETERS = {"threshold": 1.0, "background": 0.5, "weight_power": 1.5}
SWITCHED = {"x": ((6,), "float32"), "g": ((1,), "float32"), "l": ((1, 1), "float64"), "o": ((1,), "uint8"),
            "y": ((6,), "float32")}

CASES = [
    Case("copy", {"x": ((4, 5), "float32"), "y": ((4, 5), "float32")}, [(uniform((4, 5), "float32"), {})]),
    Case("scale", {"x": ((4, 5), "int16"), "y": ((4, 5), "int16")}, [(uniform((4, 5), "int16", -99, 99), {})],
         {"parameters": {"factor": 0.5}}, "int16 by a float"),
    Case("scale", {"x": ((4, 5), "float32"), "y": ((4, 5), "float32")}, [(uniform((4, 5), "float32"), {})],
         {"parameters": {"factor": -2.5}}),
    Case("add_constant", {"x": ((7,), "int32"), "y": ((7,), "int32")}, [(uniform((7,), "int32", -99, 99), {})],
         {"parameters": {"constant": 0.75}}),
    binary("elementwise_add", "float32", low=-9.0),
    binary("elementwise_subtract", "float64", low=-9.0),
    binary("elementwise_multiply", "int16", low=-9.0),
    binary("elementwise_divide", "int32"),
    Case("scale_offset", {name: ((10,), "int16") for name in ("x", "a", "y")},
         [(uniform((10,), "int16", -50, 50), {"offset": uniform((10,), "int16", -9, 9)})],
         {"auxiliary": {"offset": "a"}, "parameters": {"gain": 0.5}}),
    Case("flatten", {"x": ((4, 3), "int64"), "y": ((12,), "int64")},
         [(np.arange(12, dtype=np.int64).reshape(3, 4).T, {})], label="strided input"),
    Case("concatenate", {"in0": ((2, 3), "float32"), "in1": ((2, 2), "float32"), "y": ((2, 5), "float32")},
         [((uniform((2, 3), "float32"), uniform((2, 2), "float32")), {})],
         {"inputs": ("in0", "in1"), "parameters": {"axis": 1}}),
    Case("affine_transform", {"x": ((7,), "float32"), "A": ((5, 7), "float32"), "b": ((5,), "float32"),
                              "y": ((5,), "float32")},
         [(uniform((7,), "float32"), {"matrix": uniform((5, 7), "float32"), "offset": uniform((5,), "float32")})],
         {"auxiliary": {"matrix": "A", "offset": "b"}}),
    Case("leaky_integrator", {"x": ((4,), "int32"), "y": ((4,), "int32")},
         [(uniform((4,), "int32", -9, 9), {}) for _ in range(3)], {"parameters": {"leak": 0.9, "gain": 0.5}},
         "parameters, integer stream"),
    Case("leaky_integrator", SWITCHED,
         [(uniform((6,), "float32"), {"gain": np.array([gain], np.float32), "leak": np.array([[leak]]),
                                      "override_enabled": np.array([switch], np.uint8)})
          for gain, leak, switch in [(2.0, 0.5, 1), (4.0, 0.25, 0), (0.5, 1.0, 3), (1.5, 0.0, 0)]],
         {"auxiliary": {"gain": "g", "leak": "l", "override_enabled": "o"}, "parameters": {"leak": 0.9, "gain": 0.1}},
         "override switch"),
    Case("custom_operation", {"x": ((6, 8), "float32"), "d": ((6, 8), "int16"), "f": ((6, 8), "float32"),
                              "y": ((6, 8), "float32")},
         [(uniform((6, 8), "float32"), {"dark": uniform((6, 8), "int16", -3, 3), "flat": uniform((6, 8), "float32")})],
         {"auxiliary": {"dark": "d", "flat": "f"}, "operation": "clip(abs((input - dark) * flat), 0.5, 2) + 1"}),
    Case("custom_operation", {"x": ((5,), "float64"), "m": ((3, 5), "float64"), "y": ((3,), "float64")},
         [(uniform((5,)), {"matrix": uniform((3, 5))})],
         {"auxiliary": {"matrix": "m"}, "operation": "-(matrix @ input) / 2"}),
    Case("custom_operation", {"x": ((6,), "float64"), "y": ((6,), "float64")}, [(uniform((6,), low=-1, high=2), {})],
         {"operation": "clip(0.5, input, 1)"}, "constant clipped"),
    Case("spot_centroid", {"x": ((16, 20), "float32"), "y": ((2,), "float32")},
         [(spot_image((16, 20), (5.3, 12.7), "float32"), {})], {"parameters": SPOT_PARAMETERS}),
    Case("spot_centroid", {"x": ((5, 5), "float64"), "y": ((2,), "float64")}, [(np.ones((5, 5)), {})],
         {"parameters": {"threshold": 10}}, "no weight"),
    Case("shack_hartmann_centroid", {"x": ((24, 32), "int16"), "y": ((3, 4, 2), "int16")}, [(tiles_image(), {})],
         {"parameters": {"tile_size": 8}}),
    Case("tip_tilt_controller", {"x": ((10, 12), "float32"), "M": ((2, 2), "float32"), "b": ((2,), "float32"),
                                 "y": ((2,), "float32")},
         [(spot_image((10, 12), center, "float32"),
           {"M": np.array([[0.0, 1.0], [-1.0, 0.5]], np.float32), "b": np.array([0.25, -0.5], np.float32)})
          for center in [(3.2, 7.9), (6.0, 2.5), (4.5, 5.5)]],
         {"auxiliary": ("M", "b"), "parameters": {"leak": 0.8, "control_gain": 0.5, **SPOT_PARAMETERS}}),
    *(Case("tomographic_controller", tomography.layouts(batched), tomography.frames(batched)[0],
           tomography.config_fields(batched), "batched" if batched else "eight streams") for batched in (False, True)),
    Case("raise_error", {"x": ((2,), "float32"), "y": ((2,), "float32")}, [(np.zeros(2, np.float32), {})],
         {"parameters": {"message": "boom"}}),
]

GPU_CASES = [
    pytest.param(cls, case, id=f"{cls.kind}-{case.label}" if case.label else cls.kind)
    for cls in GPU_KERNELS
    for case in CASES
    if cls.kind == f"gpu.{case.kind}"
]


def gpu_kernel(cls, case, xp):
    """The GPU twin on gpu streams (device cuda:0), computing through ``xp``."""
    specs = stream_specs({name: (*layout, "gpu") for name, layout in case.layouts.items()})
    config = kernel_config(cls.kind, **case.fields)
    cls.validate_config(config, specs)
    return cls(KernelContext(config, specs, xp=xp))


def cpu_kernel(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy kinds warn when resolved
        return REGISTRY.create(kernel_config(f"cpu.{case.kind}", **case.fields), stream_specs(case.layouts))


def compute_frames(kernel, case, as_array=np.asarray):
    """Each frame's output, or the (type, message) of what computing it raised."""
    shape, dtype = case.layouts["y"]
    results = []
    for trigger, auxiliary in case.frames:
        if isinstance(trigger, tuple):
            trigger = tuple(as_array(value) for value in trigger)
        else:
            trigger = as_array(trigger)
        output = as_array(np.full(shape, 77, dtype=dtype))
        try:
            kernel.compute_into(trigger, output, {alias: as_array(value) for alias, value in auxiliary.items()})
        except Exception as exc:  # raise_error fails by design: both twins must fail alike
            results.append((type(exc), str(exc)))
        else:
            results.append(np.asarray(output))
    return results


def assert_computed(case, results) -> None:
    """Every frame gave an output, except raise_error's, which raise."""
    for frame, result in enumerate(results):
        if case.kind == "raise_error":
            assert result == (RuntimeError, "boom")
        else:
            assert isinstance(result, np.ndarray), f"frame {frame} raised {result}"


def test_every_gpu_kernel_has_a_case():
    assert {cls.kind for cls in GPU_KERNELS} == {f"gpu.{case.kind}" for case in CASES}


@pytest.mark.parametrize("cls, case", GPU_CASES)
def test_gpu_twin_computes_what_its_cpu_twin_computes(cls, case):
    expected = compute_frames(cpu_kernel(case), case)
    results = compute_frames(gpu_kernel(cls, case, np), case)
    assert_computed(case, expected)
    assert_computed(case, results)
    for frame, (result, reference) in enumerate(zip(results, expected)):
        if isinstance(reference, np.ndarray):
            np.testing.assert_array_equal(result, reference, err_msg=f"frame {frame}")


# --------------------------------------------------------------------------- against the real CuPy


class HostReadError(AssertionError):
    """A kernel read an array's value on the host."""


class DeviceStandInArray(np.ndarray):
    """A NumPy array standing in for a CuPy one: reading its values on the host fails the test."""

    def _read_back(self, *args, **kwargs):
        raise HostReadError("a kernel read an array's value on the host (a device sync per frame on a GPU)")

    __float__ = __int__ = __index__ = __bool__ = __complex__ = item = tolist = _read_back

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, np.ndarray):
            self._read_back()
        return value


def stand_in(value):
    return value.view(DeviceStandInArray) if isinstance(value, np.ndarray) else value


class CupyStandIn(types.ModuleType):
    """NumPy standing in for CuPy: records each function looked up with the keywords of its calls.

    The arrays its functions return are DeviceStandInArray.
    """

    def __init__(self) -> None:
        super().__init__("cupy_stand_in")
        self.keywords: dict[str, set[str]] = {}

    def __getattr__(self, name: str):
        function = getattr(np, name)
        keywords = self.keywords.setdefault(name, set())
        if not callable(function) or isinstance(function, type):
            return function

        def recorded(*args, **kwargs):
            keywords.update(kwargs)
            return stand_in(function(*args, **kwargs))

        return recorded


def real_cupy():
    try:
        import cupy
    except ImportError as exc:
        unavailable(f"the real CuPy checks the gpu kernels' calls (it imports without a GPU): "
                    f"pip install cupy-cuda12x, as .ci/install-cupy.sh does ({exc})", "CuPy namespace tests")
    return cupy


def cupy_keywords(cupy, function) -> frozenset | None:
    """The keywords a CuPy function accepts; None when it takes any."""
    if isinstance(function, cupy.ufunc):
        return CUPY_UFUNC_KEYWORDS
    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return frozenset(parameter.name for parameter in parameters
                     if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY))


@pytest.mark.parametrize("cls, case", GPU_CASES)
def test_gpu_twin_uses_only_cupy_functions_and_never_reads_back(cls, case):
    cupy = real_cupy()
    namespace = CupyStandIn()
    assert_computed(case, compute_frames(gpu_kernel(cls, case, namespace), case, as_array=stand_in))
    if case.kind != "raise_error":
        assert namespace.keywords, "the kernel computed without its array namespace"
    for name, keywords in sorted(namespace.keywords.items()):
        assert hasattr(cupy, name), f"{cls.kind} calls xp.{name}, which CuPy lacks"
        accepted = cupy_keywords(cupy, getattr(cupy, name))
        assert accepted is None or keywords <= accepted, (
            f"{cls.kind} calls xp.{name} with {sorted(keywords - accepted)}, which cupy.{name} does not accept")
