"""The source-pacing benchmark: the demo's camera as a thread, in its own process, and real time there.

Each case runs the demo pipeline in a real daemon (``shmpiped run``), with its
``camera`` source changed: a thread in the daemon (``thread``), a process of
its own (``process``), and a process at SCHED_FIFO (``process-fifo``: the
source's own ``realtime`` override, the workers untouched).  Each case is
measured quiet, then while clients flood the daemon's HTTP endpoints (the
``http_flood`` client of ``shmpiped.bench``).

Figures per phase: the camera's pacing, from the write times the writer
stamps in the slot headers of ``wfs_frame`` (the spacing between consecutive
publications: p50, p99, max, and the p99 of its deviation from the period),
read by an observer parked on the stream; and the pipeline's end-to-end p99
from ``/status`` (the median of one sample a second).  Run with
``python -m shmpiped.bench_source [--seconds S] [--clients N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import numpy as np
import yaml

from . import spawning
from .bench import FLOOD_CLIENT
from .demo import demo_path
from .shm import Stream

CASES = {
    "thread": {},
    "process": {"process": True},
    "process-fifo": {"process": True, "realtime": {"policy": "fifo", "priority": 60}},
}


def _pipeline_text(namespace: str, camera: dict) -> str:
    document = yaml.safe_load(demo_path().read_text())
    document["namespace"] = namespace
    for source in document["sources"]:
        if source["name"] == "camera":
            source.update(camera)
    return yaml.safe_dump(document, sort_keys=False)


class _Observer(threading.Thread):
    """Parks on a stream and keeps the writer's own write time of every publication it sees."""

    def __init__(self, stream: Stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.times: list[tuple[int, int]] = []  # (count, write_mono_ns)
        self.missed = 0
        self.running = True

    def run(self) -> None:
        stream, last = self.stream, self.stream.count
        while self.running:
            count = stream.wait_once(last, 0.1)
            if count <= last:
                continue
            first = max(last + 1, count - stream.nslots + 1)  # the slots not yet reused
            self.missed += first - (last + 1)
            for seen in range(first, count + 1):
                _, _, written = stream.slot_metadata(seen)
                if stream.still_valid(seen):
                    self.times.append((seen, written))
                else:
                    self.missed += 1
            last = count


def _spacing(times: list[tuple[int, int]], period_ns: float) -> dict:
    pairs = [(b[1] - a[1]) for a, b in zip(times, times[1:]) if b[0] == a[0] + 1]
    spacing = np.asarray(pairs, dtype=np.float64) / 1e3
    if spacing.size == 0:
        return {"intervals": 0}
    deviation = np.abs(spacing - period_ns / 1e3)
    p50, p99 = np.percentile(spacing, [50, 99])
    return {"intervals": int(spacing.size), "spacing_p50_us": round(float(p50), 1),
            "spacing_p99_us": round(float(p99), 1), "spacing_max_us": round(float(spacing.max()), 1),
            "deviation_p99_us": round(float(np.percentile(deviation, 99)), 1)}


def _run_case(case: str, seconds: float, clients: int) -> list[dict]:
    namespace = f"srcbench{uuid.uuid4().hex[:8]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "demo.yaml")
        with open(path, "w") as handle:
            handle.write(_pipeline_text(namespace, CASES[case]))
        rate = float(yaml.safe_load(open(path))["sources"][0]["parameters"]["rate_hz"])
        daemon = spawning.start_child("shmpiped.cli:main", "run", path, "--http-address", f"127.0.0.1:{port}",
                                      "--control-socket", "none", "--status-interval", "3600",
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def status() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
                return json.loads(response.read())

        results = []
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if status()["workers"]["clip"].get("frames_processed", 0) > 1000:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"the benchmark daemon ({case}) did not start")
                time.sleep(0.2)
            stream = Stream.attach("wfs_frame", namespace, role="reader")
            try:
                for phase in ("quiet", "flood"):
                    flood = None
                    if phase == "flood":
                        flood = subprocess.Popen([sys.executable, "-c", FLOOD_CLIENT, str(port), str(clients),
                                                  str(seconds + 1)], stdout=subprocess.PIPE, text=True)
                        time.sleep(0.5)
                    observer = _Observer(stream)
                    observer.start()
                    e2e = []
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        time.sleep(1.0)
                        e2e.append(status()["end_to_end"]["dm_command"]["p99_us"])
                    observer.running = False
                    observer.join()
                    requests = int(flood.communicate(timeout=seconds + 60)[0].strip() or 0) if flood else 0
                    results.append({"case": case, "phase": phase, **_spacing(observer.times, 1e9 / rate),
                                    "missed": observer.missed, "e2e_p99_us": round(float(np.median(e2e)), 1),
                                    "requests_per_s": round(requests / (seconds + 1), 1)})
            finally:
                stream.close()
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    return results


def source_pacing(seconds: float = 10.0, clients: int = 8, cases=tuple(CASES)) -> list[dict]:
    """One result per case and phase (see the module docstring)."""
    sys.setswitchinterval(0.0005)  # the observer must not be held off the stream for a whole ring
    return [result for case in cases for result in _run_case(case, seconds, clients)]


def format_results(results: list[dict]) -> str:
    lines = [f"{'camera':<13} {'phase':<6} {'spacing p50':>12} {'p99':>9} {'max':>9} {'|dev| p99':>10} "
             f"{'e2e p99':>9} {'missed':>7} {'HTTP req/s':>11}"]
    for r in results:
        lines.append(f"{r['case']:<13} {r['phase']:<6} {r.get('spacing_p50_us', 0):10.1f}us "
                     f"{r.get('spacing_p99_us', 0):7.1f}us {r.get('spacing_max_us', 0):7.1f}us "
                     f"{r.get('deviation_p99_us', 0):8.1f}us {r['e2e_p99_us']:7.1f}us {r['missed']:7d} "
                     f"{r['requests_per_s']:11.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmpiped.bench_source", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients of the flood")
    parser.add_argument("--case", action="append", choices=tuple(CASES), help="cases to run (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = source_pacing(args.seconds, args.clients, tuple(args.case or CASES))
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
