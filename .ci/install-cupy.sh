#!/usr/bin/env bash
# CuPy (the GPU extra) without a GPU: CI machines have no CUDA device, but with the real
# cupy-cuda12x installed the tests exercise the real "CuPy present, no usable device" path
# and check every CuPy function shmpiped calls against the real CuPy namespace.
set -euo pipefail
python3 -c 'import cupy' 2>/dev/null || python3 -m pip install -q 'cupy-cuda12x>=13'
