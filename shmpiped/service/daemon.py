"""The daemon: process wiring around one PipelineManager.

One main loop (10 Hz) does everything that decides: it reads the pipeline's
status, lets the supervisor kill hung workers and restart failed ones, runs
control commands, reloads on SIGHUP, feeds systemd (READY, STATUS, WATCHDOG)
and swaps in a new immutable snapshot that the HTTP threads serve.  Signal
handlers only set flags; control-socket threads only queue commands for the
loop.  The loop is the only caller of the manager.

Exit statuses: 0 stopped on request; 69 the HTTP address cannot be served;
70 the pipeline failed beyond its restart budget; 73 shared memory could not
be created; 75 the namespace is owned by another live process; 78 invalid
configuration.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..errors import (
    ConfigFileUnreadable,
    ConfigValidationError,
    NamespaceBusyError,
    SharedMemoryError,
    ShmPipelineError,
    StateTransitionError,
    SystemLimitError,
    WorkerProcessError,
)
from .daemon_control import (
    announce_control_plane,
    carry_out,
    command_event,
    load_tokens,
    publish_command_events,
)
from .notify import SystemdNotifier
from .supervisor import RestartPolicy, Supervisor

log = logging.getLogger("shmpiped.daemon")

EXIT_OK = 0
EXIT_NOINPUT = 66      # the pipeline file does not exist or cannot be read
EXIT_UNAVAILABLE = 69  # the HTTP address cannot be served (in use, not permitted)
EXIT_PIPELINE_FAILED = 70
EXIT_CANT_CREATE = 73
EXIT_NAMESPACE_BUSY = 75
EXIT_CONFIG = 78

LOOP_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
START_EXTEND_S = 30.0  # EXTEND_TIMEOUT_USEC granted while workers are still starting
COMMAND_TIMEOUT_S = 30.0
EXHAUSTED_LOG_INTERVAL_S = 60.0  # a pipeline left failed (--no-fail-fast) is reported this often, not every loop


class ReloadFailed(ShmPipelineError):
    """A reload that could not be applied (the running pipeline is unchanged); answers `ctl reload`."""


@dataclass(frozen=True)
class DaemonSettings:
    pipeline: str | None = None           # None: the embedded demo
    namespace: str | None = None          # overrides the YAML's
    http_address: str | None = "127.0.0.1:9750"  # None: no HTTP endpoints
    control_socket: str | None = ""       # "": the default path; None: no control socket
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    fail_fast: bool = True
    duration: float | None = None         # stop after this long (demos, tests)
    status_interval: float = 5.0          # seconds between STATUS updates and status log lines
    loop_interval: float = 0.1
    target_rate_hz: float | None = None   # exported for the "loop rate below target" alert
    latency_budget_s: float = 0.002       # exported for the end-to-end latency alert and panels
    debug_commands: bool = False          # accept the 'debug' control command (tests only)
    token_file: str | None = None         # the control plane's tokens (--token-file); None: control disabled
    token: str | None = None              # one admin token given on the command line (`serve --token`)


class _LoopTimer:
    """A histogram of the main loop's iteration time (bounds LOOP_BOUNDS_S, then +Inf)."""

    def __init__(self):
        self.counts = [0] * (len(LOOP_BOUNDS_S) + 1)
        self.sum_s = 0.0
        self.iterations = 0
        self.recent = collections.deque(maxlen=1000)

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(LOOP_BOUNDS_S) if seconds <= bound), len(LOOP_BOUNDS_S))
        self.counts[index] += 1
        self.sum_s += seconds
        self.iterations += 1
        self.recent.append(seconds)

    def p99(self) -> float | None:
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def as_dict(self) -> dict:
        return {"counts": list(self.counts), "sum_s": self.sum_s, "bounds_s": list(LOOP_BOUNDS_S)}


def answer_clients(done: list) -> None:
    """Answer the control clients of commands run in the loop: (future, result or exception) each."""
    for future, result in done:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def all_workers_up(snapshot: dict) -> bool:
    """Every worker waits for input or runs (systemd's READY=1)."""
    return snapshot["state"] == "running" and all(
        w["health"] in ("waiting-input", "active", "idle") for w in snapshot["workers"].values())


def readiness(snapshot: dict) -> tuple[bool, str]:
    """/readyz: (ready, why not)."""
    if snapshot["state"] != "running":
        return False, f"pipeline is {snapshot['state']}"
    down = [n for n, w in snapshot["workers"].items() if w["health"] in ("failed", "stopped", "starting")]
    if down:
        return False, "workers not running: " + ", ".join(down)
    return True, "ready"


