#!/bin/sh
# Builder stage of the Dockerfile: fill a wheelhouse with shmpiped and its dependencies,
# then install them from it, offline, into a venv that the runtime stage copies.
#
#   GPU=1|auto|0 sh build-wheels.sh SOURCE WHEELHOUSE VENV
#
# A wheelhouse that already holds wheels makes the whole build offline (pip --no-index):
# nothing is downloaded, shmpiped is compiled only when its wheel is missing.  An empty
# one is filled from PyPI.  gcc and the Python headers are installed (apt) only when
# shmpiped must be compiled and they are missing; they stay in this stage.
set -eu
src=$1
wheelhouse=$2
venv=$3
gpu=${GPU:-1}
cupy_spec='cupy-cuda12x>=13'

log() { echo "build-wheels: $*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need $* but this base has no apt-get"
    log "installing $* (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

mkdir -p "$wheelhouse"
if ls "$wheelhouse"/*.whl >/dev/null 2>&1; then
    offline=1
    log "offline build from the wheelhouse: $(ls "$wheelhouse"/*.whl | wc -l) wheels"
else
    offline=0
    log "empty wheelhouse: wheels come from the package index"
fi

case "$gpu" in
    1|true|yes) with_cupy=1 ;;
    auto) with_cupy=auto ;;
    0|false|no|"") with_cupy=0 ;;
    *) die "GPU must be 1, auto or 0, not '$gpu'" ;;
esac
if [ "$with_cupy" = 1 ] && [ "$offline" = 1 ] && ! ls "$wheelhouse"/cupy_cuda12x-*.whl >/dev/null 2>&1; then
    die "GPU=1 but the wheelhouse has no cupy_cuda12x wheel (add it and its dependencies, or use GPU=auto or GPU=0)"
fi

# Python with venv (Debian and Ubuntu ship ensurepip in python3-venv).
missing=""
command -v python3 >/dev/null 2>&1 || missing="python3"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing python3-venv"
[ -z "$missing" ] || apt_install $missing ca-certificates

python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
if [ "$offline" = 1 ]; then
    index="--no-index --find-links $wheelhouse"
else
    index="--find-links $wheelhouse"
fi

# shmpiped's wheel: prebuilt, or compiled from the source (the C extension needs gcc and Python.h).
if ls "$wheelhouse"/shmpiped-*.whl >/dev/null 2>&1; then
    log "using $(cd "$wheelhouse" && ls shmpiped-*.whl | tr '\n' ' ')"
else
    need=""
    command -v gcc >/dev/null 2>&1 || need="gcc libc6-dev"
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || need="$need python3-dev"
    if [ -n "$need" ]; then
        [ "$offline" = 0 ] || log "compiling shmpiped offline needs $need in BUILDER_IMAGE; trying apt"
        apt_install $need
    fi
    log "compiling shmpiped from $src"
    # shellcheck disable=SC2086
    $pip wheel -q $index --wheel-dir "$wheelhouse" "$src"
fi

# The GPU extra: cupy-cuda12x and its dependencies (CuPy 14: cuda-pathfinder; CuPy 13: fastrlock).
if [ "$with_cupy" != 0 ] && [ "$offline" = 0 ]; then
    # shellcheck disable=SC2086
    $pip download -q $index --only-binary=:all: --dest "$wheelhouse" "$cupy_spec" \
        || { [ "$with_cupy" = auto ] || die "cannot download $cupy_spec (GPU=1; use GPU=auto or GPU=0)"; }
fi

# Install from the wheelhouse only: what is installed is exactly what it holds.
# shellcheck disable=SC2086
$pip install -q --no-index --find-links "$wheelhouse" shmpiped \
    || die "the wheelhouse lacks shmpiped or one of its dependencies for $(python3 -V)"
if [ "$with_cupy" != 0 ]; then
    if $pip install -q --no-index --find-links "$wheelhouse" "$cupy_spec"; then
        log "installed $($venv/bin/python -c 'import importlib.metadata as m; print("cupy-cuda12x", m.version("cupy-cuda12x"))')"
    elif [ "$with_cupy" = auto ]; then
        log "no $cupy_spec wheel for $(python3 -V): CPU-only image (GPU=auto)"
    else
        die "no $cupy_spec wheel for $(python3 -V) in the wheelhouse (GPU=1; use GPU=auto or GPU=0)"
    fi
fi
"$venv/bin/shmpiped" --help >/dev/null
"$venv/bin/python" -c 'import shmpiped.shm._sync'
log "venv $venv ready: $($venv/bin/python -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"
