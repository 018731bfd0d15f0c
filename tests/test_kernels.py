"""The kernel contract and the CPU catalogue (spec 1.6, 10.1, 10.2).

Each kernel is built through the registry and driven with compute_into on
NumPy arrays, against a NumPy reference; every validation message is
checked; and no kernel allocates an array per frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels import Kernel, KernelContext, default_registry
from shmpiped.kernels.centroids import SpotCentroidPlan, TileCentroidPlan
from tests.kernel_helpers import (
    ALLOCATION_LIMIT,
    REGISTRY,
    build_kernel,
    kernel_config,
    peak_allocation,
    stream_specs,
    validation_error,
)

rng = np.random.default_rng(1234)
READ_GPU_HINT = " (give it `cpu_mirror: true` to read it from the CPU, or use a gpu.* kind)"


def random(shape, dtype="float64", low=-5.0, high=5.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def compute(kernel, trigger, out_shape, out_dtype, auxiliary=None):
    output = np.full(out_shape, 77, dtype=out_dtype)
    kernel.compute_into(trigger, output, auxiliary or {})
    return output


# --------------------------------------------------------------------------- base contract


class TestBaseChecks:
    def test_trigger_input_count(self):
        message = validation_error("cpu.copy", {"a": ((3,), "float32"), "b": ((3,), "float32"),
                                                "y": ((3,), "float32")}, inputs=("a", "b"))
        assert message == "kernel kind 'cpu.copy' expects 1 trigger input stream(s), got 2"

    def test_auxiliary_count(self):
        message = validation_error("cpu.copy", {"x": ((3,), "float32"), "a": ((3,), "float32"),
                                                "y": ((3,), "float32")}, auxiliary=("a",))
        assert message == "kernel kind 'cpu.copy' expects 0 auxiliary streams"

    def test_auxiliary_count_of_binary_kernel(self):
        message = validation_error("cpu.elementwise_add", {"x": ((3,), "float32"), "y": ((3,), "float32")})
        assert message == "kernel kind 'cpu.elementwise_add' expects 1 auxiliary streams"

    def test_output_count(self):
        message = validation_error("cpu.copy", {"x": ((3,), "float32"), "y": ((3,), "float32"),
                                                "z": ((3,), "float32")}, outputs=("y", "z"))
        assert message == "kernel kind 'cpu.copy' expects 1 output stream(s), got 2"

    @pytest.mark.parametrize("gpu_stream", ["x", "y"])
    def test_storage_of_trigger_and_output(self, gpu_stream):
        layouts = {"x": ((3,), "float32"), "y": ((3,), "float32")}
        layouts[gpu_stream] = ((3,), "float32", "gpu")
        message = validation_error("cpu.copy", layouts)
        hint = READ_GPU_HINT if gpu_stream == "x" else ""
        assert message == f"kernel 'k' of kind 'cpu.copy' requires cpu shared memory for '{gpu_stream}'{hint}"

    def test_storage_of_auxiliary(self):
        message = validation_error(
            "cpu.elementwise_add",
            {"x": ((3,), "float32"), "a": ((3,), "float32", "gpu"), "y": ((3,), "float32")},
            auxiliary=("a",),
        )
        assert message == "kernel 'k' of kind 'cpu.elementwise_add' requires cpu shared memory for 'a'" + READ_GPU_HINT

    def test_a_cpu_kernel_reads_a_gpu_stream_through_its_cpu_mirror(self):
        mirrored = ((3,), "float32", "gpu", {"cpu_mirror": True})
        REGISTRY.validate(kernel_config("cpu.copy"), stream_specs({"x": mirrored, "y": ((3,), "float32")}))
        message = validation_error("cpu.copy", {"x": ((3,), "float32"), "y": mirrored})
        assert message == "kernel 'k' of kind 'cpu.copy' requires cpu shared memory for 'y'"  # never writes one

    def test_a_gpu_kernel_keeps_its_streams_on_one_device(self):
        registry = default_registry(entry_points=[], include_gpu=True)
        layouts = {"x": ((3,), "float32", "gpu", {"gpu_device": "cuda:1"}), "y": ((3,), "float32", "gpu")}
        with pytest.raises(ConfigValidationError) as caught:
            registry.validate(kernel_config("gpu.copy"), stream_specs(layouts))
        assert str(caught.value) == ("kernel 'k' runs on cuda:0 (its output's gpu_device) but 'x' lives on "
                                     "cuda:1: a GPU kernel's streams share one device")

    def test_compute_into_multiple_forwards_the_first_output(self):
        kernel = build_kernel("cpu.copy", {"x": ((3,), "float32"), "y": ((3,), "float32")})
        first, second = np.zeros(3, np.float32), np.zeros(3, np.float32)
        kernel.compute_into_multiple(np.ones(3, np.float32), [first, second], {})
        assert first.tolist() == [1, 1, 1] and second.tolist() == [0, 0, 0]

    def test_base_class_compute_is_not_implemented(self):
        specs = stream_specs({"x": ((3,), "float32"), "y": ((3,), "float32")})
        kernel = Kernel(KernelContext(kernel_config("cpu.copy"), specs))
        with pytest.raises(NotImplementedError):
            kernel.compute_into(np.ones(3), np.ones(3), {})


class TestKernelContext:
    def test_helpers(self):
        specs = stream_specs({"a": ((2,), "float64"), "b": ((2,), "float64"), "m": ((2, 2), "float64"),
                              "y": ((2,), "float64"), "z": ((2,), "float64")})
        config = kernel_config("cpu.copy", inputs=("a", "b"), outputs=("y", "z"), auxiliary={"matrix": "m"})
        context = KernelContext(config, specs, config_base_dir="/etc")
        assert context.input_specs == (specs["a"], specs["b"], specs["m"])
        assert context.trigger_input_spec is specs["a"]
        assert context.trigger_input_specs == (specs["a"], specs["b"])
        assert context.auxiliary_specs == (specs["m"],)
        assert context.output_spec is specs["y"]
        assert context.output_specs == (specs["y"], specs["z"])
        assert context.config_base_dir == Path("/etc")
        assert context.xp is np

    def test_is_frozen(self):
        context = KernelContext(kernel_config("cpu.copy"), {})
        with pytest.raises(AttributeError):
            context.config = None

    def test_registry_gives_numpy_and_the_base_dir(self, tmp_path):
        kernel = REGISTRY.create(kernel_config("cpu.copy"),
                                 stream_specs({"x": ((3,), "float32"), "y": ((3,), "float32")}),
                                 config_base_dir=str(tmp_path))
        assert kernel.context.xp is np and kernel.xp is np
        assert kernel.context.config_base_dir == tmp_path


# --------------------------------------------------------------------------- element-wise


SAME = {"x": ((4, 5), "float32"), "y": ((4, 5), "float32")}


class TestCopyScaleAddConstant:
    @pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "uint8"])
    def test_copy(self, dtype):
        kernel = build_kernel("cpu.copy", {"x": ((4, 5), dtype), "y": ((4, 5), dtype)})
        x = random((4, 5), "float64", 0, 100).astype(dtype)
        np.testing.assert_array_equal(compute(kernel, x, (4, 5), dtype), x)

    @pytest.mark.parametrize("dtype, factor", [("float32", 2.5), ("float64", -3), ("int16", 3), ("int16", 0.5)])
    def test_scale(self, dtype, factor):
        kernel = build_kernel("cpu.scale", {"x": ((4, 5), dtype), "y": ((4, 5), dtype)},
                              parameters={"factor": factor})
        x = random((4, 5), "float64", -100, 100).astype(dtype)
        np.testing.assert_array_equal(compute(kernel, x, (4, 5), dtype), (x * factor).astype(dtype))

    @pytest.mark.parametrize("dtype, constant", [("float32", 1.25), ("int32", 7), ("int32", 0.75)])
    def test_add_constant(self, dtype, constant):
        kernel = build_kernel("cpu.add_constant", {"x": ((4, 5), dtype), "y": ((4, 5), dtype)},
                              parameters={"constant": constant})
        x = random((4, 5), "float64", -100, 100).astype(dtype)
        np.testing.assert_array_equal(compute(kernel, x, (4, 5), dtype), (x + constant).astype(dtype))

    @pytest.mark.parametrize("kind, parameter", [("cpu.scale", "factor"), ("cpu.add_constant", "constant")])
    @pytest.mark.parametrize("value", [None, "2", True, [1]])
    def test_parameter_must_be_numeric(self, kind, parameter, value):
        parameters = {} if value is None else {parameter: value}
        message = validation_error(kind, SAME, parameters=parameters)
        assert message == f"kernel 'k' requires numeric parameter '{parameter}'"

    @pytest.mark.parametrize("kind, parameter, value", [
        ("cpu.add_constant", "constant", 300), ("cpu.add_constant", "constant", -1), ("cpu.scale", "factor", 256),
    ])
    def test_integer_parameter_must_fit_the_dtype(self, kind, parameter, value):
        message = validation_error(kind, {"x": ((3,), "uint8"), "y": ((3,), "uint8")}, parameters={parameter: value})
        assert message == f"kernel 'k' parameter '{parameter}' is out of range for uint8"

    @pytest.mark.parametrize("kind", ["cpu.copy", "cpu.scale", "cpu.add_constant"])
    def test_shapes_and_dtypes_must_match(self, kind):
        parameters = {"factor": 1, "constant": 1}
        assert validation_error(kind, {"x": ((4, 5), "float32"), "y": ((5, 4), "float32")},
                                parameters=parameters) == "kernel 'k' requires matching input/output shapes"
        assert validation_error(kind, {"x": ((4, 5), "float32"), "y": ((4, 5), "float64")},
                                parameters=parameters) == "kernel 'k' requires matching input/output dtypes"


BINARY = {"x": ((3, 4), "float64"), "a": ((3, 4), "float64"), "y": ((3, 4), "float64")}


class TestBinaryElementwise:
    @pytest.mark.parametrize("kind, reference", [
        ("cpu.elementwise_add", np.add),
        ("cpu.elementwise_subtract", np.subtract),
        ("cpu.elementwise_multiply", np.multiply),
        ("cpu.elementwise_divide", np.divide),
    ])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_against_numpy(self, kind, reference, dtype):
        layouts = {name: ((3, 4), dtype) for name in ("x", "a", "y")}
        kernel = build_kernel(kind, layouts, auxiliary={"other": "a"})
        x, a = random((3, 4), dtype), random((3, 4), dtype, 1, 5)
        result = compute(kernel, x, (3, 4), dtype, {"other": a})
        np.testing.assert_allclose(result, reference(x, a).astype(dtype), rtol=1e-6)

    def test_integer_division_truncates_into_the_output(self):
        layouts = {name: ((6,), "int32") for name in ("x", "a", "y")}
        kernel = build_kernel("cpu.elementwise_divide", layouts, auxiliary=("a",))
        x, a = np.array([7, -7, 9, 1, 0, 100], np.int32), np.array([2, 2, 3, 4, 5, 7], np.int32)
        np.testing.assert_array_equal(compute(kernel, x, (6,), "int32", {"a": a}), (x / a).astype(np.int32))

    def test_shapes_must_match(self):
        layouts = dict(BINARY, a=((4, 3), "float64"))
        assert validation_error("cpu.elementwise_add", layouts, auxiliary=("a",)) == (
            "kernel 'k' requires matching shapes for input, auxiliary, and output")

    def test_dtypes_must_match(self):
        layouts = dict(BINARY, a=((3, 4), "float32"))
        assert validation_error("cpu.elementwise_multiply", layouts, auxiliary=("a",)) == (
            "kernel 'k' requires matching dtypes for binary-operation streams")


class TestScaleOffset:
    @pytest.mark.parametrize("dtype, gain", [("float32", 2.0), ("float64", -0.5), ("int16", 0.5), ("int16", 3)])
    def test_against_numpy(self, dtype, gain):
        layouts = {name: ((10,), dtype) for name in ("x", "a", "y")}
        kernel = build_kernel("cpu.scale_offset", layouts, auxiliary={"offset": "a"}, parameters={"gain": gain})
        x = random((10,), "float64", -50, 50).astype(dtype)
        offset = random((10,), "float64", -9, 9).astype(dtype)
        expected = (gain * x - offset).astype(dtype)
        np.testing.assert_allclose(compute(kernel, x, (10,), dtype, {"offset": offset}), expected, rtol=1e-6)

    def test_messages(self):
        assert validation_error("cpu.scale_offset", BINARY, auxiliary=("a",)) == (
            "kernel 'k' requires numeric parameter 'gain'")
        assert validation_error("cpu.scale_offset", dict(BINARY, y=((12,), "float64")), auxiliary=("a",),
                                parameters={"gain": 1}) == (
            "kernel 'k' requires matching shapes for input, auxiliary, and output")
        assert validation_error("cpu.scale_offset", dict(BINARY, y=((3, 4), "float32")), auxiliary=("a",),
                                parameters={"gain": 1}) == (
            "kernel 'k' requires matching dtypes for binary-operation streams")
        layouts = {name: ((3,), "int8") for name in ("x", "a", "y")}
        assert validation_error("cpu.scale_offset", layouts, auxiliary=("a",), parameters={"gain": 1000}) == (
            "kernel 'k' parameter 'gain' is out of range for int8")


# --------------------------------------------------------------------------- layout


class TestFlatten:
    def test_c_order_ravel(self):
        kernel = build_kernel("cpu.flatten", {"x": ((3, 4, 5), "float32"), "y": ((60,), "float32")})
        x = random((3, 4, 5), "float32")
        np.testing.assert_array_equal(compute(kernel, x, (60,), "float32"), x.ravel())

    def test_strided_input(self):
        kernel = build_kernel("cpu.flatten", {"x": ((4, 3), "int64"), "y": ((12,), "int64")})
        x = np.arange(12, dtype=np.int64).reshape(3, 4).T  # not contiguous
        np.testing.assert_array_equal(compute(kernel, x, (12,), "int64"), x.ravel())

    def test_messages(self):
        assert validation_error("cpu.flatten", {"x": ((3, 4), "float32"), "y": ((3, 4), "float32")}) == (
            "kernel 'k' requires a 1D output vector")
        assert validation_error("cpu.flatten", {"x": ((3, 4), "float32"), "y": ((11,), "float32")}) == (
            "kernel 'k' requires output length 12")
        assert validation_error("cpu.flatten", {"x": ((3, 4), "float32"), "y": ((12,), "float64")}) == (
            "kernel 'k' requires matching dtypes for flatten input/output")


def concat_layouts(shapes, output, dtype="float32", output_dtype=None):
    layouts = {f"in{i}": (shape, dtype) for i, shape in enumerate(shapes)}
    layouts["y"] = (output, output_dtype or dtype)
    return layouts


class TestConcatenate:
    @pytest.mark.parametrize("shapes, axis, output", [
        ([(2, 3), (4, 3)], 0, (6, 3)),
        ([(2, 3), (2, 1), (2, 2)], 1, (2, 6)),
        ([(2, 3), (2, 5)], -1, (2, 8)),
        ([(3,), (4,)], 0, (7,)),
    ])
    def test_against_numpy(self, shapes, axis, output):
        layouts = concat_layouts(shapes, output)
        names = tuple(name for name in layouts if name != "y")
        kernel = build_kernel("cpu.concatenate", layouts, inputs=names, parameters={"axis": axis})
        arrays = tuple(random(shape, "float32") for shape in shapes)
        np.testing.assert_array_equal(compute(kernel, arrays, output, "float32"),
                                      np.concatenate(arrays, axis=axis))

    def test_default_axis_is_zero(self):
        layouts = concat_layouts([(2,), (2,)], (4,))
        kernel = build_kernel("cpu.concatenate", layouts, inputs=("in0", "in1"))
        result = compute(kernel, (np.ones(2, np.float32), np.zeros(2, np.float32)), (4,), "float32")
        assert result.tolist() == [1, 1, 0, 0]

    @pytest.mark.parametrize("shapes, output, fields, message", [
        ([(2,)], (2,), {}, "kernel 'k' requires at least two trigger inputs"),
        ([(2,), (2,)], (4,), {"trigger_policy": "any_new"}, "kernel 'k' requires trigger_policy 'all_new'"),
        ([(2,), (2,)], (4,), {"parameters": {"axis": 1.0}}, "kernel 'k' requires integer parameter 'axis'"),
        ([(2,), (2,)], (4,), {"parameters": {"axis": True}}, "kernel 'k' requires integer parameter 'axis'"),
        ([(2,), (2,)], (4,), {"parameters": {"axis": 1}}, "kernel 'k' axis 1 is out of bounds"),
        ([(2,), (2,)], (4,), {"parameters": {"axis": -2}}, "kernel 'k' axis -2 is out of bounds"),
        ([(2, 2), (2,)], (4, 2), {}, "kernel 'k' requires equal input ranks"),
        ([(2, 2), (2, 3)], (4, 2), {}, "kernel 'k' requires matching non-concatenated dimensions"),
        ([(2, 2), (2, 2)], (4, 3), {}, "kernel 'k' requires output shape (4, 2) and dtype float32"),
    ])
    def test_messages(self, shapes, output, fields, message):
        layouts = concat_layouts(shapes, output)
        names = tuple(name for name in layouts if name != "y")
        assert validation_error("cpu.concatenate", layouts, inputs=names, **fields) == message

    def test_input_dtypes_must_match(self):
        layouts = {"in0": ((2,), "float32"), "in1": ((2,), "float64"), "y": ((4,), "float32")}
        assert validation_error("cpu.concatenate", layouts, inputs=("in0", "in1")) == (
            "kernel 'k' requires matching input dtypes")

    def test_output_dtype_must_match(self):
        layouts = concat_layouts([(2,), (2,)], (4,), output_dtype="float64")
        assert validation_error("cpu.concatenate", layouts, inputs=("in0", "in1")) == (
            "kernel 'k' requires output shape (4,) and dtype float32")


class TestReduce:
    @pytest.mark.parametrize("operation", ["sum", "mean", "max", "min"])
    @pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
    @pytest.mark.parametrize("output_shape", [(1,), (1, 1)])
    def test_against_numpy(self, operation, dtype, output_shape):
        kernel = build_kernel("cpu.reduce", {"x": ((6, 7), dtype), "y": (output_shape, dtype)},
                              parameters={"operation": operation})
        x = random((6, 7), "float64", -20, 20).astype(dtype)
        result = compute(kernel, x, output_shape, dtype)
        expected = np.asarray(getattr(np, operation)(x)).astype(dtype)
        np.testing.assert_allclose(result.reshape(()), expected, rtol=1e-5)

    def test_default_is_mean(self):
        kernel = build_kernel("cpu.reduce", {"x": ((4,), "float64"), "y": ((1,), "float64")})
        assert compute(kernel, np.array([1.0, 2.0, 3.0, 6.0]), (1,), "float64").tolist() == [3.0]

    def test_operation_field_is_accepted(self):
        kernel = build_kernel("cpu.reduce", {"x": ((4,), "float64"), "y": ((1,), "float64")}, operation="max")
        assert compute(kernel, np.array([1.0, 2.0, 3.0, 6.0]), (1,), "float64").tolist() == [6.0]

    def test_messages(self):
        layouts = {"x": ((4,), "float64"), "y": ((1,), "float64")}
        assert validation_error("cpu.reduce", layouts, parameters={"operation": "median"}) == (
            "kernel 'k': unsupported reduce operation 'median'; expected one of: sum, mean, max, min")
        assert validation_error("cpu.reduce", dict(layouts, y=((2,), "float64"))) == (
            "kernel 'k': reduce output must be a scalar (single-element array), got shape (2,)")
        assert validation_error("cpu.reduce", dict(layouts, y=((1,), "float32"))) == (
            "kernel 'k' requires matching dtypes for reduce input/output")


# --------------------------------------------------------------------------- linear


def affine_layouts(m=5, n=7, dtype="float64", **overrides):
    layouts = {"x": ((n,), dtype), "A": ((m, n), dtype), "b": ((m,), dtype), "y": ((m,), dtype)}
    layouts.update(overrides)
    return layouts


class TestAffineTransform:
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_against_numpy(self, dtype):
        kernel = build_kernel("cpu.affine_transform", affine_layouts(dtype=dtype),
                              auxiliary={"matrix": "A", "offset": "b"})
        x, matrix, offset = random((7,), dtype), random((5, 7), dtype), random((5,), dtype)
        result = compute(kernel, x, (5,), dtype, {"matrix": matrix, "offset": offset})
        np.testing.assert_allclose(result, matrix @ x + offset, rtol=1e-5)

    def test_auxiliary_order_not_alias_names_decides_roles(self):
        kernel = build_kernel("cpu.affine_transform", affine_layouts(m=2, n=2), auxiliary={"z": "A", "a": "b"})
        result = compute(kernel, np.array([1.0, 2.0]), (2,), "float64",
                         {"z": np.array([[1.0, 0.0], [0.0, 2.0]]), "a": np.array([10.0, 20.0])})
        assert result.tolist() == [11.0, 24.0]

    def test_blas_threads_is_kept_for_the_worker_environment(self):
        kernel = build_kernel("cpu.affine_transform", affine_layouts(), auxiliary=("A", "b"),
                              parameters={"blas_threads": 2})
        assert kernel.blas_threads == 2

    @pytest.mark.parametrize("overrides, message", [
        ({"x": ((7, 1), "float64")}, "kernel 'k' requires a 1D input vector"),
        ({"A": ((35,), "float64")}, "kernel 'k' requires a 2D transform matrix"),
        ({"b": ((5, 1), "float64")}, "kernel 'k' requires a 1D offset vector"),
        ({"y": ((5, 1), "float64")}, "kernel 'k' requires a 1D output vector"),
        ({"x": ((6,), "float64")}, "kernel 'k' requires matrix columns to match input vector length"),
        ({"b": ((4,), "float64")}, "kernel 'k' requires matrix rows to match offset vector length"),
        ({"y": ((4,), "float64")}, "kernel 'k' requires output vector length to match matrix rows"),
        ({"b": ((5,), "float32")}, "kernel 'k' requires matching dtypes across all affine inputs and outputs"),
    ])
    def test_messages(self, overrides, message):
        assert validation_error("cpu.affine_transform", affine_layouts(**overrides), auxiliary=("A", "b")) == message

    @pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
    def test_blas_threads_must_be_a_positive_integer(self, threads):
        assert validation_error("cpu.affine_transform", affine_layouts(), auxiliary=("A", "b"),
                                parameters={"blas_threads": threads}) == (
            "kernel 'k' requires 'blas_threads' to be a positive integer")


def leaky_layouts(n=4, dtype="float64", **extra):
    layouts = {"x": ((n,), dtype), "y": ((n,), dtype)}
    layouts.update(extra)
    return layouts


def leaky_reference(frames, leak, gain):
    state = np.zeros_like(frames[0], dtype=np.float64)
    outputs = []
    for frame, frame_leak, frame_gain in zip(frames, leak, gain):
        state = frame_leak * state + frame_gain * frame
        outputs.append(state.copy())
    return outputs


class TestLeakyIntegrator:
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_parameters(self, dtype):
        kernel = build_kernel("cpu.leaky_integrator", leaky_layouts(dtype=dtype),
                              parameters={"leak": 0.9, "gain": 0.5})
        frames = [random((4,), dtype) for _ in range(5)]
        for frame, expected in zip(frames, leaky_reference(frames, [0.9] * 5, [0.5] * 5)):
            np.testing.assert_allclose(compute(kernel, frame, (4,), dtype), expected, rtol=1e-5)

    def test_integer_stream_integrates_in_float(self):
        kernel = build_kernel("cpu.leaky_integrator", leaky_layouts(dtype="int32"),
                              parameters={"leak": 1.0, "gain": 0.5})
        frame = np.array([1, 3, -1, 0], np.int32)
        first = compute(kernel, frame, (4,), "int32")
        second = compute(kernel, frame, (4,), "int32")
        assert first.tolist() == [0, 1, 0, 0]  # 0.5, 1.5, -0.5, 0 truncated
        assert second.tolist() == [1, 3, -1, 0]  # the state kept 1.0, 3.0, -1.0, 0

    def test_auxiliary_gain_and_leak(self):
        layouts = leaky_layouts(g=((1,), "float32"), l=((1, 1), "float64"))
        kernel = build_kernel("cpu.leaky_integrator", layouts, auxiliary={"gain": "g", "leak": "l"})
        frames = [random((4,)) for _ in range(3)]
        gains, leaks = [0.5, 2.0, 1.0], [0.0, 0.5, 1.0]
        for frame, expected, g, leak in zip(frames, leaky_reference(frames, leaks, gains), gains, leaks):
            auxiliary = {"gain": np.array([g], np.float32), "leak": np.array([[leak]])}
            np.testing.assert_allclose(compute(kernel, frame, (4,), "float64", auxiliary), expected)

    def test_one_coefficient_from_auxiliary_the_other_from_parameters(self):
        kernel = build_kernel("cpu.leaky_integrator", leaky_layouts(g=((1,), "float64")),
                              auxiliary={"gain": "g"}, parameters={"leak": 0.5})
        frame = np.ones(4)
        compute(kernel, frame, (4,), "float64", {"gain": np.array([2.0])})
        result = compute(kernel, frame, (4,), "float64", {"gain": np.array([4.0])})
        np.testing.assert_allclose(result, 0.5 * 2.0 + 4.0)

    def test_override_switch(self):
        layouts = leaky_layouts(g=((1,), "float64"), o=((1,), "uint8"))
        kernel = build_kernel("cpu.leaky_integrator", layouts, auxiliary={"gain": "g", "override_enabled": "o"},
                              parameters={"leak": 0.0, "gain": 1.0})
        frame = np.ones(4)
        off = compute(kernel, frame, (4,), "float64", {"gain": np.array([10.0]), "override_enabled": np.array([0], np.uint8)})
        on = compute(kernel, frame, (4,), "float64", {"gain": np.array([10.0]), "override_enabled": np.array([1], np.uint8)})
        np.testing.assert_allclose(off, 1.0)
        np.testing.assert_allclose(on, 10.0)

    def test_messages(self):
        assert validation_error("cpu.leaky_integrator", leaky_layouts(y=((5,), "float64"))) == (
            "kernel 'k' requires matching input/output shapes")
        assert validation_error("cpu.leaky_integrator", leaky_layouts(y=((4,), "float32"))) == (
            "kernel 'k' requires matching input/output dtypes")
        assert validation_error("cpu.leaky_integrator", {"x": ((2, 2), "float64"), "y": ((2, 2), "float64")},
                                parameters={"leak": 1, "gain": 1}) == "kernel 'k' requires 1D input and output vectors"
        assert validation_error("cpu.leaky_integrator", leaky_layouts(), parameters={"gain": 1}) == (
            "kernel 'k' requires numeric parameter 'leak'")
        assert validation_error("cpu.leaky_integrator", leaky_layouts(), parameters={"leak": 1}) == (
            "kernel 'k' requires numeric parameter 'gain'")
        assert validation_error("cpu.leaky_integrator", leaky_layouts(s=((1,), "float64")),
                                auxiliary={"speed": "s"}, parameters={"leak": 1, "gain": 1}) == (
            "kernel 'k' does not accept auxiliary alias 'speed'; allowed aliases are: gain, leak, override_enabled")
        assert validation_error("cpu.leaky_integrator", leaky_layouts(g=((2,), "float64")),
                                auxiliary={"gain": "g"}, parameters={"leak": 1}) == (
            "kernel 'k' requires auxiliary 'gain' to be a single-element numeric stream")
        assert validation_error("cpu.leaky_integrator", leaky_layouts(g=((1,), "complex64")),
                                auxiliary={"gain": "g"}, parameters={"leak": 1}) == (
            "kernel 'k' requires auxiliary 'gain' to be a single-element numeric stream")

    def test_parameters_are_the_fallback_when_an_override_switch_is_bound(self):
        layouts = leaky_layouts(g=((1,), "float64"), o=((1,), "float64"))
        assert validation_error("cpu.leaky_integrator", layouts, auxiliary={"gain": "g", "override_enabled": "o"},
                                parameters={"leak": 1}) == "kernel 'k' requires numeric parameter 'gain'"

    def test_auxiliary_coefficients_need_no_parameters(self):
        layouts = leaky_layouts(g=((1,), "float64"), l=((1,), "float64"))
        REGISTRY.validate(kernel_config("cpu.leaky_integrator", auxiliary={"gain": "g", "leak": "l"}),
                          stream_specs(layouts))


# --------------------------------------------------------------------------- centroids


def spot_reference(image, threshold=0.0, background=0.0, power=1.0):
    values = image.astype(np.float64) - background
    weights = np.where(values > threshold, values, 0.0) ** power
    total = weights.sum()
    if total <= 0:
        return np.zeros(2)
    rows, cols = np.indices(image.shape)
    return np.array([(weights * rows).sum() / total - (image.shape[0] - 1) / 2,
                     (weights * cols).sum() / total - (image.shape[1] - 1) / 2])


def tiles_reference(image, tile):
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    out = np.zeros((rows, cols, 2))
    local_y, local_x = np.indices((tile, tile))
    for i in range(rows):
        for j in range(cols):
            patch = image[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].astype(np.float64)
            total = patch.sum()
            if total > 0:
                out[i, j] = [(patch * local_y).sum() / total - (tile - 1) / 2,
                             (patch * local_x).sum() / total - (tile - 1) / 2]
    return out


def gaussian_spot(shape, center, width=1.5, peak=100.0):
    rows, cols = np.indices(shape)
    return peak * np.exp(-((rows - center[0]) ** 2 + (cols - center[1]) ** 2) / (2 * width ** 2))


class TestSpotCentroid:
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("parameters", [
        {},
        {"threshold": 5.0, "background": 1.0},
        {"weight_power": 2},
        {"threshold": 1, "background": 0.5, "weight_power": 1.5},
    ])
    def test_against_numpy(self, dtype, parameters):
        kernel = build_kernel("cpu.spot_centroid", {"x": ((16, 20), dtype), "y": ((2,), dtype)},
                              parameters=parameters)
        image = (gaussian_spot((16, 20), (5.3, 12.7)) + random((16, 20), "float64", 0, 2)).astype(dtype)
        reference = spot_reference(image, parameters.get("threshold", 0), parameters.get("background", 0),
                                   parameters.get("weight_power", 1))
        np.testing.assert_allclose(compute(kernel, image, (2,), dtype), reference, rtol=1e-5, atol=1e-5)

    def test_centred_spot_gives_zero(self):
        kernel = build_kernel("cpu.spot_centroid", {"x": ((9, 9), "float64"), "y": ((2,), "float64")})
        np.testing.assert_allclose(compute(kernel, gaussian_spot((9, 9), (4, 4)), (2,), "float64"), [0, 0], atol=1e-12)

    def test_no_weight_gives_zero(self):
        kernel = build_kernel("cpu.spot_centroid", {"x": ((5, 5), "float64"), "y": ((2,), "float64")},
                              parameters={"threshold": 10})
        assert compute(kernel, np.ones((5, 5)), (2,), "float64").tolist() == [0.0, 0.0]

    def test_integer_image(self):
        kernel = build_kernel("cpu.spot_centroid", {"x": ((8, 8), "int32"), "y": ((2,), "int32")})
        image = np.zeros((8, 8), np.int32)
        image[6, 1] = 10
        assert compute(kernel, image, (2,), "int32").tolist() == [2, -2]  # 2.5 and -2.5 truncated

    @pytest.mark.parametrize("layouts, parameters, message", [
        ({"x": ((16,), "float32"), "y": ((2,), "float32")}, {}, "kernel 'k' requires a 2D input image"),
        ({"x": ((4, 4), "float32"), "y": ((3,), "float32")}, {}, "kernel 'k' requires output shape (2,)"),
        ({"x": ((4, 4), "float32"), "y": ((2,), "float64")}, {}, "kernel 'k' requires matching image/output dtypes"),
        ({"x": ((4, 4), "float32"), "y": ((2,), "float32")}, {"threshold": "0"},
         "kernel 'k' requires numeric parameter 'threshold'"),
        ({"x": ((4, 4), "float32"), "y": ((2,), "float32")}, {"background": None},
         "kernel 'k' requires numeric parameter 'background'"),
        ({"x": ((4, 4), "float32"), "y": ((2,), "float32")}, {"weight_power": 0},
         "kernel 'k' requires 'weight_power' to be positive"),
    ])
    def test_messages(self, layouts, parameters, message):
        assert validation_error("cpu.spot_centroid", layouts, parameters=parameters) == message


class TestShackHartmannCentroid:
    @pytest.mark.parametrize("kind", ["cpu.shack_hartmann_centroid", "cpu.centroid"])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_against_per_tile_loop(self, kind, dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            kernel = build_kernel(kind, {"x": ((24, 32), dtype), "y": ((3, 4, 2), dtype)},
                                  parameters={"tile_size": 8})
        image = random((24, 32), "float64", 0, 10)
        image[0:8, 0:8] = 0  # an empty tile
        image[8:16, 8:16] = -1  # a tile with a negative sum
        image = image.astype(dtype)
        np.testing.assert_allclose(compute(kernel, image, (3, 4, 2), dtype), tiles_reference(image, 8),
                                   rtol=1e-5, atol=1e-6)

    def test_spot_in_each_tile(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            kernel = build_kernel("cpu.shack_hartmann_centroid", {"x": ((8, 8), "float64"),
                                                                  "y": ((2, 2, 2), "float64")},
                                  parameters={"tile_size": 4})
        image = np.zeros((8, 8))
        image[0, 0] = 1  # tile (0, 0): (0, 0) - 1.5
        image[2, 7] = 3  # tile (0, 1): (2, 3) - 1.5
        result = compute(kernel, image, (2, 2, 2), "float64")
        np.testing.assert_allclose(result[0, 0], [-1.5, -1.5])
        np.testing.assert_allclose(result[0, 1], [0.5, 1.5])
        np.testing.assert_allclose(result[1], 0.0)

    @pytest.mark.parametrize("layouts, tile, message", [
        ({"x": ((8, 8), "float32"), "y": ((2, 2, 2), "float32")}, 0, "kernel 'k' requires a positive integer 'tile_size'"),
        ({"x": ((8, 8), "float32"), "y": ((2, 2, 2), "float32")}, 4.0, "kernel 'k' requires a positive integer 'tile_size'"),
        ({"x": ((8, 8), "float32"), "y": ((2, 2, 2), "float32")}, None, "kernel 'k' requires a positive integer 'tile_size'"),
        ({"x": ((64,), "float32"), "y": ((2, 2, 2), "float32")}, 4, "kernel 'k' requires a 2D input image"),
        ({"x": ((8, 8), "float32"), "y": ((2, 2, 3), "float32")}, 4, "kernel 'k' requires output shape (rows, cols, 2)"),
        ({"x": ((8, 8), "float32"), "y": ((8,), "float32")}, 4, "kernel 'k' requires output shape (rows, cols, 2)"),
        ({"x": ((8, 10), "float32"), "y": ((2, 2, 2), "float32")}, 4,
         "kernel 'k' requires image dimensions divisible by tile_size"),
        ({"x": ((8, 8), "float32"), "y": ((2, 1, 2), "float32")}, 4, "kernel 'k' requires output shape (2, 2, 2)"),
        ({"x": ((8, 8), "float32"), "y": ((2, 2, 2), "float64")}, 4, "kernel 'k' requires matching image/output dtypes"),
    ])
    def test_messages(self, layouts, tile, message):
        parameters = {} if tile is None else {"tile_size": tile}
        assert validation_error("cpu.shack_hartmann_centroid", layouts, parameters=parameters) == message


def tip_tilt_layouts(dtype="float64", **overrides):
    layouts = {"x": ((10, 12), dtype), "M": ((2, 2), dtype), "b": ((2,), dtype), "y": ((2,), dtype)}
    layouts.update(overrides)
    return layouts


class TestTipTiltController:
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_against_numpy(self, dtype):
        parameters = {"leak": 0.8, "control_gain": 0.5, "background": 1.0, "threshold": 2.0, "weight_power": 1}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            kernel = build_kernel("cpu.tip_tilt_controller", tip_tilt_layouts(dtype), auxiliary={"M": "M", "b": "b"},
                                  parameters=parameters)
        matrix = np.array([[0.0, 1.0], [-1.0, 0.5]], dtype)
        bias = np.array([0.25, -0.5], dtype)
        state = np.zeros(2)
        for center in [(3.2, 7.9), (6.0, 2.5), (4.5, 5.5)]:
            image = gaussian_spot((10, 12), center).astype(dtype)
            centroid = spot_reference(image, 2.0, 1.0, 1)
            state = 0.8 * state + 0.5 * centroid
            result = compute(kernel, image, (2,), dtype, {"M": matrix, "b": bias})
            np.testing.assert_allclose(result, matrix.astype(np.float64) @ state + bias, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("overrides, message", [
        ({"x": ((120,), "float64")}, "kernel 'k' requires a 2D image and 2x2 matrix"),
        ({"M": ((3, 2), "float64")}, "kernel 'k' requires a 2D image and 2x2 matrix"),
        ({"b": ((3,), "float64")}, "kernel 'k' requires 2-vector bias and output"),
        ({"y": ((2, 1), "float64")}, "kernel 'k' requires 2-vector bias and output"),
        ({"M": ((2, 2), "float32")}, "kernel 'k' requires matching dtypes"),
    ])
    def test_messages(self, overrides, message):
        assert validation_error("cpu.tip_tilt_controller", tip_tilt_layouts(**overrides),
                                auxiliary=("M", "b")) == message

    @pytest.mark.parametrize("parameter", ["leak", "control_gain", "threshold"])
    def test_numeric_parameters(self, parameter):
        assert validation_error("cpu.tip_tilt_controller", tip_tilt_layouts(), auxiliary=("M", "b"),
                                parameters={parameter: "x"}) == f"kernel 'k' requires numeric parameter '{parameter}'"


class TestLegacyKinds:
    @pytest.mark.parametrize("kind", ["cpu.centroid", "cpu.tip_tilt_controller"])
    def test_resolving_warns(self, kind):
        with pytest.warns(DeprecationWarning, match=kind):
            REGISTRY.get(kind)

    def test_current_kinds_do_not_warn(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for kind in REGISTRY.kinds():
                if kind not in ("cpu.centroid", "cpu.tip_tilt_controller"):
                    REGISTRY.get(kind)


class TestRaiseError:
    def test_every_compute_raises(self):
        kernel = build_kernel("cpu.raise_error", {"x": ((2,), "float32"), "y": ((2,), "float32")},
                              parameters={"message": "boom"})
        for _ in range(2):
            with pytest.raises(RuntimeError, match="^boom$"):
                kernel.compute_into(np.zeros(2, np.float32), np.zeros(2, np.float32), {})

    @pytest.mark.parametrize("parameters", [{}, {"message": ""}, {"message": "  "}, {"message": 3}])
    def test_message_is_required(self, parameters):
        assert validation_error("cpu.raise_error", {"x": ((2,), "float32"), "y": ((2,), "float32")},
                                parameters=parameters) == "kernel 'k' requires a non-empty 'message' parameter"


# --------------------------------------------------------------------------- the catalogue is complete


def test_the_cpu_catalogue_of_spec_10_2():
    assert set(REGISTRY.kinds()) == {
        "cpu.copy", "cpu.scale", "cpu.add_constant", "cpu.elementwise_add", "cpu.elementwise_subtract",
        "cpu.elementwise_multiply", "cpu.elementwise_divide", "cpu.scale_offset", "cpu.flatten",
        "cpu.concatenate", "cpu.reduce", "cpu.affine_transform", "cpu.leaky_integrator",
        "cpu.custom_operation", "cpu.spot_centroid", "cpu.shack_hartmann_centroid", "cpu.centroid",
        "cpu.tip_tilt_controller", "cpu.tomographic_controller", "cpu.raise_error",
    }


def test_gpu_twins_only_change_kind_and_storage():
    from shmpiped.kernels.gpu import GPU_KERNELS

    kinds = {cls.kind for cls in GPU_KERNELS}
    assert "gpu.reduce" not in kinds and "gpu.concatenate" in kinds and "gpu.spot_centroid" in kinds
    for cls in GPU_KERNELS:
        assert cls.storage == "gpu"
        cpu_class = cls.__mro__[1]
        assert cls.kind == "gpu." + cpu_class.kind.split(".", 1)[1]
        assert cls.compute_into is cpu_class.compute_into
        assert set(vars(cls)) <= {"kind", "storage", "__module__", "__doc__", "__qualname__", "__firstlineno__",
                                  "__static_attributes__"}


def test_gpu_twin_validation_writes_gpu_streams_and_reads_either():
    from shmpiped.kernels.gpu import GpuScaleKernel

    config = kernel_config("gpu.scale", parameters={"factor": 2})
    with pytest.raises(ConfigValidationError) as caught:
        GpuScaleKernel.validate_config(config, stream_specs({"x": ((3,), "float32"), "y": ((3,), "float32")}))
    assert str(caught.value) == "kernel 'k' of kind 'gpu.scale' requires gpu shared memory for 'y'"
    # A CPU input is uploaded to the device.
    GpuScaleKernel.validate_config(config, stream_specs({"x": ((3,), "float32"), "y": ((3,), "float32", "gpu")}))


# --------------------------------------------------------------------------- no allocation per frame


BIG = (256, 256)  # 512 KiB of float64, 128 KiB of int16: any per-frame array would show


def _case(kind, layouts, trigger, aux_values=None, inputs=("x",), **fields):
    """A kernel, its stream layouts, one frame (trigger and auxiliary arrays) and its config fields."""
    return pytest.param(kind, layouts, trigger, aux_values or {}, inputs, fields, id=f"{kind}-{layouts['y'][1]}")


ALLOCATION_CASES = [
    _case("cpu.copy", {"x": (BIG, "float32"), "y": (BIG, "float32")}, random(BIG, "float32")),
    _case("cpu.scale", {"x": (BIG, "float64"), "y": (BIG, "float64")}, random(BIG), parameters={"factor": 2.0}),
    _case("cpu.scale", {"x": (BIG, "int16"), "y": (BIG, "int16")}, random(BIG, "int16"), parameters={"factor": 0.5}),
    _case("cpu.add_constant", {"x": (BIG, "float32"), "y": (BIG, "float32")}, random(BIG, "float32"),
          parameters={"constant": 1.5}),
    _case("cpu.elementwise_divide", {"x": (BIG, "int32"), "a": (BIG, "int32"), "y": (BIG, "int32")},
          random(BIG, "int32", 1, 9), {"a": random(BIG, "int32", 1, 9)}, auxiliary=("a",)),
    _case("cpu.elementwise_multiply", {"x": (BIG, "float32"), "a": (BIG, "float32"), "y": (BIG, "float32")},
          random(BIG, "float32"), {"a": random(BIG, "float32")}, auxiliary=("a",)),
    _case("cpu.scale_offset", {"x": (BIG, "int16"), "a": (BIG, "int16"), "y": (BIG, "int16")},
          random(BIG, "int16"), {"a": random(BIG, "int16")}, auxiliary=("a",), parameters={"gain": 0.5}),
    _case("cpu.flatten", {"x": (BIG, "float64"), "y": ((BIG[0] * BIG[1],), "float64")}, random(BIG)),
    _case("cpu.concatenate", {"x": (BIG, "float64"), "z": (BIG, "float64"), "y": ((512, 256), "float64")},
          (random(BIG), random(BIG)), inputs=("x", "z")),
    _case("cpu.reduce", {"x": (BIG, "float32"), "y": ((1,), "float32")}, random(BIG, "float32"),
          parameters={"operation": "mean"}),
    _case("cpu.reduce", {"x": (BIG, "int16"), "y": ((1,), "int16")}, random(BIG, "int16"),
          parameters={"operation": "mean"}),
    _case("cpu.affine_transform", {"x": ((256,), "float64"), "A": (BIG, "float64"), "b": ((256,), "float64"),
                                   "y": ((256,), "float64")},
          random((256,)), {"A": random(BIG), "b": random((256,))}, auxiliary={"A": "A", "b": "b"}),
    _case("cpu.leaky_integrator", {"x": ((65536,), "int16"), "g": ((1,), "float32"), "y": ((65536,), "int16")},
          random((65536,), "int16"), {"gain": np.array([0.5], np.float32)}, auxiliary={"gain": "g"},
          parameters={"leak": 0.9}),
    _case("cpu.leaky_integrator", {"x": ((65536,), "float64"), "y": ((65536,), "float64")},
          random((65536,)), parameters={"leak": 0.9, "gain": 0.1}),
    _case("cpu.custom_operation", {"x": (BIG, "float32"), "d": (BIG, "int16"), "f": (BIG, "float32"),
                                   "y": (BIG, "float32")},
          random(BIG, "float32"), {"d": random(BIG, "int16"), "f": random(BIG, "float32")},
          auxiliary=("d", "f"), operation="clip(abs((input - d) * f), 0.5, 2) + 1"),
    _case("cpu.spot_centroid", {"x": (BIG, "float32"), "y": ((2,), "float32")}, random(BIG, "float32", 0, 9),
          parameters={"threshold": 1.0, "background": 0.5, "weight_power": 2}),
    _case("cpu.shack_hartmann_centroid", {"x": (BIG, "uint16"), "y": ((32, 32, 2), "uint16")},
          random(BIG, "uint16", 0, 9), parameters={"tile_size": 8}),
    _case("cpu.tip_tilt_controller", {"x": (BIG, "float32"), "M": ((2, 2), "float32"), "b": ((2,), "float32"),
                                      "y": ((2,), "float32")},
          random(BIG, "float32", 0, 9), {"M": np.eye(2, dtype=np.float32), "b": np.zeros(2, np.float32)},
          auxiliary=("M", "b")),
]


@pytest.mark.parametrize("kind, layouts, trigger, auxiliary, inputs, fields", ALLOCATION_CASES)
def test_no_array_is_allocated_per_frame(kind, layouts, trigger, auxiliary, inputs, fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        kernel = build_kernel(kind, layouts, inputs=inputs, **fields)
    shape, dtype = layouts["y"]
    output = np.zeros(shape, dtype)
    with np.errstate(all="ignore"):
        peak = peak_allocation(lambda: kernel.compute_into(trigger, output, auxiliary))
    assert peak < ALLOCATION_LIMIT, f"{kind} allocated {peak} bytes over 100 frames"


def test_the_allocation_check_detects_a_temporary():
    image = random(BIG)
    output = np.empty(BIG)
    assert peak_allocation(lambda: np.copyto(output, image * 2.0)) > ALLOCATION_LIMIT


def test_centroid_plans_keep_their_buffers():
    spot = SpotCentroidPlan(np, (16, 16))
    tiles = TileCentroidPlan(np, (16, 16), 4)
    before = [id(b) for b in (spot.weights, spot.row_sums, spot.moments, tiles.image, tiles.slopes, tiles.totals)]
    image = random((16, 16), "float64", 0, 5)
    for _ in range(3):
        spot.compute(image, np.empty(2))
        tiles.compute(image, np.empty((4, 4, 2)))
    after = [id(b) for b in (spot.weights, spot.row_sums, spot.moments, tiles.image, tiles.slopes, tiles.totals)]
    assert before == after
    assert tiles.tiles.base is tiles.image or tiles.tiles.base is tiles.image.base
