"""Latency benchmarks: one hop between two processes, and a one-stage pipeline.

``hop``: a writer process publishes a small frame stamped with its origin
time; a reader process parked on the stream wakes and records
``now - origin``.  Paced at a fixed rate (each frame finds the reader parked:
the wake-up path) or in lock-step (the reader echoes every frame on a second
stream and the writer waits for the echo: the flat-out rate).

``copy``: a real pipeline (PipelineManager, one ``cpu.copy`` worker) driven by
this process; the latency is measured where the output arrives, from the
origin timestamp the worker carried through: true end-to-end.

``gpu``: the same one-stage pipeline with a copy and with a 1024x2048 affine
reconstructor, on the CPU and on the GPU (``cpu_vs_gpu``).

Results are dicts of figures in microseconds; ``shmpiped bench`` prints them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np

from . import spawning
from .shm import Stream


def percentiles_us(samples_ns) -> dict:
    values = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if values.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"n": int(values.size), "p50_us": round(float(p50), 2), "p90_us": round(float(p90), 2),
            "p99_us": round(float(p99), 2), "max_us": round(float(values.max()), 2),
            "mean_us": round(float(values.mean()), 2)}


def sleep_until(deadline_ns: int) -> None:
    """Sleep to a monotonic deadline: coarse sleep, then a short spin for precision."""
    while True:
        remaining = deadline_ns - time.monotonic_ns()
        if remaining <= 0:
            return
        if remaining > 300_000:
            time.sleep((remaining - 200_000) / 1e9)


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _reader_entry() -> None:
    """``_reader_main`` in a child started by ``shmpiped.spawning`` (arguments in sys.argv)."""
    namespace, frames, echo, strategy, cpu = sys.argv[1:6]
    _reader_main(namespace, int(frames), echo == "1", strategy, int(cpu))


def _reader_main(namespace: str, frames: int, echo: bool, strategy: str, cpu: int | None) -> None:
    """The reader side of ``hop``, run in its own process; prints its samples as JSON."""
    _pin(cpu)
    stream = Stream.attach("ping", namespace)
    stream.set_wait_strategy(strategy)
    pong = Stream.attach("pong", namespace) if echo else None
    samples = np.zeros(frames, dtype=np.int64)
    taken = 0
    last = stream.count
    print("ready", flush=True)
    while last < frames:  # frames published by the writer; a late wake-up sees only the newest
        last = stream.wait(last, timeout=10.0)
        now = time.monotonic_ns()
        samples[taken] = now - stream.slot_metadata(last)[1]
        taken += 1
        if pong is not None:
            pong.write(stream.view_of(last), origin_ns=now)
    print(json.dumps(samples[:taken].tolist()), flush=True)
    stream.close()
    if pong is not None:
        pong.close()


def hop(rate_hz: float | None = 1000.0, frames: int = 2000, strategy: str = "futex",
        same_core: bool = False, warmup: int = 100) -> dict:
    """One-hop latency writer -> reader process; rate None runs in lock-step."""
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    echo = rate_hz is None
    ping = Stream.create("ping", (16,), "float64", namespace=namespace)
    pong = Stream.create("pong", (16,), "float64", namespace=namespace) if echo else None
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    writer_cpu = cpus[0]
    reader_cpu = cpus[0] if same_core or len(cpus) == 1 else cpus[1]
    total = frames + warmup
    reader = spawning.start_child("shmpiped.bench:_reader_entry", namespace, total, "1" if echo else "0",
                                  strategy, reader_cpu, stdout=subprocess.PIPE, text=True)
    try:
        _pin(writer_cpu)
        if pong is not None:
            pong.set_wait_strategy(strategy)
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmark reader did not start")
        time.sleep(0.2)
        payload = np.zeros(16)
        round_trips = np.zeros(total, dtype=np.int64)
        started = time.monotonic_ns()
        deadline = started
        for i in range(total):
            if echo:
                sent = time.monotonic_ns()
                ping.write(payload)
                pong.wait(i, timeout=10.0)
                round_trips[i] = time.monotonic_ns() - sent
            else:
                deadline += int(1e9 / rate_hz)
                sleep_until(deadline)
                ping.write(payload)
        elapsed = (time.monotonic_ns() - started) / 1e9
        out, _ = reader.communicate(timeout=30)
        samples = json.loads(out.strip().splitlines()[-1])[warmup:]
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        for stream in (ping, pong):
            if stream is not None:
                stream.close()
                stream.unlink()
        _pin_all()
    result = {"benchmark": "hop", "mode": "lock-step" if echo else f"{rate_hz:g} Hz",
              "wait_strategy": strategy, "same_core": same_core, **percentiles_us(samples)}
    if echo:
        result["rate_hz"] = round(total / elapsed, 1)
        result["round_trip"] = percentiles_us(round_trips[warmup:])
    return result


def _pin_all() -> None:
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        except OSError:
            pass


STAGES = ("copy", "affine")


def _one_stage_config(namespace: str, stage: str, storage: str, shape, mirror: bool) -> dict:
    """input -> one kernel -> output; ``affine`` is a (outputs x inputs) reconstructor with offset."""
    device = {"storage": "gpu", "gpu_device": "cuda:0"} if storage == "gpu" else {}
    kind = f"{storage}.{'copy' if stage == 'copy' else 'affine_transform'}"
    if stage == "copy":
        streams = [{"name": "input", "shape": list(shape)}, {"name": "output", "shape": list(shape)}]
        kernel = {"name": stage, "kind": kind, "input": "input", "output": "output"}
    else:
        rows, columns = shape
        streams = [
            {"name": "input", "shape": [columns]},
            {"name": "matrix", "shape": [rows, columns],
             "initial": {"pattern": "normal", "seed": 1, "mean": 0.0, "std": 0.01}},
            {"name": "offset", "shape": [rows], "initial": {"pattern": "constant", "value": 0.0}},
            {"name": "output", "shape": [rows]},
        ]
        kernel = {"name": stage, "kind": kind, "input": "input", "output": "output",
                  "auxiliary": ["matrix", "offset"]}
    for entry in streams:
        entry.update(dtype="float32", **device)
    if mirror:
        streams[-1]["cpu_mirror"] = True
    return {"namespace": namespace, "shared_memory": streams, "kernels": [kernel]}


def one_stage_pipeline(rate_hz: float | None = 1000.0, frames: int = 2000, strategy: str = "futex",
                       telemetry: bool = True, warmup: int = 100, shape=(16,), same_core: bool = False,
                       stage: str = "copy", storage: str = "cpu", mirror: bool = False) -> dict:
    """End-to-end latency through a one-stage pipeline (a real worker process) driven from here.

    ``stage`` is ``copy`` (of ``shape``) or ``affine`` (a ``shape`` = (outputs, inputs) matrix);
    ``storage`` ``gpu`` puts every stream on cuda:0 and runs the gpu.* kind; ``mirror`` gives the
    output a CPU mirror. The driver writes host frames (uploaded to the device for GPU streams).
    """
    from .manager import PipelineManager

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    config = _one_stage_config(namespace, stage, storage, shape, mirror)
    manager = PipelineManager(config, wait_strategy=strategy, telemetry=telemetry)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    driver_cpu = cpus[1] if len(cpus) > 1 and not same_core else cpus[0]  # the worker takes the first
    total = frames + warmup
    latencies = np.zeros(total, dtype=np.int64)
    try:
        manager.build()
        manager.start()
        _pin(driver_cpu)
        source = manager.get_stream("input")
        sink = manager.get_stream("output")
        sink.set_wait_strategy(strategy)
        payload = np.ones(source.shape, dtype=np.float32)
        time.sleep(0.2)
        received = 0
        started = time.monotonic_ns()
        deadline = started
        for i in range(total):
            if rate_hz is not None:
                deadline += int(1e9 / rate_hz)
                sleep_until(deadline)
            source.write(payload)
            received = sink.wait(received, timeout=10.0)
            latencies[i] = time.monotonic_ns() - sink.slot_metadata(received)[1]
        elapsed = (time.monotonic_ns() - started) / 1e9
        worker = manager.status()["workers"][stage]
        manager.raise_if_failed()
    finally:
        _pin_all()
        manager.shutdown(force=True)
    return {
        "benchmark": stage if storage == "cpu" else f"gpu {stage}",
        "mode": "lock-step" if rate_hz is None else f"{rate_hz:g} Hz",
        "wait_strategy": strategy, "telemetry": telemetry, "same_core": same_core,
        "shape": "x".join(str(d) for d in shape), "storage": storage, "cpu_mirror": mirror,
        **percentiles_us(latencies[warmup:]),
        "rate_hz": round(total / elapsed, 1),
        "worker_avg_exec_us": round(worker.get("avg_exec_us", 0.0), 2),
        "worker_p99_exec_us": round(worker.get("p99_exec_us", 0.0), 2),
    }


def cpu_vs_gpu(rate_hz: float = 1000.0, frames: int = 2000, copy_shape=(16,),
               affine_shape=(1024, 2048)):
    """The GPU benchmark: one-stage copy and a (1024 x 2048) affine reconstructor, CPU then GPU,
    paced and lock-step, plus the GPU rows with a CPU mirror on the output (its cost).  Yields each
    row as it is measured."""
    for stage, shape in (("copy", copy_shape), ("affine", affine_shape)):
        for storage in ("cpu", "gpu"):
            for rate in (rate_hz, None):
                yield one_stage_pipeline(rate, frames, stage=stage, storage=storage, shape=shape)
        yield one_stage_pipeline(None, frames, stage=stage, storage="gpu", shape=shape, mirror=True)


def parse_source(text: str) -> dict:
    """``STREAM:PATTERN[:RATE_HZ]`` -> SyntheticInputConfig fields."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError("--source must use STREAM:PATTERN[:RATE_HZ], for example input:random:1000")
    spec = {"stream_name": parts[0], "pattern": parts[1]}
    if len(parts) == 3 and parts[2]:
        try:
            spec["rate_hz"] = float(parts[2])
        except ValueError:
            raise ValueError("benchmark source rate must be a number") from None
    return spec


