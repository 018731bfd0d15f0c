"""What worker processes write (stdout, stderr), re-emitted as log records of the manager's process.

A worker is a separate interpreter: a kernel's ``print``, a NumPy warning, a
C library's message or the worker's own failure report would otherwise land
raw on the stderr it inherited, in between the daemon's formatted log lines
(``--log-format json`` would no longer be one JSON object per line).  When
the relay is on (``relay_worker_output()``; the ``shmpiped`` command line
turns it on in ``configure_logging``), ``WorkerPool.spawn`` gives each worker
a pipe for its stdout and one for its stderr, and one reader thread here
turns what arrives into records of the logger ``shmpiped.worker.<kernel>``:

* a stdout line is an INFO record, a stderr line a WARNING record;
* lines that continue the previous one (indented, such as a warning's source
  line or the rows of a printed array) join its record; a Python traceback
  (``Traceback (most recent call last):`` to its exception line, chained ones
  included) is one ERROR record whose message is the exception line and whose
  exception text is the traceback;
* the worker's own failure report arrives as one framed line
  (``format_event_line``) and becomes one ERROR record with the traceback
  inside.

Nothing is added to the worker's loop: a worker that never writes never
touches the pipes.  A worker that writes a lot must never block on a full
pipe, so the reader drains every pipe as data arrives and never waits for the
log handlers: it keeps at most ``rate`` records a second per worker (after a
burst of ``burst``), drops and counts the rest (saying so once per worker, and
how many at the worker's end), and hands records to the handlers through a
bounded queue emptied by a second thread (a stalled stderr loses records,
counted, instead of stalling the workers).  Framed failure reports are never
rate-limited.  Without the relay, workers inherit the manager's stdout and
stderr, as shmpipeline's do.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import queue
import selectors
import subprocess
import threading
import time

__all__ = ["RELAY_VARIABLE", "WorkerOutputRelay", "format_event_line", "relay", "relay_worker_output"]

#: Set (to "1") in the environment of a worker whose output is relayed: it then frames its failure report.
RELAY_VARIABLE = "SHMPIPED_WORKER_OUTPUT_RELAYED"
#: First characters of a framed event line (ASCII record separator, then a tag); the rest is one JSON object.
EVENT_PREFIX = "\x1eshmpiped-event "
_EVENT_PREFIX_BYTES = EVENT_PREFIX.encode()

MAX_LINE_BYTES = 16 * 1024       # a longer line is cut (and says so)
MAX_RECORD_LINES = 400           # lines joined into one record at most
QUIET_FLUSH_S = 0.05             # a record still open (continuation lines may follow) is emitted after this
DEFAULT_RATE = 50.0              # records a second per worker, after the burst
DEFAULT_BURST = 200
QUEUE_SIZE = 2000                # records waiting for the handlers
PIPE_BYTES = 1 << 20             # asked of the kernel for each pipe (F_SETPIPE_SZ); a smaller grant is fine
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_TRACEBACK_START = "Traceback (most recent call last):"
_CHAIN_LINES = ("During handling of the above exception, another exception occurred:",
                "The above exception was the direct cause of the following exception:")

log = logging.getLogger("shmpiped.worker_output")


def format_event_line(level: str, message: str, traceback: str | None = None) -> str:
    """One line a relayed worker writes for an event that must stay whole (its failure report)."""
    return EVENT_PREFIX + json.dumps({"level": level, "message": message, "traceback": traceback}) + "\n"


def _parse_event_line(line: str) -> dict | None:
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("message"), str) else None


class _TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def available(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1.0

    def take(self) -> bool:
        if self.available():
            self.tokens -= 1.0
            return True
        return False


class _Source:
    """One worker's pipe (stdout or stderr): a byte buffer, and the record being assembled."""

    def __init__(self, worker: "_Worker", output: str, level: int, fileobj):
        self.worker = worker
        self.output = output
        self.level = level
        self.fileobj = fileobj
        self.partial = bytearray()
        self.lines: list[str] = []      # the record being assembled
        self.first_at = 0.0             # time.time() its first line arrived
        self.traceback = False          # inside a traceback (its stack lines, chained ones)
        self.after_exception = False    # a traceback's exception line was seen; a chain may follow
        self.updated = 0.0

    # -- bytes -> lines
    def feed(self, data: bytes) -> None:
        self.updated = time.monotonic()
        if not self.worker.bucket.available() and b"\x1e" not in data and b"\n" in data:
            # Over the rate with no framed event: count the lines, look at none of them.
            cut = data.rfind(b"\n")
            self.worker.note_dropped(data.count(b"\n", 0, cut) + 1)
            self.partial.clear()
            self.partial += data[cut + 1:]
            return
        self.partial += data
        start = 0
        while True:
            end = self.partial.find(b"\n", start)
            if end < 0:
                break
            self._line(bytes(self.partial[start:end]))
            start = end + 1
        del self.partial[:start]
        if len(self.partial) > MAX_LINE_BYTES:
            cut = len(self.partial) - MAX_LINE_BYTES
            self._line(bytes(self.partial[:MAX_LINE_BYTES]), cut=cut)
            self.partial.clear()

    def end(self) -> None:
        if self.partial:
            self._line(bytes(self.partial))
            self.partial.clear()
        self.flush()

    # -- lines -> records
    def _line(self, raw: bytes, cut: int = 0) -> None:
        if raw.startswith(_EVENT_PREFIX_BYTES):
            self.flush()
            event = _parse_event_line(raw.decode("utf-8", "replace"))
            if event is not None:
                self.worker.relay._emit_event(self, event)
                return
        if not self.worker.bucket.take():
            self.worker.note_dropped(1)
            return
        if len(raw) > MAX_LINE_BYTES:
            cut += len(raw) - MAX_LINE_BYTES
            raw = raw[:MAX_LINE_BYTES]
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if cut:
            line += f" [... {cut} more bytes cut]"
        if self._continues(line) and len(self.lines) < MAX_RECORD_LINES:
            self.lines.append(line)
            self.worker.bucket.tokens += 1.0   # a continuation costs no record
            return
        self.flush()
        self.lines = [line]
        self.first_at = time.time()
        self.traceback = line.startswith(_TRACEBACK_START)

    def _continues(self, line: str) -> bool:
        if not self.lines:
            return False
        indented = line[:1] in (" ", "\t")
        if self.traceback:
            if not indented and line and not line.startswith(_TRACEBACK_START):
                self.traceback = False       # the exception line closes the stack...
                self.after_exception = True  # ...but a chained traceback may follow
            return True
        if self.after_exception:
            if line == "" or line in _CHAIN_LINES:
                return True
            if line.startswith(_TRACEBACK_START):
                self.traceback = True
                self.after_exception = False
                return True
            self.after_exception = False
        return indented

    def flush(self) -> None:
        lines = self.lines
        if not lines:
            return
        while lines and not lines[-1].strip():
            lines.pop()
        self.lines = []
        is_traceback = self.traceback or self.after_exception
        self.traceback = self.after_exception = False
        if not lines:
            return
        if is_traceback:
            message = next((line for line in reversed(lines) if line and not line[:1].isspace()), lines[0])
            self.worker.relay._emit(self, logging.ERROR, message, "\n".join(lines), self.first_at)
        else:
            self.worker.relay._emit(self, self.level, "\n".join(lines), None, self.first_at)


