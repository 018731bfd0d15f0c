"""Viewers: renderers, statistics, and real viewer processes on real /dev/shm streams."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shmpiped.shm import Stream, device, layout
from shmpiped.viewer import (
    SHADE_CHARS,
    SPARK_CHARS,
    StreamStats,
    ViewerError,
    ViewerProcess,
    attach_readonly,
    choose_mode,
    encode_png,
    render_png,
    render_text,
    run_viewer,
)

from .conftest import run_python, segments_of, spawn_python
from .png_support import decode_png

# A writer in another process, through the public API: attach by name and write
# ``rate`` frames per second (on an absolute schedule) for ``seconds``.
PACED_WRITER = """
import sys, time
import numpy as np
import shmpiped
name, ns, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
stream = shmpiped.attach(name, namespace=ns)
frame = np.arange(max(1, int(np.prod(stream.shape))), dtype=np.float64).reshape(stream.shape)
print("ready", flush=True)
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    stream.write(frame)
    n += 1
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
stream.close()
print(n, flush=True)
"""

# As fast as it can for ``seconds``: prints the number of writes per second.
FLAT_OUT_WRITER = """
import sys, time
import numpy as np
import shmpiped
name, ns, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
stream = shmpiped.attach(name, namespace=ns)
frame = np.ones(stream.shape, stream.dtype)
for _ in range(1000):
    stream.write(frame)  # warm up
n = 0
start = time.monotonic()
while (elapsed := time.monotonic() - start) < seconds:
    stream.write(frame)
    n += 1
