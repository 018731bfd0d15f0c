"""``shmpiped bench load``: a pipeline's latency quiet and beside CPU hogs, with and without real time.

Four runs of the same pipeline (default: the embedded demo), each in a fresh
namespace: quiet without real time, beside N CPU-bound processes without real
time, then the same two with the pipeline's real-time settings (its
``realtime:`` block, or ``fifo 50`` with locked memory when it has none), its
sources then running in processes of their own with the same settings.  The
hogs are ``while True: pass`` interpreters this benchmark starts and ends
itself, by pid.  Each run reports the end-to-end latency its last worker
measured for the frames of the run (p50/p99/max, from the telemetry window),
the rate delivered at the output against the sources' target, and the
scheduling policy the workers really had (read back from /proc).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid

from .config import PipelineConfig, RealtimeConfig

#: The real-time profile used when the pipeline file asks for none.
DEFAULT_PROFILE = RealtimeConfig(policy="fifo", priority=50, lock_memory=True)
HOG = "while True: pass"


def _variant(config: PipelineConfig, realtime: bool) -> PipelineConfig:
    """``config`` in a namespace of its own, with its real-time settings (or the default profile), or none."""
    if realtime:
        settings = config.realtime if config.realtime.policy != "other" else dataclasses.replace(
            config.realtime, policy=DEFAULT_PROFILE.policy, priority=DEFAULT_PROFILE.priority,
            lock_memory=DEFAULT_PROFILE.lock_memory)
        # The sources too: a camera thread in the manager's process would be starved by the hogs.
        changes = {"realtime": settings,
                   "sources": tuple(dataclasses.replace(s, process=True) for s in config.sources)}
    else:  # plain: no pipeline settings and no per-node overrides
        changes = {"realtime": RealtimeConfig(),
                   "kernels": tuple(dataclasses.replace(k, realtime={}) for k in config.kernels),
                   "sources": tuple(dataclasses.replace(s, realtime={}) for s in config.sources)}
    return config.replace(namespace=f"benchload{uuid.uuid4().hex[:8]}", **changes)


def _target_rate(config: PipelineConfig) -> float | None:
    rates = [s.parameters.get("rate_hz") for s in config.sources]
    rates = [float(r) for r in rates if isinstance(r, (int, float)) and not isinstance(r, bool)]
    return max(rates) if rates else None


def _start_hogs(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]


def _stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def run_case(config: PipelineConfig, label: str, realtime: bool, hogs: int, duration_s: float,
             warmup_s: float) -> dict:
    """One run: build and start the variant, start the hogs, measure, end everything."""
    from .manager import PipelineManager

    variant = _variant(config, realtime)
    manager = PipelineManager(variant)
    started: list[subprocess.Popen] = []
    try:
        manager.build()
        manager.start()
        started = _start_hogs(hogs)
        report = manager.benchmark(duration_s, warmup_s=warmup_s)
        status = manager.status()
    finally:
        _stop_hogs(started)
        manager.shutdown(force=True)
    stream = report["output_stream"]
    e2e = report["end_to_end"].get(stream) or {}
    target = _target_rate(config)
    policies = sorted({(w.get("realtime") or {}).get("effective", {}).get("policy", "?")
                       for w in status["workers"].values()})
    return {
        "case": label,
        "realtime": realtime,
        "hogs": hogs,
        "output_stream": stream,
        "frames": report["frames"],
        "rate_hz": report["throughput_hz"],
        "target_rate_hz": target,
        "delivered": None if not target else report["throughput_hz"] / target,
        "p50_us": e2e.get("p50_us"),
        "p99_us": e2e.get("p99_us"),
        "max_us": e2e.get("max_us"),
        "window": e2e.get("window"),
        "effective_policies": policies,
        "overruns": sum(w.get("overruns") or 0 for w in report["workers"].values()),
    }


def load_rows(path: str | None = None, duration_s: float = 10.0, hogs: int | None = None,
              warmup_s: float = 1.0):
    """The four runs (quiet / hogs, without / with real time) of the pipeline in ``path`` (default: the
    demo), each row yielded as soon as it is measured."""
    from .demo import demo_path

    config = PipelineConfig.from_yaml(path or str(demo_path()))
    count = len(os.sched_getaffinity(0)) if hogs is None else int(hogs)
    cases = (("quiet", False, 0), (f"{count} hogs", False, count),
             ("quiet, real time", True, 0), (f"{count} hogs, real time", True, count))
    for label, realtime, n in cases:
        yield run_case(config, label, realtime, n, duration_s, warmup_s)


def format_load_header(output_stream: str) -> str:
    return (f"end-to-end latency at {output_stream} (the last worker's window), delivered rate\n"
            f"  {'case':<22} {'p50 us':>9} {'p99 us':>9} {'max us':>9} {'rate Hz':>9} {'delivered':>9}"
            f"  {'overruns':>8}  policy")


def format_load_row(row: dict) -> str:
    number = lambda value, fmt: "-" if value is None else format(value, fmt)  # noqa: E731
    delivered = "-" if row["delivered"] is None else f"{100 * row['delivered']:.1f} %"
    return (f"  {row['case']:<22} {number(row['p50_us'], '9.1f')} {number(row['p99_us'], '9.1f')} "
            f"{number(row['max_us'], '9.1f')} {row['rate_hz']:9.1f} {delivered:>9}  {row['overruns']:>8}"
            f"  {','.join(row['effective_policies'])}")

