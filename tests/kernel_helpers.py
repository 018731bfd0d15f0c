"""Helpers shared by the kernel, custom-operation and registry tests.

Kernels are built through the real registry from real config dataclasses and
driven directly with ``compute_into`` on NumPy arrays: no processes needed.
"""

from __future__ import annotations

import tracemalloc
import warnings

import pytest

from shmpiped.config import KernelConfig, SharedMemoryConfig
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels import default_registry

REGISTRY = default_registry(entry_points=[], include_gpu=False)


def stream_specs(layouts: dict) -> dict:
    """name -> (shape, dtype[, storage[, {gpu_device, cpu_mirror}]]) into name -> SharedMemoryConfig."""
    specs = {}
    for name, layout in layouts.items():
        shape, dtype, *rest = layout
        storage = rest[0] if rest else "cpu"
        extra = rest[1] if len(rest) > 1 else {}
        specs[name] = SharedMemoryConfig(
            name, tuple(shape), dtype, storage=storage,
            gpu_device=(extra.get("gpu_device", "cuda:0") if storage == "gpu" else None),
            cpu_mirror=extra.get("cpu_mirror"),
        )
    return specs


def kernel_config(kind, inputs=("x",), outputs=("y",), auxiliary=(), parameters=None, operation=None,
                  **fields) -> KernelConfig:
    return KernelConfig(name="k", kind=kind, inputs=inputs, outputs=outputs, auxiliary=auxiliary,
                        parameters=parameters or {}, operation=operation, **fields)


def build_kernel(kind, layouts, **config_fields):
    return REGISTRY.create(kernel_config(kind, **config_fields), stream_specs(layouts))


def validation_error(kind, layouts, **config_fields) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy kinds warn when resolved
        with pytest.raises(ConfigValidationError) as caught:
            REGISTRY.validate(kernel_config(kind, **config_fields), stream_specs(layouts))
    return str(caught.value)


def peak_allocation(step, calls: int = 100) -> int:
    """Peak bytes traced by tracemalloc while running ``step`` ``calls`` times (after one warm-up).

    NumPy reports its array buffers to tracemalloc, so any array a call makes
    (even a temporary freed at once) shows up in the peak.
    """
    step()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            step()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


#: Far below the smallest array in the allocation tests (>= 64 KiB), far above interpreter noise.
ALLOCATION_LIMIT = 16 * 1024
