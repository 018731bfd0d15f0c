"""The real-time part of the configuration model: ``RealtimeConfig`` and ``effective_realtime``.

Owns what the ``realtime:`` block of a pipeline file means (issue 13): the
scheduling policy and priority of the workers (and of sources that run in
their own process), memory locking, the wait strategy and its spin time, and
the CPUs the workers may use; the per-node override mapping a kernel or a
source may give (every key but ``cpus`` and ``required``); and the one rule
that merges the two (``effective_realtime``).  Every key is optional and the
defaults are the plain behaviour: policy ``other``, no locked memory, futex
waits, no CPU set.

The field rules live here once (``field_problem``) so that a directly built
``RealtimeConfig`` and a parsed file refuse the same values with the same
words; ``config_entries`` adds the file and line.  ``config`` re-exports both
names.  Nothing here touches the process: applying settings is
``shmpiped.realtime``'s job.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigValidationError

__all__ = [
    "OVERRIDE_KEYS",
    "POLICIES",
    "REALTIME_KEYS",
    "WAIT_STRATEGIES",
    "RealtimeConfig",
    "effective_realtime",
    "field_problem",
]

REALTIME_KEYS = ("policy", "priority", "lock_memory", "wait", "spin_us", "required", "cpus")
#: What a kernel's or a source's ``realtime:`` may override: ``cpus`` and ``required`` are the pipeline's.
OVERRIDE_KEYS = ("policy", "priority", "lock_memory", "wait", "spin_us")
PIPELINE_ONLY_KEYS = ("cpus", "required")
POLICIES = ("other", "fifo", "rr")
WAIT_STRATEGIES = ("futex", "hybrid", "spin")
DEFAULT_PRIORITY = 50
DEFAULT_SPIN_US = 50
PRIORITY_RANGE = (1, 99)


def _is_bool(value: Any) -> bool:
    return type(value).__name__ in ("bool", "bool_")


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the realtime key ``key`` (None when it is fine).

    The message says what the key accepts; the caller prefixes the owner
    ("realtime", "realtime for kernel 'k'") and appends the location.
    """
    if key == "policy":
        if not isinstance(value, str) or value.strip().lower() not in POLICIES:
            return f"policy must be one of {', '.join(POLICIES)}, got {_show(value)}"
    elif key == "priority":
        low, high = PRIORITY_RANGE
        if not _is_integer(value) or not low <= value <= high:
            return f"priority must be an integer from {low} to {high}, got {_show(value)}"
    elif key in ("lock_memory", "required"):
        if not _is_bool(value):
            return f"{key} must be true or false, got {_show(value)}"
    elif key == "wait":
        if not isinstance(value, str) or value.strip().lower() not in WAIT_STRATEGIES:
            return f"wait must be one of {', '.join(WAIT_STRATEGIES)}, got {_show(value)}"
    elif key == "spin_us":
        if not isinstance(value, numbers.Real) or _is_bool(value) or math.isnan(value) or math.isinf(value):
            return f"spin_us must be a number of microseconds, got {_show(value)}"
        if value < 0:
            return f"spin_us must not be negative, got {_show(value)}"
    elif key == "cpus":
        if not isinstance(value, (list, tuple)) or not value or not all(
                _is_integer(cpu) and cpu >= 0 for cpu in value):
            return f"cpus must be a non-empty list of CPU numbers (integers from 0), got {_show(value)}"
        if len(set(value)) != len(value):
            repeated = sorted({cpu for cpu in value if list(value).count(cpu) > 1})
            return f"cpus must list each CPU once; {', '.join(map(str, repeated))} appears more than once"
    else:
        return f"unsupported field {key!r}"
    return None


def normalised_value(key: str, value: Any) -> Any:
    if key in ("policy", "wait"):
        return value.strip().lower()
    if key == "cpus":
        return tuple(int(cpu) for cpu in value)
    if key == "spin_us":
        return int(value) if float(value).is_integer() else float(value)
    if key in ("lock_memory", "required"):
        return bool(value)
    if key == "priority":
        return int(value)
    return value


def checked_override(owner: str, value: Any) -> dict:
    """A directly constructed node's ``realtime`` override, checked key by key (a file gets located errors)."""
    override = dict(value or {})
    for key, item in override.items():
        problem = (f"unsupported field {key!r} (a node may override {', '.join(OVERRIDE_KEYS)})"
                   if key not in OVERRIDE_KEYS else field_problem(key, item))
        if problem:
            raise ConfigValidationError(f"realtime for {owner}: {problem}")
    return {key: normalised_value(key, item) for key, item in override.items()}


