"""Re-exports the kernel contract under shmpipeline's module name (defined in ``shmpiped.kernels.base``)."""

from shmpiped.kernels.base import Kernel, KernelContext

__all__ = ["Kernel", "KernelContext"]
