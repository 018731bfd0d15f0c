"""The web console's static assets and its live stream previews (PNG and JSON).

Owns: serving the files in ``shmpiped/service/console/`` and turning the newest
frame of a stream into a small PNG (2-D: 8-bit grayscale, autoscaled; 1-D: a
rasterised line plot; more dimensions: the first 2-D slice) or a JSON summary
(any stream; a 0-D value is shown by the console from the JSON).  A preview
reads like ``shmpiped view``: the stream is attached read-only (the header is
mapped read-only too, so the handle can never park on the futex or be counted as
a waiter), the frame is copied and checked against being lapped, nothing ever
waits for the writer.  GPU streams are read through their CPU mirror only.
One encode per stream, width and period serves every viewer: ``max_hz`` is how
old a cached answer may get, not a promise to re-encode.

Interface for the HTTP routes (``httpapi.py``)::

    console_asset(path) -> (content_type, body) | None
        ``path`` is the request path without query: "/" (index.html) or "/console/<file>";
        None: not an asset (404).  CONSOLE_HEADERS: extra response headers for these answers.
    PreviewCache(source)
        ``source``: a namespace name (any stream of it), or a callable returning the daemon's
        current snapshot dict (or a ``Published``), whose "namespace" and "streams" say what can
        be previewed: a reload or a namespace change is followed on the next request.
      .png(stream, width=DEFAULT_WIDTH, max_hz=DEFAULT_MAX_HZ) -> bytes   (image/png)
      .json(stream, max_hz=DEFAULT_MAX_HZ) -> dict  {"stream", "shape", "dtype", "count", "age_s",
            "values" (scalar, list of <= 64 values, or None), "min", "max", "mean", "slice"}
      .respond(path, query) -> (status, content_type, body)  the whole "/preview/<stream>.png|.json"
            route, query string "width=W&max_hz=R" parsed and checked, errors as {"detail": ...}
      .close()
    Errors are PreviewError (``.status``, ``.detail``): UnknownStream (a KeyError, 404),
    BadPreviewRequest (a ValueError, 400), StreamNotViewable (409: GPU stream without mirror,
    frames lapped on every try).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from importlib import resources
from urllib.parse import parse_qs, unquote

import numpy as np

from ..errors import SharedMemoryError
from ..pixels import encode_png, finite_range, image_pixels, plot_pixels, real_values
from ..shm import Stream, layout

DEFAULT_WIDTH = 512
MIN_WIDTH = 16
MAX_WIDTH = 1024          # pixels: the widest preview served, whatever is asked
MAX_HEIGHT = 1024
DEFAULT_MAX_HZ = 5.0
MAX_HZ = 30.0
PLOT_ASPECT = 4           # a 1-D plot is width x width/PLOT_ASPECT pixels
JSON_VALUES_MAX = 64      # streams with more elements answer "values": null (their min/max/mean still)
JSON_SIDE = 256           # JSON statistics come from at most 256 x 256 (or 65536) sampled elements
COPY_TRIES = 8            # copies lapped by the writer before the preview gives up (409)
MAX_ATTACHED = 64         # stream handles kept open at once
IDENTITY_CHECK_S = 1.0    # how often a kept handle checks that its segment is still the stream's

_CONSOLE_PACKAGE = "shmpiped.service.console"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CONSOLE_HEADERS = [
    # Everything the page needs comes from this origin; previews are shown through blob: URLs.
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' blob: data:; connect-src 'self' blob:; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_assets: dict[str, tuple[str, bytes]] | None = None


# -- console assets -----------------------------------------------------------------------
def _load_assets() -> dict[str, tuple[str, bytes]]:
    found = {}
    for entry in resources.files(_CONSOLE_PACKAGE).iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if suffix in _CONTENT_TYPES and entry.is_file():
            found[entry.name] = (_CONTENT_TYPES[suffix], entry.read_bytes())
    return found


def console_asset(path: str) -> tuple[str, bytes] | None:
    """(content type, body) of the console file at request ``path``; None when there is none.

    Only the package's own files are served, looked up by exact name: no path
    is ever joined from the request, so nothing outside the folder can be named.
    """
    global _assets
    if _assets is None:
        _assets = _load_assets()  # read once: the package's files do not change under a running daemon
    if path in ("/", "/index.html"):
        name = "index.html"
    elif path.startswith("/console/"):
        name = path[len("/console/"):]
    else:
        return None
    return _assets.get(name)


# -- errors ---------------------------------------------------------------------------------
class PreviewError(Exception):
    """A preview that cannot be served: ``status`` (HTTP) and ``detail`` (what to change)."""

    status = 500

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:  # KeyError would quote it
        return self.detail


class UnknownStream(PreviewError, KeyError):
    status = 404


class BadPreviewRequest(PreviewError, ValueError):
    status = 400


class StreamNotViewable(PreviewError):
    status = 409


def frame_png(frame: np.ndarray, width: int) -> bytes:
    """The PNG for one (already sampled) frame: image for 2-D, plot for 1-D, a mid-grey tile for 0-D."""
    if frame.ndim == 0 or frame.size == 0:
        return encode_png(np.full((MIN_WIDTH, MIN_WIDTH), 128, dtype=np.uint8))
    try:
        values = real_values(frame)[0]
    except TypeError as exc:
        raise StreamNotViewable(f"cannot draw this stream: {exc}; read it as JSON") from None
    if values.ndim == 1:
        return encode_png(plot_pixels(values, width, max(32, width // PLOT_ASPECT)))
    return encode_png(image_pixels(values))


# -- sampling a frame ------------------------------------------------------------------------
def _drawn_part(view: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The first 2-D slice of an array of more than 2 dimensions (a view), and its description."""
    if view.ndim <= 2:
        return view, None
    index = ", ".join(["0"] * (view.ndim - 2) + [":", ":"])
    return view[(0,) * (view.ndim - 2)], f"[{index}]"


