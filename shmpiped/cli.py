"""The ``shmpiped`` command line: thin click wrappers over the library.

Every command's work is a function a test can call without a terminal; the
commands only parse options, print and choose the exit status.
"""

from __future__ import annotations

import json
import logging
import sys
import threading

import click

from . import __version__
from .cli_input import input_problem, require_input
from .errors import ConfigValidationError
from .service.daemon import EXIT_CONFIG, EXIT_NOINPUT

EXIT_OK = 0
EXIT_FAILURE = 1
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shmpiped")
@click.option("--log-level", default="INFO", envvar="SHMPIPED_LOG_LEVEL", show_default=True, type=LOG_LEVELS,
              help="Log level of every command (`run --log-level` overrides it for the daemon).")
def main(log_level: str) -> None:
    """Real-time pipelines over /dev/shm streams, one worker process per kernel.

    Shell completion: eval "$(_SHMPIPED_COMPLETE=bash_source shmpiped)" (zsh_source, fish_source).
    """
    configure_logging(log_level, "plain")


# ---------------------------------------------------------------------- validate / describe
def load_and_validate(path: str):
    """(config, errors): every load-time and graph/registry error of ``path``."""
    from .config import PipelineConfig
    from .validation import validate_pipeline_config

    try:
        config = PipelineConfig.from_yaml(path)
    except ConfigValidationError as exc:
        return None, list(exc.errors or (str(exc),))
    except OSError as exc:
        return None, [f"cannot read {path}: {exc.strerror or exc}"]
    return config, validate_pipeline_config(config)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help='Print {"valid": ..., "files": [{"path", "valid", "errors"}]} instead of text.')
def validate(files, as_json: bool) -> None:
    """Check pipeline files; print every error (exit 78 if any file is invalid, 66 if one is missing)."""
    results = []
    missing = False
    for path in files:
        problem = input_problem(path)
        missing = missing or problem is not None
        errors = [problem] if problem else load_and_validate(path)[1]
        results.append({"path": path, "valid": not errors, "errors": errors})
        if as_json:
            continue
        if errors:
            click.echo(f"{path}: invalid ({len(errors)} error{'s' if len(errors) > 1 else ''})")
            for error in errors:
                click.echo(f"  - {error}")
        else:
            click.echo(f"{path}: valid")
    valid = all(result["valid"] for result in results)
    if as_json:
        click.echo(json.dumps({"valid": valid, "files": results}, indent=2))
    sys.exit(EXIT_NOINPUT if missing else EXIT_OK if valid else EXIT_CONFIG)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False), callback=require_input)
@click.option("--json", "as_json", is_flag=True, help="Print the graph as JSON.")
def describe(file: str, as_json: bool) -> None:
    """Print the pipeline graph: streams with roles, sources, kernels, sinks."""
    from .graph import PipelineGraph

    config, errors = load_and_validate(file)
    if errors:
        for error in errors:
            click.echo(f"- {error}", err=True)
        sys.exit(EXIT_CONFIG)
    graph = PipelineGraph(config)
    if as_json:
        click.echo(json.dumps(graph.to_dict(), indent=2, sort_keys=True, default=list))
    else:
        click.echo(graph.describe())


# ---------------------------------------------------------------------- run (the daemon)
class _JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid; ``exception`` holds a traceback
    (never a line of its own); a relayed worker's record adds ``worker``, ``worker_pid`` and ``output``
    (journald and log shippers read it)."""

    EXTRA_FIELDS = ("worker", "worker_pid", "output")

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 6), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "pid": record.process}
        for name in self.EXTRA_FIELDS:
            if getattr(record, name, None) is not None:
                entry[name] = getattr(record, name)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Log records to stderr, one event per record in ``fmt`` ("plain" or "json"), at ``level``.

    Workers started from now on have their stdout and stderr relayed as records
    of ``shmpiped.worker.<kernel>`` (``shmpiped.worker_output``), so nothing
    reaches stderr that is not a record in this format.
    """
    from .worker_output import relay_worker_output

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.captureWarnings(True)               # warnings.warn(...) in this process: records of py.warnings
    sys.excepthook = _log_uncaught_exception     # an uncaught exception: one record, its traceback inside
    threading.excepthook = _log_thread_exception
    relay_worker_output()