class _Worker:
    """The relay's state for one worker process."""

    def __init__(self, relay: "WorkerOutputRelay", name: str, process: subprocess.Popen):
        self.relay = relay
        self.name = name
        self.process = process
        self.pid = process.pid
        self.logger = logging.getLogger(f"shmpiped.worker.{name}")
        self.bucket = _TokenBucket(relay.rate, relay.burst)
        self.dropped = 0
        self.open_sources = 0

    def note_dropped(self, lines: int) -> None:
        if self.name not in self.relay.warned:  # once per kernel, restarts included
            self.relay.warned.add(self.name)
            self.relay._emit_note(self, logging.WARNING,
                                  f"worker {self.name!r} (pid {self.pid}) writes more than {self.relay.rate:g} "
                                  "lines a second: lines beyond that are dropped and counted (printing per frame "
                                  "costs the loop its latency)")
        self.dropped += lines
        self.relay.dropped_total += lines


class WorkerOutputRelay:
    """Reads the pipes of the workers it follows and logs what they write (see the module docstring)."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, queue_size: int = QUEUE_SIZE):
        self.rate = rate
        self.burst = burst
        self.enabled = False
        self.dropped_total = 0          # lines dropped by the rate limit, all workers
        self.queue_dropped = 0          # records dropped because the handlers fell behind
        self._records: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._reader: threading.Thread | None = None
        self._emitter: threading.Thread | None = None
        self._pending: list = []        # (fileobj, _Source) to register, handed to the reader thread
        self._sources: set = set()
        self._workers: dict[str, _Worker] = {}   # kernel name -> its latest process
        self.warned: set[str] = set()            # kernels told about the rate limit
        self._at_exit = False

    # -- the spawning side --------------------------------------------------------
    def spawn_options(self) -> tuple[dict, dict]:
        """(Popen arguments, environment variables) of a worker started now: its pipes and the relay
        marker when the relay is on, else nothing (the worker inherits this process's stdout and stderr)."""
        if not self.enabled:
            return {}, {}
        return {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}, {RELAY_VARIABLE: "1"}

    def follow(self, process: subprocess.Popen, name: str) -> None:
        """Relay what ``process`` (started with ``spawn_options()``) writes, as worker ``name``."""
        pipes = [(p, output, level) for p, output, level in
                 ((process.stdout, "stdout", logging.INFO), (process.stderr, "stderr", logging.WARNING))
                 if p is not None]
        if not pipes:
            return
        worker = _Worker(self, name, process)
        process.stdout = process.stderr = None   # the relay owns and closes them
        with self._lock:
            self._start_threads()
            for fileobj, output, level in pipes:
                try:
                    fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
                except OSError:
                    pass  # above /proc/sys/fs/pipe-max-size: the default 64 KiB will do
                os.set_blocking(fileobj.fileno(), False)
                worker.open_sources += 1
                self._pending.append(_Source(worker, output, level, fileobj))
            self._workers[name] = worker
        os.write(self._wake_w, b"x")

    def dropped(self, name: str) -> int:
        """Lines of worker ``name`` (its latest process) dropped by the rate limit."""
        with self._lock:
            worker = self._workers.get(name)
        return worker.dropped if worker is not None else 0

    def drain(self, timeout: float = 1.0) -> bool:
        """Wait (at most ``timeout`` s) until the pipes of workers that exited are read to their end and
        every record is handed to the handlers; True when nothing is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                sources = (*self._sources, *self._pending)
            unread = any(source.worker.process.poll() is not None for source in sources)
            if not unread and self._records.unfinished_tasks == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- threads ------------------------------------------------------------------------
    def _start_threads(self) -> None:
        if self._reader is not None and self._reader.is_alive():
            return
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._reader = threading.Thread(target=self._read_loop, name="shmpiped-worker-output", daemon=True)
        self._emitter = threading.Thread(target=self._emit_loop, name="shmpiped-worker-log", daemon=True)
        self._reader.start()
        self._emitter.start()
        if not self._at_exit:
            self._at_exit = True
            atexit.register(self.drain)

    def _read_loop(self) -> None:
        selector = self._selector
        while True:
            timeout = QUIET_FLUSH_S if any(s.lines for s in self._sources) else None
            events = selector.select(timeout)
            with self._lock:
                pending, self._pending = self._pending, []
                self._sources.update(pending)
            for source in pending:
                selector.register(source.fileobj, selectors.EVENT_READ, source)
            for key, _ in events:
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                self._read(key.data)
            now = time.monotonic()
            for source in self._sources:
                if source.lines and now - source.updated >= QUIET_FLUSH_S:
                    source.flush()

    def _read(self, source: _Source) -> None:
        try:
            data = os.read(source.fileobj.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            source.feed(data)
            return
        source.end()
        self._selector.unregister(source.fileobj)
        source.fileobj.close()
        with self._lock:
            self._sources.discard(source)
            worker = source.worker
            worker.open_sources -= 1
            if worker.open_sources == 0 and worker.dropped:
                self._emit_note(worker, logging.WARNING, f"worker {worker.name!r} (pid {worker.pid}) ended; "
                                f"{worker.dropped} of its output lines were dropped (rate limit)")

    def _emit_loop(self) -> None:
        while True:
            logger, record = self._records.get()
            try:
                logger.handle(record)
            except Exception:  # noqa: BLE001 - a broken handler must not end the relay
                pass
            finally:
                self._records.task_done()

    # -- records ------------------------------------------------------------------------
    def _emit(self, source: _Source, level: int, message: str, traceback: str | None,
              created: float | None = None) -> None:
        worker = source.worker
        if not worker.logger.isEnabledFor(level):
            return
        record = worker.logger.makeRecord(worker.logger.name, level, "(worker output)", 0, "%s", (message,),
                                          None, extra={"worker": worker.name, "worker_pid": worker.pid,
                                                       "output": source.output})
        if created:  # when the worker wrote it, not when the record was complete
            record.created = created
            record.msecs = (created - int(created)) * 1000
        if traceback:
            record.exc_text = traceback
        self._queue(worker.logger, record)

    def _emit_event(self, source: _Source, event: dict) -> None:
        level = logging.getLevelName(str(event.get("level", "ERROR")).upper())
        level = level if isinstance(level, int) else logging.ERROR
        traceback = event.get("traceback")
        self._emit(source, level, event["message"], traceback if isinstance(traceback, str) else None)

    def _emit_note(self, worker: _Worker, level: int, message: str) -> None:
        record = log.makeRecord(log.name, level, "(worker output)", 0, "%s", (message,), None,
                                extra={"worker": worker.name, "worker_pid": worker.pid})
        self._queue(log, record)

    def _queue(self, logger: logging.Logger, record: logging.LogRecord) -> None:
        try:
            self._records.put_nowait((logger, record))
        except queue.Full:
            self.queue_dropped += 1


#: The relay of this process (one reader thread for every pipeline it runs).
relay = WorkerOutputRelay()


def relay_worker_output(enabled: bool = True) -> None:
    """Relay the output of workers started from now on as log records (see the module docstring)."""
    relay.enabled = enabled
