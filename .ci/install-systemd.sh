#!/usr/bin/env bash
# What tests/test_systemd.py needs on a fresh Debian machine:
#   - systemd, for `systemd-analyze verify` of deploy/systemd/*.service;
#   - the Docker engine (Debian's docker.io) and debootstrap, for the test that boots a real
#     systemd as PID 1 in a container built locally (no registry is reachable).
# Idempotent: installs only what is missing, and starts dockerd only when no engine answers.
# Self-contained, but it takes the same lock as .ci/install-docker.sh, so that the two never
# install or start an engine at the same time.  Engine logs: /tmp/dockerd.log.
set -euo pipefail

exec 9>/tmp/shmpiped-install-docker.lock
flock 9

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)   # dockerd needs it; docker.io only recommends it
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
systemd-analyze --version | head -n 1

if docker info >/dev/null 2>&1; then
  docker version --format 'docker engine {{.Server.Version}} (already running)'
  exit 0
fi

# A dockerd killed with its machine leaves a pid file that keeps a new one from starting.
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] \
     && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    echo "dockerd (pid $pid) runs but does not answer; see /tmp/dockerd.log" >&2
    exit 1
  fi
  rm -f "$pidfile"
fi

echo "starting dockerd (log: /tmp/dockerd.log)"
nohup dockerd >>/tmp/dockerd.log 2>&1 </dev/null 9>&- &
dockerd_pid=$!
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || break   # it exited: no use waiting
  sleep 0.5
done
if ! docker info >/dev/null 2>&1; then
  echo "dockerd did not become ready; last lines of /tmp/dockerd.log:" >&2
  tail -n 30 /tmp/dockerd.log >&2 || true
  exit 1
fi
docker version --format 'docker engine {{.Server.Version}}'
