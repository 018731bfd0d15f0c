"""A test-only kernel for tests/test_systemd.py: cpu.scale that takes ``start_delay_s`` to construct."""

import time

from shmpiped.kernels.elementwise import ScaleKernel


class SlowStartScale(ScaleKernel):
    kind = "systest.slow_start_scale"

    def __init__(self, context):
        super().__init__(context)
        time.sleep(float(context.config.parameters.get("start_delay_s", 4.0)))