def _log_uncaught_exception(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        logging.getLogger("shmpiped").error("interrupted")
        return
    logging.getLogger("shmpiped").critical("uncaught exception: %s: %s", exc_type.__name__, exc,
                                           exc_info=(exc_type, exc, tb))


def _log_thread_exception(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("shmpiped").error("uncaught exception in thread %s: %s: %s", name, args.exc_type.__name__,
                                        args.exc_value, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _optional(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("", "none", "off") else value


@main.command()
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False), envvar="SHMPIPED_PIPELINE",
                callback=require_input)
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None, help="Override the YAML's namespace.")
@click.option("--http-address", envvar="SHMPIPED_HTTP_ADDRESS", default="127.0.0.1:9750", show_default=True,
              help="HOST:PORT of /metrics, /healthz, /readyz, /status ('none' disables).")
@click.option("--control-socket", envvar="SHMPIPED_CONTROL_SOCKET", default="",
              help="Unix socket for `shmpiped ctl` [default: $RUNTIME_DIRECTORY/<ns>.sock or "
                   "/run/shmpiped/<ns>.sock; 'none' disables].")
@click.option("--restart-budget", envvar="SHMPIPED_RESTART_BUDGET", type=int, default=5, show_default=True,
              help="Restarts of one worker allowed within --restart-window.")
@click.option("--restart-window", envvar="SHMPIPED_RESTART_WINDOW", type=float, default=60.0, show_default=True,
              help="Seconds over which the restart budget is counted.")
@click.option("--backoff-initial", envvar="SHMPIPED_BACKOFF_INITIAL", type=float, default=0.1, show_default=True,
              help="Seconds before the first restart of a failed worker.")
@click.option("--backoff-max", envvar="SHMPIPED_BACKOFF_MAX", type=float, default=10.0, show_default=True,
              help="Upper bound of the doubling back-off.")
@click.option("--watchdog-timeout", envvar="SHMPIPED_WATCHDOG_TIMEOUT", type=float, default=None,
              help="Seconds without loop progress after which a worker is hung and killed "
                   "[default: max(5, 4 x its read_timeout)].")
@click.option("--target-rate", envvar="SHMPIPED_TARGET_RATE", type=float, default=None,
              help="Expected loop rate in Hz, exported for the loop-rate alert.")
@click.option("--latency-budget", envvar="SHMPIPED_LATENCY_BUDGET", type=click.FloatRange(min=0, min_open=True),
              default=0.002, show_default=True,
              help="End-to-end latency budget in seconds, exported for the latency alert and dashboards.")
@click.option("--fail-fast/--no-fail-fast", envvar="SHMPIPED_FAIL_FAST", default=True, show_default=True,
              help="Exit 70 when a worker spends its restart budget (else stay up, failed).")
@click.option("--log-level", "run_log_level", default=None, type=LOG_LEVELS,
              help="The daemon's log level [default: shmpiped --log-level, $SHMPIPED_LOG_LEVEL, INFO].")
@click.option("--log-format", envvar="SHMPIPED_LOG_FORMAT", type=click.Choice(["plain", "json"]),
              default="plain", show_default=True, help="plain text or JSON lines on stderr.")
@click.option("--status-interval", envvar="SHMPIPED_STATUS_INTERVAL", type=float, default=5.0, show_default=True,
              help="Seconds between status lines (and systemd STATUS= updates).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--json-status", is_flag=True, help="Print the final runtime snapshot as JSON on the way out.")
@click.option("--poll-interval", type=float, default=None, hidden=True,
              help="Accepted for shmpipeline compatibility; the supervisor loop runs at 10 Hz.")
@click.option("--debug-commands", is_flag=True, hidden=True, envvar="SHMPIPED_DEBUG_COMMANDS")
@click.option("--token-file", envvar="SHMPIPED_TOKEN_FILE", default=None, type=click.Path(dir_okay=False),
              help="Bearer tokens of the HTTP control plane ('TOKEN' or 'SCOPE TOKEN' a line; scopes read, "
                   "control, admin); without it, control requests answer 403.")
def run(pipeline, namespace, http_address, control_socket, restart_budget, restart_window, backoff_initial,
        backoff_max, watchdog_timeout, target_rate, latency_budget, fail_fast, run_log_level, log_format, status_interval,
        duration, json_status, poll_interval, debug_commands, token_file) -> None:
    """Run PIPELINE (or $SHMPIPED_PIPELINE; default: the embedded adaptive-optics demo,
    shmpiped/demo/ao_loop.yaml, namespace 'demo') as a supervised daemon.

    Exit status: 0 stopped on request, 66 PIPELINE missing or unreadable, 69 HTTP address unavailable,
    70 failed beyond its restart budget,
    71 out of a system resource (open files, memory, processes), 73 shared memory could not be created,
    75 namespace owned by another live process, 78 invalid configuration.
    """
    from .service.daemon import Daemon, DaemonSettings
    from .service.supervisor import RestartPolicy

    configure_logging(run_log_level or click.get_current_context().find_root().params["log_level"], log_format)
    try:
        policy = RestartPolicy(backoff_initial_s=backoff_initial, backoff_max_s=backoff_max,
                               budget=restart_budget, window_s=restart_window, watchdog_s=watchdog_timeout)
        if _optional(http_address):
            from .service.httpapi import parse_address

            parse_address(http_address)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = DaemonSettings(
        pipeline=pipeline, namespace=namespace, http_address=_optional(http_address),
        control_socket=None if control_socket.lower() in ("none", "off") else control_socket,
        policy=policy, fail_fast=fail_fast, duration=duration, status_interval=status_interval,
        target_rate_hz=target_rate, latency_budget_s=latency_budget, debug_commands=debug_commands,
        token_file=token_file or None,
    )
    daemon = Daemon(settings)
    status = daemon.run()
    if json_status and daemon.final_snapshot is not None:
        click.echo(json.dumps(daemon.final_snapshot, indent=2, sort_keys=True, default=str))
    sys.exit(status)


# ---------------------------------------------------------------------- ctl
@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--socket", "socket_path", envvar="SHMPIPED_CONTROL_SOCKET", default=None,
              help="The daemon's control socket [default: from --namespace].")
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None,
              help="The daemon's namespace [default: 'default' when its daemon answers, else the one daemon "
                   "that answers].")
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
def ctl(socket_path, namespace, words) -> None:
    """Control a running daemon: status | pause | resume | restart [WORKER] | stop |
    reload | synthetic start STREAM PATTERN [RATE_HZ] | synthetic stop STREAM.  --json prints the answer
    as JSON."""
    from .service.control_client import EXIT_UNAVAILABLE, choose_socket
    from .service.control_protocol import ControlUnavailable
    from .service.control_socket import ctl_main

    try:
        path = socket_path or choose_socket(namespace)
    except ControlUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    status, text = ctl_main(path, list(words))
    if text:
        click.echo(text, err=status != 0)
    sys.exit(status)


