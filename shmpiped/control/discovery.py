"""Finding the control planes that run on this machine (shmpipeline's ``control.discovery``).

A daemon serving HTTP leaves one small JSON record (pid, host, port, whether a
token is required, start time) in ``$TMPDIR/shmpipeline-control-servers/``,
named ``<pid>-<port>.json`` -- the folder and format shmpipeline 1.3.0 uses --
so shmpipeline's GUI and ``discover_local_servers`` find shmpiped daemons and
ours finds ``shmpipeline serve`` processes.  Records of processes that are
gone, or that cannot be read, are removed by whoever looks.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LocalControlServerRecord",
    "LocalControlServerRegistration",
    "discover_local_servers",
    "discovery_directory",
    "terminate_local_server",
]

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def discovery_directory() -> Path:
    """The folder of discovery records (created when missing)."""
    path = Path(tempfile.gettempdir()) / "shmpipeline-control-servers"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class LocalControlServerRecord:
    """One control plane on this machine, as its discovery record describes it."""

    pid: int
    host: str
    port: int
    token_required: bool = False
    started_at: float = 0.0

    @property
    def connect_host(self) -> str:
        """Where to connect: a server bound to every interface is reached on loopback."""
        if self.host in _WILDCARD_HOSTS:
            return "127.0.0.1"
        return self.host

    @property
    def base_url(self) -> str:
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"http://{host}:{self.port}"

    @property
    def discovery_path(self) -> Path:
        return discovery_directory() / f"{self.pid}-{self.port}.json"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "LocalControlServerRecord":
        return cls(pid=int(payload["pid"]), host=str(payload["host"]), port=int(payload["port"]),
                   token_required=bool(payload.get("token_required", False)),
                   started_at=float(payload.get("started_at", 0.0)))


class LocalControlServerRegistration:
    """This process's record: ``register()`` writes it (atomically), ``close()`` removes it."""

    def __init__(self, *, host: str, port: int, token_required: bool) -> None:
        self._record = LocalControlServerRecord(pid=os.getpid(), host=host, port=port,
                                                token_required=token_required, started_at=time.time())
        self._path: Path | None = None

    @property
    def record(self) -> LocalControlServerRecord:
        return self._record

    def register(self) -> None:
        path = self._record.discovery_path
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(self._record.to_dict(), sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
        self._path = path

    def close(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None


def discover_local_servers() -> list[LocalControlServerRecord]:
    """The control planes running here, by port then pid; stale or unreadable records are removed."""
    records = []
    for path in sorted(discovery_directory().glob("*.json")):
        try:
            record = LocalControlServerRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not _pid_exists(record.pid):
            path.unlink(missing_ok=True)
            continue
        records.append(record)
    return sorted(records, key=lambda record: (record.port, record.pid))


def terminate_local_server(record: LocalControlServerRecord) -> None:
    """Ask the server's process to stop (SIGTERM: a shmpiped daemon then exits 0)."""
    os.kill(record.pid, signal.SIGTERM)


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
