"""``shmpiped serve FILE``: shmpipeline's ``serve`` command on the daemon.

The daemon of ``shmpiped run``, its HTTP server (metrics, control plane, web
console) on ``--host``/``--port`` (shmpipeline's defaults: 127.0.0.1:8765).
Tokens come from ``--token-file`` (``$SHMPIPED_TOKEN_FILE``); ``--token`` is
accepted for shmpipeline's command lines but shows the token to anyone who
can list processes.  Bound to a non-loopback address without a token, only
the read endpoints answer; control requests are refused with 403.
"""

from __future__ import annotations

import sys

import click

from .cli_input import require_input


@click.command()
@click.argument("file", type=click.Path(dir_okay=False), callback=require_input)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="TCP port.")
@click.option("--token-file", envvar="SHMPIPED_TOKEN_FILE", default=None, type=click.Path(dir_okay=False),
              help="Bearer tokens ('TOKEN' or 'SCOPE TOKEN' a line; scopes read, control, admin).")
@click.option("--token", default=None,
              help="One admin token (discouraged: visible in `ps`; prefer --token-file).")
@click.option("--namespace", envvar="SHMPIPED_NAMESPACE", default=None, help="Override the YAML's namespace.")
@click.option("--control-socket", envvar="SHMPIPED_CONTROL_SOCKET", default="",
              help="Unix socket for `shmpiped ctl` ('none' disables) [default: as `shmpiped run`].")
@click.option("--log-format", envvar="SHMPIPED_LOG_FORMAT", type=click.Choice(["plain", "json"]),
              default="plain", show_default=True)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--poll-interval", type=float, default=None, hidden=True,
              help="Accepted for shmpipeline compatibility; the supervisor loop runs at 10 Hz.")
def serve(file, host, port, token_file, token, namespace, control_socket, log_format, duration,
          poll_interval) -> None:
    """Run FILE as a daemon with its HTTP control plane on HOST:PORT (shmpipeline's `serve`).

    Exit status as `shmpiped run`: 0 stopped (SIGTERM or POST /commands/shutdown), 69 address in use,
    70 failed beyond its restart budget, 78 invalid configuration or token file.
    """
    from .cli import configure_logging
    from .service.daemon import Daemon, DaemonSettings

    configure_logging(click.get_current_context().find_root().params["log_level"], log_format)
    if token is not None:
        click.echo("warning: --token is visible to every user in the process list; prefer --token-file",
                   err=True)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    settings = DaemonSettings(
        pipeline=file, namespace=namespace, http_address=address,
        control_socket=None if control_socket.lower() in ("none", "off") else control_socket,
        duration=duration, token_file=token_file or None, token=token)
    sys.exit(Daemon(settings).run())