def pipeline(path: str, duration_s: float = 5.0, source: str | None = None,
             output_stream: str | None = None, warmup_s: float = 0.5) -> dict:
    """Run the pipeline in ``path`` and measure it (PipelineManager.benchmark)."""
    from .manager import PipelineManager

    source_spec = parse_source(source) if source else None
    manager = PipelineManager(path)
    try:
        manager.build()
        manager.start()
        return manager.benchmark(duration_s, source=source_spec, output_stream=output_stream,
                                 warmup_s=warmup_s)
    finally:
        manager.shutdown(force=True)


FLOOD_PIPELINE = """\
namespace: {namespace}
shared_memory:
  - {{name: input, shape: [64], dtype: float32}}
  - {{name: output, shape: [64], dtype: float32}}
sources:
  - {{name: source, kind: synthetic.array, stream: input, parameters: {{pattern: random, rate_hz: {rate}}}}}
kernels:
  - {{name: copy, kind: cpu.copy, input: input, output: output}}
"""

FLOOD_CLIENT = """
import sys, threading, time, urllib.request
port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
served = [0] * clients
def hammer(i):
    deadline = time.monotonic() + seconds
    paths = ("/metrics", "/status", "/healthz", "/readyz")
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{paths[served[i] % 4]}", timeout=10) as r:
            r.read()
        served[i] += 1
threads = [threading.Thread(target=hammer, args=(i,)) for i in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(served))
"""


