"""Real time on Linux: what a process may do, applying settings to it, and reading them back.

Owns, for issue 13:

- the privileges real-time settings need (``Privileges``: CAP_SYS_NICE and
  CAP_IPC_LOCK from ``/proc/<pid>/status`` CapEff, RLIMIT_RTPRIO and
  RLIMIT_MEMLOCK), what is missing for given settings
  (``privilege_problems``) and how to grant it on each deployment target
  (``fixes``): the one text the manager's refusal, its warning and
  ``shmpiped doctor`` all print;
- the check a pipeline gets where it runs, before anything is built
  (``check_pipeline``): its CPUs exist here, and the privileges its
  settings need are there (``required: true``: refuse, exit 78; else one
  warning for the whole pipeline);
- applying settings to the calling process (``apply_affinity``,
  ``lock_memory``, ``apply_scheduling``, ``apply``), used by workers and by
  sources that run in their own process; mlockall through ctypes, as
  Python has no binding;
- reading back what the kernel holds for a pid (``read_proc``): policy and
  rt_priority, fault counts and CPU time from ``/proc/<pid>/stat``, the CPUs
  allowed, locked memory and context switches from ``/proc/<pid>/status``;
  two small reads, cheap enough for status() ten times a second;
- keeping the daemon's own threads (supervisor loop, control, HTTP) off the
  workers' CPUs, at normal or idle priority, never real time
  (``confine_service_thread``).

The defaults need none of this: a pipeline without a ``realtime:`` block
never calls into the scheduler here.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .config_realtime import RealtimeConfig
from .errors import ConfigValidationError, ShmPipelineError
from .placement import available_cpus, format_cpu_list, note_service_confinement, parse_cpu_list

log = logging.getLogger("shmpiped.realtime")

CAP_IPC_LOCK = 14
CAP_SYS_NICE = 23
MCL_CURRENT = 1
MCL_FUTURE = 2
#: Memory one worker locks before its streams (measured: an interpreter with NumPy and the
#: worker loaded, BLAS at one thread: 105-150 MiB; mlockall locks every mapped page).
WORKER_LOCK_BASE_BYTES = 160 * 1024 * 1024
POLICY_NAMES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}
POLICY_NUMBERS = {"other": 0, "fifo": 1, "rr": 2}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MIB = 1024 * 1024

__all__ = [
    "Privileges", "RealtimeUnavailable", "apply", "check_pipeline", "confine_service_thread", "cpu_problems",
    "fixes", "lock_memory", "memory_lock_need", "name_thread", "privilege_problems", "read_proc",
]


class RealtimeUnavailable(ShmPipelineError):
    """A required real-time setting could not be applied to this process."""


# --------------------------------------------------------------------------- privileges


def _capabilities(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _limit(kind: int) -> int | None:
    """The soft limit, None when unlimited."""
    soft, _ = resource.getrlimit(kind)
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class Privileges:
    """What the current process may do about scheduling and memory locking (children inherit it)."""

    cap_sys_nice: bool
    cap_ipc_lock: bool
    rtprio_limit: int | None      # RLIMIT_RTPRIO (soft); None: unlimited
    memlock_limit: int | None     # RLIMIT_MEMLOCK in bytes (soft); None: unlimited

    @classmethod
    def of_this_process(cls) -> Privileges:
        caps = _capabilities()
        return cls(cap_sys_nice=bool(caps >> CAP_SYS_NICE & 1), cap_ipc_lock=bool(caps >> CAP_IPC_LOCK & 1),
                   rtprio_limit=_limit(resource.RLIMIT_RTPRIO), memlock_limit=_limit(resource.RLIMIT_MEMLOCK))

    def may_use_priority(self, priority: int) -> bool:
        return self.cap_sys_nice or self.rtprio_limit is None or self.rtprio_limit >= priority

    def may_lock(self, nbytes: int) -> bool:
        return self.cap_ipc_lock or self.memlock_limit is None or self.memlock_limit >= nbytes

    def as_dict(self) -> dict:
        return {"cap_sys_nice": self.cap_sys_nice, "cap_ipc_lock": self.cap_ipc_lock,
                "rlimit_rtprio": self.rtprio_limit, "rlimit_memlock_bytes": self.memlock_limit}


def settings_of(settings) -> list[RealtimeConfig]:
    """RealtimeConfig, a PipelineConfig (every worker's and process source's merged settings), or several."""
    if isinstance(settings, RealtimeConfig):
        return [settings]
    if hasattr(settings, "kernels") and hasattr(settings, "realtime"):
        nodes = list(settings.kernels) + [s for s in settings.sources if getattr(s, "process", False)]
        return [settings.realtime_for(node) for node in nodes] or [settings.realtime]
    return [item for entry in settings for item in settings_of(entry)]


def memory_lock_need(config=None) -> int:
    """Bytes of locked memory one worker of ``config`` needs at most (its base, plus the streams it maps)."""
    if config is None or not hasattr(config, "kernels"):
        return WORKER_LOCK_BASE_BYTES
    from .shm_inventory import stream_bytes

    streams = config.streams_by_name
    mapped = [sum(stream_bytes(streams[name]) for name in (*k.all_inputs, *k.all_outputs) if name in streams)
              for k in config.kernels]
    return WORKER_LOCK_BASE_BYTES + max(mapped, default=0)


def _size(nbytes: int | None) -> str:
    return "unlimited" if nbytes is None else f"{nbytes / _MIB:.0f} MiB" if nbytes >= _MIB else f"{nbytes} bytes"


def privilege_problems(settings, privileges: Privileges | None = None) -> list[str]:
    """What this process lacks to apply ``settings`` (a RealtimeConfig, a PipelineConfig, or several):
    one line per missing privilege, naming it and what it is needed for; empty when nothing is missing."""
    privileges = privileges or Privileges.of_this_process()
    all_settings = settings_of(settings)
    problems = []
    priorities = [s.priority for s in all_settings if s.realtime_policy]
    if priorities and not privileges.may_use_priority(max(priorities)):
        top = max(priorities)
        policies = "/".join(sorted({s.policy for s in all_settings if s.realtime_policy}))
        problems.append(
            f"scheduling policy {policies} at priority {top} needs CAP_SYS_NICE or RLIMIT_RTPRIO of at least {top}: "
            f"this process has no CAP_SYS_NICE and RLIMIT_RTPRIO is {privileges.rtprio_limit}")
    if any(s.lock_memory for s in all_settings):
        need = memory_lock_need(settings)
        if not privileges.may_lock(need):
            problems.append(
                f"lock_memory needs CAP_IPC_LOCK or RLIMIT_MEMLOCK of at least {_size(need)} per worker "
                f"(unlimited is best): this process has no CAP_IPC_LOCK and RLIMIT_MEMLOCK is "
                f"{_size(privileges.memlock_limit)}")
    return problems


def fixes() -> str:
    """How to grant the real-time privileges on each deployment target (one line each)."""
    return "\n".join((
        "Docker: docker run --cap-add SYS_NICE --ulimit rtprio=99 --ulimit memlock=-1 ... "
        "(compose: cap_add: [SYS_NICE], ulimits: {rtprio: 99, memlock: -1}; deploy/docker-compose.yml)",
        "systemd: install the drop-in deploy/systemd/realtime.conf (LimitRTPRIO=99, LimitMEMLOCK=infinity, "
        "AmbientCapabilities=CAP_SYS_NICE CAP_IPC_LOCK) as /etc/systemd/system/shmpiped.service.d/realtime.conf "
        "(or shmpiped@.service.d/), then systemctl daemon-reload and restart",
        "Kubernetes: helm upgrade ... --set realtime.enabled=true (the chart's real-time option: the "
        "container's SYS_NICE and IPC_LOCK capabilities, run as uid 0 because Kubernetes gives added "
        "capabilities to root only (realtime.runAsRoot), and the pipeline's realtime block)",
        "a shell: run as root, or raise the limits first: prlimit --rtprio=99 --memlock=unlimited --pid $$",
    ))


# --------------------------------------------------------------------------- checks where the pipeline runs


def cpu_problems(config, allowed: Iterable[int] | None = None) -> list[str]:
    """Each CPU ``config`` names (``realtime.cpus``, a kernel's ``cpu``) that this process may not use here."""
    allowed = set(available_cpus() if allowed is None else allowed)
    here = format_cpu_list(allowed)
    problems = []
    listed = config.realtime.cpus or ()
    missing = [cpu for cpu in listed if cpu not in allowed]
    if missing:
        problems.append(config.locate(
            f"realtime cpus lists CPU {', '.join(map(str, missing))}, which this machine does not have or this "
            f"process may not use (it may use {here}): list CPUs of this machine", config.realtime.line))
    for kernel in config.kernels:
        if kernel.cpu is not None and kernel.cpu not in allowed and kernel.cpu not in missing:
            problems.append(config.locate(
                f"kernel {kernel.name!r} is pinned to cpu {kernel.cpu}, which this machine does not have or this "
                f"process may not use (it may use {here}): pin it to one of those", kernel))
    return problems


def check_pipeline(config) -> list[str]:
    """Before a build: raise ConfigValidationError (exit 78) for CPUs this machine lacks, and for missing
    privileges when ``realtime.required``; else log one warning for the whole pipeline and return
    the privilege problems (empty when everything can be applied)."""
    errors = cpu_problems(config)
    if errors:
        raise ConfigValidationError(errors[0], errors=errors)
    problems = privilege_problems(config)
    if not problems:
        return []
    where = config.locate("", config.realtime.line).strip()
    if config.realtime.required:
        message = ("realtime.required is true, and this process cannot apply the pipeline's real-time settings: "
                   + "; ".join(problems) + (f" {where}" if where else "")
                   + ". Grant them (or set realtime.required: false to run without them). Fix, per target:\n"
                   + fixes())
        raise ConfigValidationError(message, errors=[message])
    log.warning("real-time settings not fully applied (realtime.required is false, so the pipeline runs): %s; "
                "workers keep what they are allowed (see status() realtime.effective). Fix, per target: %s",
                "; ".join(problems), fixes().replace("\n", " | "))
    return problems


def prefault_streams(config, streams) -> tuple[int, float] | None:
    """With lock_memory anywhere in ``config``, touch every page of every stream once in this process
    (at build): ``(bytes, seconds)``, else None.

    Segments are allocated when created (``posix_fallocate``); what a first
    touch still costs is the page-table entry of each page in each process
    that maps it.  Workers get theirs from mlockall (MCL_CURRENT populates
    every mapping); this gives the manager's process (its source threads and
    synthetic inputs write from here) theirs now rather than on the first
    frames.  Measured here: about 0.7 ms per MiB of streams, once.
    """
    if not any(config.realtime_for(kernel).lock_memory for kernel in config.kernels):
        return None
    began = time.perf_counter()
    touched = sum(stream.prefault() for stream in streams)
    return touched, round(time.perf_counter() - began, 6)


# --------------------------------------------------------------------------- applying settings


def apply_affinity(cpus: Iterable[int] | None) -> str | None:
    """Run the calling thread on ``cpus`` (None: leave it); the error, else None."""
    if cpus is None:
        return None
    try:
        os.sched_setaffinity(0, set(cpus))
    except (OSError, AttributeError) as exc:
        return f"cannot run on CPU {format_cpu_list(cpus)}: {getattr(exc, 'strerror', None) or exc}"
    return None


def lock_memory() -> str | None:
    """mlockall(MCL_CURRENT | MCL_FUTURE); the error, else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.mlockall(MCL_CURRENT | MCL_FUTURE)
    except (OSError, AttributeError) as exc:
        return f"cannot lock memory: {exc}"
    if result != 0:
        code = ctypes.get_errno()
        return f"cannot lock memory (mlockall: {errno.errorcode.get(code, code)}: {os.strerror(code)})"
    return None


def apply_scheduling(settings: RealtimeConfig) -> str | None:
    """The calling thread's scheduling policy and priority; the error, else None."""
    policy = {"fifo": os.SCHED_FIFO, "rr": os.SCHED_RR}.get(settings.policy)
    if policy is None:
        return None
    try:
        os.sched_setscheduler(0, policy, os.sched_param(settings.priority))
    except OSError as exc:
        return (f"cannot set scheduling policy {settings.policy} priority {settings.priority} "
                f"(sched_setscheduler: {exc.strerror})")
    return None


def apply(settings: RealtimeConfig, cpus: Iterable[int] | None, *, memory: bool = True,
          scheduling: bool = True) -> list[str]:
    """Apply ``settings`` to the calling process (affinity ``cpus``, then memory lock, then policy).

    Returns what could not be applied; with ``settings.required`` the first
    failure raises RealtimeUnavailable instead (naming it and the fixes).
    ``memory``/``scheduling`` False leave those steps for a later call (a
    worker locks its memory once its streams and kernel exist).
    """
    steps = [apply_affinity(cpus)]
    if memory and settings.lock_memory:
        steps.append(lock_memory())
    if scheduling:
        steps.append(apply_scheduling(settings))
    errors = [error for error in steps if error]
    if errors and settings.required:
        raise RealtimeUnavailable("realtime.required is true: " + "; ".join(errors) + ". Fix, per target:\n"
                                  + fixes())
    return errors


def name_thread(tid: int, name: str) -> None:
    """Give a thread of this process the name ``top -H`` and ``/proc/<pid>/task/<tid>/comm`` show."""
    try:
        with open(f"/proc/self/task/{tid}/comm", "w") as handle:
            handle.write(name[:15])
    except OSError:
        pass


def confine_service_thread(busy_cpus: Iterable[int], *, idle: bool = False, tid: int = 0) -> None:
    """Keep a thread of the daemon (``tid``, 0: the caller) off ``busy_cpus`` (the workers'), when other
    CPUs remain, at normal priority, or SCHED_IDLE with ``idle``; never a real-time policy."""
    every = set(note_service_confinement())
    free = every - set(busy_cpus)
    try:
        os.sched_setaffinity(tid, free or every)
        if idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


# --------------------------------------------------------------------------- reading back


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 8192)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_proc(pid: int | None) -> tuple[dict, dict] | None:
    """``(effective, counters)`` for ``pid`` as the kernel holds them, None when it is gone.

    effective: policy, priority (rt_priority, 0 when not real time), cpus
    (allowed), memory_locked_bytes (VmLck).  counters: voluntary and
    involuntary context switches (of its main thread, the loop), minor and
    major page faults and CPU seconds (user + system, every thread).
    """
    if not pid:
        return None
    stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
    if not stat or not status:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # fields[0] is field 3 (state) of proc(5)
    try:
        minflt, majflt = int(fields[7]), int(fields[9])
        cpu_seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        rt_priority, policy = int(fields[37]), int(fields[38])
    except (IndexError, ValueError):
        return None
    values = {}
    for line in status.split(b"\n"):
        key, _, value = line.partition(b":")
        if key in (b"Cpus_allowed_list", b"VmLck", b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches"):
            values[key] = value.strip()
    locked = values.get(b"VmLck", b"0 kB").split()[0]
    effective = {
        "policy": POLICY_NAMES.get(policy, str(policy)),
        "priority": rt_priority,
        "cpus": parse_cpu_list(values.get(b"Cpus_allowed_list", b"").decode()),
        "memory_locked_bytes": int(locked) * 1024,
    }
    counters = {
        "voluntary_context_switches": int(values.get(b"voluntary_ctxt_switches", 0)),
        "involuntary_context_switches": int(values.get(b"nonvoluntary_ctxt_switches", 0)),
        "minor_page_faults": minflt,
        "major_page_faults": majflt,
        "cpu_seconds": cpu_seconds,
    }
    return effective, counters


def shortfalls(requested: RealtimeConfig, effective: dict, pinned: Iterable[int] | None) -> list[str]:
    """What the kernel holds short of ``requested`` (policy and priority, memory lock, CPUs); empty
    when everything asked for is in effect."""
    missing = []
    if requested.realtime_policy and (effective["policy"] != requested.policy
                                      or effective["priority"] != requested.priority):
        missing.append(f"runs at policy {effective['policy']} priority {effective['priority']}, not "
                       f"{requested.policy} {requested.priority}: the kernel refused it")
    if requested.lock_memory and not effective["memory_locked_bytes"]:
        missing.append("has no locked memory: mlockall was refused")
    if pinned is not None and not set(effective["cpus"]) <= set(pinned):
        missing.append(f"may run on CPU {format_cpu_list(effective['cpus'])}, not only "
                       f"{format_cpu_list(pinned)}: its affinity was refused")
    return missing
