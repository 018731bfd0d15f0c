"""Running the real daemon (`shmpiped run`) in a subprocess, for the daemon and Prometheus tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .conftest import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pipeline(path, namespace, kind="cpu.scale", parameters="{factor: 2.0}", rate=200, read_timeout=0.2,
                   pattern="ramp"):
    path.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: input, shape: [4], dtype: float32}\n"
        "  - {name: output, shape: [4], dtype: float32}\n"
        "sources:\n"
        "  - name: camera\n"
        "    kind: synthetic.array\n"
        "    stream: input\n"
        f"    parameters: {{pattern: {pattern}, constant: 1.0, rate_hz: {rate}}}\n"
        "kernels:\n"
        "  - name: stage\n"
        f"    kind: {kind}\n"
        "    input: input\n"
        "    output: output\n"
        f"    read_timeout: {read_timeout}\n"
        f"    parameters: {parameters}\n")
    return path


class DaemonProcess:
    """`shmpiped run` in a subprocess, with its HTTP port and control socket; ``prefix`` runs it under
    another command (``setpriv ...``, ``prlimit ...``)."""

    def __init__(self, pipeline, namespace, tmp_path, *args, env=None, prefix=()):
        self.namespace = namespace
        self.port = free_port()
        self.socket = str(tmp_path / f"{namespace}.sock")
        self.log_path = tmp_path / f"daemon-{namespace}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        command = [*prefix, sys.executable, "-m", "shmpiped.cli", "run", str(pipeline),
                   "--http-address", f"127.0.0.1:{self.port}", "--control-socket", self.socket,
                   "--status-interval", "0.5", *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict:
        return json.loads(self.get("/status")[1])

    def wait_http(self, timeout=30) -> None:
        def up():
            assert self.process.poll() is None, self.output
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=timeout, interval=0.1)

    def wait_ready(self, timeout=30) -> None:
        self.wait_http(timeout)
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout=timeout, interval=0.1)

    def stop(self, timeout=20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if not self.log.closed:
                self.log.close()


def metric_value(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def worker_pids(namespace):
    out = subprocess.run(["pgrep", "-f", "shmpiped.worker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
