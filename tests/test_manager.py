"""PipelineManager with real worker processes and real /dev/shm."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from shmpiped import (
    ConfigValidationError,
    NamespaceBusyError,
    StateTransitionError,
    WorkerProcessError,
)
from shmpiped.placement import PlacementPolicy
from shmpiped.shm import Stream

from .conftest import pipeline, push, scale_pipeline, segments_of, spawn_python, stream, wait_for


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------- lifecycle


def test_state_machine_and_illegal_transitions(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    assert m.state == "initialized"
    for call in (m.start, m.pause, m.resume, m.restart):
        with pytest.raises(StateTransitionError, match="while state is 'initialized'"):
            call()
    m.build()
    assert m.state == "built"
    with pytest.raises(StateTransitionError, match="cannot build pipeline while state is 'built'"):
        m.build()
    m.stop()  # from built: nothing to do
    m.start()
    assert m.state == "running"
    pid = m.workers["scale"].pid
    assert m.status()["workers"]["scale"]["alive"] and pid_alive(pid)
    with pytest.raises(StateTransitionError, match="cannot start pipeline while state is 'running'"):
        m.start()
    m.pause()
    assert m.state == "paused"
    with pytest.raises(StateTransitionError):
        m.pause()
    m.resume()
    assert m.state == "running"
    m.stop()
    assert m.state == "built"
    assert not pid_alive(pid) or os.waitpid(pid, os.WNOHANG)
    assert m.status()["workers"] == {}
    m.start()  # a second start reports the new worker, not the old one
    assert m.workers["scale"].pid != pid
    assert m.status()["workers"]["scale"]["health"] == "waiting-input"
    m.shutdown()
    assert m.state == "stopped"
    assert segments_of(namespace) == []
    m.build()  # legal again after shutdown
    assert m.state == "built"


def test_scale_end_to_end_with_frame_id_and_origin(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    result = push(m, "input", [1, 2, 3, 4], frame_id=77)
    assert result.tolist() == [2.5, 5.0, 7.5, 10.0]
    out = m.get_stream("output")
    assert out.frame_id == 77
    assert out.origin_ns == m.get_stream("input").origin_ns


def test_affine_and_elementwise_with_auxiliaries(namespace, manager_factory):
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((3, 4)).astype(np.float32)
    offset = np.array([1, 2, 3], np.float32)
    config = pipeline(namespace, [
        stream("x"), stream("y", (3,)), stream("dark"), stream("z"),
        stream("A", (3, 4), initial={"pattern": "values", "values": matrix.tolist()}),
        stream("b", (3,), initial={"pattern": "values", "values": offset.tolist()}),
    ], [
        {"name": "affine", "kind": "cpu.affine_transform", "input": "x", "output": "y", "auxiliary": ["A", "b"]},
        {"name": "sub", "kind": "cpu.elementwise_subtract", "input": "x", "output": "z", "auxiliary": ["dark"]},
    ])
    m = manager_factory(config)
    m.build()
    m.start()
    m.get_stream("dark").write(np.full(4, 0.5))
    y = m.get_stream("y")
    z = m.get_stream("z")
    for _ in range(128):
        x = rng.standard_normal(4).astype(np.float32)
        before_y, before_z = y.count, z.count
        m.get_stream("x").write(x)
        y.wait(before_y, 5.0)
        z.wait(before_z, 5.0)
        np.testing.assert_allclose(y.read(), matrix @ x + offset, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z.read(), x - 0.5, rtol=1e-6)


def test_all_new_concatenate_waits_for_every_input(namespace, manager_factory):
    config = pipeline(namespace, [stream("a", (2,)), stream("b", (2,)), stream("ab", (4,))], [
        {"name": "cat", "kind": "cpu.concatenate", "inputs": ["a", "b"], "output": "ab"}])
    m = manager_factory(config)
    m.build()
    m.start()
    out = m.get_stream("ab")
    m.get_stream("a").write([1, 2])
    with pytest.raises(TimeoutError):
        out.wait(0, timeout=0.1)
    m.get_stream("b").write([3, 4])
    out.wait(0, timeout=5)
    assert out.read().tolist() == [1, 2, 3, 4]


def test_any_new_fires_on_either_input(namespace, manager_factory):
    config = pipeline(namespace, [stream("a", (2,)), stream("b", (2,)), stream("s", (2,))], [
        {"name": "add", "kind": "cpu.custom_operation", "inputs": ["a"], "output": "s",
         "auxiliary": ["b"], "operation": "input + b"}])
    m = manager_factory(config)
    m.build()
    m.start()
    m.get_stream("b").write([10, 20])
    assert push(m, "a", [1, 2], out="s").tolist() == [11, 22]


def test_matching_frame_id_barrier(namespace, manager_factory):
    config = pipeline(namespace, [stream("c0", (1,)), stream("c1", (1,)), stream("cc", (2,))], [
        {"name": "sync", "kind": "cpu.concatenate", "inputs": ["c0", "c1"], "output": "cc",
         "trigger_policy": "all_new", "synchronization": {"mode": "matching_frame_id"},
         "propagate_frame_id": True}])
    m = manager_factory(config)
    m.build()
    m.start()
    c0, c1, out = m.get_stream("c0"), m.get_stream("c1"), m.get_stream("cc")
    c0.write([1], frame_id=1)
    c1.write([1], frame_id=1)
    out.wait(0, 5)
    assert out.frame_id == 1
    c0.write([2], frame_id=2)
    with pytest.raises(TimeoutError):
        out.wait(1, 0.1)
    c1.write([2], frame_id=2)
    out.wait(1, 5)
    assert out.frame_id == 2 and out.read().tolist() == [2, 2]
    # skew: c1 lags at token 3 while c0 runs ahead to 4; then c1 catches up at 4
    c1.write([3], frame_id=3)
    for token in (3, 4):
        c0.write([token], frame_id=token)
        time.sleep(0.02)
    count = out.count
    c1.write([4], frame_id=4)
    out.wait(count, 5)
    assert out.frame_id == 4 and out.read().tolist() == [4, 4]
    metrics = m.status()["workers"]["sync"]
    assert metrics["frame_sync_timeouts"] == 0


def test_multi_output_kernel_and_flatten(namespace, manager_factory):
    config = pipeline(namespace, [stream("img", (2, 2)), stream("flat", (4,))], [
        {"name": "flatten", "kind": "cpu.flatten", "input": "img", "output": "flat"}])
    m = manager_factory(config)
    m.build()
    m.start()
    assert push(m, "img", [[1, 2], [3, 4]], out="flat").tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------------- health and metrics


def test_fresh_worker_waits_for_input_then_becomes_active(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    status = m.status()
    worker = status["workers"]["scale"]
    assert worker["health"] == "waiting-input"
    assert worker["idle_s"] is not None
    assert status["summary"]["waiting_workers"] == 1
    for i in range(20):
        push(m, "input", np.full(4, i))
    # telemetry is recorded just after the output is published: allow it that moment
    worker = wait_for(lambda: (w := m.status()["workers"]["scale"]).get("frames_processed") == 20 and w)
    assert worker["health"] == "active"
    assert worker["metrics_window"] == 20
    assert worker["avg_exec_us"] > 0 and worker["jitter_us_rms"] >= 0
    assert worker["p99_exec_us"] >= worker["p50_exec_us"] > 0
    assert worker["throughput_hz"] > 0
    assert worker["last_output_count"] == 20
    json.dumps(m.runtime_snapshot())


def test_idle_and_paused_health(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, read_timeout=0.1))
    m.build()
    m.start()
    push(m, "input", [1, 1, 1, 1])
    wait_for(lambda: m.status()["workers"]["scale"]["health"] == "active")
    wait_for(lambda: m.status()["workers"]["scale"]["health"] == "idle", timeout=5)
    m.pause()
    assert m.status()["workers"]["scale"]["health"] == "paused"


def test_pause_holds_frames_and_resume_processes_the_latest(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, factor=1.0))
    m.build()
    m.start()
    m.pause()
    time.sleep(0.05)
    out = m.get_stream("output")
    m.get_stream("input").write([5, 5, 5, 5])
    with pytest.raises(TimeoutError):
        out.wait(0, 0.2)
    m.resume()
    out.wait(0, 5)
    assert out.read().tolist() == [5, 5, 5, 5]


# ---------------------------------------------------------------------- failures and restart


def failing_pipeline(namespace):
    return pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "stage", "kind": "cpu.raise_error", "input": "input", "output": "output",
         "parameters": {"message": "intentional failure"}}])


def test_failing_kernel_is_reported_with_traceback(namespace, manager_factory):
    m = manager_factory(failing_pipeline(namespace))
    m.build()
    m.start()
    pid = m.workers["stage"].pid
    m.get_stream("input").write([1, 2, 3, 4])
    wait_for(lambda: m.status()["state"] == "failed")
    failure = m.failures[0]
    assert failure["kernel"] == "stage" and failure["component_type"] == "worker"
    assert failure["pid"] == pid and failure["exit_code"] == 1
    assert "intentional failure" in failure["error"]
    assert "Traceback" in failure["traceback"] and "raise" in failure["traceback"]
    assert m.status()["workers"]["stage"]["health"] == "failed"
    with pytest.raises(WorkerProcessError, match="worker 'stage' failed: .*intentional failure"):
        m.raise_if_failed()
    assert any(e["type"] == "worker_failed" for e in m.events)
    with pytest.raises(StateTransitionError, match="while state is 'failed'"):
        m.pause()
    m.shutdown(force=True)
    assert segments_of(namespace) == []


def test_killed_worker_becomes_a_failure_with_its_signal(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    os.kill(m.workers["scale"].pid, signal.SIGKILL)
    wait_for(lambda: m.status()["state"] == "failed")
    assert m.failures[0]["signal"] == "SIGKILL"
    assert "killed by signal SIGKILL" in m.failures[0]["error"]


def test_restart_after_failure_with_a_fixed_kernel(namespace, manager_factory):
    m = manager_factory(failing_pipeline(namespace))
    with pytest.raises(StateTransitionError):
        m.restart()
    m.build()
    m.start()
    m.restart()  # healthy: nothing to do
    assert m.state == "running"
    m.get_stream("input").write([1, 2, 3, 4])
    wait_for(lambda: m.status()["state"] == "failed")
    fixed = m.kernel_configs["stage"].__class__(
        name="stage", kind="cpu.copy", inputs=("input",), outputs=("output",))
    m.replace_kernel_config(fixed)
    m.restart()
    assert m.state == "running" and m.failures == ()
    assert push(m, "input", [1, 2, 3, 4]).tolist() == [1, 2, 3, 4]
    assert m.status()["workers"]["stage"]["restarts"] == 1
    assert any(e["type"] == "worker_restarted" for e in m.events)


def test_failure_while_paused_restarts_into_paused(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    m.start()
    m.pause()
    os.kill(m.workers["scale"].pid, signal.SIGKILL)
    wait_for(lambda: m.status()["state"] == "failed")
    m.restart()
    assert m.state == "paused"


def test_construction_error_fails_start_with_its_traceback(namespace, manager_factory, tmp_path):
    config = pipeline(namespace, [stream("input"), stream("output", (3,))], [
        {"name": "bad", "kind": "cpu.copy", "input": "input", "output": "output"}])
    m = manager_factory(config)
    with pytest.raises(ConfigValidationError, match="bad"):
        m.build()
    assert segments_of(namespace) == []


def test_failed_start_leaves_no_worker(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("mid"), stream("output")], [
        {"name": "ok", "kind": "cpu.copy", "input": "input", "output": "mid"},
        {"name": "boom", "kind": "cpu.copy", "input": "mid", "output": "output"}])
    m = manager_factory(config, worker_start_timeout=0.001)
    m.build()
    with pytest.raises(WorkerProcessError, match="timed out waiting for workers to start"):
        m.start()
    assert m.state == "built"
    assert m.workers == {}
    m.shutdown()
    assert segments_of(namespace) == []


# ---------------------------------------------------------------------- streams


def test_compatible_stream_is_reused_and_external_streams_survive(namespace, manager_factory):
    external = Stream.create("input", (4,), "float32", namespace=namespace)
    external.write([9, 9, 9, 9])
    try:
        m = manager_factory(scale_pipeline(namespace))
        m.build()
        assert m.get_stream("input").count == 1
        assert m.get_stream("input").read().tolist() == [9, 9, 9, 9]
        assert "input" not in m.owned_streams and "output" in m.owned_streams
        m.shutdown()
        assert os.path.exists(external.segment.path)
        assert not os.path.exists(f"/dev/shm/shmpiped.{namespace}.output")
    finally:
        external.close()
        external.unlink()


def test_incompatible_stream_is_replaced(namespace, manager_factory):
    external = Stream.create("input", (7,), "float64", namespace=namespace)
    external.write(np.ones(7))
    external.mark_kept()
    external.close()
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    assert m.get_stream("input").shape == (4,) and m.get_stream("input").count == 0


def test_attach_mode_requires_a_matching_stream(namespace, manager_factory):
    config = scale_pipeline(namespace)
    config["shared_memory"][0]["mode"] = "attach"
    m = manager_factory(config)
    with pytest.raises(FileNotFoundError, match="shared memory stream 'input' does not exist"):
        m.build()
    assert segments_of(namespace) == []
    external = Stream.create("input", (5,), "float32", namespace=namespace)
    try:
        with pytest.raises(ConfigValidationError, match="does not match the requested attach"):
            m.build()
    finally:
        external.close()
        external.unlink()


def test_initial_values_are_published_at_build(namespace, manager_factory):
    config = pipeline(namespace, [
        stream("c", (3,), initial={"pattern": "constant", "value": 2.5}),
        stream("n", (1000,), "float64", initial={"pattern": "normal", "seed": 3, "mean": 1.0, "std": 2.0}),
        stream("i", (3, 3), initial={"pattern": "identity", "scale": 4.0}),
        stream("out", (3,)),
    ], [{"name": "k", "kind": "cpu.copy", "input": "c", "output": "out"}])
    m = manager_factory(config)
    m.build()
    assert m.get_stream("c").read().tolist() == [2.5] * 3 and m.get_stream("c").count == 1
    normal = m.get_stream("n").read()
    assert abs(normal.mean() - 1.0) < 0.3 and abs(normal.std() - 2.0) < 0.3
    assert m.get_stream("i").read().tolist() == (np.eye(3) * 4).tolist()


def test_a_normal_initial_value_is_drawn_in_the_streams_dtype_as_shmpipeline_draws_it(namespace,
                                                                                      manager_factory):
    config = pipeline(namespace, [
        stream("m32", (64, 32), "float32", initial={"pattern": "normal", "seed": 7, "mean": 0.5, "std": 0.1}),
        stream("m16", (8,), "float16", initial={"pattern": "normal", "seed": 7}),
        stream("out", (64, 32), "float32"),
    ], [{"name": "k", "kind": "cpu.copy", "input": "m32", "output": "out"}])
    m = manager_factory(config)
    m.build()
    expected = np.random.default_rng(7).standard_normal((64, 32), dtype=np.float32) * np.float32(0.1)
    expected += np.float32(0.5)
    assert np.array_equal(m.get_stream("m32").read(), expected)
    assert m.get_stream("m16").read().dtype == np.float16 and m.get_stream("m16").count == 1


def test_two_namespaces_run_side_by_side(manager_factory):
    import uuid

    names = [f"t{uuid.uuid4().hex[:8]}" for _ in range(2)]
    managers = [manager_factory(scale_pipeline(ns, factor=f)) for ns, f in zip(names, (2.0, 3.0))]
    for m in managers:
        m.build()
        m.start()
    assert push(managers[0], "input", [1, 1, 1, 1]).tolist() == [2, 2, 2, 2]
    assert push(managers[1], "input", [1, 1, 1, 1]).tolist() == [3, 3, 3, 3]
    for m in managers:
        m.shutdown()
    for ns in names:
        assert segments_of(ns) == []


# ---------------------------------------------------------------------- add_kernel


def test_add_kernel_hot_and_with_rollback(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, factor=2.0))
    m.build()
    with pytest.raises(StateTransitionError, match="RUNNING or PAUSED"):
        m.add_kernel({"name": "x", "kind": "cpu.copy", "input": "output", "output": "y"})
    m.start()
    with pytest.raises(ConfigValidationError, match="already exists"):
        m.add_kernel({"name": "scale", "kind": "cpu.copy", "input": "output", "output": "input"})
    status = m.add_kernel(
        {"name": "plus", "kind": "cpu.add_constant", "input": "output", "output": "final",
         "parameters": {"constant": 10}},
        shared_memory=[stream("final")])
    assert "plus" in status["workers"]
    assert push(m, "input", [1, 2, 3, 4], out="final").tolist() == [12, 14, 16, 18]
    # a kernel that fails validation leaves nothing behind
    with pytest.raises(ConfigValidationError):
        m.add_kernel({"name": "bad", "kind": "cpu.copy", "input": "final", "output": "wrong"},
                     shared_memory=[stream("wrong", (9,))])
    assert "wrong" not in m.streams and "bad" not in m.workers
    assert not os.path.exists(f"/dev/shm/shmpiped.{namespace}.wrong")


# ---------------------------------------------------------------------- ownership and cleanup


OWNER_SCRIPT = """
import sys, time
from shmpiped import PipelineManager
config = {"namespace": sys.argv[1],
          "shared_memory": [{"name": "input", "shape": [4], "dtype": "float32"},
                            {"name": "output", "shape": [4], "dtype": "float32"}],
          "kernels": [{"name": "copy", "kind": "cpu.copy", "input": "input", "output": "output"}]}
