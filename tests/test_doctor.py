"""``shmpiped doctor``: each check on this machine for real, and on fake /proc and /sys trees for the
machines this one cannot show (isolated CPUs, governors, SMT, NUMA, an empty real-time cgroup budget).

The privileges are judged for real: the doctor's verdict is compared with what
the kernel then allows a fresh process (SCHED_FIFO, mlock), as this user and
again under ``setpriv``/``prlimit`` without the capabilities and limits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shmpiped.config import PipelineConfig
from shmpiped.doctor import (
    NOT_APPLICABLE,
    OK,
    PROBLEM,
    STATUSES,
    WARNING,
    Host,
    check_dev_shm,
    check_governor,
    check_gpu,
    check_isolated_cpus,
    check_numa,
    check_rt_group_budget,
    check_rt_throttling,
    check_smt,
    check_transparent_hugepages,
    cpulist,
    diagnose,
    generic_request,
    is_ready,
    parse_cpulist,
    request_for,
)

SHMPIPED = [sys.executable, "-m", "shmpiped.cli"]
NAMES = {"scheduling-privileges", "memory-lock-privileges", "rt-group-budget", "isolated-cpus", "cpu-governor",
         "smt", "rt-throttling", "dev-shm", "transparent-hugepages", "numa", "gpu"}
# A process with neither capability nor limit: setpriv drops CAP_SYS_NICE and CAP_IPC_LOCK (root only can,
# and only root has them), prlimit lowers the limits (anyone may).
DROP_CAPS = ["setpriv", "--inh-caps=-sys_nice,-ipc_lock", "--bounding-set=-sys_nice,-ipc_lock"]
NO_LIMITS = ["prlimit", "--rtprio=0:0", "--memlock=65536:65536"]


def unprivileged(command: list[str]) -> list[str]:
    if shutil.which("prlimit") is None or shutil.which("setpriv") is None:
        pytest.fail("prlimit and setpriv (util-linux) are needed")
    return [*NO_LIMITS, *(DROP_CAPS if os.geteuid() == 0 else []), *command]


def doctor(*args: str, wrap=lambda c: c) -> tuple[int, dict | str]:
    done = subprocess.run(wrap([*SHMPIPED, "doctor", *args]), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHMPIPED_PIPELINE": ""})
    if "--json" in args and done.returncode in (0, 1):
        return done.returncode, json.loads(done.stdout)
    return done.returncode, done.stdout + done.stderr


def by_name(report: dict) -> dict[str, dict]:
    return {f["name"]: f for f in report["findings"]}


def pipeline(tmp_path: Path, realtime: str = "", *, shape=(4,), kernel_extra: str = "") -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""\
        namespace: doctor
        {realtime}
        shared_memory:
          - {{name: input, shape: {list(shape)}, dtype: float32}}
          - {{name: output, shape: {list(shape)}, dtype: float32}}
        kernels:
          - {{name: stage, kind: cpu.scale, input: input, output: output, parameters: {{factor: 2.0}}{kernel_extra}}}
        """))
    return str(path)


# What the kernel lets a fresh process do, to compare the doctor's verdicts with.
FIFO_PROBE = ("import os\ntry:\n    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50)); print('yes')\n"
              "except PermissionError:\n    print('no')\n")
MLOCK_PROBE = ("import ctypes, mmap\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = mmap.mmap(-1, 200 << 20)\n"
               "address = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n"
               "print('yes' if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(200 << 20)) == 0 else 'no')\n")


