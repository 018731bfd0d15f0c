"""Provisioning a pipeline's streams: open or create each by its mode, initial values, stale cleanup.

``provision_stream`` applies the ``mode`` rules of a ``shared_memory`` entry
(spec section 2.3): reuse a compatible existing stream, replace an
incompatible one, refuse per ``create``/``attach``.  A segment whose creator
died without keeping it on purpose is stale and is removed first, so a build
after a crash starts clean.
"""

from __future__ import annotations

import errno
import logging
import os

import numpy as np

from .config import PipelineConfig, SharedMemoryConfig
from .errors import ConfigValidationError, SharedMemoryError
from .shm import layout
from .shm.stream import Stream, segment_is_stale

log = logging.getLogger("shmpiped.streams")


def default_notify(config: PipelineConfig) -> dict[str, bool]:
    """``notify`` of each stream: as declared, else whether something waits on it."""
    triggered = {name for k in config.kernels for name in k.inputs} | {s.stream for s in config.sinks}
    return {
        spec.name: spec.notify if spec.notify is not None else spec.name in triggered
        for spec in config.shared_memory
    }


def provision_stream(spec: SharedMemoryConfig, config: PipelineConfig, slots: int,
                     notify: bool) -> tuple[Stream, bool]:
    """Open or create the stream of ``spec`` according to its mode; (stream, created)."""
    namespace = config.namespace or layout.DEFAULT_NAMESPACE
    resource = layout.stream_segment_name(namespace, spec.name)
    for _attempt in range(3):
        existing = _open_existing(spec.name, namespace, resource)
        if existing is not None:
            if spec.mode == "create":
                existing.close()
                raise SharedMemoryError(errno.EEXIST, config.locate(
                    f"shared memory '{spec.name}' already exists and its mode is 'create'", spec))
            if spec.mode != "replace" and stream_matches(existing, spec):
                return existing, False
            if spec.mode == "attach":
                existing.close()
                raise ConfigValidationError(config.locate(
                    f"existing shared memory '{spec.name}' does not match the requested attach "
                    f"configuration (it has shape {existing.shape} and dtype {existing.dtype.name})", spec))
            existing.close()
            unlink_segment(resource)
        elif spec.mode == "attach":
            raise FileNotFoundError(config.locate(f"shared memory stream '{spec.name}' does not exist", spec))
        try:
            stream = Stream.create(spec.name, spec.shape, spec.dtype, namespace=namespace, slots=slots,
                                   notify=notify, storage=spec.storage, gpu_device=spec.gpu_device,
                                   cpu_mirror=bool(spec.cpu_mirror))
            return stream, True
        except FileExistsError:
            continue  # created concurrently: look again
    raise SharedMemoryError(errno.EEXIST, config.locate(
        f"could not create shared memory '{spec.name}': its name keeps being taken", spec))


def _open_existing(name: str, namespace: str, resource: str) -> Stream | None:
    if segment_is_stale(resource):
        log.warning("removing stale segment %s (its creator is gone)", resource)
        unlink_segment(resource)
        return None
    try:
        return Stream.attach(name, namespace, gpu_device=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("replacing unreadable segment %s: %s", resource, exc)
        unlink_segment(resource)
        return None


def unlink_segment(resource: str) -> None:
    try:
        os.unlink(os.path.join(layout.DEV_SHM, resource))
    except FileNotFoundError:
        pass


def stream_matches(stream: Stream, spec: SharedMemoryConfig) -> bool:
    """May an existing segment be reused for ``spec``? (shape, dtype, storage, device)."""
    if tuple(stream.shape) != tuple(spec.shape) or stream.dtype != np.dtype(spec.dtype):
        return False
    if stream.storage != spec.storage:
        return False
    if spec.storage != "gpu":
        return True
    return stream.gpu_device == spec.gpu_device and (spec.cpu_mirror is None or
                                                     stream.cpu_mirror == bool(spec.cpu_mirror))


def remove_stale_segments(namespace: str) -> list[str]:
    """Remove the stream segments of ``namespace`` whose creator died; returns their names."""
    removed = []
    prefix = layout.namespace_segment_name(namespace) + "."
    try:
        names = os.listdir(layout.DEV_SHM)
    except OSError:
        return removed
    for name in sorted(names):
        if name.startswith(prefix) and segment_is_stale(name):
            unlink_segment(name)
            removed.append(name)
    return removed


def write_initial_value(stream: Stream, spec: SharedMemoryConfig, config: PipelineConfig) -> None:
    """Publish the ``initial`` value of ``spec`` into ``stream`` (computed on the host)."""
    initial = spec.initial
    value = np.zeros(stream.shape, stream.dtype)
    where = lambda message: config.locate(message, spec)  # noqa: E731
    if initial.pattern == "constant":
        value[...] = initial.value
    elif initial.pattern == "normal":
        if not np.issubdtype(stream.dtype, np.floating):
            raise ConfigValidationError(where(f"normal initializer for '{spec.name}' requires a floating-point dtype"))
        rng = np.random.default_rng(initial.seed)
        value[...] = rng.standard_normal(stream.shape) * initial.std + initial.mean
    elif initial.pattern == "values":
        values = np.asarray(initial.values, dtype=stream.dtype)
        if values.shape != tuple(stream.shape):
            raise ConfigValidationError(where(
                f"values initializer for '{spec.name}' has shape {values.shape}, expected {tuple(stream.shape)}"))
        value[...] = values
    elif initial.pattern == "identity":
        np.fill_diagonal(value, initial.scale)
    stream.write(value)
