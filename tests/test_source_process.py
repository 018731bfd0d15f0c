"""Sources with ``process: true``: their own process, the real-time settings, pause/stop, failures, restarts.

Everything runs for real: the source process, the kernel's worker process,
the streams in /dev/shm (the ``namespace`` fixture fails a test that leaves
a segment), and for the supervisor's restart the real daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from shmpiped.errors import ConfigValidationError, WorkerProcessError
from shmpiped.kernels.base import Source
from shmpiped.kernels.registry import default_registry

from .conftest import pipeline, run_python, stream, wait_for
from .source_plugins import install_plugin

THREAD_SOURCE_KEYS = {
    "name", "kind", "stream", "streams", "coordinated_generation_count", "poll_interval", "alive",
    "frames_written", "effective_rate_hz", "throughput_hz", "started_at", "last_write_time",
    "last_write_duration_ms", "last_error", "plugin_metrics",
}


class CountingSource(Source):
    """Writes 1, 2, 3, ... every ``period_s``; defined here, so its process must import this test module."""

    kind = "test.counting_source"

    def __init__(self, context):
        super().__init__(context)
        spec = context.stream_spec
        self.value = np.zeros(spec.shape, dtype=spec.dtype)
        self.period_s = float(context.config.parameters.get("period_s", 0.005))
        self.fail_after = int(context.config.parameters.get("fail_after", 0))
        self.reads = 0

    def read(self):
        if self.wait(self.period_s):
            return None
        self.reads += 1
        if self.fail_after and self.reads > self.fail_after:
            raise RuntimeError(f"counting camera unplugged after {self.fail_after} frames")
        self.value[...] = self.reads
        return self.value

    def plugin_metrics(self) -> dict:
        return {"reads": self.reads, "pid": os.getpid(), "paused_seen": self.paused()}


REGISTRY = default_registry(entry_points=[]).extended(sources=[CountingSource])


def source_pipeline(namespace, source, *, factor=2.0, **extra):
    return pipeline(namespace, [stream("input"), stream("output")], [
        {"name": "scale", "kind": "cpu.scale", "input": "input", "output": "output",
         "parameters": {"factor": factor}}], sources=[source], **extra)


def camera(kind="synthetic.array", **fields):
    return {"name": "camera", "kind": kind, "stream": "input", "process": True, **fields}


def proc_scheduling(pid: int) -> tuple[int, int]:
    """(policy, rt_priority) of ``pid`` as the kernel reports them in /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[38]), int(fields[37])  # fields 41 and 40 of proc(5), counted from the state (field 3)


def proc_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as handle:
        return next(line.split(":", 1)[1].strip() for line in handle if line.startswith(key + ":"))


def test_synthetic_source_process_feeds_a_kernel(namespace, manager_factory):
    period = 16
    source = camera(parameters={"pattern": "ramp", "rate_hz": 200, "period": period})
    manager = manager_factory(source_pipeline(namespace, source)).build().start()
    output = manager.get_stream("output")
    seen = {}
    while len(seen) < 40:  # the kernel's output, frame by frame: 2 x ramp frame (frame id - 1)
        count = output.wait(output.count, timeout=5.0)
        value = output.read()
        seen[output.frame_id] = value
        assert count > 0
    index = np.arange(4)
    for frame_id, value in seen.items():
        expected = 2.0 * (((index + frame_id - 1) % period) / (period - 1))
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=f"frame {frame_id}")
    assert sorted(seen)[-1] - sorted(seen)[0] >= 39  # consecutive frame ids from the source's writes

    entry = wait_for(lambda: (s := manager.status()["sources"]["camera"])["frames_written"] >= 100 and s)
    assert THREAD_SOURCE_KEYS <= set(entry)
    assert entry["process"] is True and entry["alive"] and entry["health"] == "active"
    assert entry["pid"] != os.getpid()
    with open(f"/proc/{entry['pid']}/cmdline", "rb") as handle:
        assert b"shmpiped.source_runner:main" in handle.read()
    assert os.getppid() != entry["pid"] and proc_status(entry["pid"], "PPid") == str(os.getpid())
    # Paced without catch-up bursts: never above the requested rate, and close to it.
    assert 150 <= entry["effective_rate_hz"] <= 202
    assert 150 <= entry["throughput_hz"] <= 202
    assert entry["plugin_metrics"]["pattern"] == "ramp"
    assert entry["plugin_metrics"]["requested_rate_hz"] == 200.0
    assert entry["plugin_metrics"]["frames_generated"] > 0
    assert entry["last_write_duration_ms"] > 0 and entry["last_error"] is None
    # The origin is stamped where the frame is written: the kernel measures an honest latency from it.
    latency = manager.status()["end_to_end"]["output"]
    assert latency["samples"] > 0 and 0 < latency["p50_us"] < 100_000


