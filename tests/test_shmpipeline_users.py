"""What shmpipeline users bring runs on shmpiped: their plugin packages and their scripts.

Plugins: ``tests/fixtures/plugin_pkg`` declares a kernel, a source and a sink
on the ``shmpipeline.kernels|sources|sinks`` entry-point groups, its classes
built on ``shmpipeline.kernel.Kernel``, ``shmpipeline.source.Source`` and
``shmpipeline.sink.Sink``.  It is pip-installed into three throwaway venvs:

- ``bare``: no shmpipeline at all (installed ``--no-deps``); ``shmpipeline``
  resolves to shmpiped through ``shmpiped.compat``'s import fallback, in the
  manager and in the worker that runs the kernel;
- ``real``: the real shmpipeline 1.3.0 beside shmpiped; the plugin classes
  derive from *its* bases, and shmpiped validates and drives them (their
  ``validate_config`` reads our configs, their ``wait``/``read_auxiliary``
  run under our controllers);
- ``shim``: ``compat/shmpipeline`` installed, which satisfies the plugin's
  ``shmpipeline`` dependency.

In each, a pipeline of the three plugins runs through real workers: the
source's counter goes through the kernel (+0.5) to the sink, which saves it
and echoes it back to the source's ``feedback`` auxiliary.

Scripts: ``tests/fixtures/shmpipeline_script/run_example.py``, written in the
style of shmpipeline's examples and importing only ``shmpipeline``, runs
unchanged in the ``shim`` venv.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from .shmpipeline_support import PLUGIN_PROJECT, SHIM_PROJECT, Venv, build_wheel, require_wheelhouse

PIPELINE = """\
namespace: {namespace}
shared_memory:
  - {{name: counter, shape: [4], dtype: float64}}
  - {{name: shifted, shape: [4], dtype: float64}}
  - {{name: echo, shape: [4], dtype: float64}}
sources:
  - name: camera
    kind: testplugin.counter
    stream: counter
    auxiliary: {{feedback: echo}}
    poll_interval: 0.01
kernels:
  - name: shift
    kind: testplugin.offset
    input: counter
    output: shifted
    parameters: {{offset: {offset}}}
sinks:
  - name: recorder
    kind: testplugin.recorder
    stream: shifted
    outputs: [echo]
    parameters: {{{sink_parameters}}}
