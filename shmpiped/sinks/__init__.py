"""Re-exports the built-in sinks under shmpipeline's package name (defined in ``shmpiped.kernels``)."""

from shmpiped.sinks.null_sink import NullSink

__all__ = ["NullSink"]
