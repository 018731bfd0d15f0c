"""shmpiped: real-time pipelines over /dev/shm streams, one worker process per kernel.

The Python API is shmpipeline 1.3.0's: every name of its top-level ``__all__``
is here, and its public modules have the same names (``shmpiped.config``,
``.graph``, ``.kernel``, ``.source``, ``.sink``, ``.registry``, ``.state``,
``.synthetic``, ``.errors``, ``.document``, ``.logging_utils``,
``.shm_cleanup``, ``.sinks``, ``.sources``)::

    from shmpiped import PipelineConfig, PipelineManager, SyntheticInputConfig

Code that imports ``shmpipeline`` runs on shmpiped through ``shmpiped.compat``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    ConfigValidationError,
    KernelExecutionError,
    NamespaceBusyError,
    SharedMemoryError,
    ShmPipelineError,
    StateTransitionError,
    WorkerProcessError,
)

_LAZY = {
    "PipelineConfig": "config", "SharedMemoryConfig": "config", "KernelConfig": "config",
    "SourceConfig": "config", "SinkConfig": "config",
    "PipelineGraph": "graph",
    "PipelineManager": "manager", "PipelineState": "state", "attach": "manager",
    "Kernel": "kernel", "KernelContext": "kernel", "Source": "source", "SourceContext": "source",
    "Sink": "sink", "SinkContext": "sink", "KernelRegistry": "registry", "get_default_registry": "registry",
    "Stream": "shm",
    "SyntheticInputConfig": "synthetic", "available_synthetic_patterns": "synthetic",
    "RoundRobinPlacementPolicy": "placement", "NoAffinityPlacementPolicy": "placement",
    "PlacementPolicy": "placement",
    "validate_pipeline_config": "validation",
}


def __getattr__(name: str):
    # Imported on first use, so that `shmpiped.worker` and the CLI start fast.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shmpiped' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigValidationError", "KernelExecutionError", "NamespaceBusyError", "SharedMemoryError",
    "ShmPipelineError", "StateTransitionError", "WorkerProcessError", "__version__", *_LAZY,
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
