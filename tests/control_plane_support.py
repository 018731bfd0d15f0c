"""The control-plane tests' helpers: a token file, JSON requests and SSE reads over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

from .daemon_support import DaemonProcess, free_port

TOKENS = {"read": "r-token-1", "control": "c-token-2", "admin": "a-token-3"}


def write_token_file(path, text=None, mode=0o600):
    if text is None:
        text = "# scopes\n" + "".join(f"{scope} {token}\n" for scope, token in TOKENS.items())
    path.write_text(text)
    os.chmod(path, mode)
    return path


def call(port, method, path, body=None, token=None, headers=None, timeout=30):
    """(status, decoded JSON or text) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode()


class EventReader:
    """One /events connection read line by line (``next_event`` parses one SSE event)."""

    def __init__(self, port, token=None, last_event_id=None, query=""):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.connection.request("GET", "/events" + query, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.keepalives = 0

    def next_event(self) -> dict | None:
        fields, data = {}, []
        while True:
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.keepalives += 1
                continue
            if not line:
                if fields or data:
                    return {"id": int(fields["id"]) if "id" in fields else None, "event": fields.get("event"),
                            "data": json.loads("\n".join(data)) if data else None}
                continue
            key, _, value = line.partition(": ")
            if key == "data":
                data.append(value)
            else:
                fields[key] = value

    def until(self, predicate, timeout=20.0) -> tuple[dict, list]:
        """The first event that satisfies ``predicate`` and every event read before it."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            event = self.next_event()
            assert event is not None, f"the stream ended; events so far: {[e['event'] for e in seen]}"
            if predicate(event):
                return event, seen
            seen.append(event)
        raise AssertionError(f"no matching event within {timeout} s; saw {[e['event'] for e in seen]}")

    def close(self):
        self.response.close()  # the response holds the socket: closing the connection alone keeps it open
        self.connection.close()


class ServeProcess(DaemonProcess):
    """`shmpiped serve FILE --port P ...` in a subprocess (stopped as DaemonProcess is)."""

    def __init__(self, pipeline, tmp_path, *args, env=None):
        self.port = free_port()
        self.log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        command = [sys.executable, "-m", "shmpiped.cli", "serve", str(pipeline), "--port", str(self.port),
                   "--control-socket", "none", *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})

    def wait_running(self, timeout=30):
        from .conftest import wait_for

        def running():
            assert self.process.poll() is None, self.output
            try:
                return call(self.port, "GET", "/health", token=TOKENS["read"], timeout=2)[1].get("state") == "running"
            except (OSError, AttributeError):
                return False

        wait_for(running, timeout=timeout, interval=0.1)
