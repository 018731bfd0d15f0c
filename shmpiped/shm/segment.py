"""Mapped files in /dev/shm: atomic creation, opening, ownership locks, removal.

A segment's creator holds an advisory ``flock`` on it for as long as it lives
(shared for streams, exclusive for a namespace block).  The kernel drops that
lock when the process dies, however it dies, so "is the owner alive?" is one
non-blocking lock attempt, immune to pid reuse and valid across containers
that share ``/dev/shm`` (``--ipc=host``).

Creation is atomic: the segment is built under a hidden temporary name, its
header written and its lock taken, and only then linked under its real name.
A reader therefore never maps a half-initialised segment.

A segment can be mapped with its tail read-only (``readonly_from``): a
stream's readers keep the header writable (they register as futex waiters
there) while the slots they read are protected by the MMU.

Every mapping is registered with the SIGBUS shield of ``_sync``; a process
that calls :func:`enable_fault_shield` (the manager, viewers) then survives a
segment that someone truncates under it: the pages past the new end read as
zeros instead of killing the process, and :meth:`Segment.damage` says what
happened to the file.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import socket
import time
import weakref
from dataclasses import dataclass

import numpy as np

from ..errors import SharedMemoryError
from . import _sync, layout

_shield = {"enabled": False}


def enable_fault_shield() -> None:
    """Survive segments truncated under this process (see ``_sync.c``): install the SIGBUS
    shield once.  Accesses past the new end of a shmpiped segment then read zeros (and writes go
    nowhere) instead of killing the process; ``Segment.damage()`` reports it."""
    if not _shield["enabled"]:
        _sync.shield_install()
        _shield["enabled"] = True


def fault_shield_enabled() -> bool:
    return _shield["enabled"]


def shm_path(name: str) -> str:
    return os.path.join(layout.DEV_SHM, name)


@dataclass(frozen=True)
class OwnerIdentity:
    pid: int
    start_ticks: int
    pid_namespace: int
    host: str

    @classmethod
    def of_this_process(cls) -> "OwnerIdentity":
        return cls(os.getpid(), start_ticks(os.getpid()), this_pid_namespace(), socket.gethostname()[:63])

    def write(self, buffer) -> None:
        layout.pack(buffer, layout.H_OWNER_PID, self.pid)
        layout.pack(buffer, layout.H_OWNER_START, self.start_ticks)
        layout.pack(buffer, layout.H_OWNER_PID_NS, self.pid_namespace)
        layout.pack_str(buffer, layout.H_OWNER_HOST, self.host)
        layout.pack(buffer, layout.H_CREATED_WALL_NS, time.time_ns())

    @classmethod
    def read(cls, buffer) -> "OwnerIdentity":
        return cls(
            layout.unpack(buffer, layout.H_OWNER_PID),
            layout.unpack(buffer, layout.H_OWNER_START),
            layout.unpack(buffer, layout.H_OWNER_PID_NS),
            layout.unpack_str(buffer, layout.H_OWNER_HOST),
        )


def start_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def this_pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


@dataclass(frozen=True)
class Producer:
    """The pipeline that writes a stream, as recorded in the stream's header."""

    pid: int
    start_ticks: int
    pid_namespace: int
    description: str  # e.g. "kernel 'centroid' (pipeline.yaml)"

    @classmethod
    def of(cls, segment: Segment) -> "Producer | None":
        pid = segment.header(layout.H_PRODUCER_PID)
        if not pid:
            return None
        return cls(pid, segment.header(layout.H_PRODUCER_START), segment.header(layout.H_PRODUCER_PID_NS),
                   segment.header_str(layout.H_PRODUCER))

    def alive(self, segment: Segment) -> bool:
        """Whether the producing process still runs (in another pid namespace: whether anyone holds
        the segment's ownership lock)."""
        if self.pid_namespace != this_pid_namespace():
            return lock_holder_alive(segment.path)
        ticks = start_ticks(self.pid)
        return ticks != 0 and ticks == self.start_ticks

    def __str__(self) -> str:
        return f"{self.description} of the pipeline run by pid {self.pid}"


