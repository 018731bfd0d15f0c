"""The exception hierarchy every layer of shmpiped raises.

Kept free of imports so that any module may use it.
"""

from __future__ import annotations


class ShmPipelineError(Exception):
    """Base class of every error shmpiped raises on purpose."""


class ConfigValidationError(ShmPipelineError, ValueError):
    """The pipeline description is invalid.

    ``errors`` holds every message found (``str(exc)`` is the first one), so
    that ``shmpiped validate`` can report them all at once.
    """

    def __init__(self, message: str | None = None, errors: list[str] | tuple[str, ...] = ()):
        self.errors: tuple[str, ...] = tuple(errors) if errors else ((message,) if message else ())
        super().__init__(message if message is not None else (self.errors[0] if self.errors else ""))


class StateTransitionError(ShmPipelineError, RuntimeError):
    """A lifecycle method was called in a state that does not allow it."""


class WorkerProcessError(ShmPipelineError, RuntimeError):
    """A worker (or source/sink) failed, or did not start in time."""


class KernelExecutionError(ShmPipelineError, RuntimeError):
    """A kernel raised while computing a frame."""


class NamespaceBusyError(ShmPipelineError, RuntimeError):
    """The namespace's streams belong to another live process."""


class SharedMemoryError(ShmPipelineError, OSError):
    """A shared-memory segment could not be created, opened or is malformed."""