m = PipelineManager(config)
m.build(); m.start()
print(m.workers["copy"].pid, flush=True)
time.sleep(60)
"""


def test_sigkilled_owner_leaves_no_worker_and_its_segments_are_recovered(namespace, manager_factory):
    owner = spawn_python(OWNER_SCRIPT, namespace)
    worker_pid = int(owner.stdout.readline())
    assert pid_alive(worker_pid)
    busy = manager_factory(scale_pipeline(namespace))
    with pytest.raises(NamespaceBusyError, match=f"pid {owner.pid}"):
        busy.build()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(lambda: not pid_alive(worker_pid), timeout=5)
    assert segments_of(namespace)  # left behind by the killed owner
    m = manager_factory(scale_pipeline(namespace))
    m.build()
    assert any(e["type"] == "stale_segments_removed" for e in m.events)
    m.start()
    assert push(m, "input", [1, 2, 3, 4]).tolist() == [2.5, 5, 7.5, 10]
    m.shutdown()
    assert segments_of(namespace) == []


def test_ctrl_c_of_the_owner_leaves_nothing(namespace):
    # A script that stops on Ctrl-C whatever started it (a test run under `nohup` or `&` hands its
    # children SIGINT "ignored", which Python keeps, and the library leaves the script's signals alone).
    script = OWNER_SCRIPT.replace("import sys, time", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGINT, signal.default_int_handler)")
    owner = spawn_python(script.replace("time.sleep(60)", "m.shutdown() if False else time.sleep(60)"), namespace)
    worker_pid = int(owner.stdout.readline())
    owner.send_signal(signal.SIGINT)
    owner.wait(timeout=20)
    wait_for(lambda: not pid_alive(worker_pid), timeout=5)
    assert segments_of(namespace) == []


class PinEverythingToTheLastCpu(PlacementPolicy):
    def cpu_slot_for(self, *, kernel, index, cpu_count):
        return sorted(os.sched_getaffinity(0))[-1]

    def describe(self):
        return "last-cpu"


def test_custom_placement_policy_pins_the_worker(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace), placement_policy=PinEverythingToTheLastCpu())
    m.build()
    m.start()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    worker = m.status()["workers"]["scale"]
    assert worker["cpu_slot"] == cpu
    assert os.sched_getaffinity(worker["pid"]) == {cpu}
    assert m.status()["placement_policy"] == "last-cpu"


class FirstCpuByProtocol:
    """shmpipeline's WorkerPlacementPolicy is a Protocol: a policy needs no base class."""

    def cpu_slot_for(self, *, kernel, index, cpu_count):
        return sorted(os.sched_getaffinity(0))[0]

    def describe(self):
        return "first-cpu"


