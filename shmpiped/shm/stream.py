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

One writer per stream.  The pipeline that produces a stream (a kernel's
output, a source's stream) records it in the stream's header
(``record_producer``) and clears it when it closes the stream.  While that
pipeline lives, ``attach(readonly=False)`` is refused with a PermissionError
naming the producer, and a plain ``attach()`` gives a *reader*: its header is
writable (readers park on the futex there) and its slots are read-only (the
MMU refuses writes, NumPy raises), and its ``write()`` raises PermissionError
naming the producer.  Workers attach their inputs and auxiliaries as readers.

A stream whose file was damaged under its users (truncated, replaced,
removed, its count overwritten) is reported by ``damage()``; see
``segment.enable_fault_shield`` for surviving one.
"""

from __future__ import annotations

import errno
import math
import mmap
import secrets
import time
import weakref

import numpy as np

from ..errors import SharedMemoryError
from . import _sync, device, layout
from .pyshmem_style import PyshmemStyleMethods
from .segment import OwnerIdentity, Producer, Segment, lock_holder_alive, shm_path

WAIT_STRATEGIES = ("futex", "hybrid", "spin")
HYBRID_SPIN_S = 50e-6
#: How the pipeline itself attaches: its writer (no producer check), or a worker's input (slots read-only).
ROLES = ("producer", "reader")


def _writers_refusal(name: str, namespace: str, producer: Producer) -> str:
    return (f"stream {name!r} (namespace {namespace!r}) is written by {producer}, and a stream has one "
            f"writer: read it (shmpiped.attach({name!r}, namespace={namespace!r}) gives a read-only "
            f"handle), or declare a stream of your own as the pipeline's input")


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
        self._read_geometry()
        self.storage = layout.STORAGE_NAMES.get(segment.header(layout.H_STORAGE), "cpu")
        self.gpu_device = segment.header_str(layout.H_GPU_DEVICE) or None
        self.cpu_mirror = bool(segment.header(layout.H_CPU_MIRROR))
        self.notify = bool(segment.header(layout.H_NOTIFY))
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
        self.readonly = not segment.writable or segment.tail_readonly  # cannot publish
        self._poll_only = not segment.writable  # cannot park on the futex (its header is read-only too)
        if self.readonly:  # shadow the writing methods: writers pay nothing for the check
            self.next_slot = self.publish = self.write = _WriteRefusal(self)
        self._producer_token = 0
        self.last_read_count = 0
        # pyshmem's read accounting: publications stepped over by this handle's reads.
        self._seen_count = self.count
        self.missed_writes = 0
        self.total_missed_writes = 0
        self.set_wait_strategy("futex")

    def _read_geometry(self) -> None:
        """Shape, dtype, slots and sizes from the header; SharedMemoryError when they are not a
        stream's, or when the file is shorter than they say (truncated)."""
        segment = self.segment
        try:
            self.nslots = segment.header(layout.H_NSLOTS)
            ndim = segment.header(layout.H_NDIM)
            if ndim > layout.MAX_DIMS or self.nslots < 1:
                raise ValueError(f"{self.nslots} slots, {ndim} dimensions")
            self.shape = tuple(segment.header(layout.H_SHAPE)[:ndim]) if ndim else ()
            self.dtype = np.dtype(segment.header_str(layout.H_DTYPE))
            self.nbytes = segment.header(layout.H_PAYLOAD_NBYTES)
            self._stride = segment.header(layout.H_SLOT_STRIDE)
            if self._stride < layout.SLOT_HEADER_SIZE:
                raise ValueError(f"slot stride {self._stride}")
        except (TypeError, ValueError) as exc:
            raise SharedMemoryError(errno.EINVAL, f"segment {segment.path} has a damaged stream header "
                                                  f"({exc}): its pipeline must rebuild it") from None
        needed = layout.HEADER_SIZE + self.nslots * self._stride
        if segment.size < needed:
            raise SharedMemoryError(errno.EINVAL, f"segment {segment.path} is truncated ({segment.size} bytes "
                                                  f"of {needed}): its pipeline must rebuild it")

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
        LocalAllocations.adopt(segment, allocation)
        return DeviceStream(segment, name, namespace, backend, allocation)

    @classmethod
    def attach(cls, name: str, namespace: str | None = None, *, readonly: bool | None = None,
               gpu_device: str | bool | None = None, role: str | None = None) -> "Stream":
        """Open an existing stream by its logical name; FileNotFoundError if absent.

        ``readonly``: True maps it read-only (such a handle polls instead of
        parking on the futex: viewers); False asks to write it, refused with a
        PermissionError naming the producer while a running pipeline produces
        it; None (the default) writes it when nothing produces it and else
        reads it: its header is writable (it parks on the futex), its slots
        are read-only and ``write()`` raises PermissionError naming the
        producer.  ``role`` is the pipeline's own: ``"producer"`` (its writer)
        or ``"reader"`` (a worker's input or auxiliary).

        ``gpu_device`` (its device name, or True for "wherever it lives")
        attaches a GPU stream's device memory and returns a
        :class:`DeviceStream`; without it a GPU stream is read through its
        CPU mirror.  It is ignored for CPU streams.  A reader's device views
        cannot be made read-only (only its CPU mirror is).
        """
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        namespace = namespace or layout.DEFAULT_NAMESPACE
        segment_name = layout.stream_segment_name(namespace, name)
        if role is None and readonly:
            segment = Segment.open(segment_name, writable=False)
        else:
            try:
                segment = Segment.open(segment_name, writable=True)
            except PermissionError:
                if role is not None or readonly is not None:
                    raise
                segment = Segment.open(segment_name, writable=False)  # no write permission: a reader still
        try:
            if segment.header(layout.H_KIND) != layout.KIND_STREAM:
                raise FileNotFoundError(f"{segment.path} is not a stream segment")
            if role == "reader":
                segment.protect_from(layout.HEADER_SIZE)
            elif role is None and segment.writable:
                producer = Producer.of(segment)
                if producer is not None and producer.alive(segment):
                    if readonly is False:
                        raise PermissionError(_writers_refusal(name, namespace, producer))
                    segment.protect_from(layout.HEADER_SIZE)
            if not gpu_device or segment.header(layout.H_STORAGE) != layout.STORAGE_CODES["gpu"]:
                return cls(segment, name, namespace)
            backend, allocation = attach_device_memory(segment, name, gpu_device)
        except BaseException:
            segment.close()
            raise
        return DeviceStream(segment, name, namespace, backend, allocation)

    # -- the one writer ------------------------------------------------------------
    def record_producer(self, description: str) -> None:
        """Record in the header that this process's pipeline writes the stream (``description``: what
        writes it, e.g. "kernel 'centroid' (pipeline.yaml)"); cleared when this handle closes."""
        raw = description.encode("utf-8")[: int(layout.H_PRODUCER[1][:-1]) - 1]
        owner = OwnerIdentity.of_this_process()
        token = secrets.randbits(63) or 1
        segment = self.segment
        segment.set_header(layout.H_PRODUCER_PID, 0)
        segment.set_header(layout.H_PRODUCER, raw)
        segment.set_header(layout.H_PRODUCER_START, owner.start_ticks)
        segment.set_header(layout.H_PRODUCER_PID_NS, owner.pid_namespace)
        segment.set_header(layout.H_PRODUCER_TOKEN, token)
        segment.set_header(layout.H_PRODUCER_PID, owner.pid)
        self._producer_token = token

    def clear_producer(self) -> None:
        """Forget the producer this handle recorded (another handle's record is left alone)."""
        token, self._producer_token = self._producer_token, 0
        if token and not self.closed and self.segment.header(layout.H_PRODUCER_TOKEN) == token:
            self.segment.set_header(layout.H_PRODUCER_PID, 0)
            self.segment.set_header(layout.H_PRODUCER_TOKEN, 0)

    @property
    def producer(self) -> Producer | None:
        """The running pipeline that writes this stream, None when none is recorded or it is gone."""
        producer = Producer.of(self.segment)
        return producer if producer is not None and producer.alive(self.segment) else None

    def _refusal(self) -> str:
        producer = None if self.closed else self.producer
        if producer is not None:
            return _writers_refusal(self.name, self.namespace, producer)
        if self.segment.writable:
            return (f"this handle of stream {self.name!r} only reads it (a kernel's inputs and auxiliaries "
                    f"are read-only: a stream has one writer)")
        return f"stream {self.name!r} was attached read-only (readonly=True)"

    # -- integrity ------------------------------------------------------------------
    def damage(self) -> str | None:
        """What is wrong with the stream's file, in words (see ``Segment.damage``; also a publication
        count that its slots contradict), or None while it is intact."""
        problem = self.segment.damage()
        if problem is not None or self.closed:
            return problem
        count = self.count
        if count:
            seq = _sync.slot_seq(self.slot_addrs[(count - 1) % self.nslots])
            # The newest slot holds `count`, or 0 / count + k * nslots once the writer moved on.
            if count >= 1 << 63 or (seq and (seq < count or (seq - count) % self.nslots)):
                return f"has a corrupted publication count ({count:#x}; its newest slot holds publication {seq})"
        return None

    def _corrupted_count(self, count: int) -> SharedMemoryError:
        return SharedMemoryError(errno.EINVAL, f"stream {self.name!r}: segment {self.segment.path} has a corrupted "
                                              f"publication count ({count:#x}): its pipeline must rebuild it")

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
        try:
            _sync.publish(self._addr, self.slot_addrs[(count - 1) % self.nslots], count,
                          frame_id or count, origin_ns)
        except OverflowError:
            if count >> 64:  # the count word was overwritten with garbage
                raise self._corrupted_count(count - 1) from None
            raise
        return count

    def write(self, value, frame_id: int | None = None, origin_ns: int = 0) -> int:
        """Copy ``value`` into the next slot and publish it; returns the new count."""
        view = self.next_slot()
        np.copyto(view, np.asarray(value).reshape(self.shape), casting="unsafe")
        return self.publish(frame_id or 0, origin_ns)

    def wake_all(self) -> None:
        """Wake every parked reader without publishing (used to stop workers)."""
        if not self._poll_only:
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

    def prefault(self) -> int:
        """Touch every page of the segment once (a read each), so that /dev/shm allocates them now rather
        than on some frame's first write; returns the bytes covered."""
        data = self.segment.bytes
        int(data[::mmap.PAGESIZE].sum(dtype=np.uint64))
        return int(data.size)

    def set_wait_strategy(self, strategy: str, spin_s: float = HYBRID_SPIN_S) -> None:
        """``futex`` parks at once; ``hybrid`` spins ``spin_s`` first (the pipeline's ``realtime.spin_us``,
        50 us by default); ``spin`` never parks."""
        if strategy not in WAIT_STRATEGIES:
            raise ValueError(f"wait strategy must be one of {', '.join(WAIT_STRATEGIES)}, got {strategy!r}")
        if not spin_s >= 0:
            raise ValueError(f"spin time must be a non-negative number of seconds, got {spin_s!r}")
        self.wait_strategy = strategy
        self._spin_s = {"futex": 0.0, "hybrid": float(spin_s), "spin": -1.0}[strategy]

    def wait_once(self, after: int, timeout: float) -> int:
        """One bounded wait; returns the current count (may still equal ``after``)."""
        if self._poll_only:
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
        if self._producer_token:
            self.clear_producer()
        self.slot_views = ()
        self._slot_headers = ()
        self.segment.close()
        # A thread still holding the handle (an abandoned source call) now gets ValueError or
        # IndexError from its next call, not a write into memory that is unmapped or reused.
        self._addr = self._seq_addr = 0
        self.slot_addrs = ()

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


class _WriteRefusal:
    """What a handle that may not write has for ``next_slot``, ``publish`` and ``write``: a call raises
    PermissionError saying why (it holds its stream weakly, so the handle is freed as usual)."""

    def __init__(self, stream: Stream):
        self._stream = weakref.ref(stream)

    def __call__(self, *args, **kwargs):
        stream = self._stream()
        raise PermissionError(stream._refusal() if stream is not None else "this handle cannot write")


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


# The device side (imported last: it builds on Stream).
from .device_stream import DeviceStream, LocalAllocations, attach_device_memory  # noqa: E402
