"""The ``shmpiped bench`` group: the transport, pipeline, GPU, HTTP-flood and pyshmem benchmarks.

Thin click wrappers over :mod:`shmpiped.bench`; each command prints figures (text or ``--json``) and
chooses the exit status. ``shmpiped.cli`` adds the group to the ``shmpiped`` command, and
``bench pipeline`` again as ``shmpiped benchmark`` (shmpipeline's name).
"""

from __future__ import annotations

import json
import logging
import sys

import click

from .cli_input import require_input
from .errors import ConfigValidationError, SystemLimitError, WorkerProcessError
from .service.daemon import EXIT_CONFIG, EXIT_PIPELINE_FAILED, EXIT_UNAVAILABLE

EXIT_FAILURE = 1

class _BenchGroup(click.Group):
    """``shmpiped bench FILE ...`` is short for ``shmpiped bench pipeline FILE ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["pipeline", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks: `bench FILE` measures a pipeline; `hop` and `copy` the transport."""
    quiet_lifecycle_logs()


def quiet_lifecycle_logs() -> None:
    """A benchmark's output is its figures: the pipelines it builds, starts and stops log their
    lifecycle at WARNING, unless ``--log-level`` (or ``SHMPIPED_LOG_LEVEL``) asks for more."""
    root = click.get_current_context().find_root()
    if root.get_parameter_source("log_level") is click.core.ParameterSource.DEFAULT:
        logging.getLogger("shmpiped").setLevel(logging.WARNING)


def _print_results(results, as_json: bool) -> None:
    """Print each row of ``results`` (an iterable that measures as it goes) as soon as it is measured;
    with ``as_json``, one JSON list once all are."""
    if as_json:
        click.echo(json.dumps(list(results), indent=2))
        return
    for r in results:
        line = (f"{r['benchmark']:<10} {r['mode']:<10} {r['wait_strategy']:<6} "
                f"p50={r.get('p50_us', 0):8.1f}  p99={r.get('p99_us', 0):8.1f}  max={r.get('max_us', 0):8.1f} us")
        if "rate_hz" in r:
            line += f"  rate={r['rate_hz']:9.1f} Hz"
        if r.get("same_core"):
            line += "  (same core)"
        if r.get("cpu_mirror"):
            line += "  (+cpu_mirror)"
        if "worker_avg_exec_us" in r:
            line += f"  worker exec avg={r['worker_avg_exec_us']:.1f} us"
        if "telemetry" in r and not r["telemetry"]:
            line += "  (telemetry off)"
        click.echo(line)


