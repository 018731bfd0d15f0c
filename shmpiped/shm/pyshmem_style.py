"""The pyshmem calls a stream handle answers: code written against ``pyshmem.SharedMemory`` runs on it.

shmpipeline 1.3.0 hands its users pyshmem handles; shmpiped hands them
:class:`~shmpiped.shm.stream.Stream`.  This mixin gives ``Stream`` the pyshmem
methods such code calls, with pyshmem's signatures, return types and errors,
mapped onto the lock-free ring:

- ``read_publication``, ``read_new_publication`` (edge-triggered: a
  publication after the call), ``read_after`` / ``read_after_publication``
  and ``wait_for_count`` (level-triggered: count > ``after``) return a
  :class:`Publication` or the payload, and raise ``TimeoutError`` when
  ``timeout`` passes first;
- ``write_view(frame_id=...)`` yields the next slot itself (zero copy) and
  publishes it when the block ends normally; an exception publishes nothing,
  so readers keep seeing the previous publication (pyshmem instead marks its
  single buffer invalid: a ring has no half-written newest value to hide);
- ``locked(timeout=...)`` is a context that takes no lock.  A stream has one
  writer, and a reader copies a slot and then re-checks the slot's sequence
  number, retrying when the writer lapped it, so ``read()`` and
  ``read_publication()`` are consistent without a lock and a writer never
  waits for a reader.  ``with shm.locked(timeout=t): shm.read(safe=True)``
  (shmpipeline's auxiliary read) therefore runs unchanged and never times out;
- ``clear()`` publishes a zero payload, like pyshmem.

Differences that remain, on purpose: ``write``/``write_view`` without a
``frame_id`` number the frame with its count (pyshmem repeats the previous
token), and ``read(safe=False)`` returns the newest slot's live view without
requiring ``locked()``; it stays valid until the writer laps it, which
``still_valid(last_read_count)`` tells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Publication:
    """One publication and its metadata, read together (pyshmem's fields first).

    ``payload`` is a private copy (or the caller's ``out``); ``write_time`` is
    wall-clock seconds of the publication (0.0 before the first);
    ``missed_publications`` counts the publications this handle stepped over
    since its previous read.  ``origin_ns`` (CLOCK_MONOTONIC) is when the frame
    entered the pipeline, and ``stream`` the stream's name.
    """

    payload: Any
    count: int
    frame_id: int
    write_time: float
    missed_publications: int
    origin_ns: int = 0
    stream: str = ""


class _NoLock:
    """What ``locked()`` returns: enters to the handle, excludes nobody (see the module docstring)."""

    __slots__ = ("_handle",)

    def __init__(self, handle):
        self._handle = handle

    def __enter__(self):
        return self._handle

    def __exit__(self, exc_type, exc, tb) -> None:
        return None


class _SlotWrite:
    """What ``write_view()`` returns: the next slot on entry, published on a normal exit."""

    __slots__ = ("_handle", "_frame_id")

    def __init__(self, handle, frame_id):
        self._handle = handle
        self._frame_id = frame_id

    def __enter__(self):
        return self._handle.next_slot()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._handle.publish(self._frame_id or 0)


def _non_negative_int(value, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{what} must be an integer") from exc
    if number < 0:
        raise ValueError(f"{what} must be non-negative")
    return number


class PyshmemStyleMethods:
    """pyshmem's ``SharedMemory`` methods over a stream ring (mixed into ``Stream``).

    Relies on the stream's ``count``, ``latest``, ``slot_metadata``-style slot
    headers, ``still_valid``, ``next_slot``, ``publish``, ``write``, ``wait``
    and its ``_snapshot`` / ``_record_read`` helpers.
    """

    #: pyshmem's flag for a handle whose payload is device memory (True on ``DeviceStream``).
    gpu_enabled = False

    @property
    def size(self) -> int:
        """The payload's size in bytes, as pyshmem reports it."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def owner(self) -> bool:
        """Whether this handle created the stream (and holds its ownership lock)."""
        return self.segment.locked

    # -- locking (none needed) ------------------------------------------------------
    def locked(self, *, timeout: float | None = None, poll_interval: float = 1e-3) -> _NoLock:
        """A context yielding this handle; it takes no lock, because none is needed (module docstring)."""
        return _NoLock(self)

    # -- reading ----------------------------------------------------------------------
    def read_publication(self, *, safe: bool = True, poll_interval: float | None = None, out=None,
                         timeout: float | None = None) -> Publication:
        """The newest payload with its count, frame id and write time, from one publication.

        ``out`` receives the payload instead of a new array (CPU streams,
        ``safe=True`` only: ValueError otherwise).  ``safe=False`` returns the
        slot's live view.  Before the first write the payload is zeros and the
        count 0.  ``timeout`` and ``poll_interval`` keep pyshmem's signature:
        a read never waits for the writer here.
        """
        if not safe and out is not None:
            raise ValueError("out is supported only for safe reads; pass safe=True with out=")
        while True:
            count, view = self.latest()
            if view is None:
                payload = self._snapshot(None, out)
                self._record_read(0)
                return Publication(payload, 0, 0, 0.0, 0, 0, self.name)
            payload = view if not safe else self._snapshot(view, out)
            header = self._slot_headers[(count - 1) % self.nslots]
            frame_id, origin_ns, wall_ns = int(header[1]), int(header[2]), int(header[4])
            if not safe or self.still_valid(count):
                missed = self._record_read(count)
                return Publication(payload, count, frame_id, wall_ns / 1e9, missed, origin_ns, self.name)

    def wait_for_count(self, *, after: int, timeout: float | None = None,
                       poll_interval: float | None = None) -> int:
        """Block until the count exceeds ``after`` (level-triggered); returns the count.

        A publication made before the call satisfies it, so request/reply
        exchanges cannot miss their answer.  TimeoutError after ``timeout``
        seconds; ValueError for a negative ``after`` or ``timeout``.
        """
        baseline = _non_negative_int(after, "after")
        if timeout is not None and float(timeout) < 0.0:
            raise ValueError("timeout must be non-negative")
        return self.wait(baseline, None if timeout is None else float(timeout))

    def read_new_publication(self, *, timeout: float | None = None, safe: bool = True,
                             poll_interval: float | None = None, out=None) -> Publication:
        """Wait for a publication made after this call (edge-triggered), then read the newest one."""
        self.wait_for_count(after=self.count, timeout=timeout)
        return self.read_publication(safe=safe, out=out)

    def read_after(self, after: int, *, timeout: float | None = None, safe: bool = True,
                   poll_interval: float | None = None, out=None):
        """The newest payload once the count exceeds ``after``; its count is ``last_read_count``."""
        return self.read_after_publication(after, timeout=timeout, safe=safe, out=out).payload

    def read_after_publication(self, after: int, *, timeout: float | None = None, safe: bool = True,
                               poll_interval: float | None = None, out=None) -> Publication:
        """``read_after`` with the publication's metadata (level-triggered)."""
        self.wait_for_count(after=after, timeout=timeout)
        return self.read_publication(safe=safe, out=out)

    # -- writing ------------------------------------------------------------------------
    def write_view(self, *, timeout: float | None = None, frame_id: int | None = None) -> _SlotWrite:
        """``with stream.write_view(frame_id=7) as view:`` fill ``view`` (the next slot, zero copy);
        it is published when the block ends without an exception.  ``timeout`` is accepted: there
        is no lock to wait for."""
        self._require_writable("write to")
        return _SlotWrite(self, frame_id)

    def write_view_locked(self, *, frame_id: int | None = None) -> _SlotWrite:
        """``write_view`` (pyshmem's variant for callers holding the lock; there is none here)."""
        return self.write_view(frame_id=frame_id)

    def write_locked(self, value, *, frame_id: int | None = None) -> int:
        """``write`` (pyshmem's variant for callers holding the lock; there is none here)."""
        self._require_writable("write to")
        return self.write(value, frame_id=frame_id)

    def clear(self) -> int:
        """Publish a payload of zeros (a new write, numbered with its count); returns the count."""
        self._require_writable("clear")
        self.next_slot().fill(0)
        return self.publish()

    def _record_read(self, count: int) -> int:
        """Note a read of publication ``count``; returns how many publications it stepped over
        (``missed_writes``, added to ``total_missed_writes``)."""
        missed = count - self._seen_count - 1
        if missed < 0:
            missed = 0
        self.missed_writes = missed
        self.total_missed_writes += missed
        self._seen_count = self.last_read_count = count
        return missed

    def _require_writable(self, operation: str) -> None:
        if self.readonly:
            raise PermissionError(f"cannot {operation} stream {self.name!r}: {self._refusal()}")
