"""Provisioning a pipeline's streams: open or create each by its mode, initial values, stale cleanup.

``provision_stream`` applies the ``mode`` rules of a ``shared_memory`` entry
(spec section 2.3): reuse a compatible existing stream, replace an
incompatible one, refuse per ``create``/``attach``.  A segment whose creator
died without keeping it on purpose is stale and is removed first, so a build
after a crash starts clean.

Ownership is per stream.  A stream whose creator is alive is never removed or
replaced: reusing it is allowed only to read it (mode ``attach``, or
``create_or_attach`` of a compatible stream).  In a shared namespace (the
default one, where several pipelines run side by side) a stream this pipeline
writes must not belong to another live process: the clash names the stream and
its owner.

One writer per stream: each stream the pipeline's kernels or sources write
carries its producer in its header (``record_producer``), so an external
``shmpiped.attach(...)`` cannot write it while the pipeline runs.

``SegmentMonitor`` is the manager's check of its segments (streams and the
control block) for damage done from outside: a file truncated, replaced or
removed under the running pipeline, or a count overwritten.  The manager's
process survives such a segment (``segment.enable_fault_shield``); the
monitor turns it into an event, a failure record naming the segment, and a
``damaged`` entry in ``status()["streams"]``.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import numpy as np

from .config import PipelineConfig, SharedMemoryConfig
from .errors import ConfigValidationError, NamespaceBusyError, SharedMemoryError
from .shm import layout
from .shm.segment import enable_fault_shield, unlink_unless_held
from .shm.stream import Stream, stale_once_unheld

log = logging.getLogger("shmpiped.streams")


def default_notify(config: PipelineConfig) -> dict[str, bool]:
    """``notify`` of each stream: as declared, else whether something waits on it."""
    triggered = {name for k in config.kernels for name in k.inputs} | {s.stream for s in config.sinks}
    return {
        spec.name: spec.notify if spec.notify is not None else spec.name in triggered
        for spec in config.shared_memory
    }


def written_streams(config: PipelineConfig) -> set[str]:
    """The streams a pipeline's own kernels and sources write."""
    return {name for k in config.kernels for name in k.outputs} | {
        name for s in config.sources for name in s.streams}


def producer_of(config: PipelineConfig, stream: str) -> str | None:
    """What writes ``stream`` in ``config``, in words ("kernel 'centroid' (pipeline.yaml)"), or None."""
    writers = [f"kernel {k.name!r}" for k in config.kernels if stream in k.outputs]
    writers += [f"source {s.name!r}" for s in config.sources if stream in s.streams]
    if not writers:
        return None
    where = f" ({os.path.basename(str(config.source_path))})" if config.source_path else ""
    return " and ".join(writers) + where


def provision_stream(spec: SharedMemoryConfig, config: PipelineConfig, slots: int,
                     notify: bool, shared: bool = False) -> tuple[Stream, bool]:
    """Open or create the stream of ``spec`` according to its mode; (stream, created).

    ``shared``: the namespace is shared with other pipelines (see the module docstring).
    A stream the pipeline writes gets its producer recorded (cleared when the handle closes).
    """
    enable_fault_shield()  # this process owns a pipeline: a truncated segment must not kill it
    stream, created = _provision(spec, config, slots, notify, shared)
    producer = producer_of(config, spec.name)
    if producer is not None:
        stream.record_producer(producer)
    return stream, created


def _provision(spec: SharedMemoryConfig, config: PipelineConfig, slots: int,
               notify: bool, shared: bool) -> tuple[Stream, bool]:
    namespace = config.namespace or layout.DEFAULT_NAMESPACE
    resource = layout.stream_segment_name(namespace, spec.name)
    role = "producer" if spec.name in written_streams(config) else None  # None: a reader if produced elsewhere
    for _attempt in range(3):
        existing = _open_existing(spec.name, namespace, resource, role)
        if existing is not None:
            if spec.mode == "create":
                existing.close()
                raise SharedMemoryError(errno.EEXIST, config.locate(
                    f"shared memory '{spec.name}' already exists and its mode is 'create'", spec))
            live_owner = existing.segment.owner_alive()
            if live_owner and spec.mode != "attach" and (
                    spec.mode == "replace" or not stream_matches(existing, spec)
                    or (shared and spec.name in written_streams(config))):
                owner = existing.segment.owner()
                existing.close()
                raise NamespaceBusyError(config.locate(
                    f"shared memory '{spec.name}' belongs to pid {owner.pid} on {owner.host or 'this host'}, "
                    f"which is still running (another pipeline?); rename the stream, give one of the "
                    f"pipelines a namespace of its own, or read it with mode: attach", spec))
            if spec.mode != "replace" and stream_matches(existing, spec):
                return existing, False
            if spec.mode == "attach":
                existing.close()
                raise ConfigValidationError(config.locate(
                    f"existing shared memory '{spec.name}' does not match the requested attach "
                    f"configuration (it has shape {existing.shape} and dtype {existing.dtype.name})", spec))
            existing.close()
            if not unlink_unless_held(resource):
                continue  # its owner came back to life, or someone replaced it: look again
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


def _open_existing(name: str, namespace: str, resource: str, role: str | None) -> Stream | None:
    if remove_if_stale(resource):
        log.warning("removed stale segment %s (its creator is gone)", resource)
        return None
    try:
        return Stream.attach(name, namespace, gpu_device=True, role=role)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        if unlink_unless_held(resource):
            log.warning("removed unreadable segment %s: %s", resource, exc)
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


def remove_if_stale(resource: str) -> bool:
    """Remove segment ``resource`` if its creator died and did not keep it; True when removed."""
    return unlink_unless_held(resource, stale_once_unheld)


