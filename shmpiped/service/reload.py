"""Reloading the pipeline file without taking the running pipeline down (SIGHUP, `shmpiped ctl reload`).

A reload runs in its own thread, so the daemon's loop keeps feeding systemd's
watchdog and serving its last snapshot while the file is read, validated and
applied; the loop does not touch the manager until the reload thread is done.

* The file is read and validated first (bounded work for any input: see
  ``shmpiped.config_loading``); an invalid file changes nothing.
* Same namespace: ``PipelineManager.reconfigure`` applies only what differs and
  waits for the new workers; if any step fails, the old pipeline runs again.
* Another namespace: a second manager is built and started in it while the old
  one runs; only once every new worker runs is the old one shut down.

The outcome says which pipeline runs now and why; the daemon reports it
(log, ``/status``, sd_notify STATUS, the ``shmpiped_config_last_reload_*``
metrics) and answers the ``ctl reload`` clients waiting for it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ShmPipelineError

log = logging.getLogger("shmpiped.daemon")


@dataclass
class ReloadOutcome:
    ok: bool
    message: str                        # what changed, or why nothing did
    config: object = None               # the configuration running now when it changed (else None)
    manager: object = None              # a new manager (namespace change), to replace the old one
    changed: list = field(default_factory=list)


def reload_pipeline(load: Callable, manager, running, make_manager: Callable) -> ReloadOutcome:
    """Read the file with ``load()`` and apply it to ``manager`` (running ``running``)."""
    try:
        _, config = load()
    except (ShmPipelineError, OSError, ValueError) as exc:
        return ReloadOutcome(False, f"the file was not applied: {exc}")
    if config == running and manager.state.value != "failed":
        return ReloadOutcome(True, "pipeline unchanged")
    old_namespace, new_namespace = running.namespace or "default", config.namespace or "default"
    if (old_namespace, running.namespace is None) != (new_namespace, config.namespace is None):
        return _switch_namespace(config, make_manager, f"namespace {old_namespace!r} -> {new_namespace!r}")
    try:
        result = manager.reconfigure(config)
    except (ShmPipelineError, OSError, ValueError) as exc:
        return ReloadOutcome(False, f"the running pipeline is unchanged: {exc}")
    plan = result["plan"]
    return ReloadOutcome(True, f"reconfigured: {plan}", config, None, plan_names(running, config))


def plan_names(old, new) -> list[str]:
    """The kernels, sources and sinks a reconfiguration from ``old`` to ``new`` (re)started or stopped."""
    from ..reconfigure import plan

    change = plan(old, new)
    return list(dict.fromkeys((*change.start_kernels, *change.stop_kernels, *change.restart_endpoints)))


def _switch_namespace(config, make_manager: Callable, what: str) -> ReloadOutcome:
    new = make_manager(config)
    try:
        new.build()
        new.start(wait=True)
    except BaseException as exc:  # noqa: BLE001 - whatever stopped it, the old pipeline goes on
        new.shutdown(force=True)
        if not isinstance(exc, Exception):
            raise
        return ReloadOutcome(False, f"the running pipeline is unchanged: {what} failed: {exc}")
    return ReloadOutcome(True, what, config, new, ["*"])


class ReloadThread(threading.Thread):
    """Runs one ``reload_pipeline`` off the daemon's loop; ``answers`` are the ctl clients waiting for it."""

    def __init__(self, work: Callable[[], ReloadOutcome], done: Callable[[], None], answers: list):
        super().__init__(name="shmpiped-reload", daemon=True)
        self._work = work
        self._done = done
        self.answers = answers
        self.outcome: ReloadOutcome | None = None

    def run(self) -> None:
        try:
            self.outcome = self._work()
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the daemon
            log.exception("reload failed unexpectedly")
            self.outcome = ReloadOutcome(False, f"reload failed unexpectedly: {exc}")
        finally:
            self._done()
