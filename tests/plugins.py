"""Test-only kernels, importable by worker processes (they run from the repository root)."""

from __future__ import annotations

import time

from shmpiped.kernels.elementwise import CopyKernel


class SlowStartCopy(CopyKernel):
    """cpu.copy that takes ``start_delay_s`` to construct (a slow GPU initialisation, say)."""

    kind = "test.slow_start_copy"

    def __init__(self, context):
        super().__init__(context)
        time.sleep(float(context.config.parameters.get("start_delay_s", 1.0)))


class SleepyCopy(CopyKernel):
    """cpu.copy that spends ``sleep_s`` per frame (to be lapped by a fast writer)."""

    kind = "test.sleepy_copy"

    def __init__(self, context):
        super().__init__(context)
        self.sleep_s = float(context.config.parameters.get("sleep_s", 0.01))

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        time.sleep(self.sleep_s)
        super().compute_into(trigger_input, output, auxiliary_inputs)


class FailingStartCopy(CopyKernel):
    """cpu.copy whose construction raises (a device that cannot be opened, say)."""

    kind = "test.failing_start_copy"

    def __init__(self, context):
        super().__init__(context)
        raise RuntimeError(context.config.parameters.get("message", "cannot open the device"))
