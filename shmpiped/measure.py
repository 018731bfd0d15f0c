"""Measuring a running pipeline from the outside: ``PipelineManager.benchmark()``.

Owns the measurement loop and its report: which stream is measured (the one
terminal output, unless named), the optional synthetic input that drives the
run, throughput, inter-arrival spacing and true end-to-end latency (arrival
minus the frame's origin timestamp), and the summary figures of each.

It uses only the manager's public methods and never imports the manager; the
manager checks its own state and then delegates here.  ``bench.py`` builds
throwaway pipelines for ``shmpiped bench`` and calls ``benchmark()`` through
the manager like any user.

Durations are reported in both units, under shmpipeline's names and
shmpiped's: ``inter_arrival_ms``/``inter_arrival_us``,
``end_to_end_us``/``end_to_end_ms``, and per worker
``avg_exec_us``/``avg_exec_ms`` and ``p99_exec_us``/``p99_exec_ms``.
"""

from __future__ import annotations

import time

import numpy as np

WORKER_FIGURES = ("avg_exec_us", "avg_exec_ms", "p99_exec_us", "jitter_us_rms", "throughput_hz",
                  "frames_processed", "overruns")


def terminal_streams(config) -> list[str]:
    """Kernel primary outputs that nothing in the pipeline ``config`` reads."""
    read = {n for k in config.kernels for n in k.all_inputs}
    read |= {n for s in config.sinks for n in (s.stream, *s.auxiliary_names)}
    return [k.output for k in config.kernels if k.output not in read]


def benchmark(manager, duration_s: float, source=None, output_stream: str | None = None,
              warmup_s: float = 0.5) -> dict:
    """Measure ``manager``'s running pipeline at ``output_stream`` for ``duration_s``.

    ``source`` (a SyntheticInputConfig or dict) drives an input for the run and
    is stopped afterwards, whatever happens.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    if output_stream is None:
        terminal = terminal_streams(manager.config)
        if len(terminal) != 1:
            raise ValueError("output_stream must be specified explicitly: the pipeline has "
                             f"{len(terminal)} terminal output streams ({terminal})")
        output_stream = terminal[0]
    output = manager.get_stream(output_stream)
    started_source = None
    if source is not None:
        started_source = manager.start_synthetic_input(source)["stream_name"]
    spacing_ns: list[int] = []
    latency_ns: list[int] = []
    try:
        time.sleep(warmup_s)
        manager.raise_if_failed()
        last = output.count
        start = previous = time.monotonic_ns()
        deadline = start + int(duration_s * 1e9)
        while True:
            now = time.monotonic_ns()
            if now >= deadline:
                break
            count = output.wait_once(last, min((deadline - now) / 1e9, 0.25))
            arrived = time.monotonic_ns()
            if count <= last:
                manager.raise_if_failed()
                continue
            advanced = count - last
            spacing_ns.extend([(arrived - previous) // advanced] * advanced)
            latency_ns.append(arrived - output.slot_metadata(count)[1])
            last, previous = count, arrived
        elapsed = max((time.monotonic_ns() - start) / 1e9, 1e-12)
        manager.raise_if_failed()
    finally:
        if started_source is not None:
            manager.stop_synthetic_input(started_source)
    status = manager.status()
    spacing = np.asarray(spacing_ns, dtype=np.float64)
    latency = np.asarray(latency_ns, dtype=np.float64)
    spacing_ms = summary(spacing / 1e6)
    return {
        "output_stream": output_stream,
        "duration_s": elapsed,
        "frames": len(spacing_ns),
        "throughput_hz": len(spacing_ns) / elapsed,
        "inter_arrival_ms": spacing_ms,
        "inter_arrival_us": summary(spacing / 1e3),
        "latency_ms": dict(spacing_ms),  # shmpipeline's name for the spacing, kept for old scripts
        "end_to_end_us": summary(latency / 1e3),
        "end_to_end_ms": summary(latency / 1e6),
        "end_to_end": status["end_to_end"],
        "workers": {name: worker_figures(w) for name, w in status["workers"].items()},
    }


def worker_figures(worker: dict) -> dict:
    """The benchmark figures of one worker's status (``p99_exec_ms`` derived from ``p99_exec_us``)."""
    figures = {key: worker.get(key) for key in WORKER_FIGURES}
    p99 = figures["p99_exec_us"]
    figures["p99_exec_ms"] = None if p99 is None else p99 / 1e3
    return figures


def summary(values: np.ndarray) -> dict:
    """min/mean/max/p50/p90/p99 of ``values`` (None, and no percentiles, when empty)."""
    if values.size == 0:
        return {"min": None, "mean": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99)}
