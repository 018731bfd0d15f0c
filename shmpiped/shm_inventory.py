"""The shmpiped segments in /dev/shm: who owns them, removing them (``shmpiped shm ls`` / ``shm rm``),
and how much of /dev/shm a pipeline needs (``shm_footprint``, ``no_room_message``).

A segment's owner is the process holding its ownership lock (``flock``);
``/proc/locks`` says which process that is.  ``remove_segments`` never
removes a segment whose lock some process holds, ``--force`` or not: a
second daemon would then build the same namespace beside the live one.  It
removes what is left by owners that are gone: stale segments always, and,
with ``force``, those their owner kept on purpose (``shutdown(unlink=False)``)
or that cannot be read as shmpiped segments.  Each removal re-checks the lock
under an exclusive lock of its own (``segment.unlink_unless_held``), so an
owner that comes back meanwhile keeps its segment.

A pipeline's footprint is its control block(s) plus its streams (see
``shm/layout.py``): the namespace block is a 4 KiB header and one 32 KiB
telemetry record for each of 256 possible workers (8 MiB + 4 KiB); a pipeline
in the shared default namespace has its own block and may create the
namespace's marker, of the same size.  A stream is a 4 KiB header and ``slots``
(4) slots of a 64-byte slot header plus its payload rounded up to 64 bytes
(a GPU stream without a CPU mirror: no payload on the host).
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass, field

from .shm import layout
from .shm.segment import Segment, lock_holder_alive, unlink_unless_held

__all__ = ["Removal", "describe_live_namespaces", "list_segments", "live_streams", "lock_holders", "no_room_message",
           "remove_segments", "shm_footprint"]


def lock_holders(path: str) -> list[int]:
    """Pids of the processes holding a ``flock`` on ``path`` (from ``/proc/locks``); [] when none or unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as locks:
            entries = locks.read().splitlines()
    except OSError:
        return []
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for entry in entries:
        fields = entry.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" ("->" marks a waiter: not a holder)
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == device and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))