"""

RUN_PIPELINE = textwrap.dedent('''
    import importlib.util, json, sys, time
    import numpy as np
    import shmpiped
    from shmpiped import PipelineConfig, PipelineManager

    found_before = importlib.util.find_spec("shmpipeline") is not None
    config = PipelineConfig.from_yaml(sys.argv[1])
    manager = PipelineManager(config)
    try:
        manager.build()
        manager.start()
        deadline = time.monotonic() + 30.0
        while True:
            manager.raise_if_failed()
            status = manager.status()
            echoes = status["sources"]["camera"]["plugin_metrics"].get("echoes", 0)
            if echoes >= 3 and status["sinks"]["recorder"]["frames_consumed"] >= 3:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(json.dumps(status, default=str))
            time.sleep(0.05)
        kernel_class = manager.registry.get("testplugin.offset")
        shmpipeline = sys.modules["shmpipeline"]
        result = {
            "found_before": found_before,
            "shmpipeline_is_shmpiped": shmpipeline is shmpiped,
            "shmpipeline_file": shmpipeline.__file__,
            "kernel_bases": [f"{c.__module__}.{c.__qualname__}" for c in kernel_class.__mro__],
            "last_echo": status["sources"]["camera"]["plugin_metrics"]["last_echo"],
            "frames": status["workers"]["shift"]["frames_processed"],
            "worker_alive": status["workers"]["shift"]["alive"],
        }
    finally:
        manager.shutdown(force=True)
    result["latest"] = np.load(config.base_path / "recorded" / "latest.npy").tolist()  # the sink has stopped
    print(json.dumps(result))
''')


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    require_wheelhouse()
    work = tmp_path_factory.mktemp("shmpipeline-wheels")
    return SimpleNamespace(plugin=build_wheel(PLUGIN_PROJECT, work), shim=build_wheel(SHIM_PROJECT, work))


@pytest.fixture(scope="module")
def venvs(wheels, tmp_path_factory):
    """The three venvs (each built on first use): bare, real, shim."""
    made: dict[str, Venv] = {}
    recipes = {
        "bare": lambda venv: venv.install(str(wheels.plugin), deps=False),
        "real": lambda venv: venv.install("shmpipeline==1.3.0", str(wheels.plugin)),
        "shim": lambda venv: venv.install(str(wheels.shim), str(wheels.plugin)),
    }

    def get(name: str) -> Venv:
        if name not in made:
            venv = Venv(tmp_path_factory.mktemp("venvs") / name)
            recipes[name](venv)
            made[name] = venv
        return made[name]

    return get


def write_pipeline(directory: Path, namespace: str, offset="0.5",
                   sink_parameters="output_dir: recorded") -> Path:
    path = directory / "pipeline.yaml"
    path.write_text(PIPELINE.format(namespace=namespace, offset=offset, sink_parameters=sink_parameters))
    return path


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def is_counter_plus_offset(value: float) -> bool:
    return value >= 1.5 and (value - 0.5).is_integer()


@pytest.mark.parametrize("flavour", ["bare", "real", "shim"])
def test_plugin_pipeline_runs_through_real_workers(flavour, venvs, namespace, tmp_path):
    venv = venvs(flavour)
    path = write_pipeline(tmp_path, namespace)
    script = tmp_path / "run_pipeline.py"
    script.write_text(RUN_PIPELINE)
    result = venv.run_json(str(script), str(path), cwd=tmp_path)

    latest = result["latest"]
    assert len(set(latest)) == 1 and is_counter_plus_offset(latest[0]), latest
    assert is_counter_plus_offset(result["last_echo"]), result  # read back through read_auxiliary
    assert result["frames"] >= 3 and result["worker_alive"]
    bases = result["kernel_bases"]
    if flavour == "real":
        assert result["found_before"] and not result["shmpipeline_is_shmpiped"]
        assert "shmpipeline.kernel.Kernel" in bases and "shmpiped.kernels.base.Kernel" not in bases
        assert result["shmpipeline_file"].startswith(str(venv.path))
    else:
        assert result["found_before"] == (flavour == "shim")
        assert result["shmpipeline_is_shmpiped"]
        assert "shmpiped.kernels.base.Kernel" in bases


@pytest.mark.parametrize("flavour", ["bare", "real"])
def test_validate_runs_plugin_checks(flavour, venvs, namespace, tmp_path):
    venv = venvs(flavour)
    valid = write_pipeline(tmp_path, namespace)
    result = venv.run("-m", "shmpiped.cli", "validate", str(valid), cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"{valid}: valid"), result.stderr

    invalid_dir = tmp_path / "invalid"
    invalid_dir.mkdir()
    invalid = write_pipeline(invalid_dir, namespace, offset="'half'", sink_parameters="prefix: x")
    result = venv.run("-m", "shmpiped.cli", "validate", str(invalid), cwd=tmp_path)
    assert result.returncode == 78, result.stdout + result.stderr
    kernel_line = line_of(invalid, "- name: shift")
    sink_line = line_of(invalid, "- name: recorder")
    assert f"  - kernel 'shift' parameter offset must be a number (in {invalid}, line {kernel_line})" \
        in result.stdout.splitlines()
    assert f"  - sink 'recorder' requires a non-empty output_dir parameter (in {invalid}, line {sink_line})" \
        in result.stdout.splitlines()


# ----------------------------------------------------------------------------- a user's script

SCRIPT_DIR = Path(__file__).resolve().parent / "fixtures" / "shmpipeline_script"


def test_a_shmpipeline_script_runs_unchanged_with_the_shim(venvs, namespace, tmp_path):
    venv = venvs("shim")
    example = tmp_path / "example"
    shutil.copytree(SCRIPT_DIR, example)
    pipeline = example / "pipeline.yaml"
    pipeline.write_text(f"namespace: {namespace}\n" + pipeline.read_text())

    result = venv.run("run_example.py", cwd=example, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    report = json.loads(next(line for line in lines if line.startswith("{")))
    assert report["running"] and report["state"] == "running"
    assert report["workers"]["gain_stage"] >= 300 and report["workers"]["bias_stage"] >= 300
    assert {"frames", "throughput_hz", "inter_arrival_ms", "inter_arrival_us", "latency_ms",
            "end_to_end_us", "end_to_end_ms", "workers"} <= set(report["benchmark_keys"])
    assert {"avg_exec_us", "avg_exec_ms", "p99_exec_us", "p99_exec_ms", "jitter_us_rms",
            "throughput_hz"} <= set(report["benchmark_worker_keys"])
    assert report["benchmark_frames"] > 0 and report["throughput_hz"] > 0
    assert report["inter_arrival_ms_p50"] > 0
    # configure_colored_logging logged to stdout, without colour codes when stdout is no terminal
    assert any(line.endswith("| INFO | example.gain_bias | verified 300 frames") for line in lines), lines
    assert "\x1b[" not in result.stdout

    same = venv.run("-c", "import shmpipeline, shmpiped.config as c, shmpipeline.config as p; "
                          "print(shmpipeline.__name__, p is c)", cwd=tmp_path)
    assert same.stdout.split() == ["shmpiped", "True"], same.stderr
