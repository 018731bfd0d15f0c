"""Real time in real processes (issue 13), read back from the kernel, never from our own variables.

Policy, priority, CPUs and locked memory of worker processes from /proc and sched_getscheduler;
the daemon run under setpriv/prlimit without CAP_SYS_NICE, CAP_IPC_LOCK and the rlimits (real
privilege dropping: this suite runs as root); the /proc counters moving while frames flow; the
hybrid wait's spin time seen in the worker's voluntary context switches against its waits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from shmpiped.placement import available_cpus, format_cpu_list, parse_cpu_list
from shmpiped.service.metrics import render

from .conftest import pipeline, stream, unavailable, wait_for
from .daemon_support import metric_value

SCHED_POLICY = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}


def kernel_view(pid: int) -> dict:
    """What the kernel holds for ``pid``: policy and rt_priority (/proc/<pid>/stat fields 41 and 40),
    Cpus_allowed_list and VmLck (/proc/<pid>/status), and sched_getscheduler for the policy."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    status = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    assert int(fields[38]) == os.sched_getscheduler(pid)
    return {"policy": SCHED_POLICY[int(fields[38])], "rt_priority": int(fields[37]),
            "cpus": status["Cpus_allowed_list"], "vmlck_kb": int(status["VmLck"].split()[0]),
            "voluntary": int(status["voluntary_ctxt_switches"])}


def need_two_cpus():
    if len(available_cpus()) < 2:
        unavailable("needs two CPUs this process may use", "real-time placement")


def need_privilege_tools():
    for tool in ("setpriv", "prlimit"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool} (util-linux)", "real-time privileges")
    if os.geteuid() != 0:
        unavailable("drops CAP_SYS_NICE from a root process: needs root", "real-time privileges")


#: Run a command without CAP_SYS_NICE and CAP_IPC_LOCK (bounding and inheritable sets: a root
#: process exec'd after this cannot get them back), RLIMIT_RTPRIO 0 and an 8 MiB RLIMIT_MEMLOCK.
UNPRIVILEGED = ("setpriv", "--bounding-set", "-sys_nice,-ipc_lock", "--inh-caps", "-sys_nice,-ipc_lock",
                "prlimit", "--rtprio=0", "--memlock=8388608")


def three_stage(namespace: str, realtime_block: dict | None, **kernel_a) -> dict:
    config = pipeline(namespace, [stream("input"), stream("mid"), stream("output")], [
        {"name": "a", "kind": "cpu.copy", "input": "input", "output": "mid", **kernel_a},
        {"name": "b", "kind": "cpu.scale", "input": "mid", "output": "output", "parameters": {"factor": 2}}])
    if realtime_block is not None:
        config["realtime"] = realtime_block
    return config


def write_yaml(path, config: dict):
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------- in effect in the workers


def test_policy_priority_cpu_and_locked_memory_are_in_effect_in_the_workers(namespace, manager_factory):
    need_two_cpus()
    pinned = available_cpus()[1]
    m = manager_factory(three_stage(namespace, {"policy": "fifo", "priority": 50, "lock_memory": True},
                                    cpu=pinned, realtime={"priority": 60}))
    m.build()
    m.start()
    a, b = (kernel_view(m.workers[name].pid) for name in ("a", "b"))
    assert (a["policy"], a["rt_priority"]) == ("fifo", 60)
    assert (b["policy"], b["rt_priority"]) == ("fifo", 50)
    assert a["cpus"] == str(pinned)
    assert a["vmlck_kb"] > 0 and b["vmlck_kb"] > 0
    # status() says the same, read back from /proc
    entry = m.status()["workers"]["a"]["realtime"]
    assert entry["applied"] is True and entry["problems"] == []
    assert entry["effective"]["policy"] == "fifo" and entry["effective"]["priority"] == 60
    assert entry["effective"]["cpus"] == [pinned]
    assert entry["effective"]["memory_locked_bytes"] == a["vmlck_kb"] * 1024
    assert entry["requested"] == {"policy": "fifo", "priority": 60, "lock_memory": True, "wait": "futex",
                                  "spin_us": 50, "required": False, "cpus": None}
    # the streams were prefaulted at build, and the frames still flow
    assert any(e["type"] == "streams_prefaulted" and e["bytes"] > 0 for e in m.events)
    before = m.get_stream("output").count
    m.get_stream("input").write(np.ones(4, "float32"))
    m.get_stream("output").wait(before, timeout=5)
    # and /metrics exports it
    text = render(m.runtime_snapshot()).decode()
    labels = {"pipeline": namespace, "worker": "a"}
    assert metric_value(text, "shmpiped_worker_scheduling_policy", state="fifo", **labels) == 1
    assert metric_value(text, "shmpiped_worker_scheduling_policy", state="other", **labels) == 0
    assert metric_value(text, "shmpiped_worker_realtime_priority", **labels) == 60
    assert metric_value(text, "shmpiped_worker_memory_locked_bytes", **labels) > 0


