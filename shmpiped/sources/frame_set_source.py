"""Re-exports the ``synthetic.frame_set`` source under shmpipeline's module name (defined in ``shmpiped.synthetic``)."""

from shmpiped.synthetic import SyntheticFrameSetSource

__all__ = ["SyntheticFrameSetSource"]
