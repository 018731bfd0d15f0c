"""Stream viewers: look at a live stream from a separate process without slowing its writer.

A viewer attaches to a stream *read-only* by its logical name and polls it:

* the mapping is opened ``O_RDONLY`` / ``PROT_READ``, so the viewer cannot
  write a byte of the stream, and it takes no lock (``Segment.open`` never
  ``flock``s; only creators do);
* it never parks on the stream's futex, so it never raises the waiter count
  and the writer's ``publish`` stays a plain store with no wake-up system
  call; it polls ``count`` and sleeps ``interval`` between polls;
* it copies the newest slot (``Stream.read()``, re-checking the slot's
  sequence number afterwards) only when ``count`` changed, and renders the
  copy.  The writer never waits for it; a lapped read is simply retried.

So an attached viewer costs the writer nothing but the CPU time the viewer
itself uses, and the viewer process lowers its own priority (``nice``).

Three displays:

* ``window``: a matplotlib window, when matplotlib is installed (it is not a
  dependency) and a display (``DISPLAY``/``WAYLAND_DISPLAY``) is set;
* ``terminal``: a refreshing view on a terminal (0-D: the number; 1-D: a
  sparkline; 2-D: a shaded image; more dimensions: the first 2-D slice), or
  plain repeated text blocks when the output is not a terminal;
* ``png``: ``--png FILE`` rewrites FILE (atomically) at each refresh, with a
  PNG encoder of our own (zlib + struct, 8-bit grayscale, no dependency).

Every display shows the stream's rate and the age of its newest frame
(``StreamStats``).  ``run_viewer`` is the viewer itself; ``ViewerProcess``
runs it in its own process (``python -m shmpiped.viewer STREAM ...``), which
is what ``shmpiped view`` and ``PipelineManager.open_viewer`` use.

A GPU stream is read through its CPU mirror when it has one, else through its
device memory (CUDA IPC), each frame copied to the host.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque

import numpy as np

from . import spawning
from .errors import SharedMemoryError, ShmPipelineError
from .pixels import encode_png, finite_range, image_pixels, levels, plot_pixels, real_values
from .shm import layout
from .shm.device import DeviceUnavailable
from .shm.stream import Stream

MODES = ("auto", "window", "terminal", "text", "png")
SPARK_CHARS = "▁▂▃▄▅▆▇█"
SHADE_CHARS = " .:-=+*#%@"
PLOT_HEIGHT = 128          # pixels of a 1-D PNG line plot
PLOT_MIN_WIDTH = 256
PLOT_MAX_WIDTH = 1024
TILE_SIZE = 32             # pixels of a 0-D PNG tile


class ViewerError(ShmPipelineError, RuntimeError):
    """A viewer cannot show the stream (missing, GPU, no display...)."""


# -- attaching ---------------------------------------------------------------------
def namespace_of(stream_name: str) -> str:
    """The namespace to view ``stream_name`` in when none is given: the one running namespace that has
    it (the default namespace when none or the default has it); a ViewerError when several have it."""
    from .shm_inventory import live_streams

    holders = sorted(ns for ns, names in live_streams().items() if stream_name in names)
    if len(holders) > 1 and layout.DEFAULT_NAMESPACE not in holders:
        raise ViewerError(f"stream {stream_name!r} exists in several running namespaces: {', '.join(holders)};"
                          " pass --namespace NAME")
    return holders[0] if len(holders) == 1 else layout.DEFAULT_NAMESPACE


def attach_readonly(stream_name: str, namespace: str | None = None) -> Stream:
    """Attach to ``stream_name`` read-only, or raise a ViewerError that says why not."""
    ns = namespace or layout.DEFAULT_NAMESPACE
    try:
        stream = Stream.attach(stream_name, ns, readonly=True)
    except ValueError as exc:  # a name that cannot be a segment name
        raise ViewerError(f"cannot view stream {stream_name!r} in namespace {ns!r}: {exc}") from exc
    except FileNotFoundError as exc:
        from .shm_inventory import describe_live_namespaces

        raise ViewerError(
            f"stream {stream_name!r} does not exist in namespace {ns!r}"
            f" (no /dev/shm/{layout.stream_segment_name(ns, stream_name)}); {describe_live_namespaces()}"
            " (pass --namespace NAME)"
        ) from exc
    except (SharedMemoryError, PermissionError) as exc:
        raise ViewerError(f"cannot view stream {stream_name!r} in namespace {ns!r}: {exc}") from exc
    if stream.has_host_payload:
        return stream  # a CPU stream, or a GPU stream read through its CPU mirror
    stream.close()
    try:  # a GPU stream without mirror: map its device memory (CUDA IPC) and copy frames to the host
        return Stream.attach(stream_name, ns, readonly=True, gpu_device=True)
    except (DeviceUnavailable, FileNotFoundError) as exc:
        raise ViewerError(f"cannot view GPU stream {stream_name!r} (it has no cpu_mirror): {exc}") from exc


# -- statistics --------------------------------------------------------------------
class StreamStats:
    """Rolling publication rate and newest-frame age of one stream.

    The rate is the count delta between the oldest and the newest of the last
    ``window`` samples (at most ``horizon_s`` old) over their CLOCK_MONOTONIC
    time delta.  The frame age is "now - origin" of the newest frame: origin
    stamps are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``), the same
    clock in every process of the machine.
    """

    def __init__(self, window: int = 300, horizon_s: float | None = 10.0):
        self._samples: deque[tuple[int, int]] = deque(maxlen=window)
        self.horizon_ns = None if horizon_s is None else int(horizon_s * 1e9)
        self.count = 0
        self.origin_ns = 0
        self.write_time: float | None = None
        self.sampled_ns = 0
        self.sampled_wall = 0.0

    def sample(self, count: int, now_ns: int | None = None) -> None:
        """Record that the stream's count was ``count`` at ``now_ns`` (monotonic)."""
        now_ns = time.monotonic_ns() if now_ns is None else int(now_ns)
        if self._samples and count < self._samples[-1][1]:
            self._samples.clear()  # the stream was recreated: start over
        self._samples.append((now_ns, int(count)))
        if self.horizon_ns is not None:
            while len(self._samples) > 2 and now_ns - self._samples[0][0] > self.horizon_ns:
                self._samples.popleft()
        self.count = int(count)
        self.sampled_ns = now_ns

    def update(self, stream: Stream, now_ns: int | None = None) -> int:
        """Sample ``stream`` now; returns its count."""
        count = stream.count
        self.origin_ns = stream.origin_ns if count else 0
        self.write_time = stream.write_time if count else None
        self.sampled_wall = time.time()
        self.sample(count, now_ns)
        return count

    @property
    def rate_hz(self) -> float | None:
        """Publications per second over the window; None until two samples exist."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (c1 - c0) * 1e9 / (t1 - t0)

    @property
    def age_s(self) -> float | None:
        """Seconds from the newest frame's origin to the last sample; None before any frame."""
        if not self.count or not self.origin_ns:
            return None
        return max(0.0, (self.sampled_ns - self.origin_ns) / 1e9)

    @property
    def write_age_s(self) -> float | None:
        """Seconds since the newest frame was written (wall clock)."""
        if self.write_time is None:
            return None
        return max(0.0, self.sampled_wall - self.write_time)

    def summary(self) -> str:
        """``count N  R Hz  age A ms (written W ms ago)``."""
        rate = "--" if self.rate_hz is None else f"{self.rate_hz:.1f}"
        text = f"count {self.count}  {rate} Hz"
        if self.age_s is None:
            return text + "  age -- ms"
        text += f"  age {self.age_s * 1e3:.1f} ms"
        if self.write_age_s is not None:
            text += f" (written {self.write_age_s * 1e3:.1f} ms ago)"
        return text


