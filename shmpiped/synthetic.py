"""Synthetic inputs: the six test patterns and the things that write them (spec 8).

This module owns:

- ``SyntheticInputConfig``: one synthetic writer's settings, validated on
  construction (``ConfigValidationError``);
- ``SyntheticPatternGenerator``: fills one reused buffer of the stream's
  shape and dtype with frame ``k`` of a pattern, in place (every index array
  and scratch buffer is made once, in ``__init__``);
- ``SyntheticInputController``: the manager-owned background thread that
  drives one stream (``PipelineManager.start_synthetic_input``), paced
  without catch-up bursts;
- ``Pacer``, ``sleep_until``, ``is_number``, ``as_integer``: the pacing and
  field checks the built-in source plugins (``shmpiped/sources/``) share.

Streams live in host shared memory whatever their declared storage, so the
sources always generate with numpy; ``xp`` lets a caller generate on another
array namespace (cupy) when it needs device arrays.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy

from shmpiped.endpoints import RateMeter
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import array_namespace

__all__ = [
    "PATTERNS",
    "SyntheticInputConfig",
    "SyntheticInputController",
    "SyntheticPatternGenerator",
    "SyntheticSourceController",
    "available_synthetic_patterns",
    "pattern_generator_for_stream",
    "sleep_until",
    "synthetic_config_from_parameters",
]

PATTERNS = ("constant", "random", "ramp", "sine", "impulse", "checkerboard")
#: Patterns whose values are not integers, so a non-float dtype truncates them.
_TRUNCATED_PATTERNS = ("random", "ramp", "sine")
#: The last stretch before a deadline is spent spinning, so pacing is accurate to a few us.
SPIN_WINDOW_S = 200e-6
#: Longest single sleep, so a stop request is seen quickly.
SLEEP_SLICE_S = 0.05


def available_synthetic_patterns() -> tuple[str, ...]:
    """The names of the synthetic patterns, in spec order."""
    return PATTERNS


# --------------------------------------------------------------------------- config


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(name: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(float(value)):
        raise ConfigValidationError(
            f"synthetic input {name} must be a finite number, got {value!r}"
        )
    return float(value)


def as_integer(name: str, value: Any) -> int:
    if is_number(value) and float(value).is_integer():
        return int(value)
    raise ConfigValidationError(f"synthetic input {name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class SyntheticInputConfig:
    """The settings of one synthetic writer; numbers are normalised, errors raised here."""

    stream_name: str
    pattern: str = "random"
    rate_hz: float | None = None
    seed: int = 0
    amplitude: float = 1.0
    offset: float = 0.0
    period: float = 64.0
    constant: float = 0.0
    impulse_interval: int = 64

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.stream_name, str) or not self.stream_name:
            raise ConfigValidationError("synthetic input stream_name must be a non-empty string")
        pattern = str(self.pattern).strip().lower()
        if pattern not in PATTERNS:
            raise ConfigValidationError(
                f"unsupported synthetic pattern {self.pattern!r}; expected one of: "
                + ", ".join(PATTERNS)
            )
        set_(self, "pattern", pattern)
        if self.rate_hz is not None:
            rate = _finite("rate_hz", self.rate_hz)
            if rate <= 0:
                raise ConfigValidationError("synthetic input rate_hz must be positive")
            set_(self, "rate_hz", rate)
        seed = as_integer("seed", self.seed)
        if seed < 0:
            raise ConfigValidationError(f"synthetic input seed must be non-negative, got {seed}")
        set_(self, "seed", seed)
        for name in ("amplitude", "offset", "constant"):
            set_(self, name, _finite(name, getattr(self, name)))
        period = _finite("period", self.period)
        if period <= 0:
            raise ConfigValidationError("synthetic input period must be positive")
        set_(self, "period", period)
        interval = as_integer("impulse_interval", self.impulse_interval)
        if interval <= 0:
            raise ConfigValidationError("synthetic input impulse_interval must be positive")
        set_(self, "impulse_interval", interval)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- generator


class SyntheticPatternGenerator:
    """Frame ``k`` of a pattern, written in place into one reused buffer.

    ``next_frame()`` returns the same array every call (frame index ``k``
    starts at 0).  Values are computed in float64 scratch space and cast into
    the buffer, so integer dtypes truncate (``UserWarning`` for the patterns
    where that matters).  Per frame only ufuncs with ``out=`` run.
    """

    def __init__(self, config: SyntheticInputConfig, shape, dtype, xp=None, *, storage: str = "cpu",
                 gpu_device: str | None = None):
        # ``storage``/``gpu_device`` are shmpipeline's keywords: "gpu" generates with the
        # device's array namespace (on CuPy's current device) unless ``xp`` is given.
        if xp is None:
            xp = array_namespace(storage)
        self.config = config
        self.xp = xp
        self.shape = tuple(int(dim) for dim in shape)
        self.dtype = numpy.dtype(dtype)
        self.size = math.prod(self.shape)
        self.frame_index = 0
        truncates = not numpy.issubdtype(self.dtype, numpy.inexact)
        if config.pattern in _TRUNCATED_PATTERNS and truncates:
            warnings.warn(
                f"synthetic pattern {config.pattern!r} on stream {config.stream_name!r} of dtype "
                f"{self.dtype.name}: values are truncated to integers",
                UserWarning,
                stacklevel=2,
            )
        self.buffer = xp.zeros(self.shape, dtype=self.dtype)
        # Scratch is the buffer itself when it already holds float64.
        if self.dtype == numpy.float64:
            self._scratch = self.buffer
        else:
            self._scratch = xp.zeros(self.shape, dtype=numpy.float64)
        self._fill = getattr(self, f"_prepare_{config.pattern}")()

    def next_frame(self):
        """Fill the buffer with frame ``k``, advance ``k`` and return the buffer."""
        self._fill(self.frame_index)
        self.frame_index += 1
        return self.buffer

    # -- helpers -------------------------------------------------------------
    def _scale_into_buffer(self) -> None:
        """buffer = offset + amplitude * scratch."""
        xp, cfg, scratch = self.xp, self.config, self._scratch
        xp.multiply(scratch, cfg.amplitude, out=scratch)
        xp.add(scratch, cfg.offset, out=scratch)
        if scratch is not self.buffer:
            xp.copyto(self.buffer, scratch, casting="unsafe")

    def _flat_index(self):
        """``i``: the C-order element index, shaped like the frame (float64)."""
        return self.xp.arange(self.size, dtype=numpy.float64).reshape(self.shape)

    # -- patterns --------------------------------------------------------------
    def _prepare_constant(self) -> Callable[[int], None]:
        value = self.xp.asarray(self.config.offset + self.config.constant).astype(self.dtype)

        def fill(k: int) -> None:
            self.buffer[...] = value

        return fill

    def _prepare_random(self) -> Callable[[int], None]:
        rng = self.xp.random.default_rng(self.config.seed)
        flat = self._scratch.reshape(-1)  # a view; also covers 0-d frames

        def fill(k: int) -> None:
            rng.standard_normal(out=flat)
            self._scale_into_buffer()

        return fill

    def _prepare_ramp(self) -> Callable[[int], None]:
        xp, period, scratch = self.xp, self.config.period, self._scratch
        index = self._flat_index()
        denominator = max(period - 1.0, 1.0)

        def fill(k: int) -> None:
            # (i + k) mod period == (i + k mod period) mod period; keeps k small.
            xp.add(index, math.fmod(k, period), out=scratch)
            xp.remainder(scratch, period, out=scratch)
            xp.divide(scratch, denominator, out=scratch)
            self._scale_into_buffer()

        return fill

    def _prepare_sine(self) -> Callable[[int], None]:
        xp, period, scratch = self.xp, self.config.period, self._scratch
        phase = self._flat_index()
        xp.multiply(phase, 2.0 * math.pi / period, out=phase)

        def fill(k: int) -> None:
            xp.add(phase, 2.0 * math.pi * (math.fmod(k, period) / period), out=scratch)
            xp.sin(scratch, out=scratch)
            self._scale_into_buffer()

        return fill

    def _prepare_impulse(self) -> Callable[[int], None]:
        cfg, size = self.config, self.size
        base = self.xp.asarray(cfg.offset).astype(self.dtype)
        peak = self.xp.asarray(cfg.offset + cfg.amplitude).astype(self.dtype)
        flat = self.buffer.reshape(-1)

        def fill(k: int) -> None:
            self.buffer[...] = base
            if size and k % cfg.impulse_interval == 0:
                flat[(k // cfg.impulse_interval) % size] = peak

        return fill

    def _prepare_checkerboard(self) -> Callable[[int], None]:
        xp, cfg, scratch = self.xp, self.config, self._scratch
        tile = max(cfg.period, 1.0)
        if not self.shape:

            def fill_scalar(k: int) -> None:
                scratch[...] = k % 2
                self._scale_into_buffer()

            return fill_scalar
        ndim = len(self.shape)
        # Sum over the axes >= 1 of floor(coord / tile): fixed, made once at full
        # shape (a broadcasting ufunc would allocate an iteration buffer per frame).
        rest = xp.zeros(self.shape, dtype=numpy.float64)
        for axis, length in enumerate(self.shape[1:], start=1):
            blocks = xp.floor(xp.arange(length, dtype=numpy.float64) / tile)
            rest += blocks.reshape((length,) + (1,) * (ndim - 1 - axis))
        row_index = xp.arange(self.shape[0], dtype=numpy.float64)
        rows = xp.zeros(self.shape[0], dtype=numpy.float64)
        rows_column = rows.reshape((self.shape[0],) + (1,) * (ndim - 1))

        def fill(k: int) -> None:
            xp.add(row_index, float(k), out=rows)  # coord_0 = idx_0 + k
            xp.divide(rows, tile, out=rows)
            xp.floor(rows, out=rows)
            xp.copyto(scratch, rows_column)  # broadcast copy: allocation-free
            xp.add(scratch, rest, out=scratch)
            xp.remainder(scratch, 2.0, out=scratch)
            self._scale_into_buffer()

        return fill


# --------------------------------------------------------------------------- pacing


def sleep_until(deadline: float, should_stop: Callable[[], bool] | None = None) -> bool:
    """Sleep until ``time.perf_counter()`` reaches ``deadline``.

    Sleeps in slices of at most 50 ms, then spins the last ~200 us so the
    wake-up is accurate.  Returns True (early) when ``should_stop()`` is true.
    """
    while True:
        if should_stop is not None and should_stop():
            return True
        remaining = deadline - time.perf_counter()
        if remaining <= 0.0:
            return False
        if remaining > SPIN_WINDOW_S:
            time.sleep(min(remaining - SPIN_WINDOW_S, SLEEP_SLICE_S))
            continue
        while time.perf_counter() < deadline:
            pass
        return False


class Pacer:
    """``first frame immediate, then next = max(next + 1/rate, now)`` (no catch-up)."""

    def __init__(self, rate_hz: float | None):
        self.interval = None if rate_hz is None else 1.0 / rate_hz
        self.next_due: float | None = None

    def wait(self, should_stop: Callable[[], bool]) -> bool:
        """Wait for the next slot; True when a stop was requested meanwhile."""
        if self.interval is None or self.next_due is None:
            return bool(should_stop())
        return sleep_until(self.next_due, should_stop)

    def done(self, finished: float) -> None:
        if self.interval is None:
            return
        if self.next_due is None:
            self.next_due = finished
        self.next_due = max(self.next_due + self.interval, finished)


# --------------------------------------------------------------------------- controller


class SyntheticInputController:
    """A background thread that writes one synthetic pattern into one stream.

    ``start()`` launches the (daemon) thread, ``stop()`` ends it.  Frames are
    written with ``stream.write(frame)``, which stamps their origin time.  With
    ``rate_hz`` each frame waits for ``next_deadline`` (which starts at the
    thread's start time) and ``next_deadline = max(next_deadline + 1/rate,
    finished)`` after each write, so a late frame never triggers a burst.  An
    exception is stored in ``last_error`` and ends the thread.
    """

    def __init__(self, config: SyntheticInputConfig | Mapping[str, Any], stream):
        if isinstance(config, Mapping):
            config = SyntheticInputConfig(**config)
        self.config = config
        self.stream = stream
        self.generator = SyntheticPatternGenerator(config, stream.shape, stream.dtype)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._meter = RateMeter()
        self._thread = threading.Thread(
            target=self._run, name=f"shmpiped-synthetic-{config.stream_name}", daemon=True
        )
        self.started_at: float | None = None
        self.last_write_time: float | None = None
        self.last_write_duration_ms: float | None = None
        self.last_error: str | None = None
        self.traceback: str | None = None

    @property
    def stream_name(self) -> str:
        return self.config.stream_name

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def frames_written(self) -> int:
        return self._meter.count

    def start(self) -> "SyntheticInputController":
        if self._thread.ident is not None:
            raise RuntimeError(f"synthetic input on {self.stream_name!r} was already started")
        self.started_at = time.time()
        self._meter.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to end and wait up to ``timeout``; True when it has ended."""
        self._stop.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        interval = None if self.config.rate_hz is None else 1.0 / self.config.rate_hz
        next_deadline = time.perf_counter()
        stop = self._stop.is_set
        try:
            while not stop():
                if interval is not None and sleep_until(next_deadline, stop):
                    break
                frame = self.generator.next_frame()
                began = time.perf_counter()
                self.stream.write(frame)
                finished = time.perf_counter()
                with self._lock:
                    self._meter.record(1, finished)
                    self.last_write_time = time.time()
                    self.last_write_duration_ms = (finished - began) * 1e3
                if interval is not None:
                    next_deadline = max(next_deadline + interval, finished)
        except Exception as exc:  # noqa: BLE001 - any failure ends the writer
            self.last_error = str(exc) or type(exc).__name__
            self.traceback = traceback.format_exc()
        finally:
            self._meter.finish()

    def snapshot(self) -> dict:
        cfg = self.config
        with self._lock:
            return {
                "stream_name": cfg.stream_name,
                "pattern": cfg.pattern,
                "rate_hz": cfg.rate_hz,
                "requested_rate_hz": cfg.rate_hz,
                "seed": cfg.seed,
                "amplitude": cfg.amplitude,
                "offset": cfg.offset,
                "period": cfg.period,
                "constant": cfg.constant,
                "impulse_interval": cfg.impulse_interval,
                "frames_written": self._meter.count,
                "alive": self.alive,
                "effective_rate_hz": self._meter.effective_rate_hz(),
                "throughput_hz": self._meter.throughput_hz(),
                "started_at": self.started_at,
                "last_write_time": self.last_write_time,
                "last_write_duration_ms": self.last_write_duration_ms,
                "last_error": self.last_error,
            }


class SyntheticSourceController(SyntheticInputController):
    """shmpipeline's name and argument order for a synthetic writer: ``(stream, spec)``."""

    def __init__(self, stream, spec: SyntheticInputConfig | Mapping[str, Any]):
        super().__init__(spec, stream)


#: The fields of a pattern that a synthetic source's parameters may carry (besides its timing keys).
PATTERN_PARAMETERS = ("pattern", "seed", "amplitude", "offset", "period", "constant", "impulse_interval")


def synthetic_config_from_parameters(stream_name: str, parameters: Mapping[str, Any]) -> SyntheticInputConfig:
    """The pattern of a source's ``parameters`` for ``stream_name`` (timing keys are the source's)."""
    fields = {key: parameters[key] for key in PATTERN_PARAMETERS if key in parameters}
    return SyntheticInputConfig(stream_name=stream_name, **fields)


def pattern_generator_for_stream(stream_name: str, parameters: Mapping[str, Any], stream) -> SyntheticPatternGenerator:
    """A generator of the pattern in ``parameters``, shaped like the live ``stream`` (host arrays)."""
    return SyntheticPatternGenerator(synthetic_config_from_parameters(stream_name, parameters),
                                     stream.shape, stream.dtype)
