"""A stream: a ring of K >= 3 slots in one /dev/shm segment, one writer, any readers.

Writing (the producer, one per stream; the graph guarantees it):

    view = stream.next_slot()      # invalidates slot (count % K) and returns its view
    compute_into(..., out=view)    # fill it in place
    stream.publish(frame_id, origin_ns)

or simply ``stream.write(array)``.  ``publish`` stamps the slot header, makes
the slot valid, publishes the new count with one aligned store and wakes
parked readers only when some are parked: with nobody waiting it makes no
system call.

Reading: ``latest()`` gives the newest count and a zero-copy view of its
slot; after using the view, ``still_valid(count)`` tells whether the writer
lapped the reader meanwhile (then the data may be torn: count an overrun and
drop it).  ``read()`` and ``read_new()`` return consistent copies.
``wait(after, timeout)`` parks the caller on a futex (or spins, per the wait
strategy) until the count passes ``after``.

GPU streams (``storage="gpu"``) keep the same host segment for the count and
the slot headers, while the payload ring is one device allocation of the
stream's creator, shared through an IPC handle in the header (see
``device``).  Attached with ``gpu_device`` a GPU stream is a
:class:`DeviceStream` whose slot views are device arrays; ``publish`` first
waits for the device work on the slot (and queues the CPU-mirror copy), so a
reader never sees a half-written slot.  Attached without, it is a plain
``Stream`` over its CPU mirror, read like any CPU stream; without a mirror
its payload cannot be read from the host.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import _sync, device, layout
from .pyshmem_style import PyshmemStyleMethods
from .segment import OwnerIdentity, Segment, lock_holder_alive, shm_path

WAIT_STRATEGIES = ("futex", "hybrid", "spin")
HYBRID_SPIN_S = 50e-6


class Stream(PyshmemStyleMethods):
    """A handle on one stream segment (created here or attached).

    It also answers the pyshmem ``SharedMemory`` calls (``read_publication``,
    ``wait_for_count``, ``write_view``, ``locked``...): see ``pyshmem_style``.
    """

    def __init__(self, segment: Segment, stream_name: str, namespace: str):
        self.segment = segment
        self.name = stream_name
        self.namespace = namespace
        buf = segment.bytes
        self.nslots = segment.header(layout.H_NSLOTS)
        ndim = segment.header(layout.H_NDIM)
        self.shape = tuple(segment.header(layout.H_SHAPE)[:ndim]) if ndim else ()
        self.dtype = np.dtype(segment.header_str(layout.H_DTYPE))
        self.storage = layout.STORAGE_NAMES.get(segment.header(layout.H_STORAGE), "cpu")
        self.gpu_device = segment.header_str(layout.H_GPU_DEVICE) or None
        self.cpu_mirror = bool(segment.header(layout.H_CPU_MIRROR))
        self.notify = bool(segment.header(layout.H_NOTIFY))
        self.nbytes = segment.header(layout.H_PAYLOAD_NBYTES)
        self._stride = segment.header(layout.H_SLOT_STRIDE)
        base = segment.address
        self._addr = base
        self._seq_addr = base + layout.STREAM_SEQ_OFFSET
        self.slot_addrs = tuple(
            base + layout.HEADER_SIZE + i * self._stride for i in range(self.nslots)
        )
        views = []
        headers = []
        for i in range(self.nslots):
            start = layout.HEADER_SIZE + i * self._stride
            payload = buf[start + layout.SLOT_HEADER_SIZE : start + layout.SLOT_HEADER_SIZE + self.nbytes]
            if self.has_host_payload:
                views.append(payload.view(self.dtype).reshape(self.shape))
            headers.append(buf[start : start + layout.SLOT_HEADER_SIZE].view(np.uint64))
        self.slot_views = tuple(views) if self.has_host_payload else _NoHostPayload(self)
        self._slot_headers = tuple(headers)
        self.readonly = not segment.writable
        self.last_read_count = 0
        # pyshmem's read accounting: publications stepped over by this handle's reads.
        self._seen_count = self.count
        self.missed_writes = 0
        self.total_missed_writes = 0
        self.set_wait_strategy("futex")

    # -- creation / attachment ---------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        shape,
        dtype,
        *,
        namespace: str | None = None,
        slots: int = layout.DEFAULT_SLOTS,
        notify: bool = True,
        storage: str = "cpu",
        gpu_device: str | None = None,
        cpu_mirror: bool = False,
    ) -> "Stream":
        """Create the stream; FileExistsError if the name is taken.

        A GPU stream's device memory is allocated here and belongs to this
        process: the stream is returned as a :class:`DeviceStream`.
        """
        shape = tuple(int(d) for d in shape)
        dtype = np.dtype(dtype)
        if slots < layout.MIN_SLOTS:
            raise ValueError(f"a stream needs at least {layout.MIN_SLOTS} slots, got {slots}")
        if len(shape) > layout.MAX_DIMS:
            raise ValueError(f"stream {name!r} has {len(shape)} dimensions, at most {layout.MAX_DIMS}")
        namespace = namespace or layout.DEFAULT_NAMESPACE
        nbytes = int(math.prod(shape)) * dtype.itemsize
        on_device = storage == "gpu"
        cpu_mirror = bool(cpu_mirror) and on_device
        stride = layout.slot_stride(nbytes if cpu_mirror or not on_device else 0)
        size = layout.HEADER_SIZE + slots * stride
        allocation = None
        if on_device:
            backend = device.backend()
            device_stride = layout.device_slot_stride(nbytes)
            allocation = backend.allocate(device.gpu_device_index(gpu_device), slots * device_stride)

        def initialise(buf):
            buf[:8] = layout.MAGIC
            layout.pack(buf, layout.H_VERSION, layout.LAYOUT_VERSION)
            layout.pack(buf, layout.H_KIND, layout.KIND_STREAM)
            layout.pack(buf, layout.H_HEADER_SIZE, layout.HEADER_SIZE)
            layout.pack(buf, layout.H_NSLOTS, slots)
            layout.pack(buf, layout.H_NDIM, len(shape))
            layout.pack(buf, layout.H_SLOT_STRIDE, stride)
            layout.pack(buf, layout.H_PAYLOAD_OFFSET, layout.SLOT_HEADER_SIZE)
            layout.pack(buf, layout.H_PAYLOAD_NBYTES, nbytes)
            layout.pack(buf, layout.H_STORAGE, layout.STORAGE_CODES[storage])
            layout.pack_str(buf, layout.H_DTYPE, dtype.str)
            layout.pack(buf, layout.H_SHAPE, *(shape + (0,) * (layout.MAX_DIMS - len(shape))))
            layout.pack_str(buf, layout.H_NAMESPACE, namespace)
            layout.pack_str(buf, layout.H_NAME, name)
            layout.pack(buf, layout.H_NOTIFY, int(bool(notify)))
            layout.pack_str(buf, layout.H_GPU_DEVICE, gpu_device or "")
            if on_device:
                layout.pack(buf, layout.H_CPU_MIRROR, int(cpu_mirror))
                layout.pack(buf, layout.H_DEVICE_SLOT_STRIDE, device_stride)
                layout.pack(buf, layout.H_DEVICE_NBYTES, allocation.nbytes)
                layout.pack_str(buf, layout.H_DEVICE_BACKEND, backend.name)
                layout.pack(buf, layout.H_DEVICE_HANDLE, allocation.handle)
            OwnerIdentity.of_this_process().write(buf)

        try:
            segment = Segment.create(layout.stream_segment_name(namespace, name), size, initialise)
        except BaseException:
            if allocation is not None:
                allocation.release()
            raise
        if not on_device:
            return cls(segment, name, namespace)
        _LocalAllocations.adopt(segment, allocation)
        return DeviceStream(segment, name, namespace, backend, allocation)

    @classmethod
    def attach(cls, name: str, namespace: str | None = None, *, readonly: bool = False,
               gpu_device: str | bool | None = None) -> "Stream":
        """Open an existing stream by its logical name; FileNotFoundError if absent.

        ``gpu_device`` (its device name, or True for "wherever it lives")
        attaches a GPU stream's device memory and returns a
        :class:`DeviceStream`; without it a GPU stream is read through its
        CPU mirror.  It is ignored for CPU streams.
        """
        namespace = namespace or layout.DEFAULT_NAMESPACE
        segment = Segment.open(layout.stream_segment_name(namespace, name), writable=not readonly)
        if segment.header(layout.H_KIND) != layout.KIND_STREAM:
            segment.close()
            raise FileNotFoundError(f"{segment.path} is not a stream segment")
        if not gpu_device or segment.header(layout.H_STORAGE) != layout.STORAGE_CODES["gpu"]:
            return cls(segment, name, namespace)
        try:
            backend, allocation = _attach_device_memory(segment, name, gpu_device)
        except BaseException:
            segment.close()
            raise
        return DeviceStream(segment, name, namespace, backend, allocation)

    # -- state --------------------------------------------------------------------
    @property
    def resource_name(self) -> str:
        return self.segment.name

    @property
    def has_host_payload(self) -> bool:
        """CPU streams, and GPU streams with a CPU mirror, can be read from host memory."""
        return self.storage != "gpu" or self.cpu_mirror

    @property
    def count(self) -> int:
        """Publications so far (0 before the first write)."""
        return _sync.load_u64(self._seq_addr)

    def _newest_header(self):
        count = self.count
        return self._slot_headers[(count - 1) % self.nslots] if count else None

    @property
    def frame_id(self) -> int:
        header = self._newest_header()
        return int(header[1]) if header is not None else 0

    @property
    def write_time(self) -> float | None:
        """Wall-clock time (seconds since the epoch) of the newest publication."""
        header = self._newest_header()
        return int(header[4]) / 1e9 if header is not None else None

    @property
    def origin_ns(self) -> int:
        """CLOCK_MONOTONIC time at which the newest frame entered the pipeline."""
        header = self._newest_header()
        return int(header[2]) if header is not None else 0

    def slot_metadata(self, count: int) -> tuple[int, int, int]:
        """(frame_id, origin_ns, write_mono_ns) of publication ``count`` (if still in the ring)."""
        header = self._slot_headers[(count - 1) % self.nslots]
        return int(header[1]), int(header[2]), int(header[3])

    # -- writing ------------------------------------------------------------------
    def next_slot(self) -> np.ndarray:
        """Invalidate and return the view of the slot the next publication fills."""
        index = _sync.load_u64(self._seq_addr) % self.nslots
        _sync.begin_write(self.slot_addrs[index])
        return self.slot_views[index]

    def publish(self, frame_id: int = 0, origin_ns: int = 0) -> int:
        """Publish the slot returned by next_slot(); returns the new count.

        ``frame_id`` 0 numbers the frame with its count; ``origin_ns`` 0
        stamps it as originating now.
        """
        count = _sync.load_u64(self._seq_addr) + 1
        _sync.publish(self._addr, self.slot_addrs[(count - 1) % self.nslots], count,
                      frame_id or count, origin_ns)
        return count

    def write(self, value, frame_id: int | None = None, origin_ns: int = 0) -> int:
        """Copy ``value`` into the next slot and publish it; returns the new count."""
        view = self.next_slot()
        np.copyto(view, np.asarray(value).reshape(self.shape), casting="unsafe")
        return self.publish(frame_id or 0, origin_ns)

    def wake_all(self) -> None:
        """Wake every parked reader without publishing (used to stop workers)."""
        if not self.readonly:
            _sync.wake_all(self._addr)

    # -- reading ------------------------------------------------------------------
    def latest(self) -> tuple[int, np.ndarray | None]:
        """(count, zero-copy view of the newest slot); (0, None) before any write."""
        count = _sync.load_u64(self._seq_addr)
        if count == 0:
            return 0, None
        return count, self.slot_views[(count - 1) % self.nslots]

    def view_of(self, count: int) -> np.ndarray:
        return self.slot_views[(count - 1) % self.nslots]

    def still_valid(self, count: int) -> bool:
        """True if publication ``count`` has not been overwritten (not lapped)."""
        return _sync.slot_seq(self.slot_addrs[(count - 1) % self.nslots]) == count

    def read(self, *, safe: bool = True, out=None, timeout: float | None = None,
             poll_interval: float | None = None):
        """A consistent private copy of the newest value (zeros before any write).

        pyshmem's keywords: ``out`` receives the copy instead of a new array;
        ``safe=False`` returns the newest slot's live view (valid until the
        writer laps it); ``timeout`` and ``poll_interval`` are accepted (a read
        never waits for the writer: it copies, re-checks, retries if lapped).
        """
        if not safe and out is not None:
            raise ValueError("out is supported only for safe reads; pass safe=True with out=")
        while True:
            count, view = self.latest()
            if view is None:
                self._record_read(0)
                return self._snapshot(None, out)
            if not safe:
                self._record_read(count)
                return view
            copy = self._snapshot(view, out)
            if self.still_valid(count):
                self._record_read(count)
                return copy

    def _snapshot(self, view, out):
        """A private copy of ``view`` (into ``out`` when given); zeros for ``None``."""
        if view is None:
            if not self.has_host_payload:
                self.slot_views.refuse()
            if out is None:
                return np.zeros(self.shape, self.dtype)
            out[...] = 0
            return out
        if out is None:
            return np.array(view, copy=True)
        np.copyto(out, view)
        return out

    def read_host(self) -> np.ndarray:
        """``read()`` as a NumPy array, wherever the stream lives."""
        return self.read()

    def read_new(self, timeout: float | None = None) -> np.ndarray:
        """Wait for a publication newer than the last one read here, then read it.

        Raises TimeoutError when none arrives within ``timeout`` seconds
        (None waits forever).
        """
        self.wait(self.last_read_count, timeout)
        return self.read()

    def set_wait_strategy(self, strategy: str, spin_s: float = HYBRID_SPIN_S) -> None:
        """``futex`` parks at once; ``hybrid`` spins ``spin_s`` first; ``spin`` never parks."""
        if strategy not in WAIT_STRATEGIES:
            raise ValueError(f"wait strategy must be one of {', '.join(WAIT_STRATEGIES)}, got {strategy!r}")
        self.wait_strategy = strategy
        self._spin_s = {"futex": 0.0, "hybrid": float(spin_s), "spin": -1.0}[strategy]

    def wait_once(self, after: int, timeout: float) -> int:
        """One bounded wait; returns the current count (may still equal ``after``)."""
        if self.readonly:
            return self._poll_once(after, timeout)
        return _sync.wait_seq(self._addr, after, timeout, self._spin_s)

    def wait(self, after: int, timeout: float | None = None) -> int:
        """Block until the count exceeds ``after``; returns it, or raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                count = self.count
                if count > after:
                    return count
                raise TimeoutError(f"no new publication on stream {self.name!r} within {timeout:g} s")
            count = self.wait_once(after, min(remaining, 1.0))
            if count > after:
                return count

    def _poll_once(self, after: int, timeout: float) -> int:
        # Read-only handles cannot register as futex waiters: poll gently.
        deadline = time.monotonic() + timeout
        while True:
            count = self.count
            if count > after or time.monotonic() >= deadline:
                return count
            time.sleep(0.0005)

    # -- teardown -----------------------------------------------------------------
    def mark_kept(self) -> None:
        """Record that the creator leaves this segment on purpose (not stale)."""
        flags = self.segment.header(layout.H_FLAGS)
        self.segment.set_header(layout.H_FLAGS, flags | layout.FLAG_KEPT)

    def close(self) -> None:
        self.slot_views = ()
        self._slot_headers = ()
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()

    @property
    def closed(self) -> bool:
        return self.segment.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"Stream({self.name!r}, namespace={self.namespace!r}, shape={self.shape}, "
                f"dtype={self.dtype.name}, count={self.count if not self.closed else 'closed'})")


