"""Byte layout of shmpiped's /dev/shm segments and the names they live under.

Two kinds of segment exist, both starting with the same 4 KiB header:

* a *stream* (``/dev/shm/shmpiped.<ns>.<stream>``): the header, then a ring of
  ``nslots`` slots, each a 64-byte slot header followed by the payload;
* a *control block*: the header (the owner's identity, the pipeline's pause
  flag), then one fixed-size telemetry record per worker.  A pipeline that
  claims its namespace whole uses the namespace block ``shmpiped.<ns>``; a
  pipeline in a shared namespace (the default one) has a block of its own,
  ``shmpiped.<ns>@<instance>``, and holds the namespace block only as a
  marker that keeps claimants out.

The offsets used by the C helpers (``_sync.c``) are checked against this
module at import time, so the two cannot drift apart.
"""

from __future__ import annotations

import struct

from . import _sync

DEV_SHM = "/dev/shm"
PREFIX = "shmpiped"
DEFAULT_NAMESPACE = "default"
MAGIC = b"SHMPIPED"
LAYOUT_VERSION = 2  # 2: GPU streams keep their payload on the device
HEADER_SIZE = 4096
DEFAULT_SLOTS = 4
MIN_SLOTS = 3

KIND_STREAM = 1
KIND_NAMESPACE = 2

STORAGE_CODES = {"cpu": 0, "gpu": 1}
STORAGE_NAMES = {code: name for name, code in STORAGE_CODES.items()}

FLAG_KEPT = 1  # the creator closed the segment on purpose without unlinking it

MAX_DIMS = 8

# Common header: (offset, struct format) of each field.
H_MAGIC = (0, "8s")
H_VERSION = (8, "I")
H_KIND = (12, "I")
H_HEADER_SIZE = (16, "Q")
H_NSLOTS = (24, "I")
H_NDIM = (28, "I")
H_SLOT_STRIDE = (32, "Q")
H_PAYLOAD_OFFSET = (40, "Q")
H_PAYLOAD_NBYTES = (48, "Q")
H_STORAGE = (56, "I")
H_FLAGS = (60, "I")
H_DTYPE = (64, "32s")
H_SHAPE = (96, f"{MAX_DIMS}Q")
H_OWNER_PID = (160, "Q")
H_OWNER_START = (168, "Q")
H_CREATED_WALL_NS = (176, "Q")
H_OWNER_PID_NS = (184, "Q")
H_OWNER_HOST = (192, "64s")
H_NAMESPACE = (256, "128s")
H_NAME = (384, "256s")
H_NOTIFY = (640, "I")
H_RECORD_SIZE = (648, "Q")   # namespace block only
H_RECORD_CAPACITY = (656, "Q")
H_GPU_DEVICE = (664, "32s")  # stream only, "" for cpu
# GPU streams only: the payload ring lives in one device allocation shared through an IPC handle;
# the host slots hold the CPU mirror's payload when there is one, else no payload at all.
H_CPU_MIRROR = (696, "I")
H_DEVICE_SLOT_STRIDE = (704, "Q")
H_DEVICE_NBYTES = (712, "Q")
H_DEVICE_BACKEND = (720, "16s")  # "cuda" or "emulated"
H_DEVICE_HANDLE = (768, "64s")   # cudaIpcMemHandle_t (or the emulated backend's handle)
# Stream only: who writes it.  Set by the pipeline that produces the stream (the manager, at build),
# cleared when that pipeline closes it; an attacher asking to write is refused while it lives.
H_PRODUCER_PID = (2048, "Q")       # the producing pipeline's process, 0 = no producer recorded
H_PRODUCER_START = (2056, "Q")     # its start time (clock ticks), against pid reuse
H_PRODUCER_PID_NS = (2064, "Q")
H_PRODUCER_TOKEN = (2072, "Q")     # which handle recorded it (only that handle clears it)
H_PRODUCER = (2080, "256s")        # what writes it, in words: "kernel 'centroid' (pipeline.yaml)"

# Hot words, each on its own cache line.
STREAM_SEQ_OFFSET = 1024
STREAM_FUTEX_OFFSET = 1088
STREAM_WAITERS_OFFSET = 1092
NS_PAUSE_OFFSET = 1024  # namespace block: u64, 1 while the pipeline is paused

# Slot header (64 bytes) then payload, 64-byte aligned.
SLOT_HEADER_SIZE = 64
SLOT_SEQ = 0
SLOT_FRAME_ID = 8
SLOT_ORIGIN_NS = 16
SLOT_WRITE_MONO_NS = 24
SLOT_WRITE_WALL_NS = 32

