"""The daemon (`shmpiped run`) as a real subprocess: supervision, sd_notify, HTTP, control, exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from shmpiped.service.control_socket import send_command

from .conftest import segments_of, wait_for
from .daemon_support import free_port, metric_value, worker_pids, write_pipeline

# ---------------------------------------------------------------------- lifecycle and exits


def test_serves_endpoints_and_stops_cleanly_on_sigterm(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    code, body = daemon.get("/healthz")
    assert code == 200 and body == b"ok\n"
    status = wait_for(lambda: (s := daemon.status())["workers"]["stage"]["health"] == "active" and s)
    assert status["state"] == "running" and status["daemon"]["pid"] == daemon.process.pid
    metrics = daemon.get("/metrics")[1].decode()
    assert metric_value(metrics, "shmpiped_worker_health", worker="stage", state="active") == 1.0
    assert metric_value(metrics, "shmpiped_pipeline_state", state="running") == 1.0
    assert daemon.get("/nope")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405  # nothing changes the pipeline over TCP
    wait_for(lambda: "state=running workers active=1/1" in daemon.output)  # the periodic status line
    assert daemon.stop() == 0
    assert segments_of(namespace) == []
    assert not os.path.exists(daemon.socket)


def test_invalid_configuration_exits_78_naming_file_and_line(tmp_path, daemons):
    path = tmp_path / "bad.yaml"
    path.write_text("shared_memory:\n  - {name: input, shape: [4]}\nkernels: []\nsources: []\nsinks: []\n")
    daemon = daemons(path, "unused", tmp_path)
    assert daemon.process.wait(timeout=30) == 78
    assert f"{path}, line 2" in daemon.output and "dtype" in daemon.output


def test_second_daemon_on_the_same_namespace_exits_75(tmp_path, namespace, daemons):
    first = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    first.wait_ready()
    second = daemons(write_pipeline(tmp_path / "q.yaml", namespace), namespace, tmp_path / "..")
    assert second.process.wait(timeout=30) == 75
    assert f"pid {first.process.pid}" in second.output
    assert first.get("/readyz")[0] == 200  # the first one is untouched


def test_always_failing_kernel_exits_70_after_its_budget(tmp_path, namespace, daemons):
    path = write_pipeline(tmp_path / "p.yaml", namespace, kind="cpu.raise_error",
                          parameters="{message: always broken}")
    daemon = daemons(path, namespace, tmp_path, "--restart-budget", "2", "--backoff-initial", "0.05")
    assert daemon.process.wait(timeout=60) == 70
    output = daemon.output
    assert "always broken" in output and "restart budget" in output
    assert output.count("restarting 'stage'") == 2
    assert segments_of(namespace) == []
    assert not worker_pids(namespace) or all(
        namespace not in open(f"/proc/{pid}/cmdline").read() for pid in worker_pids(namespace))


def test_no_fail_fast_stays_up_failed_and_not_ready(tmp_path, namespace, daemons):
    path = write_pipeline(tmp_path / "p.yaml", namespace, kind="cpu.raise_error", parameters="{message: nope}")
    daemon = daemons(path, namespace, tmp_path, "--restart-budget", "1", "--backoff-initial", "0.05",
                     "--no-fail-fast")
    daemon.wait_http()
    wait_for(lambda: daemon.status()["daemon"]["restart_budget_exhausted"], timeout=30)
    assert daemon.process.poll() is None
    assert daemon.get("/healthz")[0] == 200
    code, body = daemon.get("/readyz")
    assert code == 503 and b"failed" in body
    metrics = daemon.get("/metrics")[1].decode()
    assert metric_value(metrics, "shmpiped_pipeline_state", state="failed") == 1.0
    assert metric_value(metrics, "shmpiped_worker_health", worker="stage", state="failed") == 1.0


# ---------------------------------------------------------------------- supervision


def test_killed_worker_is_restarted_and_counted(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    first = wait_for(lambda: (w := daemon.status()["workers"]["stage"])["health"] == "active" and w)
    os.kill(first["pid"], signal.SIGKILL)
    restarted = wait_for(lambda: (w := daemon.status()["workers"]["stage"])["pid"] != first["pid"]
                         and w["health"] == "active" and w, timeout=20)
    assert restarted["restarts"] == 1
    metrics = daemon.get("/metrics")[1].decode()
    assert metric_value(metrics, "shmpiped_worker_restarts_total", worker="stage") == 1.0
    assert metric_value(metrics, "shmpiped_pipeline_failures_total") == 1.0
    frames = restarted["frames_processed"]
    wait_for(lambda: daemon.status()["workers"]["stage"]["frames_processed"] > frames)  # the loop runs again
    assert "killed by signal SIGKILL" in daemon.output


def test_hung_worker_is_killed_by_the_watchdog_and_restarted(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path,
                     "--watchdog-timeout", "1.0")
    daemon.wait_ready()
    pid = wait_for(lambda: (w := daemon.status()["workers"]["stage"])["health"] == "active" and w["pid"])
    os.kill(pid, signal.SIGSTOP)  # wedged: alive, but its loop makes no progress
    wait_for(lambda: (w := daemon.status()["workers"]["stage"])["pid"] != pid and w["health"] == "active",
             timeout=20)
    assert "is hung" in daemon.output
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------------- systemd


def test_sd_notify_ready_status_and_watchdog(tmp_path, namespace, daemons):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    messages = []

    def drain(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                messages.append((time.monotonic(), listener.recv(4096).decode()))
            except TimeoutError:
                pass

    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path, "--debug-commands",
                     env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "600000"})
    try:
        wait_for(lambda: drain(0.3) or any("READY=1" in m for _, m in messages), timeout=30)
        drain(1.5)
        texts = [m for _, m in messages]
        ready = next(i for i, m in enumerate(texts) if "READY=1" in m)
        assert any("EXTEND_TIMEOUT_USEC=" in m for m in texts[:ready])
        assert any(m.startswith("STATUS=state=running") for m in texts[ready:])
        assert sum("WATCHDOG=1" in m for m in texts[ready:]) >= 3  # every 0.3 s (half of WATCHDOG_USEC)
        # wedge the main loop: WATCHDOG=1 must stop, /healthz turns 503 while HTTP still answers
        messages.clear()
        stall = subprocess.Popen([sys.executable, "-c",
                                  "import sys; from shmpiped.service.control_socket import send_command; "
                                  "send_command(sys.argv[1], 'debug', stall_s=3.0, timeout=20)", daemon.socket])
        drain(0.5)
        messages.clear()
        drain(2.0)
        assert not any("WATCHDOG=1" in m for _, m in messages)
        assert daemon.get("/healthz")[0] == 503
        stall.wait(timeout=20)
        drain(1.0)
        assert any("WATCHDOG=1" in m for _, m in messages)
        assert daemon.get("/healthz")[0] == 200
        assert daemon.stop() == 0
        drain(0.5)
        assert any("STOPPING=1" in m for _, m in messages)
    finally:
        listener.close()


# ---------------------------------------------------------------------- control socket and reload


def test_control_commands(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    assert oct(os.stat(daemon.socket).st_mode & 0o777) == "0o660"
    assert send_command(daemon.socket, "status")["state"] == "running"
    send_command(daemon.socket, "pause")
    wait_for(lambda: daemon.status()["state"] == "paused")
    assert daemon.get("/readyz")[0] == 503
    metrics = daemon.get("/metrics")[1].decode()
    assert metric_value(metrics, "shmpiped_worker_health", worker="stage", state="paused") == 1.0
    send_command(daemon.socket, "resume")
    wait_for(lambda: daemon.get("/readyz")[0] == 200)
    pid = daemon.status()["workers"]["stage"]["pid"]
    assert send_command(daemon.socket, "restart", worker="stage")["restarted"] == ["stage"]
    wait_for(lambda: daemon.status()["workers"]["stage"]["pid"] != pid)
    assert daemon.status()["workers"]["stage"]["restarts"] == 1


def test_control_refusals_and_synthetic_inputs(tmp_path, namespace, daemons):
    from shmpiped.service.control_socket import ControlError

    path = tmp_path / "p.yaml"
    path.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: input, shape: [4], dtype: float32}\n"
        "  - {name: output, shape: [4], dtype: float32}\n"
        "kernels:\n"
        "  - {name: stage, kind: cpu.copy, input: input, output: output}\n")
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    with pytest.raises(ControlError, match="already written by kernel 'stage'"):
        send_command(daemon.socket, "synthetic", action="start", stream="output", pattern="sine")
    with pytest.raises(ControlError, match="unknown command"):
        send_command(daemon.socket, "format-disk")
    with pytest.raises(ControlError, match="unknown command"):
        send_command(daemon.socket, "debug", stall_s=1)  # only with --debug-commands
    with pytest.raises(ControlError, match="unknown worker"):
        send_command(daemon.socket, "restart", worker="ghost")
    started = send_command(daemon.socket, "synthetic", action="start", stream="input", pattern="ramp",
                           rate_hz=100)
    assert started["alive"] and started["requested_rate_hz"] == 100
    wait_for(lambda: daemon.status()["workers"]["stage"].get("frames_processed", 0) > 20)
    metrics = daemon.get("/metrics")[1].decode()
    assert metric_value(metrics, "shmpiped_synthetic_input_target_rate_hertz", stream="input") == 100
    send_command(daemon.socket, "synthetic", action="stop", stream="input")
    assert daemon.status()["synthetic_sources"] == {}
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "ctl", "--socket", daemon.socket, "status"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "running" in result.stdout and "stage" in result.stdout
    send_command(daemon.socket, "stop")
    assert daemon.process.wait(timeout=20) == 0
    assert segments_of(namespace) == []


def test_sighup_reload_applies_valid_changes_and_survives_invalid_ones(tmp_path, namespace, daemons):
    import shmpiped

    path = write_pipeline(tmp_path / "p.yaml", namespace, parameters="{factor: 2.0}", pattern="constant")
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    output = shmpiped.attach("output", namespace=namespace, readonly=True)
    try:
        wait_for(lambda: output.read().tolist() == [2.0] * 4)
        path.write_text("shared_memory: [oops\n")
        daemon.process.send_signal(signal.SIGHUP)
        error = wait_for(lambda: daemon.status()["daemon"]["reload_error"], timeout=20)
        assert str(path) in error
        assert daemon.status()["state"] == "running" and output.read().tolist() == [2.0] * 4
        write_pipeline(path, namespace, parameters="{factor: 3.0}", pattern="constant")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: output.read().tolist() == [3.0] * 4, timeout=20)
        # The new worker writes before the reload is committed and the next snapshot published.
        wait_for(lambda: daemon.status()["daemon"]["reload_error"] is None, timeout=10)
        assert "reload: reconfigured: kernels (re)started: stage" in daemon.output
    finally:
        output.close()


def test_json_logs_and_environment_twins(tmp_path, namespace, daemons):
    port = free_port()
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    process = subprocess.run(
        [sys.executable, "-m", "shmpiped.cli", "run", "--duration", "2"],
        env={**os.environ, "SHMPIPED_PIPELINE": str(path), "SHMPIPED_HTTP_ADDRESS": f"127.0.0.1:{port}",
             "SHMPIPED_LOG_FORMAT": "json", "SHMPIPED_CONTROL_SOCKET": "none"},
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    lines = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(f"127.0.0.1:{port}" in line["message"] for line in lines)
    assert segments_of(namespace) == []


def test_http_address_in_use_exits_69_and_unusable_socket_is_survived(tmp_path, namespace, daemons):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        path = write_pipeline(tmp_path / "p.yaml", namespace)
        result = subprocess.run(
            [sys.executable, "-m", "shmpiped.cli", "run", str(path), "--http-address", f"127.0.0.1:{port}",
             "--control-socket", "none"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 69 and f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr
        assert segments_of(namespace) == []
    finally:
        blocker.close()
    socket_path = tmp_path / ("x" * 120) / "ctl.sock"  # longer than a Unix socket address may be
    daemon = daemons(path, namespace, tmp_path, "--control-socket", str(socket_path))
    daemon.wait_ready()
    assert "no control socket (shmpiped ctl will not reach this daemon)" in daemon.output
