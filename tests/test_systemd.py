"""The systemd units of deploy/systemd/: verified by systemd-analyze, then run by a real systemd.

The second half boots systemd as PID 1 in an unprivileged container on this
machine's Docker engine (see tests/systemd_support.py) and drives the units with
``systemctl`` exactly as on a lab machine: READY gates ``active``, the STATUS
line shows, a killed daemon is restarted, a wedged one is killed by the
watchdog and restarted, and an invalid configuration (exit 78) is not
restarted.  Each test boots its own container and uses its own namespace.

In an unprivileged container systemd cannot build the mount namespace that
ProtectSystem=, ProtectHome=, PrivateTmp= and the Protect* mount options need;
it runs the service without them (logging "Failed to set up namespace,
assuming containerized execution, ignoring" at debug level).  Everything else
in the units (user, umask, runtime directory, seccomp-based restrictions,
NoNewPrivileges, capability bounding set, limits) applies for real.  One test
adds CAP_SYS_ADMIN to its container, and only that, so that systemd can build
the whole sandbox, and checks that the pipeline runs inside it.
LimitMEMLOCK=infinity cannot exceed the engine's hard limit either (8 MiB
here): systemd falls back to the closest allowed value, as on any host that
caps it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from . import systemd_support
from .docker_support import Unavailable
from .systemd_support import (
    DROP_IN,
    SERVICE,
    TEMPLATE,
    UNIT,
    UNITS,
    configure,
    new_namespace,
    segments,
    shmpiped_executable,
    start_and_wait_active,
    systemd_analyze_verify,
    unavailable,
    unit_for_verify,
    unit_settings,
)

# The fixtures that boot systemd containers (tests/systemd_support.py).
systemd_image, boot, machine = systemd_support.systemd_image, systemd_support.boot, systemd_support.machine

STATUS_LINE = re.compile(r"^state=running workers active=\d+/1 failed=0(, output [\d.]+ Hz at \w+)?$")
STARTING_STATUS = re.compile(r"^(state=running workers active=0/1 failed=0(, output 0\.0 Hz at \w+)?)?$")
VENV_PYTHON = "/opt/shmpiped/bin/python"

# systemd-analyze verify prints nothing for these units.  Warnings that systemd reports while
# still exiting 0 ("Unknown key ..., ignoring", "Failed to parse ..., ignoring") would go
# unnoticed through the exit status alone, so any output fails the test.  No warning is accepted;
# User=shmpiped does not have to exist on the verifying machine (systemd 252 does not check it).
ACCEPTED_VERIFY_WARNINGS: tuple[re.Pattern, ...] = ()


# ---------------------------------------------------------------------- systemd-analyze


@pytest.fixture(scope="module")
def executable():
    try:
        return shmpiped_executable()
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.mark.parametrize("unit, name", [(SERVICE, "shmpiped.service"), (TEMPLATE, "shmpiped@lab.service")],
                         ids=["shmpiped.service", "shmpiped@lab.service"])
def test_systemd_analyze_verify(tmp_path, executable, unit, name):
    # The template is verified through an instance: verify finds shmpiped@.service next to it.
    unit_for_verify(unit, tmp_path, executable)
    try:
        done = systemd_analyze_verify(tmp_path / name)
    except Unavailable as exc:
        unavailable(str(exc))
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    unexpected = [line for line in output if not any(p.search(line) for p in ACCEPTED_VERIFY_WARNINGS)]
    assert done.returncode == 0 and not unexpected, "\n".join(output)


def test_verify_catches_a_missing_executable(tmp_path):
    """The check above is real: verify fails when ExecStart= names nothing executable."""
    copy = unit_for_verify(SERVICE, tmp_path, str(tmp_path / "no-such-shmpiped"))
    try:
        done = systemd_analyze_verify(copy)
    except Unavailable as exc:
        unavailable(str(exc))
    assert done.returncode != 0 and "no-such-shmpiped" in done.stdout + done.stderr


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_units_keep_real_time_shared_memory_and_gpus_working(unit):
    settings = unit_settings(unit)
    one = {key: values[-1] for key, values in settings.items()}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "10s", "Restart": "on-failure",
        "RestartPreventExitStatus": "78", "DynamicUser": "no", "User": "shmpiped", "Group": "shmpiped",
        "RuntimeDirectory": "shmpiped", "LimitMEMLOCK": "infinity", "KillMode": "mixed",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ReadWritePaths": "/dev/shm", "ProtectHome": "yes",
        "PrivateTmp": "yes",
        # explicitly off, each with its reason in a comment:
        "RemoveIPC": "no", "PrivateDevices": "no", "RestrictRealtime": "no",
    }
    assert {key: one.get(key) for key in expected} == expected
    for key in ("RestartSec", "TimeoutStartSec", "TimeoutStopSec"):
        assert key in one
    # Settings that would break the workload must not be switched on anywhere.
    for key in ("DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute", "PrivateNetwork", "PrivateUsers"):
        assert key not in settings, f"{key}= would break GPUs, JIT or the endpoints"
    # The documented real-time knobs are present, commented out.
    text = unit.read_text()
    for knob in ("CPUAffinity=", "CPUSchedulingPolicy=fifo", "CPUSchedulingPriority=", "Nice=",
                 "IOSchedulingClass="):
        assert re.search(rf"^#{re.escape(knob)}", text, flags=re.MULTILINE), knob
    if unit == TEMPLATE:
        assert one["ExecStart"] == "/usr/local/bin/shmpiped run /etc/shmpiped/%i.yaml --namespace %i"
        assert settings["EnvironmentFile"] == ["-/etc/default/shmpiped", "-/etc/shmpiped/%i.env"]
    else:
        assert one["ExecStart"] == "/usr/local/bin/shmpiped run"
        assert settings["EnvironmentFile"] == ["-/etc/default/shmpiped"]


def test_hardening_exposure_stays_low(tmp_path, executable):
    """``systemd-analyze security --offline`` scores the sandbox (lower is better, 10 is none)."""
    copy = unit_for_verify(SERVICE, tmp_path, executable)
    try:
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        unavailable("systemd-analyze is not installed (.ci/install-systemd.sh installs systemd)")
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    if found is None and "offline" in done.stderr:
        unavailable(f"this systemd-analyze cannot score units offline (needs systemd 250+): {done.stderr.strip()}")
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.5, done.stdout  # 2.0 with systemd 252


def test_sysusers_entry_creates_a_system_user(tmp_path):
    """shmpiped.sysusers makes what the README's useradd --system makes: a system uid, its group."""
    if shutil.which("systemd-sysusers") is None:
        unavailable("systemd-sysusers is not installed (.ci/install-systemd.sh installs systemd)")
    (tmp_path / "etc").mkdir()
    done = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "shmpiped.sysusers")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    user = next(line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
                if line.startswith("shmpiped:"))
    group = next(line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()
                 if line.startswith("shmpiped:"))
    assert int(user[2]) < 1000 and user[3] == group[2]
    assert user[5:] == ["/nonexistent", "/usr/sbin/nologin"]