def kernel_allows(probe: str, wrap=lambda c: c) -> bool:
    done = subprocess.run(wrap([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


# ---------------------------------------------------------------------- this machine, for real


def test_json_report_lists_every_check_and_the_exit_status_follows_it():
    status, report = doctor("--json")
    assert set(by_name(report)) == NAMES
    assert all(f["status"] in STATUSES and f["seen"] for f in report["findings"])
    # Every finding to act on says what to do.
    assert all(f["fix"] for f in report["findings"] if f["status"] in (WARNING, PROBLEM))
    assert report["ready"] == all(f["status"] in (OK, NOT_APPLICABLE) for f in report["findings"])
    assert status == (0 if report["ready"] else 1)
    assert report["pipeline"] is None


def test_privilege_verdicts_agree_with_what_the_kernel_allows():
    """As this user: 'ok' exactly when a fresh process may set SCHED_FIFO 50 and lock 200 MiB."""
    _, report = doctor("--json")
    found = by_name(report)
    assert (found["scheduling-privileges"]["status"] == OK) == kernel_allows(FIFO_PROBE)
    assert (found["memory-lock-privileges"]["status"] == OK) == kernel_allows(MLOCK_PROBE)


def test_without_the_privileges_each_is_a_problem_with_the_fix_per_target():
    wrap = unprivileged
    assert not kernel_allows(FIFO_PROBE, wrap) and not kernel_allows(MLOCK_PROBE, wrap)
    status, report = doctor("--json", wrap=wrap)
    found = by_name(report)
    assert status == 1 and report["ready"] is False
    scheduling, memory = found["scheduling-privileges"], found["memory-lock-privileges"]
    assert scheduling["status"] == memory["status"] == PROBLEM
    assert "CAP_SYS_NICE" in scheduling["seen"] and "RLIMIT_RTPRIO is 0" in scheduling["seen"]
    assert "CAP_IPC_LOCK" in memory["seen"] and "RLIMIT_MEMLOCK is 65536 bytes" in memory["seen"]
    for fix in (scheduling["fix"], memory["fix"]):
        assert "--cap-add SYS_NICE --ulimit rtprio=99 --ulimit memlock=-1" in fix
        assert "deploy/systemd/realtime.conf" in fix and "realtime.enabled" in fix
    # The text form shows the problems first, each with its fix.
    status, text = doctor(wrap=wrap)
    lines = text.splitlines()
    assert status == 1 and "not ready: " in lines[0]
    assert lines[1].split()[:2] == ["PROBLEM", "scheduling-privileges:"]
    assert lines[2].strip().startswith("fix: Docker: docker run --cap-add SYS_NICE")


def test_privileges_are_not_applicable_to_a_pipeline_without_real_time(tmp_path):
    status, report = doctor(pipeline(tmp_path), "--json", wrap=unprivileged)
    found = by_name(report)
    assert report["pipeline"].endswith("pipeline.yaml")
    for name in ("scheduling-privileges", "memory-lock-privileges", "rt-group-budget"):
        assert found[name]["status"] == NOT_APPLICABLE, found[name]
    assert "RLIMIT_RTPRIO 0" in found["scheduling-privileges"]["seen"]


def test_a_real_time_pipeline_is_judged_on_its_own_settings(tmp_path):
    # fifo only: the memory lock is not needed, so a 64 KiB RLIMIT_MEMLOCK does not matter.
    path = pipeline(tmp_path, "realtime: {policy: fifo, priority: 10}")
    _, report = doctor(path, "--json", wrap=unprivileged)
    found = by_name(report)
    assert found["scheduling-privileges"]["status"] == PROBLEM
    assert "priority 10" in found["scheduling-privileges"]["seen"]
    assert found["memory-lock-privileges"]["status"] == NOT_APPLICABLE
    # With RLIMIT_RTPRIO 10 (and no capability) priority 10 is allowed, 11 is not.
    limited = lambda c: ["prlimit", "--rtprio=10:10", *(DROP_CAPS if os.geteuid() == 0 else []), *c]  # noqa: E731
    # (Raising a hard limit needs CAP_SYS_RESOURCE, which some sandboxes deny even to root: then the
    # container and systemd tests cover the limits.)
    if subprocess.run(limited(["true"]), capture_output=True).returncode == 0:
        _, report = doctor(path, "--json", wrap=limited)
        assert by_name(report)["scheduling-privileges"]["status"] == OK
        _, report = doctor(pipeline(tmp_path, "realtime: {policy: rr, priority: 11}"), "--json", wrap=limited)
        assert by_name(report)["scheduling-privileges"]["status"] == PROBLEM


def test_dev_shm_too_small_for_the_pipeline(tmp_path):
    free = shutil.disk_usage("/dev/shm").free
    side = int((free / 4 * 2) ** 0.5) + 1024   # one float32 frame of side x side: over half of what is free
    status, report = doctor(pipeline(tmp_path, shape=(side, side)), "--json")
    finding = by_name(report)["dev-shm"]
    assert status == 1 and finding["status"] == PROBLEM, finding
    assert "MiB free" in finding["seen"] and "--shm-size" in finding["fix"]
    from shmpiped.shm_inventory import shm_footprint

    path = pipeline(tmp_path)
    _, report = doctor(path, "--json")
    total = shm_footprint(PipelineConfig.from_yaml(path))["total"]
    assert by_name(report)["dev-shm"]["status"] == OK
    assert f"the pipeline's streams take {total / 2**20:.1f} MiB" in by_name(report)["dev-shm"]["seen"]


def test_workers_on_a_cpu_this_machine_lacks_are_a_problem(tmp_path):
    missing = max(os.sched_getaffinity(0)) + 1
    _, report = doctor(pipeline(tmp_path, f"realtime: {{cpus: [{missing}]}}"), "--json")
    finding = by_name(report)["isolated-cpus"]
    assert finding["status"] == PROBLEM and f"CPU {missing}" in finding["seen"], finding
    # The same rule the daemon applies before it builds anything (it exits 78).
    done = subprocess.run([*SHMPIPED, "run", str(tmp_path / "pipeline.yaml"), "--duration", "1",
                           "--http-address", "none", "--control-socket", "none"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and f"CPU {missing}" in done.stderr, done.stderr[-2000:]


def test_an_invalid_pipeline_exits_78(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("namespace: x\nrealtime: {policy: deadline}\nshared_memory: []\n")
    status, text = doctor(str(path))
    assert status == 78 and "policy must be one of other, fifo, rr" in text
    status, text = doctor(str(tmp_path / "missing.yaml"))
    assert status == 66 and "missing.yaml" in text  # EX_NOINPUT, as every command


def test_gpu_pipeline(tmp_path, emulated_gpu, monkeypatch):
    """A GPU stream: usable on the emulated device; a problem, naming the stream, where CuPy sees none."""
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent("""\
        namespace: doctor
        shared_memory:
          - {name: frames, shape: [8], dtype: float32, storage: gpu, gpu_device: "cuda:0"}
          - {name: out, shape: [8], dtype: float32}
        kernels:
          - {name: k, kind: cpu.copy, input: frames, output: out}
        """))
    request = request_for(PipelineConfig.from_yaml(str(path)), str(path))
    assert check_gpu(Host(), request).status == OK
    from shmpiped.shm.device import EMULATION_ENV, gpu_status

    monkeypatch.setenv(EMULATION_ENV, "0")

    gpu_status.cache_clear()
    request = request_for(PipelineConfig.from_yaml(str(path)), str(path))
    finding = check_gpu(Host(), request)
    if gpu_status().usable:  # a machine with a real GPU
        assert finding.status == OK and "(cuda)" in finding.seen
    else:
        assert finding.status == PROBLEM and "'frames'" in finding.seen and "--gpus all" in finding.fix


# ---------------------------------------------------------------------- fake machines


def fake_host(tmp_path: Path, files: dict[str, str]) -> Host:
    for name, text in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return Host(tmp_path)


def config_with(tmp_path: Path, realtime: str) -> PipelineConfig:
    return PipelineConfig.from_yaml(pipeline(tmp_path, realtime))


def test_cpulists():
    assert parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpulist("") == parse_cpulist("(null)") == parse_cpulist(None) == set()
    assert cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8" and cpulist(set()) == "none"


def test_host_reads_under_its_root(tmp_path):
    host = fake_host(tmp_path, {"/proc/self/status": "Name:\tx\nCpus_allowed_list:\t0-3\n",
                                "/sys/devices/system/node/node0/cpulist": "0-1",
                                "/sys/devices/system/node/node1/cpulist": "2-3"})
    assert host.status_field("Cpus_allowed_list") == "0-3"
    assert host.read("/proc/cmdline") is None
    assert host.glob("/sys/devices/system/node/node*/cpulist") == [
        "/sys/devices/system/node/node0/cpulist", "/sys/devices/system/node/node1/cpulist"]


CPUS_0_3 = {"/sys/devices/system/cpu/online": "0-3", "/proc/self/status": "Cpus_allowed_list:\t0-3"}


def test_isolated_cpus(tmp_path):
    # Isolated by the command line (flags before the list) and placed there: ok.
    host = fake_host(tmp_path / "a", {**CPUS_0_3, "/proc/cmdline": "ro isolcpus=domain,managed_irq,2-3 nohz_full=2-3",
                                      "/sys/devices/system/cpu/isolated": ""})
    request = request_for(config_with(tmp_path, "realtime: {cpus: [2, 3]}"))
    finding = check_isolated_cpus(host, request)
    assert finding.status == OK and "isolated 2-3, nohz_full 2-3" in finding.seen, finding
    # Placed on CPUs that are not isolated: a warning with the boot parameters.
    request = request_for(config_with(tmp_path, "realtime: {cpus: [1, 2]}"))
    finding = check_isolated_cpus(host, request)
    assert finding.status == WARNING and "CPUs 1 are not isolated" in finding.seen
    assert "isolcpus=1-2 nohz_full=1-2" in finding.fix
    # Isolated CPUs the pipeline does not use; none isolated at all.
    finding = check_isolated_cpus(host, generic_request())
    assert finding.status == WARNING and "realtime: {cpus: [2, 3]}" in finding.fix
    bare = fake_host(tmp_path / "b", {**CPUS_0_3, "/proc/cmdline": "ro quiet"})
    finding = check_isolated_cpus(bare, generic_request())
    assert finding.status == WARNING and "no CPU is isolated" in finding.seen and "isolcpus=2-3" in finding.fix


def test_isolated_cpus_outside_the_affinity_need_taskset(tmp_path):
    """isolcpus leaves the isolated CPUs out of every process's affinity: the daemon must be started on them."""
    host = fake_host(tmp_path, {"/sys/devices/system/cpu/online": "0-3", "/proc/self/status": "Cpus_allowed_list:\t0-1",
                                "/sys/devices/system/cpu/isolated": "2-3"})
    finding = check_isolated_cpus(host, request_for(config_with(tmp_path, "realtime: {cpus: [2, 3]}")))
    assert finding.status == PROBLEM and "may use 0-1" in finding.seen, finding
    assert "taskset -c 0-3 shmpiped run" in finding.fix


def test_governor(tmp_path):
    base = "/sys/devices/system/cpu"
    host = fake_host(tmp_path / "a", {**CPUS_0_3, **{f"{base}/cpu{n}/cpufreq/scaling_governor": g
                                                     for n, g in enumerate(["performance", "powersave",
                                                                            "performance", "schedutil"])}})
    finding = check_governor(host, generic_request())
    assert finding.status == WARNING and "cpu1 powersave" in finding.seen and "CPU 1,3 " in finding.seen
    assert "cpupower frequency-set -g performance" in finding.fix
    # Only the workers' CPUs matter.
    assert check_governor(host, request_for(config_with(tmp_path, "realtime: {cpus: [0, 2]}"))).status == OK
    finding = check_governor(fake_host(tmp_path / "vm", CPUS_0_3), generic_request())
    assert finding.status == NOT_APPLICABLE and "virtual machine" in finding.seen


def test_smt(tmp_path):
    base = "/sys/devices/system/cpu"
    on = fake_host(tmp_path / "on", {**CPUS_0_3, f"{base}/smt/control": "on", f"{base}/smt/active": "1",
                                     **{f"{base}/cpu{n}/topology/thread_siblings_list": f"{n // 2 * 2},{n // 2 * 2 + 1}"
                                        for n in range(4)}})
    finding = check_smt(on, request_for(config_with(tmp_path, "realtime: {cpus: [2]}")))
    assert finding.status == WARNING and "siblings 2,3" in finding.seen and "smt/control" in finding.fix
    off = fake_host(tmp_path / "off", {f"{base}/smt/control": "off", f"{base}/smt/active": "0"})
    assert check_smt(off, generic_request()).status == OK
    none = fake_host(tmp_path / "none", {f"{base}/smt/control": "notsupported", f"{base}/smt/active": "0"})
    assert check_smt(none, generic_request()).status == NOT_APPLICABLE


def test_rt_throttling(tmp_path):
    throttled = fake_host(tmp_path / "a", {"/proc/sys/kernel/sched_rt_runtime_us": "950000",
                                           "/proc/sys/kernel/sched_rt_period_us": "1000000"})
    finding = check_rt_throttling(throttled, generic_request())
    assert finding.status == WARNING and "kernel.sched_rt_runtime_us=-1" in finding.fix
    plain = request_for(config_with(tmp_path, ""))
    assert check_rt_throttling(throttled, plain).status == NOT_APPLICABLE
    free = fake_host(tmp_path / "b", {"/proc/sys/kernel/sched_rt_runtime_us": "-1"})
    assert check_rt_throttling(free, generic_request()).status == OK


def test_rt_group_budget(tmp_path):
    # cgroup v1 with RT group scheduling, as Docker's cgroups get it: no budget, so SCHED_FIFO is refused.
    empty = fake_host(tmp_path / "docker", {
        "/proc/self/cgroup": "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.rt_runtime_us": "0",
        "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.rt_period_us": "1000000"})
    finding = check_rt_group_budget(empty, generic_request())
    assert finding.status == PROBLEM and "/docker/abc" in finding.seen and "cpu.rt_runtime_us = 0" in finding.seen
    assert "--cpu-rt-runtime=950000" in finding.fix
    # Inside the container the host's path does not exist: its own cgroup is the mount itself.
    inside = fake_host(tmp_path / "inside", {"/proc/self/cgroup": "2:cpu,cpuacct:/docker/abc",
                                             "/sys/fs/cgroup/cpu,cpuacct/cpu.rt_runtime_us": "0"})
    assert check_rt_group_budget(inside, generic_request()).status == PROBLEM
    budget = fake_host(tmp_path / "budget", {"/proc/self/cgroup": "3:cpu:/lab",
                                             "/sys/fs/cgroup/cpu/lab/cpu.rt_runtime_us": "500000"})
    assert check_rt_group_budget(budget, generic_request()).status == OK
    assert check_rt_group_budget(empty, request_for(config_with(tmp_path, ""))).status == NOT_APPLICABLE
    v2 = fake_host(tmp_path / "v2", {"/proc/self/cgroup": "0::/system.slice/shmpiped.service"})
    assert check_rt_group_budget(v2, generic_request()).status == NOT_APPLICABLE


def test_transparent_hugepages(tmp_path):
    base = "/sys/kernel/mm/transparent_hugepage"
    always = fake_host(tmp_path / "a", {f"{base}/enabled": "[always] madvise never",
                                        f"{base}/defrag": "always defer defer+madvise [madvise] never"})
    finding = check_transparent_hugepages(always, generic_request())
    assert finding.status == WARNING and "enabled [always], defrag [madvise]" in finding.seen
    madvise = fake_host(tmp_path / "b", {f"{base}/enabled": "always [madvise] never",
                                         f"{base}/defrag": "[never]"})
    assert check_transparent_hugepages(madvise, generic_request()).status == OK
    assert check_transparent_hugepages(fake_host(tmp_path / "c", {}), generic_request()).status == NOT_APPLICABLE


def test_numa(tmp_path):
    two = fake_host(tmp_path / "a", {"/sys/devices/system/node/node0/cpulist": "0-1",
                                     "/sys/devices/system/node/node1/cpulist": "2-3"})
    finding = check_numa(two, request_for(config_with(tmp_path, "realtime: {cpus: [1, 2]}")))
    assert finding.status == WARNING and "span node0, node1" in finding.seen and "--membind" in finding.fix
    assert check_numa(two, request_for(config_with(tmp_path, "realtime: {cpus: [2, 3]}"))).status == OK
    assert check_numa(two, generic_request()).status == WARNING
    one = fake_host(tmp_path / "b", {"/sys/devices/system/node/node0/cpulist": "0-3"})
    assert check_numa(one, generic_request()).status == NOT_APPLICABLE


def test_dev_shm_missing(tmp_path):
    finding = check_dev_shm(Host(tmp_path), generic_request())
    assert finding.status == PROBLEM and "mount -t tmpfs" in finding.fix


def test_a_ready_machine(tmp_path):
    """Everything tuned: isolated, nohz_full, performance governors, SMT off, no throttling, THP madvise,
    one node, a budget; the workers placed on the isolated CPUs (privileges: this process's own)."""
    base = "/sys/devices/system/cpu"
    host = fake_host(tmp_path / "tuned", {
        **CPUS_0_3, "/proc/cmdline": "isolcpus=2-3 nohz_full=2-3", f"{base}/smt/control": "off",
        f"{base}/smt/active": "0", **{f"{base}/cpu{n}/cpufreq/scaling_governor": "performance" for n in range(4)},
        "/proc/sys/kernel/sched_rt_runtime_us": "-1", "/sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never",
        "/sys/kernel/mm/transparent_hugepage/defrag": "[madvise]", "/sys/devices/system/node/node0/cpulist": "0-3",
        "/proc/self/cgroup": "0::/"})
    (tmp_path / "tuned" / "dev" / "shm").mkdir(parents=True)
    findings = diagnose(request_for(config_with(tmp_path, "realtime: {cpus: [2, 3]}")), host)
    machine = [f for f in findings if not f.name.endswith("-privileges")]
    assert all(f.status in (OK, NOT_APPLICABLE) for f in machine), [f for f in machine if f.status not in (OK, NOT_APPLICABLE)]
    assert is_ready(machine) and not is_ready([*machine, findings[0].__class__("x", WARNING, "seen", "fix")])
