"""Re-exports the built-in sources under shmpipeline's package name (defined in ``shmpiped.synthetic``)."""

from shmpiped.sources.array_source import SyntheticArraySource
from shmpiped.sources.frame_set_source import SyntheticFrameSetSource

__all__ = ["SyntheticArraySource", "SyntheticFrameSetSource"]