def test_env_file_names_only_real_settings():
    """Every variable in shmpiped.env is an environment twin of a `shmpiped run` option (or of the
    `shmpiped --log-level` that run inherits)."""
    from shmpiped.cli import main, run

    known = {param.envvar for param in (*main.params, *run.params) if param.envvar}
    named = re.findall(r"^#?(SHMPIPED_[A-Z_]+)=", (UNITS / "shmpiped.env").read_text(), flags=re.MULTILINE)
    assert named and set(named) <= known, set(named) - known
    assert known - set(named) == {"SHMPIPED_DEBUG_COMMANDS"}  # hidden, for tests only


# ---------------------------------------------------------------------- a real systemd (PID 1)


def test_active_only_after_ready_and_status_line_shown(machine):
    """A worker that takes 4 s to start keeps the unit 'activating' until the daemon sends READY=1."""
    namespace = new_namespace()
    configure(machine, SHMPIPED_PIPELINE="/etc/shmpiped/slow-start.yaml", SHMPIPED_NAMESPACE=namespace,
              SHMPIPED_STATUS_INTERVAL="1")
    machine.systemctl("start", "--no-block", UNIT)
    timeline = []
    props = machine.wait_for(UNIT, lambda p: timeline.append((time.monotonic(), p["ActiveState"], p["SubState"],
                                                              p["MainPID"], p["StatusText"]))
                             or p["ActiveState"] in ("active", "failed"), timeout=60, interval=0.1)
    assert props["ActiveState"] == "active", machine.journal(UNIT)
    activating = [t for t in timeline if t[1] == "activating"]
    assert activating, f"never seen activating: {timeline}"
    began, ended = activating[0][0], activating[-1][0]
    assert ended - began >= 2.5, f"activating for only {ended - began:.1f} s: {timeline}"
    # While activating, the daemon was already running (a main PID) and its STATUS lines, if any yet,
    # said that its worker was not up.
    assert all(t[2] == "start" and t[3] != "0" and STARTING_STATUS.match(t[4]) for t in activating), timeline

    times = machine.show(UNIT, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    started_us, active_us = int(times["ExecMainStartTimestampMonotonic"]), int(times["ActiveEnterTimestampMonotonic"])
    assert 0 < started_us < active_us
    assert active_us - started_us >= 3_500_000  # the kernel's 4 s start delay, then READY=1

    assert STATUS_LINE.match(props["StatusText"]), props["StatusText"]
    status = machine.systemctl("status", UNIT, check=False).stdout
    assert 'Status: "state=running workers active=' in status, status
    journal = machine.journal(UNIT)
    assert "ready: every worker is waiting for input or active" in journal
    # The STATUS line keeps coming (every SHMPIPED_STATUS_INTERVAL=1 s), with the loop rate once frames flow.
    props = machine.wait_for(UNIT, lambda p: ", output " in p["StatusText"], timeout=10)
    assert STATUS_LINE.match(props["StatusText"]), props["StatusText"]


def test_runs_as_its_system_user_feeds_the_watchdog_reloads_and_stops_cleanly(machine):
    namespace = new_namespace()
    configure(machine, SHMPIPED_NAMESPACE=namespace)
    # Shared memory of the same user that the unit did not create (a camera driver's, say):
    # RemoveIPC=yes would delete it when the unit stops.
    external = f"/dev/shm/camera-{namespace}"
    machine.exec("runuser", "-u", "shmpiped", "--", "touch", external)
    props = start_and_wait_active(machine)
    pid = props["MainPID"]
    shown = machine.show(UNIT, "WatchdogUSec", "NotifyAccess", "Type", "UMask", "WatchdogTimestampMonotonic")
    assert (shown["WatchdogUSec"], shown["NotifyAccess"], shown["Type"]) == ("10s", "main", "notify")
    assert shown["UMask"] == "0007"

    # The daemon and its worker run as shmpiped, without privileges.
    status = machine.exec("cat", f"/proc/{pid}/status").stdout
    uid = machine.exec("id", "-u", "shmpiped").stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, flags=re.MULTILINE), status
    assert re.search(r"^NoNewPrivs:\s+1$", status, flags=re.MULTILINE)
    assert re.search(r"^CapEff:\s+0+$", status, flags=re.MULTILINE)
    processes = machine.processes(uid)
    assert pid in processes and len(processes) >= 2, processes  # the daemon and its worker
    assert all(p == pid or parent == pid for p, parent in processes.items()), processes

    # Segments: owned by shmpiped, 0660 (UMask=0007): the group 'shmpiped' shares the streams.
    found = segments(machine, namespace)
    assert f"shmpiped.{namespace}.frames" in found and f"shmpiped.{namespace}.scaled" in found, found
    stat = machine.exec("stat", "-c", "%U:%G %a", f"/dev/shm/shmpiped.{namespace}.scaled").stdout.strip()
    assert stat == "shmpiped:shmpiped 660"

    # The control socket is in the RuntimeDirectory; `shmpiped ctl` finds it by namespace.
    socket = f"/run/shmpiped/{namespace}.sock"
    assert machine.exec("stat", "-c", "%U %F", socket).stdout.strip() == "shmpiped socket"
    ctl = machine.exec("runuser", "-u", "shmpiped", "--", "shmpiped", "ctl", "--namespace", namespace, "status")
    assert "state: running" in ctl.stdout, ctl.stdout

    # WATCHDOG=1 arrives every WatchdogSec/2 = 5 s while the main loop is healthy.
    before = int(shown["WatchdogTimestampMonotonic"])
    machine.wait_for(UNIT, lambda p: int(p["WatchdogTimestampMonotonic"]) > before, timeout=8,
                     properties=("WatchdogTimestampMonotonic",))

    # systemctl reload = SIGHUP: the daemon re-reads its pipeline and stays up, same process.
    machine.systemctl("reload", UNIT)
    props = machine.wait_for(UNIT, lambda p: "reload: pipeline unchanged" in machine.journal(UNIT), timeout=15)
    assert props["ActiveState"] == "active" and props["MainPID"] == pid

    # systemctl stop = SIGTERM to the daemon: it stops its workers, removes its segments, exits 0.
    machine.systemctl("stop", UNIT)
    props = machine.show(UNIT, "ActiveState", "Result", "NRestarts")
    assert props == {"ActiveState": "inactive", "Result": "success", "NRestarts": "0"}
    # (systemd forgets ExecMainStatus= once the unit is inactive and collected: the journal tells.
    # A status other than 0 would have made the result 'exit-code', and systemd logs it.)
    journal = machine.journal(UNIT)
    assert "stopping: SIGTERM" in journal and "Deactivated successfully" in journal, journal
    assert "Main process exited" not in journal and "SIGKILL" not in journal, journal
    assert segments(machine, namespace) == []
    assert machine.exec("test", "-e", socket, check=False).returncode != 0
    assert machine.exec("test", "-e", external, check=False).returncode == 0, "RemoveIPC= removed it"