class _NoHostPayload(tuple):
    """The slot views of a GPU stream without CPU mirror attached from the host: touching one
    says what to do instead."""

    def __new__(cls, stream: Stream):
        instance = super().__new__(cls)
        instance.stream_name = stream.name
        instance.gpu_device = stream.gpu_device
        return instance

    def __getitem__(self, index):
        self.refuse()

    def refuse(self):
        raise RuntimeError(
            f"GPU stream {self.stream_name!r} has no cpu_mirror: host readers need `cpu_mirror: true`, "
            f"or attach it on its device (gpu_device={self.gpu_device!r})")


class DeviceStream(Stream):
    """A GPU stream attached with device access: ``slot_views`` are device arrays.

    ``host_views`` are the CPU mirror's slots (None without a mirror).  The
    hot-path contract is the CPU stream's: ``next_slot()``, compute into it,
    ``publish()``.
    """

    gpu_enabled = True

    def __init__(self, segment: Segment, stream_name: str, namespace: str, backend, allocation):
        super().__init__(segment, stream_name, namespace)
        self.backend = backend
        self.xp = backend.xp
        self._allocation = allocation
        self.host_views = self.slot_views if self.cpu_mirror else None
        stride = segment.header(layout.H_DEVICE_SLOT_STRIDE)
        self.slot_views = tuple(allocation.view(i * stride, self.shape, self.dtype) for i in range(self.nslots))
        self._synchronize = backend.synchronize
        self._mirror_copies = None
        self._unpin = None
        if self.cpu_mirror and not self.readonly:
            mirror = segment.bytes[layout.HEADER_SIZE:]
            self._unpin = backend.pin(mirror)
            self._mirror_copies = tuple(
                backend.copier_to_host(host, dev) for host, dev in zip(self.host_views, self.slot_views))

    def publish(self, frame_id: int = 0, origin_ns: int = 0) -> int:
        """Wait for the device work on the slot (queueing its mirror copy first), then publish."""
        copies = self._mirror_copies
        if copies is not None:
            copies[_sync.load_u64(self._seq_addr) % self.nslots]()
        self._synchronize()
        return super().publish(frame_id, origin_ns)

    def write(self, value, frame_id: int | None = None, origin_ns: int = 0) -> int:
        """Copy ``value`` (host or device array) into the next slot and publish it."""
        self.backend.upload(self.next_slot(), value)
        return self.publish(frame_id or 0, origin_ns)

    def _snapshot(self, view, out):
        """A private device copy of ``view`` (zeros for ``None``), complete when returned."""
        if out is not None:
            raise ValueError("out is supported only for host reads; a device read returns a new device "
                             "array (use read_host() for NumPy)")
        if view is None:
            return self.xp.zeros(self.shape, self.dtype)
        copy = view.copy()
        self._synchronize()
        return copy

    def read_host(self) -> np.ndarray:
        return self.backend.to_numpy(self.read())

    def close(self) -> None:
        if self.closed:
            return
        self._mirror_copies = None
        self.host_views = None
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
        key = _LocalAllocations.key(self.segment)
        super().close()
        _LocalAllocations.release(key, self._allocation)