@bench.command("hop")
@click.option("--frames", type=int, default=5000, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Paced rate in Hz.")
@click.option("--strategy", type=click.Choice(["futex", "hybrid", "spin"]), default="futex", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_hop(frames: int, rate: float, strategy: str, as_json: bool) -> None:
    """One hop writer process -> reader process: paced, lock-step, across and on one core."""
    from .bench import hop

    _print_results((hop(paced, frames, strategy, same_core=same_core)
                    for same_core in (False, True) for paced in (rate, None)), as_json)


@bench.command("copy")
@click.option("--frames", type=int, default=5000, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Paced rate in Hz.")
@click.option("--strategy", type=click.Choice(["futex", "hybrid", "spin"]), default="futex", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_copy(frames: int, rate: float, strategy: str, as_json: bool) -> None:
    """End-to-end latency of a one-stage copy pipeline: paced and lock-step, across cores and
    on one, and lock-step with telemetry off (its cost is the difference)."""
    from .bench import one_stage_pipeline as copy

    runs = [(rate, {}), (None, {})]
    if strategy == "futex":  # a spinning reader on its writer's core only steals the writer's time
        runs += [(rate, {"same_core": True}), (None, {"same_core": True}),
                 (None, {"same_core": True, "telemetry": False})]
    else:
        runs.append((None, {"telemetry": False}))
    _print_results((copy(paced, frames, strategy, **options) for paced, options in runs), as_json)


@bench.command("gpu")
@click.option("--frames", type=int, default=2000, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Paced rate in Hz.")
@click.option("--affine-shape", default="1024x2048", show_default=True, metavar="ROWSxCOLUMNS",
              help="The reconstructor matrix: commands x slopes.")
@click.option("--json", "as_json", is_flag=True)
def bench_gpu(frames: int, rate: float, affine_shape: str, as_json: bool) -> None:
    """CPU vs GPU: a one-stage copy and an affine reconstructor, paced and lock-step; the GPU rows
    again with a CPU mirror on the output."""
    from .bench import cpu_vs_gpu
    from .shm.device import gpu_status

    status = gpu_status()
    if not status.usable:
        click.echo(f"bench gpu needs a usable GPU, but {status.reason}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    try:
        rows, columns = (int(n) for n in affine_shape.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected ROWSxCOLUMNS, got {affine_shape!r}",
                                 param_hint="--affine-shape") from None
    if status.backend == "emulated":
        click.echo("note: SHMPIPED_GPU_EMULATION is set: the 'GPU' rows run on the CPU stand-in", err=True)
    _print_results(cpu_vs_gpu(rate, frames, affine_shape=(rows, columns)), as_json)


@bench.command("flood")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Length of each phase.")
@click.option("--clients", type=int, default=8, show_default=True, help="Concurrent HTTP clients.")
@click.option("--rate", type=float, default=1000.0, show_default=True, help="Pipeline rate in Hz.")
@click.option("--client-nice", type=int, default=0, show_default=True,
              help="Niceness of the load generator (19 mimics clients on another machine).")
@click.option("--json", "as_json", is_flag=True)
def bench_flood(seconds: float, clients: int, rate: float, client_nice: int, as_json: bool) -> None:
    """p99 of a running daemon's pipeline latency and loop time, quiet and under an HTTP flood."""
    from .bench import http_flood

    report = http_flood(seconds, clients, rate, client_nice)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"HTTP flood: {report['clients']} clients (nice {report['client_nice']}), "
               f"{report['requests_per_s']} requests/s served")
    click.echo(f"  pipeline end-to-end p99: quiet {report['e2e_p99_us_quiet']:.1f} us, "
               f"flood {report['e2e_p99_us_flood']:.1f} us")
    click.echo(f"  supervisor loop p99:     quiet {report['loop_p99_us_quiet']:.1f} us, "
               f"flood {report['loop_p99_us_flood']:.1f} us")


@bench.command("console")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Length of each phase.")
@click.option("--sse-clients", type=click.IntRange(0, 16), default=10, show_default=True,
              help="Open /events streams (the daemon serves 16 at most).")
@click.option("--preview-hz", type=float, default=2.0, show_default=True,
              help="PNG previews fetched this often (0: none; the console's default is 2 Hz).")
@click.option("--preview-streams", type=click.IntRange(0), default=1, show_default=True,
              help="How many 1-D and 2-D streams are previewed (one per open console).")
@click.option("--preview-width", type=int, default=256, show_default=True)
@click.option("--status-hz", type=float, default=1.0, show_default=True,
              help="/status polls a second (0: none; an open console polls at 1 Hz).")
@click.option("--client-nice", type=int, default=0, show_default=True,
              help="Niceness of the load generator (19 mimics a browser on another machine).")
@click.option("--json", "as_json", is_flag=True)
def bench_console(seconds, sse_clients, preview_hz, preview_streams, preview_width, status_hz, client_nice,
                  as_json) -> None:
    """The demo's end-to-end p99 and loop time, quiet and watched by an open console (its /status polls and
    preview) and SSE clients."""
    from .bench_console import console_load, format_console_report

    report = console_load(seconds, sse_clients, preview_hz, preview_width, status_hz, client_nice, preview_streams)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for line in format_console_report(report):
        click.echo(line)


@bench.command("pyshmem")
@click.option("--frames", type=int, default=2000, show_default=True)
@click.option("--rate", type=float, default=1000.0, show_default=True, help="The driver's rate in Hz.")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs of each path; figures are medians.")
@click.option("--json", "as_json", is_flag=True)
def bench_pyshmem(frames: int, rate: float, runs: int, as_json: bool) -> None:
    """Latency the pyshmem bridge adds: a pyshmem driver through pyshmem.source, and a pyshmem reader
    behind pyshmem.sink, against the same driver and reader on the shmpiped streams."""
    from .bench import format_pyshmem_report, pyshmem_bridge

    try:
        report = pyshmem_bridge(rate, frames, runs=runs)
    except ConfigValidationError as exc:  # pyshmem is not installed
        click.echo(f"bench pyshmem: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(json.dumps(report, indent=2) if as_json else format_pyshmem_report(report))


@bench.command("pipeline")
@click.argument("file", type=click.Path(dir_okay=False), callback=require_input)
@click.option("--duration", type=float, default=5.0, show_default=True, help="Seconds measured.")
@click.option("--warmup", type=float, default=0.5, show_default=True, help="Seconds before measuring.")
@click.option("--source", default=None, metavar="STREAM:PATTERN[:RATE]",
              help="Drive STREAM with a synthetic input, e.g. input:random:1000.")
@click.option("--output-stream", default=None, help="Where to measure (default: the one terminal stream).")
@click.option("--poll-interval", type=float, default=None, hidden=True,
              help="Accepted for shmpipeline compatibility: the measurement parks on the stream.")
@click.option("--json", "as_json", is_flag=True)
def bench_pipeline(file: str, duration: float, warmup: float, source: str | None,
                   output_stream: str | None, poll_interval: float | None, as_json: bool) -> None:
    """Run FILE and report throughput, end-to-end latency and per-worker exec times
    (`shmpiped benchmark FILE` is the same command, under shmpipeline's name)."""
    from .bench import pipeline
    from .config import PipelineConfig

    quiet_lifecycle_logs()  # also as `shmpiped benchmark`, outside the group
    try:
        PipelineConfig.from_yaml(file)
        report = pipeline(file, duration, source, output_stream, warmup)
    except (ConfigValidationError, ValueError, KeyError) as exc:
        click.echo(f"benchmark failed: {exc}", err=True)
        sys.exit(EXIT_CONFIG if isinstance(exc, ConfigValidationError) else EXIT_FAILURE)
    except (WorkerProcessError, OSError, MemoryError) as exc:
        limit = SystemLimitError.of(exc, "benchmark")  # out of file descriptors, memory ...: 71
        click.echo(f"benchmark failed: {limit or exc}", err=True)
        sys.exit(limit.exit_status if limit else
                 EXIT_PIPELINE_FAILED if isinstance(exc, WorkerProcessError) else EXIT_FAILURE)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(format_pipeline_report(report))


def format_pipeline_report(report: dict) -> str:
    def fmt(summary: dict, unit: str) -> str:
        if summary.get("p50") is None:
            return "no frames"
        return (f"p50={summary['p50']:.3f} p90={summary['p90']:.3f} p99={summary['p99']:.3f} "
                f"max={summary['max']:.3f} {unit}")

    lines = [
        f"Output: {report['output_stream']}",
        f"Frames: {report['frames']} in {report['duration_s']:.2f} s",
        f"Throughput: {report['throughput_hz']:.1f} Hz",
        f"Inter-arrival spacing: {fmt(report['inter_arrival_ms'], 'ms')}",
        f"End-to-end latency at {report['output_stream']}: {fmt(report['end_to_end_us'], 'us')}",
    ]
    for stream, e2e in report["end_to_end"].items():
        if e2e["p50_us"] is not None:
            lines.append(f"  sink {stream} (last {e2e['window']} frames): p50={e2e['p50_us']:.1f} "
                         f"p90={e2e['p90_us']:.1f} p99={e2e['p99_us']:.1f} max={e2e['max_us']:.1f} us")
    lines.append("Workers:")
    for name, w in report["workers"].items():
        if w.get("avg_exec_us") is None:
            lines.append(f"  {name:<16} no frames")
            continue
        lines.append(f"  {name:<16} exec avg={w['avg_exec_us']:.1f} p99={w['p99_exec_us']:.1f} "
                     f"jitter={w['jitter_us_rms']:.1f} us  {w['throughput_hz']:.1f} Hz  overruns={w['overruns']}")
    return "\n".join(lines)


@bench.command("load")
@click.argument("file", required=False, type=click.Path(dir_okay=False), callback=require_input)
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds measured per run.")
@click.option("--hogs", type=int, default=None, help="CPU-bound processes beside the pipeline [default: one per CPU].")
@click.option("--json", "as_json", is_flag=True)
def bench_load(file: str | None, duration: float, hogs: int | None, as_json: bool) -> None:
    """FILE (default: the demo) quiet and beside CPU hogs, without and with its real-time settings
    (fifo 50 with locked memory when it has none): end-to-end p50/p99/max and the delivered rate."""
    from .bench_load import format_load_header, format_load_row, load_rows

    rows = []
    try:
        for row in load_rows(file, duration, hogs):
            rows.append(row)
            if not as_json:  # each row as soon as it is measured: a run takes tens of seconds
                if len(rows) == 1:
                    click.echo(format_load_header(row["output_stream"]))
                click.echo(format_load_row(row))
    except ConfigValidationError as exc:
        click.echo(f"bench load: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
