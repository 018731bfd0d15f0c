"""One writer per stream, and segments damaged under a running pipeline (issue 12, items 7, 8, 9).

Real workers, real /dev/shm files truncated or replaced with ``os.truncate`` and
friends, and the real daemon: a damaged segment is reported by name, the
pipeline fails cleanly, and no process dies of SIGBUS.
"""

from __future__ import annotations

import os
import signal
import uuid

import numpy as np
import pytest

import shmpiped
from shmpiped.kernels.elementwise import CopyKernel
from shmpiped.kernels.registry import default_registry
from shmpiped.shm import layout

from .conftest import pipeline, run_python, scale_pipeline, segments_of, spawn_python, stream, wait_for
from .daemon_support import write_pipeline


class InputVandal(CopyKernel):
    """cpu.copy that first overwrites its own trigger input."""

    kind = "test.input_vandal"

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        trigger_input[...] = -1.0
        super().compute_into(trigger_input, output, auxiliary_inputs)


class AuxiliaryVandal(CopyKernel):
    """cpu.copy that doubles its auxiliary ``gain`` in place."""

    kind = "test.auxiliary_vandal"
    auxiliary_arity = 1

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        np.multiply(auxiliary_inputs["gain"], 2.0, out=auxiliary_inputs["gain"])
        super().compute_into(trigger_input, output, auxiliary_inputs)


REGISTRY = default_registry().extended(InputVandal, AuxiliaryVandal)


def shm_file(namespace: str | None, stream_name: str | None = None) -> str:
    name = (layout.stream_segment_name(namespace, stream_name) if stream_name
            else layout.namespace_segment_name(namespace))
    return os.path.join(layout.DEV_SHM, name)


# ---------------------------------------------------------------------- one writer per stream


def test_a_kernel_that_writes_its_input_fails_naming_itself_and_the_stream(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("output")],
                      [{"name": "vandal", "kind": "test.input_vandal", "input": "input", "output": "output"}])
    m = manager_factory(config, registry=REGISTRY).build().start()
    m.get_stream("input").write(np.arange(4.0))
    failure = wait_for(lambda: m.failures and m.failures[0], timeout=10)
    assert failure["kernel"] == "vandal" and failure["exit_code"] == 1
    assert failure["error"].startswith("KernelExecutionError: kernel 'vandal' wrote into its input stream 'input'")
    assert "assignment destination is read-only" in failure["traceback"]  # NumPy's own words stay in the trace
    np.testing.assert_array_equal(m.get_stream("input").read(), np.arange(4.0))  # the input is intact
    assert m.get_stream("output").count == 0


def test_a_kernel_that_writes_an_auxiliary_names_that_stream(namespace, manager_factory):
    config = pipeline(namespace, [stream("input"), stream("gain", initial={"pattern": "constant", "value": 3.0}),
                                  stream("output")],
                      [{"name": "doubler", "kind": "test.auxiliary_vandal", "input": "input", "output": "output",
                        "auxiliary": ["gain"]}])
    m = manager_factory(config, registry=REGISTRY).build().start()
    m.get_stream("input").write(np.ones(4))
    failure = wait_for(lambda: m.failures and m.failures[0], timeout=10)
    assert "kernel 'doubler' wrote into its input stream 'gain'" in failure["error"]
    np.testing.assert_array_equal(m.get_stream("gain").read(), np.full(4, 3.0))


EXTERNAL_PROCESS = """
import ctypes, sys
import numpy as np
import shmpiped
namespace, action = sys.argv[1], sys.argv[2]
output = shmpiped.attach("output", namespace=namespace)
if action == "poke":  # bypass NumPy: the MMU itself refuses
    ctypes.memset(output.slot_views[0].ctypes.data, 0xFF, 8)
    print("poked", flush=True)
    raise SystemExit(0)
print("readonly", output.readonly)
try:
    output.write(np.zeros(4))
    print("written")
except PermissionError as exc:
    print("write refused:", exc)
try:
    shmpiped.attach("output", namespace=namespace, readonly=False)
    print("attached for writing")
except PermissionError as exc:
    print("attach refused:", exc)
print("input writable", not shmpiped.attach("input", namespace=namespace).readonly)
before = output.count
print("ready", flush=True)
count = output.wait(before, timeout=10.0)  # parks on the futex: the header stays writable
print("read", count, output.read().tolist(), flush=True)
"""


