"""The custom_operation expression language (spec 10.4): grammar, compilation, execution, messages."""

from __future__ import annotations

import numpy as np
import pytest

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.custom_operation import OUTPUT, compile_operation
from tests.kernel_helpers import ALLOCATION_LIMIT, build_kernel, peak_allocation, validation_error

rng = np.random.default_rng(7)


def run(operation, arrays, output_shape=None, output_dtype=None):
    """Build a cpu.custom_operation over ``arrays`` (``input`` plus aliases) and compute one frame."""
    layouts = {"x": (arrays["input"].shape, arrays["input"].dtype.name)}
    auxiliary = {}
    for alias, array in arrays.items():
        if alias != "input":
            layouts[f"s_{alias}"] = (array.shape, array.dtype.name)
            auxiliary[alias] = f"s_{alias}"
    shape = output_shape or arrays["input"].shape
    dtype = output_dtype or arrays["input"].dtype.name
    layouts["y"] = (shape, dtype)
    kernel = build_kernel("cpu.custom_operation", layouts, auxiliary=auxiliary, operation=operation)
    output = np.full(shape, -99, dtype=dtype)
    kernel.compute_into(arrays["input"], output, {k: v for k, v in arrays.items() if k != "input"})
    return output, kernel


def error(operation, layouts=None, auxiliary=None, output=((4,), "float32")):
    layouts = dict(layouts or {"x": ((4,), "float32")})
    layouts["y"] = output
    return validation_error("cpu.custom_operation", layouts, auxiliary=auxiliary or (), operation=operation)


def f32(*shape, low=-3, high=3):
    return rng.uniform(low, high, size=shape).astype(np.float32)


class TestExamples:
    def test_dark_and_flat(self):
        frame, dark, flat = f32(6, 8), f32(6, 8), f32(6, 8)
        result, _ = run("(input - dark) * flat", {"input": frame, "dark": dark, "flat": flat})
        np.testing.assert_allclose(result, (frame - dark) * flat, rtol=1e-6)

    def test_matrix_vector_product(self):
        vector, matrix = f32(5), f32(3, 5)
        result, _ = run("matrix @ input", {"input": vector, "matrix": matrix}, output_shape=(3,))
        np.testing.assert_allclose(result, matrix @ vector, rtol=1e-5)

    def test_clip_of_abs(self):
        frame, lo, hi = f32(10), np.full(10, 0.5, np.float32), np.full(10, 2.0, np.float32)
        result, _ = run("clip(abs(input), lo, hi)", {"input": frame, "lo": lo, "hi": hi})
        np.testing.assert_allclose(result, np.clip(np.abs(frame), 0.5, 2.0))

    @pytest.mark.parametrize("name, reference", [("min", np.minimum), ("minimum", np.minimum),
                                                 ("max", np.maximum), ("maximum", np.maximum)])
    def test_min_max(self, name, reference):
        a, b = f32(7), f32(7)
        result, _ = run(f"{name}(input, other)", {"input": a, "other": b})
        np.testing.assert_array_equal(result, reference(a, b))

    def test_every_operator_and_precedence(self):
        a, b = f32(4, low=1, high=2), f32(4, low=1, high=2)
        result, _ = run("-input + b * 2 - input / b + +b", {"input": a, "b": b})
        np.testing.assert_allclose(result, -a + b * 2 - a / b + b, rtol=1e-6)

    def test_constants_in_clip(self):
        a = f32(9)
        result, _ = run("clip(input, -1, 1.5)", {"input": a})
        np.testing.assert_allclose(result, np.clip(a, -1, 1.5))

    def test_broadcast_auxiliary(self):
        frame, row = f32(4, 6), f32(6)
        result, _ = run("input - row", {"input": frame, "row": row})
        np.testing.assert_allclose(result, frame - row)

    def test_mixed_dtypes_are_promoted_like_numpy(self):
        frame, dark = f32(8), rng.integers(0, 5, size=8).astype(np.int16)
        result, kernel = run("input - dark", {"input": frame, "dark": dark})
        np.testing.assert_allclose(result, frame - dark)
        functions = [i.function for i in kernel.program.compiled.instructions]
        assert functions == ["copy", "subtract"]  # dark converted once into a float32 temporary

    def test_integer_division_into_float_output(self):
        a, b = np.array([1, 2, 7], np.int32), np.array([2, 4, 2], np.int32)
        result, _ = run("input / b", {"input": a, "b": b}, output_dtype="float64")
        np.testing.assert_allclose(result, [0.5, 0.5, 3.5])

    def test_scalar_valued_subexpression_of_arrays_is_computed_each_frame(self):
        vector = f32(5)
        result, kernel = run("(input @ input) * input", {"input": vector})
        np.testing.assert_allclose(result, (vector @ vector) * vector, rtol=1e-5)
        other = f32(5)
        output = np.empty(5, np.float32)
        kernel.compute_into(other, output, {})
        np.testing.assert_allclose(output, (other @ other) * other, rtol=1e-5)