class HostStreamOnDevice:
    """A CPU stream read by a GPU kernel: the views it hands out are one device buffer, refilled
    from the host slot (an async upload on the current CUDA stream) when the count changes.

    It has the reader side of ``Stream`` (``count``, ``wait_once``, ``latest``,
    ``view_of``, ``slot_metadata``, ``still_valid``...): everything but the
    views is the host stream's.  The caller checks ``still_valid`` after its
    device work is done, which covers the upload too.
    """

    def __init__(self, stream: Stream, backend):
        self.stream = stream
        self._buffer = backend.xp.zeros(stream.shape, stream.dtype)
        self._uploads = tuple(backend.copier_to_device(self._buffer, host) for host in stream.slot_views)
        self._unpin = backend.pin(stream.segment.bytes[layout.HEADER_SIZE:])
        self._uploaded = 0
        self.slot_views = (self._buffer,) * stream.nslots

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def view_of(self, count: int):
        if count != self._uploaded:
            self._uploads[(count - 1) % self.stream.nslots]()
            self._uploaded = count
        return self._buffer

    def latest(self):
        count = self.stream.count
        return (count, self.view_of(count)) if count else (0, None)

    def close(self) -> None:
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
        self.slot_views = ()
        self.stream.close()


def _attach_device_memory(segment: Segment, name: str, gpu_device):
    """(backend, allocation) of a GPU stream's payload ring, mapped into this process."""
    recorded = segment.header_str(layout.H_GPU_DEVICE)
    if isinstance(gpu_device, str) and device.gpu_device_index(gpu_device) != device.gpu_device_index(recorded):
        raise ValueError(f"GPU stream {name!r} lives on {recorded}, not on {gpu_device}")
    backend = device.backend(segment.header_str(layout.H_DEVICE_BACKEND))
    allocation = _LocalAllocations.share(segment)
    if allocation is None:
        if not segment.owner_alive():
            raise FileNotFoundError(
                f"GPU stream {name!r}: its creator is gone, and its device memory with it")
        allocation = backend.open(device.gpu_device_index(recorded), segment.header(layout.H_DEVICE_HANDLE),
                                  segment.header(layout.H_DEVICE_NBYTES))
        _LocalAllocations.adopt(segment, allocation)
    return backend, allocation