def command_line(pid: int) -> str:
    """What process ``pid`` runs, for a message ("?" when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(os.fsdecode(w) for w in words if w)
    return text if len(text) <= 120 else text[:117] + "..."


def list_segments(namespace: str | None = None) -> list[dict]:
    """Every shmpiped segment in /dev/shm, with its owner and whether it is stale.

    ``alive``: some process holds its ownership lock.  ``kept``: its owner
    closed it on purpose without removing it.  ``stale``: owner gone, not kept.
    ``readable``: False for a file with a shmpiped name that is no shmpiped segment.
    """
    rows = []
    for name in sorted(os.listdir(layout.DEV_SHM)):
        parsed = layout.parse_segment_name(name)
        if parsed is None or (namespace and parsed[0] != namespace):
            continue
        path = os.path.join(layout.DEV_SHM, name)
        kind = "stream" if parsed[1] is not None else ("pipeline" if "@" in name else "namespace")
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            continue  # removed since the listing
        row = {"segment": name, "namespace": parsed[0], "stream": parsed[1], "kind": kind, "size": size}
        try:
            segment = Segment.open(name, writable=False)
        except (OSError, ValueError) as exc:
            alive = lock_holder_alive(path)
            # not a shmpiped segment we can read: no owner to ask, so only --force removes it
            row.update(owner_pid=None, alive=alive, kept=False, readable=False, stale=False, detail=str(exc))
        else:
            alive = lock_holder_alive(segment.path)
            kept = bool(segment.header(layout.H_FLAGS) & layout.FLAG_KEPT)
            row.update(owner_pid=segment.owner().pid, alive=alive, kept=kept, readable=True,
                       stale=not alive and not kept)
            if row["kind"] == "stream":
                from .shm.stream import Stream

                stream = Stream(segment, parsed[1], parsed[0])
                row.update(shape=list(stream.shape), dtype=stream.dtype.name, count=stream.count)
                stream.close()
            else:
                segment.close()
        rows.append(row)
    return rows


def live_streams() -> dict[str, set[str]]:
    """Stream names by namespace, of the streams whose owner runs (what a viewer or ``ctl`` can reach)."""
    found: dict[str, set[str]] = {}
    for row in list_segments():
        if row["kind"] == "stream" and row["alive"]:
            found.setdefault(row["namespace"], set()).add(row["stream"])
    return found


def describe_live_namespaces(found: dict[str, set[str]] | None = None) -> str:
    """'running namespaces: demo (3 streams), ao (12 streams)' or 'no pipeline is running here'."""
    found = live_streams() if found is None else found
    if not found:
        return "no pipeline is running here"
    return "running namespaces: " + ", ".join(f"{ns} ({len(names)} stream{'s' * (len(names) != 1)})"
                                              for ns, names in sorted(found.items()))


@dataclass
class Removal:
    """What ``remove_segments`` did: segments removed, and those left with the reason."""

    removed: list[str] = field(default_factory=list)
    live: dict[int, list[dict]] = field(default_factory=dict)   # owner pid -> its rows
    needs_force: list[dict] = field(default_factory=list)       # kept or unreadable, owner gone

    def messages(self) -> list[str]:
        """One line per reason something was left (empty when nothing was)."""
        lines = []
        for pid, rows in sorted(self.live.items()):
            namespaces = sorted({row["namespace"] for row in rows})
            stop = " or ".join(f"`shmpiped ctl --namespace {ns} stop`" for ns in namespaces)
            who = f"pid {pid} ({command_line(pid)})" if pid else "a running process"
            lines.append(f"kept {len(rows)} segment(s) of namespace {', '.join(map(repr, namespaces))}: they "
                         f"belong to {who}, which is running: stop it first ({stop} for a daemon, "
                         f"else `kill {pid or 'PID'}`); shm rm never removes a live owner's segments, "
                         "--force included")
        if self.needs_force:
            names = ", ".join(row["segment"] for row in self.needs_force[:5])
            more = f" and {len(self.needs_force) - 5} more" if len(self.needs_force) > 5 else ""
            lines.append(f"kept {len(self.needs_force)} segment(s) whose owner is gone but that were "
                         f"kept on purpose (shutdown(unlink=False)) or cannot be read ({names}{more}): "
                         "add --force to remove them")
        return lines


def remove_segments(namespace: str | None = None, force: bool = False) -> Removal:
    """Remove the segments of ``namespace`` (every namespace: None) whose owner is gone: stale ones,
    and with ``force`` kept or unreadable ones too.  Never a segment some live process holds."""
    removal = Removal()
    for row in list_segments(namespace):
        if row["alive"]:
            holders = lock_holders(os.path.join(layout.DEV_SHM, row["segment"]))
            owner = row["owner_pid"] if row["owner_pid"] in holders or not holders else holders[0]
            removal.live.setdefault(owner or 0, []).append(row)
            continue
        if not row["stale"] and not force:
            removal.needs_force.append(row)
            continue
        if unlink_unless_held(row["segment"]):
            removal.removed.append(row["segment"])
        elif os.path.exists(os.path.join(layout.DEV_SHM, row["segment"])):  # its owner came back meanwhile
            holders = lock_holders(os.path.join(layout.DEV_SHM, row["segment"]))
            removal.live.setdefault(holders[0] if holders else 0, []).append(row)
    return removal


# ----------------------------------------------------------------------------- footprint


def stream_bytes(spec, slots: int = layout.DEFAULT_SLOTS) -> int:
    """Bytes of /dev/shm one stream of ``spec`` takes (a GPU stream without a mirror keeps no payload there)."""
    nbytes = int(math.prod(spec.shape)) * spec.dtype.itemsize
    on_host = spec.storage != "gpu" or bool(spec.cpu_mirror)
    return layout.HEADER_SIZE + slots * layout.slot_stride(nbytes if on_host else 0)


def shm_footprint(config, slots: int = layout.DEFAULT_SLOTS) -> dict:
    """Bytes of /dev/shm a pipeline (a PipelineConfig) takes at most: ``{"namespace_block", "streams":
    {name: bytes}, "total"}`` (in a shared namespace, the pipeline's own block and the 4 KiB marker)."""
    from .shm.telemetry import NamespaceBlock

    blocks = NamespaceBlock.SIZE + (layout.HEADER_SIZE if config.namespace is None else 0)
    streams = {spec.name: stream_bytes(spec, slots) for spec in config.shared_memory}
    return {"namespace_block": blocks, "streams": streams, "total": blocks + sum(streams.values())}


def room_left(path: str = layout.DEV_SHM) -> int | None:
    """Bytes free in ``path`` (None when it cannot be inspected)."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    return fs.f_bavail * fs.f_frsize


def check_room(config, slots: int = layout.DEFAULT_SLOTS) -> None:
    """Raise SharedMemoryError (saying the total and the fix) when the segments ``config`` would create
    do not fit /dev/shm; segments that exist already (kept streams, the namespace's block) need no room."""
    from .errors import SharedMemoryError

    footprint = shm_footprint(config, slots)
    existing = set(os.listdir(layout.DEV_SHM)) if os.path.isdir(layout.DEV_SHM) else set()
    needed = sum(size for name, size in footprint["streams"].items()
                 if layout.stream_segment_name(config.namespace, name) not in existing)
    if layout.namespace_segment_name(config.namespace) not in existing or config.namespace is None:
        needed += footprint["namespace_block"]
    free = room_left()
    if free is not None and needed > free:
        raise SharedMemoryError(errno.ENOSPC, no_room_message(config, slots))


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def no_room_message(config, slots: int = layout.DEFAULT_SLOTS, path: str = layout.DEV_SHM) -> str:
    """Why a pipeline does not fit /dev/shm, with the total it needs and how to give it that."""
    footprint = shm_footprint(config, slots)
    total = footprint["total"]
    try:
        fs = os.statvfs(path)
        room = f"{path} has {_mib(fs.f_bavail * fs.f_frsize)} free of {_mib(fs.f_blocks * fs.f_frsize)}"
    except OSError:
        room = f"{path} cannot be inspected"
    shared = " (own block + the shared namespace's marker)" if config.namespace is None else ""
    suggested = math.ceil(total / 2**20) + 1
    return (f"pipeline {config.namespace or layout.DEFAULT_NAMESPACE!r} needs {total} bytes ({_mib(total)}) "
            f"of {path}: {footprint['namespace_block']} for its namespace block{shared} + "
            f"{sum(footprint['streams'].values())} for its {len(footprint['streams'])} streams; {room}. "
            f"Give it more: in Docker --shm-size={suggested}m or more (or --ipc=host to use the host's), "
            "in Kubernetes a memory-backed emptyDir at /dev/shm with a sizeLimit at least that large")
