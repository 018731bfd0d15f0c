"""Source and sink controllers: the manager-owned threads that run endpoint plugins (spec 10.5).

A ``SourceController`` drives a ``Source`` plugin: single-stream sources
``read()`` a payload that the controller writes with ``stream.write``;
multi-stream sources ``produce(writers)`` themselves.  A ``SinkController``
waits for each new publication of its stream, reads it consistently into a
private copy and hands it to ``Sink.consume_publication`` together with the
writers of the sink's declared outputs.

Both controllers:

- give the plugin their stop and pause events, so the plugin's ``wait()``,
  ``stop_requested()`` and ``paused()`` work, for plugins written for
  shmpiped and for shmpipeline's own base classes alike (a stop event that
  is already in the context is adopted as the controller's own);
- wrap each plugin call in the optional soft timeout (spec 7) - the call runs
  on a dedicated daemon thread and is abandoned, still running, if it
  overruns: ``TimeoutError("<label> exceeded its <t:g>s timeout")``;
- turn any exception into ``last_error``, ``traceback`` and a ``failure``
  record (spec 7), end the thread and still call ``close()``;
- keep lifetime counts and a rolling throughput over the last 1000
  completions (spec 5), reported by ``snapshot()`` with the keys of spec 6.1.

The manager calls ``start()`` (which calls the plugin's ``open()`` in the
calling thread first), ``snapshot()`` while running, ``take_failure()`` (or
reads ``failure``) when polling, and ``stop(timeout)``.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
import traceback as traceback_module
from collections import deque
from typing import Any, Callable, Mapping

import numpy

from shmpiped.kernels.base import context_with_events
from shmpiped.shm.pyshmem_style import Publication

__all__ = [
    "ROLLING_METRICS_WINDOW",
    "Publication",
    "RateMeter",
    "SinkController",
    "SourceController",
    "read_publication",
]

ROLLING_METRICS_WINDOW = 1000
#: Longest single wait on a stream, so a stop request is seen promptly.
WAIT_SLICE_S = 0.1


# --------------------------------------------------------------------------- rates


class RateMeter:
    """Lifetime completions plus the rolling throughput of spec 5.

    ``throughput_hz`` is ``(n - 1) / (t_last - t_first)`` over the last
    ``window`` completion times (0.0 when n < 2 or the span is <= 0);
    ``effective_rate_hz`` is ``count / elapsed`` since ``start()`` (0.0
    before), where elapsed stops growing at ``finish()``.
    """

    def __init__(self, window: int = ROLLING_METRICS_WINDOW):
        self.count = 0
        self._times: deque[float] = deque(maxlen=window)
        self._started: float | None = None
        self._finished: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()
        self._finished = None

    def finish(self) -> None:
        if self._started is not None and self._finished is None:
            self._finished = time.perf_counter()

    def record(self, n: int = 1, now: float | None = None) -> None:
        self.count += n
        self._times.append(time.perf_counter() if now is None else now)

    @property
    def window(self) -> int:
        return len(self._times)

    def throughput_hz(self) -> float:
        times = self._times
        n = len(times)
        if n < 2:
            return 0.0
        span = times[-1] - times[0]
        return (n - 1) / span if span > 0 else 0.0

    def effective_rate_hz(self) -> float:
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else time.perf_counter()
        return self.count / max(end - self._started, 1e-12)


# --------------------------------------------------------------------------- publications


def read_publication(stream, last_seen: int) -> Publication:
    """Copy the newest publication of ``stream`` (count > ``last_seen``) consistently.

    Retries when the writer laps the copy, so the payload and its slot
    metadata always belong to the same publication.
    """
    while True:
        count, view = stream.latest()
        if view is None:
            raise LookupError(f"stream {stream.name!r} has no publication yet")
        payload = numpy.array(view, copy=True)
        frame_id, origin_ns, write_mono_ns = stream.slot_metadata(count)
        if stream.still_valid(count):
            break
    write_time = None
    if write_mono_ns:
        write_time = time.time() - (time.monotonic_ns() - write_mono_ns) / 1e9
    return Publication(
        payload=payload,
        count=count,
        frame_id=frame_id,
        write_time=write_time,
        missed_publications=max(0, count - last_seen - 1),
        origin_ns=origin_ns,
        stream=stream.name,
    )


# --------------------------------------------------------------------------- soft timeouts


class _CallRunner:
    """Runs plugin calls one at a time on a dedicated daemon thread (soft timeouts).

    A call that overruns is left running; the runner is then abandoned (the
    controller stops after a timeout), and being a daemon thread it never
    blocks interpreter exit.
    """

    def __init__(self, name: str):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            future, function, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

    def call(self, function: Callable, args: tuple, timeout: float, label: str):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, function, args))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # finished in the instant after the timeout
                return future.result()
            raise TimeoutError(f"{label} exceeded its {timeout:g}s timeout") from None

    def close(self) -> None:
        self._calls.put(None)


# --------------------------------------------------------------------------- controllers


def _bind_events(plugin, stop_event: threading.Event, pause_event: threading.Event) -> None:
    """Give the plugin the controller's stop and pause events.

    Plugins derived from shmpiped's or from shmpipeline's base classes take
    them through ``_attach_runtime_events`` (their ``wait``, ``stop_requested``
    and ``paused`` read them); any other plugin gets them in its context.
    """
    attach = getattr(plugin, "_attach_runtime_events", None)
    if callable(attach):
        attach(stop_event=stop_event, pause_event=pause_event)
        return
    context = getattr(plugin, "context", None)
    if context is not None:
        plugin.context = context_with_events(context, stop_event, pause_event)


class _EndpointController:
    """What source and sink controllers share: thread, events, timeouts, failure."""

    component_type = "endpoint"

    def __init__(self, config, plugin, pause_event: threading.Event | None, call_timeout):
        self.config = config
        self.plugin = plugin
        self.name = config.name
        self.kind = config.kind
        context = getattr(plugin, "context", None)
        if pause_event is None:
            pause_event = getattr(context, "pause_event", None) or threading.Event()
        self.pause_event = pause_event
        # A stop event the registry already put in the context is adopted, so
        # setting either the manager's event or calling stop() ends the thread.
        self._stop = getattr(context, "stop_event", None) or threading.Event()
        self._lock = threading.Lock()
        self._meter = RateMeter()
        self._call_timeout = call_timeout
        self._runner: _CallRunner | None = None
        self._failure: dict | None = None
        self._failure_taken = False
        self.started_at: float | None = None
        self.last_error: str | None = None
        self.traceback: str | None = None
        _bind_events(plugin, self._stop, self.pause_event)
        self._thread = threading.Thread(
            target=self._main, name=f"shmpiped-{self.component_type}-{self.name}", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

    def start(self) -> None:
        """Call the plugin's ``open()`` here, then start the thread.

        An exception from ``open()`` propagates to the caller (no thread starts).
        """
        if self._thread.ident is not None:
            raise RuntimeError(f"{self.component_type} {self.name!r} was already started")
        self.plugin.open()
        if self._call_timeout is not None:
            self._runner = _CallRunner(f"shmpiped-{self.component_type}-{self.name}-call")
        self.started_at = time.time()
        self._meter.start()
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Request a stop and wait up to ``timeout``; True when the thread has ended."""
        self._stop.set()
        self._wake()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _wake(self) -> None:
        """Hook: interrupt a blocking wait of the thread (sinks)."""

    # -- failure -----------------------------------------------------------------
    @property
    def failure(self) -> dict | None:
        """The failure record (spec 7) once the thread ended on an exception, else None."""
        return self._failure

    def take_failure(self) -> dict | None:
        """The failure record the first time it is asked for after a failure, else None."""
        with self._lock:
            if self._failure is None or self._failure_taken:
                return None
            self._failure_taken = True
            return dict(self._failure)

    def _failure_record(self) -> dict:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        self.last_error = str(exc) or type(exc).__name__
        self.traceback = traceback_module.format_exc()
        record = self._failure_record()
        record.update(error=self.last_error, traceback=self.traceback, time=time.time())
        self._failure = record

    # -- the thread ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, not raised
            self._fail(exc)
        finally:
            self._meter.finish()
            if self._runner is not None:
                self._runner.close()
            try:
                self.plugin.close()
            except Exception as exc:  # noqa: BLE001
                if self._failure is None:
                    self._fail(exc)

    def _loop(self) -> None:
        raise NotImplementedError

    def _call(self, function: Callable, args: tuple, label: str):
        if self._runner is None:
            return function(*args)
        return self._runner.call(function, args, self._call_timeout, label)

    def _plugin_metrics(self) -> dict:
        try:
            return dict(self.plugin.plugin_metrics() or {})
        except Exception as exc:  # noqa: BLE001 - metrics must never break status()
            return {"error": str(exc) or type(exc).__name__}


