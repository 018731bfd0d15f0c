"""What an operator does by hand, against the real daemon: control commands (idle clients, malformed
requests, the audit log), `shm rm` next to a live owner, a /dev/shm too small for the pipeline, and
Ctrl-C of a viewer started from a shell that ignores SIGINT."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from shmpiped.config import PipelineConfig
from shmpiped.demo import demo_path
from shmpiped.service.control_socket import ControlError, ControlServer, send_command
from shmpiped.shm import layout
from shmpiped.shm_inventory import shm_footprint

from .conftest import run_python, segments_of, unavailable, wait_for
from .daemon_support import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_PIPELINE = (
    "namespace: {namespace}\n"
    "shared_memory:\n"
    "  - {{name: input, shape: [4], dtype: float32}}\n"
    "  - {{name: output, shape: [4], dtype: float32}}\n"
    "kernels:\n"
    "  - {{name: stage, kind: cpu.copy, input: input, output: output}}\n")


def shmpiped(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmpiped.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture
def copy_daemon(tmp_path, namespace, daemons):
    path = tmp_path / "p.yaml"
    path.write_text(COPY_PIPELINE.format(namespace=namespace))
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    return daemon


# ---------------------------------------------------------------------- control socket


def test_idle_clients_cannot_lock_ctl_stop_out(copy_daemon, namespace):
    idle = []
    try:
        for _ in range(40):  # more than the 32 connections the socket serves at once, all silent
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(copy_daemon.socket)
            idle.append(sock)
        result = shmpiped("ctl", "--socket", copy_daemon.socket, "stop")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().startswith("stop: ok")
        assert copy_daemon.process.wait(timeout=20) == 0
    finally:
        for sock in idle:
            sock.close()
    assert segments_of(namespace) == []


@pytest.mark.parametrize("request_fields, answer", [
    ({"command": "restart", "worker": ["stage"]},
     "restart: 'worker' must be a non-empty string or null, got a list; "
     'send {"command": "restart", "worker": "NAME"}'),
    ({"command": "restart", "workers": "stage"}, "restart takes only 'worker', got 'workers'; send"),
    ({"command": "synthetic", "action": "start", "pattern": "ramp"},
     "synthetic start needs 'stream'; send {\"command\": \"synthetic\", \"action\": \"start\", \"stream\": "),
    ({"command": "synthetic", "stream": "input"}, 'synthetic needs "action": "start" or "stop", got null; send'),
    ({"command": "synthetic", "action": "start", "stream": {"name": "input"}},
     "synthetic start: 'stream' must be a non-empty string, got an object"),
    ({"command": "synthetic", "action": "start", "stream": "input", "rate_hz": "fast"},
     "synthetic start: 'rate_hz' must be a positive finite number or null, got the string 'fast'"),
    ({"command": "synthetic", "action": "start", "stream": "input", "rate_hz": True},
     "'rate_hz' must be a positive finite number or null, got a boolean"),
    ({"command": "synthetic", "action": "start", "stream": "input", "pattern": None},
     "synthetic start: 'pattern' must be a non-empty string, got null"),
    ({"command": "pause", "now": True}, "pause takes no arguments, got 'now'; send {\"command\": \"pause\"}"),
])
def test_control_errors_say_what_to_send(tmp_path, request_fields, answer):
    seen = []
    with ControlServer(str(tmp_path / "c.sock"), lambda request: seen.append(request) or {"state": "running"}) as srv:
        command = request_fields.pop("command")
        with pytest.raises(ControlError) as refused:
            send_command(srv.path, command, **request_fields)
        assert answer in str(refused.value)
        assert seen == []                 # the handler never sees a malformed command
        assert send_command(srv.path, "pause") == {"state": "running"}


def test_daemon_answers_malformed_commands_clearly_and_audits_every_command(copy_daemon):
    socket_path = copy_daemon.socket
    for bad, message in [
        ({"worker": ["stage"]}, "'worker' must be a non-empty string or null, got a list"),
        ({"worker": "ghost"}, "ghost"),
    ]:
        with pytest.raises(ControlError, match=message) as refused:
            send_command(socket_path, "restart", **bad)
        assert "unhashable" not in str(refused.value)
    with pytest.raises(ControlError, match="synthetic start needs 'stream'"):
        send_command(socket_path, "synthetic", action="start", pattern="ramp")
    with pytest.raises(ControlError) as unknown_stream:
        send_command(socket_path, "synthetic", action="start", stream="nowhere", pattern="ramp")
    assert "nowhere" in str(unknown_stream.value) and str(unknown_stream.value) != "'nowhere'"
    started = send_command(socket_path, "synthetic", action="start", stream="input", pattern="ramp", rate_hz=100)
    assert started["alive"]
    send_command(socket_path, "synthetic", action="stop", stream="input")
    assert copy_daemon.status()["state"] == "running"
    pid, uid = os.getpid(), os.getuid()
    wait_for(lambda: "control: synthetic stop" in copy_daemon.output)
    output = copy_daemon.output
    assert f"control: synthetic start stream='input' pattern='ramp' rate_hz=100 from pid {pid} uid {uid}" in output
    assert f"control: synthetic stop stream='input' from pid {pid} uid {uid}" in output
    assert (f"control: restart worker=['stage'] from pid {pid} uid {uid}: refused: restart: 'worker' must be "
            in output)
    assert "Traceback" not in output


# ---------------------------------------------------------------------- shm rm


def test_shm_rm_force_never_removes_a_live_owners_segments(copy_daemon, namespace, tmp_path, daemons):
    before = segments_of(namespace)
    assert before
    result = shmpiped("shm", "rm", "--namespace", namespace, "--force")
    assert result.returncode == 1
    assert segments_of(namespace) == before
    pid = copy_daemon.process.pid
    assert f"kept {len(before)} segment(s) of namespace '{namespace}': they belong to pid {pid} (" in result.stderr
    assert f"`shmpiped ctl --namespace {namespace} stop`" in result.stderr and f"`kill {pid}`" in result.stderr
    (tmp_path / "second").mkdir()
    second = daemons(tmp_path / "p.yaml", namespace, tmp_path / "second")
    assert second.process.wait(timeout=30) == 75  # so no second daemon runs on the namespace
    assert copy_daemon.get("/readyz")[0] == 200
    assert copy_daemon.stop() == 0
    assert segments_of(namespace) == []


def test_shm_rm_needs_force_for_kept_and_unreadable_segments(namespace):
    run_python(
        "import sys\n"
        "from shmpiped import PipelineManager\n"
        "m = PipelineManager({'namespace': sys.argv[1], 'shared_memory': [\n"
        "    {'name': 'frames', 'shape': [4], 'dtype': 'float32'}, {'name': 'out', 'shape': [4], 'dtype': 'float32'}],\n"
        "    'kernels': [{'name': 'copy', 'kind': 'cpu.copy', 'input': 'frames', 'output': 'out'}]})\n"
        "m.build(); m.shutdown(unlink=False)\n", namespace)
    junk = os.path.join(layout.DEV_SHM, layout.stream_segment_name(namespace, "junk"))
    with open(junk, "wb") as handle:
        handle.write(b"not a shmpiped segment")
    kept = layout.stream_segment_name(namespace, "frames")
    assert kept in segments_of(namespace)
    listing = {row["segment"]: row for row in json.loads(shmpiped("shm", "ls", "--namespace", namespace,
                                                                 "--json").stdout)}
    assert (listing[kept]["kept"], listing[kept]["alive"]) == (True, False)
    assert listing[os.path.basename(junk)]["readable"] is False
    plain = shmpiped("shm", "rm", "--namespace", namespace)
    assert plain.returncode == 1 and "add --force to remove them" in plain.stderr
    assert kept in segments_of(namespace) and os.path.exists(junk)
    forced = shmpiped("shm", "rm", "--namespace", namespace, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"removed {kept}" in forced.stdout and f"removed {os.path.basename(junk)}" in forced.stdout
    assert segments_of(namespace) == []


# ---------------------------------------------------------------------- /dev/shm size


def test_the_footprint_rule_is_what_a_build_really_takes(namespace, manager_factory):
    config = PipelineConfig.from_yaml(str(demo_path())).replace(namespace=namespace)
    footprint = shm_footprint(config)
    manager = manager_factory(config)
    manager.build()
    sizes = {name: os.stat(os.path.join(layout.DEV_SHM, name)).st_size for name in segments_of(namespace)}
    assert sum(sizes.values()) == footprint["total"]
    assert sizes[layout.namespace_segment_name(namespace)] == footprint["namespace_block"]
    manager.shutdown()
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    assert f"The demo needs {footprint['total']:,} bytes" in readme  # the README's figure is the real one


def run_in_private_dev_shm(size: str, *args: str) -> subprocess.CompletedProcess:
    """`shmpiped ARGS` with its own /dev/shm: a tmpfs of ``size`` in a private mount namespace."""
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is not installed", "private /dev/shm")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(f"cannot mount a private /dev/shm ({probe.stderr.strip()})", "private /dev/shm")
    command = " ".join(["exec", sys.executable, "-m", "shmpiped.cli", *args])
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /dev/shm && {command}"],
                          capture_output=True, text=True, timeout=120)


def test_a_pipeline_that_does_not_fit_dev_shm_is_told_the_total_and_the_fix():
    total = shm_footprint(PipelineConfig.from_yaml(str(demo_path())))["total"]
    args = ("run", "--http-address", f"127.0.0.1:{free_port()}", "--control-socket", "none", "--duration", "1")
    small = run_in_private_dev_shm("8300k", *args)
    assert small.returncode == 73, small.stderr
    assert f"pipeline 'demo' needs {total} bytes" in small.stderr
    assert "--shm-size=10m" in small.stderr and "8392704 for its namespace block" in small.stderr
    enough = run_in_private_dev_shm("10m", *args)
    assert enough.returncode == 0, enough.stderr


# ---------------------------------------------------------------------- SIGINT


def test_ctrl_c_ends_a_viewer_whose_parent_ignores_sigint(make_stream, namespace):
    """`shmpiped view` started from a shell that ignores SIGINT (`&`, nohup scripts): Ctrl-C, sent to the
    whole foreground group as a terminal does, still ends the viewer, and the command returns 0."""
    make_stream("frames", (4,), "float32")
    launcher = ("import signal, subprocess, sys\n"
                "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "sys.exit(subprocess.call([sys.executable, '-m', 'shmpiped.cli', 'view', 'frames', "
                "'--namespace', sys.argv[1], '--mode', 'text', '--interval', '0.05']))\n")
    group = subprocess.Popen([sys.executable, "-c", launcher, namespace], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert group.stdout.readline()  # the viewer has drawn its first screen
        time.sleep(0.2)
        os.killpg(group.pid, signal.SIGINT)
        assert group.wait(timeout=15) == 0
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait()
