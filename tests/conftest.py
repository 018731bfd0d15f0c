"""Shared fixtures: unique namespaces, and a check that nothing is left in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from shmpiped import PipelineManager
from shmpiped.shm import layout


def cuda_device_count() -> int:
    """CUDA devices this machine really has (the emulation switch aside); 0 without CuPy or driver."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device
        return 0


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA device; deselected on machines without one")


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where a CUDA device exists (`python3 -m pytest -m gpu` runs just them)."""
    if cuda_device_count() > 0:
        return
    device_tests = [item for item in items if item.get_closest_marker("gpu")]
    if device_tests:
        config.hook.pytest_deselected(items=device_tests)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        config._shmpiped_gpu_deselected = len(device_tests)


def pytest_terminal_summary(terminalreporter, config):
    count = getattr(config, "_shmpiped_gpu_deselected", 0)
    if count:
        terminalreporter.write_line(f"{count} GPU tests deselected: no CUDA device on this machine "
                                    "(their emulated-device twins ran)")
    summarise_skips(terminalreporter)


def summarise_skips(terminalreporter) -> None:
    """One line per cause of skipped tests, with how many and in which files (pytest's own -rs
    summary repeats a cause once per test when a helper skips inside the test's body)."""
    by_reason: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid.split("::")[0])
    if not by_reason:
        return
    terminalreporter.section("skipped, by cause", sep="-")
    for reason, files in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        names = sorted(set(files))
        terminalreporter.write_line(f"{len(files)} skipped: {reason} ({', '.join(names)})")


def segments_of(namespace: str) -> list[str]:
    """The namespace's block, streams and pipeline blocks (``<ns>@<instance>``) in /dev/shm."""
    block = layout.namespace_segment_name(namespace)
    members = layout.namespace_members_prefixes(namespace)
    return sorted(n for n in os.listdir(layout.DEV_SHM) if n == block or n.startswith(members))


@pytest.fixture
def namespace():
    """A fresh namespace; the test fails if it leaves any segment of it behind."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    leftover = segments_of(name)
    for entry in leftover:
        try:
            os.unlink(os.path.join(layout.DEV_SHM, entry))
        except FileNotFoundError:
            pass
    assert not leftover, f"segments left in /dev/shm: {leftover}"


def run_python(code: str, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a real separate process)."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def spawn_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def spawn_stream_owner(namespace: str, name: str = "cam") -> subprocess.Popen:
    """Another process that creates stream ``name`` (4 uint16) and holds it until killed."""
    child = spawn_python(
        "import sys, time; from shmpiped.shm import Stream\n"
        "s = Stream.create(sys.argv[2], (4,), 'uint16', namespace=sys.argv[1])\n"
        "print('ready', flush=True); time.sleep(60)\n",
        namespace, name,
    )
    assert child.stdout.readline().strip() == "ready"
    return child


# ---------------------------------------------------------------------- pipelines


def stream(name, shape=(4,), dtype="float32", **extra):
    return {"name": name, "shape": list(shape), "dtype": dtype, **extra}


def pipeline(namespace, streams, kernels, **extra):
    return {"namespace": namespace, "shared_memory": streams, "kernels": kernels, **extra}


def scale_pipeline(namespace, factor=2.5, **kernel_extra):
    return pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "scale", "kind": "cpu.scale", "input": "input", "output": "output",
         "parameters": {"factor": factor}, **kernel_extra}])


@pytest.fixture
def manager_factory():
    managers = []

    def make(config, **kwargs):
        m = PipelineManager(config, **kwargs)
        managers.append(m)
        return m

    yield make
    for m in managers:
        m.shutdown(force=True)
        assert not any(h.alive for h in m.workers.values())


def wait_for(predicate, timeout=5.0, interval=0.01, describe=lambda: ""):
    """The first truthy value of ``predicate()``, polled every ``interval`` s; AssertionError after
    ``timeout`` s, with ``describe()`` appended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s. {describe()}")


def unavailable(reason: str, suite: str):
    """Skip with ``reason``, or fail under CI=true, where .ci/install-*.sh provide everything."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{suite} cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"{suite}: {reason}")


def push(manager, name, value, out="output", frame_id=None):
    """Write ``value`` on stream ``name`` and return the next publication on ``out``."""
    target = manager.get_stream(out)
    before = target.count
    manager.get_stream(name).write(np.asarray(value), frame_id=frame_id)
    target.wait(before, timeout=5.0)
    return target.read()


@pytest.fixture
def daemons():
    started = []

    def start(*args, **kwargs):
        from .daemon_support import DaemonProcess

        daemon = DaemonProcess(*args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def make_stream(namespace):
    """Create real streams in the test's namespace; closed and unlinked afterwards."""
    from shmpiped.shm import Stream

    created = []

    def make(name, shape=(4,), dtype="float64"):
        stream = Stream.create(name, shape, dtype, namespace=namespace)
        created.append(stream)
        return stream

    yield make
    for stream in created:
        stream.close()
        stream.unlink()


@pytest.fixture
def stopper():
    """Stop every registered controller (source, sink, synthetic) before the streams are torn down."""
    controllers = []
    yield controllers.append
    for controller in controllers:
        assert controller.stop(timeout=5.0)


@pytest.fixture
def emulated_gpu(monkeypatch):
    """GPU storage on the emulated device (shmpiped.shm.device.EmulatedBackend): the stand-in for the
    CUDA device this machine lacks. It runs every step above the CUDA calls for real (device memory
    shared between processes through a handle in the segment, mirrors, workers, viewers); the
    `gpu`-marked tests run the same code on a real device where there is one."""
    from shmpiped.shm import device

    monkeypatch.setenv(device.EMULATION_ENV, "1")
    device.gpu_status.cache_clear()
    yield device.backend()
    monkeypatch.delenv(device.EMULATION_ENV)
    device.gpu_status.cache_clear()


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def gpu(request, monkeypatch):
    """The device backend under test: the emulated one everywhere, a CUDA device where there is one
    (`gpu`-marked); the environment makes worker processes use it too."""
    from shmpiped.shm import device

    if request.param == "emulated":
        monkeypatch.setenv(device.EMULATION_ENV, "1")
    else:
        monkeypatch.delenv(device.EMULATION_ENV, raising=False)
    device.gpu_status.cache_clear()
    status = device.gpu_status()
    assert status.usable and status.backend == request.param, status.reason
    yield device.backend()
    device.gpu_status.cache_clear()
