"""Streams and namespace blocks in real /dev/shm, across real processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from shmpiped.errors import NamespaceBusyError
from shmpiped.shm import NamespaceBlock, Stream, layout
from shmpiped.shm.stream import segment_is_stale
from shmpiped.streams import remove_stale_segments

from .conftest import run_python, segments_of, spawn_python, spawn_stream_owner


@pytest.fixture
def stream(namespace):
    s = Stream.create("frames", (2, 3), "float32", namespace=namespace)
    yield s
    s.close()
    s.unlink()


def test_segment_name_is_namespaced_and_unambiguous():
    assert layout.stream_segment_name("ao", "frames") == "shmpiped.ao.frames"
    assert layout.stream_segment_name(None, "x") == "shmpiped.default.x"
    assert layout.stream_segment_name("a.b", "c") != layout.stream_segment_name("a", "b.c")
    assert layout.parse_segment_name(layout.stream_segment_name("a.b", "c.d")) == ("a.b", "c.d")
    assert layout.parse_segment_name(layout.namespace_segment_name("a.b")) == ("a.b", None)
    with pytest.raises(ValueError):
        layout.stream_segment_name("ns", "bad/name")


def test_header_describes_the_stream(stream, namespace):
    assert os.path.exists(f"/dev/shm/shmpiped.{namespace}.frames")
    other = Stream.attach("frames", namespace)
    try:
        assert other.shape == (2, 3)
        assert other.dtype == np.float32
        assert other.nslots == layout.DEFAULT_SLOTS >= 3
        assert other.segment.owner().pid == os.getpid()
        assert other.count == 0
        assert other.read().tolist() == [[0, 0, 0], [0, 0, 0]]
    finally:
        other.close()


def test_write_publishes_into_the_next_slot_with_metadata(stream):
    before = time.monotonic_ns()
    count = stream.write(np.arange(6).reshape(2, 3), frame_id=41)
    assert count == stream.count == 1
    assert stream.frame_id == 41
    frame_id, origin_ns, write_ns = stream.slot_metadata(1)
    assert frame_id == 41 and before <= origin_ns <= write_ns <= time.monotonic_ns()
    assert abs(stream.write_time - time.time()) < 5
    stream.write(np.ones((2, 3)))
    assert stream.frame_id == 2  # an unset frame id numbers the frame with its count
    count, view = stream.latest()
    assert count == 2 and view.tolist() == [[1] * 3] * 2
    assert np.shares_memory(view, stream.slot_views[1])


def test_origin_timestamp_is_carried_when_given(stream):
    stream.write(np.zeros((2, 3)), origin_ns=12345)
    assert stream.origin_ns == 12345


def test_in_place_write_path(stream):
    view = stream.next_slot()
    np.multiply(np.ones((2, 3), np.float32), 3, out=view)
    stream.publish(frame_id=7)
    assert stream.read().tolist() == [[3] * 3] * 2
    assert stream.frame_id == 7


def test_reader_detects_being_lapped(stream):
    stream.write(np.zeros((2, 3)))
    count, view = stream.latest()
    assert stream.still_valid(count)
    for i in range(stream.nslots):
        stream.write(np.full((2, 3), i))
    assert not stream.still_valid(count)


def test_slot_is_invalid_while_being_rewritten(stream):
    for _ in range(stream.nslots):
        stream.write(np.zeros((2, 3)))
    oldest = stream.count - stream.nslots + 1
    assert stream.still_valid(oldest)
    stream.next_slot()  # the writer starts rewriting the oldest slot
    assert not stream.still_valid(oldest)


def test_wait_times_out_and_wakes_on_publication(stream):
    with pytest.raises(TimeoutError):
        stream.wait(0, timeout=0.05)
    threading.Timer(0.05, lambda: stream.write(np.ones((2, 3)))).start()
    start = time.monotonic()
    assert stream.wait(0, timeout=5.0) == 1
    assert time.monotonic() - start < 4.0


def test_wake_all_releases_a_parked_reader_without_publishing(stream):
    threading.Timer(0.05, stream.wake_all).start()
    start = time.monotonic()
    assert stream.wait_once(0, 5.0) == 0
    assert time.monotonic() - start < 4.0


@pytest.mark.parametrize("strategy", ["futex", "hybrid", "spin"])
def test_cross_process_handoff_with_each_wait_strategy(stream, namespace, strategy):
    reader = spawn_python(
        "import sys; from shmpiped.shm import Stream\n"
        "s = Stream.attach('frames', sys.argv[1]); s.set_wait_strategy(sys.argv[2])\n"
        "print('ready', flush=True)\n"
        "got = []\n"
        "last = 0\n"
        "while len(got) < 5:\n"
        "    last = s.wait(last, timeout=10)\n"
        "    got.append(float(s.read()[0, 0]))\n"
        "print(got); s.close()\n",
        namespace, strategy,
    )
    assert reader.stdout.readline().strip() == "ready"  # attached (its imports can take a second on a busy machine)
    time.sleep(0.2)  # and parked in its wait
    for i in range(5):
        stream.write(np.full((2, 3), i + 1))
        time.sleep(0.05)
    out, err = reader.communicate(timeout=20)
    assert reader.returncode == 0, err
    assert out.strip() == "[1.0, 2.0, 3.0, 4.0, 5.0]"


def test_external_process_attaches_by_name_and_writes(stream, namespace):
    run_python(
        "import sys, numpy as np, shmpiped\n"
        "s = shmpiped.attach('frames', namespace=sys.argv[1])\n"
        "s.write(np.full((2, 3), 9.5), frame_id=3); s.close()\n",
        namespace,
    )
    assert stream.count == 1 and stream.frame_id == 3
    assert stream.read().tolist() == [[9.5] * 3] * 2


def test_readonly_attach_reads_and_waits(stream, namespace):
    reader = Stream.attach("frames", namespace, readonly=True)
    try:
        threading.Timer(0.05, lambda: stream.write(np.ones((2, 3)))).start()
        assert reader.wait(0, timeout=5) == 1
        assert reader.read().sum() == 6
        with pytest.raises(ValueError):
            reader.slot_views[0][...] = 1
    finally:
        reader.close()


def test_create_refuses_an_existing_name(stream, namespace):
    with pytest.raises(FileExistsError):
        Stream.create("frames", (1,), "float32", namespace=namespace)


def test_segment_of_a_killed_creator_is_stale_and_removed(namespace):
    child = spawn_stream_owner(namespace)
    name = layout.stream_segment_name(namespace, "cam")
    assert not segment_is_stale(name)  # creator alive
    assert remove_stale_segments(namespace) == []
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert segment_is_stale(name)
    assert remove_stale_segments(namespace) == [name]
    assert segments_of(namespace) == []


def test_segment_kept_on_purpose_is_not_stale(namespace):
    s = Stream.create("kept", (1,), "float64", namespace=namespace)
    s.mark_kept()
    s.close()
    name = layout.stream_segment_name(namespace, "kept")
    assert not segment_is_stale(name)
    os.unlink(f"/dev/shm/{name}")


def test_namespace_owned_by_a_live_process_is_refused(namespace):
    child = spawn_python(
        "import sys, time; from shmpiped.shm import NamespaceBlock\n"
        "b = NamespaceBlock.acquire(sys.argv[1]); print('ready', flush=True); time.sleep(60)\n",
        namespace,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(NamespaceBusyError, match=f"pid {child.pid}"):
            NamespaceBlock.acquire(namespace)
    finally:
        child.kill()
        child.wait()
    block = NamespaceBlock.acquire(namespace)  # the dead owner's block is taken over
    block.close(unlink=True)


def test_telemetry_record_round_trip(namespace):
    block = NamespaceBlock.acquire(namespace)
    try:
        block.reset_record(3, "centroid", 99)
        record = block.worker_record(3)
        record.start(1234, 1)
        for i in range(1, 1101):
            record.record_frame(i * 1000, i * 1_000_000, i, 2 * i * 1000)
        snap = block.snapshot(3)
        assert snap.name == "centroid" and snap.spawn_token == 99 and snap.cpu_slot == 1
        assert snap.frames == 1100
        window = snap.exec_window_s()
        assert window.size == layout.WINDOW
        assert sorted(np.round(window * 1e6).astype(int).tolist()) == list(range(101, 1101))
        completions = snap.completion_window_ns()
        assert completions[0] == 101 * 1_000_000 and completions[-1] == 1100 * 1_000_000
        assert sum(snap.histogram(layout.REC_EXEC_HIST)) == 1100
        stats = snap.latency_stats()
        assert stats.count == 1100 and stats.max_s == pytest.approx(2200e-6)
        record.write_error("RuntimeError: boom\ntraceback")
        assert block.snapshot(3).error.startswith("RuntimeError: boom")
    finally:
        block.close(unlink=True)