# ---------------------------------------------------------------------- shm
@main.group()
def shm() -> None:
    """Inspect and clean shmpiped segments in /dev/shm."""


def list_segments(namespace: str | None = None) -> list[dict]:
    """Every shmpiped segment in /dev/shm, with its owner and whether it is stale (``shm_inventory``)."""
    from .shm_inventory import list_segments as listing

    return listing(namespace)


@shm.command("ls")
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None, help="Only this namespace.")
@click.option("--json", "as_json", is_flag=True)
def shm_ls(namespace: str | None, as_json: bool) -> None:
    """List shmpiped segments: namespace, stream, shape, count, owner, stale."""
    rows = list_segments(namespace)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no shmpiped segments in /dev/shm")
        return
    for row in rows:
        shape = f"{tuple(row['shape'])} {row['dtype']} count={row['count']}" if "shape" in row else ""
        owner = f"pid {row['owner_pid']} {'alive' if row['alive'] else 'gone'}"
        click.echo(f"{row['segment']:<48} {row['kind']:<9} {shape:<36} {owner}{' STALE' if row['stale'] else ''}")


@shm.command("rm")
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None, help="Only this namespace.")
@click.option("--force", is_flag=True,
              help="Also remove segments whose owner is gone but that were kept on purpose or cannot be read "
                   "(never those of a running owner).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"removed": [...], "left": [{"segment", "why"}]} instead of text.')
def shm_rm(namespace: str | None, force: bool, as_json: bool) -> None:
    """Remove the segments left by owners that are gone (stale; with --force also kept or unreadable ones).

    A segment whose owner still runs is never removed: stop the owner. Exit 1 when --namespace or --force
    asked for segments that were left.
    """
    from .shm_inventory import remove_segments

    removal = remove_segments(namespace, force)
    if as_json:
        left = [{"segment": row["segment"], "why": "its owner runs", "owner_pid": pid}
                for pid, rows in sorted(removal.live.items()) for row in rows]
        left += [{"segment": row["segment"], "why": "kept or unreadable: needs --force", "owner_pid": row["owner_pid"]}
                 for row in removal.needs_force]
        click.echo(json.dumps({"removed": removal.removed, "left": left}, indent=2))
    else:
        for name in removal.removed:
            click.echo(f"removed {name}")
        for line in removal.messages():
            click.echo(line, err=True)
    if (namespace or force) and (removal.live or removal.needs_force):
        sys.exit(EXIT_FAILURE)


# ---------------------------------------------------------------------- view
@main.command()
@click.argument("stream")
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None,
              help="The pipeline's namespace [default: the running one that has STREAM].")
@click.option("--mode", type=click.Choice(["auto", "window", "terminal", "text", "png"]), default="auto",
              show_default=True, help="auto: a window when a display and matplotlib exist, else the terminal.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None,
              help="Write PNG snapshots to this file instead.")
