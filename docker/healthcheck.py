"""The image's HEALTHCHECK: GET /healthz on the daemon's own HTTP address.

200 while the supervisor loop is alive (see the README).  The port is read from
SHMPIPED_HTTP_ADDRESS (default 0.0.0.0:9750) so that changing it does not break
the check; a wildcard host is reached through the loopback.
"""

import os
import sys
import urllib.request

address = os.environ.get("SHMPIPED_HTTP_ADDRESS", "0.0.0.0:9750")
host, _, port = address.rpartition(":")
host = host.strip("[]")
if host in ("", "0.0.0.0", "*"):
    host = "127.0.0.1"
elif host == "::":
    host = "::1"
if ":" in host:
    host = f"[{host}]"
try:
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"
    print(f"healthz: {exc}", file=sys.stderr)
    sys.exit(1)
