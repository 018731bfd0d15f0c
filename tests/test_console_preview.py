"""Stream previews (shmpiped/service/preview.py): PNG bytes decoded here with zlib and checked pixel by
pixel, JSON summaries, the per-stream cache, read-only attachment, errors and their statuses, the
console's packaged assets."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from shmpiped.service import preview
from shmpiped.service.preview import (
    BadPreviewRequest,
    PreviewCache,
    StreamNotViewable,
    UnknownStream,
    console_asset,
)
from shmpiped.shm import Stream

from .png_support import decode_png


def test_two_d_frame_is_autoscaled_grayscale(make_stream, namespace):
    frame = np.array([[0.0, 1.0, 2.0], [3.0, np.nan, 4.0]], dtype=np.float32)
    s = make_stream("img", shape=(2, 3), dtype="float32")
    s.write(frame)
    cache = PreviewCache(namespace)
    try:
        pixels = decode_png(cache.png("img", width=64, max_hz=5))
    finally:
        cache.close()
    assert pixels.shape == (2, 3)
    assert pixels[0, 0] == 0 and pixels[1, 2] == 255      # min -> black, max -> white
    assert pixels[1, 1] == 0                                # not finite -> black
    assert list(pixels[0]) == sorted(pixels[0])             # monotonic in the value
    assert 0 < pixels[0, 2] < pixels[1, 0] < 255


def test_wide_frame_is_sampled_to_the_width_keeping_the_aspect(make_stream, namespace):
    s = make_stream("wide", shape=(100, 400), dtype="uint16")
    s.write(np.tile(np.arange(400, dtype=np.uint16), (100, 1)))
    cache = PreviewCache(namespace)
    try:
        pixels = decode_png(cache.png("wide", width=100))
        huge = decode_png(cache.png("wide", width=10**6))   # clamped to MAX_WIDTH (400 columns fit)
    finally:
        cache.close()
    assert pixels.shape == (25, 100)
    assert pixels[0, 0] == 0 and pixels[0, -1] > 250 and (np.diff(pixels[0].astype(int)) >= 0).all()
    assert huge.shape == (100, 400)


def test_one_d_frame_is_a_line_plot(make_stream, namespace):
    s = make_stream("ramp", shape=(64,), dtype="float64")
    s.write(np.linspace(-1.0, 1.0, 64))
    cache = PreviewCache(namespace)
    try:
        pixels = decode_png(cache.png("ramp", width=128))
    finally:
        cache.close()
    height = 128 // preview.PLOT_ASPECT
    assert pixels.shape == (height, 128)
    assert set(np.unique(pixels)) <= {0, 192, 255}
    black_rows = [np.flatnonzero(pixels[:, x] == 0) for x in range(128)]
    assert all(len(r) for r in black_rows)                   # a line in every column
    assert black_rows[0].max() > height - 5                  # starts at the bottom (the minimum)
    assert black_rows[-1].min() < 5                          # ends at the top (the maximum)
    centres = [r.mean() for r in black_rows]
    assert all(b <= a for a, b in zip(centres, centres[1:]))  # a rising line goes up the picture
    assert (pixels == 192).any()                              # the zero line (0 is within the range)


def test_zero_d_value_is_served_as_json(make_stream, namespace):
    s = make_stream("gain", shape=(), dtype="float64")
    s.write(np.float64(0.25))
    cache = PreviewCache(namespace)
    try:
        status, content_type, body = cache.respond("/preview/gain.json")
        tile = decode_png(cache.png("gain"))
    finally:
        cache.close()
    answer = json.loads(body)
    assert (status, content_type) == (200, "application/json")
    assert answer["values"] == 0.25 and answer["shape"] == [] and answer["count"] == 1
    assert answer["dtype"] == "float64" and 0 <= answer["age_s"] < 60
    assert tile.shape == (preview.MIN_WIDTH, preview.MIN_WIDTH)


def test_json_of_a_large_stream_gives_statistics_not_values(make_stream, namespace):
    s = make_stream("big", shape=(32, 32), dtype="float32")
    s.write(np.arange(1024, dtype=np.float32).reshape(32, 32))
    cache = PreviewCache(namespace)
    try:
        answer = cache.json("big")
    finally:
        cache.close()
    assert answer["values"] is None
    assert answer["min"] == 0.0 and answer["max"] == 1023.0 and answer["mean"] == pytest.approx(511.5)


def test_cache_encodes_once_per_period_and_follows_new_frames(make_stream, namespace, monkeypatch):
    s = make_stream("cam", shape=(8, 8), dtype="float32")
    s.write(np.zeros((8, 8)))
    encodes = []
    real = preview.frame_png
    monkeypatch.setattr(preview, "frame_png", lambda *a: encodes.append(1) or real(*a))
    cache = PreviewCache(namespace)
    try:
        first = cache.png("cam", width=64, max_hz=0.01)   # a period of 100 s
        s.write(np.eye(8))
        viewers = [threading.Thread(target=cache.png, args=("cam", 64, 0.01)) for _ in range(20)]
        for viewer in viewers:
            viewer.start()
        for viewer in viewers:
            viewer.join()
        assert cache.png("cam", width=64, max_hz=0.01) == first and len(encodes) == 1
        time.sleep(1 / 30)
        fresh = cache.png("cam", width=64, max_hz=30)       # a newer frame, the period passed: encoded again
        assert len(encodes) == 2 and fresh != first
        assert cache.png("cam", width=64, max_hz=30) == fresh and len(encodes) == 2  # no new frame: kept
    finally:
        cache.close()
    assert np.array_equal(decode_png(fresh), np.where(np.eye(8) > 0, 255, 0))


def test_preview_never_registers_as_a_waiter_nor_writes(make_stream, namespace):
    s = make_stream("cam", shape=(4,), dtype="float32")
    s.write(np.ones(4))
    cache = PreviewCache(namespace)
    try:
        cache.png("cam")
        handle = cache._handle("cam").stream
        assert handle.readonly and handle._poll_only           # mapped read-only: it cannot park on the futex
        with pytest.raises(PermissionError):
            handle.write(np.zeros(4))
        assert s.write(np.zeros(4)) == 2                       # the writer is unaffected
    finally:
        cache.close()


def test_errors_have_statuses_and_say_what_to_change(make_stream, namespace):
    make_stream("cam", shape=(4,), dtype="float32")
    snapshot = {"namespace": namespace, "streams": {"cam": {"storage": "cpu"},
                                                    "dev": {"storage": "gpu", "cpu_mirror": False}}}
    cache = PreviewCache(lambda: snapshot)
    try:
        with pytest.raises(UnknownStream, match=r"no stream 'other' in pipeline .*its streams: cam, dev"):
            cache.png("other")
        with pytest.raises(StreamNotViewable, match="cpu_mirror: true"):
            cache.png("dev")
        status, _, body = cache.respond("/preview/cam.png", "width=abc")
        assert status == 400 and "width must be a number" in json.loads(body)["detail"]
        status, _, body = cache.respond("/preview/cam.png", "max_hz=-1")
        assert status == 400 and "positive" in json.loads(body)["detail"]
        assert cache.respond("/preview/cam.gif")[0] == 404
        assert cache.respond("/preview/other.json")[0] == 404
        assert cache.respond("/preview/dev.png")[0] == 409
        status, content_type, body = cache.respond("/preview/cam.png", "width=32&max_hz=2")
        assert (status, content_type) == (200, "image/png") and decode_png(body).shape[1] == 32
    finally:
        cache.close()
    assert isinstance(UnknownStream("x"), KeyError) and isinstance(BadPreviewRequest("x"), ValueError)
    assert str(UnknownStream("no such stream")) == "no such stream"


def test_a_rebuilt_stream_is_followed(namespace):
    first = Stream.create("cam", (2, 2), "float32", namespace=namespace)
    first.write(np.zeros((2, 2)))
    cache = PreviewCache(namespace)
    try:
        assert cache.json("cam")["shape"] == [2, 2]
        first.close()
        first.unlink()
        second = Stream.create("cam", (3, 3), "float32", namespace=namespace)
        try:
            second.write(np.ones((3, 3)))
            preview_ids = preview.IDENTITY_CHECK_S
            cache._handle("cam").checked_at -= preview_ids   # as if a second had passed
            assert cache.json("cam", max_hz=30)["shape"] == [3, 3]
        finally:
            cache.close()
            second.close()
            second.unlink()
    finally:
        cache.close()


def test_console_assets_are_served_by_exact_name_only():
    content_type, body = console_asset("/")
    assert content_type.startswith("text/html") and b"console.js" in body
    assert console_asset("/console/console.js")[0].startswith("text/javascript")
    assert b"shmpipedGraph" in console_asset("/console/graph.js")[1]
    assert console_asset("/console/console.css")[0].startswith("text/css")
    for path in ("/console/../preview.py", "/console/", "/console/missing.js", "/other", "/console/%2e%2e"):
        assert console_asset(path) is None
