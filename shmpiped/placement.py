"""CPU placement policies: which core each worker is pinned to."""

from __future__ import annotations

import os


def available_cpus() -> list[int]:
    """The CPUs this process may run on, in order (respects cgroup/taskset limits)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class PlacementPolicy:
    """Chooses a CPU for a kernel; None leaves the worker unpinned."""

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int) -> int | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class RoundRobinPlacementPolicy(PlacementPolicy):
    """Kernel ``i`` goes to the ``(i + offset) % n``-th CPU this process may use."""

    def __init__(self, offset: int = 0, enabled: bool = True):
        self.offset = int(offset)
        self.enabled = bool(enabled)

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int) -> int | None:
        if not self.enabled or cpu_count <= 0:
            return None
        cpus = available_cpus()
        return cpus[(index + self.offset) % len(cpus)] if cpus else None

    def describe(self) -> str:
        return "round-robin"


class NoAffinityPlacementPolicy(PlacementPolicy):
    """Never pins: the scheduler places workers."""

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int) -> int | None:
        return None

    def describe(self) -> str:
        return "none"
