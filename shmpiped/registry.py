"""Re-exports the plugin registry under shmpipeline's module name (defined in ``shmpiped.kernels.registry``)."""

from shmpiped.kernels.registry import (
    LEGACY_AO_KERNEL_KINDS,
    KernelRegistry,
    default_registry,
    get_default_registry,
)

__all__ = ["LEGACY_AO_KERNEL_KINDS", "KernelRegistry", "default_registry", "get_default_registry"]
