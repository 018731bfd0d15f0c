"""The built-in ``null.sink``: discards every payload and measures how long consuming took.

It stands in for a device at the end of the loop (a deformable mirror, a
stage): ``device_delay_s`` emulates the device's latency, and
``plugin_metrics()`` reports consume-time percentiles over the last
``sample_window`` frames. It accepts streams of any storage and never copies
the payload.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Sink
from shmpiped.kernels.checks import is_integer, is_number

DEFAULT_SAMPLE_WINDOW = 8192


def percentile(ordered: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of an ascending list; 0.0 when empty."""
    if not ordered:
        return 0.0
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    weight = position - lower
    return ordered[lower] * (1.0 - weight) + ordered[upper] * weight


class NullSink(Sink):
    """Consume and discard; count frames and time each consume."""

    kind = "null.sink"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        # Any storage is accepted, so the base storage checks are deliberately skipped.
        delay = config.parameters.get("device_delay_s", 0.0)
        if not is_number(delay) or delay < 0:
            raise ConfigValidationError(
                f"sink {config.name!r} device_delay_s must be a non-negative number"
            )
        window = config.parameters.get("sample_window", DEFAULT_SAMPLE_WINDOW)
        if not is_integer(window) or window <= 0:
            raise ConfigValidationError(f"sink {config.name!r} sample_window must be a positive integer")

    def __init__(self, context) -> None:
        super().__init__(context)
        parameters = context.config.parameters
        self.device_delay_s = float(parameters.get("device_delay_s", 0.0))
        self._samples: deque[float] = deque(maxlen=int(parameters.get("sample_window", DEFAULT_SAMPLE_WINDOW)))
        self._consumed = 0
        self._lock = threading.Lock()

    def consume(self, value) -> None:
        started = time.perf_counter()
        if self.device_delay_s > 0.0:
            time.sleep(self.device_delay_s)
        elapsed = time.perf_counter() - started
        with self._lock:
            self._consumed += 1
            self._samples.append(elapsed)

    def plugin_metrics(self) -> dict:
        with self._lock:
            consumed = self._consumed
            ordered = sorted(self._samples)
        return {
            "consumed": consumed,
            "device_delay_us": self.device_delay_s * 1e6,
            "consume_us": {
                "p50": percentile(ordered, 0.50) * 1e6,
                "p90": percentile(ordered, 0.90) * 1e6,
                "p99": percentile(ordered, 0.99) * 1e6,
                "p99_9": percentile(ordered, 0.999) * 1e6,
                "max": ordered[-1] * 1e6 if ordered else 0.0,
            },
        }
