"""shmpiped: real-time pipelines over /dev/shm streams, one worker process per kernel.

The Python API keeps shmpipeline's names::

    from shmpiped import PipelineConfig, PipelineManager, SyntheticInputConfig
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
    "PipelineManager": "manager", "PipelineState": "manager", "attach": "manager",
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
