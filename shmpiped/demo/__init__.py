"""The embedded demo pipeline that ``shmpiped run`` starts when given no file."""

from __future__ import annotations

from importlib import resources

DEMO_FILE = "ao_loop.yaml"


def demo_path():
    """A path to the demo pipeline YAML shipped inside the package."""
    return resources.files(__name__).joinpath(DEMO_FILE)
