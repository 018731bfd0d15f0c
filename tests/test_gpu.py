"""GPU storage: what a machine without a GPU says, and GPU streams and pipelines end to end.

Tests that take ``gpu`` run twice: on the emulated device (the stand-in for the CUDA device this
machine may lack, ``SHMPIPED_GPU_EMULATION``) and, marked ``gpu``, on a real CUDA device where
there is one (deselected elsewhere; ``python3 -m pytest -m gpu`` runs just those).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels import default_registry
from shmpiped.shm import Stream, device, layout
from shmpiped.shm.stream import segment_is_stale

from .conftest import cuda_device_count, run_python, segments_of, wait_for
from .daemon_support import metric_value

DEMO = os.path.join(os.path.dirname(__file__), "..", "shmpiped", "demo", "ao_loop.yaml")


@pytest.fixture
def real_gpu_status(monkeypatch):
    """gpu_status() as this machine really is: the emulation switch off."""
    monkeypatch.delenv(device.EMULATION_ENV, raising=False)
    device.gpu_status.cache_clear()
    yield device.gpu_status()
    device.gpu_status.cache_clear()


#: A process that can use no GPU, even on a machine with one.
NO_GPU_ENV = {**{k: v for k, v in os.environ.items() if k != device.EMULATION_ENV}, "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def no_gpu_reason():
    """What gpu_status() says in a process that can use no GPU."""
    code = "from shmpiped.shm.device import gpu_status; print(gpu_status().reason)"
    result = subprocess.run([sys.executable, "-c", code], env=NO_GPU_ENV, capture_output=True, text=True,
                            timeout=60, check=True)
    reason = result.stdout.strip()
    assert reason.startswith(("no CUDA device is usable", "CuPy is not installed")), reason
    return reason


def gpu_pipeline(namespace, tmp_path, rate_hz=0):
    """[synthetic camera on the device at rate_hz] -> scale -> flatten -> 16x64 affine, + a CPU stage on a mirror."""
    text = textwrap.dedent(f"""\
        namespace: {namespace}
        shared_memory:
          - {{name: frames, shape: [8, 8], dtype: float32, storage: gpu, gpu_device: "cuda:0"}}
          - {{name: scaled, shape: [8, 8], dtype: float32, storage: gpu, gpu_device: "cuda:0", cpu_mirror: true}}
          - {{name: flat, shape: [64], dtype: float32, storage: gpu, gpu_device: "cuda:0"}}
          - name: matrix
            shape: [16, 64]
            dtype: float32
            storage: gpu
            gpu_device: "cuda:0"
            initial: {{pattern: normal, seed: 3, mean: 0.0, std: 0.1}}
          - {{name: offset, shape: [16], dtype: float32, storage: gpu, gpu_device: "cuda:0",
              initial: {{pattern: constant, value: 1.0}}}}
          - {{name: commands, shape: [16], dtype: float32, storage: gpu, gpu_device: "cuda:0", cpu_mirror: true}}
          - {{name: host_copy, shape: [8, 8], dtype: float32}}
        kernels:
          - {{name: scale, kind: gpu.scale, input: frames, output: scaled, parameters: {{factor: 2.0}}}}
          - {{name: flatten, kind: gpu.flatten, input: scaled, output: flat}}
          - {{name: reconstruct, kind: gpu.affine_transform, input: flat, output: commands,
              auxiliary: [matrix, offset]}}
          - {{name: to_host, kind: cpu.copy, input: scaled, output: host_copy}}
        """)
    if rate_hz:
        text += textwrap.dedent(f"""\
            sources:
              - name: camera
                kind: synthetic.array
                stream: frames
                parameters: {{pattern: random, rate_hz: {rate_hz}, seed: 1}}
            """)
    path = tmp_path / "gpu.yaml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------ without a usable GPU


def test_gpu_status_reports_this_machine(real_gpu_status):
    if importlib.util.find_spec("cupy") is None:
        assert real_gpu_status.reason == "CuPy is not installed (install the GPU extra: pip install 'shmpiped[gpu]')"
    elif cuda_device_count() == 0:
        assert real_gpu_status.reason.startswith("no CUDA device is usable (CuPy ")
    else:
        assert real_gpu_status.usable and real_gpu_status.backend == "cuda"
    assert real_gpu_status.usable == (cuda_device_count() > 0)


def test_without_cupy_the_reason_is_the_missing_extra():
    code = ("import sys; sys.modules['cupy'] = None  # as if CuPy were not installed\n"
            "from shmpiped.shm.device import gpu_status; print(gpu_status().reason)")
    result = run_python(code)
    assert result.stdout.strip() == "CuPy is not installed (install the GPU extra: pip install 'shmpiped[gpu]')"


def test_a_gpu_pipeline_without_a_gpu_fails_validation_naming_what_is_missing(no_gpu_reason, tmp_path,
                                                                              namespace):
    path = gpu_pipeline(namespace, tmp_path)
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "validate", path], capture_output=True,
                            text=True, timeout=60, env=NO_GPU_ENV)
    assert result.returncode == 78
    output = result.stdout + result.stderr
    reason = no_gpu_reason
    assert (f"shared memory 'frames', 'scaled', 'flat', 'matrix', 'offset', 'commands' have storage: gpu on cuda:0, "
            f"but {reason} (in {path}, line 3)") in output
    assert f"kernel kind 'gpu.scale' needs a usable GPU, but {reason} (in {path}, line 17)" in output


def test_gpu_kinds_are_offered_only_where_a_gpu_is_usable(real_gpu_status, monkeypatch):
    registry = default_registry(entry_points=[])
    if not real_gpu_status.usable:
        assert not [kind for kind in registry.kinds() if kind.startswith("gpu.")]
        with pytest.raises(ConfigValidationError, match=r"kernel kind 'gpu.copy' needs a usable GPU, but "):
            registry.get("gpu.copy")
        with pytest.raises(ConfigValidationError, match="unknown kernel kind: 'gpu.reduce'"):
            registry.get("gpu.reduce")
    monkeypatch.setenv(device.EMULATION_ENV, "1")
    device.gpu_status.cache_clear()
    registry = default_registry(entry_points=[])
    assert registry.get("gpu.copy").storage == "gpu" and "gpu.affine_transform" in registry.kinds()
    assert "gpu.reduce" not in registry.kinds()


def test_a_cpu_pipeline_never_imports_cupy():
    code = ("import sys\nfrom shmpiped.cli import load_and_validate\n"
            f"config, errors = load_and_validate({DEMO!r})\nassert not errors, errors\n"
            "print('cupy' in sys.modules)")
    assert run_python(code).stdout.strip() == "False"


def test_gpu_storage_rules_are_config_errors(emulated_gpu, tmp_path, namespace):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(f"""\
        namespace: {namespace}
        shared_memory:
          - {{name: a, shape: [4], dtype: float32, storage: gpu, gpu_device: "cuda:7"}}
          - {{name: b, shape: [4], dtype: float32}}
        kernels:
          - {{name: k, kind: cpu.copy, input: a, output: b}}
        """))
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 78
    assert f"shared memory 'a' has storage: gpu, but cuda:7 does not exist here (2 CUDA devices visible) " \
           f"(in {path}, line 3)" in output
    assert ("kernel 'k' of kind 'cpu.copy' requires cpu shared memory for 'a' (give it `cpu_mirror: true` to "
            f"read it from the CPU, or use a gpu.* kind) (in {path}, line 6)") in output


# ------------------------------------------------------------------------------- GPU streams


def test_device_memory_is_shared_between_processes(gpu, namespace):
    stream = Stream.create("frames", (4, 3), "float32", namespace=namespace, storage="gpu", gpu_device="cuda:0")
    try:
        assert type(stream).__name__ == "DeviceStream" and not stream.cpu_mirror
        assert stream.gpu_enabled and stream.owner and stream.size == 4 * 3 * 4  # as pyshmem reports them
        stream.write(np.arange(12).reshape(4, 3))
        code = textwrap.dedent(f"""\
            import shmpiped
            stream = shmpiped.attach("frames", namespace={namespace!r}, gpu_device="cuda:0")
            print(float(stream.read_host().sum()), stream.frame_id)
            view = stream.next_slot()
            view[...] = stream.xp.full(view.shape, 7, view.dtype)
            stream.publish(frame_id=42)
            stream.close()
            """)
        assert run_python(code).stdout.split() == ["66.0", "1"]
        assert stream.count == 2 and stream.frame_id == 42
        assert stream.read_host().tolist() == [[7.0] * 3] * 4
        host = Stream.attach("frames", namespace)  # no mirror: the host cannot read the payload
        with pytest.raises(RuntimeError, match="GPU stream 'frames' has no cpu_mirror"):
            host.read()
        assert host.count == 2  # ... but sees the count and slot headers
        host.close()
    finally:
        stream.close()
        stream.unlink()


def test_the_cpu_mirror_holds_every_published_frame(gpu, namespace):
    stream = Stream.create("dm", (5,), "float64", namespace=namespace, storage="gpu", gpu_device="cuda:0",
                           cpu_mirror=True)
    host = Stream.attach("dm", namespace)
    try:
        assert type(host) is Stream and host.has_host_payload
        for i in range(10):  # more than the ring's slots
            stream.write(np.full(5, float(i)))
            count, view = host.latest()
            assert count == i + 1 and view.tolist() == [float(i)] * 5
            assert host.still_valid(count)
    finally:
        host.close()
        stream.close()
        stream.unlink()


def test_a_gpu_stream_whose_creator_died_is_stale_and_unreadable(gpu, namespace):
    code = textwrap.dedent(f"""\
        from shmpiped.shm import Stream
        stream = Stream.create("orphan", (4,), "float32", namespace={namespace!r}, storage="gpu",
                               gpu_device="cuda:0", cpu_mirror=True)
        stream.write([1, 2, 3, 4])
        stream.mark_kept()  # even kept on purpose, its device memory dies with it
        """)
    run_python(code)
    name = layout.stream_segment_name(namespace, "orphan")
    try:
        with pytest.raises(FileNotFoundError, match="its creator is gone"):
            Stream.attach("orphan", namespace, gpu_device=True)
        assert segment_is_stale(name)
    finally:
        os.unlink(os.path.join(layout.DEV_SHM, name))


# ------------------------------------------------------------------------------- GPU pipelines


def test_a_gpu_pipeline_computes_and_reports_like_a_cpu_one(gpu, namespace, tmp_path, manager_factory):
    manager = manager_factory(gpu_pipeline(namespace, tmp_path))
    manager.build()
    manager.start(wait=True)
    frames, commands, host_copy = (manager.get_stream(n) for n in ("frames", "commands", "host_copy"))
    rng = np.random.default_rng(5)
    for frame_id in range(100, 125):
        frame = rng.standard_normal((8, 8)).astype(np.float32)
        frames.write(frame, frame_id=frame_id)
        wait_for(lambda fid=frame_id: commands.frame_id == fid and host_copy.frame_id == fid, timeout=10)
    matrix, offset = manager.get_stream("matrix").read_host(), manager.get_stream("offset").read_host()
    np.testing.assert_array_equal(host_copy.read(), frame * 2.0)  # the CPU stage read the mirror
    np.testing.assert_allclose(commands.read_host(), matrix @ (frame * 2.0).reshape(64) + offset,
                               rtol=1e-4, atol=1e-5)

    status = manager.status()
    for name in ("scale", "flatten", "reconstruct", "to_host"):
        assert status["workers"][name]["frames_processed"] == 25
        assert status["workers"][name]["avg_exec_us"] > 0
    streams = status["streams"]
    assert streams["scaled"]["storage"] == "gpu" and streams["scaled"]["gpu_device"] == "cuda:0"
    assert streams["scaled"]["cpu_mirror"] and not streams["flat"]["cpu_mirror"]
    assert streams["host_copy"]["storage"] == "cpu" and streams["host_copy"]["gpu_device"] is None
    manager.shutdown()
    assert not segments_of(namespace)


def test_a_gpu_daemon_exports_its_workers(gpu, namespace, tmp_path, daemons):
    daemon = daemons(gpu_pipeline(namespace, tmp_path, rate_hz=100), namespace, tmp_path)
    daemon.wait_ready()
    wait_for(lambda: (metric_value(daemon.get("/metrics")[1].decode(), "shmpiped_worker_exec_seconds_count",
                                   worker="reconstruct") or 0) >= 10, timeout=20)
    assert daemon.status()["streams"]["commands"]["storage"] == "gpu"
    assert daemon.stop() == 0
    assert not segments_of(namespace)


def test_bench_gpu_prints_cpu_and_gpu_rows(emulated_gpu):
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "bench", "gpu", "--frames", "50",
                             "--affine-shape", "64x128", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SHMPIPED_GPU_EMULATION is set" in result.stderr
    rows = json.loads(result.stdout)
    assert [(r["benchmark"], r["mode"], r["cpu_mirror"]) for r in rows] == [
        (f"{prefix}{stage}", mode, mirror)
        for stage in ("copy", "affine")
        for prefix, mode, mirror in (("", "1000 Hz", False), ("", "lock-step", False), ("gpu ", "1000 Hz", False),
                                     ("gpu ", "lock-step", False), ("gpu ", "lock-step", True))]
    assert {r["shape"] for r in rows} == {"16", "64x128"}
    assert all(r["n"] == 50 and r["p50_us"] > 0 and r["rate_hz"] > 0 for r in rows)


def test_bench_gpu_without_a_gpu_exits_unavailable(no_gpu_reason):
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "bench", "gpu"], capture_output=True,
                            text=True, timeout=60, env=NO_GPU_ENV)
    assert result.returncode == 69
    assert result.stderr.strip() == f"bench gpu needs a usable GPU, but {no_gpu_reason}"


def test_kinds_lists_the_gpu_twins_or_says_why_not(no_gpu_reason):
    def kinds(env):
        return subprocess.run([sys.executable, "-m", "shmpiped.cli", "kinds"], capture_output=True, text=True,
                              timeout=60, env=env, check=True).stdout

    without = kinds(NO_GPU_ENV)
    assert "gpu.copy" not in without
    assert f"(the gpu.* kernel kinds are not available: {no_gpu_reason})" in without
    emulated = kinds({**os.environ, device.EMULATION_ENV: "1"})
    assert "  gpu.copy\n" in emulated and "  gpu.affine_transform\n" in emulated and "not available" not in emulated


def test_a_gpu_kernel_reads_cpu_streams_uploaded_when_they_change(gpu, namespace, tmp_path, manager_factory):
    """Camera and calibration on the host, reconstruction on the device, commands back through the mirror."""
    path = tmp_path / "upload.yaml"
    path.write_text(textwrap.dedent(f"""\
        namespace: {namespace}
        shared_memory:
          - {{name: slopes, shape: [64], dtype: float32}}
          - {{name: matrix, shape: [16, 64], dtype: float32, initial: {{pattern: normal, seed: 2, std: 0.1}}}}
          - {{name: offset, shape: [16], dtype: float32, initial: {{pattern: constant, value: 0.5}}}}
          - {{name: commands, shape: [16], dtype: float32, storage: gpu, gpu_device: "cuda:0", cpu_mirror: true}}
        kernels:
          - {{name: reconstruct, kind: gpu.affine_transform, input: slopes, output: commands,
              auxiliary: [matrix, offset]}}
        """))
    manager = manager_factory(str(path))
    manager.build()
    manager.start(wait=True)
    slopes, matrix, commands = (manager.get_stream(n) for n in ("slopes", "matrix", "commands"))
    offset = manager.get_stream("offset").read()
    rng = np.random.default_rng(9)
    for frame_id in range(1, 31):
        if frame_id == 16:  # a new calibration mid-run: the next frame must use it
            matrix.write(rng.standard_normal((16, 64)).astype(np.float32))
        value = rng.standard_normal(64).astype(np.float32)
        slopes.write(value, frame_id=frame_id)
        wait_for(lambda fid=frame_id: commands.frame_id == fid, timeout=10)
        np.testing.assert_allclose(commands.read(), matrix.read() @ value + offset, rtol=1e-4, atol=1e-5)
    assert manager.status()["workers"]["reconstruct"]["frames_processed"] == 30

    # A restarted GPU worker maps the device memory again and carries on.
    old_pid = manager.workers["reconstruct"].pid
    assert manager.restart(workers=["reconstruct"]) == ["reconstruct"]
    assert manager.workers["reconstruct"].pid != old_pid
    value = rng.standard_normal(64).astype(np.float32)
    slopes.write(value, frame_id=99)
    wait_for(lambda: commands.frame_id == 99, timeout=10)
    np.testing.assert_allclose(commands.read(), matrix.read() @ value + offset, rtol=1e-4, atol=1e-5)