def test_round_robin_goes_over_realtime_cpus(namespace, manager_factory):
    need_two_cpus()
    pool = available_cpus()[-1:]
    m = manager_factory(three_stage(namespace, {"cpus": pool}))
    m.build()
    m.start()
    for name in ("a", "b"):
        assert kernel_view(m.workers[name].pid)["cpus"] == str(pool[0])
        assert kernel_view(m.workers[name].pid)["policy"] == "other"  # the defaults: no real time


def test_without_a_realtime_block_workers_stay_plain(namespace, manager_factory):
    m = manager_factory(three_stage(namespace, None))
    m.build()
    m.start()
    view = kernel_view(m.workers["a"].pid)
    assert (view["policy"], view["rt_priority"], view["vmlck_kb"]) == ("other", 0, 0)
    assert not any(e["type"] == "streams_prefaulted" for e in m.events)
    assert m.status()["workers"]["a"]["realtime"]["applied"] is True


# ---------------------------------------------------------------------- privileges


REALTIME_REQUIRED = {"policy": "fifo", "priority": 50, "lock_memory": True, "required": True}


def test_required_without_the_privileges_exits_78_naming_what_is_missing_and_the_fixes(namespace, tmp_path):
    need_privilege_tools()
    path = write_yaml(tmp_path / "rt.yaml", three_stage(namespace, REALTIME_REQUIRED))
    result = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "shmpiped.cli", "run", str(path),
                             "--http-address", "none", "--control-socket", "none"],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    for expected in ("realtime.required is true", "CAP_SYS_NICE", "RLIMIT_RTPRIO", "CAP_IPC_LOCK",
                     "RLIMIT_MEMLOCK", f"(in {path}, line", "--cap-add SYS_NICE --ulimit rtprio=99 --ulimit memlock=-1",
                     "LimitRTPRIO=99", "LimitMEMLOCK=infinity", "AmbientCapabilities=CAP_SYS_NICE CAP_IPC_LOCK",
                     "realtime.enabled"):
        assert expected in output, (expected, output)


def test_the_same_file_runs_where_the_privileges_are(namespace, tmp_path, daemons):
    path = write_yaml(tmp_path / "rt.yaml", three_stage(namespace, REALTIME_REQUIRED))
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    assert kernel_view(daemon.status()["workers"]["a"]["pid"])["policy"] == "fifo"