def test_an_external_process_reads_but_cannot_write_a_stream_the_pipeline_produces(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, factor=2.0)).build().start()
    child = spawn_python(EXTERNAL_PROCESS, namespace, "check")
    lines = []
    for line in child.stdout:
        lines.append(line.strip())
        if line.startswith("ready"):
            break
    m.get_stream("input").write(np.arange(4.0))
    out, err = child.communicate(timeout=30)
    lines += out.split("\n")
    assert child.returncode == 0, err
    text = "\n".join(lines)
    producer = f"kernel 'scale' of the pipeline run by pid {os.getpid()}"
    assert "readonly True" in lines
    assert f"write refused: stream 'output' (namespace '{namespace}') is written by {producer}" in text
    assert f"attach refused: stream 'output' (namespace '{namespace}') is written by {producer}" in text
    assert "input writable True" in lines  # nothing in the pipeline writes the input: a camera may
    assert "read 1 [0.0, 2.0, 4.0, 6.0]" in lines


def test_the_slots_of_a_reader_are_read_only_in_the_mmu(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace, factor=2.0)).build().start()
    result = run_python(EXTERNAL_PROCESS, namespace, "poke", check=False)
    assert result.returncode == -signal.SIGSEGV and "poked" not in result.stdout
    assert m.get_stream("output").slot_views[0].view(np.uint8)[:8].tolist() == [0] * 8


def test_a_stream_left_by_its_pipeline_accepts_a_writer_again(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace)).build()
    with pytest.raises(PermissionError, match="kernel 'scale'"):
        shmpiped.attach("output", namespace=namespace, readonly=False)
    m.shutdown(unlink=False)  # the streams stay, kept on purpose; the pipeline no longer writes them
    try:
        handle = shmpiped.attach("output", namespace=namespace, readonly=False)
        assert handle.write(np.ones(4)) == 1
        handle.close()
    finally:
        for name in ("input", "output"):
            os.unlink(shm_file(namespace, name))


# ---------------------------------------------------------------------- the SIGBUS shield

SHIELD_PROBE = """
import os, sys
import numpy as np
from shmpiped.shm.segment import enable_fault_shield
from shmpiped.shm.stream import Stream
namespace, shield = sys.argv[1], sys.argv[2] == "1"
if shield:
    enable_fault_shield()
s = Stream.create("probe", (1024,), "float64", namespace=namespace)
try:
    s.write(np.ones(1024))
    os.truncate(s.segment.path, 0)
    print("count", s.count, "sum", float(s.read().sum()), "write", s.write(np.ones(1024)), flush=True)
    print("damage", s.damage(), flush=True)
finally:
    s.unlink()
"""


@pytest.mark.parametrize("shield", [False, True])
def test_a_truncated_segment_kills_a_process_only_without_the_shield(namespace, shield):
    result = run_python(SHIELD_PROBE, namespace, str(int(shield)), check=False)
    if not shield:
        assert result.returncode == -signal.SIGBUS  # what the daemon used to die of
        os.unlink(shm_file(namespace, "probe"))
        return
    assert result.returncode == 0, result.stderr
    assert "count 0 sum 0.0 write 1" in result.stdout  # zeros where the file was; writes go nowhere
    assert "damage was truncated to 0 bytes (it had" in result.stdout


# ---------------------------------------------------------------------- damaged segments, in the library


def test_a_corrupted_count_is_reported_as_a_damaged_stream_naming_its_segment(namespace, manager_factory):
    m = manager_factory(scale_pipeline(namespace)).build().start()
    m.get_stream("input").write(np.ones(4))
    wait_for(lambda: m.get_stream("output").count == 1)
    path = shm_file(namespace, "output")
    with open(path, "r+b") as handle:
        handle.seek(layout.STREAM_SEQ_OFFSET)
        handle.write(b"\xff" * 8)
    status = m.status()
    assert "has a corrupted publication count (0xffffffffffffffff" in status["streams"]["output"]["damaged"]
    assert status["streams"]["input"]["damaged"] is None
    damaged = [f for f in status["failures"] if f["type"] == "segment_damaged"]
    assert [(f["segment"], f["stream"], f["component_type"]) for f in damaged] == [(path, "output", "stream")]
    assert m.state.value == "failed"
    m.get_stream("input").write(np.ones(4))  # the worker's next publication meets the garbage
    worker = wait_for(lambda: next((f for f in m.failures if f["kernel"] == "scale"), None), timeout=10)
    assert f"segment {path} has a corrupted publication count" in worker["error"]
    assert "OverflowError" not in worker["error"]


