"""Worker telemetry records and the control block that holds them.

Every pipeline has one control block: its pause flag and one fixed-layout
telemetry record per worker.  Ownership comes in two forms:

* a pipeline that *claims* its namespace (an explicit ``namespace:``) uses the
  namespace block ``/dev/shm/shmpiped.<ns>`` and holds its exclusive lock for
  as long as it lives, which is how a second daemon (or ``shmpiped shm rm``)
  knows the namespace is in use;
* a pipeline in a *shared* namespace (the default one) holds that same file
  with a shared lock, only as a marker that keeps claimants out, and keeps its
  records in a block of its own, ``shmpiped.<ns>@<pid>-<token>`` (exclusive
  lock).  Any number of such pipelines run side by side; ownership of their
  streams is per stream (see ``shmpiped.streams``).

Only the worker writes its record (the manager writes just the stop request
word).  Per-frame updates go through ``_sync.record_frame`` under the record's
seqlock; readers take consistent copies with ``_sync.copy_record``.  Nothing
is sent as a message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from dataclasses import dataclass

import numpy as np

from ..errors import NamespaceBusyError, SharedMemoryError
from . import _sync, layout
from .segment import OwnerIdentity, Segment, lock_holder_alive, shm_path

_U64 = np.dtype("<u8")


def _initialise_block(namespace: str):
    def initialise(buf):
        buf[:8] = layout.MAGIC
        layout.pack(buf, layout.H_VERSION, layout.LAYOUT_VERSION)
        layout.pack(buf, layout.H_KIND, layout.KIND_NAMESPACE)
        layout.pack(buf, layout.H_HEADER_SIZE, layout.HEADER_SIZE)
        layout.pack(buf, layout.H_RECORD_SIZE, layout.REC_SIZE)
        layout.pack(buf, layout.H_RECORD_CAPACITY, layout.REC_CAPACITY)
        layout.pack_str(buf, layout.H_NAMESPACE, namespace)
        OwnerIdentity.of_this_process().write(buf)

    return initialise


class NamespaceBlock:
    """A pipeline's control segment: owner lock, pause flag, worker records."""

    SIZE = layout.HEADER_SIZE + layout.REC_CAPACITY * layout.REC_SIZE

    def __init__(self, segment: Segment, namespace: str, marker: Segment | None = None):
        self.segment = segment
        self.namespace = namespace
        self.marker = marker  # the shared namespace's block, held shared; None when claimed
        self._pause_addr = segment.address + layout.NS_PAUSE_OFFSET

    @property
    def name(self) -> str:
        """The segment name workers attach to."""
        return self.segment.name

    @property
    def shared(self) -> bool:
        return self.marker is not None

    @classmethod
    def acquire(cls, namespace: str | None, *, shared: bool = False) -> "NamespaceBlock":
        """A control block for a new pipeline in ``namespace``.

        Claimed (``shared=False``): the namespace block itself, exclusively;
        shared: a block of the pipeline's own, the namespace block held shared.
        NamespaceBusyError when a live process holds the namespace the other way.
        """
        namespace = namespace or layout.DEFAULT_NAMESPACE
        name = layout.namespace_segment_name(namespace)
        initialise = _initialise_block(namespace)
        with _shm_errors(namespace):
            if not shared:
                try:
                    return cls(Segment.open_or_create_locked(name, cls.SIZE, initialise), namespace)
                except BlockingIOError:
                    raise NamespaceBusyError(describe_busy_namespace(namespace)) from None
            try:
                # The marker only keeps claimants out: a header is all it needs.
                marker = Segment.open_or_create_shared(name, layout.HEADER_SIZE, initialise)
            except BlockingIOError:
                raise NamespaceBusyError(describe_busy_namespace(namespace)) from None
            try:
                while True:
                    instance = f"{os.getpid()}-{secrets.token_hex(4)}"
                    try:
                        own = Segment.create(layout.pipeline_block_name(namespace, instance), cls.SIZE,
                                             initialise, lock=fcntl.LOCK_EX)
                        return cls(own, namespace, marker)
                    except FileExistsError:
                        continue
            except BaseException:
                marker.close()
                raise

    @classmethod
    def attach_segment(cls, segment_name: str, *, readonly: bool = False) -> "NamespaceBlock":
        """Map the control block ``segment_name`` (a worker attaching to its pipeline's block)."""
        segment = Segment.open(segment_name, writable=not readonly)
        return cls(segment, segment.header_str(layout.H_NAMESPACE))

    @classmethod
    def attach(cls, namespace: str | None, *, readonly: bool = False) -> "NamespaceBlock":
        """Map the block of a claimed namespace."""
        return cls.attach_segment(layout.namespace_segment_name(namespace), readonly=readonly)

    @property
    def paused(self) -> bool:
        return bool(_sync.load_u64(self._pause_addr))

    def set_paused(self, paused: bool) -> None:
        _sync.store_u64(self._pause_addr, 1 if paused else 0)

    def record_address(self, index: int) -> int:
        if not 0 <= index < layout.REC_CAPACITY:
            raise ValueError(f"worker record index {index} out of range")
        return self.segment.address + layout.HEADER_SIZE + index * layout.REC_SIZE

    def worker_record(self, index: int) -> "WorkerRecord":
        return WorkerRecord(self, index)

    def reset_record(self, index: int, name: str, spawn_token: int) -> None:
        """Clear record ``index`` for a new spawn of worker ``name`` (manager side)."""
        start = layout.HEADER_SIZE + index * layout.REC_SIZE
        self.segment.bytes[start : start + layout.REC_SIZE] = 0
        layout.pack_str(self.segment.bytes, layout.REC_NAME, name[:63], base=start)
        _sync.store_u64(self.record_address(index) + layout.REC_SPAWN_TOKEN, spawn_token)

    def request_stop(self, index: int) -> None:
        _sync.store_u64(self.record_address(index) + layout.REC_STOP_REQUEST, 1)

    def snapshot(self, index: int) -> "RecordSnapshot | None":
        """A consistent copy of record ``index`` (None if it never settled)."""
        buffer = np.empty(layout.REC_SIZE, dtype=np.uint8)
        if not _sync.copy_record(self.record_address(index), layout.REC_SIZE, buffer):
            return None
        return RecordSnapshot(buffer)

    def close(self, unlink: bool = False) -> None:
        if unlink:
            self.segment.unlink()
        self.segment.close()
        if self.marker is not None:
            if unlink:
                self.marker.unlink_if_last_holder()
            self.marker.close()
            self.marker = None


