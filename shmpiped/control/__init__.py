"""Remote control of a pipeline (shmpipeline's ``control`` package): the HTTP client, local discovery and
``ManagerService``, the in-process service that serialises control of one ``PipelineManager``.

``import shmpipeline.control`` resolves here through the compatibility alias (``shmpiped.compat``).
The server side of the HTTP control plane is the daemon's (``shmpiped serve``, ``shmpiped run
--token-file``; ``shmpiped.service.control_plane``).
"""

from .client import RemoteManagerClient, RemoteManagerError
from .discovery import discover_local_servers
from .service import ManagerService

__all__ = ["ManagerService", "RemoteManagerClient", "RemoteManagerError", "discover_local_servers"]