def test_a_multi_stream_source_produces_in_its_process(namespace, manager_factory):
    source = {"name": "cameras", "kind": "synthetic.frame_set", "streams": ["left", "right"], "process": True,
              "parameters": {"pattern": "constant", "constant": 3.0, "rate_hz": 200}}
    config = pipeline(namespace, [stream("left"), stream("right"), stream("output")], [
        {"name": "scale", "kind": "cpu.scale", "input": "left", "output": "output", "parameters": {"factor": 2.0}}],
        sources=[source])
    manager = manager_factory(config).build().start()
    entry = wait_for(lambda: (s := manager.status()["sources"]["cameras"])["plugin_metrics"].get("generations", 0)
                     >= 20 and s)
    assert entry["pid"] != os.getpid() and entry["streams"] == ["left", "right"]
    writes = entry["plugin_metrics"]["per_stream_writes"]
    assert writes["left"] >= 20 and abs(writes["left"] - writes["right"]) <= 1
    left, right = manager.get_stream("left"), manager.get_stream("right")
    for handle in (left, right):  # generation g is written with frame id g on every stream
        assert handle.frame_id == handle.count
        np.testing.assert_array_equal(handle.read(), np.full(4, 3.0, dtype=np.float32))
    output = manager.get_stream("output")
    output.wait(output.count, timeout=5.0)
    np.testing.assert_array_equal(output.read(), np.full(4, 6.0, dtype=np.float32))


def test_realtime_settings_are_applied_to_the_source_process(namespace, manager_factory):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    source = camera(parameters={"pattern": "constant", "rate_hz": 100}, realtime={"priority": 60})
    config = source_pipeline(namespace, source, realtime={"policy": "fifo", "priority": 50, "lock_memory": True,
                                                          "cpus": [cpu]})
    manager = manager_factory(config).build().start()
    entry = wait_for(lambda: (s := manager.status()["sources"]["camera"])["frames_written"] > 5 and s)
    pid = entry["pid"]
    assert proc_scheduling(pid) == (1, 60)  # SCHED_FIFO, the source's own priority over the pipeline's 50
    assert proc_status(pid, "Cpus_allowed_list") == str(cpu)
    assert int(proc_status(pid, "VmLck").split()[0]) > 0
    assert entry["realtime"]["requested"]["policy"] == "fifo" and entry["realtime"]["requested"]["priority"] == 60
    effective = entry["realtime"]["effective"]
    assert (effective["policy"], effective["priority"], effective["cpus"]) == ("fifo", 60, [cpu])
    assert effective["memory_locked_bytes"] > 0
    assert entry["realtime"]["applied"] is True and entry["realtime"]["problems"] == []
    assert entry["proc"]["cpu_seconds"] >= 0 and entry["proc"]["voluntary_context_switches"] > 0


def test_without_realtime_the_source_process_stays_plain(namespace, manager_factory):
    manager = manager_factory(source_pipeline(namespace, camera(parameters={"rate_hz": 100}))).build().start()
    entry = wait_for(lambda: (s := manager.status()["sources"]["camera"])["frames_written"] > 0 and s)
    assert proc_scheduling(entry["pid"]) == (0, 0)  # SCHED_OTHER
    assert entry["realtime"]["requested"]["policy"] == "other"
    assert entry["realtime"]["effective"]["policy"] == "other"


