"""Device memory for GPU streams: which device backend this process has, and what it does.

A GPU stream keeps its slot headers (sequence, frame id, timestamps) in host
shared memory like any stream; its payload ring is one device allocation
owned by the stream's creator and shared with other processes through an IPC
handle recorded in the segment header.  This module is the only place that
talks to the device.  Two backends offer the same small interface:

* ``CudaBackend`` (CuPy): ``cudaMalloc`` + CUDA IPC memory handles, async
  device-to-host copies for the CPU mirror (into page-locked host memory when
  the mirror can be registered), completion by stream synchronisation, exec
  time from CUDA events.
* ``EmulatedBackend``, chosen by ``SHMPIPED_GPU_EMULATION=1``: a stand-in for
  a CUDA device on machines without one (tests, CI).  Its "device memory" is
  an anonymous memfd that other processes map through ``/proc/<pid>/fd``, so
  like CUDA IPC memory it disappears with its creator, and its array
  namespace is NumPy.  It exercises everything above the device calls (IPC
  handles in segments, mirrors, publish ordering, workers, viewers); it is
  not a GPU and measures nothing about one.

``gpu_status()`` says once per process whether GPU storage is usable here and,
when it is not, what is missing, in words meant for the error a user sees.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import time
from dataclasses import dataclass

import numpy as np

from ..config import gpu_device_index

EMULATION_ENV = "SHMPIPED_GPU_EMULATION"
CUDA_HOST_REGISTER_READ_ONLY = 0x08  # cudaHostRegisterReadOnly (CUDA 11.1+)


@dataclass(frozen=True)
class GpuStatus:
    """Whether GPU storage works in this process; ``reason`` says what is missing when not."""

    usable: bool
    backend: str           # "cuda", "emulated" or "" when unusable
    device_count: int
    reason: str

    def check_device(self, gpu_device: str) -> str | None:
        """None when ``gpu_device`` can be used here, else why not."""
        if not self.usable:
            return self.reason
        index = gpu_device_index(gpu_device)
        if index >= self.device_count:
            visible = f"{self.device_count} CUDA device{'s' if self.device_count != 1 else ''}"
            return f"{gpu_device} does not exist here ({visible} visible)"
        return None


@functools.lru_cache(maxsize=1)
def gpu_status() -> GpuStatus:
    """Probe once per process (``gpu_status.cache_clear()`` probes again)."""
    if os.environ.get(EMULATION_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return GpuStatus(True, "emulated", EmulatedBackend.DEVICE_COUNT, "")
    try:
        import cupy
    except ImportError:
        return GpuStatus(False, "", 0, "CuPy is not installed (install the GPU extra: pip install 'shmpiped[gpu]')")
    except Exception as exc:  # noqa: BLE001 - a broken CuPy install
        return GpuStatus(False, "", 0, f"CuPy cannot be imported ({type(exc).__name__}: {exc})")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - no driver, no device, driver too old...
        detail = str(exc).strip() or type(exc).__name__
        return GpuStatus(False, "", 0, f"no CUDA device is usable (CuPy {cupy.__version__}: {detail})")
    if count == 0:
        return GpuStatus(False, "", 0, "no CUDA device is usable (CuPy sees 0 devices; "
                                       "in a container, run it with --gpus all)")
    return GpuStatus(True, "cuda", count, "")


class DeviceUnavailable(RuntimeError):
    """GPU storage was asked for where it cannot work."""


def backend(name: str | None = None):
    """The backend called ``name`` (default: this process's); DeviceUnavailable if unusable."""
    status = gpu_status()
    if not status.usable:
        raise DeviceUnavailable(status.reason)
    name = name or status.backend
    if name != status.backend:
        raise DeviceUnavailable(
            f"this stream lives on a {name!r} device but this process uses {status.backend!r} "
            f"(set {EMULATION_ENV} the same way in every process of the pipeline)")
    return _backend_instance(name)


@functools.lru_cache(maxsize=None)
def _backend_instance(name: str):
    return CudaBackend() if name == "cuda" else EmulatedBackend()


# ------------------------------------------------------------------------------------ CUDA


class CudaAllocation:
    """Device memory on one device: owned (``cudaMalloc``) or mapped from an IPC handle."""

    def __init__(self, index: int, nbytes: int, handle: bytes | None = None):
        import cupy

        self._runtime = runtime = cupy.cuda.runtime
        self.index = index
        self.nbytes = nbytes
        self.owned = handle is None
        with cupy.cuda.Device(index):
            if self.owned:
                self.ptr = runtime.malloc(max(nbytes, 1))
                runtime.memset(self.ptr, 0, max(nbytes, 1))
                self.handle = bytes(runtime.ipcGetMemHandle(self.ptr))
            else:
                self.ptr = runtime.ipcOpenMemHandle(handle, runtime.cudaIpcMemLazyEnablePeerAccess)
                self.handle = handle
        self._memory = cupy.cuda.UnownedMemory(self.ptr, max(nbytes, 1), self, device_id=index)

    def view(self, offset: int, shape: tuple, dtype) -> object:
        import cupy

        return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(self._memory, offset))

    def release(self) -> None:
        if self.ptr is None:
            return
        import cupy

        with cupy.cuda.Device(self.index):
            if self.owned:
                self._runtime.free(self.ptr)
            else:
                self._runtime.ipcCloseMemHandle(self.ptr)
        self.ptr = None


class CudaTimer:
    """Device time between ``begin()`` and ``end()``, from a pair of CUDA events."""

    def __init__(self):
        import cupy

        self._start = cupy.cuda.Event()
        self._stop = cupy.cuda.Event()
        self._elapsed_ms = cupy.cuda.get_elapsed_time

    def begin(self) -> None:
        self._start.record()

    def end(self) -> int:
        """Record the stop event, wait for the device to reach it; the elapsed ns."""
        stop = self._stop
        stop.record()
        stop.synchronize()
        return int(self._elapsed_ms(self._start, stop) * 1e6)


