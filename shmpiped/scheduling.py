"""shmpipeline's ``scheduling`` module: the worker placement policies a ``PipelineManager`` takes.

The policies live in :mod:`shmpiped.placement` (with the CPU pool and the
``cpu:`` and ``realtime.cpus`` rules); this module gives them shmpipeline
1.3.0's names, so ``from shmpipeline.scheduling import
NoAffinityPlacementPolicy`` keeps working.  A policy of one's own needs no
base class: any object with ``cpu_slot_for(*, kernel, index, cpu_count)``
(a CPU index, or None to leave the worker unpinned) and ``describe()`` will do.
"""

from __future__ import annotations

from .placement import NoAffinityPlacementPolicy, PlacementPolicy, RoundRobinPlacementPolicy

#: The contract a placement policy meets (shmpipeline names it ``WorkerPlacementPolicy``).
WorkerPlacementPolicy = PlacementPolicy

__all__ = ["NoAffinityPlacementPolicy", "RoundRobinPlacementPolicy", "WorkerPlacementPolicy",
           "normalize_placement_policy"]


def normalize_placement_policy(policy: PlacementPolicy | None) -> PlacementPolicy:
    """``policy``, or the default (round-robin over the CPUs the pipeline may use) when None."""
    return RoundRobinPlacementPolicy() if policy is None else policy
