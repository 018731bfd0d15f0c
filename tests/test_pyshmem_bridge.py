"""pyshmem.source and pyshmem.sink: pipelines fed by, and feeding, real pyshmem driver processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from shmpiped.config import PipelineConfig
from shmpiped.errors import ConfigValidationError
from shmpiped.validation import validate_pipeline_config

from .conftest import pipeline, stream, wait_for

pyshmem = pytest.importorskip("pyshmem", reason="pyshmem is in the test extra: pip install -e '.[test]'")

SHMPIPED = [sys.executable, "-m", "shmpiped.cli"]

#: A camera driver written against pyshmem: creates its stream, then on each stdin line publishes
#: frames [i, monotonic_ns before the write] with frame id 1000 + i, 20 ms apart.
CAMERA_DRIVER = """
import sys, time, numpy as np, pyshmem
name, frames, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3]
camera = pyshmem.create(name, shape=(2,), dtype=dtype, notify=sys.argv[4] == "notify")
print("ready", flush=True)
sent = 0
while sys.stdin.readline().strip() == "go":
    for _ in range(frames):
        sent += 1
        camera.write(np.array([sent, time.monotonic_ns()], dtype=dtype), frame_id=1000 + sent)
        time.sleep(0.02)
    print("sent", sent, flush=True)
camera.close()
pyshmem.unlink(name)
"""

#: A mirror driver written against pyshmem: opens the stream, reads `frames` publications level-triggered
#: from the count it found, prints [frame_id, payload] of each as JSON.
MIRROR_DRIVER = """
import sys, json, pyshmem
mirror = pyshmem.open(sys.argv[1])
print("ready", list(mirror.shape), mirror.dtype.name, mirror.notify, flush=True)
seen, last = [], mirror.count
while len(seen) < int(sys.argv[2]):
    publication = mirror.read_after_publication(last, timeout=10)
    last = publication.count
    seen.append([publication.frame_id, publication.payload.ravel().tolist()])
