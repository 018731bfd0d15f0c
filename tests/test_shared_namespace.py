"""Many pipelines per host: the default namespace is shared, ownership is per stream.

These tests use the real default namespace (as users do), with stream names
unique to each test, and check that they leave none of their own segments
behind; they never touch another process's segments.
"""

from __future__ import annotations

import os
import signal
import uuid

import numpy as np
import pytest

from shmpiped import PipelineManager
from shmpiped.errors import NamespaceBusyError
from shmpiped.service.control_socket import send_command
from shmpiped.shm import NamespaceBlock, layout

from .conftest import segments_of, spawn_python, wait_for
from .daemon_support import DaemonProcess

DEV_SHM = layout.DEV_SHM


@pytest.fixture
def tag():
    """A prefix for this test's stream names; the test fails if any stream named with it is left."""
    prefix = f"s{uuid.uuid4().hex[:8]}"
    yield prefix
    left = [n for n in os.listdir(DEV_SHM) if n.startswith(f"shmpiped.default.{prefix}")]
    assert not left, f"segments left in /dev/shm: {left}"


def own_blocks(pid: int) -> list[str]:
    return [n for n in os.listdir(DEV_SHM) if n.startswith(f"shmpiped.default@{pid}-")]


def scale(tag: str, source: str, target: str, factor: float = 2.0, **stream_extra) -> dict:
    """A pipeline without a namespace: ``source`` -> cpu.scale -> ``target``."""
    return {
        "shared_memory": [{"name": f"{tag}_{source}", "shape": [4], "dtype": "float32", **stream_extra},
                          {"name": f"{tag}_{target}", "shape": [4], "dtype": "float32"}],
        "kernels": [{"name": "scale", "kind": "cpu.scale", "input": f"{tag}_{source}",
                     "output": f"{tag}_{target}", "parameters": {"factor": factor}}],
    }


def push(manager, tag, source, target, value):
    out = manager.get_stream(f"{tag}_{target}")
    before = out.count
    manager.get_stream(f"{tag}_{source}").write(np.full(4, value, dtype="float32"))
    out.wait(before, timeout=10)
    return float(out.read()[0])


@pytest.fixture
def managers():
    started = []

    def start(config):
        manager = PipelineManager(config)
        started.append(manager)
        manager.build()
        manager.start()
        return manager

    yield start
    for manager in started:
        manager.shutdown(force=True)
    assert own_blocks(os.getpid()) == []


def test_two_managers_in_one_process_run_side_by_side_in_the_default_namespace(tag, managers):
    first = managers(scale(tag, "a_in", "a_out", 2.0))
    second = managers(scale(tag, "b_in", "b_out", 3.0))
    assert first.namespace == second.namespace == "default"
    assert first.shares_namespace and second.shares_namespace
    assert len(own_blocks(os.getpid())) == 2
    assert push(first, tag, "a_in", "a_out", 1.0) == 2.0
    assert push(second, tag, "b_in", "b_out", 1.0) == 3.0
    first.shutdown()
    assert push(second, tag, "b_in", "b_out", 2.0) == 6.0  # the other pipeline is untouched
    assert not [n for n in os.listdir(DEV_SHM) if n.startswith(f"shmpiped.default.{tag}_a")]


def test_a_stream_written_by_two_pipelines_is_a_clash_naming_the_stream_and_its_owner(tag, managers):
    first = managers(scale(tag, "in", "out"))
    clashing = scale(tag, "other_in", "out")
    with pytest.raises(NamespaceBusyError) as caught:
        managers(clashing)
    assert f"shared memory '{tag}_out' belongs to pid {os.getpid()}" in str(caught.value)
    assert not [n for n in os.listdir(DEV_SHM) if n.startswith(f"shmpiped.default.{tag}_other")]
    assert push(first, tag, "in", "out", 4.0) == 8.0


@pytest.mark.parametrize("mode", ["attach", "create_or_attach"])
def test_a_pipeline_reads_another_pipelines_output(tag, managers, mode):
    producer = managers(scale(tag, "in", "mid", 2.0))
    consumer = managers(scale(tag, "mid", "out", 5.0, mode=mode))
    out = consumer.get_stream(f"{tag}_out")
    producer.get_stream(f"{tag}_in").write(np.full(4, 1.0, dtype="float32"))
    out.wait(0, timeout=10)
    assert float(out.read()[0]) == 10.0
    assert consumer.status()["streams"][f"{tag}_mid"]["owned"] is False


def test_a_live_pipelines_stream_is_never_replaced_by_an_incompatible_declaration(tag, managers):
    first = managers(scale(tag, "in", "out"))
    reader = scale(tag, "out", "copy")
    for spec in reader["shared_memory"]:
        spec["shape"] = [8]
    with pytest.raises(NamespaceBusyError, match=f"'{tag}_out' belongs to pid {os.getpid()}"):
        managers(reader)
    assert push(first, tag, "in", "out", 1.5) == 3.0


