"""The raise_error kernel, which fails every frame; supervision tests use it."""

from __future__ import annotations

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Kernel


class RaiseErrorKernel(Kernel):
    """Every compute raises ``RuntimeError(parameters['message'])``."""

    kind = "cpu.raise_error"

    @classmethod
    def validate_config(cls, config, shared_memory) -> None:
        super().validate_config(config, shared_memory)
        message = config.parameters.get("message")
        if not isinstance(message, str) or not message.strip():
            raise ConfigValidationError(f"kernel {config.name!r} requires a non-empty 'message' parameter")

    def __init__(self, context) -> None:
        super().__init__(context)
        self.message = context.config.parameters["message"]

    def compute_into(self, trigger_input, output, auxiliary_inputs) -> None:
        raise RuntimeError(self.message)
