"""The shmpiped command line, run as a real program in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import segments_of, spawn_stream_owner

SHMPIPED = [sys.executable, "-m", "shmpiped.cli"]
DAEMON_ARGS = ["--http-address", "127.0.0.1:0", "--control-socket", "none"]


def shmpiped(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*SHMPIPED, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def write_pipeline(path, namespace, kind="cpu.copy", extra=""):
    path.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: input, shape: [4], dtype: float32}\n"
        "  - {name: output, shape: [4], dtype: float32}\n"
        "kernels:\n"
        f"  - name: stage\n    kind: {kind}\n    input: input\n    output: output\n{extra}"
    )
    return path


def test_validate_accepts_a_good_file(tmp_path, namespace):
    path = write_pipeline(tmp_path / "ok.yaml", namespace)
    result = shmpiped("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout


def test_validate_reports_every_error_with_file_and_line(tmp_path, namespace):
    good = write_pipeline(tmp_path / "good.yaml", namespace)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "shared_memory:\n"
        "  - {name: input, shape: [4], dtype: float32}\n"
        "  - {name: output, shape: [4]}\n"
        "kernels:\n"
        "  - name: stage\n"
        "    kind: cpu.nope\n"
        "    input: input\n"
        "    output: missing\n"
        "colour: blue\n"
    )
    result = shmpiped("validate", str(good), str(bad))
    assert result.returncode == 78
    assert f"{good}: valid" in result.stdout
    assert f"{bad}: invalid" in result.stdout
    assert "colour" in result.stdout and "line 9" in result.stdout
    assert "dtype" in result.stdout and "line 3" in result.stdout
    assert "missing" in result.stdout and "line 5" in result.stdout


def test_validate_unknown_kind_names_the_line(tmp_path, namespace):
    path = write_pipeline(tmp_path / "kind.yaml", namespace, kind="cpu.nope")
    result = shmpiped("validate", str(path))
    assert result.returncode == 78
    assert "unknown kernel kind: 'cpu.nope'" in result.stdout and "line 6" in result.stdout


def test_describe_text_and_json(tmp_path, namespace):
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    text = shmpiped("describe", str(path))
    assert text.returncode == 0 and text.stdout.startswith("Pipeline Graph")
    data = json.loads(shmpiped("describe", str(path), "--json").stdout)
    assert data["source_streams"] == ["input"] and data["sink_streams"] == ["output"]
    assert len(data["edges"]) == 2


def test_run_for_a_duration_and_clean_up(tmp_path, namespace):
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    result = shmpiped("run", str(path), "--duration", "1", "--status-interval", "0.2", *DAEMON_ARGS)
    assert result.returncode == 0, result.stderr
    assert "state=running workers active=0/1" in result.stderr
    assert segments_of(namespace) == []


def test_shm_ls_and_rm_of_stale_segments(namespace):
    child = spawn_stream_owner(namespace)
    listing = json.loads(shmpiped("shm", "ls", "--namespace", namespace, "--json").stdout)
    assert [(r["stream"], r["alive"], r["stale"]) for r in listing] == [("cam", True, False)]
    refused = shmpiped("shm", "rm", "--namespace", namespace)
    assert "kept 1 segment" in refused.stderr and segments_of(namespace)
    child.kill()
    child.wait()
    text = shmpiped("shm", "ls", "--namespace", namespace).stdout
    assert "STALE" in text and "(4,) uint16" in text
    removed = shmpiped("shm", "rm", "--namespace", namespace)
    assert f"removed shmpiped.{namespace}.cam" in removed.stdout
    assert segments_of(namespace) == []


def test_kinds_lists_the_catalogue():
    result = shmpiped("kinds")
    assert result.returncode == 0
    for kind in ("cpu.copy", "cpu.affine_transform", "cpu.custom_operation", "synthetic.array", "null.sink"):
        assert kind in result.stdout


def test_bench_hop_prints_figures():
    result = shmpiped("bench", "hop", "--frames", "200", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["mode"] for r in rows] == ["1000 Hz", "lock-step", "1000 Hz", "lock-step"]
    assert all(r["n"] > 0 and 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"] for r in rows)


def test_demo_runs_with_no_file():
    namespace = f"demo{os.getpid()}"
    environment = {**os.environ, "SHMPIPED_NAMESPACE": namespace}
    result = shmpiped("run", "--duration", "3", "--status-interval", "1", *DAEMON_ARGS, env=environment,
                      timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "state=running" in line]
    assert lines and "active=5/5" in lines[-1]
    assert segments_of(namespace) == []