def unlink_unless_held(name: str, still_removable=lambda segment: True) -> bool:
    """Remove segment ``name`` if nobody holds its ownership lock; True when removed.

    The check and the removal happen under an exclusive lock on the file, so a
    segment that a live process created under the same name meanwhile is never
    removed.  ``still_removable(segment)`` may veto (e.g. a segment kept on purpose).
    """
    path = shm_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            return False  # replaced since we opened it
        try:
            segment = Segment.open(name, writable=False)
        except (OSError, ValueError):
            segment = None  # not a readable shmpiped segment: nobody can use it either
        try:
            if segment is not None and not still_removable(segment):
                return False
        finally:
            if segment is not None:
                segment.close()
        os.unlink(path)
        return True
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(fd)


def lock_holder_alive(path: str) -> bool:
    """True while some process holds the segment's ownership lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Segment:
    """One mapping of a /dev/shm file, with its base address for the C helpers."""

    def __init__(self, name: str, fd: int, mapping: mmap.mmap, writable: bool, locked: bool,
                 readonly_from: int | None = None):
        self.name = name
        self.path = shm_path(name)
        self._fd = fd
        self._mmap = mapping
        self.writable = writable  # the header at least can be written through this mapping
        self.locked = locked
        self.bytes = np.frombuffer(mapping, dtype=np.uint8)
        self.address = int(self.bytes.ctypes.data)
        self.size = len(mapping)
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        self.tail_readonly = False
        if not writable:
            self.bytes.flags.writeable = False
        elif readonly_from is not None:
            self.protect_from(readonly_from)
        guard = _sync.shield_register(self.address, self.size)
        self._guard = guard
        self._unguard = weakref.finalize(mapping, _sync.shield_unregister, guard) if guard >= 0 else None

    # -- creation and opening -------------------------------------------------
    @classmethod
    def create(cls, name: str, size: int, initialise, lock: int = fcntl.LOCK_SH) -> "Segment":
        """Create ``name`` of ``size`` bytes; ``initialise(buffer)`` writes its header.

        Raises FileExistsError if the name is taken, SharedMemoryError when
        /dev/shm cannot hold it.
        """
        temp = shm_path(f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG):
                    raise SharedMemoryError(
                        exc.errno,
                        f"/dev/shm has no room for {size} bytes for segment {name!r}"
                        " (enlarge it, e.g. docker --shm-size, or use --ipc=host)",
                    ) from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            initialise(mapping)
            fcntl.flock(fd, lock | fcntl.LOCK_NB)
            os.link(temp, shm_path(name))
        except BaseException:
            os.close(fd)
            raise
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        return cls(name, fd, mapping, writable=True, locked=True)

    @classmethod
    def open(cls, name: str, writable: bool = True, readonly_from: int | None = None) -> "Segment":
        """Map an existing segment; FileNotFoundError if there is none.

        ``readonly_from``: with ``writable``, the bytes from that offset on are
        mapped read-only (rounded up to a page).
        """
        path = shm_path(name)
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < layout.HEADER_SIZE:
                raise SharedMemoryError(
                    errno.EINVAL, f"segment {path} is truncated ({size} bytes, less than its "
                                  f"{layout.HEADER_SIZE}-byte header): its pipeline must rebuild it")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
            if mapping[:8] != layout.MAGIC:
                mapping.close()
                raise SharedMemoryError(errno.EINVAL, f"{path} is not a shmpiped segment")
            version = layout.unpack(mapping, layout.H_VERSION)
            if version != layout.LAYOUT_VERSION:
                mapping.close()
                raise SharedMemoryError(
                    errno.EINVAL,
                    f"{path} has layout version {version}, this shmpiped reads {layout.LAYOUT_VERSION}",
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mapping, writable=writable, locked=False, readonly_from=readonly_from)

    @classmethod
    def open_or_create_locked(cls, name: str, size: int, initialise) -> "Segment":
        """Open ``name`` holding its exclusive lock, creating it when absent.

        Used for claimed namespace blocks: raises BlockingIOError while another
        live process holds a lock on it.  A file left by a dead owner is
        re-initialised.
        """
        return cls._open_or_create(name, size, initialise, fcntl.LOCK_EX)

    @classmethod
    def open_or_create_shared(cls, name: str, size: int, initialise) -> "Segment":
        """Open ``name`` holding a shared lock on it, creating it when absent.

        Used for the marker of a shared namespace: any number of pipelines hold
        it shared at once, and a pipeline that claims the namespace whole
        (exclusive lock) cannot while one does.  Raises BlockingIOError while
        a claimant holds it.
        """
        return cls._open_or_create(name, size, initialise, fcntl.LOCK_SH)

    @classmethod
    def _open_or_create(cls, name: str, size: int, initialise, lock: int) -> "Segment":
        path = shm_path(name)
        while True:
            try:
                return cls.create(name, size, initialise, lock=lock)
            except FileExistsError:
                pass
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed between our two attempts: try creating again
            try:
                fcntl.flock(fd, lock | fcntl.LOCK_NB)
                if os.fstat(fd).st_nlink == 0:  # its last holder removed it while we took the lock
                    os.close(fd)
                    continue
                if lock == fcntl.LOCK_EX:  # ours alone now: start it afresh
                    os.ftruncate(fd, size)
                mapping = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                if lock == fcntl.LOCK_EX:
                    mapping[: layout.HEADER_SIZE] = bytes(layout.HEADER_SIZE)
                    initialise(mapping)
            except BaseException:
                os.close(fd)
                raise
            return cls(name, fd, mapping, writable=True, locked=True)

    def unlink_if_last_holder(self) -> bool:
        """Unlink this segment if no other process holds a lock on it (this one's lock becomes exclusive)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.unlink()
        return True

    # -- header access -----------------------------------------------------------
    def header(self, field):
        return layout.unpack(self._mmap, field)

    def header_str(self, field) -> str:
        return layout.unpack_str(self._mmap, field)

    def set_header(self, field, *values) -> None:
        layout.pack(self._mmap, field, *values)

    def owner(self) -> OwnerIdentity:
        return OwnerIdentity.read(self._mmap)

    def owner_alive(self) -> bool:
        return self.locked or lock_holder_alive(self.path)

    def protect_from(self, offset: int) -> None:
        """Make the bytes from ``offset`` on read-only in this mapping: the MMU refuses writes from
        the first page boundary at or after ``offset``, NumPy refuses them everywhere (``bytes``
        and the views taken from it afterwards are read-only)."""
        start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        if start < self.size:
            _sync.protect_readonly(self.address + start, self.size - start)
        self.bytes.flags.writeable = False
        self.tail_readonly = True

    # -- integrity ----------------------------------------------------------------
    @property
    def faults(self) -> int:
        """Accesses past the end of the file that the SIGBUS shield absorbed."""
        return _sync.shield_faults(self._guard) if self._guard >= 0 and not self.closed else 0

    def damage(self) -> str | None:
        """What happened to the file behind this mapping, in words, or None while it is intact:
        truncated (now, or at some point: an access faulted), removed or renamed, replaced by another
        file under the same name, or its header overwritten.  Two ``stat`` calls; reads the magic."""
        if self.closed:
            return None
        try:
            st = os.fstat(self._fd)
        except OSError as exc:
            return f"cannot be checked ({exc})"
        if st.st_size < self.size:
            return f"was truncated to {st.st_size} bytes (it had {self.size})"
        if self.faults:
            return "was truncated (an access past its end faulted)"
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return "was removed from /dev/shm (or renamed)"
        except OSError as exc:
            return f"cannot be checked ({exc})"
        if (named.st_dev, named.st_ino) != self._identity:
            return "was replaced by another file of the same name"
        if self._mmap[:8] != layout.MAGIC:
            return "has had its header overwritten"
        return None

    def still_named(self) -> bool:
        """Whether ``self.path`` still names the mapped file (not removed, not replaced by another)."""
        try:
            named = os.stat(self.path)
        except OSError:
            return False
        return (named.st_dev, named.st_ino) == self._identity

    # -- teardown -------------------------------------------------------------
    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmap and drop the lock.  Views still held by callers keep the
        mapping alive until they are garbage-collected."""
        if self._fd < 0:
            return
        self.bytes = None
        try:
            self._mmap.close()
        except BufferError:
            pass  # views exported to user code: the mapping (and its guard) goes with the last of them
        else:
            if self._unguard is not None:
                self._unguard()
        os.close(self._fd)
        self._fd = -1
        self.address = 0

    @property
    def closed(self) -> bool:
        return self._fd < 0
