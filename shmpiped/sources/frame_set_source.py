"""``synthetic.frame_set``: frames of several streams written together, one frame id
(shmpipeline's ``sources.frame_set_source``)."""

from __future__ import annotations

import math
import time

import numpy

from shmpiped.kernels.base import Source
from shmpiped.sources._parameters import (
    STORAGES,
    check_parameters,
    check_storages,
    pattern_config,
    source_error,
)
from shmpiped.synthetic import PATTERN_PARAMETERS, Pacer, SyntheticPatternGenerator, is_number, sleep_until

__all__ = ["SyntheticFrameSetSource"]


class SyntheticFrameSetSource(Source):
    """``synthetic.frame_set``: one generation of frames across >= 2 streams per call.

    Parameters: ``rate_hz``, ``jitter_us`` (uniform random delay before each
    stream's write), ``drop_probability`` (skip a stream's write this
    generation), ``seed`` (stream i uses ``seed + i``), ``assign_frame_id``
    (default true: generation g is written with frame id ``g + 1``) and the
    pattern fields.  Used to exercise frame-id synchronisation.
    """

    kind = "synthetic.frame_set"
    storages = STORAGES
    PARAMETERS = (
        ("rate_hz", "jitter_us", "drop_probability", "assign_frame_id") + PATTERN_PARAMETERS
    )

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        if len(config.streams) < 2:
            raise source_error(config, f"needs at least 2 streams, got {len(config.streams)}")
        check_storages(config, shared_memory)
        parameters = check_parameters(config, cls.PARAMETERS)
        cls._settings(config, parameters)
        for index, name in enumerate(config.streams):
            pattern_config(config, name, parameters, index)

    @staticmethod
    def _settings(config, parameters) -> tuple[float, float, bool]:
        jitter = parameters.get("jitter_us", 0.0)
        if not is_number(jitter) or not jitter >= 0 or not math.isfinite(jitter):
            raise source_error(
                config, f"parameter jitter_us must be a number >= 0, got {jitter!r}"
            )
        drop = parameters.get("drop_probability", 0.0)
        if not is_number(drop) or not 0.0 <= drop <= 1.0:
            raise source_error(
                config, f"parameter drop_probability must be a number in [0, 1], got {drop!r}"
            )
        assign = parameters.get("assign_frame_id", True)
        if not isinstance(assign, bool):
            raise source_error(
                config, f"parameter assign_frame_id must be true or false, got {assign!r}"
            )
        return float(jitter), float(drop), assign

    def __init__(self, context) -> None:
        super().__init__(context)
        config = context.config
        parameters = check_parameters(config, self.PARAMETERS)
        settings = self._settings(config, parameters)
        self.jitter_us, self.drop_probability, self.assign_frame_id = settings
        self.patterns = tuple(
            pattern_config(config, name, parameters, index)
            for index, name in enumerate(config.streams)
        )
        self.generators = tuple(
            SyntheticPatternGenerator(
                pattern, context.shared_memory[pattern.stream_name].shape,
                context.shared_memory[pattern.stream_name].dtype,
            )
            for pattern in self.patterns
        )
        self.rate_hz = self.patterns[0].rate_hz
        # Jitter and drops draw from their own generator, apart from the patterns'.
        self._rng = numpy.random.default_rng([self.patterns[0].seed, 0x6A17])
        self._pacer = Pacer(self.rate_hz)
        self.generations = 0
        self.per_stream_writes = {name: 0 for name in config.streams}
        self.per_stream_drops = {name: 0 for name in config.streams}
        self.last_skew_us = 0.0
        self.max_skew_us = 0.0

    def produce(self, writers) -> int:
        if self._pacer.wait(self.stop_requested):
            return 0
        frame_id = self.generations + 1 if self.assign_frame_id else None
        first = last = None
        for pattern, generator in zip(self.patterns, self.generators):
            name = pattern.stream_name
            frame = generator.next_frame()  # every stream advances, written or not
            if self.drop_probability and self._rng.random() < self.drop_probability:
                self.per_stream_drops[name] += 1
                continue
            if self.jitter_us:
                delay = self._rng.uniform(0.0, self.jitter_us) * 1e-6
                sleep_until(time.perf_counter() + delay)
            writers[name].write(frame, frame_id=frame_id)
            last = time.perf_counter()
            first = last if first is None else first
            self.per_stream_writes[name] += 1
        self.last_skew_us = 0.0 if first is None else (last - first) * 1e6
        self.max_skew_us = max(self.max_skew_us, self.last_skew_us)
        self.generations += 1
        self._pacer.done(time.perf_counter())
        return 1

    def plugin_metrics(self) -> dict:
        return {
            "generations": self.generations,
            "per_stream_writes": dict(self.per_stream_writes),
            "per_stream_drops": dict(self.per_stream_drops),
            "requested_rate_hz": self.rate_hz,
            "jitter_us": self.jitter_us,
            "drop_probability": self.drop_probability,
            "last_skew_us": self.last_skew_us,
            "max_skew_us": self.max_skew_us,
        }
