#!/usr/bin/env bash
# Wheels for the shmpipeline-compatibility tests (tests/test_shmpipeline_*.py): shmpipeline
# 1.3.0 and its dependencies, for the test that runs plugins beside the real shmpipeline,
# and the build backend (setuptools, wheel) that the tests' plugin package
# (tests/fixtures/plugin_pkg) and compat/shmpipeline are built with.  The tests create
# throwaway venvs and install from this directory with --no-index, so they run offline.
# Nothing is installed into this Python.  The directory is $SHMPIPED_WHEELHOUSE, else
# ~/.cache/shmpiped/wheelhouse (tests/shmpipeline_support.py looks in the same place).
set -euo pipefail
wheelhouse="${SHMPIPED_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/shmpiped/wheelhouse}"
mkdir -p "$wheelhouse"
python3 -m pip download -q --only-binary=:all: --dest "$wheelhouse" \
  'shmpipeline==1.3.0' 'setuptools>=68' 'wheel>=0.41'
ls "$wheelhouse"