print(json.dumps(seen), flush=True)
mirror.close()
"""


@pytest.fixture(autouse=True)
def pyshmem_locks(tmp_path, monkeypatch):
    """pyshmem's lock files (kept outside /dev/shm) go to this test's directory; drivers inherit it."""
    monkeypatch.setenv("PYSHMEM_LOCK_DIR", str(tmp_path / "pyshmem-locks"))


@pytest.fixture
def pyshmem_names(namespace):
    """Unique pyshmem stream names; the test fails if one is left in /dev/shm."""
    names = []

    def make(role: str) -> str:
        names.append(f"{namespace}-{role}")
        return names[-1]

    yield make
    left = [name for name in names if name in pyshmem.list_streams()]
    for name in left:
        pyshmem.unlink_quiet(name)
    assert not left, f"pyshmem streams left in /dev/shm: {left}"


class Driver:
    """An external driver process with a line-based stdin protocol."""

    def __init__(self, code: str, *args):
        self.process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.process.stdout.readline().split()
        assert self.banner and self.banner[0] == "ready", self.process.stderr.read()

    def tell(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def reply(self) -> str:
        return self.process.stdout.readline().strip()

    def finish(self) -> str:
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return out


def camera_pipeline(namespace, camera, dtype="float64", **parameters):
    return pipeline(
        namespace, [stream("input", (2,), dtype), stream("output", (2,), dtype)],
        [{"name": "scale", "kind": "cpu.scale", "input": "input", "output": "output", "parameters": {"factor": 2}}],
        sources=[{"name": "camera", "kind": "pyshmem.source", "stream": "input",
                  "parameters": {"pyshmem_stream": camera, **parameters}}])


def source_metrics(manager) -> dict:
    return manager.status()["sources"]["camera"]["plugin_metrics"]


def collect(output, count: int, after: int = 0) -> list:
    """``count`` consecutive publications of ``output`` after count ``after``, with the time each arrived."""
    seen = []
    while len(seen) < count:
        publication = output.read_after_publication(after, timeout=10)
        seen.append((publication, time.monotonic_ns()))
        after = publication.count
    return seen


# --------------------------------------------------------------------------- the source


def test_external_pyshmem_camera_feeds_the_pipeline(namespace, manager_factory, pyshmem_names):
    camera = pyshmem_names("camera")
    driver = Driver(CAMERA_DRIVER, camera, 20, "float64", "notify")
    manager = manager_factory(camera_pipeline(namespace, camera))
    manager.build()
    manager.start()
    output = manager.get_stream("output")
    driver.tell("go")
    arrived = collect(output, 20)
    assert driver.reply() == "sent 20"
    driver.tell("stop")
    driver.finish()

    for i, (publication, received_ns) in enumerate(arrived, start=1):
        sent, sent_ns = publication.payload / 2  # the scale kernel doubled both
        assert (sent, publication.frame_id) == (i, 1000 + i)
        # the origin is the driver's write time: after its clock read just before write(), before arrival
        assert sent_ns - 50_000 <= publication.origin_ns <= received_ns
    metrics = source_metrics(manager)
    assert metrics["frames_forwarded"] == 20 and metrics["wake_up"] == "futex"
    assert metrics["attached"] and not metrics["created"]


def test_source_waits_for_a_late_driver_and_follows_its_restart(namespace, manager_factory, pyshmem_names):
    camera = pyshmem_names("camera")
    manager = manager_factory(camera_pipeline(namespace, camera, poll_interval_s=0.001))
    manager.build()
    manager.start()  # before the driver exists
    output = manager.get_stream("output")
    first = Driver(CAMERA_DRIVER, camera, 3, "float64", "poll")  # notify=False: the source polls
    wait_for(lambda: source_metrics(manager)["attached"], timeout=10)  # it forwards writes made after that
    assert source_metrics(manager)["wake_up"] == "polling"
    first.tell("go")
    assert [p.frame_id for p, _ in collect(output, 3)] == [1001, 1002, 1003]
    assert first.reply() == "sent 3"
    first.tell("stop")
    first.finish()  # the driver exits and removes its stream

    second = Driver(CAMERA_DRIVER, camera, 3, "float64", "notify")  # restarted: a new stream of that name
    wait_for(lambda: source_metrics(manager)["reattached"] >= 1 and source_metrics(manager)["attached"],
             timeout=10, describe=lambda: str(source_metrics(manager)))
    second.tell("go")
    assert [p.frame_id for p, _ in collect(output, 3, after=3)] == [1001, 1002, 1003]
    assert second.reply() == "sent 3"
    second.tell("stop")
    second.finish()
    manager.raise_if_failed()


def test_source_fails_clearly_when_the_stream_never_appears(namespace, manager_factory, pyshmem_names):
    camera = pyshmem_names("camera")
    manager = manager_factory(camera_pipeline(namespace, camera, attach_timeout_s=0.3))
    manager.build()
    manager.start()
    failures = wait_for(lambda: manager.failures, timeout=10)
    assert failures[0]["kernel"] == "camera"
    assert f"pyshmem stream {camera!r} does not exist after 0.3 s" in failures[0]["error"]


def test_source_can_create_the_stream_for_a_driver_that_opens_it(namespace, manager_factory, pyshmem_names):
    camera = pyshmem_names("camera")
    manager = manager_factory(camera_pipeline(namespace, camera, create=True))
    manager.build()
    manager.start()
    info = pyshmem.stat(camera)
    assert (info["shape"], info["dtype"], info["notify"]) == ([2], "float64", True)
    handle = pyshmem.open(camera)
    handle.write(np.array([5.0, 0.0]), frame_id=55)
    publication = collect(manager.get_stream("output"), 1)[0][0]
    assert publication.frame_id == 55 and publication.payload[0] == 10.0
    handle.close()
    manager.shutdown()
    assert camera not in pyshmem.list_streams()  # created by the source, removed with it


def test_source_refuses_a_stream_of_another_dtype(namespace, manager_factory, pyshmem_names):
    camera = pyshmem_names("camera")
    driver = Driver(CAMERA_DRIVER, camera, 1, "float32", "notify")
    manager = manager_factory(camera_pipeline(namespace, camera))
    manager.build()
    with pytest.raises(ConfigValidationError, match=r"holds \[2\] float32, but pipeline stream 'input' is "
                                                    r"\[2\] float64"):
        manager.start()
    driver.tell("stop")
    driver.finish()


# --------------------------------------------------------------------------- the sink


def mirror_pipeline(namespace, mirror, shape=(2, 3), **parameters):
    return pipeline(
        namespace, [stream("input", shape, "float32"), stream("output", shape, "float32")],
        [{"name": "copy", "kind": "cpu.copy", "input": "input", "output": "output"}],
        sinks=[{"name": "mirror", "kind": "pyshmem.sink", "stream": "output",
                "parameters": {"pyshmem_stream": mirror, **parameters}}])


def test_sink_writes_a_pyshmem_stream_another_process_reads(namespace, manager_factory, pyshmem_names):
    mirror = pyshmem_names("mirror")
    manager = manager_factory(mirror_pipeline(namespace, mirror))
    manager.build()
    manager.start()
    reader = Driver(MIRROR_DRIVER, mirror, 10)
    assert reader.banner[1:] == ["[2,", "3]", "float32", "True"]  # created with the stream's shape, notify
    commands = manager.get_stream("input")
    for i in range(10):
        commands.write(np.full((2, 3), i + 1.0), frame_id=500 + i)
        time.sleep(0.02)
    seen = json.loads(reader.finish().strip().splitlines()[-1])
    assert seen == [[500 + i, [i + 1.0] * 6] for i in range(10)]
    assert manager.status()["sinks"]["mirror"]["plugin_metrics"]["frames_written"] == 10
    manager.shutdown()
    assert mirror not in pyshmem.list_streams()  # created by the sink, removed with it


def test_sink_attaches_to_an_existing_stream_and_checks_it(namespace, manager_factory, pyshmem_names):
    mirror = pyshmem_names("mirror")
    existing = pyshmem.create(mirror, shape=(6,), dtype=np.float32)  # same elements, flat
    try:
        manager = manager_factory(mirror_pipeline(namespace, mirror, create=False))
        manager.build()
        manager.start()
        manager.get_stream("input").write(np.arange(6.0).reshape(2, 3), frame_id=8)
        publication = existing.read_after_publication(0, timeout=10)
        assert publication.frame_id == 8
        np.testing.assert_array_equal(publication.payload, np.arange(6.0))
        manager.shutdown()
        assert mirror in pyshmem.list_streams()  # not ours to remove
    finally:
        existing.close()
        pyshmem.unlink(mirror)

    wrong = pyshmem.create(mirror, shape=(6,), dtype=np.float64)
    try:
        manager = manager_factory(mirror_pipeline(namespace, mirror))
        manager.build()
        with pytest.raises(ConfigValidationError, match=r"holds \[6\] float64, but pipeline stream 'output' is "
                                                        r"\[2, 3\] float32"):
            manager.start()
    finally:
        wrong.close()
        pyshmem.unlink(mirror)


def test_sink_without_create_needs_the_stream(namespace, manager_factory, pyshmem_names):
    mirror = pyshmem_names("mirror")
    manager = manager_factory(mirror_pipeline(namespace, mirror, create=False))
    manager.build()
    with pytest.raises(FileNotFoundError, match="start the driver that creates it first, or set create: true"):
        manager.start()


# --------------------------------------------------------------------------- validation


def test_parameters_are_validated(namespace):
    config = PipelineConfig.from_dict(pipeline(
        namespace, [stream("input", (2,)), stream("output", (2,))],
        [{"name": "copy", "kind": "cpu.copy", "input": "input", "output": "output"}],
        sources=[{"name": "camera", "kind": "pyshmem.source", "stream": "input",
                  "parameters": {"attach_timeout_s": -1}}],
        sinks=[{"name": "mirror", "kind": "pyshmem.sink", "stream": "output",
                "parameters": {"pyshmem_stream": "dm", "lock_timeout": 1}}]))
    errors = validate_pipeline_config(config)
    assert any("source 'camera' (pyshmem.source): parameter pyshmem_stream" in e and "is required" in e
               for e in errors), errors
    assert any("unknown parameter(s) lock_timeout; expected any of: pyshmem_stream" in e for e in errors), errors


PIPELINE_YAML = """\
namespace: {namespace}
shared_memory:
  - {{name: input, shape: [4], dtype: float64}}
  - {{name: output, shape: [4], dtype: float64}}
{endpoints}kernels:
  - {{name: copy, kind: cpu.copy, input: input, output: output}}
