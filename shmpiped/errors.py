"""The exception hierarchy every layer of shmpiped raises.

Kept free of imports (but the standard library's ``errno``) so that any module may use it.
"""

from __future__ import annotations

import errno as _errno


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


class ConfigFileUnreadable(ConfigValidationError):
    """The pipeline file does not exist or cannot be read (the daemon and the CLI exit 66, EX_NOINPUT)."""


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


class SystemLimitError(ShmPipelineError, OSError):
    """The machine ran out of a resource the pipeline needs: file descriptors, memory, processes.

    Nothing in the pipeline file is wrong; raising the limit (or freeing the
    resource) lets the same pipeline run.  ``of(exc, doing)`` turns an
    ``OSError`` whose errno says so into one of these, with a message naming
    the limit and its fix; the daemon exits with ``exit_status`` (71, EX_OSERR).
    """

    exit_status = 71  # EX_OSERR in sysexits.h

    #: errno -> (the limit, how to raise it)
    LIMITS = {
        _errno.EMFILE: ("the open files this process may have (EMFILE)",
                        "raise it with `ulimit -n`, LimitNOFILE= in the systemd unit, or --ulimit nofile= "
                        "in Docker"),
        _errno.ENFILE: ("the open files of the whole system (ENFILE)", "raise fs.file-max with sysctl"),
        _errno.ENOMEM: ("memory (ENOMEM)", "free memory, or raise the memory limit of the service or container"),
    }
    #: What EAGAIN means when a process is being started (elsewhere it is no limit).
    PROCESS_LIMIT = ("the processes this user may run (EAGAIN)",
                     "raise it with `ulimit -u`, LimitNPROC= or TasksMax= in the systemd unit, or --pids-limit "
                     "in Docker")

    @classmethod
    def of(cls, exc: BaseException, doing: str, *, starting_process: bool = False) -> "SystemLimitError | None":
        """A ``SystemLimitError`` for ``exc`` raised while ``doing`` something; None for other errors."""
        if isinstance(exc, cls):
            return exc
        if isinstance(exc, MemoryError):
            number = _errno.ENOMEM
        else:
            number = exc.errno if isinstance(exc, OSError) else None
        if starting_process and number == _errno.EAGAIN:
            limit, fix = cls.PROCESS_LIMIT
        elif number in cls.LIMITS:
            limit, fix = cls.LIMITS[number]
        else:
            return None
        filename = getattr(exc, "filename", None)
        where = f" ({filename})" if filename else ""
        return cls(number, f"{doing}{where}: the machine ran out of {limit}: {fix}")

    def __str__(self) -> str:
        return str(self.strerror)
