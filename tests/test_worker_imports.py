"""Workers import what their parent imported: its sys.path, and its main module when a kernel lives there.

Each test runs a real user script in a fresh interpreter (its own ``__main__``),
from a directory that holds a decoy ``shmpiped/`` package, so a worker that
imported from the current directory instead of the parent's ``sys.path`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from shmpiped import PipelineManager
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.registry import default_registry

from .conftest import run_python, scale_pipeline, segments_of

KERNEL = '''
import sys

import numpy as np

from shmpiped import PipelineConfig, PipelineManager
from shmpiped.kernels.base import Kernel
from shmpiped.kernels.registry import default_registry


class BiasCpuKernel(Kernel):
    kind = "user.bias"

    def compute_into(self, trigger_input, output, auxiliary_inputs):
        np.add(trigger_input, self.context.config.parameters["bias"], out=output)


def config(namespace):
    return PipelineConfig.from_dict({
        "namespace": namespace,
        "shared_memory": [{"name": "raw", "shape": [4], "dtype": "float32"},
                          {"name": "biased", "shape": [4], "dtype": "float32"}],
        "kernels": [{"name": "bias", "kind": "user.bias", "input": "raw", "output": "biased",
                     "parameters": {"bias": 10.0}}],
    })


def run(namespace, registry):
    with PipelineManager(config(namespace), registry=registry) as manager:
        manager.build()
        manager.start()
        out = manager.get_stream("biased")
        manager.get_stream("raw").write(np.arange(4, dtype="float32"))
        out.wait(0, timeout=10)
        print("RESULT", out.read().tolist(), flush=True)
'''


@pytest.fixture
def decoy_cwd(tmp_path):
    """A working directory whose ``shmpiped/`` package fails on import, as a source checkout would."""
    cwd = tmp_path / "checkout"
    (cwd / "shmpiped").mkdir(parents=True)
    (cwd / "shmpiped" / "__init__.py").write_text(
        "raise ImportError('imported the shmpiped/ of the current directory, not the parent\\'s')\n")
    return cwd


def run_script(tmp_path, cwd, body: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    script = tmp_path / "scripts" / "user_pipeline.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(KERNEL + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_a_kernel_class_defined_in_the_users_script_runs_in_its_worker(tmp_path, decoy_cwd, namespace):
    result = run_script(tmp_path, decoy_cwd, '''
        if __name__ == "__main__":
            run(sys.argv[1], default_registry().extended(BiasCpuKernel))
    ''', namespace)
    assert result.returncode == 0, result.stderr
    assert "RESULT [10.0, 11.0, 12.0, 13.0]" in result.stdout


def test_a_kind_registered_at_run_time_on_a_registry_passed_in_code_runs(tmp_path, decoy_cwd, namespace):
    result = run_script(tmp_path, decoy_cwd, '''
        if __name__ == "__main__":
            registry = default_registry()
            registry.register(BiasCpuKernel)
            run(sys.argv[1], registry)
    ''', namespace)
    assert result.returncode == 0, result.stderr
    assert "RESULT [10.0, 11.0, 12.0, 13.0]" in result.stdout


def test_a_kind_registered_on_the_default_registry_runs_without_passing_a_registry(tmp_path, decoy_cwd,
                                                                                   namespace):
    result = run_script(tmp_path, decoy_cwd, '''
        from shmpiped import get_default_registry

        if __name__ == "__main__":
            get_default_registry().register(BiasCpuKernel)
            run(sys.argv[1], None)
    ''', namespace)
    assert result.returncode == 0, result.stderr
    assert "RESULT [10.0, 11.0, 12.0, 13.0]" in result.stdout


def test_a_script_whose_top_level_builds_the_pipeline_is_told_to_guard_it(tmp_path, decoy_cwd, namespace):
    # The worker re-runs the script's top level to find BiasCpuKernel: without the
    # __main__ guard that would build a second pipeline inside the worker.
    result = run_script(tmp_path, decoy_cwd, '''
        run(sys.argv[1], default_registry().extended(BiasCpuKernel))
    ''', namespace)
    assert result.returncode != 0
    assert 'if __name__ == "__main__":' in result.stderr
    assert "RESULT" not in result.stdout


def test_a_kernel_class_defined_inside_a_function_is_refused_before_any_worker_starts(namespace):
    class LocalKernel(Kernel):
        kind = "user.local"

        def compute_into(self, trigger_input, output, auxiliary_inputs):
            output[...] = trigger_input

    config = scale_pipeline(namespace)
    config["kernels"][0]["kind"] = "user.local"
    manager = PipelineManager(config, registry=default_registry().extended(LocalKernel))
    with pytest.raises(ConfigValidationError) as caught:
        manager.build()
    message = str(caught.value)
    assert "LocalKernel" in message and f"module {__name__}" in message
    assert "defined inside a function" in message
    assert manager.workers == {} and segments_of(namespace) == []


def test_a_kernel_class_from_a_main_module_without_a_file_is_refused_with_the_reason(namespace):
    result = run_python(KERNEL + "\nrun(sys.argv[1], default_registry().extended(BiasCpuKernel))\n",
                        namespace, check=False)
    assert result.returncode != 0
    assert "BiasCpuKernel (module __main__) cannot be loaded in a worker process" in result.stderr
    assert "no file to re-run" in result.stderr
    assert segments_of(namespace) == []


def test_the_daemon_started_from_a_directory_with_a_shmpiped_package_runs(tmp_path, decoy_cwd, namespace):
    """The README's first command from a clone's root: `shmpiped run` there must not import ./shmpiped."""
    program = os.path.join(os.path.dirname(sys.executable), "shmpiped")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        namespace: {namespace}
        shared_memory:
          - {{name: frames, shape: [8], dtype: float32}}
          - {{name: doubled, shape: [8], dtype: float32}}
        sources:
          - {{name: camera, kind: synthetic.array, stream: frames, parameters: {{pattern: ramp, rate_hz: 200}}}}
        kernels:
          - {{name: double, kind: cpu.scale, input: frames, output: doubled, parameters: {{factor: 2.0}}}}
    """))
    result = subprocess.run(
        [program, "run", str(pipeline), "--duration", "6", "--http-address", "none", "--control-socket", "none",
         "--json-status"],
        cwd=decoy_cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Its worker computed frames (the final snapshot; a busy machine may take seconds to start it).
    assert json.loads(result.stdout)["workers"]["double"]["frames_processed"] > 0, result.stderr
    assert "imported the shmpiped/" not in result.stderr


def test_a_child_gets_the_parents_sys_path_its_arguments_and_not_the_current_directory(decoy_cwd):
    import json

    import shmpiped
    from shmpiped import spawning

    child = spawning.start_child("tests.spawn_probe:main", "one", "two", cwd=decoy_cwd,
                                 stdout=subprocess.PIPE, text=True)
    seen = json.loads(child.communicate(timeout=30)[0])
    assert child.returncode == 0
    assert seen["sys_path"] == spawning.parent_sys_path()
    assert seen["shmpiped"] == shmpiped.__file__
    assert seen["argv"] == ["tests.spawn_probe:main", "one", "two"]
    assert seen["path_variable_left"] is False
