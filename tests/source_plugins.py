"""Test-only source plugins, importable by source processes and installable for the real daemon.

``FlakySource`` (``test.flaky_source``) writes a counter into its one stream;
the first time it runs (no ``marker`` file yet) it creates the marker and
raises after ``fail_after`` reads, so a restarted process runs for good.
``install_plugin`` makes it an installed plugin (an entry point), so that the
real daemon (`shmpiped run`) can load it by its kind.
"""

from __future__ import annotations

import os

import numpy as np

from shmpiped.kernels.base import Source


class FlakySource(Source):
    kind = "test.flaky_source"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        if len(config.streams) != 1:
            raise ValueError("test.flaky_source writes exactly one stream")

    def __init__(self, context):
        super().__init__(context)
        parameters = context.config.parameters
        self.marker = str(parameters["marker"])
        self.fail_after = int(parameters.get("fail_after", 10))
        self.period_s = float(parameters.get("period_s", 0.005))
        self.first_run = not os.path.exists(self.marker)
        if self.first_run:
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
        spec = context.stream_spec
        self.value = np.zeros(spec.shape, dtype=spec.dtype)
        self.reads = 0

    def read(self):
        if self.wait(self.period_s):
            return None
        self.reads += 1
        if self.first_run and self.reads > self.fail_after:
            raise RuntimeError(f"flaky camera unplugged after {self.fail_after} frames")
        self.value[...] = self.reads
        return self.value

    def plugin_metrics(self) -> dict:
        return {"reads": self.reads, "first_run": self.first_run, "pid": os.getpid()}


def install_plugin(directory) -> str:
    """Make ``directory`` hold an installed distribution whose ``shmpiped.sources`` entry point is
    test.flaky_source; returns the PYTHONPATH under which a ``shmpiped`` process finds it."""
    info = os.path.join(directory, "shmpiped_flaky_source_test-1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\nName: shmpiped-flaky-source-test\nVersion: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as handle:
        handle.write("[shmpiped.sources]\ntest.flaky_source = tests.source_plugins:FlakySource\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([os.fspath(directory), root])
