#!/usr/bin/env bash
# What tests/test_systemd.py needs on a fresh Debian machine: systemd (for
# `systemd-analyze verify` of deploy/systemd/*.service), plus the Docker engine and
# debootstrap for the test that boots a real systemd as PID 1 in a locally built
# container; those come from .ci/install-docker.sh (idempotent, locked).
set -euo pipefail
if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq systemd
fi
systemd-analyze --version | head -n 1
bash "$(dirname "$0")/install-docker.sh"
