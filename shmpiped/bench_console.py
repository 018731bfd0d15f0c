"""``bench console``: what watching the daemon costs the loop -- SSE clients, stream previews, /status polls.

The embedded demo (``shmpiped/demo/ao_loop.yaml``, in its own namespace) runs
under ``shmpiped run``; its end-to-end p99 (camera frame to DM command) and the
supervisor loop's mean iteration time are sampled from ``/status``, first with
nobody watching, then while a load process (off the workers' CPUs, as a
browser on another machine would be) holds ``sse_clients`` open ``/events``
streams, fetches the PNG preview of ``preview_streams`` streams ``preview_hz``
times a second, and polls ``/status`` ``status_hz`` times a second -- what open
consoles do (the defaults: one console, its 2 Hz preview and 1 Hz status, with
ten event clients).  The figures are medians of the per-second p99s of each
phase.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np

from . import spawning

LOAD_CLIENT = r"""
import http.client, json, sys, threading, time
port, sse, preview_hz, width, status_hz, seconds = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                                    int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
streams = json.loads(sys.argv[7])
counts = {"events": 0, "sse_bytes": 0, "sse_refused": 0, "previews": 0, "preview_errors": 0, "status": 0}
lock = threading.Lock()
deadline = time.monotonic() + seconds
def add(key, n=1):
    with lock:
        counts[key] += n
def listen():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/events")
    r = c.getresponse()
    if r.status != 200:
        add("sse_refused"); return
    while time.monotonic() < deadline:
        line = r.readline()
        if not line: break
        add("sse_bytes", len(line))
        if line.startswith(b"event: "): add("events")
    c.close()
def poll(path, hz, key):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        c.request("GET", path); r = c.getresponse(); r.read()
        add(key if r.status == 200 else "preview_errors")
        next_at += 1.0 / hz
        time.sleep(max(0.0, next_at - time.monotonic()))
threads = [threading.Thread(target=listen, daemon=True) for _ in range(sse)]
if preview_hz > 0:
    threads += [threading.Thread(target=poll, args=(f"/preview/{s}.png?width={width}&max_hz={preview_hz}",
                                                   preview_hz, "previews"), daemon=True) for s in streams]
if status_hz > 0:
    threads.append(threading.Thread(target=poll, args=("/status", status_hz, "status"), daemon=True))
[t.start() for t in threads]
time.sleep(seconds + 0.5)
print(json.dumps(counts))
"""


def console_load(seconds: float = 10.0, sse_clients: int = 10, preview_hz: float = 2.0, preview_width: int = 256,
                 status_hz: float = 1.0, client_nice: int = 0, preview_streams: int = 1) -> dict:
    """End-to-end p99 and loop time of the demo, quiet and while it is watched (see the module docstring)."""
    import socket
    import urllib.request

    from .bench import _as_remote_client

    namespace = f"console{uuid.uuid4().hex[:8]}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = spawning.start_child("shmpiped.cli:main", "run", "--namespace", namespace, "--http-address",
                                  f"127.0.0.1:{port}", "--control-socket", "none", "--status-interval", "3600",
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
            return json.loads(response.read())

    def sample(duration: float) -> tuple[list[float], float | None]:
        """The per-second end-to-end p99s of one phase, and the loop's mean iteration time over it (us)."""
        e2e = []
        first = status()["daemon"]
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            time.sleep(1.0)
            snapshot = status()
            p99s = [entry["p99_us"] for entry in snapshot["end_to_end"].values() if entry.get("p99_us") is not None]
            if p99s:
                e2e.append(max(p99s))
        last = snapshot["daemon"]
        iterations = last["loop_iterations_total"] - first["loop_iterations_total"]
        spent = last["loop_duration_seconds"]["sum_s"] - first["loop_duration_seconds"]["sum_s"]
        return e2e, round(spent / iterations * 1e6, 1) if iterations else None

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                snapshot = status()
                if snapshot["state"] == "running" and all(
                        w.get("frames_processed", 0) > 500 for w in snapshot["workers"].values()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("the benchmark daemon (the embedded demo) did not start")
            time.sleep(0.2)
        worker_cpus = {w["cpu_slot"] for w in snapshot["workers"].values() if w.get("cpu_slot") is not None}
        streams = [entry["name"] for entry in snapshot["graph"]["shared_memory"]
                   if len(entry["shape"]) in (1, 2)][:preview_streams if preview_hz > 0 else 0]
        quiet_e2e, quiet_loop = sample(seconds)
        load = subprocess.Popen([sys.executable, "-c", LOAD_CLIENT, str(port), str(sse_clients), str(preview_hz),
                                 str(preview_width), str(status_hz), str(seconds + 1.0), json.dumps(streams)],
                                stdout=subprocess.PIPE, text=True,
                                preexec_fn=lambda: _as_remote_client(client_nice, worker_cpus))
        time.sleep(0.5)  # the clients connect
        loaded_e2e, loaded_loop = sample(seconds)
        counts = json.loads(load.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1])
        final = status()["daemon"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    median = lambda values: round(float(np.median(values)), 1) if values else None  # noqa: E731
    return {
        "benchmark": "console", "seconds": seconds, "sse_clients": sse_clients, "preview_hz": preview_hz,
        "preview_streams": streams, "preview_width": preview_width,
        "status_hz": status_hz, "client_nice": client_nice,
        "e2e_p99_us_quiet": median(quiet_e2e), "e2e_p99_us_watched": median(loaded_e2e),
        "loop_mean_us_quiet": quiet_loop, "loop_mean_us_watched": loaded_loop,
        "events_per_client": round(counts["events"] / max(1, sse_clients), 1),
        "sse_bytes_per_client": counts["sse_bytes"] // max(1, sse_clients), "sse_refused": counts["sse_refused"],
        "previews_served": counts["previews"], "preview_errors": counts["preview_errors"],
        "status_polls": counts["status"], "event_clients_dropped": final.get("event_clients_dropped_total"),
    }


def format_console_report(report: dict) -> list[str]:
    watched = [f"{report['sse_clients']} SSE clients"]
    if report["preview_streams"]:
        watched.append(f"previews of {', '.join(report['preview_streams'])} at {report['preview_hz']:g} Hz "
                       f"({report['preview_width']} px)")
    if report["status_hz"]:
        watched.append(f"/status at {report['status_hz']:g} Hz")
    return [
        f"demo pipeline watched by {', '.join(watched)} (load at nice {report['client_nice']}), "
        f"{report['seconds']:g} s per phase",
        f"  end-to-end p99:       quiet {report['e2e_p99_us_quiet']} us, watched {report['e2e_p99_us_watched']} us",
        f"  supervisor loop mean: quiet {report['loop_mean_us_quiet']} us, watched {report['loop_mean_us_watched']} us",
        f"  served: {report['events_per_client']} events and {report['sse_bytes_per_client']} bytes per SSE "
        f"client (state changes, the initial snapshot, keep-alives), {report['previews_served']} previews "
        f"({report['preview_errors']} errors), {report['status_polls']} status polls; "
        f"SSE refused {report['sse_refused']}, dropped {report['event_clients_dropped']}",
    ]
