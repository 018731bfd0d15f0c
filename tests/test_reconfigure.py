"""Changing a running pipeline's configuration: only what differs stops and starts, and a change that
cannot start leaves the old pipeline running (real workers, real /dev/shm)."""

from __future__ import annotations

import numpy as np
import pytest

from shmpiped import PipelineConfig
from shmpiped.errors import SharedMemoryError, WorkerProcessError
from shmpiped.kernels.registry import default_registry
from shmpiped.reconfigure import plan

from .conftest import pipeline, push, segments_of, stream, wait_for
from .plugins import FailingStartCopy

REGISTRY = default_registry().extended(FailingStartCopy)


def chain(namespace, factor=2.0, gain_kind="cpu.scale", extra_streams=(), extra_kernels=(), shape=(4,)):
    """input -> scale(factor) -> mid -> multiply by `gain` (an auxiliary written at run time) -> output."""
    return pipeline(namespace, [
        stream("input", shape), stream("mid", shape), stream("gain", shape), stream("output", shape),
        *extra_streams,
    ], [
        {"name": "scale", "kind": gain_kind, "input": "input", "output": "mid", "parameters": {"factor": factor}},
        {"name": "apply", "kind": "cpu.elementwise_multiply", "input": "mid", "output": "output",
         "auxiliary": ["gain"]},
        *extra_kernels,
    ])


def started(manager_factory, config):
    manager = manager_factory(config, registry=REGISTRY)
    manager.build()
    manager.start()
    manager.get_stream("gain").write(np.full(4, 10.0))  # a calibration written at run time
    return manager


def test_the_plan_names_only_what_differs(namespace):
    old = PipelineConfig.from_dict(chain(namespace))
    assert plan(old, old).unchanged
    factor = plan(old, PipelineConfig.from_dict(chain(namespace, factor=3.0)))
    assert factor.start_kernels == factor.stop_kernels == ("scale",)
    assert not factor.changed_streams and not factor.added_streams
    grown = plan(old, PipelineConfig.from_dict(chain(namespace, extra_streams=[stream("spare")])))
    assert grown.added_streams == ("spare",) and not grown.start_kernels
    reshaped = plan(old, PipelineConfig.from_dict(chain(namespace, shape=(8,))))
    assert set(reshaped.changed_streams) == {"input", "mid", "gain", "output"}
    assert reshaped.start_kernels == ("scale", "apply")
    assert plan(old, old, down={"apply"}).start_kernels == ("apply",)  # a dead worker is restarted too


def test_a_changed_kernel_restarts_alone_and_streams_keep_their_contents(namespace, manager_factory):
    m = started(manager_factory, chain(namespace))
    assert push(m, "input", np.ones(4)).tolist() == [20.0] * 4
    pids = {name: h.pid for name, h in m.workers.items()}
    result = m.reconfigure(chain(namespace, factor=3.0))
    assert result["reconfigured"] is True and "scale" in result["plan"]
    assert m.workers["apply"].pid == pids["apply"]  # untouched
    assert m.workers["scale"].pid != pids["scale"]
    assert m.get_stream("gain").read().tolist() == [10.0] * 4  # the run-time calibration survived
    assert push(m, "input", np.ones(4)).tolist() == [30.0] * 4
    assert m.config.kernels[0].parameters == {"factor": 3.0} and m.state == "running"


def test_streams_and_kernels_are_added_removed_and_reshaped(namespace, manager_factory):
    extra = {"name": "tap", "kind": "cpu.copy", "input": "output", "output": "spare"}
    m = started(manager_factory, chain(namespace, extra_streams=[stream("spare")], extra_kernels=[extra]))
    assert f"shmpiped.{namespace}.spare" in segments_of(namespace)
    m.reconfigure(chain(namespace, shape=(6,)))
    assert f"shmpiped.{namespace}.spare" not in segments_of(namespace) and "tap" not in m.workers
    assert m.get_stream("input").shape == (6,)
    m.get_stream("gain").write(np.full(6, 0.5))
    assert push(m, "input", np.full(6, 4.0)).tolist() == [4.0] * 6


def test_a_change_that_cannot_start_leaves_the_old_pipeline_running(namespace, manager_factory):
    m = started(manager_factory, chain(namespace))
    pids = {name: h.pid for name, h in m.workers.items()}
    broken = chain(namespace, gain_kind="test.failing_start_copy",
                   extra_streams=[stream("spare")])
    with pytest.raises(WorkerProcessError, match="cannot open the device"):
        m.reconfigure(broken)
    assert m.state == "running" and not m.failures
    assert m.workers["apply"].pid == pids["apply"]
    assert m.config.kernels[0].kind == "cpu.scale"
    assert f"shmpiped.{namespace}.spare" not in segments_of(namespace)  # what it added is gone
    wait_for(lambda: m.status()["workers"]["scale"]["health"] in ("waiting-input", "active"))
    assert push(m, "input", np.ones(4)).tolist() == [20.0] * 4


def test_streams_that_do_not_fit_are_refused_before_anything_stops(namespace, manager_factory):
    m = started(manager_factory, chain(namespace))
    pids = {name: h.pid for name, h in m.workers.items()}
    huge = chain(namespace, extra_streams=[stream("huge", (1 << 20, 1 << 20), "float64")])
    with pytest.raises(SharedMemoryError, match="MiB are free"):
        m.reconfigure(huge)
    assert {name: h.pid for name, h in m.workers.items()} == pids
    assert push(m, "input", np.ones(4)).tolist() == [20.0] * 4