@pytest.mark.parametrize("who", ["all", "main"])
def test_killed_daemon_is_restarted(machine, who):
    """SIGKILL to the whole unit, or to the daemon alone (its workers then go with KillMode=mixed)."""
    namespace = new_namespace()
    configure(machine, SHMPIPED_NAMESPACE=namespace)
    props = start_and_wait_active(machine)
    first_pid = props["MainPID"]
    assert props["NRestarts"] == "0"

    machine.systemctl("kill", f"--kill-who={who}", "--signal=SIGKILL", UNIT)
    props = machine.wait_for(UNIT, lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active", timeout=40)
    assert props["MainPID"] not in (first_pid, "0")
    assert STATUS_LINE.match(props["StatusText"]), props["StatusText"]
    journal = machine.journal(UNIT, lines=200)
    assert "Main process exited, code=killed, status=9/KILL" in journal, journal
    assert "stale segment(s) of namespace" in journal, journal
    # Nothing of the killed generation is left (KillMode=mixed: SIGKILL for what the daemon leaves).
    uid = machine.exec("id", "-u", "shmpiped").stdout.strip()
    processes = machine.processes(uid)
    assert props["MainPID"] in processes, processes
    assert all(pid == props["MainPID"] or parent == props["MainPID"] for pid, parent in processes.items()), processes
    # The new daemon took over the namespace the killed one left behind, and its pipeline runs.
    found = segments(machine, namespace)
    assert f"shmpiped.{namespace}.scaled" in found, found
    ctl = machine.exec("shmpiped", "ctl", "--namespace", namespace, "status")
    assert "state: running" in ctl.stdout


def test_invalid_configuration_exits_78_and_is_not_restarted(machine):
    namespace = new_namespace()
    configure(machine, SHMPIPED_NAMESPACE=namespace)
    start_and_wait_active(machine)

    configure(machine, SHMPIPED_NAMESPACE=namespace, SHMPIPED_PIPELINE="/etc/shmpiped/invalid.yaml")
    done = machine.systemctl("restart", UNIT, check=False)
    assert done.returncode != 0  # the start job fails
    props = machine.wait_for(UNIT, lambda p: p["ActiveState"] == "failed", timeout=30)
    assert (props["Result"], props["ExecMainStatus"], props["NRestarts"]) == ("exit-code", "78", "0")
    time.sleep(4)  # twice RestartSec=2s: a restart would have happened by now
    props = machine.show(UNIT, "ActiveState", "SubState", "NRestarts", "ExecMainStatus")
    assert props == {"ActiveState": "failed", "SubState": "failed", "NRestarts": "0", "ExecMainStatus": "78"}
    journal = machine.journal(UNIT)
    assert "invalid configuration" in journal and "undefined shared memory: nowhere" in journal, journal
    assert "Scheduled restart job" not in journal

    # Fixed and restarted by hand, it runs again.
    configure(machine, SHMPIPED_NAMESPACE=namespace)
    start_and_wait_active(machine)


def test_watchdog_restarts_a_wedged_daemon(machine):
    """A main loop that stops making progress stops sending WATCHDOG=1: systemd kills and restarts it."""
    namespace = new_namespace()
    configure(machine, SHMPIPED_NAMESPACE=namespace, SHMPIPED_DEBUG_COMMANDS="1")
    props = start_and_wait_active(machine)
    first_pid = props["MainPID"]
    # The hidden 'debug' control command sleeps in the main loop (a wedge); the client gives up at once.
    machine.exec("runuser", "-u", "shmpiped", "--", VENV_PYTHON, "-c",
                 "import sys\nfrom shmpiped.service.control_socket import send_command\n"
                 "try:\n    send_command(sys.argv[1], 'debug', stall_s=60, timeout=1)\n"
                 "except Exception:\n    pass\n", f"/run/shmpiped/{namespace}.sock")
    props = machine.wait_for(UNIT, lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active", timeout=45)
    assert props["MainPID"] != first_pid
    journal = machine.journal(UNIT, lines=200)
    assert "Watchdog timeout (limit 10s)" in journal and "Failed with result 'watchdog'" in journal, journal


def test_template_runs_one_pipeline_per_instance(machine):
    instances = {new_namespace(): 9751, new_namespace(): 9752}  # instance name = namespace
    for instance, port in instances.items():
        machine.exec("cp", "/etc/shmpiped/pipeline.yaml", f"/etc/shmpiped/{instance}.yaml")
        machine.write_file(f"/etc/shmpiped/{instance}.env",
                           f"SHMPIPED_HTTP_ADDRESS=127.0.0.1:{port}\nSHMPIPED_STATUS_INTERVAL=1\n")
    for instance in instances:
        props = start_and_wait_active(machine, f"shmpiped@{instance}.service")
        assert STATUS_LINE.match(props["StatusText"]), props["StatusText"]
    for instance, port in instances.items():
        # its own namespace (the instance name), control socket and HTTP port
        assert f"shmpiped.{instance}.scaled" in segments(machine, instance)
        ctl = machine.exec("shmpiped", "ctl", "--namespace", instance, "status")
        assert f"namespace: {instance}" in ctl.stdout, ctl.stdout
        health = machine.exec(VENV_PYTHON, "-c", "import sys, urllib.request; "
                              "print(urllib.request.urlopen(sys.argv[1], timeout=5).status)",
                              f"http://127.0.0.1:{port}/healthz")
        assert health.stdout.strip() == "200"

    first, second = instances
    machine.systemctl("stop", f"shmpiped@{first}.service")
    assert segments(machine, first) == []
    # The shared /run/shmpiped survives one instance stopping (RuntimeDirectoryPreserve=yes).
    ctl = machine.exec("shmpiped", "ctl", "--namespace", second, "status", check=False)
    assert ctl.returncode == 0 and "state: running" in ctl.stdout, ctl.stdout + ctl.stderr
    props = machine.show(f"shmpiped@{second}.service", "ActiveState", "NRestarts")
    assert props == {"ActiveState": "active", "NRestarts": "0"}


def test_full_sandbox_keeps_the_pipeline_shared_memory_and_devices_working(boot):
    """With CAP_SYS_ADMIN (for systemd's mount namespace, nothing else) the whole sandbox applies."""
    machine = boot("--cap-add", "SYS_ADMIN")
    namespace = new_namespace()
    configure(machine, SHMPIPED_NAMESPACE=namespace, SHMPIPED_STATUS_INTERVAL="1")
    props = start_and_wait_active(machine)
    pid = props["MainPID"]

    def mounts_of(process) -> dict:  # mount point -> (device, root, options)
        lines = machine.exec("cat", f"/proc/{process}/mountinfo").stdout.splitlines()
        return {f[4]: (f[2], f[3], f[5].split(",")) for f in (line.split() for line in lines)}

    mounts = {point: (root, options) for point, (_, root, options) in mounts_of(pid).items()}
    assert "ro" in mounts["/"][1]                       # ProtectSystem=strict
    assert "ro" in mounts["/proc/sys"][1]               # ProtectKernelTunables=yes
    assert "inaccessible" in mounts["/home"][0]         # ProtectHome=yes
    assert "systemd-private-" in mounts["/tmp"][0]      # PrivateTmp=yes
    assert "rw" in mounts["/dev/shm"][1]                # the streams
    assert "rw" in mounts["/run/shmpiped"][1]           # RuntimeDirectory=: the control socket
    # The daemon's /dev is the machine's own (PrivateDevices=yes would mount a fresh one without GPUs).
    assert mounts_of(pid)["/dev"][0] == mounts_of(1)["/dev"][0]
    # And the pipeline runs in it: frames flow, the control socket answers, the stop is clean.
    props = machine.wait_for(UNIT, lambda p: re.search(r"active=1/1 failed=0, output [1-9]", p["StatusText"]),
                             timeout=15)
    assert STATUS_LINE.match(props["StatusText"]), props["StatusText"]
    ctl = machine.exec("shmpiped", "ctl", "--namespace", namespace, "status")
    assert "state: running" in ctl.stdout
    machine.systemctl("stop", UNIT)
    assert machine.show(UNIT, "Result")["Result"] == "success"
    assert segments(machine, namespace) == []


# ---------------------------------------------------------------------- real time: the drop-in realtime.conf

RT_PIPELINE = """\
namespace: {namespace}
realtime: {{policy: fifo, priority: 50, lock_memory: true, required: true}}
shared_memory:
  - {{name: frames, shape: [16], dtype: float32}}
  - {{name: scaled, shape: [16], dtype: float32}}
sources:
  - {{name: camera, kind: synthetic.array, stream: frames, parameters: {{pattern: ramp, rate_hz: 200}}}}
kernels:
  - {{name: scale, kind: cpu.scale, input: frames, output: scaled, parameters: {{factor: 2.0}}, realtime: {{priority: 60}}}}
"""


def test_drop_in_grants_the_real_time_privileges():
    settings = unit_settings(DROP_IN)
    assert {key: values[-1] for key, values in settings.items()} == {
        "LimitRTPRIO": "99", "LimitMEMLOCK": "infinity", "AmbientCapabilities": "CAP_SYS_NICE CAP_IPC_LOCK"}
    assert DROP_IN.read_text().count("[Service]") == 1
    # The units allow exactly what it grants, and do not forbid real-time scheduling.
    for unit in (SERVICE, TEMPLATE):
        one = {key: values[-1] for key, values in unit_settings(unit).items()}
        assert one["CapabilityBoundingSet"] == "CAP_SYS_NICE CAP_IPC_LOCK" and one["RestrictRealtime"] == "no"
        assert "realtime.conf" in unit.read_text()


@pytest.mark.parametrize("unit, name", [(SERVICE, "shmpiped.service"), (TEMPLATE, "shmpiped@lab.service")],
                         ids=["shmpiped.service", "shmpiped@lab.service"])
def test_systemd_analyze_verify_with_the_drop_in(tmp_path, executable, unit, name):
    """The drop-in in <unit>.d/, as installed: verify reads it (a bad key there would be reported)."""
    unit_for_verify(unit, tmp_path, executable)
    drop_ins = tmp_path / f"{unit.name}.d"
    drop_ins.mkdir()
    shutil.copy2(DROP_IN, drop_ins / "realtime.conf")
    try:
        done = systemd_analyze_verify(tmp_path / name)
    except Unavailable as exc:
        unavailable(str(exc))
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0 and not output, "\n".join(output)
    (drop_ins / "typo.conf").write_text("[Service]\nLimitRTPRI0=99\n")
    done = systemd_analyze_verify(tmp_path / name)
    assert "LimitRTPRI0" in done.stdout + done.stderr  # the check above reads the drop-ins for real


def test_drop_in_keeps_the_exposure_low(tmp_path, executable):
    """``systemd-analyze security --offline``: the unit alone and with the drop-in (ambient capabilities
    cost a little), both within the unit's bound."""
    copy = unit_for_verify(SERVICE, tmp_path, executable)

    def exposure() -> float:
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
                              capture_output=True, text=True, timeout=60)
        found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
        if found is None and "offline" in done.stderr:
            unavailable(f"this systemd-analyze cannot score units offline (needs systemd 250+): {done.stderr}")
        assert found, done.stdout + done.stderr
        return float(found.group(1))

    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is not installed (.ci/install-systemd.sh installs systemd)")
    before = exposure()
    (tmp_path / "shmpiped.service.d").mkdir()
    shutil.copy2(DROP_IN, tmp_path / "shmpiped.service.d" / "realtime.conf")
    after = exposure()
    print(f"systemd-analyze security: {before} without realtime.conf, {after} with it")
    assert before < after <= before + 0.2 and after <= 2.5, (before, after)


@pytest.fixture
def rt_options():
    """docker run options giving the container a real-time budget where the kernel needs one."""
    from .realtime_support import rt_budget

    budget = rt_budget()
    try:
        options = budget.__enter__()
    except Unavailable as exc:
        unavailable(str(exc))
    yield options
    budget.__exit__(None, None, None)  # after `boot` removed its containers (set up later, torn down first)


def test_the_drop_in_runs_the_workers_sched_fifo_and_without_it_exits_78(rt_options, boot):
    """A machine whose capability bounding set has CAP_SYS_NICE and CAP_IPC_LOCK (Docker's default set
    lacks them, a host's has them): with the drop-in the unit's workers run SCHED_FIFO with locked
    memory, as the user shmpiped; without it, `required: true` exits 78 and is not restarted."""
    machine = boot("--cap-add", "SYS_NICE", "--cap-add", "IPC_LOCK", *rt_options)
    namespace = new_namespace()
    machine.write_file("/etc/shmpiped/rt.yaml", RT_PIPELINE.format(namespace=namespace))
    configure(machine, SHMPIPED_PIPELINE="/etc/shmpiped/rt.yaml", SHMPIPED_NAMESPACE=namespace)
    # As deploy/systemd/README.md installs it.
    machine.exec("install", "-d", "/etc/systemd/system/shmpiped.service.d")
    machine.write_file("/etc/systemd/system/shmpiped.service.d/realtime.conf", DROP_IN.read_text())
    machine.systemctl("daemon-reload")
    pid = start_and_wait_active(machine)["MainPID"]
    uid = machine.exec("id", "-u", "shmpiped").stdout.strip()
    workers = [p for p, parent in machine.processes(uid).items() if parent == pid]
    assert len(workers) == 1, machine.processes(uid)
    stat = machine.exec("cat", f"/proc/{workers[0]}/stat").stdout.rsplit(")", 1)[1].split()
    assert (stat[38], stat[37]) == ("1", "60"), stat   # SCHED_FIFO, the kernel's own priority
    status = machine.exec("cat", f"/proc/{workers[0]}/status").stdout
    assert int(re.search(r"^VmLck:\s+(\d+) kB", status, flags=re.MULTILINE).group(1)) > 0
    assert re.search(rf"^Uid:\s+{uid}\s", status, flags=re.MULTILINE)
    assert re.search(r"^CapAmb:\s+0*804000$", status, flags=re.MULTILINE), status  # CAP_SYS_NICE | CAP_IPC_LOCK
    # ... under the unit's SystemCallFilter=@system-service (mode 2: a seccomp filter), which allowed them.
    assert re.search(r"^Seccomp:\s+2$", status, flags=re.MULTILINE), status
    ctl = machine.exec("shmpiped", "ctl", "--namespace", namespace, "status", "--json").stdout
    effective = json.loads(ctl)["workers"]["scale"]["realtime"]["effective"]
    assert (effective["policy"], effective["priority"]) == ("fifo", 60)
    machine.systemctl("stop", UNIT)
    # The README's check with the unit's rights: `shmpiped doctor` in a transient unit.
    done = machine.exec("systemd-run", "--quiet", "--pipe", "--wait", "-p", "User=shmpiped", "-p", "LimitRTPRIO=99",
                        "-p", "LimitMEMLOCK=infinity", "-p", "AmbientCapabilities=CAP_SYS_NICE CAP_IPC_LOCK",
                        "shmpiped", "doctor", "/etc/shmpiped/rt.yaml", "--json", check=False, timeout=90)
    found = {f["name"]: f["status"] for f in json.loads(done.stdout)["findings"]}
    assert found["scheduling-privileges"] == found["memory-lock-privileges"] == "ok", done.stdout + done.stderr

    machine.exec("rm", "/etc/systemd/system/shmpiped.service.d/realtime.conf")
    machine.systemctl("daemon-reload")
    machine.systemctl("start", "--no-block", UNIT)
    props = machine.wait_for(UNIT, lambda p: p["ActiveState"] == "failed", timeout=60)
    assert props["ExecMainStatus"] == "78" and props["NRestarts"] == "0", props
    journal = machine.journal(UNIT)
    assert "realtime.required is true" in journal and "deploy/systemd/realtime.conf" in journal, journal