stream.close()
print(n / elapsed, flush=True)
"""


# -- fixtures and helpers -----------------------------------------------------------
@pytest.fixture
def streams(namespace):
    """make(name, shape, dtype, **kw) -> a created Stream, closed and unlinked afterwards."""
    made = []

    def make(name, shape, dtype="float32", **kw):
        stream = Stream.create(name, shape, dtype, namespace=namespace, **kw)
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.close()
        stream.unlink()


@pytest.fixture
def processes():
    """Popen/ViewerProcess objects to stop at the end of the test whatever happens."""
    started = []
    yield started
    for proc in started:
        if isinstance(proc, ViewerProcess):
            proc.close()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(5)


def start_writer(processes, name, namespace, rate=200.0, seconds=30.0) -> subprocess.Popen:
    writer = spawn_python(PACED_WRITER, name, namespace, str(rate), str(seconds))
    processes.append(writer)
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    return writer


def wait_for(predicate, timeout=15.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def waiters(stream: Stream) -> int:
    offset = layout.STREAM_WAITERS_OFFSET
    return int(stream.segment.bytes[offset : offset + 4].view(np.uint32)[0])


def read_png(path) -> np.ndarray:
    with open(path, "rb") as handle:
        return decode_png(handle.read())


# -- text renderer ------------------------------------------------------------------------
def test_render_text_zero_d_is_the_number():
    assert render_text(np.float32(3.5)) == "3.5"
    assert render_text(np.array(7, dtype=np.int16)) == "7"


def test_render_text_one_d_is_a_sparkline_with_statistics():
    text = render_text(np.arange(8.0), width=40)
    spark, stats = text.splitlines()
    assert spark == SPARK_CHARS  # a ramp climbs every level, one character per element
    assert "min 0" in stats and "max 7" in stats and "mean 3.5" in stats and "n=8" in stats

    long = render_text(np.sin(np.linspace(0, 2 * np.pi, 1000)), width=50)
    spark, stats = long.splitlines()
    assert len(spark) == 50 and set(spark) <= set(SPARK_CHARS)
    assert spark[12] == "█" and spark[37] == "▁"  # the crest and trough of the sine
    assert "shown as 50 bins" in stats


def test_render_text_one_d_handles_flat_and_non_finite_values():
    flat = render_text(np.full(5, 2.0)).splitlines()[0]
    assert len(set(flat)) == 1 and flat[0] in SPARK_CHARS
    with_nan = render_text(np.array([0.0, np.nan, 1.0]))
    assert with_nan.splitlines()[0] == "▁ █"
    assert "1 non-finite" in with_nan


def test_render_text_two_d_is_a_shaded_image_that_fits():
    small = render_text(np.arange(12.0).reshape(3, 4), width=80, height=24).splitlines()
    assert small[:3] == ["  .:", "-=+*", "#%@@"]  # levels of " .:-=+*#%@" from min to max
    assert small[0][0] == SHADE_CHARS[0] and small[2][3] == SHADE_CHARS[-1]
    assert "range [0, 11]" in small[3] and "3x4" in small[3]

    y, x = np.mgrid[-1:1:300j, -1:1:500j]
    big = render_text(np.exp(-3 * (x**2 + y**2)), width=60, height=20).splitlines()
    assert len(big) <= 20 and all(len(row) <= 60 for row in big[:-1])
    body = big[:-1]
    centre = body[len(body) // 2][len(body[0]) // 2]
    assert centre == "@" and body[0][0] == " "  # bright middle, dark corner
    assert "300x500 shown as" in big[-1] and "block means" in big[-1]


def test_render_text_more_dimensions_shows_the_first_slice():
    cube = np.arange(24.0).reshape(2, 3, 4)
    text = render_text(cube)
    assert text.splitlines()[0] == "slice [0, :, :] of 2x3x4"
    assert text.split("\n", 1)[1] == render_text(cube[0])
    four = render_text(np.zeros((2, 2, 3, 4)))
    assert four.startswith("slice [0, 0, :, :] of 2x2x3x4")


# -- PNG -------------------------------------------------------------------------------------
def test_encode_png_round_trips_through_a_decoder():
    pixels = np.arange(7 * 5, dtype=np.uint8).reshape(5, 7) * 7
    assert np.array_equal(decode_png(encode_png(pixels)), pixels)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        encode_png(np.zeros((0, 4), np.uint8))


def test_render_png_two_d_is_one_pixel_per_element_normalised(tmp_path):
    image = np.arange(16 * 24, dtype=np.float32).reshape(16, 24)
    image[3, 4] = np.nan
    assert render_png(image, tmp_path / "a.png") == (24, 16)
    pixels = read_png(tmp_path / "a.png")
    assert pixels.shape == (16, 24)
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255 and pixels[3, 4] == 0
    finite = np.delete(pixels.ravel(), 3 * 24 + 4)
    assert (np.diff(finite.astype(int)) >= 0).all()
    assert not list(tmp_path.glob("*.tmp"))  # written atomically

    render_png(np.full((4, 6), 5.0), tmp_path / "flat.png")
    assert (read_png(tmp_path / "flat.png") == 128).all()


def test_render_png_one_d_is_a_line_plot_and_zero_d_a_tile(tmp_path):
    width, height = render_png(np.linspace(0, 1, 50), tmp_path / "line.png")
    pixels = read_png(tmp_path / "line.png")
    assert pixels.shape == (height, width) and height >= 64 and width >= 50
    assert set(np.unique(pixels)) == {0, 255}
    assert (pixels == 0).any(axis=0).all()  # the line crosses every column
    first, last = np.flatnonzero(pixels[:, 0] == 0), np.flatnonzero(pixels[:, -1] == 0)
    assert first.min() > last.max()  # rising: the end is higher up (smaller row) than the start

    width, _ = render_png(np.random.default_rng(0).normal(size=100_000), tmp_path / "long.png")
    assert read_png(tmp_path / "long.png").shape[1] == width <= 1024

    assert render_png(np.float64(2.5), tmp_path / "tile.png") == (32, 32)
    assert (read_png(tmp_path / "tile.png") == 128).all()


def test_render_png_more_dimensions_writes_the_first_slice(tmp_path):
    cube = np.random.default_rng(1).random((3, 10, 12))
    assert render_png(cube, tmp_path / "cube.png") == (12, 10)
    render_png(cube[0], tmp_path / "slice.png")
    assert np.array_equal(read_png(tmp_path / "cube.png"), read_png(tmp_path / "slice.png"))


# -- statistics ---------------------------------------------------------------------------------
def test_stream_stats_rate_window_and_reset():
    stats = StreamStats(window=3, horizon_s=None)
    assert stats.rate_hz is None and stats.age_s is None
    stats.sample(0, now_ns=0)
    assert stats.rate_hz is None
    stats.sample(100, now_ns=1_000_000_000)
    assert stats.rate_hz == pytest.approx(100.0)
    stats.sample(100, now_ns=2_000_000_000)
    stats.sample(100, now_ns=3_000_000_000)  # the first sample left the 3-sample window
    assert stats.rate_hz == 0.0
    stats.sample(5, now_ns=4_000_000_000)  # the count went back: a new stream
    stats.sample(15, now_ns=5_000_000_000)
    assert stats.rate_hz == pytest.approx(10.0)

    horizon = StreamStats(horizon_s=2.0)
    for second in range(10):
        horizon.sample(1000 * second if second < 5 else 4000, now_ns=second * 1_000_000_000)
    assert horizon.rate_hz == 0.0  # stopped writer: only the last two seconds count


def test_stream_stats_measure_a_writer_in_another_process(streams, namespace, processes):
    streams("frames", (32,), "float32")
    reader = Stream.attach("frames", namespace, readonly=True)
    try:
        writer = start_writer(processes, "frames", namespace, rate=200.0, seconds=2.0)
        stats = StreamStats()
        wait_for(lambda: stats.update(reader) > 0, timeout=10)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            stats.update(reader)
            time.sleep(0.01)
        assert 80.0 < stats.rate_hz < 320.0, stats.summary()
        assert 0.0 <= stats.age_s < 0.5 and 0.0 <= stats.write_age_s < 0.5, stats.summary()
        assert re.search(r"count \d+  \d+\.\d Hz  age \d+\.\d ms", stats.summary())

        assert writer.wait(10) == 0
        time.sleep(0.3)
        stats.update(reader)
        assert stats.age_s >= 0.3 and stats.write_age_s >= 0.25  # frames age once writing stops
    finally:
        reader.close()


# -- run_viewer in this process ---------------------------------------------------------------
def test_choose_mode():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert choose_mode("auto", io.StringIO(), env={}) == "text"
    assert choose_mode("auto", Tty(), env={}) == "terminal"
    assert choose_mode("png", io.StringIO(), env={}) == "png"
    import importlib.util

    has_mpl = importlib.util.find_spec("matplotlib") is not None
    assert choose_mode("auto", io.StringIO(), env={"DISPLAY": ":0"}) == ("window" if has_mpl else "text")
    with pytest.raises(ViewerError, match="viewer mode"):
        choose_mode("hologram", io.StringIO(), env={})


def test_run_viewer_png_once_from_a_stream_written_by_another_process(streams, namespace, processes, tmp_path):
    streams("image", (16, 24), "float32")
    start_writer(processes, "image", namespace, rate=200.0)
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "snap.png"
    status = run_viewer("image", namespace, mode="png", png_path=path, frames=1, duration=20, out=out, err=err)
    assert status == 0, err.getvalue()
    pixels = read_png(path)
    assert pixels.shape == (16, 24)
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255  # the writer's ramp, normalised
    assert (np.diff(pixels.ravel().astype(int)) >= 0).all()
    line = out.getvalue().strip()
    assert line.startswith(f"image @ {namespace}  16x24 float32  count ") and str(path) in line
    assert " Hz" in line and " ms" in line


def test_run_viewer_text_and_terminal_output(streams, namespace):
    stream = streams("vec", (6,), "float64")
    out = io.StringIO()
    assert run_viewer("vec", namespace, mode="text", duration=0.2, interval=0.02, out=out) == 0
    assert "(waiting for the first frame)" in out.getvalue()
    assert out.getvalue().count("(waiting for the first frame)") == 1  # not redrawn while unchanged

    stream.write(np.arange(6.0))
    out = io.StringIO()
    assert run_viewer("vec", namespace, mode="terminal", frames=1, out=out) == 0
    text = out.getvalue()
    assert text.startswith("\x1b[?25l") and "\x1b[H\x1b[J" in text and text.endswith("\x1b[?25h\n")
    assert "vec @ " in text and "6 float64  count 1" in text and "▁▂▄▅▇█" in text


def test_missing_stream_is_a_clear_error_with_status_1(namespace):
    err = io.StringIO()
    assert run_viewer("nowhere", namespace, out=io.StringIO(), err=err) == 1
    assert f"stream 'nowhere' does not exist in namespace '{namespace}'" in err.getvalue()
    with pytest.raises(ViewerError, match="nowhere"):
        ViewerProcess("nowhere", namespace)
    result = run_python("import sys; from shmpiped.viewer import main; sys.exit(main())",
                        "nowhere", "--namespace", namespace, check=False)
    assert result.returncode == 1 and "'nowhere'" in result.stderr and namespace in result.stderr
    assert not segments_of(namespace)


def test_gpu_stream_without_mirror_is_viewed_through_its_device_memory(emulated_gpu, streams, namespace):
    dm = streams("dm", (2, 3), "float32", storage="gpu", gpu_device="cuda:0")
    dm.write(np.arange(6).reshape(2, 3))
    viewer_stream = attach_readonly("dm", namespace)
    try:
        assert type(viewer_stream).__name__ == "DeviceStream"
        assert viewer_stream.read_host().tolist() == [[0, 1, 2], [3, 4, 5]]
    finally:
        viewer_stream.close()
    out = io.StringIO()
    assert run_viewer("dm", namespace, mode="text", frames=1, duration=10, out=out, err=io.StringIO()) == 0
    assert "5" in out.getvalue()


def test_gpu_stream_with_mirror_is_viewed_through_the_mirror(emulated_gpu, streams, namespace):
    dm = streams("dm", (3,), "float32", storage="gpu", gpu_device="cuda:0", cpu_mirror=True)
    dm.write([1.5, 2.5, 3.5])
    viewer_stream = attach_readonly("dm", namespace)
    try:
        assert type(viewer_stream) is Stream and viewer_stream.read().tolist() == [1.5, 2.5, 3.5]
    finally:
        viewer_stream.close()


def test_gpu_stream_viewer_without_a_usable_gpu_says_what_is_missing(emulated_gpu, streams, namespace):
    streams("dm", (4,), "float32", storage="gpu", gpu_device="cuda:0")
    env = {**{k: v for k, v in os.environ.items() if k != device.EMULATION_ENV}, "CUDA_VISIBLE_DEVICES": ""}
    viewer = subprocess.run([sys.executable, "-m", "shmpiped.viewer", "dm", "--namespace", namespace,
                             "--mode", "text", "--frames", "1"], env=env, capture_output=True, text=True, timeout=30)
    assert viewer.returncode == 1
    assert "cannot view GPU stream 'dm' (it has no cpu_mirror)" in viewer.stderr
    assert "no CUDA device is usable" in viewer.stderr or "CuPy is not installed" in viewer.stderr


# -- viewer processes -----------------------------------------------------------------------------
def test_viewer_process_shows_a_live_stream_and_closes(streams, namespace, processes, tmp_path):
    stream = streams("frames", (8, 8), "float32")
    start_writer(processes, "frames", namespace, rate=200.0)
    log = open(tmp_path / "viewer.out", "w+")
    viewer = ViewerProcess("frames", namespace, mode="text", interval=0.05, stdout=log, stderr=log)
    processes.append(viewer)
    assert viewer.alive and viewer.pid > 0

    def rates():
        return [float(r) for r in re.findall(r"(\d+\.\d) Hz", (tmp_path / "viewer.out").read_text())]

    assert wait_for(lambda: any(r > 0 for r in rates())), (tmp_path / "viewer.out").read_text()
    output = (tmp_path / "viewer.out").read_text()
    assert "frames @ " in output and "8x8 float32" in output and re.search(r"age \d+\.\d ms", output)
    assert "range [0, 63]" in output
    assert waiters(stream) == 0  # polling, never parked on the futex

    assert viewer.close() == 0  # SIGTERM ends it cleanly
    assert not viewer.alive and not os.path.exists(f"/proc/{viewer.pid}")
    log.close()
    assert segments_of(namespace) == [layout.stream_segment_name(namespace, "frames")]


def test_viewer_process_ends_on_ctrl_c_and_when_the_stream_goes(streams, namespace, processes, tmp_path):
    streams("a", (3,), "float32")
    stream_b = streams("b", (3,), "float32")
    logs = [open(tmp_path / f"{name}.out", "w+") for name in ("a", "b")]
    first, second = (ViewerProcess(name, namespace, mode="text", interval=0.02, stdout=log, stderr=log)
                     for name, log in zip("ab", logs))
    processes.extend([first, second])
    for name in "ab":  # started and attached: each has drawn its "waiting" screen
        assert wait_for(lambda n=name: "waiting for the first frame" in (tmp_path / f"{n}.out").read_text())

    os.kill(first.pid, signal.SIGINT)
    assert first.wait(10) == 0

    stream_b.close()
    stream_b.unlink()
    assert second.wait(10) == 0
    assert f"stream 'b' in namespace '{namespace}' was removed" in (tmp_path / "b.out").read_text()
    for log in logs:
        log.close()


def test_an_attached_viewer_does_not_slow_the_writer(streams, namespace, processes, tmp_path):
    stream = streams("fast", (64, 64), "float32")

    def writer_rate() -> float:
        return float(run_python(FLAT_OUT_WRITER, "fast", namespace, "1.0").stdout.split()[-1])

    ratios = []
    for _attempt in range(3):  # a sanity check on a shared machine, not a benchmark
        baseline = writer_rate()
        log_path = tmp_path / f"viewer{_attempt}.out"
        with open(log_path, "w") as log:
            viewer = ViewerProcess("fast", namespace, mode="text", interval=0.001, stdout=log)
            processes.append(viewer)
            assert wait_for(lambda p=log_path: p.stat().st_size > 0)  # attached and drawing
            drawn_before = log_path.read_text().count(" Hz")
            with_viewer = writer_rate()
            drawn = log_path.read_text().count(" Hz") - drawn_before
            assert waiters(stream) == 0
            assert viewer.close() == 0
        assert drawn > 20, "the viewer was not refreshing while the writer ran"
        ratios.append(with_viewer / baseline)
        if ratios[-1] >= 0.7:
            break
    assert max(ratios) >= 0.7, f"writer rate with a viewer / without: {ratios}"


def test_module_entry_point_png_mode(streams, namespace, processes, tmp_path):
    streams("scalar", (), "float64").write(4.0)
    path = tmp_path / "scalar.png"
    result = subprocess.run([sys.executable, "-m", "shmpiped.viewer", "scalar", "--namespace", namespace,
                             "--png", str(path), "--frames", "1"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert read_png(path).shape == (32, 32) and f"scalar @ {namespace}  scalar float64  count 1" in result.stdout