def test_claiming_a_namespace_and_sharing_it_exclude_each_other(namespace):
    holder = spawn_python(
        "import sys, time; from shmpiped.shm import NamespaceBlock\n"
        "b = NamespaceBlock.acquire(sys.argv[1], shared=True); print(b.name, flush=True); time.sleep(60)\n",
        namespace)
    try:
        holder_block = holder.stdout.readline().strip()
        mine = NamespaceBlock.acquire(namespace, shared=True)
        assert mine.name != holder_block and mine.name.startswith(layout.namespace_segment_name(namespace) + "@")
        with pytest.raises(NamespaceBusyError, match=f"shared by running pipelines .*pid {holder.pid}"):
            NamespaceBlock.acquire(namespace)
        mine.close(unlink=True)
        assert layout.namespace_segment_name(namespace) in segments_of(namespace)  # the other still holds it
    finally:
        holder.kill()
        holder.wait()
    claimed = NamespaceBlock.acquire(namespace)  # the dead holder's block is stale: taken over
    try:
        with pytest.raises(NamespaceBusyError, match=f"owned by pid {os.getpid()}"):
            NamespaceBlock.acquire(namespace, shared=True)
    finally:
        claimed.close(unlink=True)
    for name in segments_of(namespace):  # the killed holder's own block, left for a build to clean
        os.unlink(os.path.join(DEV_SHM, name))


def test_a_killed_pipelines_segments_are_removed_by_the_next_build_and_live_ones_are_not(tag, managers):
    crashed = spawn_python(
        "import sys, time, numpy as np; from shmpiped import PipelineManager\n"
        "s = lambda n: {'name': sys.argv[1] + n, 'shape': [4], 'dtype': 'float32'}\n"
        "m = PipelineManager({'shared_memory': [s('_dead_in'), s('_dead_out')], 'kernels': [\n"
        "    {'name': 'c', 'kind': 'cpu.copy', 'input': sys.argv[1] + '_dead_in', 'output': sys.argv[1] + '_dead_out'}]})\n"
        "m.build(); m.start(); print('ready', flush=True); time.sleep(60)\n",
        tag)
    assert crashed.stdout.readline().strip() == "ready"
    live = managers(scale(tag, "live_in", "live_out"))
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait()
    dead = [f"shmpiped.default.{tag}_dead_in", f"shmpiped.default.{tag}_dead_out"]
    assert set(dead) <= set(os.listdir(DEV_SHM)) and own_blocks(crashed.pid)
    managers(scale(tag, "next_in", "next_out"))  # a build in the same namespace cleans up after the crash
    assert not set(dead) & set(os.listdir(DEV_SHM)) and own_blocks(crashed.pid) == []
    assert push(live, tag, "live_in", "live_out", 2.0) == 4.0


def test_two_daemons_without_namespaces_run_side_by_side_and_each_answers_ctl(tmp_path, tag):
    runtime = tmp_path / "run"
    runtime.mkdir()
    daemons = []
    try:
        for name in ("a", "b"):
            path = tmp_path / f"{name}.yaml"
            path.write_text(
                "shared_memory:\n"
                f"  - {{name: {tag}_{name}_frames, shape: [4], dtype: float32}}\n"
                f"  - {{name: {tag}_{name}_out, shape: [4], dtype: float32}}\n"
                "sources:\n"
                f"  - {{name: camera, kind: synthetic.array, stream: {tag}_{name}_frames,"
                " parameters: {pattern: ramp, rate_hz: 100}}\n"
                "kernels:\n"
                f"  - {{name: stage, kind: cpu.scale, input: {tag}_{name}_frames, output: {tag}_{name}_out,"
                " parameters: {factor: 2.0}}\n")
            daemon = DaemonProcess(path, f"{tag}{name}", tmp_path, "--control-socket", "",
                                   env={"RUNTIME_DIRECTORY": str(runtime)})
            daemons.append(daemon)
            daemon.wait_ready()
        first, second = daemons
        sockets = {first: runtime / "default.sock", second: runtime / f"default-{second.process.pid}.sock"}
        for daemon, socket_path in sockets.items():
            status = send_command(str(socket_path), "status")
            assert status["state"] == "running" and status["namespace"] == "default"
            assert f"{tag}_{'a' if daemon is first else 'b'}_out" in status["streams"]
            wait_for(lambda d=daemon: d.status()["workers"]["stage"].get("frames_processed", 0) > 10, timeout=10)
    finally:
        codes = [daemon.stop() for daemon in daemons]
    assert codes == [0, 0], [d.output for d in daemons]
