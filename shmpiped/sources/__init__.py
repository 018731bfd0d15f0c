"""Re-exports the built-in sources under shmpipeline's package name (each in its module, as in shmpipeline)."""

from shmpiped.sources.array_source import SyntheticArraySource
from shmpiped.sources.frame_set_source import SyntheticFrameSetSource

__all__ = ["SyntheticArraySource", "SyntheticFrameSetSource"]
