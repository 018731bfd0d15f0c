"""GPU streams seen from a process: device views of a GPU stream, CPU streams uploaded for a GPU kernel.

``DeviceStream`` is a GPU stream attached with device access (its slot views
are device arrays; ``publish`` waits for the device work and queues the CPU
mirror's copy first); ``HostStreamOnDevice`` is a CPU stream read by a GPU
kernel through one device buffer refilled when the count changes.  One
process maps a stream's device memory once (``LocalAllocations``), shared by
its handles.  The host side (count, slot headers, the ring's rules) is
``stream.Stream``'s.
"""

from __future__ import annotations

import numpy as np

from . import _sync, device, layout
from .segment import Segment
from .stream import Stream


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
        key = LocalAllocations.key(self.segment)
        super().close()
        LocalAllocations.release(key, self._allocation)


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


def attach_device_memory(segment: Segment, name: str, gpu_device):
    """(backend, allocation) of a GPU stream's payload ring, mapped into this process."""
    recorded = segment.header_str(layout.H_GPU_DEVICE)
    if isinstance(gpu_device, str) and device.gpu_device_index(gpu_device) != device.gpu_device_index(recorded):
        raise ValueError(f"GPU stream {name!r} lives on {recorded}, not on {gpu_device}")
    backend = device.backend(segment.header_str(layout.H_DEVICE_BACKEND))
    allocation = LocalAllocations.share(segment)
    if allocation is None:
        if not segment.owner_alive():
            raise FileNotFoundError(
                f"GPU stream {name!r}: its creator is gone, and its device memory with it")
        allocation = backend.open(device.gpu_device_index(recorded), segment.header(layout.H_DEVICE_HANDLE),
                                  segment.header(layout.H_DEVICE_NBYTES))
        LocalAllocations.adopt(segment, allocation)
    return backend, allocation


class LocalAllocations:
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