@contextlib.contextmanager
def _shm_errors(namespace: str):
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            raise SharedMemoryError(exc.errno, f"/dev/shm has no room for namespace {namespace!r}") from exc
        raise


def _owner_of(name: str) -> str:
    try:
        segment = Segment.open(name, writable=False)
    except (OSError, ValueError):
        return "a process that is gone"
    try:
        owner = segment.owner()
    finally:
        segment.close()
    return f"pid {owner.pid} on {owner.host or 'this host'}"


def describe_busy_namespace(namespace: str) -> str:
    """Who holds ``namespace``: its claimant, or the pipelines sharing it."""
    block = layout.namespace_segment_name(namespace)
    _, pipelines = layout.namespace_members_prefixes(namespace)
    try:
        names = sorted(n for n in os.listdir(layout.DEV_SHM) if n.startswith(pipelines))
    except OSError:
        names = []
    sharing = [_owner_of(n) for n in names if lock_holder_alive(shm_path(n))]
    if sharing:
        return (f"namespace {namespace!r} is shared by running pipelines ({', '.join(sharing)}), so it "
                f"cannot be claimed whole; stop them first, or use another namespace")
    return (f"namespace {namespace!r} is owned by {_owner_of(block)}, which is still running; "
            f"stop it first, or use another namespace")