def test_not_required_runs_with_one_warning_and_reports_what_holds(namespace, tmp_path, daemons):
    need_privilege_tools()
    config = three_stage(namespace, {"policy": "fifo", "priority": 50, "lock_memory": True})
    config["sources"] = [{"name": "camera", "kind": "synthetic.array", "stream": "input",
                          "parameters": {"pattern": "ramp", "rate_hz": 100}}]
    daemon = daemons(write_yaml(tmp_path / "rt.yaml", config), namespace, tmp_path, prefix=UNPRIVILEGED)
    daemon.wait_ready()
    status = daemon.status()
    for name in ("a", "b"):
        entry = status["workers"][name]
        view = kernel_view(entry["pid"])
        assert (view["policy"], view["rt_priority"], view["vmlck_kb"]) == ("other", 0, 0)
        assert entry["realtime"]["effective"]["policy"] == "other"
        assert entry["realtime"]["applied"] is False
        assert any("CAP_SYS_NICE" in problem for problem in entry["realtime"]["problems"])
        assert entry["health"] in ("active", "waiting-input", "idle")  # carries on at normal priority
    wait_for(lambda: daemon.status()["workers"]["b"].get("frames_processed", 0) > 10, timeout=10)
    warnings = [line for line in daemon.output.splitlines() if "real-time settings not fully applied" in line]
    assert len(warnings) == 1, daemon.output  # one for the pipeline, not one per worker
    assert "CAP_SYS_NICE" in warnings[0] and "RLIMIT_MEMLOCK" in warnings[0]


def test_privilege_problems_reads_this_process(tmp_path):
    need_privilege_tools()
    code = ("from shmpiped import realtime; from shmpiped.config import RealtimeConfig\n"
            "p = realtime.Privileges.of_this_process()\n"
            "print(p.cap_sys_nice, p.cap_ipc_lock, p.rtprio_limit, p.memlock_limit)\n"
            "print(len(realtime.privilege_problems(RealtimeConfig(policy='rr', priority=10, lock_memory=True))))\n")
    dropped = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    assert dropped == ["False", "False", "0", "8388608", "2"]


def test_rlimits_alone_are_enough_within_them():
    """The rule without capabilities (this machine's hard limits cannot be raised to show it live)."""
    from shmpiped.config import RealtimeConfig
    from shmpiped.realtime import Privileges, privilege_problems

    limited = Privileges(cap_sys_nice=False, cap_ipc_lock=False, rtprio_limit=20, memlock_limit=None)
    assert privilege_problems(RealtimeConfig(policy="rr", priority=20, lock_memory=True), limited) == []
    [problem] = privilege_problems(RealtimeConfig(policy="rr", priority=21), limited)
    assert "RLIMIT_RTPRIO of at least 21" in problem and "RLIMIT_RTPRIO is 20" in problem


# ---------------------------------------------------------------------- where the file runs