class TestCompilation:
    def plan(self, expression, streams=None, output=((4,), "float64")):
        return compile_operation(expression, kernel_name="k", streams=streams or {"input": ((4,), "float64")},
                                 output=output)

    def test_root_writes_the_output_and_intermediates_use_temporaries(self):
        plan = self.plan("(input - d) * f", {"input": ((4,), "float64"), "d": ((4,), "float64"),
                                             "f": ((4,), "float64")})
        assert [i.function for i in plan.instructions] == ["subtract", "multiply"]
        assert plan.instructions[0].destination.kind == "temporary"
        assert plan.instructions[-1].destination == OUTPUT
        assert plan.temporaries == (((4,), np.dtype("float64")),)
        assert plan.names == ("d", "f", "input")

    def test_bare_name_becomes_a_copy(self):
        plan = self.plan("input")
        assert [(i.function, i.destination) for i in plan.instructions] == [("copy", OUTPUT)]
        assert plan.temporaries == ()

    def test_unary_plus_is_free(self):
        assert [i.function for i in self.plan("+input").instructions] == ["copy"]
        assert [i.function for i in self.plan("+(input * 2)").instructions] == ["multiply"]

    def test_constant_subexpressions_are_folded(self):
        plan = self.plan("input * (2 + 3) - -(4 / 2)")
        assert [i.function for i in plan.instructions] == ["multiply", "subtract"]
        assert plan.instructions[0].operands[1].value == 5
        assert plan.instructions[1].operands[1].value == -2.0
        assert self.plan("input * abs(-3)").instructions[0].operands[1].value == 3
        assert self.plan("input + max(1, 2)").instructions[0].operands[1].value == 2

    def test_python_scalars_do_not_promote_float32(self):
        plan = self.plan("input * 2.5 + 1", {"input": ((4,), "float32")}, output=((4,), "float32"))
        assert plan.result_dtype == np.dtype("float32")
        assert all(dtype == np.dtype("float32") for _, dtype in plan.temporaries)

    def test_user_text_is_never_evaluated(self, tmp_path):
        marker = tmp_path / "pwned"
        with pytest.raises(ConfigValidationError):
            self.plan(f"__import__('pathlib').Path({str(marker)!r}).touch()")
        with pytest.raises(ConfigValidationError):
            self.plan("max(input, input).__class__")
        assert not marker.exists()


