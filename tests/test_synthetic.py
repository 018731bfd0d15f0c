"""Synthetic inputs (spec 8): config checks, pattern formulas, pacing, source plugins.

Streams are real /dev/shm segments under a fresh namespace; the ``namespace``
fixture fails a test that leaves any behind.
"""

from __future__ import annotations

import math
import threading
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from shmpiped.config import SharedMemoryConfig, SourceConfig
from shmpiped.endpoints import SourceController
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import SourceContext
from shmpiped.sources import SyntheticArraySource, SyntheticFrameSetSource
from shmpiped.synthetic import (
    PATTERNS,
    SyntheticInputConfig,
    SyntheticInputController,
    SyntheticPatternGenerator,
    available_synthetic_patterns,
)

SNAPSHOT_KEYS = {
    "stream_name", "pattern", "rate_hz", "requested_rate_hz", "seed", "amplitude", "offset",
    "period", "constant", "impulse_interval", "frames_written", "alive", "effective_rate_hz",
    "started_at", "last_write_time", "last_write_duration_ms", "last_error", "throughput_hz",
}


def frames(config, shape, dtype="float64", n=3):
    generator = SyntheticPatternGenerator(config, shape, dtype)
    return [generator.next_frame().copy() for _ in range(n)]


# --------------------------------------------------------------------------- config


def test_available_patterns():
    assert available_synthetic_patterns() == (
        "constant", "random", "ramp", "sine", "impulse", "checkerboard",
    )


def test_config_defaults_and_normalisation():
    config = SyntheticInputConfig("s", pattern="  SiNe ", rate_hz=10, period=8)
    assert config.pattern == "sine"
    assert config.rate_hz == 10.0 and isinstance(config.rate_hz, float)
    default = SyntheticInputConfig(stream_name="s")
    assert (default.pattern, default.rate_hz, default.seed, default.amplitude, default.offset,
            default.period, default.constant, default.impulse_interval) == (
        "random", None, 0, 1.0, 0.0, 64.0, 0.0, 64)
    assert SyntheticInputConfig(**default.to_dict()) == default


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pattern": "sawtooth"}, "unsupported synthetic pattern 'sawtooth'; expected one of: "
                                  "constant, random, ramp, sine, impulse, checkerboard"),
        ({"rate_hz": 0}, "synthetic input rate_hz must be positive"),
        ({"rate_hz": -5.0}, "synthetic input rate_hz must be positive"),
        ({"period": 0}, "synthetic input period must be positive"),
        ({"impulse_interval": 0}, "synthetic input impulse_interval must be positive"),
        ({"amplitude": "big"}, "synthetic input amplitude must be a finite number"),
        ({"seed": 1.5}, "synthetic input seed must be an integer"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ConfigValidationError, match="^" + message.replace("(", r"\(")):
        SyntheticInputConfig("s", **changes)


# --------------------------------------------------------------------------- patterns


def test_constant_pattern():
    config = SyntheticInputConfig("s", pattern="constant", offset=1.5, constant=2.0)
    for frame in frames(config, (2, 3)):
        np.testing.assert_array_equal(frame, np.full((2, 3), 3.5))


def test_ramp_pattern_matches_formula():
    config = SyntheticInputConfig("s", pattern="ramp", amplitude=2.0, offset=0.5, period=5)
    i = np.arange(12, dtype=np.float32).reshape(3, 4)
    for k, frame in enumerate(frames(config, (3, 4), n=7)):
        expected = 0.5 + 2.0 * ((i + k) % 5) / max(5 - 1, 1)
        np.testing.assert_allclose(frame, expected, rtol=1e-12)


def test_ramp_period_one_uses_denominator_one():
    config = SyntheticInputConfig("s", pattern="ramp", period=1)
    for frame in frames(config, (4,)):
        np.testing.assert_array_equal(frame, np.zeros(4))


def test_sine_pattern_matches_formula():
    config = SyntheticInputConfig("s", pattern="sine", amplitude=3.0, offset=-1.0, period=16)
    i = np.arange(10, dtype=np.float32)
    for k, frame in enumerate(frames(config, (10,), "float32", n=5)):
        expected = -1.0 + 3.0 * np.sin(2 * np.pi * (i / 16 + k / 16))
        assert frame.dtype == np.float32
        np.testing.assert_allclose(frame, expected, atol=1e-5)