def status_line(snapshot: dict) -> str:
    """One line: state, workers active/total, and the output rate: the throughput of the last worker
    (the pipeline's last stage), named."""
    summary = snapshot["summary"]
    last = list(snapshot["workers"].items())[-1:]
    rate = "".join(f", output {worker.get('throughput_hz', 0.0):.1f} Hz at {name}" for name, worker in last)
    return (f"state={snapshot['state']} workers active={summary['active_workers']}/"
            f"{summary['workers_total']} failed={summary['failed_workers']}{rate}")


class Daemon:
    """Runs one pipeline until told to stop; ``run()`` returns the exit status."""

    def __init__(self, settings: DaemonSettings, environ=None):
        self.settings = settings
        self.notifier = SystemdNotifier(environ)
        self.supervisor = Supervisor(settings.policy)
        self.manager = None
        self.config = None
        self.config_source = None
        self._published = None
        self._commands: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._reload_requested = False
        self._ready_sent = False
        self._next_extend = 0.0
        self._failures_seen = 0
        self.failures_total = 0
        self.reload_error: str | None = None
        self.started_at = time.time()
        self.last_reload_successful = True  # the file loaded at start counts, as in Prometheus
        self.last_reload_success_time = self.started_at
        self._reload_thread = None
        self._reload_answers: list = []       # `ctl reload` clients waiting for the next reload
        self._deferred: list = []              # commands held while a reload runs
        self._exhausted_logged_at: float | None = None
        self._loop = _LoopTimer()
        self._http = None
        self._control = None
        self._worker_cpus: set[int] | None = None  # the CPUs the daemon's own threads were last kept off
        #: The pipeline's last runtime snapshot, taken just before shutdown (``shmpiped run --json-status``).
        self.final_snapshot: dict | None = None
        from .events import EventHub
        from .tokens import TokenTable

        self.events = EventHub()               # the control plane's event stream, fed by _publish
        self.tokens = TokenTable()
        self.document_revision = 1             # +1 for each reload or document that changed the pipeline
        self._reload_loader = None             # a document to apply instead of re-reading the file
        self._command_events: list = []        # (name, data) to publish after the next snapshot
        self._discovery = None

    # ------------------------------------------------------------------ signals and commands
    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            self._stop_reason = signal.Signals(signum).name
        self._wake.set()

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._wake.set()

    def submit(self, request: dict) -> dict:
        """Run a control command in the main loop (called from control threads)."""
        future: Future = Future()
        self._commands.put((request, future))
        self._wake.set()
        return future.result(timeout=COMMAND_TIMEOUT_S)

    def _run_commands(self, reloading: bool) -> list:
        """Carry out the queued control commands; returns (future, result or exception) to answer once
        the snapshot that reflects them is published.  While a reload runs, only ``status`` is answered
        and the rest wait for it; ``reload`` requests are answered when their reload is done."""
        done = []
        pending, self._deferred = self._deferred, []
        while True:
            try:
                pending.append(self._commands.get_nowait())
            except queue.Empty:
                break
        for request, future in pending:
            command = request.get("command")
            if command in ("reload", "apply"):
                self._command_events.append(command_event(request))
            if command == "reload" and self._reload_loader is None:
                self._reload_answers.append(future)
                self._reload_requested = True
            elif command == "apply" and not (reloading or self._reload_requested):
                self._reload_loader = (request["config"], request.get("path"))
                self._reload_answers.append(future)
                self._reload_requested = True
            elif command in ("reload", "apply"):  # another document is being applied: after it
                self._deferred.append((request, future))
            elif reloading and command != "status":
                self._deferred.append((request, future))
            else:
                try:
                    done.append((future, carry_out(self, request)))
                except Exception as exc:  # noqa: BLE001 - reported to the client, the daemon goes on
                    done.append((future, exc))
                if command != "status":  # published with the snapshot that reflects it
                    self._command_events.append(command_event(request, done[-1][1]))
        return done

    # ------------------------------------------------------------------ configuration
    def _load_config(self):
        from ..config import PipelineConfig
        from ..demo import demo_path
        from ..validation import raise_for_invalid

        source = self.config_source or self.settings.pipeline or str(demo_path())  # POST /document/load moves it
        config = PipelineConfig.from_yaml(source)
        if self.settings.namespace:
            config = config.replace(namespace=self.settings.namespace)
        raise_for_invalid(config)
        return source, config

    def _begin_reload(self) -> None:
        """Start reading and applying the pipeline file in a thread (see ``shmpiped.service.reload``)."""
        from ..manager import PipelineManager
        from .reload import ReloadThread, reload_pipeline

        self._reload_requested = False
        self.notifier.reloading()
        load = self._load_config
        if self._reload_loader is not None:  # a document from the control plane, validated there
            config, path = self._reload_loader
            if self.settings.namespace:
                config = config.replace(namespace=self.settings.namespace)
            load = lambda: (path, config)  # noqa: E731
            log.info("reload: applying the document sent to the control plane%s", f" ({path})" if path else "")
        else:
            log.info("reload: reading %s", self.config_source)
        manager, running = self.manager, self.config
        self._reload_thread = ReloadThread(
            lambda: reload_pipeline(load, manager, running, PipelineManager),
            self._wake.set, self._reload_answers)
        self._reload_answers = []
        self._reload_thread.start()

    def _finish_reload(self) -> tuple[list, bool]:
        """Take in the reload thread's outcome; returns the `ctl reload` answers (to send once the
        snapshot that reflects the outcome is published) and whether the control socket must move."""
        thread, self._reload_thread = self._reload_thread, None
        outcome = thread.outcome
        loaded, self._reload_loader = self._reload_loader, None
        if outcome.ok and loaded is not None and loaded[1]:
            self.config_source = loaded[1]  # POST /document/load: later reloads read that file
        if outcome.ok and outcome.config is not None:
            self.document_revision += 1
        if outcome.ok:
            if outcome.manager is not None:  # another namespace: the new pipeline runs, the old one goes
                old, self.manager = self.manager, outcome.manager
                old.shutdown(force=True)
                self._failures_seen = 0
            if outcome.config is not None:
                self.config = outcome.config
            self.reload_error = None
            self.last_reload_successful = True
            self.last_reload_success_time = time.time()
            self.reset_supervision()  # a reload gives the workers their budget back
            log.info("reload: %s", outcome.message)
            answer = {"reloaded": outcome.config is not None, "changed": outcome.changed, "detail": outcome.message}
        else:
            self.reload_error = outcome.message
            self.last_reload_successful = False
            log.error("reload failed: %s", outcome.message)
            answer = ReloadFailed(outcome.message)
        self.notifier.ready(None if outcome.ok else f"reload failed: {outcome.message}")
        return [(future, answer) for future in thread.answers], outcome.manager is not None

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        from ..manager import PipelineManager

        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        # Source threads share this interpreter: let them take the GIL within 0.5 ms, not 5 ms.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            try:
                self.tokens = load_tokens(self.settings)
                self.config_source, self.config = self._load_config()
            except ConfigFileUnreadable as exc:
                log.error("%s", exc)
                self.notifier.stopping(str(exc))
                return EXIT_NOINPUT
            except (ConfigValidationError, OSError) as exc:
                errors = getattr(exc, "errors", None) or (str(exc),)
                for error in errors:
                    log.error("invalid configuration: %s", error)
                self.notifier.stopping(f"invalid configuration: {errors[0]}")
                return EXIT_CONFIG
            self.notifier.extend_timeout(START_EXTEND_S)
            self._next_extend = time.monotonic() + START_EXTEND_S / 3
            self.manager = PipelineManager(self.config)
            try:
                self.manager.build()
                self.manager.start(wait=False)
            except NamespaceBusyError as exc:
                log.error("%s", exc)
                self.notifier.stopping(str(exc))
                return EXIT_NAMESPACE_BUSY
            except SharedMemoryError as exc:
                log.error("cannot create shared memory: %s", exc)
                self.notifier.stopping(str(exc))
                return EXIT_CANT_CREATE
            except (ConfigValidationError, FileNotFoundError) as exc:
                log.error("invalid configuration: %s", exc)
                self.notifier.stopping(str(exc))
                return EXIT_CONFIG
            except (OSError, MemoryError) as exc:  # out of file descriptors, memory, processes: 71 (EX_OSERR)
                limit = SystemLimitError.of(exc, "building the pipeline")
                if limit is None:
                    raise
                log.error("%s", limit)
                self.notifier.stopping(str(limit))
                return limit.exit_status
            log.info("pipeline %r built from %s: %d workers", self.manager.namespace, self.config_source,
                     len(self.config.kernels))
            try:
                self._start_servers()
            except OSError as exc:
                log.error("cannot serve HTTP on %s: %s", self.settings.http_address, exc)
                self.notifier.stopping(f"cannot serve HTTP: {exc}")
                return EXIT_UNAVAILABLE
            return self._loop_until_stopped()
        finally:
            self.notifier.stopping()
            self._close_servers()
            if self.manager is not None:
                if self.manager.state.value not in ("initialized", "stopped"):
                    self.final_snapshot = self.manager.runtime_snapshot()
                self.manager.shutdown(force=True)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            sys.setswitchinterval(switch_interval)
            self.notifier.close()
            log.info("stopped")

    @property
    def published(self):
        """The last published snapshot (``httpapi.Published``), or None before the first."""
        return self._published

    def _start_servers(self) -> None:
        if self.settings.http_address:
            from .control_plane import ControlPlane
            from .httpapi import HttpApi

            plane = ControlPlane(self, self.tokens, self.events)
            self._http = HttpApi(self.settings.http_address, lambda: self._published, control=plane).start()
            self._discovery = announce_control_plane(self._http.address, self.tokens)
        if self.settings.control_socket is not None:
            self._start_control_socket()

    def _start_control_socket(self) -> None:
        from .control_socket import ControlServer, default_socket_path

        paths = [self.settings.control_socket or default_socket_path(self.manager.namespace)]
        if not self.settings.control_socket and self.manager.shares_namespace:
            # Other daemons may share the namespace: the first takes <ns>.sock, the others <ns>-<pid>.sock.
            paths.append(default_socket_path(f"{self.manager.namespace}-{os.getpid()}"))
        for path in paths:
            try:
                self._control = ControlServer(path, self.submit).start()
                log.info("control socket at %s", path)
                break
            except OSError as exc:  # the pipeline matters more than its remote control
                self._control = None
                if path != paths[-1]:
                    log.warning("control socket %s is not usable (%s); trying the next", path, exc)
                else:
                    log.error("no control socket (shmpiped ctl will not reach this daemon): %s: %s", path, exc)

    def _restart_control_socket(self) -> None:
        """After a namespace change, serve control on the new namespace's default socket."""
        if self.settings.control_socket or self._control is None:
            return  # an explicit path stays; none stays none
        self._control.close()
        self._control = None
        self._start_control_socket()

    def _close_servers(self) -> None:
        if self._discovery is not None:
            self._discovery.close()
        if self._http is not None:
            self._http.close()
        if self._control is not None:
            self._control.close()

    @property
    def http_address(self) -> tuple[str, int] | None:
        return self._http.address if self._http else None

    def _loop_until_stopped(self) -> int:
        deadline = None if self.settings.duration is None else time.monotonic() + self.settings.duration
        next_status = 0.0
        next_watchdog = 0.0
        status = EXIT_OK
        while True:
            began = time.monotonic()
            if self._stop_reason is not None:
                log.info("stopping: %s", self._stop_reason)
                break
            if deadline is not None and began >= deadline:
                log.info("stopping: --duration elapsed")
                break
            reloaded, move_socket = [], False
            if self._reload_thread is not None and not self._reload_thread.is_alive():
                reloaded, move_socket = self._finish_reload()
            reloading = self._reload_thread is not None
            answers = reloaded + self._run_commands(reloading)
            if self._reload_requested and not reloading:
                self._begin_reload()
                reloading = True
            if reloading:  # the reload thread alone uses the manager: serve the last snapshot meanwhile
                snapshot = self._published.snapshot if self._published else {}
            else:
                snapshot = self._supervise(began)
                if self.supervisor.exhausted and self._note_exhausted(began):
                    self._publish(snapshot, began)
                    answer_clients(answers)
                    status = EXIT_PIPELINE_FAILED
                    break
            if snapshot:
                self._publish(snapshot, began)
            answer_clients(answers)
            if move_socket:  # after the answers: closing the old socket waits for its connections
                self._restart_control_socket()
            now = time.monotonic()
            if self.notifier.watchdog_interval_s and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + self.notifier.watchdog_interval_s
            if now >= next_status and snapshot:
                line = status_line(snapshot)
                if self.reload_error:
                    line += f"; last reload failed: {self.reload_error}"
                self.notifier.status(line)
                log.info("%s", line)
                next_status = now + self.settings.status_interval
            self._loop.observe(time.monotonic() - began)
            self._wake.wait(max(0.0, self.settings.loop_interval - (time.monotonic() - began)))
            self._wake.clear()
        return status

    def reset_supervision(self) -> None:
        self.supervisor.reset()
        self._exhausted_logged_at = None

    def _note_exhausted(self, now: float) -> bool:
        """Report a pipeline failed beyond its restart budget (again once a minute at most); True to exit."""
        if self.settings.fail_fast:
            log.error("pipeline failed beyond its restart budget: %s", self.supervisor.exhausted)
            self.notifier.stopping(f"failed: {self.supervisor.exhausted}")
            return True
        if self._exhausted_logged_at is None or now - self._exhausted_logged_at >= EXHAUSTED_LOG_INTERVAL_S:
            log.error("pipeline failed beyond its restart budget: %s (no restarts until a reload or "
                      "`shmpiped ctl restart`)", self.supervisor.exhausted)
            self._exhausted_logged_at = now
        return False

    def _supervise(self, now: float) -> dict:
        manager = self.manager
        snapshot = manager.runtime_snapshot()
        failures = len(snapshot["failures"])
        if failures > self._failures_seen:
            self.failures_total += failures - self._failures_seen
        self._failures_seen = failures
        read_timeouts = {k.name: k.read_timeout for k in self.config.kernels}
        verdict = self.supervisor.review(snapshot, now, read_timeouts)
        for name, reason in verdict.kill:
            pid = snapshot["workers"][name]["pid"]
            log.error("worker %r is hung (%s): killing pid %s", name, reason, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if verdict.restart:
            log.warning("restarting %s", ", ".join(repr(n) for n in verdict.restart))
            try:
                manager.restart(workers=verdict.restart, wait=False)
            except (StateTransitionError, WorkerProcessError, OSError) as exc:
                log.error("restart failed: %s", exc)
            snapshot = manager.runtime_snapshot()
            self._failures_seen = len(snapshot["failures"])
        if not self._ready_sent:
            if all_workers_up(snapshot):
                self.notifier.ready(status_line(snapshot))
                self._ready_sent = True
                log.info("ready: every worker is waiting for input or active")
            elif now >= self._next_extend:  # a slow start (GPU initialisation): ask systemd for more time
                self.notifier.extend_timeout(START_EXTEND_S)
                self._next_extend = now + START_EXTEND_S / 3
        return snapshot

    def _publish(self, snapshot: dict, taken_at: float) -> None:
        from .httpapi import Published

        snapshot["daemon"] = {
            "started_at": self.started_at,
            "pid": os.getpid(),
            "config_path": self.config_source,
            "loop_duration_seconds": self._loop.as_dict(),
            "loop_iterations_total": self._loop.iterations,
            "loop_p99_s": self._loop.p99(),
            "failures_total": self.failures_total,
            "restarts_total": self.supervisor.restarts_total,
            "restart_budget_exhausted": self.supervisor.exhausted,
            "target_rate_hz": self.settings.target_rate_hz,
            "latency_budget_s": self.settings.latency_budget_s,
            "reload_error": self.reload_error,
            "reloading": self._reload_thread is not None,
            "last_reload_successful": self.last_reload_successful,
            "last_reload_success_time": self.last_reload_success_time,
            "ready": self._ready_sent,
            "event_clients": self.events.subscriber_count,
            "event_clients_dropped_total": self.events.dropped_subscribers_total,
        }
        snapshot["document_revision"] = self.document_revision
        snapshot["config_path"] = self.config_source
        snapshot["config_base_path"] = str(self.config.base_path) if self.config is not None else None
        self._keep_off_worker_cpus(snapshot)
        ready, reason = readiness(snapshot)
        previous, self._published = self._published, Published(
            taken_at=taken_at, snapshot=snapshot, ready=ready, ready_reason=reason)
        self.events.observe(previous.snapshot if previous else None, snapshot)  # what changed: state, health...
        publish_command_events(self.events, self._command_events, snapshot)
        self._command_events = []

    def _keep_off_worker_cpus(self, snapshot: dict) -> None:
        """The daemon's own threads (this loop, the control threads, HTTP) run on CPUs no worker is pinned
        to and outside ``realtime.cpus``, when any remain: the loop and control at normal priority,
        HTTP at SCHED_IDLE; never a real-time policy.  Redone only when those CPUs change."""
        busy = {w["cpu_slot"] for w in snapshot["workers"].values() if w.get("cpu_slot") is not None}
        busy |= set(getattr(getattr(self.config, "realtime", None), "cpus", None) or ())
        if busy == self._worker_cpus:
            return
        self._worker_cpus = busy
        from .. import realtime

        realtime.confine_service_thread(busy)  # this thread: the supervisor loop
        for thread in threading.enumerate():  # the control server's accept thread: new connections inherit it
            if thread.name.startswith(("shmpiped.control", "shmpiped-control")) and thread.native_id:
                realtime.name_thread(thread.native_id, "shmpiped-ctl")
                realtime.confine_service_thread(busy, tid=thread.native_id)
        if self._http is not None:
            self._http.keep_off_cpus(busy)
