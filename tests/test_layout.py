"""The house's two halves: the library (shmpipeline's public modules) and the service around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import run_python


def test_the_library_never_imports_the_service():
    """The command line (cli*.py) is the service's face; everything else is the library."""
    result = run_python(
        "import importlib, json, pathlib, sys\n"
        "import shmpiped\n"
        "root = pathlib.Path(shmpiped.__file__).parent\n"
        "library = sorted('.'.join(('shmpiped', *p.relative_to(root).with_suffix('').parts)).removesuffix('.__init__')\n"
        "                 for p in root.rglob('*.py') if p.relative_to(root).parts[0] != 'service' and not p.name.startswith('cli'))\n"
        "for name in library:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'library': library,\n"
        "                  'service': sorted(n for n in sys.modules if n.startswith('shmpiped.service'))}))\n")
    imported = json.loads(result.stdout)
    assert {"shmpiped.manager", "shmpiped.config", "shmpiped.worker", "shmpiped.shm.stream"} <= set(imported["library"])
    assert imported["service"] == []


def test_skips_are_summarised_once_per_cause(tmp_path):
    """A helper that skips inside 5 tests gives one summary line, not 5 (as pytest's -rs would).
    (Besides the library and the service, the test suite's own output is part of the house.)"""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import summarise_skips\n"
        "def pytest_terminal_summary(terminalreporter):\n"
        "    summarise_skips(terminalreporter)\n")
    (tmp_path / "test_causes.py").write_text(
        "import pytest\n"
        "def engine():\n"
        "    pytest.skip('Docker: no engine')\n"
        "@pytest.mark.parametrize('i', range(5))\n"
        "def test_needs_engine(i):\n"
        "    engine()\n"
        "def test_other():\n"
        "    pytest.skip('another cause')\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfExX",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(root)})
    lines = result.stdout.splitlines()
    assert "5 skipped: Docker: no engine (test_causes.py)" in lines, result.stdout
    assert "1 skipped: another cause (test_causes.py)" in lines
    assert sum("Docker: no engine" in line for line in lines) == 1
