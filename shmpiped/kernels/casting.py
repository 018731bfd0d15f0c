"""Allocation-free element-wise arithmetic across dtypes.

A ufunc whose operands or output need a dtype conversion makes NumPy buffer
the cast, which allocates on every call. ``CastingUfunc`` decides once, from
the dtypes a kernel will see, which operands need converting and keeps a
preallocated buffer for each; every call then runs with matching dtypes only.
With equal dtypes (the common case) it is a plain ``ufunc(a, b, out=out)``.
"""

from __future__ import annotations

from types import ModuleType

import numpy


def _sample(operand):
    """A numpy stand-in for an operand given as a dtype or as a Python scalar."""
    if isinstance(operand, numpy.dtype):
        return numpy.ones(1, dtype=operand)
    return operand


def loop_dtype(ufunc_name: str, *operands) -> numpy.dtype:
    """The dtype NumPy computes ``ufunc(*operands)`` in; operands are dtypes or scalars."""
    return numpy.asarray(getattr(numpy, ufunc_name)(*(_sample(op) for op in operands))).dtype


class CastingUfunc:
    """``ufunc(*operands)`` into ``out`` without per-call allocation.

    ``operand_kinds`` gives, per position, the dtype of the array that will be
    passed there or the Python scalar itself (scalars are weakly typed).
    """

    def __init__(
        self,
        xp: ModuleType,
        ufunc_name: str,
        operand_kinds: tuple,
        out_dtype,
        shape: tuple[int, ...],
    ) -> None:
        self.xp = xp
        self.ufunc = getattr(xp, ufunc_name)
        self.dtype = loop_dtype(ufunc_name, *operand_kinds)
        out_dtype = numpy.dtype(out_dtype)
        self._operand_buffers = tuple(
            xp.empty(shape, dtype=self.dtype)
            if isinstance(kind, numpy.dtype) and kind != self.dtype
            else None
            for kind in operand_kinds
        )
        self._result_buffer = None
        if out_dtype != self.dtype:
            reusable = [buffer for buffer in self._operand_buffers if buffer is not None]
            self._result_buffer = reusable[0] if reusable else xp.empty(shape, dtype=self.dtype)
        self._direct = self._result_buffer is None and not any(
            buffer is not None for buffer in self._operand_buffers
        )

    def __call__(self, *operands_and_out):
        *operands, out = operands_and_out
        if self._direct:
            self.ufunc(*operands, out=out)
            return
        converted = []
        for operand, buffer in zip(operands, self._operand_buffers):
            if buffer is not None:
                self.xp.copyto(buffer, operand, casting="unsafe")
                operand = buffer
            converted.append(operand)
        if self._result_buffer is None:
            self.ufunc(*converted, out=out)
        else:
            self.ufunc(*converted, out=self._result_buffer)
            self.xp.copyto(out, self._result_buffer, casting="unsafe")
