"""Gray pictures of stream values: the viewer's PNG files and the web console's previews.

Values are drawn as float64 (complex as magnitude, non-finite as NaN), scaled
over their finite range: a 2-D frame one pixel per element, a 1-D frame as a
line plot, and written as 8-bit grayscale PNG by :func:`encode_png` (no
dependency beyond zlib).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

THICK_LINE_WIDTH = 256    # plots at least this wide draw a 2-pixel line (legible when a browser scales it down)


def real_values(array: np.ndarray) -> tuple[np.ndarray, str]:
    """float64 values to draw (NaN where not finite), and a note on what they are ("|z|" for complex);
    TypeError for values that are not numbers."""
    note = ""
    if array.dtype.kind == "c":
        array, note = np.abs(array), "|z|"
    elif array.dtype.kind not in "biuf":
        raise TypeError(f"cannot display values of dtype {array.dtype}")
    values = np.asarray(array, dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan), note


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def levels(values: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Integer levels 0..n-1 of values between lo and hi (a flat range sits mid-way, NaN at 0)."""
    if hi > lo:
        scaled = np.floor((np.nan_to_num(values, nan=lo) - lo) / (hi - lo) * n)
    else:
        scaled = np.full(values.shape, n // 2)
    return np.clip(scaled, 0, n - 1).astype(np.intp)


def image_pixels(values: np.ndarray) -> np.ndarray:
    """2-D values -> uint8 gray levels: finite min..max -> 0..255, non-finite 0, a flat frame 128."""
    rng = finite_range(values)
    if rng is None:
        return np.zeros(values.shape, dtype=np.uint8)
    pixels = levels(values, *rng, 256).astype(np.uint8)
    pixels[~np.isfinite(values)] = 0
    return pixels


def plot_pixels(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """1-D values as a line plot: black (0) on white (255), a grey (192) line at zero when it is in range.

    With more samples than columns each column draws its samples' min..max;
    with fewer, the line is interpolated; consecutive columns are joined.
    """
    canvas = np.full((height, width), 255, dtype=np.uint8)
    rng = finite_range(values)
    if rng is None or values.size == 0:
        return canvas
    lo, hi = rng
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0  # a flat signal: a line across the middle
    n = values.size
    if n > width:
        edges = np.linspace(0, n, width + 1).astype(np.intp)[:-1]
        low, high = np.fmin.reduceat(values, edges), np.fmax.reduceat(values, edges)
    elif n == 1:
        low = high = np.full(width, values[0])
    else:
        low = high = np.interp(np.linspace(0, n - 1, width), np.arange(n), values)
    margin = 2
    span = height - 1 - 2 * margin

    def row_of(v):
        return (height - 1 - margin - np.round((v - lo) / (hi - lo) * span)).astype(np.intp)

    if lo < 0 < hi:
        canvas[int(row_of(np.float64(0.0))), :] = 192
    valid = np.isfinite(low) & np.isfinite(high)
    top = np.where(valid, row_of(np.nan_to_num(high, nan=lo)), 0)
    bottom = np.where(valid, row_of(np.nan_to_num(low, nan=lo)), -1)
    middle = (top + bottom) // 2
    previous = np.concatenate(([-1], middle[:-1]))
    joined = np.concatenate(([False], valid[:-1] & valid[1:]))
    top = np.where(joined, np.minimum(top, previous), top)
    bottom = np.where(joined, np.maximum(bottom, previous), bottom)
    rows = np.arange(height)[:, None]
    line = (rows >= top[None, :]) & (rows <= bottom[None, :])
    if width >= THICK_LINE_WIDTH:  # two pixels wide: still legible when the browser scales it down
        line[:, 1:] |= line[:, :-1]
    canvas[line] = 0
    return canvas


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a 2-D uint8 array (filter 0 on every row; zlib level 3: noisy frames
    hardly compress, so speed matters more than size)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ValueError(f"a PNG needs a non-empty 2-D array, got shape {pixels.shape}")
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # column 0: the row's filter byte (0: none)
    rows[:, 1:] = pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 3))
            + chunk(b"IEND", b""))
