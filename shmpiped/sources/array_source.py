"""Re-exports the ``synthetic.array`` source under shmpipeline's module name (defined in ``shmpiped.synthetic``)."""

from shmpiped.synthetic import SyntheticArraySource

__all__ = ["SyntheticArraySource"]
