"""Reloads that cannot be applied never take the running pipeline down; supervision comes back after one.

Real daemons in subprocesses (tests/daemon_support.py), real control socket, real HTTP.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from shmpiped.service.control_socket import ControlError, send_command

from .conftest import segments_of, wait_for
from .daemon_support import metric_value, write_pipeline


def write_with_big_stream(path, namespace, elements: int):
    """The daemon_support pipeline plus one stream of ``elements`` float64 nobody uses."""
    write_pipeline(path, namespace, parameters="{factor: 3.0}")
    path.write_text(path.read_text().replace(
        "shared_memory:\n", f"shared_memory:\n  - {{name: huge, shape: [{elements}], dtype: float64}}\n"))


def reload_metrics(daemon) -> tuple[float | None, float | None]:
    text = daemon.get("/metrics")[1].decode()
    return (metric_value(text, "shmpiped_config_last_reload_successful"),
            metric_value(text, "shmpiped_config_last_reload_success_timestamp_seconds"))


def test_a_reload_whose_streams_do_not_fit_keeps_the_pipeline_running(tmp_path, namespace, daemons):
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    pid = daemon.status()["workers"]["stage"]["pid"]
    assert reload_metrics(daemon)[0] == 1.0
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    write_with_big_stream(path, namespace, free // 8 * 2)  # twice what /dev/shm has left
    daemon.process.send_signal(signal.SIGHUP)
    error = wait_for(lambda: daemon.status()["daemon"]["reload_error"], timeout=30)
    assert "MiB are free" in error and "unchanged" in error
    status = daemon.status()
    assert status["state"] == "running" and status["workers"]["stage"]["pid"] == pid
    assert daemon.get("/readyz")[0] == 200
    assert reload_metrics(daemon)[0] == 0.0
    with pytest.raises(ControlError, match="MiB are free"):  # ctl reload answers the same, as an error
        send_command(daemon.socket, "reload")
    assert daemon.process.poll() is None and "Traceback" not in daemon.output
    assert daemon.stop() == 0
    assert segments_of(namespace) == []


def test_a_reload_into_a_namespace_another_daemon_owns_is_refused(tmp_path, namespace, daemons):
    other = f"t{uuid.uuid4().hex[:10]}"
    owner = daemons(write_pipeline(tmp_path / "owner.yaml", other), other, tmp_path)
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    daemon = daemons(path, namespace, tmp_path)
    owner.wait_ready()
    daemon.wait_ready()
    write_pipeline(path, other, parameters="{factor: 5.0}")
    with pytest.raises(ControlError, match=f"namespace '{other}' is owned by pid {owner.process.pid}"):
        send_command(daemon.socket, "reload")
    status = daemon.status()
    assert status["namespace"] == namespace and status["state"] == "running"
    assert daemon.get("/readyz")[0] == 200 and owner.get("/readyz")[0] == 200
    assert daemon.stop() == 0 and owner.stop() == 0
    assert segments_of(namespace) == [] and segments_of(other) == []


def test_a_reload_into_another_namespace_moves_the_pipeline_and_its_control_socket(tmp_path, namespace, daemons):
    runtime = tmp_path / "run"
    runtime.mkdir()
    target = f"t{uuid.uuid4().hex[:10]}"
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    daemon = daemons(path, namespace, tmp_path, "--control-socket", "", env={"RUNTIME_DIRECTORY": str(runtime)})
    daemon.wait_ready()
    write_pipeline(path, target)
    answer = send_command(str(runtime / f"{namespace}.sock"), "reload")
    assert answer["reloaded"] is True and "namespace" in answer["detail"]
    assert daemon.status()["namespace"] == target and segments_of(namespace) == []
    wait_for(lambda: (runtime / f"{target}.sock").exists())
    assert send_command(str(runtime / f"{target}.sock"), "status")["namespace"] == target
    assert not (runtime / f"{namespace}.sock").exists()
    assert daemon.stop() == 0
    assert segments_of(target) == []


def test_a_reload_gives_the_budget_back_and_the_failure_is_reported_once_a_minute(tmp_path, namespace, daemons):
    path = write_pipeline(tmp_path / "p.yaml", namespace, kind="cpu.raise_error", parameters="{message: nope}")
    daemon = daemons(path, namespace, tmp_path, "--restart-budget", "1", "--backoff-initial", "0.05",
                     "--no-fail-fast")
    daemon.wait_http()
    wait_for(lambda: daemon.status()["daemon"]["restart_budget_exhausted"], timeout=30)
    wait_for(lambda: daemon.status()["daemon"]["loop_iterations_total"] > 30, timeout=10)  # 3 s at 10 Hz
    assert daemon.output.count("failed beyond its restart budget") == 1
    write_pipeline(path, namespace)  # fixed: cpu.scale
    answer = send_command(daemon.socket, "reload")
    assert answer["changed"] == ["stage"]
    wait_for(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
    assert daemon.status()["daemon"]["restart_budget_exhausted"] is None
    pid = daemon.status()["workers"]["stage"]["pid"]
    os.kill(pid, signal.SIGKILL)  # supervision works again: the healthy worker is restarted
    wait_for(lambda: daemon.status()["workers"]["stage"]["pid"] not in (pid, None), timeout=30)
    wait_for(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
    assert daemon.stop() == 0


def test_a_control_command_is_answered_once_status_reflects_it(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    for _ in range(5):
        send_command(daemon.socket, "pause")
        assert daemon.status()["state"] == "paused"
        send_command(daemon.socket, "resume")
        assert daemon.status()["state"] == "running"