class WorkerRecord:
    """The worker's own view of its record: cheap setters for the rare fields."""

    def __init__(self, block: NamespaceBlock, index: int):
        self.block = block
        self.index = index
        self.address = block.record_address(index)
        start = layout.HEADER_SIZE + index * layout.REC_SIZE
        self._error = block.segment.bytes[start + layout.REC_ERROR_TEXT : start + layout.REC_SIZE]

    def _set(self, offset: int, value: int) -> None:
        _sync.store_u64(self.address + offset, value)

    def get(self, offset: int) -> int:
        return _sync.load_u64(self.address + offset)

    def increment(self, offset: int) -> None:
        _sync.add_u64(self.address + offset, 1)

    def set_state(self, state: int) -> None:
        self._set(layout.REC_STATE, state)

    def start(self, pid: int, cpu_slot: int | None) -> None:
        self._set(layout.REC_PID, pid)
        self._set(layout.REC_CPU_SLOT, (-1 if cpu_slot is None else cpu_slot) & (2**64 - 1))
        now = _sync.monotonic_ns()
        self._set(layout.REC_STARTED_NS, now)
        self._set(layout.REC_HEARTBEAT_NS, now)

    def set_gpu_uuid(self, uuid: bytes) -> None:
        """The raw 16-byte UUID of the device a GPU worker computes on (written once, before its loop)."""
        start = layout.HEADER_SIZE + self.index * layout.REC_SIZE + layout.REC_GPU_UUID[0]
        raw = bytes(uuid)[:16].ljust(16, b"\0")
        self.block.segment.bytes[start : start + 16] = np.frombuffer(raw, np.uint8)

    def set_input_copy(self) -> None:
        self._set(layout.REC_INPUT_COPY, 1)

    def heartbeat(self, now_ns: int) -> None:
        self._set(layout.REC_HEARTBEAT_NS, now_ns)

    def record_frame(self, exec_ns: int, now_ns: int, output_count: int, latency_ns: int) -> None:
        _sync.record_frame(self.address, exec_ns, now_ns, output_count, latency_ns)

    @property
    def stop_requested(self) -> bool:
        return bool(_sync.load_u64(self.address + layout.REC_STOP_REQUEST))

    def write_error(self, text: str) -> None:
        raw = text.encode("utf-8", "replace")[-layout.REC_ERROR_MAX :]
        self._error[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self._set(layout.REC_ERROR_LEN, len(raw))


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None


class RecordSnapshot:
    """A consistent copy of one telemetry record, with the derived statistics."""

    def __init__(self, buffer: np.ndarray):
        self._buffer = buffer
        words = buffer[: layout.REC_EXEC_WINDOW].view(_U64)
        self._words = words

    def field(self, offset: int) -> int:
        return int(self._words[offset // 8])

    @property
    def name(self) -> str:
        return layout.unpack_str(self._buffer, layout.REC_NAME)

    @property
    def state(self) -> int:
        return self.field(layout.REC_STATE)

    @property
    def pid(self) -> int:
        return self.field(layout.REC_PID)

    @property
    def spawn_token(self) -> int:
        return self.field(layout.REC_SPAWN_TOKEN)

    @property
    def frames(self) -> int:
        return self.field(layout.REC_FRAMES)

    @property
    def cpu_slot(self) -> int | None:
        value = int(self._words[layout.REC_CPU_SLOT // 8].astype(np.int64))
        return None if value < 0 else value

    @property
    def exec_sumsq_s2(self) -> float:
        """Sum of the squared exec times (s^2) of every frame so far."""
        return float(self._buffer[layout.REC_EXEC_SUMSQ_S2 : layout.REC_EXEC_SUMSQ_S2 + 8].view("<f8")[0])

    @property
    def gpu_uuid(self) -> str | None:
        """The device UUID as nvidia-smi and dcgm-exporter write it (``GPU-xxxxxxxx-...``); None on CPU."""
        raw = self._buffer[layout.REC_GPU_UUID[0] : layout.REC_GPU_UUID[0] + 16].tobytes()
        if not any(raw):
            return None
        h = raw.hex()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def error(self) -> str:
        length = self.field(layout.REC_ERROR_LEN)
        raw = self._buffer[layout.REC_ERROR_TEXT : layout.REC_ERROR_TEXT + length].tobytes()
        return raw.decode("utf-8", "replace")

    def exec_window_s(self) -> np.ndarray:
        n = min(self.frames, layout.WINDOW)
        window = self._buffer[layout.REC_EXEC_WINDOW : layout.REC_EXEC_WINDOW + 4 * layout.WINDOW].view("<u4")
        return window[:n].astype(np.float64) / 1e9

    def completion_window_ns(self) -> np.ndarray:
        """Completion times of the last frames, oldest first."""
        frames = self.frames
        n = min(frames, layout.WINDOW)
        start = layout.REC_COMPLETION_WINDOW
        window = self._buffer[start : start + 8 * layout.WINDOW].view(_U64)[: layout.WINDOW]
        if frames <= layout.WINDOW:
            return window[:n].astype(np.int64)
        head = frames % layout.WINDOW
        return np.concatenate([window[head:], window[:head]]).astype(np.int64)

    def latency_window_s(self) -> np.ndarray:
        n = min(self.field(layout.REC_LATENCY_COUNT), layout.WINDOW)
        start = layout.REC_LATENCY_WINDOW
        return self._buffer[start : start + 8 * layout.WINDOW].view(_U64)[:n].astype(np.float64) / 1e9

    def histogram(self, offset: int) -> list[int]:
        return [int(v) for v in self._buffer[offset : offset + 8 * layout.HIST_BUCKETS].view(_U64)]

    def latency_stats(self) -> LatencyStats:
        window = self.latency_window_s()
        count = self.field(layout.REC_LATENCY_COUNT)
        if window.size == 0:
            return LatencyStats(count, None, None, None, None)
        p50, p90, p99 = np.percentile(window, [50, 90, 99])
        return LatencyStats(count, float(p50), float(p90), float(p99), float(window.max()))


def monotonic_to_wall(mono_ns: int) -> float:
    """Convert a CLOCK_MONOTONIC timestamp (ns) to wall-clock seconds."""
    return time.time() - (_sync.monotonic_ns() - mono_ns) / 1e9
