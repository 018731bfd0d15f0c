"""Kernels, sources and sinks: the plugin contracts, the built-in catalogue and the registry.

Nothing here knows about processes: the worker and the manager build
plugins through ``KernelRegistry.create*`` and drive them.
"""

from shmpiped.kernels.base import (
    Kernel,
    KernelContext,
    Sink,
    SinkContext,
    Source,
    SourceContext,
    array_namespace,
)
from shmpiped.kernels.registry import KernelRegistry, default_registry

__all__ = [
    "Kernel",
    "KernelContext",
    "KernelRegistry",
    "Sink",
    "SinkContext",
    "Source",
    "SourceContext",
    "array_namespace",
    "default_registry",
]