"""


def test_without_pyshmem_validate_exits_78_saying_what_to_install(tmp_path, namespace):
    hidden = tmp_path / "no-pyshmem"
    hidden.mkdir()
    (hidden / "pyshmem.py").write_text("raise ImportError(\"No module named 'pyshmem'\")\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    bridged = tmp_path / "bridged.yaml"
    bridged.write_text(PIPELINE_YAML.format(namespace=namespace, endpoints=(
        "sources:\n  - {name: camera, kind: pyshmem.source, stream: input, parameters: {pyshmem_stream: cam}}\n"
        "sinks:\n  - {name: mirror, kind: pyshmem.sink, stream: output, parameters: {pyshmem_stream: dm}}\n")))
    plain = tmp_path / "plain.yaml"
    plain.write_text(PIPELINE_YAML.format(namespace=namespace, endpoints=""))

    result = subprocess.run([*SHMPIPED, "validate", str(bridged)], capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "needs the pyshmem package" in line]
    assert len(lines) == 2 and all("install it with pip install 'shmpiped[pyshmem]'" in line for line in lines)
    assert "source 'camera' of kind 'pyshmem.source'" in lines[0] and "bridged.yaml, line 6)" in lines[0]

    # a pipeline without these kinds never imports pyshmem, so the broken one above is never touched
    result = subprocess.run([*SHMPIPED, "validate", str(plain)], capture_output=True, text=True, timeout=60,
                            env=environment)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_pipelines_do_not_import_pyshmem(namespace):
    code = (
        "import sys\nfrom shmpiped.config import PipelineConfig\n"
        "from shmpiped.validation import validate_pipeline_config\n"
        f"config = PipelineConfig.from_dict({{'namespace': {namespace!r}, 'shared_memory': ["
        "{'name': 'a', 'shape': [2], 'dtype': 'float32'}, {'name': 'b', 'shape': [2], 'dtype': 'float32'}],"
        " 'kernels': [{'name': 'k', 'kind': 'cpu.copy', 'input': 'a', 'output': 'b'}],"
        " 'sinks': [{'name': 'drain', 'kind': 'null.sink', 'stream': 'b'}]})\n"
        "assert validate_pipeline_config(config) == []\n"
        "print(sorted(m for m in sys.modules if 'pyshmem' in m))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the benchmark


def test_bench_pyshmem_prints_figures():
    result = subprocess.run([*SHMPIPED, "bench", "pyshmem", "--frames", "100", "--rate", "500", "--runs", "1",
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["path"].split(" -> ")[1] for row in report["rows"]] == [
        "shmpiped stream (direct)", "pyshmem (notify)", "pyshmem (no notify)", "pyshmem (notify)"]
    for row in report["rows"]:
        assert row["frames_measured"] > 0 and 0 < row["p50_us"] <= row["p99_us"], row
    assert all("added_p50_us" in row for row in report["rows"][1:])