def _sampled(view: np.ndarray, max_cols: int, max_rows: int) -> np.ndarray:
    """A private copy of at most max_rows x max_cols elements of a 2-D view (every k-th row and column,
    one k for both: the aspect is kept), or of max_cols * max_rows elements of a 1-D one."""
    if view.ndim == 2:
        rows, cols = view.shape
        step = max(1, math.ceil(cols / max_cols), math.ceil(rows / max_rows))
        return np.array(view[::step, ::step], copy=True)
    if view.ndim == 1:
        step = max(1, math.ceil(view.size / (max_cols * max_rows)))
        return np.array(view[::step], copy=True)
    return np.array(view, copy=True)


class _Frame:
    """One consistent sample of a stream's newest publication."""

    __slots__ = ("count", "origin_ns", "values", "slice")

    def __init__(self, count, origin_ns, values, slice_note):
        self.count, self.origin_ns, self.values, self.slice = count, origin_ns, values, slice_note


def sample_newest(stream: Stream, max_cols: int, max_rows: int) -> _Frame:
    """Copy a bounded sample of the newest frame, retrying when the writer laps the copy.

    Never waits: a stream that laps every one of COPY_TRIES copies is a
    StreamNotViewable (its ring is too short for its rate and frame size).
    """
    for _ in range(COPY_TRIES):
        count, view = stream.latest()
        if view is None:
            part, note = _drawn_part(np.zeros(stream.shape, stream.dtype))
            return _Frame(0, 0, _sampled(part, max_cols, max_rows), note)
        _, origin_ns, _ = stream.slot_metadata(count)
        part, note = _drawn_part(view)
        values = _sampled(part, max_cols, max_rows)
        if stream.still_valid(count):
            return _Frame(count, origin_ns, values, note)
    raise StreamNotViewable(f"stream {stream.name!r} was overwritten during each of {COPY_TRIES} copies;"
                            " give it more slots (nslots) to preview it")