# Worker telemetry record (namespace block), all fields u64 unless noted.
REC_SIZE = 32768
REC_CAPACITY = 256
REC_SEQLOCK = 0
REC_STATE = 8
REC_PID = 16
REC_SPAWN_TOKEN = 24
REC_HEARTBEAT_NS = 32
REC_FRAMES = 40
REC_LAST_EXEC_NS = 48
REC_LAST_FRAME_NS = 56
REC_OVERRUNS = 64
REC_WAITS = 72
REC_TIMEOUTS = 80
REC_LAST_OUTPUT_COUNT = 88
REC_LAST_LATENCY_NS = 96
REC_EXEC_SUM_NS = 104
REC_LATENCY_SUM_NS = 112
REC_INPUT_COPY = 120        # 1 once the worker computes on private copies of its inputs (it was too slow)
REC_STARTED_NS = 128
REC_CPU_SLOT = 136          # i64, -1 = not pinned
REC_SKEW_EVENTS = 144
REC_SKIPPED_GENERATIONS = 152
REC_SYNC_TIMEOUTS = 160
REC_LATENCY_COUNT = 168
REC_STOP_REQUEST = 176      # written by the manager
REC_NAME = (184, "64s")
REC_ERROR_LEN = 248
REC_EXEC_HIST = 256         # u64[HIST_BUCKETS]
REC_EXEC_SUMSQ_S2 = 464     # f64: sum of squared exec times in s^2 (a counter, for jitter over any window)
REC_GPU_UUID = (480, "16s")  # raw UUID of a GPU worker's device, written once at start; zeros on the CPU
REC_LATENCY_HIST = 512      # u64[HIST_BUCKETS]
REC_EXEC_WINDOW = 768       # u32[WINDOW], ns
REC_COMPLETION_WINDOW = 4800  # u64[WINDOW], monotonic ns
REC_LATENCY_WINDOW = 12800  # u64[WINDOW], ns
REC_ERROR_TEXT = 20800      # utf-8, up to REC_ERROR_MAX bytes
REC_ERROR_MAX = REC_SIZE - REC_ERROR_TEXT

WINDOW = 1000
HIST_BUCKETS = 26
# Upper bounds (seconds) of the histogram buckets: 1 us * 10^(k/4), k = 0..24, then +Inf.
HIST_BOUNDS_S = tuple(1e-6 * 10 ** (k / 4) for k in range(HIST_BUCKETS - 1))

# Worker states as written by the worker itself into REC_STATE.
WS_EMPTY = 0
WS_STARTING = 1
WS_RUNNING = 2
WS_PAUSED = 3
WS_STOPPED = 4
WS_FAILED = 5

for _name in (
    "STREAM_SEQ_OFFSET", "STREAM_FUTEX_OFFSET", "STREAM_WAITERS_OFFSET", "REC_EXEC_WINDOW",
    "REC_COMPLETION_WINDOW", "REC_LATENCY_WINDOW", "REC_EXEC_HIST", "REC_EXEC_SUMSQ_S2", "REC_LATENCY_HIST",
    "WINDOW", "HIST_BUCKETS",
):
    if getattr(_sync, _name) != globals()[_name]:  # pragma: no cover - build mismatch
        raise ImportError(f"shmpiped.shm._sync was built for another layout ({_name})")


def pack(buffer, field, *values) -> None:
    offset, fmt = field
    struct.pack_into("<" + fmt, buffer, offset, *values)


def unpack(buffer, field, base: int = 0):
    offset, fmt = field
    values = struct.unpack_from("<" + fmt, buffer, base + offset)
    return values if len(values) > 1 else values[0]


def pack_str(buffer, field, text: str, base: int = 0) -> None:
    offset, fmt = field
    size = int(fmt[:-1])
    raw = text.encode("utf-8")
    if len(raw) >= size:
        raise ValueError(f"{text!r} is longer than {size - 1} bytes")
    struct.pack_into(f"<{size}s", buffer, base + offset, raw)


def unpack_str(buffer, field, base: int = 0) -> str:
    return unpack(buffer, field, base).split(b"\0", 1)[0].decode("utf-8", "replace")


def escape_namespace(namespace: str | None) -> str:
    """The namespace as it appears in a file name: '%', '.' and '@' percent-escaped."""
    namespace = namespace or DEFAULT_NAMESPACE
    return namespace.replace("%", "%25").replace(".", "%2E").replace("@", "%40")


def unescape_namespace(text: str) -> str:
    return text.replace("%40", "@").replace("%2E", ".").replace("%25", "%")


def stream_segment_name(namespace: str | None, stream: str) -> str:
    """File name in /dev/shm of a stream: ``shmpiped.<ns>.<stream>``."""
    if not stream or "/" in stream or "\0" in stream:
        raise ValueError(f"invalid stream name {stream!r}")
    return f"{PREFIX}.{escape_namespace(namespace)}.{stream}"


def namespace_segment_name(namespace: str | None) -> str:
    """File name in /dev/shm of a namespace block: ``shmpiped.<ns>``."""
    return f"{PREFIX}.{escape_namespace(namespace)}"


def pipeline_block_name(namespace: str | None, instance: str) -> str:
    """File name in /dev/shm of the control block of one pipeline in a shared namespace."""
    return f"{namespace_segment_name(namespace)}@{instance}"


def namespace_members_prefixes(namespace: str | None) -> tuple[str, str]:
    """File-name prefixes of a namespace's streams and of its pipelines' control blocks."""
    block = namespace_segment_name(namespace)
    return f"{block}.", f"{block}@"


def parse_segment_name(filename: str) -> tuple[str, str | None] | None:
    """(namespace, stream or None) for a shmpiped file name, else None.

    Control blocks (the namespace's own and a pipeline's ``<ns>@<instance>``)
    have no stream.
    """
    parts = filename.split(".", 2)
    if len(parts) < 2 or parts[0] != PREFIX or not parts[1]:
        return None
    namespace = unescape_namespace(parts[1].partition("@")[0])
    if not namespace:
        return None
    return namespace, (parts[2] if len(parts) == 3 else None)


def slot_stride(payload_nbytes: int) -> int:
    return SLOT_HEADER_SIZE + ((max(payload_nbytes, 1) + 63) // 64) * 64


def device_slot_stride(payload_nbytes: int) -> int:
    """Distance between device slots: 256-byte aligned, as CUDA allocations are."""
    return ((max(payload_nbytes, 1) + 255) // 256) * 256