def remove_stale_segments(namespace: str) -> list[str]:
    """Remove the streams and pipeline blocks of ``namespace`` whose creator died; returns their names.

    A segment whose owner is alive is never touched (the check and the removal
    happen under an exclusive lock on the file).
    """
    removed = []
    prefixes = layout.namespace_members_prefixes(namespace)
    try:
        names = os.listdir(layout.DEV_SHM)
    except OSError:
        return removed
    for name in sorted(names):
        if name.startswith(prefixes) and remove_if_stale(name):
            removed.append(name)
    return removed


def write_initial_value(stream: Stream, spec: SharedMemoryConfig, config: PipelineConfig) -> None:
    """Publish the ``initial`` value of ``spec`` into ``stream``.

    A host slot is filled in place (a 1 GiB calibration matrix costs no second
    GiB, and a normal pattern is drawn in the stream's own dtype, seeded as
    shmpipeline draws it); a device slot gets the value computed on the host.
    """
    initial = spec.initial
    slot = stream.next_slot()
    value = slot if isinstance(slot, np.ndarray) else np.zeros(stream.shape, stream.dtype)
    where = lambda message: config.locate(message, spec)  # noqa: E731
    if initial.pattern == "constant":
        value[...] = initial.value
    elif initial.pattern == "normal":
        if not np.issubdtype(stream.dtype, np.floating):
            raise ConfigValidationError(where(f"normal initializer for '{spec.name}' requires a floating-point dtype"))
        rng = np.random.default_rng(initial.seed)
        if stream.dtype in (np.float32, np.float64):
            rng.standard_normal(size=value.shape, dtype=stream.dtype, out=value)
        else:  # float16 and longer floats: numpy draws only float32/float64
            value[...] = rng.standard_normal(value.shape)
        if initial.std != 1.0:
            np.multiply(value, initial.std, out=value, casting="unsafe")
        if initial.mean != 0.0:
            np.add(value, initial.mean, out=value, casting="unsafe")
    elif initial.pattern == "values":
        values = np.asarray(initial.values, dtype=stream.dtype)
        if values.shape != tuple(stream.shape):
            raise ConfigValidationError(where(
                f"values initializer for '{spec.name}' has shape {values.shape}, expected {tuple(stream.shape)}"))
        value[...] = values
    elif initial.pattern == "identity":
        value[...] = 0
        np.fill_diagonal(value, initial.scale)
    if value is slot:
        stream.publish()
    else:
        stream.write(value)


def record_producers(streams: dict, config: PipelineConfig) -> None:
    """Record (again) what writes each of ``streams`` per ``config``: after a reconfiguration, a stream
    a kernel or source now writes names it, and one nothing writes any more accepts external writers."""
    for name, stream in streams.items():
        if stream.closed:
            continue
        producer = producer_of(config, name)
        if producer is not None:
            stream.record_producer(producer)
        else:
            stream.clear_producer()


# ---------------------------------------------------------------------- damaged segments

SEGMENT_DAMAGED = "segment_damaged"


def segment_damage(streams: dict, block) -> dict[str, tuple[str | None, str, str]]:
    """Damaged segments among a pipeline's open streams and its control block:
    segment path -> (stream name or None for the control block, what happened, the message)."""
    damaged = {}
    for name, stream in streams.items():
        if stream.closed:
            continue
        problem = stream.damage()
        if problem is not None:
            path = stream.segment.path
            damaged[path] = (name, problem, f"stream {name!r}: segment {path} {problem} under the running "
                                            f"pipeline; its workers cannot use it (shutdown removes it, a new "
                                            f"build recreates it)")
    segment = getattr(block, "segment", None)
    if segment is not None and not segment.closed:
        problem = segment.damage()
        if problem is not None:
            damaged[segment.path] = (None, problem, f"control block {segment.path} {problem} under the running "
                                                    f"pipeline; its workers cannot report or be stopped through "
                                                    f"it (shutdown removes it, a new build recreates it)")
    return damaged


def note_damaged_segments(streams: dict, block, config: PipelineConfig, failures: list, event) -> None:
    """The manager's check of its segments, run with its failure poll.

    Each newly damaged segment gets one failure record (``type`` segment_damaged, ``component_type``
    stream or control_block, ``segment``), an event and an error in the log; the record of a worker
    killed by SIGBUS names the damaged segment it maps.  Costs two ``stat`` calls per segment.
    """
    damaged = segment_damage(streams, block)
    if not damaged:
        return
    reported = {f.get("segment") for f in failures if f.get("type") == SEGMENT_DAMAGED}
    for path, (stream, problem, message) in damaged.items():
        if path in reported:
            continue
        component = "stream" if stream is not None else "control_block"
        failures.append({
            "type": SEGMENT_DAMAGED, "component_type": component, "kernel": stream or os.path.basename(path),
            "segment": path, "stream": stream, "time": time.time(), "pid": None, "cpu_slot": None,
            "exit_code": None, "signal": None, "error": message, "traceback": None})
        event(SEGMENT_DAMAGED, segment=path, stream=stream, error=problem)
        log.error("%s", message)
    block_path = getattr(getattr(block, "segment", None), "path", None)
    kernels = {k.name: k for k in config.kernels}
    for failure in failures:
        kernel = kernels.get(failure.get("kernel"))
        if failure.get("signal") != "SIGBUS" or "segment" in failure or kernel is None:
            continue
        names = (*kernel.all_inputs, *kernel.all_outputs)
        paths = [streams[n].segment.path for n in names if n in streams] + [block_path]
        hit = next((p for p in paths if p in damaged), None)
        if hit is not None:
            failure["segment"] = hit
            failure["error"] = f"{failure['error']}: segment {hit} {damaged[hit][1]}"