def header_line(stream: Stream, stats: StreamStats) -> str:
    """The line every display shows: name, shape, dtype, count, rate, age."""
    shape = "x".join(str(d) for d in stream.shape) or "scalar"
    return f"{stream.name} @ {stream.namespace}  {shape} {stream.dtype.name}  {stats.summary()}"


# -- array preparation -----------------------------------------------------------
def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, complex):
        return f"{value:.6g}"
    return f"{float(value):.6g}"


def _leading_slice(array: np.ndarray) -> tuple[np.ndarray, str]:
    """The first 2-D slice of an array of more than 2 dimensions, and its description."""
    if array.ndim <= 2:
        return array, ""
    index = ", ".join(["0"] * (array.ndim - 2) + [":", ":"])
    shape = "x".join(str(d) for d in array.shape)
    return array[(0,) * (array.ndim - 2)], f"slice [{index}] of {shape}"


def _bin_means_1d(values: np.ndarray, bins: int) -> np.ndarray:
    """Means of ``bins`` near-equal consecutive runs of values, ignoring NaN."""
    edges = np.linspace(0, values.size, bins + 1).astype(np.intp)[:-1]
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), edges)
    counts = np.add.reduceat(finite.astype(np.int64), edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _block_means_2d(values: np.ndarray, by: int, bx: int) -> np.ndarray:
    """Means of by x bx blocks (the last ones may be partial), ignoring NaN."""
    rows, cols = values.shape
    out_h, out_w = -(-rows // by), -(-cols // bx)
    finite = np.isfinite(values)
    padded = np.zeros((out_h * by, out_w * bx))
    weight = np.zeros_like(padded)
    padded[:rows, :cols] = np.where(finite, values, 0.0)
    weight[:rows, :cols] = finite
    sums = padded.reshape(out_h, by, out_w, bx).sum(axis=(1, 3))
    counts = weight.reshape(out_h, by, out_w, bx).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# -- text rendering ----------------------------------------------------------------
def render_text(array, width: int = 80, height: int = 24) -> str:
    """Render an array as text fitting ``width`` columns and about ``height`` lines.

    0-D: the number.  1-D: a sparkline (one character per element, or per
    run of elements when there are more than ``width``) and a min/max/mean
    line.  2-D: a shaded image (block means to fit ``width`` x ``height``)
    and its value range.  More dimensions: the first 2-D slice, named.
    """
    array = np.asarray(array)
    width, height = max(1, int(width)), max(1, int(height))
    array, note = _leading_slice(array)
    lines = [note] if note else []
    if array.size == 0:
        return "\n".join(lines + [f"(empty, shape {array.shape})"])
    if array.ndim == 0:
        return "\n".join(lines + [_fmt(array.item())])
    try:
        values, what = real_values(array)
    except TypeError:
        preview = ", ".join(str(v) for v in array.ravel()[:256])
        return "\n".join(lines + [preview[: width * height]])
    rng = finite_range(values)
    if values.ndim == 1:
        shown = values if values.size <= width else _bin_means_1d(values, width)
        if rng is None:
            return "\n".join(lines + [" " * shown.size, f"no finite values (n={values.size})"])
        marks = levels(shown, *rng, len(SPARK_CHARS))
        spark = "".join(" " if not np.isfinite(v) else SPARK_CHARS[k] for v, k in zip(shown, marks))
        stats = (f"min {_fmt(rng[0])}  max {_fmt(rng[1])}  mean {_fmt(np.nanmean(values))}"
                 f"  n={values.size}")
        if shown.size < values.size:
            stats += f" (shown as {shown.size} bins)"
        return "\n".join(lines + [spark, _with_notes(stats, values, what)])
    rows, cols = values.shape
    text_rows = max(1, height - 1 - len(lines))
    by, bx = -(-rows // text_rows), -(-cols // width)
    shown = values if by == bx == 1 else _block_means_2d(values, by, bx)
    if rng is None:
        body = ["?" * shown.shape[1]] * shown.shape[0]
        return "\n".join(lines + body + [f"no finite values ({rows}x{cols})"])
    shades = levels(shown, *rng, len(SHADE_CHARS))
    finite = np.isfinite(shown)
    body = ["".join(SHADE_CHARS[k] if ok else "?" for k, ok in zip(level_row, ok_row))
            for level_row, ok_row in zip(shades, finite)]
    stats = f"range [{_fmt(rng[0])}, {_fmt(rng[1])}]  mean {_fmt(np.nanmean(values))}  {rows}x{cols}"
    if shown.shape != values.shape:
        stats += f" shown as {shown.shape[0]}x{shown.shape[1]} ({by}x{bx} block means)"
    return "\n".join(lines + body + [_with_notes(stats, values, what)])


def _with_notes(stats: str, values: np.ndarray, what: str) -> str:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        stats += f"  {bad} non-finite"
    return f"{what} {stats}" if what else stats


# -- PNG -------------------------------------------------------------------------------
def png_pixels(array) -> np.ndarray:
    """The grayscale picture render_png writes for ``array`` (uint8, rows x columns).

    2-D: one pixel per element, finite min..max -> 0..255 (non-finite: 0,
    flat: 128).  1-D: a black line plot on white, PLOT_HEIGHT pixels tall.
    0-D: a flat mid-grey tile.  More dimensions: the first 2-D slice.
    """
    array, _ = _leading_slice(np.asarray(array))
    if array.ndim == 0 or array.size == 0:
        return np.full((TILE_SIZE, TILE_SIZE), 128, dtype=np.uint8)
    values, _ = real_values(array)
    if values.ndim == 2:
        return image_pixels(values)
    return plot_pixels(values, min(max(values.size, PLOT_MIN_WIDTH), PLOT_MAX_WIDTH), PLOT_HEIGHT)


def render_png(array, path) -> tuple[int, int]:
    """Write ``array`` as a grayscale PNG at ``path`` (atomically); returns (width, height)."""
    pixels = png_pixels(array)
    path = os.fspath(path)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "wb") as handle:
        handle.write(encode_png(pixels))
    os.replace(temp, path)  # a reader never sees half a file
    return pixels.shape[1], pixels.shape[0]


# -- displays --------------------------------------------------------------------------
class _TextDisplay:
    """Repeated text blocks (not a terminal), or a refreshing screen (terminal)."""

    def __init__(self, out, refreshing: bool):
        self.out = out
        self.refreshing = refreshing
        if refreshing:
            self._emit("\x1b[?25l")  # hide the cursor

    def _emit(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _size(self) -> tuple[int, int]:
        if not self.refreshing:
            return 80, 24
        columns, lines = shutil.get_terminal_size((80, 24))
        return max(8, columns - 1), max(4, lines - 2)

    def show(self, header: str, array: np.ndarray | None) -> None:
        width, height = self._size()
        body = "(waiting for the first frame)" if array is None else render_text(array, width, height)
        if self.refreshing:
            self._emit("\x1b[H\x1b[J" + header[:width] + "\n" + body)
        else:
            self._emit(header + "\n" + body + "\n\n")

    def stats(self, header: str) -> None:
        if self.refreshing:  # rewrite the header line only
            width, _ = self._size()
            self._emit("\x1b7\x1b[H" + header[:width] + "\x1b[K\x1b8")

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return True

    def close(self) -> None:
        if self.refreshing:
            self._emit("\x1b[?25h\n")


class _PngDisplay:
    def __init__(self, path, out):
        self.path = os.fspath(path)
        self.out = out

    def show(self, header: str, array: np.ndarray | None) -> None:
        if array is None:
            return
        width, height = render_png(array, self.path)
        self.out.write(f"{header}  -> {self.path} ({width}x{height})\n")
        self.out.flush()

    def stats(self, header: str) -> None:
        pass

    def wait(self, seconds: float) -> bool:
        time.sleep(seconds)
        return True

    def close(self) -> None:
        pass


class _WindowDisplay:  # pragma: no cover - needs matplotlib and a display
    def __init__(self, title: str):
        import matplotlib
        import matplotlib.pyplot as plt

        backend = matplotlib.get_backend().lower()
        if backend in ("agg", "pdf", "ps", "svg", "cairo", "template") or backend.endswith("inline"):
            raise ViewerError(f"matplotlib backend {backend!r} cannot open a window; use --png FILE")
        self.plt = plt
        self.figure, self.axes = plt.subplots(num=title)
        self.artist = None
        self.kind = None
        plt.show(block=False)

    def show(self, header: str, array: np.ndarray | None) -> None:
        self.axes.set_title(header, fontsize=8)
        if array is None:
            return
        array, note = _leading_slice(array)
        if array.ndim == 0 or array.size == 0 or array.dtype.kind not in "biufc":
            self._redraw("text")
            self.artist.set_text(render_text(array, 60, 10))
            return
        values, _ = real_values(array)
        rng = finite_range(values) or (0.0, 1.0)
        if rng[0] == rng[1]:
            pad = max(abs(rng[0]) * 0.005, 0.5)
            rng = (rng[0] - pad, rng[1] + pad)
        if values.ndim == 1:
            if self._redraw("line"):
                (self.artist,) = self.axes.plot(values)
            self.artist.set_data(np.arange(values.size), values)
            self.axes.set_xlim(0, max(1, values.size - 1))
            self.axes.set_ylim(*rng)
        else:
            if self._redraw("image"):
                self.artist = self.axes.imshow(values.astype(np.float32), interpolation="nearest")
                self.figure.colorbar(self.artist, ax=self.axes)
            self.artist.set_data(values.astype(np.float32))
            self.artist.set_clim(*rng)
        self.axes.set_xlabel(note)

    def _redraw(self, kind: str) -> bool:
        if self.kind == kind:
            return False
        self.axes.clear()
        self.kind = kind
        if kind == "text":
            self.artist = self.axes.text(0.02, 0.5, "", family="monospace", transform=self.axes.transAxes)
        return True

    def stats(self, header: str) -> None:
        self.axes.set_title(header, fontsize=8)

    def wait(self, seconds: float) -> bool:
        if not self.plt.fignum_exists(self.figure.number):
            return False  # the user closed the window
        self.plt.pause(seconds)
        return True

    def close(self) -> None:
        self.plt.close(self.figure)


def window_available(env=None) -> bool:
    """matplotlib installed and a display to open a window on."""
    env = os.environ if env is None else env
    has_display = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return has_display and importlib.util.find_spec("matplotlib") is not None


def choose_mode(mode: str, out, env=None) -> str:
    """Resolve ``auto``: window if possible, else terminal on a tty, else plain text."""
    if mode not in MODES:
        raise ViewerError(f"viewer mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if window_available(env):
        return "window"
    isatty = getattr(out, "isatty", None)
    return "terminal" if isatty is not None and isatty() else "text"


# -- the viewer loop -------------------------------------------------------------------
class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def run_viewer(
    stream_name: str,
    namespace: str | None = None,
    *,
    mode: str = "auto",
    png_path=None,
    interval: float = 0.1,
    frames: int | None = None,
    duration: float | None = None,
    out=None,
    err=None,
) -> int:
    """Show ``stream_name`` until stopped; returns the exit status.

    Polls the stream every ``interval`` seconds (statistics update at every
    poll) and renders only when its count changed.  Stops after ``frames``
    rendered frames, after ``duration`` seconds, when the stream's segment
    is removed, or on Ctrl-C / SIGTERM (status 0).  An error (missing
    stream, GPU stream, window without display) is written to ``err`` and
    gives status 1.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        resolved = choose_mode(mode, out)
        if resolved == "png" and not png_path:
            raise ViewerError("png mode needs a file: --png FILE")
        if resolved == "window" and not window_available():
            raise ViewerError("a viewer window needs matplotlib and a display (DISPLAY or "
                              "WAYLAND_DISPLAY); use the terminal view or --png FILE")
        stream = attach_readonly(stream_name, namespace)
    except ViewerError as exc:
        err.write(f"shmpiped view: {exc}\n")
        err.flush()
        return 1

    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_stop)
    display = None
    try:
        try:
            if resolved == "window":  # pragma: no cover - needs a display
                display = _WindowDisplay(f"shmpiped view {stream.namespace}/{stream.name}")
            elif resolved == "png":
                display = _PngDisplay(png_path, out)
            else:
                display = _TextDisplay(out, refreshing=resolved == "terminal")
            _view_loop(stream, display, interval, frames, duration, err)
        except ViewerError as exc:
            err.write(f"shmpiped view: {exc}\n")
            err.flush()
            return 1
        except (KeyboardInterrupt, _Stop, BrokenPipeError):
            pass
        finally:
            if display is not None:
                try:
                    display.close()
                except (OSError, ValueError):
                    pass
    except (KeyboardInterrupt, _Stop):
        pass  # a second signal while closing
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        stream.close()
    return 0


def _view_loop(stream: Stream, display, interval: float, frames: int | None, duration: float | None,
               err) -> None:
    interval = max(0.0005, float(interval))
    deadline = None if duration is None else time.monotonic() + float(duration)
    next_identity_check = time.monotonic() + 1.0
    stats = StreamStats()
    shown_count = -1
    rendered = 0
    while True:
        count = stats.update(stream)
        header = header_line(stream, stats)
        if count != shown_count:
            shown_count = count
            if count == 0:
                display.show(header, None)
            else:
                display.show(header, stream.read_host())
                rendered += 1
                if frames is not None and rendered >= frames:
                    return
        else:
            display.stats(header)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if now >= next_identity_check:
            next_identity_check = now + 1.0
            if not stream.segment.still_named():
                err.write(f"shmpiped view: stream {stream.name!r} in namespace {stream.namespace!r}"
                          " was removed\n")
                err.flush()
                return
        wait = interval if deadline is None else max(0.0, min(interval, deadline - now))
        if not display.wait(wait):
            return


# -- the viewer's own process ------------------------------------------------------------
class ViewerProcess:
    """A viewer running in its own process (``shmpiped view STREAM ...``, started by ``shmpiped.spawning``).

    The viewer attaches read-only, takes no lock, never registers as a futex
    waiter and runs at lowered priority (``nice``), so it never slows the
    writer.  ``check`` (default) attaches here first, so that a missing or
    GPU stream raises ViewerError at once instead of a child exiting 1.
    ``stdout``/``stderr`` go to ``subprocess.Popen`` (None: inherited; a
    daemon should pass a file or ``subprocess.DEVNULL``, or use png mode).
    """

    def __init__(
        self,
        stream: str,
        namespace: str | None = None,
        *,
        mode: str = "auto",
        png_path=None,
        interval: float = 0.1,
        frames: int | None = None,
        duration: float | None = None,
        nice: int = 10,
        stdout=None,
        stderr=None,
        check: bool = True,
    ):
        if mode not in MODES:
            raise ViewerError(f"viewer mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "png" and not png_path:
            raise ViewerError("png mode needs a file: --png FILE")
        if check:
            attach_readonly(stream, namespace).close()
        self.stream = stream
        self.namespace = namespace or layout.DEFAULT_NAMESPACE
        self.name = f"shmpiped-viewer-{stream}"
        args = [stream, "--namespace", self.namespace,
                "--mode", mode, "--interval", repr(float(interval)), "--nice", str(int(nice))]
        if png_path:
            args += ["--png", os.fspath(png_path)]
        if frames is not None:
            args += ["--frames", str(int(frames))]
        if duration is not None:
            args += ["--duration", repr(float(duration))]
        self.args = args
        self.process = spawning.start_child("shmpiped.viewer:main", *args, stdin=subprocess.DEVNULL,
                                            stdout=stdout, stderr=stderr, close_fds=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the viewer to end; Ctrl-C ends it (status 0). TimeoutExpired on timeout."""
        try:
            return self.process.wait(timeout)
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the viewer too; make sure it is gone.
            self.close()
            return 0

    def close(self, timeout: float = 2.0) -> int | None:
        """Stop the viewer: SIGTERM, wait ``timeout``, then SIGKILL; returns its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        return self.process.poll()

    def __enter__(self) -> "ViewerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.returncode}"
        return f"ViewerProcess({self.stream!r}, namespace={self.namespace!r}, pid={self.pid}, {state})"


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    # The viewer ends on Ctrl-C whatever started it: a parent run with `&` or `nohup`, or from a
    # daemon, hands its children SIGINT "ignored", which Python would otherwise keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(prog="python -m shmpiped.viewer",
                                     description="Show a live shmpiped stream (read-only).")
    parser.add_argument("stream")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--mode", choices=MODES, default="auto")
    parser.add_argument("--png", metavar="FILE", default=None, help="write PNG snapshots to FILE")
    parser.add_argument("--interval", type=_positive_float, default=0.1)
    parser.add_argument("--frames", type=_positive_int, default=None)
    parser.add_argument("--duration", type=_positive_float, default=None)
    parser.add_argument("--nice", type=int, default=10, help="lower the viewer's priority by this much")
    args = parser.parse_args(argv)
    mode = "png" if args.png and args.mode == "auto" else args.mode
    if args.nice > 0:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    return run_viewer(args.stream, args.namespace, mode=mode, png_path=args.png, interval=args.interval,
                      frames=args.frames, duration=args.duration)


if __name__ == "__main__":
    sys.exit(main())