def _as_remote_client(nice: int, worker_cpus: set[int]) -> None:
    """Make the load generator behave like a client on another machine: off the workers' CPUs."""
    if nice:
        os.nice(nice)
    free = set(os.sched_getaffinity(0)) - worker_cpus
    if free:
        os.sched_setaffinity(0, free)


def http_flood(seconds: float = 10.0, clients: int = 8, rate_hz: float = 1000.0, client_nice: int = 0) -> dict:
    """p99 of the pipeline's end-to-end latency and of the daemon's loop, quiet vs under an HTTP flood."""
    import socket
    import tempfile
    import urllib.request

    namespace = f"flood{uuid.uuid4().hex[:8]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flood.yaml")
        with open(path, "w") as handle:
            handle.write(FLOOD_PIPELINE.format(namespace=namespace, rate=rate_hz))
        daemon = spawning.start_child("shmpiped.cli:main", "run", path, "--http-address", f"127.0.0.1:{port}",
                                      "--control-socket", "none", "--status-interval", "3600",
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def status() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
                return json.loads(response.read())

        def sample(duration: float) -> tuple[list[float], list[float]]:
            e2e, loop = [], []
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                time.sleep(1.0)
                snapshot = status()
                e2e.append(snapshot["end_to_end"]["output"]["p99_us"])
                loop.append(snapshot["daemon"]["loop_p99_s"] * 1e6)
            return e2e, loop

        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if status()["workers"]["copy"].get("frames_processed", 0) > 2000:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("the benchmark daemon did not start")
                time.sleep(0.2)
            worker_cpus = {w["cpu_slot"] for w in status()["workers"].values() if w.get("cpu_slot") is not None}
            quiet_e2e, quiet_loop = sample(seconds)
            flood = subprocess.Popen([sys.executable, "-c", FLOOD_CLIENT, str(port), str(clients), str(seconds)],
                                     stdout=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: _as_remote_client(client_nice, worker_cpus))
            flood_e2e, flood_loop = sample(seconds)
            requests = int(flood.communicate(timeout=seconds + 60)[0].strip() or 0)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    median = lambda values: float(np.median(values))  # noqa: E731
    return {
        "benchmark": "http-flood", "clients": clients, "client_nice": client_nice, "seconds": seconds,
        "rate_hz": rate_hz,
        "requests": requests, "requests_per_s": round(requests / seconds, 1),
        "e2e_p99_us_quiet": round(median(quiet_e2e), 1), "e2e_p99_us_flood": round(median(flood_e2e), 1),
        "loop_p99_us_quiet": round(median(quiet_loop), 1), "loop_p99_us_flood": round(median(flood_loop), 1),
    }


# ---------------------------------------------------------------------- pyshmem bridge

#: (label, driver writes, pipeline endpoint, reader reads) of each path ``pyshmem_bridge`` measures.
BRIDGE_PATHS = (
    ("driver -> shmpiped stream (direct)", "direct", None, "direct"),
    ("driver -> pyshmem (notify) -> pyshmem.source", "pyshmem-notify", "source", "direct"),
    ("driver -> pyshmem (no notify) -> pyshmem.source", "pyshmem-poll", "source", "direct"),
    ("pyshmem.sink -> pyshmem (notify) -> reader", "direct", "sink", "pyshmem"),
)
_BRIDGE_SHAPE = (16,)


def _bridge_driver_main(mode: str, target: str, namespace: str, total: int, rate_hz: float) -> None:
    """The external driver of ``pyshmem_bridge``: writes ``[monotonic_ns, i, ...]`` frames, paced by sleeping."""
    payload = np.zeros(_BRIDGE_SHAPE, dtype=np.int64)
    if mode == "direct":
        handle = Stream.attach(target, namespace)
    else:
        import pyshmem

        handle = pyshmem.create(target, shape=_BRIDGE_SHAPE, dtype=np.int64, notify=mode == "pyshmem-notify")
    print("ready", flush=True)
    sys.stdin.readline()
    period = int(1e9 / rate_hz)
    deadline = time.monotonic_ns()
    for i in range(1, total + 1):
        deadline += period
        remaining = deadline - time.monotonic_ns()
        if remaining > 0:
            time.sleep(remaining / 1e9)  # a driver sleeps; it does not spin
        payload[1] = i
        payload[0] = time.monotonic_ns()
        handle.write(payload, frame_id=i)
    print("done", flush=True)
    sys.stdin.readline()  # keep the stream until the reader is done
    if mode == "direct":
        handle.close()
    else:
        handle.close()
        pyshmem.unlink(target)


def _bridge_reader_main(mode: str, target: str, namespace: str, total: int, warmup: float) -> None:
    """The reader of ``pyshmem_bridge``: the same pyshmem calls on either handle; prints its samples."""
    if mode == "direct":
        handle = Stream.attach(target, namespace)
    else:
        import pyshmem

        handle = pyshmem.open(target)
    true_ns, stamped_ns = [], []
    last = handle.count
    print("ready", flush=True)
    while True:
        try:
            handle.wait_for_count(after=last, timeout=10.0)
        except TimeoutError:
            break
        publication = handle.read_publication()
        now = time.monotonic_ns()
        last = publication.count
        index = int(publication.payload[1])
        if index > warmup:
            true_ns.append(now - int(publication.payload[0]))
            if mode == "direct":
                stamped_ns.append(now - publication.origin_ns)
        if index >= total:
            break
    handle.close()
    print(json.dumps({"true": true_ns, "stamped": stamped_ns}), flush=True)


def _bridge_config(namespace: str, endpoint: str | None, pyshmem_name: str) -> dict:
    streams = [{"name": name, "shape": list(_BRIDGE_SHAPE), "dtype": "int64"} for name in ("input", "output")]
    config = {"namespace": namespace, "shared_memory": streams,
              "kernels": [{"name": "copy", "kind": "cpu.copy", "input": "input", "output": "output"}]}
    if endpoint == "source":
        config["sources"] = [{"name": "camera", "kind": "pyshmem.source", "stream": "input",
                              "parameters": {"pyshmem_stream": pyshmem_name}}]
    elif endpoint == "sink":
        config["sinks"] = [{"name": "mirror", "kind": "pyshmem.sink", "stream": "output",
                            "parameters": {"pyshmem_stream": pyshmem_name}}]
    return config


def _bridge_entry() -> None:
    """A driver or reader of ``pyshmem_bridge`` in a child started by ``shmpiped.spawning``."""
    main, mode, target, namespace, total, rate_or_warmup = sys.argv[1:7]
    {"driver": _bridge_driver_main, "reader": _bridge_reader_main}[main](
        mode, target, namespace, int(total), float(rate_or_warmup))


def _bridge_process(main: str, *args) -> subprocess.Popen:
    child = spawning.start_child("shmpiped.bench:_bridge_entry", main, *args, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    if child.stdout.readline().strip() != "ready":
        child.kill()
        child.wait()
        raise RuntimeError(f"the benchmark process {main} did not start")
    return child


def _bridge_path(driver_mode: str, endpoint: str | None, reader_mode: str, rate_hz: float, frames: int,
                 warmup: int) -> dict:
    """One run of one path: driver process -> pipeline (one cpu.copy) -> reader process."""
    from .manager import PipelineManager

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    pyshmem_name = f"shmpiped-bench-{namespace}"
    total = frames + warmup
    manager = PipelineManager(_bridge_config(namespace, endpoint, pyshmem_name))
    children: list[subprocess.Popen] = []
    try:
        if driver_mode != "direct":  # a pyshmem driver creates its stream before the pipeline starts
            children.append(_bridge_process("driver", driver_mode, pyshmem_name, namespace, total,
                                            rate_hz))
        manager.build()
        manager.start()
        if driver_mode == "direct":
            children.append(_bridge_process("driver", "direct", "input", namespace, total, rate_hz))
        reader_target = pyshmem_name if reader_mode == "pyshmem" else "output"
        children.append(_bridge_process("reader", reader_mode, reader_target, namespace, total,
                                        warmup))
        driver, reader = children
        time.sleep(0.3)
        driver.stdin.write("go\n")
        driver.stdin.flush()
        out, _ = reader.communicate(timeout=total / rate_hz + 60)
        samples = json.loads(out.strip().splitlines()[-1])
        driver.communicate("\n", timeout=30)
        if not samples["true"]:
            raise RuntimeError(f"benchmark path {driver_mode} -> {endpoint} -> {reader_mode}: no frame arrived")
        manager.raise_if_failed()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        manager.shutdown(force=True)
        if driver_mode != "direct":
            import pyshmem

            pyshmem.unlink_quiet(pyshmem_name)
    return {"true": percentiles_us(samples["true"]), "stamped": percentiles_us(samples["stamped"])}


def pyshmem_bridge(rate_hz: float = 1000.0, frames: int = 2000, warmup: int = 100, runs: int = 3) -> dict:
    """Latency the pyshmem bridge adds: each ``BRIDGE_PATHS`` path ``runs`` times (interleaved).

    True end-to-end latency runs from the driver's clock read just before its
    write (carried in the payload) to the reader process holding the frame;
    ``stamped`` is what the pipeline itself reports (now - the slot's origin)
    where the reader reads a pipeline stream.  Figures are medians over runs.
    """
    from .pyshmem_bridge import load_pyshmem

    load_pyshmem()
    per_path: dict[str, list[dict]] = {label: [] for label, *_ in BRIDGE_PATHS}
    for _ in range(runs):
        for label, driver_mode, endpoint, reader_mode in BRIDGE_PATHS:
            per_path[label].append(_bridge_path(driver_mode, endpoint, reader_mode, rate_hz, frames, warmup))
    median = lambda values: round(float(np.median(values)), 1) if values else None  # noqa: E731
    rows = []
    for label, results in per_path.items():
        stamped = [r["stamped"] for r in results if r["stamped"].get("n")]
        rows.append({"path": label,
                     "frames_measured": min(r["true"]["n"] for r in results),
                     "p50_us": median([r["true"]["p50_us"] for r in results]),
                     "p99_us": median([r["true"]["p99_us"] for r in results]),
                     "p50_us_runs": [r["true"]["p50_us"] for r in results],
                     "p99_us_runs": [r["true"]["p99_us"] for r in results],
                     "stamped_p50_us": median([s["p50_us"] for s in stamped])})
    base = rows[0]
    for row in rows[1:]:
        row["added_p50_us"] = round(row["p50_us"] - base["p50_us"], 1)
        row["added_p99_us"] = round(row["p99_us"] - base["p99_us"], 1)
    return {"benchmark": "pyshmem", "rate_hz": rate_hz, "frames": frames, "runs": runs, "rows": rows}


def format_pyshmem_report(report: dict) -> str:
    lines = [f"pyshmem bridge: {report['frames']} frames at {report['rate_hz']:g} Hz, median of {report['runs']} "
             "run(s); driver's write -> reader process, through one cpu.copy worker (us)",
             f"  {'path':<50} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8} {'stamped p50':>12}"]
    for row in report["rows"]:
        added = (f"{row['added_p50_us']:8.1f} {row['added_p99_us']:8.1f}" if "added_p50_us" in row
                 else f"{'-':>8} {'-':>8}")
        stamped = "-" if row["stamped_p50_us"] is None else f"{row['stamped_p50_us']:.1f}"
        lines.append(f"  {row['path']:<50} {row['p50_us']:8.1f} {row['p99_us']:8.1f} {added} {stamped:>12}")
    return "\n".join(lines)


__all__ = ["cpu_vs_gpu", "format_pyshmem_report", "hop", "http_flood", "one_stage_pipeline", "parse_source",
           "percentiles_us", "pipeline", "pyshmem_bridge", "sleep_until"]