class CudaBackend:
    name = "cuda"

    def __init__(self):
        import cupy

        self.xp = cupy
        self._cupy = cupy

    def select(self, index: int) -> None:
        self._cupy.cuda.Device(index).use()

    def allocate(self, index: int, nbytes: int) -> CudaAllocation:
        return CudaAllocation(index, nbytes)

    def open(self, index: int, handle: bytes, nbytes: int) -> CudaAllocation:
        return CudaAllocation(index, nbytes, handle)

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()

    def _copier(self, destination: int, source: int, nbytes: int, kind: int):
        """A no-argument callable queueing one copy on the current CUDA stream (no work per call but it)."""
        runtime = self._cupy.cuda.runtime
        return functools.partial(runtime.memcpyAsync, destination, source, nbytes, kind,
                                 self._cupy.cuda.get_current_stream().ptr)

    def copier_to_host(self, host_view: np.ndarray, device_view):
        return self._copier(int(host_view.ctypes.data), int(device_view.data.ptr), host_view.nbytes,
                            self._cupy.cuda.runtime.memcpyDeviceToHost)

    def copier_to_device(self, device_view, host_view: np.ndarray):
        return self._copier(int(device_view.data.ptr), int(host_view.ctypes.data), host_view.nbytes,
                            self._cupy.cuda.runtime.memcpyHostToDevice)

    def pin(self, host_bytes: np.ndarray):
        """Page-lock host memory for fast async copies; returns the undo callable, None if refused.

        Read-only memory (a reader's slots) is registered read-only (cudaHostRegisterReadOnly), as
        CUDA requires on most platforms; where that is refused too, copies stay pageable."""
        runtime = self._cupy.cuda.runtime
        address, size = int(host_bytes.ctypes.data), host_bytes.nbytes
        flags = 0 if host_bytes.flags.writeable else CUDA_HOST_REGISTER_READ_ONLY
        try:
            runtime.hostRegister(address, size, flags)
        except Exception:  # noqa: BLE001 - pinning is an optimisation: pageable copies still work
            return None
        return functools.partial(runtime.hostUnregister, address)

    def upload(self, device_view, value) -> None:
        """Copy a host (or device) array into ``device_view``, on the view's device."""
        cupy = self._cupy
        with device_view.device:
            if isinstance(value, cupy.ndarray):
                cupy.copyto(device_view, value.reshape(device_view.shape), casting="unsafe")
            else:
                device_view.set(np.ascontiguousarray(value, dtype=device_view.dtype).reshape(device_view.shape))

    def to_numpy(self, array) -> np.ndarray:
        return self._cupy.asnumpy(array)

    def timer(self) -> CudaTimer:
        return CudaTimer()


# ---------------------------------------------------------------------------- emulated


_EMULATED_MAGIC = b"EMU1"


class EmulatedAllocation:
    """A memfd standing in for device memory; other processes map it via /proc/<pid>/fd/<fd>."""

    def __init__(self, index: int, nbytes: int, handle: bytes | None = None):
        self.index = index
        self.nbytes = nbytes
        self.owned = handle is None
        size = max(nbytes, 1)
        if self.owned:
            fd = os.memfd_create(f"shmpiped-emulated-gpu{index}", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            self.handle = _EMULATED_MAGIC + struct.pack("<QQQ", os.getpid(), fd, size)
        else:
            magic, (pid, fd_number, _) = handle[:4], struct.unpack_from("<QQQ", handle, 4)
            if magic != _EMULATED_MAGIC:
                raise ValueError("not an emulated device handle")
            try:
                fd = os.open(f"/proc/{pid}/fd/{fd_number}", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise FileNotFoundError(f"the emulated device memory of process {pid} is gone ({exc})") from exc
            self.handle = handle
        self._fd = fd
        self._mmap = mmap.mmap(fd, size)
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.ptr = int(self._bytes.ctypes.data)
        if not self.owned:
            os.close(fd)
            self._fd = None

    def view(self, offset: int, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self._bytes[offset:offset + count].view(dtype).reshape(shape)

    def release(self) -> None:
        if self.ptr is None:
            return
        self.ptr = None
        self._bytes = None
        try:
            self._mmap.close()
        except BufferError:  # views still exported: the mapping goes with the last of them
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EmulatedTimer:
    def begin(self) -> None:
        self._start = time.monotonic_ns()

    def end(self) -> int:
        return time.monotonic_ns() - self._start


class EmulatedBackend:
    name = "emulated"
    DEVICE_COUNT = 2
    xp = np

    def select(self, index: int) -> None:
        pass

    def allocate(self, index: int, nbytes: int) -> EmulatedAllocation:
        return EmulatedAllocation(index, nbytes)

    def open(self, index: int, handle: bytes, nbytes: int) -> EmulatedAllocation:
        return EmulatedAllocation(index, nbytes, handle)

    def synchronize(self) -> None:
        pass

    def copier_to_host(self, host_view: np.ndarray, device_view):
        return functools.partial(np.copyto, host_view, device_view)

    def copier_to_device(self, device_view, host_view: np.ndarray):
        return functools.partial(np.copyto, device_view, host_view)

    def pin(self, host_bytes: np.ndarray):
        return None

    def upload(self, device_view, value) -> None:
        np.copyto(device_view, np.asarray(value).reshape(device_view.shape), casting="unsafe")

    def to_numpy(self, array) -> np.ndarray:
        return np.array(array, copy=True)

    def timer(self) -> EmulatedTimer:
        return EmulatedTimer()