class SourceController(_EndpointController):
    """Runs one ``Source`` plugin in a daemon thread ``shmpiped-source-<name>``.

    ``streams`` maps stream names to the manager's writable handles and must
    hold every stream in ``config.streams``.  Loop: paused -> wait
    ``poll_interval``; one output -> ``read()`` and write a non-None payload;
    several -> ``produce(writers)``, a falsy result meaning "nothing yet".
    """

    component_type = "source"

    def __init__(self, config, source, streams: Mapping[str, Any],
                 pause_event: threading.Event | None = None):
        missing = [name for name in config.streams if name not in streams]
        if missing:
            raise KeyError(f"source {config.name!r} has no stream handle for: {', '.join(missing)}")
        self.writers = {name: streams[name] for name in config.streams}
        self.stream = self.writers[config.streams[0]]
        # A source with ``writes_own_streams`` (pyshmem.source) publishes through produce() even with
        # one stream, to stamp the frame id and origin time it read.
        self.multi_output = len(config.streams) > 1 or bool(getattr(source, "writes_own_streams", False))
        self.poll_interval = float(config.poll_interval)
        self.last_write_time: float | None = None
        self.last_write_duration_ms: float | None = None
        super().__init__(config, source, pause_event, config.read_timeout)
        self._read_label = f"source {self.name!r} read()"
        self._produce_label = f"source {self.name!r} produce()"

    @property
    def frames_written(self) -> int:
        return self._meter.count

    def _loop(self) -> None:
        stop, paused, idle = self._stop, self.pause_event, self.poll_interval
        source = self.plugin
        while not stop.is_set():
            if paused.is_set():
                stop.wait(idle)
                continue
            if self.multi_output:
                began = time.perf_counter()
                generations = self._call(source.produce, (self.writers,), self._produce_label)
                if not generations:
                    stop.wait(idle)
                    continue
                self._completed(int(generations), began)
            else:
                payload = self._call(source.read, (), self._read_label)
                if payload is None:
                    stop.wait(idle)
                    continue
                began = time.perf_counter()
                self.stream.write(payload)
                self._completed(1, began)

    def _completed(self, n: int, began: float) -> None:
        finished = time.perf_counter()
        with self._lock:
            self._meter.record(n, finished)
            self.last_write_time = time.time()
            self.last_write_duration_ms = (finished - began) * 1e3

    def _failure_record(self) -> dict:
        return {
            "type": "source_failed",
            "kernel": self.name,
            "component_type": "source",
            "kind": self.kind,
            "stream": self.config.stream,
        }

    def snapshot(self) -> dict:
        with self._lock:
            count = self._meter.count
            return {
                "name": self.name,
                "kind": self.kind,
                "stream": self.config.stream,
                "streams": list(self.config.streams),
                "coordinated_generation_count": count,
                "poll_interval": self.poll_interval,
                "alive": self.alive,
                "frames_written": count,
                "effective_rate_hz": self._meter.effective_rate_hz(),
                "throughput_hz": self._meter.throughput_hz(),
                "started_at": self.started_at,
                "last_write_time": self.last_write_time,
                "last_write_duration_ms": self.last_write_duration_ms,
                "last_error": self.last_error,
                "plugin_metrics": self._plugin_metrics(),
            }


