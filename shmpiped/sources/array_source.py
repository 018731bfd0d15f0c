"""``synthetic.array``: one stream of a synthetic pattern (shmpipeline's ``sources.array_source``)."""

from __future__ import annotations

import time

from shmpiped.kernels.base import Source
from shmpiped.sources._parameters import (
    STORAGES,
    check_parameters,
    check_storages,
    pattern_config,
    source_error,
)
from shmpiped.synthetic import PATTERN_PARAMETERS, Pacer, SyntheticPatternGenerator

__all__ = ["SyntheticArraySource"]


class SyntheticArraySource(Source):
    """``synthetic.array``: one stream of a synthetic pattern, optionally paced.

    Parameters: ``rate_hz`` (positive or null) plus the pattern fields
    ``pattern, seed, amplitude, offset, period, constant, impulse_interval``.
    The first frame is immediate, then ``next = max(next + 1/rate, now)``.
    """

    kind = "synthetic.array"
    storages = STORAGES
    PARAMETERS = ("rate_hz",) + PATTERN_PARAMETERS

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        if len(config.streams) != 1:
            raise source_error(config, f"needs exactly one stream, got {len(config.streams)}")
        check_storages(config, shared_memory)
        parameters = check_parameters(config, cls.PARAMETERS)
        pattern_config(config, config.stream, parameters)

    def __init__(self, context) -> None:
        super().__init__(context)
        config = context.config
        parameters = check_parameters(config, self.PARAMETERS)
        self.pattern = pattern_config(config, config.stream, parameters)
        spec = context.shared_memory[config.stream]
        self.generator = SyntheticPatternGenerator(self.pattern, spec.shape, spec.dtype)
        self._pacer = Pacer(self.pattern.rate_hz)

    def read(self):
        if self._pacer.wait(self.stop_requested):
            return None
        frame = self.generator.next_frame()
        self._pacer.done(time.perf_counter())
        return frame

    def plugin_metrics(self) -> dict:
        return {
            "pattern": self.pattern.pattern,
            "requested_rate_hz": self.pattern.rate_hz,
            "frames_generated": self.generator.frame_index,
        }
