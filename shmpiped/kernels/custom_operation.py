"""The ``custom_operation`` kernel and its expression language (spec 10.4).

An ``operation`` such as ``(input - dark) * flat`` is parsed once with
``ast`` (eval mode; user text is never evaluated), checked against the
stream shapes and dtypes, and compiled into a linear list of instructions.
Checking costs the same for any stream size: shapes are worked out by the
broadcasting and matmul rules, dtypes (and NumPy's own type errors) by
running each step on one-element stand-ins with the streams' dtypes and
numbers of dimensions.  An expression is at most
``config_limits.MAX_OPERATION_CHARS`` long and nests at most
``MAX_OPERATION_DEPTH`` deep; a constant (written, or folded) must be finite. Each instruction calls one array function
with ``out=``: the root writes straight into the output view, every
intermediate result into a temporary allocated once when the kernel is made.

The language: the names ``input`` and the auxiliary aliases; int and float
constants; ``+ - * / @``; unary ``+ -``; the calls ``abs(x)``,
``min/minimum(a, b)``, ``max/maximum(a, b)`` and ``clip(x, lo, hi)``.
A subexpression of constants only is folded to a constant. An array operand
whose dtype differs from the dtype of the operation, or that an element-wise
operation would broadcast, is first copied into a temporary of the result's
dtype and shape, so no array function buffers (and allocates) on the hot path.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

import numpy

from shmpiped.config_limits import MAX_OPERATION_CHARS, MAX_OPERATION_DEPTH, short_repr
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel

#: call name -> (array function, number of arguments)
FUNCTIONS = {
    "abs": ("absolute", 1),
    "clip": ("clip", 3),
    "max": ("maximum", 2),
    "maximum": ("maximum", 2),
    "min": ("minimum", 2),
    "minimum": ("minimum", 2),
}
BINARY_OPERATORS = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
    ast.MatMult: "matmul",
}
UNARY_OPERATORS = {ast.UAdd: "positive", ast.USub: "negative"}
#: Functions run with casting="unsafe" (spec 10.4); after the compiler's
#: conversions their operands already have the result dtype.
UNSAFE_CASTING = frozenset({"add", "subtract", "multiply", "divide", "copy"})
#: Functions whose first operand must be an array: ``cupy.clip(a, ...)`` calls ``a.clip``.
ARRAY_FIRST_OPERAND = frozenset({"clip"})


@dataclass(frozen=True)
class Operand:
    """Where an instruction reads or writes: input, auxiliary, temporary, constant or output.

    An ``array_constant`` (value, dtype) is a constant bound as a 0-d array of that dtype.
    """

    kind: str
    value: Any = None


OUTPUT = Operand("output")


@dataclass(frozen=True)
class Instruction:
    function: str  # array function name, or "copy"
    destination: Operand  # output or temporary
    operands: tuple[Operand, ...]


@dataclass(frozen=True)
class CompiledOperation:
    """A checked operation: instructions plus the layout of its temporaries."""

    expression: str
    instructions: tuple[Instruction, ...]
    temporaries: tuple[tuple[tuple[int, ...], numpy.dtype], ...]  # (shape, dtype) each
    result_shape: tuple[int, ...]
    result_dtype: numpy.dtype
    names: tuple[str, ...]  # the stream names the expression reads, sorted


@dataclass(frozen=True)
class _Value:
    operand: Operand
    shape: tuple[int, ...]  # () for constants
    sample: Any  # a one-element array of the value's dtype and number of dimensions, or a Python number
    names: frozenset

    @property
    def is_constant(self) -> bool:
        return self.operand.kind == "constant"


def _stand_in(shape: tuple[int, ...], dtype) -> numpy.ndarray:
    """One element of ``dtype`` with as many dimensions as ``shape``: computes the dtypes NumPy would."""
    return numpy.ones((1,) * len(shape), dtype=dtype)


def broadcast_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape NumPy broadcasts ``shapes`` to (ValueError naming them when they do not)."""
    result: list[int] = []
    for axis in range(1, max((len(shape) for shape in shapes), default=0) + 1):
        sizes = {shape[-axis] for shape in shapes if len(shape) >= axis} - {1}
        if len(sizes) > 1:
            listed = " and ".join(str(shape) for shape in shapes)
            raise ValueError(f"operands of shapes {listed} cannot be broadcast together")
        result.insert(0, sizes.pop() if sizes else 1)
    return tuple(result)


