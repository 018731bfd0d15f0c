"""What shmpipeline users type at the shell, run as the real program: run --duration/--poll-interval/
--json-status, benchmark, sources, sinks, and --json on validate and kinds."""

from __future__ import annotations

import json

from .test_cli import DAEMON_ARGS, shmpiped, write_pipeline


def test_validate_json_reports_every_file_and_error(tmp_path, namespace):
    good = write_pipeline(tmp_path / "good.yaml", namespace)
    bad = tmp_path / "bad.yaml"
    bad.write_text("shared_memory:\n  - {name: input, shape: [4]}\n")
    result = shmpiped("validate", "--json", str(good), str(bad))
    assert result.returncode == 78
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert [f["path"] for f in report["files"]] == [str(good), str(bad)]
    assert report["files"][0] == {"path": str(good), "valid": True, "errors": []}
    assert report["files"][1]["valid"] is False
    assert any("dtype" in e and "line 2" in e for e in report["files"][1]["errors"])
    assert json.loads(shmpiped("validate", "--json", str(good)).stdout)["valid"] is True


def test_kinds_sources_and_sinks_list_the_registry_as_text_and_json():
    kinds = json.loads(shmpiped("kinds", "--json").stdout)
    assert "cpu.copy" in kinds["kernels"] and "cpu.affine_transform" in kinds["kernels"]
    assert "synthetic.array" in kinds["sources"] and "null.sink" in kinds["sinks"]
    assert isinstance(kinds["gpu"]["usable"], bool)
    if not kinds["gpu"]["usable"]:
        assert kinds["gpu"]["reason"] and not any(k.startswith("gpu.") for k in kinds["kernels"])
    sources = shmpiped("sources")
    assert sources.returncode == 0 and sources.stdout.split() == kinds["sources"]
    sinks = shmpiped("sinks")
    assert sinks.returncode == 0 and sinks.stdout.split() == kinds["sinks"]
    assert json.loads(shmpiped("sinks", "--json").stdout)["sinks"] == kinds["sinks"]


def test_run_with_duration_poll_interval_and_json_status(tmp_path, namespace):
    path = write_pipeline(tmp_path / "p.yaml", namespace, extra=(
        "sources:\n  - {name: cam, kind: synthetic.array, stream: input, parameters: {rate_hz: 200}}\n"))
    result = shmpiped("run", str(path), "--duration", "1.5", "--poll-interval", "0.25", "--json-status",
                      *DAEMON_ARGS)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    assert snapshot["namespace"] == namespace and snapshot["state"] == "running"
    assert snapshot["workers"]["stage"]["frames_processed"] > 0
    assert "graph" in snapshot


def test_benchmark_is_shmpipelines_name_for_bench_file(tmp_path, namespace):
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    result = shmpiped("benchmark", str(path), "--duration", "1", "--warmup", "0.2", "--source",
                      "input:random:200", "--poll-interval", "0.0001", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["output_stream"] == "output" and report["frames"] > 50
    assert report["throughput_hz"] > 100
