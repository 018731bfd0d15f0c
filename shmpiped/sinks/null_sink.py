"""Re-exports the ``null.sink`` plugin under shmpipeline's module name (defined in ``shmpiped.kernels.null_sink``)."""

from shmpiped.kernels.null_sink import NullSink

__all__ = ["NullSink"]
