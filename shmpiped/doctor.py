"""``shmpiped doctor``: is this machine ready to run a pipeline in real time, and what to change if not.

Owns the readiness checks of issue 13: the privileges real-time scheduling and
locked memory need, the cgroup's real-time budget, isolated CPUs, the CPU
frequency governor, SMT, real-time throttling, the room in /dev/shm, transparent
huge pages, NUMA placement and the GPU.  Each check returns one ``Finding``
(name, status, what was seen, the fix); ``diagnose`` runs them all.

Every file the checks read (/proc, /sys, /dev/shm) goes through one
``Host.read`` under ``Host.root``, so tests point the checks at a fake tree for
the machines this one cannot show.  The privileges are the exception: they are
properties of this process, judged by ``shmpiped.realtime.privilege_problems``
(the same words the daemon's exit 78 uses), and tested for real under
``setpriv``/``prlimit``.  Nothing here changes the machine.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finding", "Host", "Request", "diagnose", "request_for", "STATUSES"]

OK, WARNING, PROBLEM, NOT_APPLICABLE = "ok", "warning", "problem", "not applicable"
STATUSES = (OK, WARNING, PROBLEM, NOT_APPLICABLE)
#: What a machine is checked for when no pipeline is given: the schema's example.
GENERIC_REALTIME = {"policy": "fifo", "priority": 50, "lock_memory": True}


@dataclass(frozen=True)
class Finding:
    """One check's verdict: ``status`` is ok, warning, problem or not applicable; ``fix`` what to change."""

    name: str
    status: str
    seen: str
    fix: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Host:
    """The machine as its kernel shows it in files, under ``root`` ("/"; a fake tree in tests)."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name.lstrip("/")

    def read(self, name: str) -> str | None:
        """The stripped text of file ``name``; None when it is missing or unreadable."""
        try:
            return self.path(name).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def glob(self, pattern: str) -> list[str]:
        """Names (as absolute paths of the machine) of the files matching ``pattern``, sorted."""
        found = glob.glob(str(self.path(pattern)))
        return sorted("/" + os.path.relpath(name, self.root) for name in found)

    def status_field(self, key: str) -> str | None:
        """One field of /proc/self/status (``Cpus_allowed_list``, ``CapEff`` ...)."""
        for line in (self.read("/proc/self/status") or "").splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return value.strip()
        return None


def parse_cpulist(text: str | None) -> set[int]:
    """``0-3,8,10-11`` -> {0, 1, 2, 3, 8, 10, 11}; empty, ``(null)`` or None -> set()."""
    cpus: set[int] = set()
    for part in (text or "").replace("\n", ",").split(","):
        part = part.strip()
        if not part or not part[0].isdigit():
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def cpulist(cpus) -> str:
    """{0, 1, 2, 5} -> ``0-2,5``."""
    ordered, ranges = sorted(cpus), []
    for cpu in ordered:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges) or "none"


# ---------------------------------------------------------------------- what the pipeline asks


@dataclass(frozen=True)
class Request:
    """What the checks compare the machine with: a pipeline's needs, or a generic real-time worker's."""

    subject: object                      # a PipelineConfig, or the RealtimeConfig of a generic worker
    pipeline: str | None = None          # the pipeline file
    cpus: frozenset | None = None        # CPUs its workers are placed on (None: wherever allowed)
    shm_bytes: int | None = None         # shm_footprint total
    gpu_errors: tuple | None = None      # None: uses no GPU; () usable; else why not

    @property
    def settings(self) -> list:
        """The effective RealtimeConfig of every worker (and source process)."""
        from .realtime import settings_of

        return settings_of(self.subject)

    @property
    def realtime_policy(self) -> bool:
        return any(s.realtime_policy for s in self.settings)

    @property
    def lock_memory(self) -> bool:
        return any(s.lock_memory for s in self.settings)


def generic_request() -> Request:
    from .config import RealtimeConfig

    return Request(RealtimeConfig(**GENERIC_REALTIME))


def request_for(config, path: str | None = None) -> Request:
    """The Request of a loaded PipelineConfig: its workers' settings and CPUs, streams' bytes, GPU needs."""
    from .shm_inventory import shm_footprint
    from .validation import gpu_stream_errors

    pinned = {k.cpu for k in config.kernels if k.cpu is not None}
    cpus = None if config.realtime.cpus is None and not pinned else frozenset({*(config.realtime.cpus or ()),
                                                                                *pinned})
    gpu_streams = [spec for spec in config.shared_memory if spec.storage == "gpu"]
    gpu_kernels = [k.name for k in config.kernels if str(k.kind).startswith("gpu.")]
    gpu_errors = None
    if gpu_streams or gpu_kernels:
        from .shm.device import gpu_status

        gpu_errors = gpu_stream_errors(config) if gpu_streams else []
        if gpu_kernels and not gpu_errors and not gpu_status().usable:
            gpu_errors = [f"kernel {', '.join(map(repr, gpu_kernels))} of a gpu.* kind needs a usable GPU, "
                          f"but {gpu_status().reason}"]
    return Request(config, pipeline=path, cpus=cpus, shm_bytes=shm_footprint(config)["total"],
                   gpu_errors=None if gpu_errors is None else tuple(gpu_errors))


# ---------------------------------------------------------------------- the checks


def _limit(value: int | None, unit: str = "") -> str:
    return "unlimited" if value is None else f"{value}{unit}"


def check_privileges(host: Host, request: Request) -> list[Finding]:
    """CAP_SYS_NICE / RLIMIT_RTPRIO for the policy, CAP_IPC_LOCK / RLIMIT_MEMLOCK for lock_memory: this
    process's, judged by ``realtime.privilege_problems`` (the daemon's own rule and words)."""
    from .realtime import Privileges, fixes, privilege_problems

    have = Privileges.of_this_process()
    word = lambda present: "effective" if present else "missing"  # noqa: E731
    parts = (
        # name, wanted, the privileges with the other half granted (so only this half is judged), seen
        ("scheduling-privileges", request.realtime_policy, dataclasses.replace(have, cap_ipc_lock=True),
         f"CAP_SYS_NICE {word(have.cap_sys_nice)}, RLIMIT_RTPRIO {_limit(have.rtprio_limit)}",
         "the pipeline asks for no real-time policy (policy: other)"),
        ("memory-lock-privileges", request.lock_memory, dataclasses.replace(have, cap_sys_nice=True),
         f"CAP_IPC_LOCK {word(have.cap_ipc_lock)}, RLIMIT_MEMLOCK {_limit(have.memlock_limit, ' bytes')}",
         "the pipeline locks no memory (lock_memory: false)"),
    )
    findings = []
    for name, wanted, judged, seen, unwanted in parts:
        if not wanted:
            findings.append(Finding(name, NOT_APPLICABLE, f"{unwanted}; {seen}"))
            continue
        problems = privilege_problems(request.subject, judged)
        findings.append(Finding(name, PROBLEM, "; ".join(problems), fixes()) if problems
                        else Finding(name, OK, seen))
    return findings


def _cpu_cgroup(host: Host) -> tuple[str, str] | None:
    """(cgroup path, file) of this process's cgroup-v1 ``cpu.rt_runtime_us``; None without RT group scheduling."""
    for line in (host.read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "cpu" not in controllers.split(","):
            continue
        mounts = [f"/sys/fs/cgroup/{controllers}", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
        for mount in dict.fromkeys(mounts):
            # The path as the host names it, then the mount itself (a container sees its own cgroup there).
            for directory in (f"{mount}/{path.strip('/')}".rstrip("/"), mount):
                if host.read(f"{directory}/cpu.rt_runtime_us") is not None:
                    return path, f"{directory}/cpu.rt_runtime_us"
    return None


def check_rt_group_budget(host: Host, request: Request) -> Finding:
    name = "rt-group-budget"
    found = _cpu_cgroup(host)
    if found is None:
        return Finding(name, NOT_APPLICABLE, "no real-time group scheduling (cgroup v2, or a kernel without "
                                             "CONFIG_RT_GROUP_SCHED): real-time tasks need no cgroup budget")
    path, file = found
    runtime, period = host.read(file), host.read(os.path.dirname(file) + "/cpu.rt_period_us")
    seen = f"this process's cgroup {path}: cpu.rt_runtime_us = {runtime} of cpu.rt_period_us = {period} ({file})"
    if not request.realtime_policy:
        return Finding(name, NOT_APPLICABLE, f"{seen}; the pipeline asks for no real-time policy")
    if runtime == "0":
        return Finding(name, PROBLEM, f"{seen}: the kernel gives real-time tasks CPU time per cgroup and this "
                       "one has none, so SCHED_FIFO/SCHED_RR is refused even with CAP_SYS_NICE",
                       "give the cgroup and each parent a budget (parents first), e.g. "
                       f"echo 950000 > {file}; Docker: start dockerd with --cpu-rt-runtime=950000 and the "
                       "container with --cpu-rt-runtime=950000 (cgroup v1); systemd: keep the unit out of a cpu "
                       "cgroup of its own (no CPUAccounting=, CPUWeight=, CPUQuota=) or give it a budget")
    return Finding(name, OK, seen)


def check_isolated_cpus(host: Host, request: Request) -> Finding:
    name = "isolated-cpus"
    cmdline = (host.read("/proc/cmdline") or "").split()
    arg = lambda key: next((w.split("=", 1)[1] for w in cmdline if w.startswith(key + "=")), "")  # noqa: E731
    isolated = parse_cpulist(host.read("/sys/devices/system/cpu/isolated"))
    isolated |= parse_cpulist(",".join(p for p in arg("isolcpus").split(",") if p[:1].isdigit()))
    nohz = parse_cpulist(arg("nohz_full")) | parse_cpulist(host.read("/sys/devices/system/cpu/nohz_full"))
    online = parse_cpulist(host.read("/sys/devices/system/cpu/online"))
    affinity = parse_cpulist(host.status_field("Cpus_allowed_list"))
    seen = f"online CPUs {cpulist(online)}, isolated {cpulist(isolated)}, nohz_full {cpulist(nohz)}"
    boot_fix = ("reserve CPUs for the workers on the kernel command line, e.g. isolcpus={c} nohz_full={c} "
                "rcu_nocbs={c} (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot), and "
                "place the workers there: realtime: {{cpus: [{l}]}}")
    if request.cpus is not None:
        from .realtime import cpu_problems

        wanted = set(request.cpus)
        problems = cpu_problems(request.subject, affinity & online)  # the daemon's rule: it refuses these (78)
        if problems:
            fix = (f"use CPUs of {cpulist(affinity & online)} in realtime.cpus and kernels' cpu:, or start the "
                   "daemon on more: taskset -c LIST shmpiped run ..., systemd CPUAffinity=, docker --cpuset-cpus")
            if wanted & isolated - affinity:
                fix += (f"; isolated CPUs ({cpulist(isolated)}) are left out of processes' CPUs by default: start the daemon on them, "
                        f"taskset -c {cpulist(affinity | wanted)} shmpiped run ...")
            return Finding(name, PROBLEM, "; ".join(problems) + f" ({seen})", fix)
        if wanted <= isolated:
            return Finding(name, OK, f"the workers' CPUs {cpulist(wanted)} are isolated ({seen})")
        shared = wanted - isolated
        return Finding(name, WARNING, f"the workers' CPUs {cpulist(shared)} are not isolated: the scheduler runs "
                       f"other tasks there ({seen})",
                       boot_fix.format(c=cpulist(wanted), l=", ".join(map(str, sorted(wanted)))))
    if isolated:
        return Finding(name, WARNING, f"CPUs {cpulist(isolated)} are isolated but the workers are not placed "
                       f"on them ({seen})",
                       f"realtime: {{cpus: [{', '.join(map(str, sorted(isolated)))}]}} in the pipeline")
    spare = sorted(online)[len(online) // 2:] or sorted(online)
    return Finding(name, WARNING, f"no CPU is isolated: the workers share their CPUs with every other task "
                   f"({seen})", boot_fix.format(c=cpulist(spare), l=", ".join(map(str, spare))))


def _cpus_in_scope(host: Host, request: Request) -> list[int]:
    online = parse_cpulist(host.read("/sys/devices/system/cpu/online"))
    return sorted(set(request.cpus) & online if request.cpus is not None else online)


def check_governor(host: Host, request: Request) -> Finding:
    name = "cpu-governor"
    governors = {cpu: host.read(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")
                 for cpu in _cpus_in_scope(host, request)}
    governors = {cpu: g for cpu, g in governors.items() if g}
    if not governors:
        return Finding(name, NOT_APPLICABLE, "no cpufreq driver (/sys/devices/system/cpu/cpu*/cpufreq is absent): "
                       "a virtual machine or a fixed-frequency CPU; the frequency is not this kernel's to set")
    seen = ", ".join(f"cpu{cpu} {g}" for cpu, g in governors.items())
    slow = [cpu for cpu, g in governors.items() if g != "performance"]
    if not slow:
        return Finding(name, OK, seen)
    return Finding(name, WARNING, f"{seen}: CPU {cpulist(slow)} change frequency with load, so a loop that "
                   "sleeps between frames starts each one slower",
                   "cpupower frequency-set -g performance (or echo performance | tee "
                   "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor); keep it across boots with a tuned "
                   "profile (latency-performance) or cpufrequtils")


def check_smt(host: Host, request: Request) -> Finding:
    name = "smt"
    control = host.read("/sys/devices/system/cpu/smt/control")
    active = host.read("/sys/devices/system/cpu/smt/active")
    if active is None or control in ("notsupported", "notimplemented"):
        return Finding(name, NOT_APPLICABLE, f"the CPU has no simultaneous multithreading (smt/control: {control})")
    if active == "0":
        return Finding(name, OK, f"SMT is off (smt/control: {control})")
    siblings = sorted({host.read(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") or "?"
                       for cpu in _cpus_in_scope(host, request)})
    return Finding(name, WARNING, f"SMT is on (smt/control: {control}): a worker shares its core's execution "
                   f"units with the sibling thread (siblings {'; '.join(siblings)})",
                   "echo off > /sys/devices/system/cpu/smt/control (or boot with nosmt), or isolate both "
                   "siblings of each worker's core and place a worker on one of them only")


def check_rt_throttling(host: Host, request: Request) -> Finding:
    name = "rt-throttling"
    runtime = host.read("/proc/sys/kernel/sched_rt_runtime_us")
    period = host.read("/proc/sys/kernel/sched_rt_period_us")
    if runtime is None:
        return Finding(name, NOT_APPLICABLE, "/proc/sys/kernel/sched_rt_runtime_us is absent")
    if runtime == "-1":
        return Finding(name, OK, "real-time tasks are not throttled (sched_rt_runtime_us = -1)")
    seen = f"sched_rt_runtime_us = {runtime} of sched_rt_period_us = {period}"
    if not request.realtime_policy:
        return Finding(name, NOT_APPLICABLE, f"{seen}; the pipeline asks for no real-time policy")
    return Finding(name, WARNING, f"{seen}: real-time tasks that use their CPU fully (wait: spin, or a loop "
                   "that never idles) are stopped for the rest of each period",
                   "sysctl -w kernel.sched_rt_runtime_us=-1, kept in /etc/sysctl.d/90-shmpiped.conf; "
                   "isolate the workers' CPUs so nothing else starves")


def check_dev_shm(host: Host, request: Request) -> Finding:
    from .shm_inventory import room_left

    name, path = "dev-shm", host.path("/dev/shm")
    try:
        fs = os.statvfs(path)
    except OSError as exc:
        return Finding(name, PROBLEM, f"/dev/shm cannot be inspected ({exc.strerror})",
                       "mount a tmpfs there: mount -t tmpfs -o size=1g tmpfs /dev/shm")
    free, total = room_left(str(path)), fs.f_blocks * fs.f_frsize
    seen = f"/dev/shm has {free / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB"
    if request.shm_bytes is None:
        return Finding(name, OK, f"{seen} (give a PIPELINE to compare with its streams)")
    need = f"the pipeline's streams take {request.shm_bytes / 2**20:.1f} MiB"
    if free is not None and request.shm_bytes > free:
        return Finding(name, PROBLEM, f"{need}, more than {seen}",
                       "a larger /dev/shm: docker run --shm-size=<size> (or --ipc=host); Helm: shm.sizeLimit; "
                       "on a host: mount -o remount,size=<size> /dev/shm")
    return Finding(name, OK, f"{need}; {seen}")


def check_transparent_hugepages(host: Host, request: Request) -> Finding:
    name = "transparent-hugepages"
    base = "/sys/kernel/mm/transparent_hugepage"
    chosen = {key: _bracketed(host.read(f"{base}/{key}")) for key in ("enabled", "defrag")}
    if chosen["enabled"] is None:
        return Finding(name, NOT_APPLICABLE, "the kernel has no transparent huge pages")
    seen = f"enabled [{chosen['enabled']}], defrag [{chosen['defrag']}]"
    if "always" not in chosen.values():
        return Finding(name, OK, seen)
    return Finding(name, WARNING, f"{seen}: the kernel may stall a worker to compact memory or collapse its "
                   "pages into huge pages (khugepaged) while it runs",
                   f"echo madvise > {base}/enabled; echo madvise > {base}/defrag "
                   "(or transparent_hugepage=madvise on the kernel command line)")


def _bracketed(text: str | None) -> str | None:
    if text is None:
        return None
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), text)


def check_numa(host: Host, request: Request) -> Finding:
    name = "numa"
    nodes = {os.path.basename(os.path.dirname(p)): parse_cpulist(host.read(p))
             for p in host.glob("/sys/devices/system/node/node[0-9]*/cpulist")}
    layout = ", ".join(f"{node}: {cpulist(cpus)}" for node, cpus in sorted(nodes.items()))
    if len(nodes) <= 1:
        return Finding(name, NOT_APPLICABLE, f"one NUMA node ({layout or 'no node information'})")
    fix = ("keep realtime.cpus within one node and its memory there: numactl --cpunodebind=N --membind=N "
           "shmpiped run ..., or systemd NUMAPolicy=bind NUMAMask=N")
    if request.cpus is None:
        return Finding(name, WARNING, f"{len(nodes)} NUMA nodes ({layout}) and the workers may run on any: a "
                       "worker on another node than its streams' memory reads it remotely", fix)
    spanned = sorted(node for node, cpus in nodes.items() if cpus & set(request.cpus))
    if len(spanned) <= 1:
        return Finding(name, OK, f"the workers' CPUs {cpulist(request.cpus)} are on {spanned[0] if spanned else '?'} "
                       f"({layout})")
    return Finding(name, WARNING, f"the workers' CPUs {cpulist(request.cpus)} span {', '.join(spanned)} ({layout}): "
                   "workers on the other node read the streams remotely", fix)


def check_gpu(host: Host, request: Request) -> Finding:
    from .shm.device import gpu_status

    name, status = "gpu", gpu_status()
    seen = (f"{status.device_count} CUDA device{'s' if status.device_count != 1 else ''} ({status.backend})"
            if status.usable else status.reason)
    if request.gpu_errors:
        return Finding(name, PROBLEM, "; ".join(request.gpu_errors),
                       "run where a GPU is usable (docker run --gpus all; Helm gpu.enabled), or move the "
                       "pipeline's streams to storage: cpu")
    if request.gpu_errors is not None:
        return Finding(name, OK, f"the pipeline's GPU streams can be made: {seen}")
    if status.usable:
        return Finding(name, OK, seen)
    return Finding(name, NOT_APPLICABLE, f"no usable GPU: {seen}; CPU pipelines only"
                   + ("" if request.pipeline is None else "; the pipeline uses none"))


CHECKS = (check_privileges, check_rt_group_budget, check_isolated_cpus, check_governor, check_smt,
          check_rt_throttling, check_dev_shm, check_transparent_hugepages, check_numa, check_gpu)


def diagnose(request: Request | None = None, host: Host | None = None) -> list[Finding]:
    """Every finding for ``request`` (default: a generic fifo 50, locked-memory worker) on ``host``."""
    request, host = request or generic_request(), host or Host()
    findings: list[Finding] = []
    for check in CHECKS:
        found = check(host, request)
        findings.extend(found if isinstance(found, list) else [found])
    return findings


def is_ready(findings: list[Finding]) -> bool:
    """Ready: every finding is ok or not applicable."""
    return all(f.status in (OK, NOT_APPLICABLE) for f in findings)


def report(findings: list[Finding], request: Request) -> str:
    """The findings as text, the ones to act on first."""
    order = {PROBLEM: 0, WARNING: 1, OK: 2, NOT_APPLICABLE: 3}
    subject = request.pipeline or "a real-time worker (fifo 50, locked memory; give a PIPELINE for its own needs)"
    counts = {s: sum(f.status == s for f in findings) for s in (PROBLEM, WARNING)}
    verdict = ("ready for real time" if is_ready(findings) else
               f"not ready: {counts[PROBLEM]} problem(s), {counts[WARNING]} warning(s)")
    lines = [f"shmpiped doctor: {subject}: {verdict}"]
    for finding in sorted(findings, key=lambda f: order[f.status]):
        lines.append(f"  {finding.status.upper() if finding.status in (PROBLEM, WARNING) else finding.status:<14} "
                     f"{finding.name}: {finding.seen}")
        if finding.fix and finding.status in (PROBLEM, WARNING):
            lines.append(f"  {'':<14} fix: " + finding.fix.replace("\n", f"\n  {'':<14}      "))
    return "\n".join(lines)
