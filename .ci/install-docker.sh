#!/usr/bin/env bash
# Docker engine (Debian's docker.io) and debootstrap for the container tests, which
# build their base image locally (no registry is reachable).  Idempotent: installs
# only what is missing, and starts dockerd only when no engine answers (another
# suite may share the one already running).  Engine logs: /tmp/dockerd.log.
set -euo pipefail

# Two suites may call this at the same time: one installer and one dockerd at once.
exec 9>/tmp/shmpiped-install-docker.lock
flock 9

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# The engine needs these at run time; docker.io recommends rather than requires some.
command -v iptables >/dev/null 2>&1 || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

# A dockerd that was killed (a machine reused after a session ended) leaves its pid file, and
# a new one refuses to start while that pid names a process, even a zombie; its containerd may
# also still be on its way out.  So: clear a stale pid file, start, and retry once or twice.
clear_stale_pidfile() {
  local pidfile=/var/run/docker.pid pid state
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && [ -n "$state" ] && [ "$state" != Z ]; then
    echo "dockerd (pid $pid) runs but does not answer; see /tmp/dockerd.log" >&2
    exit 1
  fi
  rm -f "$pidfile"
}

for attempt in 1 2 3; do
  docker info >/dev/null 2>&1 && break
  clear_stale_pidfile
  echo "starting dockerd, attempt $attempt (log: /tmp/dockerd.log)"
  nohup dockerd >>/tmp/dockerd.log 2>&1 </dev/null 9>&- &   # without the lock
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || break   # it exited: no use waiting
    sleep 0.5
  done
  docker info >/dev/null 2>&1 && break
  kill "$dockerd_pid" 2>/dev/null || true
  wait "$dockerd_pid" 2>/dev/null || true
  sleep 2
done

if ! docker info >/dev/null 2>&1; then
  echo "dockerd did not become ready; last lines of /tmp/dockerd.log:" >&2
  tail -n 30 /tmp/dockerd.log >&2 || true
  exit 1
fi
docker version --format 'docker engine {{.Server.Version}}'