# -- the per-stream cache ---------------------------------------------------------------------
class _Attached:
    """A kept read-only handle on one stream, with the answers computed from it."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.lock = threading.Lock()
        self.checked_at = time.monotonic()
        self.answers: dict[tuple, tuple[float, int, object]] = {}  # key -> (made at, count, answer)

    def still_current(self, now: float) -> bool:
        if now - self.checked_at < IDENTITY_CHECK_S:
            return True
        self.checked_at = now
        return self.stream.segment.still_named()

    def close(self) -> None:
        with self.lock:
            self.answers.clear()
            if not self.stream.closed:
                self.stream.close()


def _attach(namespace: str, name: str) -> Stream:
    """A read-only handle on ``name`` (GPU streams through their CPU mirror only)."""
    try:
        stream = Stream.attach(name, namespace, readonly=True)
    except ValueError as exc:
        raise BadPreviewRequest(f"{name!r} cannot be a stream name: {exc}") from None
    except FileNotFoundError:
        raise UnknownStream(f"stream {name!r} does not exist in namespace {namespace!r}"
                            f" (no /dev/shm/{layout.stream_segment_name(namespace, name)})") from None
    except (SharedMemoryError, PermissionError) as exc:
        raise StreamNotViewable(f"cannot read stream {name!r} in namespace {namespace!r}: {exc}") from None
    if not stream.has_host_payload:
        stream.close()
        raise StreamNotViewable(f"stream {name!r} lives on the GPU without a CPU mirror; set"
                                " `cpu_mirror: true` on its shared_memory entry to preview it")
    return stream


def _positive(query: dict, key: str, default: float, low: float, high: float, kind=float) -> float:
    values = query.get(key)
    if not values:
        return default
    try:
        value = kind(values[-1])
    except ValueError:
        raise BadPreviewRequest(f"{key} must be a number, got {values[-1]!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise BadPreviewRequest(f"{key} must be a positive number, got {values[-1]!r}")
    return min(max(value, low), high)


def _json_value(value):
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class PreviewCache:
    """Previews of one pipeline's streams, shared by every viewer (see the module docstring)."""

    def __init__(self, source):
        self._source = source
        self._lock = threading.Lock()
        self._attached: dict[tuple[str, str], _Attached] = {}

    # -- which streams -----------------------------------------------------------------
    def _resolve(self, name: str) -> tuple[str, dict | None]:
        """(namespace, the snapshot's entry for ``name``) or UnknownStream."""
        if isinstance(self._source, str):
            return self._source, None
        snapshot = self._source()
        snapshot = getattr(snapshot, "snapshot", snapshot)
        if not snapshot:
            raise UnknownStream("the daemon has no pipeline yet")
        streams = snapshot.get("streams") or {}
        if name not in streams:
            known = ", ".join(sorted(streams)) or "none"
            raise UnknownStream(f"no stream {name!r} in pipeline {snapshot.get('namespace')!r}"
                                f" (its streams: {known})")
        return snapshot.get("namespace") or layout.DEFAULT_NAMESPACE, streams[name]

    def _handle(self, name: str) -> _Attached:
        namespace, entry = self._resolve(name)
        if entry and entry.get("storage") == "gpu" and not entry.get("cpu_mirror"):
            raise StreamNotViewable(f"stream {name!r} lives on the GPU without a CPU mirror; set"
                                    " `cpu_mirror: true` on its shared_memory entry to preview it")
        key = (namespace, name)
        now = time.monotonic()
        with self._lock:
            attached = self._attached.get(key)
            if attached is not None and not attached.still_current(now):
                del self._attached[key]  # the pipeline was rebuilt: follow the new segment
                attached.close()
                attached = None
            if attached is None:
                if len(self._attached) >= MAX_ATTACHED:
                    oldest = next(iter(self._attached))
                    self._attached.pop(oldest).close()
                attached = self._attached[key] = _Attached(_attach(namespace, name))
            return attached

    def _cached(self, name: str, key: tuple, max_hz: float, make):
        """The answer for ``key``, made again only when older than 1/max_hz and the stream has moved on."""
        attached = self._handle(name)
        with attached.lock:
            if attached.stream.closed:
                raise UnknownStream(f"stream {name!r} was just removed; retry")
            now = time.monotonic()
            cached = attached.answers.get(key)
            if cached is not None:
                made_at, count, answer = cached
                if now - made_at < 1.0 / max_hz or count == attached.stream.count:
                    return answer
            frame = make(attached.stream)
            answer = frame[1]
            attached.answers[key] = (now, frame[0], answer)
            return answer

    # -- answers ------------------------------------------------------------------------
    def png(self, stream: str, width: int = DEFAULT_WIDTH, max_hz: float = DEFAULT_MAX_HZ) -> bytes:
        width = int(min(max(int(width), MIN_WIDTH), MAX_WIDTH))
        max_hz = min(max(float(max_hz), 0.01), MAX_HZ)

        def make(handle: Stream):
            frame = sample_newest(handle, width, MAX_HEIGHT)
            return frame.count, frame_png(frame.values, width)

        return self._cached(stream, ("png", width), max_hz, make)

    def json(self, stream: str, max_hz: float = DEFAULT_MAX_HZ) -> dict:
        max_hz = min(max(float(max_hz), 0.01), MAX_HZ)

        def make(handle: Stream):
            frame = sample_newest(handle, JSON_SIDE, JSON_SIDE)
            return frame.count, self._summary(handle, frame)

        answer = self._cached(stream, ("json",), max_hz, make)
        age = None
        if answer["_origin_ns"]:
            age = max(0.0, (time.monotonic_ns() - answer["_origin_ns"]) / 1e9)
        return {**{k: v for k, v in answer.items() if not k.startswith("_")}, "age_s": age}

    @staticmethod
    def _summary(handle: Stream, frame: _Frame) -> dict:
        values = frame.values
        summary = {"stream": handle.name, "namespace": handle.namespace, "shape": list(handle.shape),
                   "dtype": str(handle.dtype), "count": frame.count, "slice": frame.slice,
                   "values": None, "min": None, "max": None, "mean": None, "_origin_ns": frame.origin_ns}
        if values.ndim == 0:
            summary["values"] = _json_value(values.item())
        elif handle.shape and int(np.prod(handle.shape)) <= JSON_VALUES_MAX and frame.slice is None:
            summary["values"] = [_json_value(v) for v in values.ravel().tolist()]
        try:
            real = real_values(values)[0]
        except TypeError:
            return summary
        rng = finite_range(real)
        if rng is not None:
            summary["min"], summary["max"] = rng
            summary["mean"] = float(np.nanmean(real))
        return summary

    def respond(self, path: str, query: str = "") -> tuple[int, str, bytes]:
        """The whole ``/preview/<stream>.png|.json`` route: (status, content type, body)."""
        try:
            name, dot, kind = unquote(path[len("/preview/"):]).rpartition(".")
            if not path.startswith("/preview/") or not dot or not name or kind not in ("png", "json"):
                raise UnknownStream("preview paths are /preview/STREAM.png or /preview/STREAM.json")
            params = parse_qs(query, keep_blank_values=True)
            max_hz = _positive(params, "max_hz", DEFAULT_MAX_HZ, 0.01, MAX_HZ)
            if kind == "png":
                width = _positive(params, "width", DEFAULT_WIDTH, MIN_WIDTH, MAX_WIDTH, int)
                return 200, "image/png", self.png(name, int(width), max_hz)
            return 200, "application/json", json.dumps(self.json(name, max_hz)).encode()
        except PreviewError as exc:
            return exc.status, "application/json", json.dumps({"detail": exc.detail}).encode()

    def close(self) -> None:
        with self._lock:
            attached, self._attached = list(self._attached.values()), {}
        for handle in attached:
            handle.close()