class SinkController(_EndpointController):
    """Runs one ``Sink`` plugin in a daemon thread ``shmpiped-sink-<name>``.

    ``streams`` must hold the sink's ``stream`` and every name in its
    ``outputs``.  ``last_seen`` starts at the stream's count when the thread
    starts, so only later publications are consumed.  Each wait lasts at most
    ``read_timeout`` (a timeout just loops again); each new publication is
    read into a private copy and passed to ``consume_publication(publication,
    writers)``.  Missed publications (the sink was slower than the writer)
    add up in ``missed_writes``.
    """

    component_type = "sink"

    def __init__(self, config, sink, streams: Mapping[str, Any],
                 pause_event: threading.Event | None = None):
        missing = [name for name in (config.stream, *config.outputs) if name not in streams]
        if missing:
            raise KeyError(f"sink {config.name!r} has no stream handle for: {', '.join(missing)}")
        self.stream = streams[config.stream]
        self.writers = {name: streams[name] for name in config.outputs}
        self.read_timeout = float(config.read_timeout)
        self.pause_sleep = float(config.pause_sleep)
        self.missed_writes = 0
        self.last_seen: int | None = None
        self.last_read_time: float | None = None
        self.last_read_duration_ms: float | None = None
        super().__init__(config, sink, pause_event, config.consume_timeout)
        self._consume_label = f"sink {self.name!r} consume()"

    @property
    def frames_consumed(self) -> int:
        return self._meter.count

    def _wake(self) -> None:
        wake = getattr(self.stream, "wake_all", None)
        if wake is not None and not getattr(self.stream, "closed", False):
            try:
                wake()
            except Exception:  # noqa: BLE001 - best effort; the wait is sliced anyway
                pass

    def _wait_once(self, after: int, timeout: float) -> int:
        """One bounded wait (returns early on a publication or a stop's wake-up)."""
        wait_once = getattr(self.stream, "wait_once", None)
        if wait_once is not None:
            return wait_once(after, timeout)
        try:
            return self.stream.wait(after, timeout=timeout)
        except TimeoutError:
            return after

    def _await(self, after: int) -> int | None:
        """The count once it passes ``after``; None on stop or after ``read_timeout``."""
        deadline = time.monotonic() + self.read_timeout
        stop = self._stop
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            count = self._wait_once(after, min(remaining, WAIT_SLICE_S))
            if count > after:
                return count
        return None

    def _loop(self) -> None:
        stop, paused = self._stop, self.pause_event
        sink, stream, writers = self.plugin, self.stream, self.writers
        self.last_seen = stream.count
        while not stop.is_set():
            if paused.is_set():
                stop.wait(self.pause_sleep)
                continue
            count = self._await(self.last_seen)
            if count is None or count <= self.last_seen:
                continue
            publication = read_publication(stream, self.last_seen)
            began = time.perf_counter()
            self._call(sink.consume_publication, (publication, writers), self._consume_label)
            finished = time.perf_counter()
            with self._lock:
                self.last_seen = publication.count
                self.missed_writes += publication.missed_publications
                self._meter.record(1, finished)
                self.last_read_time = time.time()
                self.last_read_duration_ms = (finished - began) * 1e3

    def _failure_record(self) -> dict:
        return {
            "type": "sink_failed",
            "kernel": self.name,
            "component_type": "sink",
            "kind": self.kind,
            "stream": self.config.stream,
            "outputs": list(self.config.outputs),
        }

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "name": self.name,
                "kind": self.kind,
                "stream": self.config.stream,
                "outputs": list(self.config.outputs),
                "read_timeout": self.read_timeout,
                "pause_sleep": self.pause_sleep,
                "alive": self.alive,
                "frames_consumed": self._meter.count,
                "missed_writes": self.missed_writes,
                "effective_rate_hz": self._meter.effective_rate_hz(),
                "throughput_hz": self._meter.throughput_hz(),
                "started_at": self.started_at,
                "last_read_time": self.last_read_time,
                "last_read_duration_ms": self.last_read_duration_ms,
                "last_error": self.last_error,
                "plugin_metrics": self._plugin_metrics(),
            }
