"""The telemetry fields behind the new metrics, through a real control block in /dev/shm: the exec-time sum
of squares that record_frame (C) keeps, and the GPU UUID a GPU worker writes once."""

from __future__ import annotations

import numpy as np
import pytest

from shmpiped.shm import _sync, layout
from shmpiped.shm.device import EmulatedBackend
from shmpiped.shm.telemetry import NamespaceBlock
from shmpiped.worker import _device_uuid


def test_record_frame_keeps_the_sum_of_squares(namespace):
    block = NamespaceBlock.acquire(namespace)
    try:
        block.reset_record(2, "centroid", 7)
        record = block.worker_record(2)
        exec_ns = np.random.default_rng(1).integers(1_000, 5_000_000, size=2500)
        now = _sync.monotonic_ns()
        for i, value in enumerate(exec_ns):
            record.record_frame(int(value), now + i, 1, 0)
        snap = block.snapshot(2)
        seconds = exec_ns / 1e9
        assert snap.frames == 2500
        assert snap.exec_sumsq_s2 == pytest.approx(float(np.sum(seconds ** 2)), rel=1e-12)
        # with _sum and _count it gives the standard deviation of every frame, past the 1000-frame window
        mean = snap.field(layout.REC_EXEC_SUM_NS) / 1e9 / snap.frames
        assert np.sqrt(snap.exec_sumsq_s2 / snap.frames - mean ** 2) == pytest.approx(float(np.std(seconds)),
                                                                                   rel=1e-6)
        block.reset_record(2, "centroid", 8)  # a respawn starts from 0, like every counter
        assert block.snapshot(2).exec_sumsq_s2 == 0.0
    finally:
        block.close(unlink=True)


def test_gpu_uuid_is_written_once_and_read_as_nvidia_writes_it(namespace):
    block = NamespaceBlock.acquire(namespace)
    try:
        block.reset_record(0, "reconstruct", 1)
        assert block.snapshot(0).gpu_uuid is None  # a CPU worker writes nothing
        raw = bytes.fromhex("5c1f0e2ab3d94c7e8f6a0b1c2d3e4f50")
        block.worker_record(0).set_gpu_uuid(raw)
        assert block.snapshot(0).gpu_uuid == "GPU-5c1f0e2a-b3d9-4c7e-8f6a-0b1c2d3e4f50"
        assert block.snapshot(0).name == "reconstruct"  # its neighbours in the record are untouched
    finally:
        block.close(unlink=True)


def test_the_emulated_device_has_no_uuid():
    assert _device_uuid(EmulatedBackend(), 0) is None