def test_truncating_a_shared_namespace_control_block_fails_the_pipeline_not_its_process(manager_factory):
    tag = uuid.uuid4().hex[:8]
    names = (f"in_{tag}", f"out_{tag}")
    config = {"shared_memory": [stream(n) for n in names],
              "kernels": [{"name": "scale", "kind": "cpu.scale", "input": names[0], "output": names[1],
                           "read_timeout": 0.1, "parameters": {"factor": 2.0}}]}
    m = manager_factory(config).build().start()
    prefix = f"{layout.namespace_segment_name(None)}@{os.getpid()}-"
    (block,) = [n for n in os.listdir(layout.DEV_SHM) if n.startswith(prefix)]
    block_path = os.path.join(layout.DEV_SHM, block)
    os.truncate(block_path, 0)
    record = wait_for(lambda: next((f for f in m.failures if f["type"] == "segment_damaged"), None))
    assert record["segment"] == block_path and record["component_type"] == "control_block"
    assert "was truncated to 0 bytes" in record["error"]
    worker = wait_for(lambda: next((f for f in m.failures if f["kernel"] == "scale"), None), timeout=10)
    assert worker["signal"] == "SIGBUS" and worker["segment"] == block_path  # its record names the segment
    assert f"segment {block_path} was truncated" in worker["error"]
    assert m.state.value == "failed"
    m.shutdown()
    left = set(os.listdir(layout.DEV_SHM))
    assert block not in left and not any(layout.stream_segment_name(None, n) in left for n in names)


# ---------------------------------------------------------------------- under the real daemon


def _segment_failure(daemon, path: str):
    try:
        failures = daemon.status()["failures"]
    except OSError:  # between snapshots, or already gone
        return None
    return next((f for f in failures if f.get("segment") == path and f["type"] == "segment_damaged"), None)


@pytest.mark.parametrize("target, size", [
    ("input", 0), ("output", 0), ("block", 0),
    ("output", layout.HEADER_SIZE + 64),  # the ring ends in the file's last page: nothing faults
])
def test_truncating_a_segment_under_the_daemon_fails_it_cleanly(tmp_path, namespace, daemons, target, size):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    path = shm_file(namespace, None if target == "block" else target)
    os.truncate(path, size)
    # The daemon survives the file (no SIGBUS kills it) and reports it; no restart can repair the
    # segment, so it exits 70 at once, removing every segment.
    assert daemon.process.wait(timeout=30) == 70, daemon.output
    what = f"{path} was truncated to {size} bytes"
    assert f"ERROR shmpiped.streams: {'control block' if target == 'block' else f'stream {target!r}: segment'} " \
           f"{what}" in daemon.output
    assert "pipeline failed beyond its restart budget: " in daemon.output
    assert segments_of(namespace) == []


def test_replacing_a_stream_file_under_the_daemon_is_reported_and_cleaned_up(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path, "--no-fail-fast")
    daemon.wait_ready()
    path = shm_file(namespace, "output")
    with open(path, "rb") as original:
        content = original.read()
    os.unlink(path)
    with open(path, "wb") as impostor:  # same name, same bytes, another file
        impostor.write(content)
    failure = wait_for(lambda: _segment_failure(daemon, path), timeout=15, describe=lambda: daemon.output)
    assert "was replaced by another file of the same name" in failure["error"]
    status = daemon.status()
    assert "replaced" in status["streams"]["output"]["damaged"] and status["state"] == "failed"
    assert daemon.get("/readyz")[0] == 503
    assert daemon.process.poll() is None  # --no-fail-fast: it keeps running, reporting the damage
    assert daemon.stop() == 0
    assert segments_of(namespace) == []  # the impostor went with the pipeline's segments