class _LocalAllocations:
    """Device allocations this process created or opened, shared by its handles on one stream.

    CUDA cannot open an IPC handle in the process that made it, and every
    handle of one process should map a stream's memory once; the memory is
    released when the last handle closes.
    """

    _table: dict = {}  # (segment file, creation time) -> [allocation, handles]

    @staticmethod
    def key(segment: Segment) -> tuple:
        return segment.name, segment.header(layout.H_CREATED_WALL_NS), segment.header(layout.H_OWNER_PID)

    @classmethod
    def adopt(cls, segment: Segment, allocation) -> None:
        cls._table[cls.key(segment)] = [allocation, 1]

    @classmethod
    def share(cls, segment: Segment):
        entry = cls._table.get(cls.key(segment))
        if entry is None:
            return None
        entry[1] += 1
        return entry[0]

    @classmethod
    def release(cls, key: tuple, allocation) -> None:
        entry = cls._table.get(key)
        if entry is None or entry[0] is not allocation:
            allocation.release()
            return
        entry[1] -= 1
        if entry[1] == 0:
            del cls._table[key]
            allocation.release()


def stale_once_unheld(segment: Segment) -> bool:
    """Whether a segment nobody holds a lock on was left by a crash: a control block, a GPU stream
    (its device memory went with its creator, kept or not), or a stream not kept on purpose."""
    if segment.header(layout.H_STORAGE) == layout.STORAGE_CODES["gpu"]:
        return True
    return not (segment.header(layout.H_FLAGS) & layout.FLAG_KEPT)


def segment_is_stale(name: str) -> bool:
    """A segment whose creator died without keeping it on purpose."""
    path = shm_path(name)
    if lock_holder_alive(path):
        return False
    try:
        segment = Segment.open(name, writable=False)
    except (FileNotFoundError, OSError):
        return False
    try:
        return stale_once_unheld(segment)
    finally:
        segment.close()
