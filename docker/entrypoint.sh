#!/bin/sh
# The image's ENTRYPOINT: `shmpiped "$@"` (default `run`), as the one process of the
# container.  The pipeline is /etc/shmpiped/pipeline.yaml when it exists and neither
# SHMPIPED_PIPELINE nor a PIPELINE argument says otherwise; else the embedded demo.
# `docker run IMAGE validate FILE` runs another subcommand, `docker run IMAGE bash` a program.
# `exec` keeps no shell between Docker and the daemon, so SIGTERM reaches it directly;
# as PID 1 it goes under tini when the image has tini and no other init is in front.
set -eu
if [ -z "${SHMPIPED_PIPELINE:-}" ] && [ -f /etc/shmpiped/pipeline.yaml ]; then
    export SHMPIPED_PIPELINE=/etc/shmpiped/pipeline.yaml
fi
if [ $# -eq 0 ]; then
    set -- run
fi
case "$1" in
    -*) set -- run "$@" ;;   # `docker run IMAGE --log-format json`: options of `run`
    shmpiped) shift; [ $# -gt 0 ] || set -- run ;;   # `docker run IMAGE shmpiped kinds`
    run|ctl|validate|describe|view|kinds|shm|bench) ;;
    *)  # another program of the image (`docker run -it IMAGE bash`), else a newer subcommand
        if command -v "$1" >/dev/null 2>&1; then exec "$@"; fi ;;
esac
if [ "$$" = 1 ] && command -v tini >/dev/null 2>&1; then
    exec tini -- shmpiped "$@"
fi
exec shmpiped "$@"
