"""The control plane's event stream: what changed between two snapshots, numbered, kept, fanned out.

The daemon's main loop calls ``EventHub.observe(previous, current)`` once per
published snapshot (10 Hz, never per frame): it compares the two and publishes
one event per change -- ``state`` (the pipeline's state), ``worker`` (a
worker's health), ``failure`` (a new failure record), ``restart`` (workers
respawned), ``reload`` (a reload's outcome) -- and the daemon publishes a
``command`` event for each control command it ran, plus shmpipeline's
``snapshot`` event (``{"reason": COMMAND, "snapshot": ...}``) after a command.

Every event gets the next integer id and goes into a bounded ring (the
backlog a client that reconnects with ``Last-Event-ID`` is replayed from) and
into each subscriber's bounded queue.  Publishing never blocks: a subscriber
whose queue is full is marked overflowed and its connection is closed by its
own thread (it may reconnect with ``Last-Event-ID``).  At most
``max_subscribers`` are served; one more is refused (HTTP 503).
"""

from __future__ import annotations

import collections
import queue
import threading
import time

__all__ = ["EventHub", "Subscription", "TooManySubscribers", "snapshot_changes"]

BACKLOG_EVENTS = 512
QUEUE_EVENTS = 256
MAX_SUBSCRIBERS = 16


class TooManySubscribers(RuntimeError):
    pass


class Subscription:
    """One client's queue; ``overflowed`` once it fell ``QUEUE_EVENTS`` behind (it must then disconnect)."""

    def __init__(self, maxsize: int):
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.overflowed = False
        self.closed = False

    def get(self, timeout: float):
        """The next event, or None after ``timeout`` seconds or once the hub closed."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    def __init__(self, backlog: int = BACKLOG_EVENTS, queue_events: int = QUEUE_EVENTS,
                 max_subscribers: int = MAX_SUBSCRIBERS):
        self._lock = threading.Lock()
        self._ring: collections.deque = collections.deque(maxlen=backlog)
        self._subscribers: set[Subscription] = set()
        self._next_id = 1
        self.queue_events = queue_events
        self.max_subscribers = max_subscribers
        self.dropped_subscribers_total = 0
        self.closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, name: str, data: dict) -> dict:
        """Number ``data`` as event ``name``, keep it and hand it to every subscriber; never blocks."""
        with self._lock:
            event = {"id": self._next_id, "event": name, "data": data}
            self._next_id += 1
            self._ring.append(event)
            for subscription in self._subscribers:
                if subscription.overflowed:
                    continue
                try:
                    subscription.queue.put_nowait(event)
                except queue.Full:
                    subscription.overflowed = True
                    self.dropped_subscribers_total += 1
        return event

    def subscribe(self, last_event_id: int | None = None) -> tuple[Subscription, list[dict]]:
        """A new subscription and the kept events after ``last_event_id`` (none when it is None)."""
        with self._lock:
            if self.closed:
                raise TooManySubscribers("the daemon is stopping")
            if len(self._subscribers) >= self.max_subscribers:
                raise TooManySubscribers(
                    f"too many event-stream clients (limit {self.max_subscribers}): close another "
                    "/events connection, or poll /status instead")
            subscription = Subscription(self.queue_events)
            self._subscribers.add(subscription)
            backlog = [] if last_event_id is None else [e for e in self._ring if e["id"] > last_event_id]
        return subscription, backlog

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)
            subscription.closed = True

    def close(self) -> None:
        """End every subscription (their threads see ``closed`` within their keepalive interval)."""
        with self._lock:
            self.closed = True
            for subscription in self._subscribers:
                subscription.closed = True

    def observe(self, previous: dict | None, current: dict) -> None:
        """Publish the changes from ``previous`` to ``current`` (two published snapshots)."""
        for name, data in snapshot_changes(previous, current):
            self.publish(name, data)


def snapshot_changes(previous: dict | None, current: dict) -> list[tuple[str, dict]]:
    """The events between two snapshots, in a fixed order: state, workers, failures, restarts, reload."""
    if not previous or not current:
        return []
    changes: list[tuple[str, dict]] = []
    now = current.get("timestamp", time.time())
    if previous.get("state") != current.get("state"):
        changes.append(("state", {"state": current.get("state"), "previous": previous.get("state"),
                                  "timestamp": now}))
    before_workers = previous.get("workers") or {}
    for name, worker in (current.get("workers") or {}).items():
        old = before_workers.get(name, {}).get("health")
        if old != worker.get("health"):
            changes.append(("worker", {"worker": name, "health": worker.get("health"), "previous": old,
                                       "timestamp": now}))
    before_failures = previous.get("failures") or []
    failures = current.get("failures") or []
    seen = {_failure_key(f) for f in before_failures}
    for failure in failures:
        if _failure_key(failure) not in seen:
            changes.append(("failure", dict(failure)))
    restarted = [name for name, worker in (current.get("workers") or {}).items()
                 if worker.get("restarts", 0) > before_workers.get(name, {}).get("restarts", 0)]
    if restarted:
        changes.append(("restart", {"workers": restarted, "timestamp": now}))
    old_daemon, daemon = previous.get("daemon") or {}, current.get("daemon") or {}
    if (old_daemon.get("last_reload_success_time") != daemon.get("last_reload_success_time")
            or (daemon.get("reload_error") and old_daemon.get("reload_error") != daemon.get("reload_error"))):
        changes.append(("reload", {"ok": daemon.get("reload_error") is None,
                                   "error": daemon.get("reload_error"),
                                   "document_revision": current.get("document_revision"), "timestamp": now}))
    return changes


def _failure_key(failure: dict) -> tuple:
    return failure.get("kernel"), failure.get("pid"), failure.get("type"), failure.get("time")
