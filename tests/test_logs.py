"""Logs you can parse: every line of the daemon's stderr is one event, whatever its workers write.

The relay (shmpiped.worker_output) is tested on real child processes writing to real pipes; the
daemon as `shmpiped run --log-format json` with a kernel that prints, warns, writes to fd 2 and
fails, while HTTP clients reset their connections.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shmpiped.worker_output import WorkerOutputRelay, format_event_line

from .conftest import segments_of, wait_for
from .daemon_support import free_port
from .noisy_kernels import install_plugin

CHATTY_CHILD = r"""
import os, sys, traceback
import numpy as np
from shmpiped.worker_output import format_event_line
print("hello from stdout")
print("an array:\n", np.arange(6).reshape(2, 3))
os.write(2, b"libfoo: a C message\n")
with np.errstate(divide="warn"):
    np.float32(1) / np.float32(0)
try:
    try:
        1 / 0
    except ZeroDivisionError as exc:
        raise ValueError("chained") from exc
except ValueError:
    traceback.print_exc()
sys.stderr.write(format_event_line("ERROR", "worker 'x' failed: RuntimeError: boom",
                                   "Traceback (most recent call last):\n  File \"k.py\", line 1\nRuntimeError: boom"))
sys.stdout.write("a last line without its newline")
"""


class Collect(logging.Handler):
    """Keeps the records it is handed; ``gate`` (an Event), when set up, holds every record until set."""

    def __init__(self, gate: threading.Event | None = None):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.gate = gate

    def emit(self, record):
        if self.gate is not None:
            self.gate.wait()
        self.records.append(record)


@pytest.fixture
def collected():
    handler = Collect()
    loggers = [logging.getLogger("shmpiped.worker.x"), logging.getLogger("shmpiped.worker_output")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def relayed(relay: WorkerOutputRelay, code: str, name: str = "x", script: Path | None = None) -> subprocess.Popen:
    """A child running ``code`` (from the file ``script`` when given) with its output relayed as worker ``name``."""
    relay.enabled = True
    popen, env = relay.spawn_options()
    if script is not None:
        script.write_text(code)
    argv = [sys.executable, str(script)] if script is not None else [sys.executable, "-c", code]
    child = subprocess.Popen(argv, env={**os.environ, **env}, **popen)
    relay.follow(child, name)
    return child


def test_worker_output_becomes_one_record_per_event(collected, tmp_path):
    relay = WorkerOutputRelay()
    child = relayed(relay, CHATTY_CHILD, script=tmp_path / "chatty.py")
    assert child.wait(30) == 0
    assert relay.drain(5)
    by_message = {r.getMessage(): r for r in collected.records}
    hello = by_message["hello from stdout"]
    assert (hello.levelno, hello.output, hello.worker, hello.worker_pid) == (logging.INFO, "stdout", "x", child.pid)
    assert by_message["an array:\n [[0 1 2]\n [3 4 5]]"].output == "stdout"    # indented rows join their line
    assert by_message["libfoo: a C message"].levelno == logging.WARNING
    warning = next(r for r in collected.records if "RuntimeWarning" in r.getMessage())
    assert "divide by zero" in warning.getMessage() and "np.float32(1) / np.float32(0)" in warning.getMessage()
    chained = by_message["ValueError: chained"]                                # one record, both tracebacks
    assert chained.levelno == logging.ERROR
    assert chained.exc_text.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError" in chained.exc_text and "direct cause" in chained.exc_text
    failure = by_message["worker 'x' failed: RuntimeError: boom"]              # the framed report
    assert failure.levelno == logging.ERROR and failure.exc_text.endswith("RuntimeError: boom")
    assert by_message["a last line without its newline"].output == "stdout"
    assert len(collected.records) == 7
    assert not any("\x1e" in r.getMessage() for r in collected.records)


def test_a_flooding_worker_is_never_blocked_even_while_the_log_sink_is_stuck(collected):
    """200,000 lines (over 3 MB, far more than a pipe holds) while no record can be written at all:
    the writer still finishes; the relay keeps a bounded number, counts the rest and says so once."""
    gate = threading.Event()
    collected.gate = gate
    relay = WorkerOutputRelay(rate=50, burst=100, queue_size=500)
    child = relayed(relay, "import sys\nfor i in range(200000):\n    print(f'frame {i:08d} of a chatty kernel')\n")
    try:
        assert child.wait(60) == 0, "the worker blocked on its output pipe"
    finally:
        gate.set()
    assert relay.drain(10)
    frames = [r for r in collected.records if r.getMessage().startswith("frame ")]
    notes = [r.getMessage() for r in collected.records if r.name == "shmpiped.worker_output"]
    assert 100 <= len(frames) < 10000
    assert relay.dropped("x") == 200000 - len(frames) - relay.queue_dropped
    assert len([n for n in notes if "lines beyond that are dropped" in n]) == 1
    assert any(f"{relay.dropped('x')} of its output lines were dropped" in n for n in notes)


def test_framed_report_survives_the_rate_limit(collected):
    relay = WorkerOutputRelay(rate=1, burst=1)
    code = ("import sys\nfor i in range(5000):\n    print(i)\nsys.stdout.flush()\n"
            f"sys.stderr.write({format_event_line('ERROR', 'the report', 'Traceback ...')!r})\n")
    child = relayed(relay, code)
    assert child.wait(30) == 0 and relay.drain(5)
    assert [r.exc_text for r in collected.records if r.getMessage() == "the report"] == ["Traceback ..."]


# ---------------------------------------------------------------------- the daemon


def reset_connection(port: int, payload: bytes) -> None:
    """Connect, send ``payload``, and close with RST (SO_LINGER 0) instead of FIN."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_json_logs_are_one_event_per_line_whatever_workers_and_clients_do(tmp_path, namespace):
    port = free_port()
    pipeline = tmp_path / "noisy.yaml"
    pipeline.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: input, shape: [4], dtype: float32}\n"
        "  - {name: output, shape: [4], dtype: float32}\n"
        "sources:\n"
        "  - {name: camera, kind: synthetic.array, stream: input, parameters: {pattern: ramp, rate_hz: 500}}\n"
        "kernels:\n"
        "  - {name: noisy, kind: test.noisy_copy, input: input, output: output, parameters: {fail_after: 400}}\n")
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "shmpiped.cli", "run", str(pipeline), "--log-format", "json",
             "--http-address", f"127.0.0.1:{port}", "--control-socket", "none", "--restart-budget", "50",
             "--backoff-initial", "0.05", "--status-interval", "0.5"],
            env={**os.environ, "PYTHONPATH": install_plugin(tmp_path / "plugin")},
            stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            def events():
                return [json.loads(line) for line in stderr_path.read_text().splitlines()]

            wait_for(lambda: any("noisy kernel gave up" in e["message"] for e in events()), timeout=30)
            wait_for(lambda: any(e["logger"] == "shmpiped.http" or "http://" in e["message"] for e in events()))
            for _ in range(60):  # clients that reset mid-request, and right after asking for /status
                reset_connection(port, b"GET /status HTTP/1.1\r\nHost: x\r\n")
                reset_connection(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.0)
        finally:
            daemon.terminate()
            out, _ = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert out == ""
    lines = stderr_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "pid"} <= set(e) for e in events)
    worker = [e for e in events if e["logger"] == "shmpiped.worker.noisy"]
    assert any(e["output"] == "stdout" and e["message"].startswith("noisy frame ") for e in worker)
    assert any(e["message"] == "libnoisy: a message written to fd 2 by C code" and e["level"] == "WARNING"
               for e in worker)
    assert any("RuntimeWarning: divide by zero" in e["message"] and "self.one / self.zero" in e["message"]
               for e in worker)
    failures = [e for e in worker if e["level"] == "ERROR" and "noisy kernel gave up" in e["message"]]
    assert failures and all(e["exception"].startswith("Traceback (most recent call last):") for e in failures)
    assert all('raise RuntimeError(f"noisy kernel gave up' in e["exception"] for e in failures)
    assert len({e["worker_pid"] for e in worker}) >= 2  # restarted, and still relayed
    notes = [e["message"] for e in events if e["logger"] == "shmpiped.worker_output"]
    assert sum("lines beyond that are dropped" in n for n in notes) == 1
    assert any("of its output lines were dropped" in n for n in notes)
    assert [e["message"] for e in events if e["logger"] == "shmpiped.http"] == [
        f"serving /metrics /healthz /readyz /status on http://127.0.0.1:{port}"]  # 120 resets: not a line
    assert not any("Traceback" in line for line in lines if '"exception"' not in line)
    assert segments_of(namespace) == []