def test_shmpipeline_scheduling_policies_place_workers(namespace, manager_factory):
    """`from shmpipeline.scheduling import NoAffinityPlacementPolicy` (shmpipeline's tomographic example):
    the names exist under shmpipeline's module, no-affinity leaves the worker on the whole pool, and a
    duck-typed policy pins it."""
    from shmpiped.compat import install_shmpipeline_fallback

    install_shmpipeline_fallback()
    from shmpipeline.scheduling import NoAffinityPlacementPolicy, normalize_placement_policy

    assert normalize_placement_policy(None).describe() == "round-robin"
    m = manager_factory(scale_pipeline(namespace), placement_policy=NoAffinityPlacementPolicy())
    m.build()
    m.start()
    worker = m.status()["workers"]["scale"]
    assert worker["cpu_slot"] is None and os.sched_getaffinity(worker["pid"]) == os.sched_getaffinity(0)
    assert m.status()["placement_policy"] == "none"
    m.shutdown()

    other = manager_factory(scale_pipeline(namespace), placement_policy=FirstCpuByProtocol())
    other.build()
    other.start()
    first = sorted(os.sched_getaffinity(0))[0]
    worker = other.status()["workers"]["scale"]
    assert worker["cpu_slot"] == first and os.sched_getaffinity(worker["pid"]) == {first}


def test_workers_get_their_blas_thread_count_before_numpy_loads(namespace, manager_factory):
    """A worker is pinned to one CPU: BLAS threads beyond `blas_threads` (1 by default) only jitter."""
    streams = [stream("x", (8,)), stream("A", (4, 8)), stream("b", (4,)), stream("y", (4,)), stream("z", (8,))]
    kernels = [
        {"name": "affine", "kind": "cpu.affine_transform", "input": "x", "output": "y", "auxiliary": ["A", "b"],
         "parameters": {"blas_threads": 3}},
        {"name": "copy", "kind": "cpu.copy", "input": "x", "output": "z"},
    ]
    manager = manager_factory(pipeline(namespace, streams, kernels))
    manager.build()
    manager.start(wait=True)
    for name, threads in (("affine", "3"), ("copy", "1")):
        with open(f"/proc/{manager.workers[name].pid}/environ", "rb") as handle:
            environ = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            assert environ[variable.encode()] == threads.encode()
