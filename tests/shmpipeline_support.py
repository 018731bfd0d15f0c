"""Throwaway venvs for the shmpipeline-compatibility tests, installed offline from a wheelhouse.

Each venv is ``python -m venv --system-site-packages`` of the test interpreter,
so it sees shmpiped (the editable install), NumPy and PyYAML, plus what a test
installs into it with pip, from ``WHEELHOUSE`` only (``--no-index``):

- the real shmpipeline 1.3.0 and its dependencies, downloaded by
  ``.ci/install-shmpipeline-wheels.sh``;
- wheels built here from ``tests/fixtures/plugin_pkg`` (a plugin package
  written for shmpipeline) and ``compat/shmpipeline`` (the import-name shim),
  built from copies of their trees with the wheelhouse's setuptools.

Without the wheels the tests skip with the reason, except under ``CI=true``,
where they fail (``conftest.unavailable``): CI runs the install script first.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import conftest

REPO = Path(__file__).resolve().parent.parent
PLUGIN_PROJECT = REPO / "tests" / "fixtures" / "plugin_pkg"
SHIM_PROJECT = REPO / "compat" / "shmpipeline"
WHEELHOUSE = Path(
    os.environ.get("SHMPIPED_WHEELHOUSE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shmpiped" / "wheelhouse"
)
#: What the wheelhouse must hold: the real shmpipeline and the build backend.
NEEDED_WHEELS = ("shmpipeline-1.3.0-", "numba-", "llvmlite-", "pyshmem-", "setuptools-", "wheel-")

unavailable = functools.partial(conftest.unavailable, suite="shmpipeline compatibility tests")


def require_wheelhouse() -> None:
    """Skip (fail under CI) unless the wheelhouse holds every wheel the venvs need."""
    present = [path.name for path in WHEELHOUSE.glob("*.whl")] if WHEELHOUSE.is_dir() else []
    missing = [prefix.rstrip("-") for prefix in NEEDED_WHEELS
               if not any(name.startswith(prefix) for name in present)]
    if missing:
        unavailable(f"no wheel for {', '.join(missing)} in {WHEELHOUSE}: run .ci/install-shmpipeline-wheels.sh")


def _pip(*args: str, python: str | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    if python is not None:
        command += ["--python", python]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def build_wheel(project: Path, workdir: Path) -> Path:
    """The wheel of ``project``, built offline from a copy of it (the tree stays clean)."""
    source = workdir / f"src-{project.name}"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    out = workdir / f"wheel-{project.name}"
    _pip("wheel", "--no-index", "--find-links", str(WHEELHOUSE), "--no-deps", "--wheel-dir", str(out), str(source))
    (wheel,) = out.glob("*.whl")
    return wheel


class Venv:
    """A venv over the test interpreter's site-packages; pip installs come from the wheelhouse only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                       check=True, capture_output=True, timeout=60)
        self.python = str(path / "bin" / "python")

    def install(self, *requirements: str, deps: bool = True) -> None:
        _pip("install", "--no-index", "--find-links", str(WHEELHOUSE), *([] if deps else ["--no-deps"]),
             *requirements, python=self.python)

    def run(self, *args: str, cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """``python args...`` in this venv (no PYTHONPATH: what the venv has is what runs)."""
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        return subprocess.run([self.python, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)

    def run_json(self, *args: str, cwd: Path, timeout: float = 120.0):
        """Run, require exit 0, and parse the last line of stdout as JSON."""
        result = self.run(*args, cwd=cwd, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return json.loads(result.stdout.strip().splitlines()[-1])