def test_sine_stays_accurate_for_large_frame_index():
    config = SyntheticInputConfig("s", pattern="sine", period=7)
    generator = SyntheticPatternGenerator(config, (5,), "float64")
    generator.frame_index = 10**12
    expected = np.sin(2 * np.pi * ((np.arange(5) + (10**12 % 7)) / 7))
    np.testing.assert_allclose(generator.next_frame(), expected, atol=1e-9)


def test_impulse_pattern():
    config = SyntheticInputConfig("s", pattern="impulse", amplitude=5.0, offset=1.0,
                                  impulse_interval=3)
    result = frames(config, (2, 2), n=13)
    for k, frame in enumerate(result):
        expected = np.full(4, 1.0)
        if k % 3 == 0:
            expected[(k // 3) % 4] = 6.0
        np.testing.assert_array_equal(frame.reshape(-1), expected)
    # k = 12 wraps around to element 0 again
    assert result[12].reshape(-1)[0] == 6.0


def test_checkerboard_spec_examples():
    config = SyntheticInputConfig("s", pattern="checkerboard", period=2)
    first = frames(config, (4, 4), n=1)[0]
    np.testing.assert_array_equal(
        first, [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    )
    one_d = frames(config, (4,), n=2)
    np.testing.assert_array_equal(one_d[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(one_d[1], [0, 1, 1, 0])
    scalar = frames(config, (), n=4)
    assert [float(v) for v in scalar] == [0.0, 1.0, 0.0, 1.0]


def test_checkerboard_matches_formula_in_three_dimensions():
    config = SyntheticInputConfig("s", pattern="checkerboard", period=2.5, amplitude=4.0,
                                  offset=1.0)
    shape = (5, 3, 6)
    idx = np.indices(shape).astype(np.float64)
    for k, frame in enumerate(frames(config, shape, n=6)):
        coords = idx.copy()
        coords[0] += k
        parity = np.floor(coords / 2.5).sum(axis=0) % 2
        np.testing.assert_array_equal(frame, 1.0 + 4.0 * parity)


def test_checkerboard_small_period_uses_tile_one():
    config = SyntheticInputConfig("s", pattern="checkerboard", period=0.5)
    np.testing.assert_array_equal(frames(config, (4,), n=1)[0], [0, 1, 0, 1])


def test_random_pattern_is_seeded_and_reproducible():
    config = SyntheticInputConfig("s", pattern="random", seed=7, amplitude=2.0, offset=3.0)
    first = frames(config, (3, 4), n=4)
    again = frames(config, (3, 4), n=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(7)
    for frame in first:
        np.testing.assert_array_equal(frame, 3.0 + 2.0 * rng.standard_normal((3, 4)))
    other = frames(SyntheticInputConfig("s", pattern="random", seed=8), (3, 4), n=1)[0]
    assert not np.array_equal(other, frames(SyntheticInputConfig("s", seed=7), (3, 4), n=1)[0])


def test_random_float32_is_the_cast_of_float64_values():
    config = SyntheticInputConfig("s", pattern="random", seed=3)
    f32 = frames(config, (6,), "float32", n=2)
    f64 = frames(config, (6,), "float64", n=2)
    for a, b in zip(f32, f64):
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_next_frame_reuses_one_buffer():
    for pattern in available_synthetic_patterns():
        config = SyntheticInputConfig("s", pattern=pattern)
        generator = SyntheticPatternGenerator(config, (4, 4), "float32")
        first = generator.next_frame()
        assert generator.next_frame() is first
        assert first.dtype == np.float32 and first.shape == (4, 4)
        assert generator.frame_index == 2


@pytest.mark.parametrize("pattern", PATTERNS)
def test_next_frame_allocates_no_arrays(pattern):
    config = SyntheticInputConfig("s", pattern=pattern)
    generator = SyntheticPatternGenerator(config, (128, 128), "float32")
    generator.next_frame()
    tracemalloc.start()
    try:
        for _ in range(20):
            generator.next_frame()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8192  # one 128x128 float32 frame would be 65536 bytes


@pytest.mark.parametrize("pattern", ["random", "sine", "ramp"])
def test_truncating_patterns_warn_on_integer_dtypes(pattern):
    with pytest.warns(UserWarning, match="truncated"):
        SyntheticPatternGenerator(SyntheticInputConfig("s", pattern=pattern), (4,), "int16")


@pytest.mark.parametrize("pattern", ["constant", "impulse", "checkerboard"])
def test_exact_patterns_do_not_warn_on_integer_dtypes(pattern):
    config = SyntheticInputConfig("s", pattern=pattern, amplitude=3, offset=2, constant=1, period=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = SyntheticPatternGenerator(config, (4,), "int32").next_frame()
    assert frame.dtype == np.int32 and frame.min() >= 2


def test_ramp_on_integers_truncates():
    config = SyntheticInputConfig("s", pattern="ramp", amplitude=10, period=4)
    with pytest.warns(UserWarning):
        generator = SyntheticPatternGenerator(config, (4,), "int32")
    np.testing.assert_array_equal(generator.next_frame(), [0, 3, 6, 10])


# --------------------------------------------------------------------------- controller


class RecordingStream:
    """A real stream, plus the perf_counter time of every write; stalls once on request."""

    def __init__(self, stream, stall_at=None, stall_s=0.0, fail_at=None):
        self.stream = stream
        self.shape, self.dtype = stream.shape, stream.dtype
        self.times = []
        self.stall_at, self.stall_s, self.fail_at = stall_at, stall_s, fail_at

    def write(self, value, frame_id=None):
        n = len(self.times)
        if n == self.fail_at:
            raise RuntimeError("stream went away")
        if n == self.stall_at:
            time.sleep(self.stall_s)
        count = self.stream.write(value, frame_id)
        self.times.append(time.perf_counter())
        return count


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_controller_writes_frames_and_reports(make_stream, stopper):
    stream = make_stream("cam", (4, 4), "float32")
    config = SyntheticInputConfig("cam", pattern="checkerboard", period=2, rate_hz=200)
    controller = SyntheticInputController(config, stream)
    stopper(controller)
    before = controller.snapshot()
    assert set(before) == SNAPSHOT_KEYS
    assert before["frames_written"] == 0 and before["effective_rate_hz"] == 0.0
    assert before["last_write_duration_ms"] is None and before["alive"] is False
    controller.start()
    assert wait_for(lambda: stream.count >= 3)
    assert controller.stop()
    snap = controller.snapshot()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap["alive"] is False and snap["last_error"] is None
    assert snap["rate_hz"] == snap["requested_rate_hz"] == 200.0
    assert snap["frames_written"] == stream.count >= 3
    assert snap["last_write_duration_ms"] >= 0 and snap["last_write_time"] >= snap["started_at"]
    # The newest frame is checkerboard frame k = count - 1.
    expected = SyntheticPatternGenerator(config, (4, 4), "float32")
    for _ in range(stream.count):
        frame = expected.next_frame()
    np.testing.assert_array_equal(stream.read(), frame)
    # stream.write stamped the origin time of the frame.
    assert stream.origin_ns > 0


def test_controller_accepts_a_mapping(make_stream, stopper):
    stream = make_stream("a", (3,))
    settings = {"stream_name": "a", "pattern": "constant", "constant": 4}
    controller = SyntheticInputController(settings, stream)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: stream.count >= 10)  # no rate: as fast as possible
    np.testing.assert_array_equal(stream.read(), [4.0, 4.0, 4.0])


def test_controller_paces_at_the_requested_rate(make_stream, stopper):
    stream = make_stream("paced", (16,))
    controller = SyntheticInputController(SyntheticInputConfig("paced", rate_hz=1000), stream)
    stopper(controller)
    controller.start()
    time.sleep(1.0)
    controller.stop()
    snap = controller.snapshot()
    # Loose bounds: this machine has two shared cores.
    assert 600 <= snap["frames_written"] <= 1100
    assert 600 <= snap["effective_rate_hz"] <= 1100
    assert 600 <= snap["throughput_hz"] <= 1100


def test_controller_does_not_burst_to_catch_up(make_stream, stopper):
    stream = RecordingStream(make_stream("burst", (4,)), stall_at=5, stall_s=0.15)
    controller = SyntheticInputController(SyntheticInputConfig("burst", rate_hz=100), stream)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: len(stream.times) >= 12)
    controller.stop()
    times = stream.times
    stall_end = times[5]
    after = [t for t in times[6:] if t - stall_end < 0.035]
    # At 100 Hz about 3 writes follow within 35 ms; catching up would add ~15 more.
    assert len(after) <= 5, np.diff(times)
    assert (times[5] - times[4]) >= 0.14


def test_controller_failure_sets_last_error(make_stream, stopper):
    stream = RecordingStream(make_stream("bad", (4,)), fail_at=3)
    controller = SyntheticInputController(SyntheticInputConfig("bad", rate_hz=500), stream)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: not controller.alive)
    snap = controller.snapshot()
    assert snap["last_error"] == "stream went away"
    assert snap["frames_written"] == 3 and snap["alive"] is False
    assert "RuntimeError" in controller.traceback


def test_slow_controller_stops_promptly(make_stream, stopper):
    stream = make_stream("slow", (4,))
    controller = SyntheticInputController(SyntheticInputConfig("slow", rate_hz=0.2), stream)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: stream.count == 1)
    began = time.monotonic()
    assert controller.stop(timeout=2.0)
    assert time.monotonic() - began < 0.5
    assert stream.count == 1


# --------------------------------------------------------------------------- source plugins


def spec(name, shape=(4,), dtype="float64", storage="cpu"):
    return SharedMemoryConfig(name=name, shape=shape, dtype=dtype, storage=storage)


def source_context(kind, streams, parameters, shared_memory=None, **options):
    config = SourceConfig(name="syn", kind=kind, streams=tuple(streams), parameters=parameters,
                          **options)
    shared = shared_memory or {name: spec(name) for name in streams}
    return config, shared, SourceContext(config=config, shared_memory=shared)


@pytest.mark.parametrize(
    "streams, parameters, message",
    [
        (("a", "b"), {}, "needs exactly one stream, got 2"),
        (("a",), {"pattern": "noise"}, "unsupported synthetic pattern 'noise'"),
        (("a",), {"rate_hz": 0}, "rate_hz must be a positive number or null"),
        (("a",), {"rate_hz": "fast"}, "rate_hz must be a positive number or null"),
        (("a",), {"period": -1}, "synthetic input period must be positive"),
        (("a",), {"colour": "red"}, "unknown parameter(s) colour"),
    ],
)
def test_array_source_validation(streams, parameters, message):
    config, shared, _ = source_context("synthetic.array", streams, parameters)
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ConfigValidationError, match=pattern):
        SyntheticArraySource.validate_config(config, shared)


def test_array_source_accepts_gpu_streams_and_null_rate():
    config, _, _ = source_context("synthetic.array", ("a",), {"rate_hz": None, "pattern": "ramp"})
    SyntheticArraySource.validate_config(config, {"a": spec("a", storage="gpu")})


def test_array_source_reads_paced_frames():
    config, shared, context = source_context(
        "synthetic.array", ("a",), {"rate_hz": 50, "pattern": "ramp", "period": 4}
    )
    SyntheticArraySource.validate_config(config, shared)
    source = SyntheticArraySource(context)
    began = time.perf_counter()
    first = source.read().copy()
    assert time.perf_counter() - began < 0.01  # the first frame is immediate
    np.testing.assert_allclose(first, np.arange(4) % 4 / 3)
    for _ in range(5):
        source.read()
    elapsed = time.perf_counter() - began
    assert 0.09 <= elapsed < 0.5  # five more frames at 50 Hz
    metrics = source.plugin_metrics()
    assert metrics == {"pattern": "ramp", "requested_rate_hz": 50.0, "frames_generated": 6}


def test_array_source_under_a_controller(make_stream, stopper):
    stream = make_stream("a", (4,))
    parameters = {"pattern": "constant", "constant": 2.5, "rate_hz": 200}
    _, _, context = source_context("synthetic.array", ("a",), parameters)
    controller = SourceController(context.config, SyntheticArraySource(context), {"a": stream},
                                  threading.Event())
    stopper(controller)
    controller.start()
    assert wait_for(lambda: stream.count >= 5)
    assert controller.stop()
    np.testing.assert_array_equal(stream.read(), np.full(4, 2.5))
    assert controller.snapshot()["frames_written"] == stream.count


@pytest.mark.parametrize(
    "streams, parameters, storages, message",
    [
        (("a",), {}, ("cpu",), "needs at least 2 streams, got 1"),
        (("a", "b"), {}, ("cpu", "gpu"), "all streams must have the same storage"),
        (("a", "b"), {"jitter_us": -1}, ("cpu", "cpu"), "jitter_us must be a number >= 0"),
        (("a", "b"), {"drop_probability": 1.5}, ("cpu", "cpu"),
         r"drop_probability must be a number in \[0, 1\]"),
        (("a", "b"), {"assign_frame_id": "yes"}, ("cpu", "cpu"),
         "assign_frame_id must be true or false"),
        (("a", "b"), {"pattern": "x"}, ("cpu", "cpu"), "unsupported synthetic pattern"),
    ],
)
def test_frame_set_validation(streams, parameters, storages, message):
    shared = {name: spec(name, storage=storage) for name, storage in zip(streams, storages)}
    config, shared, _ = source_context("synthetic.frame_set", streams, parameters, shared)
    with pytest.raises(ConfigValidationError, match=message):
        SyntheticFrameSetSource.validate_config(config, shared)


def test_frame_set_writes_generations_with_frame_ids(make_stream):
    streams = {name: make_stream(name, (3,)) for name in ("a", "b", "c")}
    config, shared, context = source_context(
        "synthetic.frame_set", ("a", "b", "c"), {"pattern": "random", "seed": 10, "jitter_us": 50},
        {name: spec(name, (3,)) for name in ("a", "b", "c")},
    )
    SyntheticFrameSetSource.validate_config(config, shared)
    source = SyntheticFrameSetSource(context)
    for generation in range(3):
        assert source.produce(streams) == 1
        for stream in streams.values():
            assert stream.count == generation + 1
            assert stream.frame_id == generation + 1
    # stream i uses seed + i
    for index, name in enumerate(("a", "b", "c")):
        rng = np.random.default_rng(10 + index)
        for _ in range(3):
            expected = rng.standard_normal(3)
        np.testing.assert_array_equal(streams[name].read(), expected)
    metrics = source.plugin_metrics()
    assert metrics["generations"] == 3
    assert metrics["per_stream_writes"] == {"a": 3, "b": 3, "c": 3}
    assert metrics["per_stream_drops"] == {"a": 0, "b": 0, "c": 0}
    assert metrics["requested_rate_hz"] is None
    assert metrics["jitter_us"] == 50.0 and metrics["drop_probability"] == 0.0
    assert 0.0 < metrics["last_skew_us"] <= metrics["max_skew_us"]


def test_frame_set_drops_and_plain_counts(make_stream):
    streams = {name: make_stream(name, (2,)) for name in ("a", "b")}
    _, _, context = source_context(
        "synthetic.frame_set", ("a", "b"), {"drop_probability": 1.0, "assign_frame_id": False},
        {name: spec(name, (2,)) for name in ("a", "b")},
    )
    source = SyntheticFrameSetSource(context)
    assert source.produce(streams) == 1
    assert streams["a"].count == streams["b"].count == 0
    assert source.plugin_metrics()["per_stream_drops"] == {"a": 1, "b": 1}
    assert source.plugin_metrics()["last_skew_us"] == 0.0


def test_frame_set_under_a_controller(make_stream, stopper):
    streams = {name: make_stream(name, (2, 2)) for name in ("x", "y")}
    _, _, context = source_context("synthetic.frame_set", ("x", "y"),
                                   {"rate_hz": 300, "pattern": "checkerboard", "period": 1},
                                   {name: spec(name, (2, 2)) for name in ("x", "y")})
    controller = SourceController(context.config, SyntheticFrameSetSource(context), streams)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: streams["y"].count >= 5)
    assert controller.stop()
    snap = controller.snapshot()
    assert snap["streams"] == ["x", "y"]
    assert snap["frames_written"] == snap["coordinated_generation_count"] == streams["x"].count
    assert streams["x"].frame_id == streams["y"].frame_id == streams["x"].count
    assert snap["plugin_metrics"]["generations"] == snap["frames_written"]
    assert math.isfinite(snap["throughput_hz"])