class TestMessages:
    def test_operation_is_required(self):
        assert error(None) == "kernel 'k' of kind 'cpu.custom_operation' requires an 'operation' field"

    def test_alias_input_is_reserved(self):
        assert error("input", {"x": ((4,), "float32"), "a": ((4,), "float32")}, auxiliary={"input": "a"}) == (
            "kernel 'k' cannot bind auxiliary alias 'input'")

    def test_unknown_name_lists_the_allowed_names(self):
        layouts = {"x": ((4,), "float32"), "sa": ((4,), "float32"), "sb": ((4,), "float32")}
        assert error("input + c", layouts, auxiliary={"b": "sb", "a": "sa"}) == (
            "kernel 'k' operation references unknown name 'c'; allowed names are: a, b, input")

    @pytest.mark.parametrize("expression", ["input + True", "input * 'x'", "input + None", "input * 1j"])
    def test_only_numeric_constants(self, expression):
        assert error(expression) == "kernel 'k' operation only supports numeric constants"

    @pytest.mark.parametrize("expression", ["input ** 2", "input % 2", "input // 2", "input << 1", "input & 1"])
    def test_unsupported_binary_operator(self, expression):
        assert error(expression) == "kernel 'k' operation uses unsupported binary operator"

    @pytest.mark.parametrize("expression", ["~input", "not input"])
    def test_unsupported_unary_operator(self, expression):
        assert error(expression) == "kernel 'k' operation uses unsupported unary operator"

    def test_keyword_arguments(self):
        assert error("clip(input, 0, hi=1)") == "kernel 'k' operation does not support keyword arguments"

    @pytest.mark.parametrize("expression", ["np.abs(input)", "input.clip(0, 1)", "(abs)(input)()"])
    def test_only_direct_calls(self, expression):
        message = error(expression)
        assert message == "kernel 'k' operation only supports direct intrinsic calls"

    @pytest.mark.parametrize("function", ["sqrt", "exp", "eval", "__import__"])
    def test_unknown_function(self, function):
        assert error(f"{function}(input)") == (
            f"kernel 'k' operation uses unsupported function '{function}'; "
            "allowed functions are: abs, clip, max, maximum, min, minimum")

    @pytest.mark.parametrize("expression, name, count", [
        ("clip(input, 0)", "clip", 3), ("abs(input, input)", "abs", 1), ("min(input)", "min", 2),
        ("maximum(input, 1, 2)", "maximum", 2),
    ])
    def test_argument_count(self, expression, name, count):
        assert error(expression) == f"kernel 'k' operation function '{name}' expects {count} arguments"

    @pytest.mark.parametrize("expression, node", [
        ("input if input else input", "IfExp"), ("input[0]", "Subscript"), ("input.T", "Attribute"),
        ("input > 0", "Compare"), ("[input]", "List"), ("lambda: input", "Lambda"),
        ("input and input", "BoolOp"), ("(input, input)", "Tuple"), ("f'{input}'", "JoinedStr"),
        ("abs(*input)", "Starred"),
    ])
    def test_unsupported_syntax(self, expression, node):
        assert error(expression) == f"kernel 'k' operation uses unsupported syntax: {node}"

    @pytest.mark.parametrize("expression", ["input +", "x = input", "input; input", "import os", ""])
    def test_invalid_syntax(self, expression):
        message = error(expression) if expression else None
        if expression:
            assert message.startswith("kernel 'k' has invalid operation syntax: ")
        else:
            assert error("") == "kernel 'k' of kind 'cpu.custom_operation' requires an 'operation' field"

    def test_shapes_that_do_not_broadcast(self):
        message = error("input + a", {"x": ((4,), "float32"), "a": ((3,), "float32")}, auxiliary=("a",))
        assert message.startswith("kernel 'k' operation is invalid for the configured stream shapes: ")
        assert "broadcast" in message

    def test_matmul_of_incompatible_shapes(self):
        message = error("a @ input", {"x": ((4,), "float32"), "a": ((3, 5), "float32")}, auxiliary=("a",),
                        output=((3,), "float32"))
        assert message.startswith("kernel 'k' operation is invalid for the configured stream shapes: matmul")

    def test_result_shape_must_match(self):
        assert error("a @ input", {"x": ((4,), "float32"), "a": ((3, 4), "float32")}, auxiliary=("a",)) == (
            "kernel 'k' operation result shape (3,) does not match output shape (4,)")
        assert error("input @ input") == "kernel 'k' operation result shape () does not match output shape (4,)"
        assert error("3") == "kernel 'k' operation result shape () does not match output shape (4,)"

    def test_result_dtype_must_match_exactly(self):
        assert error("input * a", {"x": ((4,), "float32"), "a": ((4,), "float64")}, auxiliary=("a",)) == (
            "kernel 'k' operation result dtype float64 does not match output dtype float32")
        assert error("input / 2", {"x": ((4,), "int16")}, output=((4,), "int16")) == (
            "kernel 'k' operation result dtype float64 does not match output dtype int16")

    def test_base_checks_come_first(self):
        assert error("input", {"x": ((4,), "float32", "gpu")}) == (
            "kernel 'k' of kind 'cpu.custom_operation' requires cpu shared memory for 'x'"
            " (give it `cpu_mirror: true` to read it from the CPU, or use a gpu.* kind)")


def test_no_array_is_allocated_per_frame_with_casts_and_broadcasts():
    frame, row = f32(256, 256), rng.integers(0, 9, size=256).astype(np.int16)
    result, kernel = run("max(abs(input - row) * 2, 0.5) + -input", {"input": frame, "row": row})
    np.testing.assert_allclose(result, np.maximum(np.abs(frame - row) * 2, 0.5) - frame, rtol=1e-6)
    output = np.empty_like(frame)
    temporaries = [id(t) for t in kernel.program.temporaries]
    peak = peak_allocation(lambda: kernel.compute_into(frame, output, {"row": row}))
    assert peak < ALLOCATION_LIMIT
    assert [id(t) for t in kernel.program.temporaries] == temporaries
