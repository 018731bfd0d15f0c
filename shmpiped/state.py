"""``PipelineState``: the lifecycle states of a ``PipelineManager`` (shmpipeline's ``state``).

``initialized`` -> ``built`` -> ``running`` <-> ``paused``; ``failed`` when a
worker or endpoint fails, ``stopped`` after ``stop()``/``shutdown()``.  The
values are the lower-case strings that ``status()`` reports; a state compares
equal to its string.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["PipelineState"]


class PipelineState(str, Enum):
    INITIALIZED = "initialized"
    BUILT = "built"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value