@click.option("--interval", type=float, default=0.1, show_default=True, help="Seconds between refreshes.")
@click.option("--frames", type=int, default=None, help="Stop after this many refreshes.")
def view(stream: str, namespace: str | None, mode: str, png_path: str | None, interval: float,
         frames: int | None) -> None:
    """Watch STREAM of a running pipeline (read-only, in its own process): values, rate, frame age."""
    from .viewer import ViewerError, ViewerProcess, namespace_of

    try:
        namespace = namespace or namespace_of(stream)
        viewer = ViewerProcess(stream, namespace, mode="png" if png_path else mode, png_path=png_path,
                               interval=interval, frames=frames)
    except ViewerError as exc:
        click.echo(f"shmpiped view: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    sys.exit(viewer.wait())


# ---------------------------------------------------------------------- kinds
def registered_kinds() -> dict:
    """Every registered kind by role, and whether the gpu.* kinds can run here (and why not)."""
    from .kernels.registry import default_registry
    from .shm.device import gpu_status

    registry = default_registry()
    status = gpu_status()
    return {"kernels": list(registry.kinds()), "sources": list(registry.source_kinds()),
            "sinks": list(registry.sink_kinds()), "gpu": {"usable": status.usable, "reason": status.reason}}


def _print_kinds(roles: tuple[str, ...], as_json: bool) -> None:
    found = registered_kinds()
    if as_json:
        click.echo(json.dumps({role: found[role] for role in (*roles, "gpu")}, indent=2))
        return
    for role in roles:
        if len(roles) > 1:
            click.echo(f"{role}:")
        for name in found[role] or [f"(no {role[:-1]} plugins registered)"]:
            click.echo(f"  {name}" if len(roles) > 1 else name)
    if "kernels" in roles and not found["gpu"]["usable"]:
        click.echo(f"(the gpu.* kernel kinds are not available: {found['gpu']['reason']})")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def kinds(as_json: bool) -> None:
    """List the registered kernel, source and sink kinds."""
    _print_kinds(("kernels", "sources", "sinks"), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def sources(as_json: bool) -> None:
    """List the registered source kinds."""
    _print_kinds(("sources",), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def sinks(as_json: bool) -> None:
    """List the registered sink kinds."""
    _print_kinds(("sinks",), as_json)


# ---------------------------------------------------------------------- doctor
@main.command()
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False), envvar="SHMPIPED_PIPELINE",
                callback=require_input)
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ready", "pipeline", "findings": [{"name", "status", "seen", "fix"}]} instead of text.')
def doctor(pipeline: str | None, as_json: bool) -> None:
    """Check this machine for real time (for PIPELINE's settings, or $SHMPIPED_PIPELINE's, else for a
    fifo 50 worker with locked memory) and print each finding with its fix.

    Exit status: 0 ready (every finding ok or not applicable), 1 with findings to act on, 66 PIPELINE missing,
    78 invalid PIPELINE.
    """
    from .config import PipelineConfig
    from .doctor import diagnose, generic_request, is_ready, report, request_for

    request = generic_request()
    if pipeline:
        try:
            request = request_for(PipelineConfig.from_yaml(pipeline), pipeline)
        except (ConfigValidationError, OSError) as exc:
            errors = (exc.errors or (str(exc),)) if isinstance(exc, ConfigValidationError) else \
                [f"cannot read {pipeline}: {exc.strerror or exc}"]
            for error in errors:
                click.echo(f"- {error}", err=True)
            sys.exit(EXIT_CONFIG)
    findings = diagnose(request)
    if as_json:
        click.echo(json.dumps({"ready": is_ready(findings), "pipeline": pipeline,
                               "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        click.echo(report(findings, request))
    sys.exit(EXIT_OK if is_ready(findings) else EXIT_FAILURE)


# ---------------------------------------------------------------------- bench (shmpiped/cli_bench.py)
from .cli_bench import bench, bench_pipeline  # noqa: E402  (the group lives in its own module)

main.add_command(bench)
main.add_command(bench_pipeline, "benchmark")
from .cli_console import console_screenshot  # noqa: E402  (the web console's screenshot command)

main.add_command(console_screenshot)
from .cli_serve import serve  # noqa: E402  (`shmpiped serve`: shmpipeline's command, in shmpiped/cli_serve.py)

main.add_command(serve)


def _show_envvars(command: click.Command) -> None:
    """Every option read from the environment says so in --help."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    for sub in getattr(command, "commands", {}).values():
        _show_envvars(sub)


_show_envvars(main)


if __name__ == "__main__":  # pragma: no cover
    main()
