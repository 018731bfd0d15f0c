"""A test-only kernel that writes everything a real kernel might, importable by worker processes.

``NoisyCopy`` (``test.noisy_copy``) is cpu.copy that, as it starts, writes a
line to file descriptor 2 directly (as a C library does), and per frame prints
a line (a kernel printing per frame), triggers a NumPy warning once, and after
``fail_after`` frames raises.  ``install_plugin`` makes it an installed
plugin (an entry point), so the real daemon can run it.
"""

from __future__ import annotations

import os

import numpy as np

from shmpiped.kernels.elementwise import CopyKernel


class NoisyCopy(CopyKernel):
    kind = "test.noisy_copy"

    def __init__(self, context):
        super().__init__(context)
        self.fail_after = int(context.config.parameters.get("fail_after", 0))
        self.frames = 0
        self.one = np.float32(1.0)
        self.zero = np.float32(0.0)
        os.write(2, b"libnoisy: a message written to fd 2 by C code\n")

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        self.frames += 1
        print(f"noisy frame {self.frames}")
        if self.frames == 2:
            with np.errstate(divide="warn"):
                self.one / self.zero  # RuntimeWarning: divide by zero
        if self.fail_after and self.frames >= self.fail_after:
            raise RuntimeError(f"noisy kernel gave up after {self.frames} frames")
        super().compute_into(trigger_input, output, auxiliary_inputs)


def install_plugin(directory) -> str:
    """Make ``directory`` hold an installed distribution whose ``shmpiped.kernels`` entry point is
    test.noisy_copy; returns the PYTHONPATH under which a ``shmpiped`` process finds it (and this module)."""
    info = os.path.join(directory, "shmpiped_noisy_test-1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\nName: shmpiped-noisy-test\nVersion: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as handle:
        handle.write("[shmpiped.kernels]\ntest.noisy_copy = tests.noisy_kernels:NoisyCopy\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([os.fspath(directory), root])
