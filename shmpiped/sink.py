"""Re-exports the sink contract under shmpipeline's module name (defined in ``shmpiped.kernels.base``)."""

from shmpiped.kernels.base import Sink, SinkContext

__all__ = ["Sink", "SinkContext"]