def test_a_cpu_this_machine_lacks_validates_but_run_exits_78_naming_it(namespace, tmp_path):
    missing = max(available_cpus()) + 64
    config = three_stage(namespace, {"policy": "fifo"}, cpu=missing)
    path = write_yaml(tmp_path / "rt.yaml", config)
    checked = subprocess.run([sys.executable, "-m", "shmpiped.cli", "validate", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "run", str(path), "--http-address", "none",
                             "--control-socket", "none"], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert f"kernel 'a' is pinned to cpu {missing}, which this machine does not have" in output
    assert f"(in {path}, line" in output


# ---------------------------------------------------------------------- observability


def test_proc_counters_move_while_frames_flow(namespace, manager_factory):
    m = manager_factory(three_stage(namespace, None))
    m.build()
    m.start()
    m.start_synthetic_input({"stream_name": "input", "pattern": "random", "rate_hz": 500.0})
    wait_for(lambda: m.status()["workers"]["b"].get("frames_processed", 0) > 20, timeout=10)
    first = m.status()["workers"]["a"]["proc"]
    frames = m.status()["workers"]["a"]["frames_processed"]
    wait_for(lambda: m.status()["workers"]["a"]["frames_processed"] > frames + 300, timeout=10)
    second = m.status()["workers"]["a"]["proc"]
    assert second["cpu_seconds"] > first["cpu_seconds"]
    assert second["voluntary_context_switches"] > first["voluntary_context_switches"] + 100  # parks per frame
    assert second["minor_page_faults"] >= first["minor_page_faults"]
    assert second["major_page_faults"] >= first["major_page_faults"]
    text = render(m.runtime_snapshot()).decode()
    exported = metric_value(text, "shmpiped_worker_voluntary_context_switches_total", pipeline=namespace,
                            worker="a")
    assert exported >= second["voluntary_context_switches"]
    assert metric_value(text, "shmpiped_worker_cpu_seconds_total", pipeline=namespace, worker="a") > 0


def test_hybrid_wait_spins_for_spin_us_before_parking(namespace, manager_factory):
    """Frames 10 ms apart: a reader spinning 30 ms catches each while spinning (waits rise, voluntary
    context switches do not); one spinning 0 us parks on every frame (a voluntary switch per wait)."""
    need_two_cpus()
    cpus = available_cpus()
    config = pipeline(namespace, [stream("input"), stream("spun"), stream("parked")], [
        {"name": "spinner", "kind": "cpu.copy", "input": "input", "output": "spun", "cpu": cpus[1],
         "realtime": {"wait": "hybrid", "spin_us": 30000}},
        {"name": "parker", "kind": "cpu.copy", "input": "input", "output": "parked", "cpu": cpus[0],
         "realtime": {"wait": "hybrid", "spin_us": 0}}])
    m = manager_factory(config)
    m.build()
    m.start()
    writer = m.get_stream("input")

    def counts():
        workers = m.status()["workers"]
        return {name: (workers[name].get("waits", 0), workers[name]["proc"]["voluntary_context_switches"])
                for name in ("spinner", "parker")}

    data = np.zeros(4, "float32")
    writer.write(data)
    time.sleep(0.1)
    before = counts()
    done = threading.Event()
    for _ in range(100):  # 100 frames, 10 ms apart
        writer.write(data)
        done.wait(0.01)
    time.sleep(0.05)
    after = counts()
    spinner_waits = after["spinner"][0] - before["spinner"][0]
    spinner_switches = after["spinner"][1] - before["spinner"][1]
    parker_waits = after["parker"][0] - before["parker"][0]
    parker_switches = after["parker"][1] - before["parker"][1]
    assert spinner_waits >= 90 and parker_waits >= 90, after
    assert parker_switches >= 0.8 * parker_waits, (parker_waits, parker_switches)
    assert spinner_switches <= 0.2 * spinner_waits, (spinner_waits, spinner_switches)
    assert m.status()["workers"]["spinner"]["realtime"]["effective"]["spin_us"] == 30000


# ---------------------------------------------------------------------- the daemon's own threads


def test_the_daemons_threads_stay_off_the_workers_cpus_and_out_of_real_time(namespace, tmp_path, daemons):
    need_two_cpus()
    cpus = available_cpus()
    config = three_stage(namespace, {"policy": "fifo", "priority": 50, "cpus": cpus[1:]})
    daemon = daemons(write_yaml(tmp_path / "rt.yaml", config), namespace, tmp_path)
    daemon.wait_ready()
    daemon.get("/metrics")  # an HTTP request thread exists
    worker_cpus = set(cpus[1:])

    def thread(tid: int) -> dict:
        with open(f"/proc/{daemon.process.pid}/task/{tid}/comm") as handle:
            return {"name": handle.read().strip(), **kernel_view(tid)}

    def service_threads() -> list[dict]:
        found = []
        for tid in map(int, os.listdir(f"/proc/{daemon.process.pid}/task")):
            try:
                found.append(thread(tid))
            except (FileNotFoundError, ProcessLookupError):
                continue
        return found

    main = daemon.process.pid  # the main thread runs the supervisor loop
    wait_for(lambda: not set(parse_cpu_list(thread(main)["cpus"])) & worker_cpus, timeout=10,
             describe=lambda: str(service_threads()))
    everything = service_threads()
    confined = [t for t in everything if t["name"] in ("shmpiped-ctl", "shmpiped-http")]
    assert {t["name"] for t in confined} == {"shmpiped-ctl", "shmpiped-http"}, everything
    for view in everything:
        assert view["policy"] in ("other", "idle", "batch"), view  # never a real-time policy
    for view in confined + [thread(main)]:
        assert not set(parse_cpu_list(view["cpus"])) & worker_cpus, view
    for name in ("a", "b"):
        view = kernel_view(daemon.status()["workers"][name]["pid"])
        assert view["policy"] == "fifo" and view["cpus"] == format_cpu_list(worker_cpus)
