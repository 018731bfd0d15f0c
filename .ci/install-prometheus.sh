#!/usr/bin/env bash
# Prometheus server and promtool (Debian's package) for the metrics, alert-rule and
# real-Prometheus tests.  The tests start their own server on loopback.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus
fi
# The package may start a service of its own where systemd runs: the tests need none.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl stop prometheus 2>/dev/null || true
fi
promtool --version | head -1