def matmul_shape(left: tuple[int, ...], right: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``left @ right`` by NumPy's rules (ValueError when the operands do not line up)."""
    if not left or not right:
        raise ValueError("matmul: an operand is a scalar (matmul needs at least one dimension on each side)")
    a = (1, *left) if len(left) == 1 else left
    b = (*right, 1) if len(right) == 1 else right
    if a[-1] != b[-2]:
        raise ValueError(f"matmul: operands of shapes {left} and {right} do not line up "
                         f"({a[-1]} columns against {b[-2]} rows)")
    try:
        batch = broadcast_shape([a[:-2], b[:-2]])
    except ValueError as exc:
        raise ValueError(f"matmul: {exc}") from None
    return (*batch, *((a[-2],) if len(left) > 1 else ()), *((b[-1],) if len(right) > 1 else ()))


def _depth(tree: ast.AST) -> int:
    """How deep ``tree`` nests, walked without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Compiler:
    def __init__(self, expression: str, kernel_name: str, streams: Mapping[str, tuple], output: tuple):
        self.expression = expression
        self.prefix = f"kernel {kernel_name!r}"
        self.streams = {
            name: (tuple(int(dim) for dim in shape), numpy.dtype(dtype)) for name, (shape, dtype) in streams.items()
        }
        self.output_shape = tuple(output[0])
        self.output_dtype = numpy.dtype(output[1])
        self.instructions: list[Instruction] = []
        self.temporaries: list[tuple[tuple[int, ...], numpy.dtype]] = []

    def error(self, text: str) -> ConfigValidationError:
        return ConfigValidationError(f"{self.prefix} {text}")

    def parse(self) -> ast.Expression:
        if len(self.expression) > MAX_OPERATION_CHARS:
            raise self.error(f"operation is {len(self.expression)} characters long; an operation has at most "
                             f"{MAX_OPERATION_CHARS}")
        try:
            tree = ast.parse(self.expression, mode="eval")
        except SyntaxError as exc:
            raise self.error(f"has invalid operation syntax: {exc.msg}") from exc
        except (RecursionError, MemoryError) as exc:  # the parser's own nesting limit
            raise self.error(f"operation nests deeper than {MAX_OPERATION_DEPTH} levels") from exc
        if _depth(tree.body) > MAX_OPERATION_DEPTH:
            raise self.error(f"operation nests deeper than {MAX_OPERATION_DEPTH} levels "
                             "(each operator, call and sign is one; a sum of n terms nests n deep)")
        return tree

    def compile(self) -> CompiledOperation:
        tree = self.parse()
        result = self.visit(tree.body, root=True)
        if result.operand != OUTPUT:
            self.instructions.append(Instruction("copy", OUTPUT, (result.operand,)))
        if result.shape != self.output_shape:
            raise self.error(
                f"operation result shape {result.shape} does not match output shape {self.output_shape}"
            )
        dtype = numpy.asarray(result.sample).dtype
        if dtype != self.output_dtype:
            raise self.error(
                f"operation result dtype {dtype.name} does not match output dtype {self.output_dtype.name}"
            )
        return CompiledOperation(
            expression=self.expression,
            instructions=tuple(self.instructions),
            temporaries=tuple(self.temporaries),
            result_shape=result.shape,
            result_dtype=dtype,
            names=tuple(sorted(result.names)),
        )

    # -- nodes

    def visit(self, node: ast.AST, root: bool = False) -> _Value:
        if isinstance(node, ast.Name):
            return self.visit_name(node)
        if isinstance(node, ast.Constant):
            return self.visit_constant(node)
        if isinstance(node, ast.UnaryOp):
            function = UNARY_OPERATORS.get(type(node.op))
            if function is None:
                raise self.error("operation uses unsupported unary operator")
            if function == "positive":  # +x is x itself
                return self.visit(node.operand, root)
            return self.finite(node, self.apply(function, (self.visit(node.operand),), root))
        if isinstance(node, ast.BinOp):
            function = BINARY_OPERATORS.get(type(node.op))
            if function is None:
                raise self.error("operation uses unsupported binary operator")
            return self.finite(node, self.apply(function, (self.visit(node.left), self.visit(node.right)), root))
        if isinstance(node, ast.Call):
            return self.finite(node, self.visit_call(node, root))
        raise self.error(f"operation uses unsupported syntax: {type(node).__name__}")

    def visit_name(self, node: ast.Name) -> _Value:
        if node.id not in self.streams:
            allowed = ", ".join(sorted(self.streams))
            raise self.error(f"operation references unknown name {node.id!r}; allowed names are: {allowed}")
        kind = "input" if node.id == "input" else "auxiliary"
        shape, dtype = self.streams[node.id]
        return _Value(Operand(kind, node.id), shape, _stand_in(shape, dtype), frozenset({node.id}))

    def visit_constant(self, node: ast.Constant) -> _Value:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error("operation only supports numeric constants")
        return self.finite(node, _Value(Operand("constant", value), (), value, frozenset()))

    def finite(self, node: ast.AST, value: _Value) -> _Value:
        """``value``, unless it is a constant that is not a finite number (``1e999``, ``1/0``)."""
        if value.is_constant and isinstance(value.sample, float) and not math.isfinite(value.sample):
            text = ast.get_source_segment(self.expression, node) or ast.unparse(node)
            raise self.error(f"operation constant {short_repr(text)[1:-1]} is {value.sample}, not a finite "
                             "number")
        return value

    def visit_call(self, node: ast.Call, root: bool) -> _Value:
        if node.keywords:
            raise self.error("operation does not support keyword arguments")
        if not isinstance(node.func, ast.Name):
            raise self.error("operation only supports direct intrinsic calls")
        entry = FUNCTIONS.get(node.func.id)
        if entry is None:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.error(
                f"operation uses unsupported function {node.func.id!r}; allowed functions are: {allowed}"
            )
        function, arity = entry
        if len(node.args) != arity:
            raise self.error(f"operation function {node.func.id!r} expects {arity} arguments")
        return self.apply(function, tuple(self.visit(argument) for argument in node.args), root)

    # -- instructions

    def apply(self, function: str, arguments: tuple[_Value, ...], root: bool) -> _Value:
        names = frozenset().union(*(argument.names for argument in arguments))
        try:
            if function == "matmul":
                shape = matmul_shape(arguments[0].shape, arguments[1].shape)
            else:
                shape = broadcast_shape([argument.shape for argument in arguments])
            with numpy.errstate(all="ignore"):
                sample = getattr(numpy, function)(*(argument.sample for argument in arguments))
        except Exception as exc:  # a shape, or numpy's own type error, reported to the user
            raise self.error(f"operation is invalid for the configured stream shapes: {exc}") from exc
        if all(argument.is_constant for argument in arguments):
            constant = numpy.asarray(sample).item()
            return _Value(Operand("constant", constant), (), constant, names)
        sample = numpy.asarray(sample)
        operands = tuple(self.converted(argument, sample.dtype, None if function == "matmul" else shape)
                         for argument in arguments)
        if function in ARRAY_FIRST_OPERAND and arguments[0].is_constant:
            operands = (Operand("array_constant", (arguments[0].operand.value, sample.dtype)), *operands[1:])
        destination = OUTPUT if root else self.temporary(shape, sample.dtype)
        self.instructions.append(Instruction(function, destination, operands))
        return _Value(destination, shape, sample, names)

    def converted(self, argument: _Value, dtype: numpy.dtype, shape: tuple | None) -> Operand:
        """The operand itself, or a temporary holding it as ``dtype`` (and broadcast to ``shape``).

        NumPy buffers, so allocates, on every call whose operands need a cast or
        broadcast a multi-element array; a ``copyto`` into a temporary does neither.
        """
        if argument.is_constant:
            return argument.operand
        broadcast = shape is not None and argument.shape != shape and math.prod(argument.shape) > 1
        if numpy.asarray(argument.sample).dtype == dtype and not broadcast:
            return argument.operand
        temporary = self.temporary(shape if broadcast else argument.shape, dtype)
        self.instructions.append(Instruction("copy", temporary, (argument.operand,)))
        return temporary

    def temporary(self, shape, dtype) -> Operand:
        self.temporaries.append((tuple(shape), numpy.dtype(dtype)))
        return Operand("temporary", len(self.temporaries) - 1)


def compile_operation(
    expression: str,
    *,
    kernel_name: str,
    streams: Mapping[str, tuple],
    output: tuple,
) -> CompiledOperation:
    """Check and compile ``expression``.

    ``streams`` maps each name the expression may use (``input`` and the
    auxiliary aliases) to ``(shape, dtype)``; ``output`` is ``(shape, dtype)``.
    Raises ConfigValidationError with the spec's messages.
    """
    return _Compiler(expression, kernel_name, streams, output).compile()


class OperationProgram:
    """A compiled operation bound to an array namespace, with its temporaries allocated."""

    def __init__(self, compiled: CompiledOperation, xp: ModuleType) -> None:
        self.compiled = compiled
        self.xp = xp
        self.temporaries = tuple(xp.empty(shape, dtype=dtype) for shape, dtype in compiled.temporaries)
        self._steps = tuple(self._bind(instruction) for instruction in compiled.instructions)

    def _bind(self, instruction: Instruction):
        xp = self.xp
        if instruction.function == "copy":
            function = xp.copyto
        else:
            function = getattr(xp, instruction.function)
        options = {"casting": "unsafe"} if instruction.function in UNSAFE_CASTING else {}
        destination = self._bind_operand(instruction.destination)
        operands = tuple(self._bind_operand(operand) for operand in instruction.operands)
        return instruction.function == "copy", function, destination, operands, options

    def _bind_operand(self, operand: Operand):
        """Temporaries and constants are resolved now; streams and the output per frame."""
        if operand.kind == "temporary":
            return self.temporaries[operand.value]
        if operand.kind == "constant":
            return operand.value
        if operand.kind == "array_constant":
            value, dtype = operand.value
            return self.xp.asarray(value, dtype=dtype)
        return operand  # input / auxiliary / output: an Operand marker

    @staticmethod
    def _value(operand, trigger_input, auxiliary_inputs, output):
        if not isinstance(operand, Operand):
            return operand  # a temporary array or a constant, bound at construction
        if operand.kind == "input":
            return trigger_input
        if operand.kind == "auxiliary":
            return auxiliary_inputs[operand.value]
        return output

    def run(self, trigger_input, auxiliary_inputs: Mapping[str, Any], output) -> None:
        """Execute every instruction; the last one writes ``output``."""
        value = self._value
        for is_copy, function, destination, operands, options in self._steps:
            arguments = [value(operand, trigger_input, auxiliary_inputs, output) for operand in operands]
            target = value(destination, trigger_input, auxiliary_inputs, output)
            if is_copy:
                function(target, arguments[0], **options)
            else:
                function(*arguments, out=target, **options)


class CustomOperationKernel(Kernel):
    """output = the kernel's ``operation`` expression over input and its auxiliary aliases."""

    kind = "cpu.custom_operation"
    auxiliary_arity = None

    @classmethod
    def compiled_operation(cls, config, shared_memory) -> CompiledOperation:
        """Check the binding and compile its ``operation`` (raises ConfigValidationError)."""
        if not config.operation:
            raise ConfigValidationError(
                f"kernel {config.name!r} of kind {cls.kind!r} requires an 'operation' field"
            )
        if any(binding.alias == "input" for binding in config.auxiliary):
            raise ConfigValidationError(f"kernel {config.name!r} cannot bind auxiliary alias 'input'")
        streams = {"input": shared_memory[config.input]}
        streams.update({binding.alias: shared_memory[binding.name] for binding in config.auxiliary})
        output = shared_memory[config.output]
        return compile_operation(
            config.operation,
            kernel_name=config.name,
            streams={name: (tuple(spec.shape), spec.dtype) for name, spec in streams.items()},
            output=(tuple(output.shape), output.dtype),
        )

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        cls.compiled_operation(config, shared_memory)

    def __init__(self, context) -> None:
        super().__init__(context)
        self.program = OperationProgram(self.compiled_operation(context.config, context.shared_memory), self.xp)

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self.program.run(trigger_input, auxiliary_inputs, output)
