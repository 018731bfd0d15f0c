"""Restart policy: back-off, restart budget, watchdog for hung workers, fail-fast verdict.

Pure decisions over a ``status()`` payload and the time; the daemon carries
them out (kill, restart, exit).  Nothing here touches processes or HTTP.

* A worker that failed (died, raised, or was killed by the watchdog) or that
  stopped on its own is restarted after a back-off: ``backoff_initial_s``,
  doubling per consecutive restart up to ``backoff_max_s``.
* A worker that stays healthy (``waiting-input``, ``active`` or ``idle``) for
  ``healthy_reset_s`` gets its back-off reset.
* More than ``budget`` restarts of one worker within ``window_s`` spends its
  budget: the pipeline has failed, and the daemon exits (fail fast) so that
  its orchestrator restarts it cleanly.  So does a segment damaged under the
  pipeline (a ``segment_damaged`` failure): restarts cannot repair it.
  Without fail-fast it stays failed until a reload or an explicit restart
  (``reset()``) gives the budget back.
* A worker whose loop made no progress (``last_metric_age_s``: it touches its
  record every frame and at least every ``read_timeout`` while waiting) for
  longer than its watchdog timeout is hung: it is killed, then restarted like
  any failed worker.  The default timeout is ``max(5 s, 4 x read_timeout)``.
  A worker still ``starting`` after ``start_timeout_s`` is killed the same way.
* A source that runs in a process of its own (``process: true``: its status
  entry has ``process`` and ``health``) is restarted like a worker, within the
  same back-off and budget; it has no watchdog (a source may block in its
  plugin for as long as its device is silent; its ``read_timeout`` bounds that).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

HEALTHY = ("waiting-input", "active", "idle")


@dataclass(frozen=True)
class RestartPolicy:
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    budget: int = 5
    window_s: float = 60.0
    healthy_reset_s: float = 30.0
    watchdog_s: float | None = None  # None: max(5 s, 4 x the worker's read_timeout)
    start_timeout_s: float = 120.0   # a worker still 'starting' after this long is hung in its set-up

    def __post_init__(self) -> None:
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("back-off must be positive and its maximum at least its initial value")
        if self.budget < 0 or self.window_s <= 0:
            raise ValueError("restart budget must be >= 0 and its window positive")
        if self.watchdog_s is not None and self.watchdog_s <= 0:
            raise ValueError("watchdog timeout must be positive")

    def watchdog_for(self, read_timeout: float) -> float:
        return self.watchdog_s if self.watchdog_s is not None else max(5.0, 4.0 * read_timeout)


@dataclass
class _WorkerHistory:
    restarts: collections.deque = field(default_factory=collections.deque)
    backoff_s: float = 0.0
    down_since: float | None = None
    healthy_since: float | None = None
    starting_since: float | None = None


@dataclass(frozen=True)
class Verdict:
    """What the supervisor wants done now."""

    kill: tuple[tuple[str, str], ...] = ()      # (worker, reason): hung workers
    restart: tuple[str, ...] = ()               # workers whose back-off has elapsed
    exhausted: str | None = None                # why the pipeline failed beyond its budget


class Supervisor:
    """Keeps per-worker restart history and turns each status into a Verdict."""

    def __init__(self, policy: RestartPolicy | None = None):
        self.policy = policy or RestartPolicy()
        self._history: dict[str, _WorkerHistory] = collections.defaultdict(_WorkerHistory)
        self.exhausted: str | None = None
        self.restarts_total = 0

    def review(self, status: dict, now: float, read_timeouts: dict[str, float]) -> Verdict:
        """Decide on kills and restarts for one status() payload taken at ``now`` (monotonic)."""
        if status.get("state") not in ("running", "paused", "failed") or self.exhausted:
            return Verdict(exhausted=self.exhausted)
        damaged = next((f for f in status.get("failures", ()) if f.get("type") == "segment_damaged"), None)
        if damaged is not None:  # a segment damaged under the pipeline: no restart can repair it
            self.exhausted = damaged.get("error") or "a segment of the pipeline was damaged"
            return Verdict(exhausted=self.exhausted)
        kill = []
        restart = []
        policy = self.policy
        for name, worker, watched in _supervised(status):
            history = self._history[name]
            health = worker.get("health")
            if health in HEALTHY:
                history.down_since = None
                history.starting_since = None
                if history.healthy_since is None:
                    history.healthy_since = now
                elif now - history.healthy_since >= policy.healthy_reset_s:
                    history.backoff_s = 0.0
                age = worker.get("last_metric_age_s") if watched else None
                timeout = policy.watchdog_for(read_timeouts.get(name, 1.0))
                if age is not None and age > timeout and status.get("state") == "running":
                    kill.append((name, f"no loop progress for {age:.1f} s (watchdog {timeout:g} s)"))
                continue
            if health == "starting":
                history.healthy_since = None
                if history.starting_since is None:
                    history.starting_since = now
                elif watched and now - history.starting_since > policy.start_timeout_s:
                    kill.append((name, f"still starting after {policy.start_timeout_s:g} s"))
                    history.starting_since = None
                continue
            history.starting_since = None
            if health not in ("failed", "stopped"):
                history.healthy_since = None
                continue
            history.healthy_since = None
            if history.down_since is None:
                history.down_since = now
                history.backoff_s = (policy.backoff_initial_s if history.backoff_s == 0
                                     else min(history.backoff_s * 2, policy.backoff_max_s))
            if now - history.down_since < history.backoff_s:
                continue
            while history.restarts and now - history.restarts[0] > policy.window_s:
                history.restarts.popleft()
            if len(history.restarts) >= policy.budget:
                self.exhausted = (f"worker {name!r} failed {len(history.restarts) + 1} times within "
                                  f"{policy.window_s:g} s (budget {policy.budget})")
                return Verdict(exhausted=self.exhausted)
            history.restarts.append(now)
            history.down_since = None
            self.restarts_total += 1
            restart.append(name)
        return Verdict(kill=tuple(kill), restart=tuple(restart))

    def reset(self) -> None:
        """Forget every worker's restart history and a spent budget (after a reload or an explicit
        restart: the operator changed something, so supervision starts afresh)."""
        self._history.clear()
        self.exhausted = None

    def forget(self, name: str) -> None:
        self._history.pop(name, None)


def _supervised(status: dict):
    """(name, entry, watched) of each worker, then of each source running in a process of its own
    (restarted like a worker; ``watched`` False: no watchdog, no start timeout)."""
    for name, worker in status.get("workers", {}).items():
        yield name, worker, True
    for name, source in status.get("sources", {}).items():
        if source.get("process") and "health" in source:
            yield name, source, False
