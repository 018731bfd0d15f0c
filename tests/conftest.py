"""Shared fixtures: unique namespaces, and a check that nothing is left in /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from shmpiped.shm import layout


def segments_of(namespace: str) -> list[str]:
    block = layout.namespace_segment_name(namespace)
    return sorted(n for n in os.listdir(layout.DEV_SHM) if n == block or n.startswith(block + "."))


@pytest.fixture
def namespace():
    """A fresh namespace; the test fails if it leaves any segment of it behind."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    leftover = segments_of(name)
    for entry in leftover:
        try:
            os.unlink(os.path.join(layout.DEV_SHM, entry))
        except FileNotFoundError:
            pass
    assert not leftover, f"segments left in /dev/shm: {leftover}"


def run_python(code: str, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a real separate process)."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def spawn_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
