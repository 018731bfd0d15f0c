"""Re-exports the source contract under shmpipeline's module name (defined in ``shmpiped.kernels.base``)."""

from shmpiped.kernels.base import Source, SourceContext

__all__ = ["Source", "SourceContext"]
