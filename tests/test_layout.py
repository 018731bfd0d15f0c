"""The house's two halves: the library (shmpipeline's public modules) and the service around it."""

from __future__ import annotations

import json

from .conftest import run_python


def test_the_library_never_imports_the_service():
    result = run_python(
        "import importlib, json, pathlib, sys\n"
        "import shmpiped\n"
        "root = pathlib.Path(shmpiped.__file__).parent\n"
        "library = sorted('.'.join(('shmpiped', *p.relative_to(root).with_suffix('').parts)).removesuffix('.__init__')\n"
        "                 for p in root.rglob('*.py') if p.relative_to(root).parts[0] not in ('service', 'cli.py', 'cli_bench.py', 'cli_input.py'))\n"
        "for name in library:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'library': library,\n"
        "                  'service': sorted(n for n in sys.modules if n.startswith('shmpiped.service'))}))\n")
    imported = json.loads(result.stdout)
    assert {"shmpiped.manager", "shmpiped.config", "shmpiped.worker", "shmpiped.shm.stream"} <= set(imported["library"])
    assert imported["service"] == []
