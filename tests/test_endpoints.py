"""Source and sink controllers (spec 7, 6.1, 10.5) over real /dev/shm streams."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shmpiped.config import SharedMemoryConfig, SinkConfig, SourceConfig
from shmpiped.endpoints import (
    Publication,
    RateMeter,
    SinkController,
    SourceController,
    read_publication,
)
from shmpiped.kernels.base import Sink, SinkContext, Source, SourceContext

SOURCE_KEYS = {
    "name", "kind", "stream", "streams", "coordinated_generation_count", "poll_interval", "alive",
    "frames_written", "effective_rate_hz", "throughput_hz", "started_at", "last_write_time",
    "last_write_duration_ms", "last_error", "plugin_metrics",
}
SINK_KEYS = {
    "name", "kind", "stream", "outputs", "read_timeout", "pause_sleep", "alive", "frames_consumed",
    "missed_writes", "effective_rate_hz", "throughput_hz", "started_at", "last_read_time",
    "last_read_duration_ms", "last_error", "plugin_metrics",
}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def shared(*names, shape=(4,)):
    return {name: SharedMemoryConfig(name=name, shape=shape, dtype="float64") for name in names}


# --------------------------------------------------------------------------- plugins


class CountingSource(Source):
    """Writes 1, 2, 3, ... as fast as asked; can fail or hang on a given call."""

    kind = "test.counting"

    def __init__(self, context, fail_at=None, hang_s=0.0):
        super().__init__(context)
        self.calls = 0
        self.fail_at = fail_at
        self.hang_s = hang_s
        self.opened = self.closed = False

    def open(self):
        self.opened = True

    def close(self):
        self.closed = True

    def read(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("sensor unplugged")
        if self.hang_s:
            time.sleep(self.hang_s)
        return np.full(4, float(self.calls))

    def plugin_metrics(self):
        return {"calls": self.calls}


class PairSource(Source):
    """A two-stream source: one generation per produce(), with matching frame ids."""

    kind = "test.pair"

    def __init__(self, context, hang_s=0.0):
        super().__init__(context)
        self.generation = 0
        self.hang_s = hang_s

    def produce(self, writers):
        if self.hang_s:
            time.sleep(self.hang_s)
        self.generation += 1
        for writer in writers.values():
            writer.write(np.full(4, self.generation), frame_id=1000 + self.generation)
        return 1


class RecordingSink(Sink):
    """Keeps every publication; writes ``-payload`` to each output with the same frame id."""

    kind = "test.recording"

    def __init__(self, context, fail_at=None, delay_s=0.0):
        super().__init__(context)
        self.publications: list[Publication] = []
        self.fail_at = fail_at
        self.delay_s = delay_s
        self.closed = False

    def close(self):
        self.closed = True

    def consume_publication(self, publication, writers):
        if len(self.publications) + 1 == self.fail_at:
            raise RuntimeError("actuator fault")
        if self.delay_s:
            time.sleep(self.delay_s)
        self.publications.append(publication)
        for writer in writers.values():
            writer.write(-publication.payload, frame_id=publication.frame_id)


def source_setup(streams, *, name="cam", kind="test.counting", shape=(4,), **options):
    config = SourceConfig(name=name, kind=kind, streams=tuple(streams), **options)
    return config, SourceContext(config=config, shared_memory=shared(*streams, shape=shape))


def sink_setup(stream, outputs=(), *, name="dm", **options):
    config = SinkConfig(name=name, kind="test.recording", stream=stream, outputs=tuple(outputs),
                        **options)
    return config, SinkContext(config=config, shared_memory=shared(stream, *outputs))


# --------------------------------------------------------------------------- rate meter


def test_rate_meter_rolling_and_lifetime():
    meter = RateMeter(window=3)
    assert meter.throughput_hz() == 0.0 and meter.effective_rate_hz() == 0.0
    for t in (0.0, 1.0, 2.0):
        meter.record(1, t)
    assert meter.throughput_hz() == 1.0  # spec 5 example: [0, 1, 2] -> 1.0 Hz
    meter.record(1, 2.5)
    assert meter.window == 3 and meter.throughput_hz() == pytest.approx(2 / 1.5)
    assert meter.count == 4
    meter.record(1, 2.5)
    meter.record(1, 2.5)
    assert meter.throughput_hz() == 0.0  # span 0


# --------------------------------------------------------------------------- sources


def test_source_controller_writes_reads_and_reports(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"], poll_interval=0.005)
    source = CountingSource(context)
    controller = SourceController(config, source, {"pix": stream}, threading.Event())
    stopper(controller)
    before = controller.snapshot()
    assert set(before) == SOURCE_KEYS
    assert before["frames_written"] == 0 and before["effective_rate_hz"] == 0.0
    assert before["last_write_duration_ms"] is None and before["started_at"] is None
    controller.start()
    assert source.opened
    assert wait_for(lambda: stream.count >= 20)
    assert controller.stop(timeout=2.0)
    assert source.closed and not controller.alive
    snap = controller.snapshot()
    assert set(snap) == SOURCE_KEYS
    assert snap["name"] == "cam" and snap["kind"] == "test.counting"
    assert snap["stream"] == "pix" and snap["streams"] == ["pix"]
    assert snap["poll_interval"] == 0.005
    assert snap["frames_written"] == snap["coordinated_generation_count"] == stream.count
    assert snap["effective_rate_hz"] > 0 and snap["throughput_hz"] > 0
    assert snap["last_write_duration_ms"] >= 0 and snap["last_write_time"] >= snap["started_at"]
    assert snap["last_error"] is None and controller.failure is None
    assert snap["plugin_metrics"] == {"calls": source.calls}
    np.testing.assert_array_equal(stream.read(), np.full(4, float(stream.count)))


def test_source_context_gets_the_controller_events(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"])
    source = CountingSource(context)
    pause = threading.Event()
    controller = SourceController(config, source, {"pix": stream}, pause)
    stopper(controller)
    assert source.context.pause_event is pause
    assert source.context.stop_event is controller.stop_event
    pause.set()
    assert source.paused() and not source.stop_requested()
    controller.stop()
    assert source.stop_requested() and source.wait(10.0) is True


def test_source_controller_adopts_a_stop_event_from_the_context(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"])
    manager_stop = threading.Event()
    context = SourceContext(config=config, shared_memory=context.shared_memory,
                            stop_event=manager_stop)
    controller = SourceController(config, CountingSource(context), {"pix": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: stream.count > 0)
    manager_stop.set()
    assert wait_for(lambda: not controller.alive, timeout=2.0)


def test_paused_source_writes_nothing(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"], poll_interval=0.005)
    pause = threading.Event()
    pause.set()
    controller = SourceController(config, CountingSource(context), {"pix": stream}, pause)
    stopper(controller)
    controller.start()
    time.sleep(0.1)
    assert stream.count == 0 and controller.alive
    pause.clear()
    assert wait_for(lambda: stream.count > 0)


def test_source_none_payload_waits_poll_interval(make_stream, stopper):
    class Idle(CountingSource):
        def read(self):
            self.calls += 1
            return None

    stream = make_stream("pix")
    config, context = source_setup(["pix"], poll_interval=0.05)
    source = Idle(context)
    controller = SourceController(config, source, {"pix": stream})
    stopper(controller)
    controller.start()
    time.sleep(0.3)
    controller.stop()
    assert stream.count == 0 and 2 <= source.calls <= 10


def test_failing_source_produces_a_failure_record(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"])
    source = CountingSource(context, fail_at=3)
    controller = SourceController(config, source, {"pix": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: not controller.alive)
    assert source.closed  # close() still runs after a failure
    failure = controller.failure
    assert failure["type"] == "source_failed"
    assert failure["kernel"] == "cam" and failure["component_type"] == "source"
    assert failure["kind"] == "test.counting" and failure["stream"] == "pix"
    assert failure["error"] == "sensor unplugged"
    assert "ValueError: sensor unplugged" in failure["traceback"]
    assert failure["time"] > 0 and "outputs" not in failure
    assert controller.take_failure() == failure
    assert controller.take_failure() is None  # handed over exactly once
    snap = controller.snapshot()
    assert snap["last_error"] == "sensor unplugged" and snap["frames_written"] == 2
    assert snap["alive"] is False


def test_source_read_soft_timeout(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"], read_timeout=0.05)
    source = CountingSource(context, hang_s=0.5)
    controller = SourceController(config, source, {"pix": stream})
    stopper(controller)
    began = time.monotonic()
    controller.start()
    assert wait_for(lambda: not controller.alive, timeout=2.0)
    assert time.monotonic() - began < 0.4  # the hung call was abandoned, not awaited
    assert controller.failure["error"] == "source 'cam' read() exceeded its 0.05s timeout"
    assert controller.snapshot()["last_error"] == "source 'cam' read() exceeded its 0.05s timeout"
    assert stream.count == 0


def test_source_read_within_its_timeout_runs_normally(make_stream, stopper):
    stream = make_stream("pix")
    config, context = source_setup(["pix"], read_timeout=1.0)
    controller = SourceController(config, CountingSource(context), {"pix": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: stream.count >= 10)
    assert controller.stop() and controller.failure is None


def test_multi_stream_source_produces_through_writers(make_stream, stopper):
    streams = {name: make_stream(name) for name in ("left", "right")}
    config, context = source_setup(["left", "right"], kind="test.pair")
    controller = SourceController(config, PairSource(context), streams)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: streams["right"].count >= 5)
    assert controller.stop()
    snap = controller.snapshot()
    assert snap["streams"] == ["left", "right"] and snap["stream"] == "left"
    assert snap["frames_written"] == streams["left"].count
    assert streams["left"].frame_id == streams["right"].frame_id == 1000 + streams["left"].count


def test_multi_stream_produce_soft_timeout(make_stream, stopper):
    streams = {name: make_stream(name) for name in ("left", "right")}
    config, context = source_setup(["left", "right"], kind="test.pair", read_timeout=0.02)
    controller = SourceController(config, PairSource(context, hang_s=0.3), streams)
    stopper(controller)
    controller.start()
    assert wait_for(lambda: not controller.alive, timeout=2.0)
    assert controller.failure["error"] == "source 'cam' produce() exceeded its 0.02s timeout"


def test_source_controller_requires_handles_for_its_streams(make_stream):
    config, context = source_setup(["a", "b"], kind="test.pair")
    with pytest.raises(KeyError, match="no stream handle for: b"):
        SourceController(config, PairSource(context), {"a": make_stream("a")})


# --------------------------------------------------------------------------- sinks


def test_read_publication_is_a_consistent_private_copy(make_stream):
    stream = make_stream("s")
    stream.write(np.arange(4.0), frame_id=41)
    stream.write(np.arange(4.0) + 10, frame_id=42)
    before = time.time()
    publication = read_publication(stream, last_seen=0)
    assert publication.count == 2 and publication.frame_id == 42
    assert publication.missed_publications == 1 and publication.stream == "s"
    assert publication.write_time == pytest.approx(before, abs=0.5)
    assert publication.origin_ns > 0
    stream.write(np.zeros(4))
    np.testing.assert_array_equal(publication.payload, np.arange(4.0) + 10)


def test_sink_consumes_publications_and_writes_feedback(make_stream, stopper):
    source = make_stream("cmd")
    feedback = make_stream("applied")
    source.write(np.full(4, -1.0))  # written before the sink starts: never consumed
    config, context = sink_setup("cmd", ["applied"], read_timeout=0.5)
    sink = RecordingSink(context)
    streams = {"cmd": source, "applied": feedback}
    controller = SinkController(config, sink, streams, threading.Event())
    stopper(controller)
    assert set(controller.snapshot()) == SINK_KEYS
    controller.start()
    assert wait_for(lambda: controller.last_seen is not None)
    for i in range(5):
        source.write(np.full(4, float(i)), frame_id=100 + i)
        assert wait_for(lambda i=i: feedback.count == i + 1)
        assert feedback.frame_id == 100 + i
        np.testing.assert_array_equal(feedback.read(), np.full(4, -float(i)))
    assert controller.stop(timeout=2.0)
    assert sink.closed
    assert [p.frame_id for p in sink.publications] == [100, 101, 102, 103, 104]
    assert [p.count for p in sink.publications] == [2, 3, 4, 5, 6]
    assert all(p.missed_publications == 0 for p in sink.publications)
    for i, publication in enumerate(sink.publications):
        np.testing.assert_array_equal(publication.payload, np.full(4, float(i)))
    snap = controller.snapshot()
    assert set(snap) == SINK_KEYS
    assert snap["name"] == "dm" and snap["kind"] == "test.recording"
    assert snap["stream"] == "cmd" and snap["outputs"] == ["applied"]
    assert snap["read_timeout"] == 0.5 and snap["pause_sleep"] == 0.01
    assert snap["frames_consumed"] == 5 and snap["missed_writes"] == 0
    assert snap["alive"] is False and snap["last_error"] is None
    assert snap["last_read_duration_ms"] >= 0 and snap["last_read_time"] >= snap["started_at"]
    assert snap["throughput_hz"] > 0 and snap["effective_rate_hz"] > 0
    assert snap["plugin_metrics"] == {}


def test_slow_sink_counts_missed_publications(make_stream, stopper):
    stream = make_stream("cmd")
    config, context = sink_setup("cmd")
    sink = RecordingSink(context, delay_s=0.05)
    controller = SinkController(config, sink, {"cmd": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: controller.last_seen is not None)
    for i in range(30):
        stream.write(np.full(4, float(i)))
        time.sleep(0.005)
    assert wait_for(lambda: controller.last_seen == 30)
    controller.stop()
    snap = controller.snapshot()
    assert snap["missed_writes"] > 0
    assert snap["frames_consumed"] + snap["missed_writes"] == 30
    assert sum(p.missed_publications for p in sink.publications) == snap["missed_writes"]


def test_paused_sink_consumes_nothing(make_stream, stopper):
    stream = make_stream("cmd")
    config, context = sink_setup("cmd", pause_sleep=0.005)
    sink = RecordingSink(context)
    pause = threading.Event()
    pause.set()
    controller = SinkController(config, sink, {"cmd": stream}, pause)
    stopper(controller)
    controller.start()
    stream.write(np.ones(4))
    time.sleep(0.1)
    assert sink.publications == []
    pause.clear()
    assert wait_for(lambda: len(sink.publications) == 1)


def test_failing_sink_produces_a_failure_record(make_stream, stopper):
    stream = make_stream("cmd")
    out = make_stream("applied")
    config, context = sink_setup("cmd", ["applied"])
    sink = RecordingSink(context, fail_at=2)
    controller = SinkController(config, sink, {"cmd": stream, "applied": out})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: controller.last_seen is not None)
    stream.write(np.ones(4))
    assert wait_for(lambda: len(sink.publications) == 1)
    stream.write(np.ones(4))
    assert wait_for(lambda: not controller.alive)
    failure = controller.failure
    assert failure["type"] == "sink_failed" and failure["kernel"] == "dm"
    assert failure["component_type"] == "sink" and failure["kind"] == "test.recording"
    assert failure["stream"] == "cmd" and failure["outputs"] == ["applied"]
    assert failure["error"] == "actuator fault"
    assert "RuntimeError: actuator fault" in failure["traceback"]
    assert sink.closed
    assert controller.snapshot()["last_error"] == "actuator fault"


def test_sink_consume_soft_timeout(make_stream, stopper):
    stream = make_stream("cmd")
    config, context = sink_setup("cmd", consume_timeout=0.05)
    controller = SinkController(config, RecordingSink(context, delay_s=0.5), {"cmd": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: controller.last_seen is not None)
    stream.write(np.ones(4))
    assert wait_for(lambda: not controller.alive, timeout=2.0)
    assert controller.failure["error"] == "sink 'dm' consume() exceeded its 0.05s timeout"


def test_idle_sink_stops_promptly_despite_a_long_read_timeout(make_stream, stopper):
    stream = make_stream("cmd")
    config, context = sink_setup("cmd", read_timeout=30.0)
    controller = SinkController(config, RecordingSink(context), {"cmd": stream})
    stopper(controller)
    controller.start()
    assert wait_for(lambda: controller.last_seen is not None)
    time.sleep(0.05)
    began = time.monotonic()
    assert controller.stop(timeout=2.0)
    assert time.monotonic() - began < 0.3
    assert controller.failure is None


def test_sink_context_gets_the_controller_events(make_stream):
    stream = make_stream("cmd")
    config, context = sink_setup("cmd")
    sink = RecordingSink(context)
    pause = threading.Event()
    controller = SinkController(config, sink, {"cmd": stream}, pause)
    assert sink.context.pause_event is pause
    assert sink.context.stop_event is controller.stop_event
    assert controller.stop()  # never started: nothing to wait for
    assert sink.stop_requested()
