"""A client of the HTTP control plane (shmpipeline's ``RemoteManagerClient``), on the standard library.

Same methods, arguments and answers as shmpipeline 1.3.0's client, so scripts
written against ``shmpipeline.control`` drive a shmpiped daemon (or a
``shmpipeline serve``) unchanged; it needs no third-party package
(``http.client``, one connection per request; an event stream holds its own).
A refused or failed request raises ``RemoteManagerError`` with the server's
``detail``, the HTTP ``status_code`` and the decoded ``payload``; a server that
cannot be reached raises it with ``status_code`` None.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import asdict, is_dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

__all__ = ["RemoteManagerClient", "RemoteManagerError"]

_LIFECYCLE_REQUEST_TIMEOUT = 60.0
_STATE_CHANGE_REQUEST_TIMEOUT = 15.0
_STOP_TIMEOUT_BUFFER = 5.0


class RemoteManagerError(RuntimeError):
    """The control plane refused or failed a request, or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None, payload: Any | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.payload = payload
        self.detail = message


class RemoteManagerClient:
    """One control plane at ``base_url`` (``http://host:port``), with an optional bearer ``token``."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0, client=None) -> None:
        self._base_url = base_url.rstrip("/")
        parts = urlsplit(self._base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http://HOST:PORT or https://HOST:PORT, got {base_url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._default_timeout = timeout
        self._token = token
        self._client = client  # an httpx-style client (``request(method, path, ...)``), used when given

    # -- lifecycle of the client itself (nothing is kept open between requests)
    def close(self) -> None:
        return None

    def __enter__(self) -> "RemoteManagerClient":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- reads
    def health(self) -> dict[str, Any]:
        return self._request_json("GET", "/health")

    def info(self) -> dict[str, Any]:
        return self._request_json("GET", "/info")

    def document(self) -> dict[str, Any]:
        return self._request_json("GET", "/document")

    def status(self) -> dict[str, Any]:
        return self._request_json("GET", "/status")

    def snapshot(self) -> dict[str, Any]:
        return self._request_json("GET", "/snapshot")

    def graph(self) -> dict[str, Any]:
        return self._request_json("GET", "/graph")

    def validate_document(self, document: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request_json("POST", "/document/validate", payload=document)

    # -- changes
    def update_document(self, document: dict[str, Any]) -> dict[str, Any]:
        return self._request_json("PUT", "/document", payload=document, timeout=_LIFECYCLE_REQUEST_TIMEOUT)

    def load_document_path(self, path: str) -> dict[str, Any]:
        return self._request_json("POST", "/document/load", payload={"path": path},
                                  timeout=_LIFECYCLE_REQUEST_TIMEOUT)

    def build(self) -> dict[str, Any]:
        return self._request_json("POST", "/commands/build", timeout=_LIFECYCLE_REQUEST_TIMEOUT)

    def start(self) -> dict[str, Any]:
        return self._request_json("POST", "/commands/start", timeout=_LIFECYCLE_REQUEST_TIMEOUT)

    def pause(self) -> dict[str, Any]:
        return self._request_json("POST", "/commands/pause", timeout=_STATE_CHANGE_REQUEST_TIMEOUT)

    def resume(self) -> dict[str, Any]:
        return self._request_json("POST", "/commands/resume", timeout=_STATE_CHANGE_REQUEST_TIMEOUT)

    def stop(self, *, timeout: float = 5.0, force: bool = False) -> dict[str, Any]:
        return self._request_json("POST", "/commands/stop", payload={"timeout": timeout, "force": force},
                                  timeout=max(self._default_timeout, timeout + _STOP_TIMEOUT_BUFFER))

    def shutdown(self, *, unlink: bool = True, force: bool = False) -> dict[str, Any]:
        return self._request_json("POST", "/commands/shutdown", payload={"unlink": unlink, "force": force},
                                  timeout=_STATE_CHANGE_REQUEST_TIMEOUT)

    def reload(self) -> dict[str, Any]:
        """Re-read the daemon's pipeline file and apply what changed (shmpiped only)."""
        return self._request_json("POST", "/commands/reload", timeout=_LIFECYCLE_REQUEST_TIMEOUT)

    def restart(self, worker: str | None = None) -> dict[str, Any]:
        """Restart one worker by name, or every failed one (shmpiped only)."""
        return self._request_json("POST", "/commands/restart", payload={"worker": worker},
                                  timeout=_STATE_CHANGE_REQUEST_TIMEOUT)

    def start_synthetic_input(self, spec: Any) -> dict[str, Any]:
        if is_dataclass(spec) and not isinstance(spec, type):
            spec = asdict(spec)
        return self._request_json("POST", "/synthetic/start", payload=spec, timeout=_STATE_CHANGE_REQUEST_TIMEOUT)

    def stop_synthetic_input(self, stream_name: str, *, timeout: float = 2.0) -> dict[str, Any]:
        return self._request_json("POST", "/synthetic/stop", payload={"stream_name": stream_name, "timeout": timeout},
                                  timeout=max(self._default_timeout, timeout + _STOP_TIMEOUT_BUFFER))

    # -- events
    def iter_events(self, *, last_event_id: int | None = None) -> Iterator[dict[str, Any]]:
        """The server's events (``{"id", "event", "data"}``) as they arrive, until the stream ends."""
        headers = self._headers()
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        connection = self._connection(self._default_timeout)
        try:
            response = self._send(connection, "GET", "/events", None, headers)
            if response.status >= 400:
                self._raise(response.status, response.read())
            event_id, name, data = None, "message", []
            while True:
                raw = response.readline()
                if not raw:
                    return
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if event_id is None and not data and name == "message":
                        continue
                    yield {"id": int(event_id) if event_id is not None else None, "event": name,
                           "data": json.loads("\n".join(data)) if data else None}
                    event_id, name, data = None, "message", []
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "id":
                    event_id = value
                elif key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteManagerError(f"event stream from {self._base_url} ended: {exc}") from exc
        finally:
            connection.close()

    def stream_events(self, *, last_event_id: int | None = None, reconnect: bool = True,
                      initial_backoff: float = 0.5, max_backoff: float = 30.0, backoff_factor: float = 2.0,
                      sleeper: Callable[[float], None] | None = None,
                      should_continue: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
        """``iter_events`` that reconnects after a drop (doubling back-off, reset by each event), resuming
        with ``Last-Event-ID`` from the last event seen; ``reconnect=False``: one connection only."""
        sleep = sleeper if sleeper is not None else time.sleep
        last_id = last_event_id
        backoff = initial_backoff
        while should_continue is None or should_continue():
            try:
                for event in self.iter_events(last_event_id=last_id):
                    if event.get("id") is not None:
                        last_id = event["id"]
                    backoff = initial_backoff
                    yield event
            except RemoteManagerError:
                if not reconnect:
                    raise
            if not reconnect or (should_continue is not None and not should_continue()):
                return
            sleep(min(backoff, max_backoff))
            backoff = min(backoff * backoff_factor, max_backoff)

    # -- plumbing
    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout)

    def _send(self, connection, method: str, path: str, body: bytes | None, headers: dict):
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            return connection.getresponse()
        except (ConnectionError, socket.gaierror) as exc:
            raise RemoteManagerError(f"could not reach control server at {self._base_url}") from exc
        except TimeoutError as exc:
            raise RemoteManagerError(f"request to {self._base_url}{path} timed out; the server may still be "
                                     "processing the command") from exc

    def _request_json(self, method: str, path: str, *, payload: Any = None, timeout: float | None = None):
        headers = self._headers()
        if self._client is not None:
            kwargs: dict[str, Any] = {"headers": headers}
            if payload is not None:
                kwargs["json"] = payload
            response = self._client.request(method, path, **kwargs)
            status, content = response.status_code, response.content
        else:
            body = None
            if payload is not None:
                body = json.dumps(payload).encode()
                headers["Content-Type"] = "application/json"
            connection = self._connection(timeout or self._default_timeout)
            try:
                response = self._send(connection, method, path, body, headers)
                status, content = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, RemoteManagerError):
                    raise
                raise RemoteManagerError(f"request to {self._base_url}{path} failed: {exc}") from exc
            finally:
                connection.close()
        if status >= 400:
            self._raise(status, content)
        if not content:
            return {}
        return json.loads(content)

    @staticmethod
    def _raise(status: int, content: bytes):
        text = content.decode("utf-8", "replace")
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        detail = str(payload["detail"]) if isinstance(payload, dict) and "detail" in payload else text
        raise RemoteManagerError(detail, status_code=status, payload=payload)