def test_without_the_privileges_the_source_runs_plain_and_says_what_is_missing(namespace):
    """Under setpriv/prlimit (no CAP_SYS_NICE, RLIMIT_RTPRIO 0) and required: false, the source asked for
    fifo runs at policy other, and its status says so, read back from the kernel."""
    if shutil.which("prlimit") is None or shutil.which("setpriv") is None:
        pytest.fail("prlimit and setpriv (util-linux) are needed")
    drop = ["setpriv", "--inh-caps=-sys_nice,-ipc_lock", "--bounding-set=-sys_nice,-ipc_lock"]
    code = textwrap.dedent(f"""
        import json, time
        from shmpiped import PipelineManager
        config = {source_pipeline(namespace, camera(parameters={"rate_hz": 100},
                                                    realtime={"policy": "fifo", "priority": 50}))!r}
        with PipelineManager(config) as manager:
            manager.build().start()
            time.sleep(0.5)
            print(json.dumps(manager.status()["sources"]["camera"]))
    """)
    done = subprocess.run(["prlimit", "--rtprio=0:0", *(drop if os.geteuid() == 0 else []), sys.executable,
                           "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)
    assert entry["frames_written"] > 0 and entry["last_error"] is None  # it runs
    assert entry["realtime"]["requested"]["policy"] == "fifo"
    assert entry["realtime"]["effective"]["policy"] == "other" and entry["realtime"]["applied"] is False
    problems = " ".join(entry["realtime"]["problems"])
    assert "not fifo 50: the kernel refused it" in problems and "CAP_SYS_NICE" in problems
    assert "source 'camera': real-time settings not applied" in done.stderr


def test_pause_resume_and_stop_reach_the_process(namespace, manager_factory):
    manager = manager_factory(source_pipeline(namespace, camera("test.counting_source")),
                              registry=REGISTRY).build().start()
    frames = lambda: manager.status()["sources"]["camera"]["frames_written"]  # noqa: E731
    wait_for(lambda: frames() > 10)
    manager.pause()
    wait_for(lambda: manager.status()["sources"]["camera"]["health"] == "paused")
    # The plugin's own paused() reads the pipeline's pause flag (reported by its plugin_metrics).
    wait_for(lambda: manager.status()["sources"]["camera"]["plugin_metrics"]["paused_seen"], timeout=2.0)
    before = frames()
    time.sleep(0.5)
    assert frames() == before  # nothing written while paused
    manager.resume()
    wait_for(lambda: frames() > before + 10)
    wait_for(lambda: not manager.status()["sources"]["camera"]["plugin_metrics"]["paused_seen"], timeout=2.0)
    source = manager._sources["camera"]
    pid = source.pid
    manager.stop()
    assert source.exitcode == 0  # it ended on the stop word, not on a signal
    assert manager.status()["sources"] == {} and manager.failures == ()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_plugin_class_from_a_test_module_runs_in_the_process(namespace, manager_factory):
    manager = manager_factory(source_pipeline(namespace, camera("test.counting_source"), factor=3.0),
                              registry=REGISTRY).build().start()
    output = manager.get_stream("output")
    for _ in range(20):
        output.wait(output.count, timeout=5.0)
        value = output.read()
        frame_id = output.frame_id
        # The n-th read writes n, published as frame n: the kernel triples it.
        np.testing.assert_array_equal(value, np.full(4, 3.0 * frame_id, dtype=np.float32))
    # plugin_metrics are refreshed a few times a second, not per frame.
    entry = wait_for(lambda: (s := manager.status()["sources"]["camera"])["plugin_metrics"]["reads"] >= 20 and s)
    assert entry["plugin_metrics"]["pid"] == entry["pid"] != os.getpid()  # read() ran in the source process


def test_a_failing_source_process_leaves_its_traceback_and_restarts(namespace, manager_factory):
    source = camera("test.counting_source", parameters={"fail_after": 5})
    manager = manager_factory(source_pipeline(namespace, source), registry=REGISTRY).build().start()
    failure = wait_for(lambda: manager.failures and manager.failures[0])
    assert failure["type"] == "source_failed" and failure["component_type"] == "source"
    assert failure["kernel"] == "camera" and failure["exit_code"] == 1
    assert failure["error"] == "counting camera unplugged after 5 frames"
    assert "test_source_process.py" in failure["traceback"] and "raise RuntimeError" in failure["traceback"]
    status = manager.status()
    assert status["state"] == "failed"
    entry = status["sources"]["camera"]
    assert entry["health"] == "failed" and entry["last_error"] == failure["error"] and not entry["alive"]
    assert entry["frames_written"] == 5
    old_pid = entry["pid"]
    assert manager.restart() == ["camera"]
    status = manager.status()
    assert status["state"] == "running" and status["failures"] == []
    entry = status["sources"]["camera"]
    assert entry["restarts"] == 1 and entry["pid"] != old_pid and entry["alive"]


def test_a_source_process_that_cannot_start_fails_the_start(namespace, manager_factory):
    source = camera("test.counting_source", parameters={"period_s": "soon"})
    manager = manager_factory(source_pipeline(namespace, source), registry=REGISTRY).build()
    with pytest.raises(WorkerProcessError, match="source 'camera' failed: could not convert string to float"):
        manager.start()
    assert manager.state.value == "built" and not manager.workers and manager.status()["sources"] == {}


def test_a_class_no_process_can_load_is_refused_before_anything_starts(namespace, manager_factory):
    def local_class():
        class Hidden(CountingSource):
            kind = "test.hidden_source"
        return Hidden

    registry = default_registry(entry_points=[]).extended(sources=[local_class()])
    manager = manager_factory(source_pipeline(namespace, camera("test.hidden_source")), registry=registry).build()
    with pytest.raises(ConfigValidationError, match="defined inside a function"):
        manager.start()


def test_a_source_class_in_the_users_script_runs_in_the_process(namespace, tmp_path):
    script = tmp_path / "camera_script.py"
    script.write_text(textwrap.dedent(f"""
        import os
        import numpy as np
        from shmpiped import PipelineManager
        from shmpiped.kernels.base import Source
        from shmpiped.kernels.registry import get_default_registry

        class ScriptCamera(Source):
            kind = "script.camera"

            def read(self):
                if self.wait(0.005):
                    return None
                return np.full(4, 7.0, dtype=np.float32)

            def plugin_metrics(self):
                return {{"pid": os.getpid()}}

        get_default_registry().register_source(ScriptCamera, replace=True)

        if __name__ == "__main__":
            config = {{"namespace": {namespace!r},
                      "shared_memory": [{{"name": "input", "shape": [4], "dtype": "float32"}},
                                        {{"name": "output", "shape": [4], "dtype": "float32"}}],
                      "sources": [{{"name": "camera", "kind": "script.camera", "stream": "input", "process": True}}],
                      "kernels": [{{"name": "scale", "kind": "cpu.scale", "input": "input", "output": "output",
                                   "parameters": {{"factor": 2.0}}}}]}}
            with PipelineManager(config) as manager:
                manager.build().start()
                output = manager.get_stream("output")
                output.wait(0, timeout=10.0)
                metrics = manager.status()["sources"]["camera"]["plugin_metrics"]
                print(output.read().tolist(), metrics["pid"] != os.getpid())
    """))
    result = run_python(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert result.stdout.split("\n")[0] == "[14.0, 14.0, 14.0, 14.0] True", result.stderr


def test_the_daemon_restarts_a_failed_source_process(namespace, tmp_path, daemons):
    marker = tmp_path / "first-run"
    path = tmp_path / "flaky.yaml"
    path.write_text(textwrap.dedent(f"""
        namespace: {namespace}
        shared_memory:
          - {{name: input, shape: [4], dtype: float32}}
          - {{name: output, shape: [4], dtype: float32}}
        sources:
          - name: camera
            kind: test.flaky_source
            stream: input
            process: true
            parameters: {{marker: {str(marker)!r}, fail_after: 20}}
        kernels:
          - {{name: stage, kind: cpu.scale, input: input, output: output, parameters: {{factor: 2.0}}}}
    """))
    env = {"PYTHONPATH": install_plugin(tmp_path / "plugin")}
    daemon = daemons(path, namespace, tmp_path, "--backoff-initial", "2.0", env=env)
    daemon.wait_http()
    failure = wait_for(lambda: (f := daemon.status()["failures"]) and f[0], timeout=20)
    assert failure["type"] == "source_failed" and failure["kernel"] == "camera"
    assert failure["error"] == "flaky camera unplugged after 20 frames"
    assert "source_plugins.py" in failure["traceback"] and "RuntimeError" in failure["traceback"]
    first_pid = int(marker.read_text())
    entry = wait_for(lambda: (s := daemon.status()["sources"]["camera"])["restarts"] == 1 and s["alive"]
                     and s["frames_written"] > 30 and s, timeout=20)
    assert entry["pid"] != first_pid and entry["plugin_metrics"]["first_run"] is False
    status = daemon.status()
    assert status["state"] == "running" and status["failures"] == []
    assert status["daemon"]["restarts_total"] == 1
    daemon.wait_ready()
    assert "flaky camera unplugged after 20 frames" in daemon.output
    assert daemon.stop() == 0


def test_the_supervisor_restarts_source_processes_without_a_watchdog():
    from shmpiped.service.supervisor import RestartPolicy, Supervisor

    supervisor = Supervisor(RestartPolicy(backoff_initial_s=1.0, budget=1))
    silent = {"process": True, "health": "active", "last_metric_age_s": 600.0}
    thread = {"health": "failed"}  # a source thread has no health: the supervisor leaves it alone

    def status(camera):
        return {"state": "running", "workers": {}, "sources": {"camera": camera, "thread": thread}}

    assert supervisor.review(status(silent), 0.0, {}).kill == ()  # a camera silent for 10 minutes is not hung
    failed = {**silent, "health": "failed"}
    assert supervisor.review(status(failed), 1.0, {}).restart == ()  # back-off first
    assert supervisor.review(status(failed), 2.5, {}).restart == ("camera",)
    assert supervisor.review(status(failed), 3.0, {}).restart == ()
    verdict = supervisor.review(status(failed), 5.0, {})
    assert verdict.exhausted and "'camera' failed 2 times" in verdict.exhausted  # the budget is shared with workers


def test_a_pyshmem_camera_feeds_the_pipeline_through_a_source_process(namespace, manager_factory, tmp_path,
                                                                      monkeypatch):
    pyshmem = pytest.importorskip("pyshmem", reason="pyshmem is in the test extra: pip install -e '.[test]'")
    from .test_pyshmem_bridge import CAMERA_DRIVER, Driver, camera_pipeline, collect

    monkeypatch.setenv("PYSHMEM_LOCK_DIR", str(tmp_path / "pyshmem-locks"))
    name = f"{namespace}-camera"
    driver = Driver(CAMERA_DRIVER, name, 20, "float64", "notify")
    try:
        config = camera_pipeline(namespace, name)
        config["sources"][0]["process"] = True
        manager = manager_factory(config).build().start()
        output = manager.get_stream("output")
        # It forwards the writes made once it has attached (its process may take seconds to start on a busy machine).
        wait_for(lambda: manager.status()["sources"]["camera"]["plugin_metrics"].get("attached"), timeout=30)
        driver.tell("go")
        arrived = collect(output, 20)
        assert driver.reply() == "sent 20"
        driver.tell("stop")
        driver.finish()
        assert name not in pyshmem.list_streams()  # the driver removed its stream; the source made none
        for i, (publication, received_ns) in enumerate(arrived, start=1):
            sent, sent_ns = publication.payload / 2
            # The driver's frame id and origin time crossed the source process into the pipeline.
            assert (sent, publication.frame_id) == (i, 1000 + i)
            assert sent_ns - 50_000 <= publication.origin_ns <= received_ns
        entry = wait_for(lambda: (s := manager.status()["sources"]["camera"])["plugin_metrics"].get(
            "frames_forwarded") == 20 and s)
        assert entry["process"] is True and entry["pid"] != os.getpid()
    finally:
        if driver.process.poll() is None:
            driver.process.kill()
            driver.process.wait()
        pyshmem.unlink_quiet(name)  # after a failure above: the driver was killed before removing it