def priority_problem(policy: str, priority_given: bool) -> str | None:
    """The one rule across fields: a priority means something only to fifo and rr."""
    if priority_given and policy == "other":
        return ("priority applies only to policy fifo or rr, and the policy is 'other': set policy: fifo "
                "(or rr), or remove priority")
    return None


@dataclass(frozen=True)
class RealtimeConfig:
    """The real-time settings of a pipeline (its ``realtime:`` block), or of one worker once merged.

    ``priority`` is None for policy ``other`` and defaults to 50 for ``fifo``
    and ``rr``; ``cpus`` None means every CPU the process may use.
    """

    policy: str = "other"
    priority: int | None = None
    lock_memory: bool = False
    wait: str = "futex"
    spin_us: float = DEFAULT_SPIN_US
    required: bool = False
    cpus: tuple[int, ...] | None = None
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = []
        for key in REALTIME_KEYS:
            value = getattr(self, key)
            if value is None and key in ("priority", "cpus"):
                continue
            problem = field_problem(key, value)
            if problem:
                problems.append(f"realtime {problem}")
            else:
                object.__setattr__(self, key, normalised_value(key, value))
        if not problems:
            problem = priority_problem(self.policy, self.priority is not None)
            if problem:
                problems.append(f"realtime {problem}")
        if problems:
            raise ConfigValidationError(problems[0], errors=problems)
        if self.priority is None and self.policy != "other":
            object.__setattr__(self, "priority", DEFAULT_PRIORITY)

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> RealtimeConfig:
        """A ``realtime:`` mapping of the YAML format, validated (every error in one exception)."""
        from .config_loading import realtime_from_mapping

        return realtime_from_mapping(raw)

    @property
    def realtime_policy(self) -> bool:
        """True for fifo and rr (the policies that need CAP_SYS_NICE or RLIMIT_RTPRIO)."""
        return self.policy != "other"

    @property
    def is_default(self) -> bool:
        return self == RealtimeConfig()

    @property
    def spin_s(self) -> float:
        return self.spin_us * 1e-6

    def to_dict(self) -> dict:
        """The keys that differ from the defaults (what a file would say); ``{}`` for the defaults."""
        out: dict[str, Any] = {}
        if self.policy != "other":
            out["policy"] = self.policy
            out["priority"] = self.priority
        if self.lock_memory:
            out["lock_memory"] = True
        if self.wait != "futex":
            out["wait"] = self.wait
        if self.spin_us != DEFAULT_SPIN_US:
            out["spin_us"] = self.spin_us
        if self.required:
            out["required"] = True
        if self.cpus is not None:
            out["cpus"] = list(self.cpus)
        return out

    def as_status(self) -> dict:
        """Every key with its value (status()'s ``realtime.requested``)."""
        return {
            "policy": self.policy, "priority": self.priority, "lock_memory": self.lock_memory,
            "wait": self.wait, "spin_us": self.spin_us, "required": self.required,
            "cpus": None if self.cpus is None else list(self.cpus),
        }


def effective_realtime(pipeline_realtime: RealtimeConfig | None, override: Mapping | None) -> RealtimeConfig:
    """The settings one worker (or one source process) runs with: the pipeline's, then its override.

    ``override`` holds any of ``OVERRIDE_KEYS``.  Setting ``policy: other``
    drops the pipeline's priority; setting fifo/rr over a plain pipeline
    gives priority 50 unless the override names one.  ``cpus`` and
    ``required`` always come from the pipeline.
    """
    base = pipeline_realtime if pipeline_realtime is not None else RealtimeConfig()
    override = dict(override or {})
    unknown = sorted(set(override) - set(OVERRIDE_KEYS), key=str)
    if unknown:
        raise ConfigValidationError(
            f"a per-kernel realtime override may set {', '.join(OVERRIDE_KEYS)}; not "
            + ", ".join(repr(key) for key in unknown))
    values = {key: getattr(base, key) for key in REALTIME_KEYS}
    values.update(override)
    policy = values["policy"]
    if isinstance(policy, str) and policy.strip().lower() == "other" and "priority" not in override:
        values["priority"] = None
    return RealtimeConfig(**values, line=base.line)
