"""CPU placement: which CPU each worker is pinned to, and which CPUs an unpinned one may use.

A kernel's own ``cpu`` wins; otherwise the placement policy decides (the
default round-robin goes over ``realtime.cpus`` when the pipeline gives them,
else over every CPU this process may use, CPUs no kernel is pinned to
first).  ``available_cpus`` is the process's set as it was before the daemon
moved its own threads off the workers' CPUs (``note_service_confinement``),
so confining the supervisor never shrinks where workers go.
"""

from __future__ import annotations

import os

_process_cpus: frozenset[int] | None = None  # the set before the daemon confined its own threads


def _thread_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def available_cpus() -> list[int]:
    """The CPUs this process may run workers on, in order (respects cgroup/taskset limits)."""
    if _process_cpus is not None:
        return sorted(_process_cpus)
    return _thread_cpus()


def note_service_confinement() -> list[int]:
    """Remember the process's CPUs before a daemon thread is confined (first call); returns them."""
    global _process_cpus
    if _process_cpus is None:
        _process_cpus = frozenset(_thread_cpus())
    return sorted(_process_cpus)


def format_cpu_list(cpus) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the kernel's list format)."""
    ordered = sorted(set(cpus))
    parts, start = [], None
    for i, cpu in enumerate(ordered):
        if start is None:
            start = cpu
        if i + 1 == len(ordered) or ordered[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (``Cpus_allowed_list``, ``isolcpus``)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


class PlacementPolicy:
    """Chooses a CPU for a kernel; None leaves the worker unpinned."""

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int) -> int | None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class RoundRobinPlacementPolicy(PlacementPolicy):
    """Kernel ``i`` goes to the ``(i + offset) % n``-th CPU of ``cpus`` (default: those this process may use)."""

    def __init__(self, offset: int = 0, enabled: bool = True):
        self.offset = int(offset)
        self.enabled = bool(enabled)

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int, cpus=None) -> int | None:
        if not self.enabled or cpu_count <= 0:
            return None
        cpus = list(cpus) if cpus else available_cpus()
        return cpus[(index + self.offset) % len(cpus)] if cpus else None

    def describe(self) -> str:
        return "round-robin"


class NoAffinityPlacementPolicy(PlacementPolicy):
    """Never pins: the scheduler places workers."""

    def cpu_slot_for(self, *, kernel, index: int, cpu_count: int) -> int | None:
        return None

    def describe(self) -> str:
        return "none"


def worker_pool(config) -> list[int]:
    """The CPUs ``config``'s workers may use: ``realtime.cpus``, else every CPU of the process."""
    cpus = getattr(getattr(config, "realtime", None), "cpus", None)
    return list(cpus) if cpus else available_cpus()


def place(policy: PlacementPolicy, config, kernel, index: int) -> tuple[int | None, tuple[int, ...]]:
    """``(cpu_slot, affinity)`` of ``kernel`` (the ``index``-th of ``config.kernels``).

    ``cpu_slot`` is the CPU it is pinned to (its ``cpu``, else the policy's
    choice, None when unpinned); ``affinity`` is what the worker sets for
    itself: that CPU, or the pipeline's pool when unpinned.
    """
    pool = worker_pool(config)
    if getattr(kernel, "cpu", None) is not None:
        return kernel.cpu, (kernel.cpu,)
    if isinstance(policy, RoundRobinPlacementPolicy):
        kernels = list(getattr(config, "kernels", ()))
        pinned = {k.cpu for k in kernels if getattr(k, "cpu", None) is not None}
        unpinned = [k.name for k in kernels if getattr(k, "cpu", None) is None]
        order = index if not pinned or kernel.name not in unpinned else unpinned.index(kernel.name)
        ordered = [cpu for cpu in pool if cpu not in pinned] + [cpu for cpu in pool if cpu in pinned]
        slot = policy.cpu_slot_for(kernel=kernel, index=order, cpu_count=len(pool), cpus=ordered)
    else:
        slot = policy.cpu_slot_for(kernel=kernel, index=index, cpu_count=len(pool))
    return slot, ((slot,) if slot is not None else tuple(pool))
