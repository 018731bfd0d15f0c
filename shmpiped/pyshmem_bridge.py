"""The pyshmem bridge: the ``pyshmem.source`` and ``pyshmem.sink`` kinds.

Camera and mirror drivers written against pyshmem (``pyshmem.create``,
``.write()``, ``.read_new()``) use pyshmem's own ``/dev/shm`` layout, which a
pipeline stream is not.  These two endpoints connect the two:

- ``pyshmem.source`` forwards each new publication of an external pyshmem
  stream into its pipeline stream.  pyshmem's seqlock read copies the payload
  straight into the pipeline stream's next slot, which is then published with
  pyshmem's ``frame_id`` and, as its origin, the driver's write time
  (pyshmem's wall clock, moved onto CLOCK_MONOTONIC), so end-to-end latency
  downstream includes the bridge.  It waits with pyshmem's
  ``wait_for_count``: a futex park on streams created with ``notify=True``,
  sleeps of ``poll_interval_s`` on others; never a spin.  Each wait lasts at
  most ``WAIT_SLICE_S``, so stop and pause are seen.  A stream that does not
  exist yet is waited for (``attach_timeout_s``), and a driver that restarts
  and recreates its stream is re-attached.
- ``pyshmem.sink`` writes each publication of its pipeline stream to a
  pyshmem stream, with the pipeline's frame id; it creates that stream
  (shape and dtype of the pipeline stream, ``notify=True``) when missing, or
  attaches to it and checks that shape and dtype match.

pyshmem is an optional dependency (``pip install 'shmpiped[pyshmem]'``):
nothing imports it until a pipeline uses these kinds, and without it such a
pipeline fails validation with a ConfigValidationError saying what to install.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import Sink, Source
from shmpiped.kernels.checks import is_number

__all__ = ["PYSHMEM_REQUIREMENT", "PyshmemSink", "PyshmemSource", "load_pyshmem"]

PYSHMEM_REQUIREMENT = "pyshmem>=1.4"
INSTALL_HINT = "pip install 'shmpiped[pyshmem]'"
_MINIMUM_VERSION = (1, 4)
#: Longest single wait on the pyshmem stream, so a stop or pause is seen within it.
WAIT_SLICE_S = 0.1
#: While no frame arrives, how often the source checks that its driver did not recreate the stream.
GENERATION_CHECK_S = 1.0
_GONE = object()


# --------------------------------------------------------------------------- pyshmem itself


def load_pyshmem(config=None):
    """The pyshmem module; ConfigValidationError (naming ``config``'s endpoint) when it is missing or old."""
    who = f"{_role(config)} {config.name!r} of kind {config.kind!r}" if config is not None else "this pipeline"
    try:
        import pyshmem
    except ImportError as exc:
        raise ConfigValidationError(
            f"{who} needs the pyshmem package ({PYSHMEM_REQUIREMENT}), which cannot be imported here "
            f"({exc}): install it with {INSTALL_HINT}") from None
    version = str(getattr(pyshmem, "__version__", ""))
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if len(found) == 2 and found < _MINIMUM_VERSION:
        raise ConfigValidationError(
            f"{who} needs {PYSHMEM_REQUIREMENT}, but pyshmem {version} is installed: "
            f"upgrade it with pip install -U '{PYSHMEM_REQUIREMENT}'")
    return pyshmem


def _role(config) -> str:
    return "source" if hasattr(config, "streams") else "sink"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class BridgeSettings:
    """The parameters of one bridge endpoint, checked."""

    pyshmem_stream: str
    create: bool
    notify: bool = True
    keep_created: bool = False
    attach_timeout_s: float | None = 10.0  # source
    poll_interval_s: float = 2e-4  # source
    lock_timeout_s: float = 1.0  # sink


_COMMON = ("pyshmem_stream", "create", "notify", "keep_created")
SOURCE_PARAMETERS = _COMMON + ("attach_timeout_s", "poll_interval_s")
SINK_PARAMETERS = _COMMON + ("lock_timeout_s",)


def _error(config, message: str) -> ConfigValidationError:
    return ConfigValidationError(f"{_role(config)} {config.name!r} ({config.kind}): {message}")


def _flag(config, parameters, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise _error(config, f"parameter {name} must be true or false, got {value!r}")
    return value


def _seconds(config, parameters, name: str, default, *, allow_null: bool = False, allow_zero: bool = False):
    value = parameters.get(name, default)
    if value is None and allow_null:
        return None
    low_ok = (lambda v: v >= 0) if allow_zero else (lambda v: v > 0)
    if not is_number(value) or not math.isfinite(value) or not low_ok(value):
        kind = "a number >= 0" if allow_zero else "a positive number"
        raise _error(config, f"parameter {name} must be {kind}{' or null' if allow_null else ''}, "
                             f"got {value!r}")
    return float(value)


def bridge_settings(config, allowed: tuple[str, ...], create_default: bool) -> BridgeSettings:
    """The endpoint's parameters, or a ConfigValidationError naming the one at fault."""
    parameters = dict(config.parameters or {})
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise _error(config, f"unknown parameter(s) {', '.join(unknown)}; expected any of: {', '.join(allowed)}")
    name = parameters.get("pyshmem_stream")
    if not isinstance(name, str) or not name.strip():
        raise _error(config, "parameter pyshmem_stream (the pyshmem stream's name, as the driver passes it to "
                             f"pyshmem.create/open) is required, got {name!r}")
    fields: dict[str, Any] = {
        "pyshmem_stream": name,
        "create": _flag(config, parameters, "create", create_default),
        "notify": _flag(config, parameters, "notify", True),
        "keep_created": _flag(config, parameters, "keep_created", False),
    }
    if "attach_timeout_s" in allowed:
        fields["attach_timeout_s"] = _seconds(config, parameters, "attach_timeout_s", 10.0,
                                              allow_null=True, allow_zero=True)
        fields["poll_interval_s"] = _seconds(config, parameters, "poll_interval_s", 2e-4)
    if "lock_timeout_s" in allowed:
        fields["lock_timeout_s"] = _seconds(config, parameters, "lock_timeout_s", 1.0)
    return BridgeSettings(**fields)


# --------------------------------------------------------------------------- attaching


class _PyshmemEndpoint:
    """What both bridge endpoints share: the pyshmem handle, attached or created, and checked."""

    def _setup(self, context, settings: BridgeSettings) -> None:
        self.settings = settings
        self.pyshmem = load_pyshmem(context.config)
        spec = context.shared_memory[context.config.stream]
        self.pipeline_shape = tuple(spec.shape)
        self.pipeline_dtype = spec.numpy_dtype
        self.handle = None
        self.created = False

    def _attach(self) -> bool:
        """Open (or, with ``create``, create) the pyshmem stream; False while it does not exist."""
        pyshmem, settings = self.pyshmem, self.settings
        name = settings.pyshmem_stream
        try:
            handle = pyshmem.open(name, gpu_device=False)
            created = False
        except FileNotFoundError:
            if not settings.create:
                return False
            try:
                handle = pyshmem.create(name, shape=self.pipeline_shape, dtype=self.pipeline_dtype,
                                        notify=settings.notify)
                created = True
            except FileExistsError:  # the driver created it meanwhile
                return self._attach()
        except ValueError as exc:  # e.g. a GPU stream without a CPU mirror
            raise self._mismatch(str(exc)) from None
        shape, dtype = tuple(handle.shape), handle.dtype
        if dtype != self.pipeline_dtype or math.prod(shape) != math.prod(self.pipeline_shape):
            handle.close()
            raise self._mismatch(
                f"it holds {list(shape)} {dtype.name}, but pipeline stream "
                f"{self.context.config.stream!r} is {list(self.pipeline_shape)} "
                f"{self.pipeline_dtype.name}: give them the same dtype and number of elements")
        self.handle, self.created = handle, created
        return True

    def _mismatch(self, detail: str) -> ConfigValidationError:
        config = self.context.config
        return _error(config, f"pyshmem stream {self.settings.pyshmem_stream!r}: {detail}")

    def _detach(self) -> None:
        handle, self.handle = self.handle, None
        if handle is None:
            return
        handle.close()
        if self.created and not self.settings.keep_created:
            self.pyshmem.unlink_quiet(self.settings.pyshmem_stream)
        self.created = False

    def _handle_metrics(self) -> dict:
        handle = self.handle
        return {
            "pyshmem_stream": self.settings.pyshmem_stream,
            "attached": handle is not None,
            "created": self.created,
            # futex: woken by each write; polling: the stream was created without notify=True
            "wake_up": None if handle is None else ("futex" if handle.notify else "polling"),
        }


# --------------------------------------------------------------------------- the source


class PyshmemSource(_PyshmemEndpoint, Source):
    """``pyshmem.source``: forward an external pyshmem stream into one pipeline stream.

    Parameters: ``pyshmem_stream`` (required), ``create`` (default false:
    the driver creates it; true creates it when missing, with the pipeline
    stream's shape and dtype), ``notify`` (when creating; default true),
    ``keep_created`` (default false: a stream created here is removed when
    the source closes), ``attach_timeout_s`` (default 10; how long a missing
    stream is waited for before the source fails; null waits forever) and
    ``poll_interval_s`` (default 0.0002; the sleep between checks of a stream
    created without ``notify=True``).  Only publications made after the
    source attached are forwarded; each carries pyshmem's ``frame_id`` (0
    numbers it with the count) and the driver's write time as its origin.
    """

    kind = "pyshmem.source"
    #: The controller calls ``produce()`` although there is one stream: the source publishes
    #: the slot itself, with the frame id and origin time it read from pyshmem.
    writes_own_streams = True

    @classmethod
    def validate_config(cls, config, shared_memory: Mapping[str, Any]) -> None:
        super().validate_config(config, shared_memory)
        if len(config.streams) != 1:
            raise _error(config, f"needs exactly one stream, got {len(config.streams)}")
        bridge_settings(config, SOURCE_PARAMETERS, create_default=False)
        load_pyshmem(config)

    def __init__(self, context) -> None:
        super().__init__(context)
        self._setup(context, bridge_settings(context.config, SOURCE_PARAMETERS, create_default=False))
        self.frames_forwarded = 0
        self.missed_publications = 0
        self.incomplete_writes = 0
        self.reattached = 0
        self._forwarded_count = 0
        self._out_views: tuple | None = None
        self._waiting_since = time.monotonic()
        self._next_generation_check = 0.0

    def open(self) -> None:
        self._waiting_since = time.monotonic()
        self._attach_now()

    def close(self) -> None:
        self._detach()

    def _attach_now(self) -> bool:
        if not self._attach():
            return False
        self._forwarded_count = self.handle.count  # forward what is published from now on
        self._out_views = None
        self._next_generation_check = time.monotonic() + GENERATION_CHECK_S
        return True

    def produce(self, writers) -> int:
        """Forward the next publication; 0 when a stop or pause came first (or a call timeout nears)."""
        stream = writers[self.context.config.stream]
        limit = self.context.config.read_timeout
        give_up = None if limit is None else time.monotonic() + limit / 2
        while not (self.stop_requested() or self.paused()):
            if self.handle is None and not self._attach_now():
                self._wait_for_driver()
            elif self._await_publication() and self._forward(stream):
                return 1
            if give_up is not None and time.monotonic() >= give_up:
                return 0
        return 0

    def _wait_for_driver(self) -> None:
        timeout = self.settings.attach_timeout_s
        if timeout is not None and time.monotonic() - self._waiting_since > timeout:
            raise TimeoutError(
                f"source {self.context.config.name!r} (pyshmem.source): pyshmem stream "
                f"{self.settings.pyshmem_stream!r} does not exist after {timeout:g} s: start the driver that "
                "creates it, set create: true to create it here, or raise attach_timeout_s (null waits forever)")
        self.wait(WAIT_SLICE_S)

    def _await_publication(self) -> bool:
        """One bounded wait for a publication not yet forwarded; True when there is one."""
        try:
            self.handle.wait_for_count(after=self._forwarded_count, timeout=WAIT_SLICE_S,
                                       poll_interval=self.settings.poll_interval_s)
            return True
        except TimeoutError:
            self._check_generation()
        except self.pyshmem.InconsistentStreamError:
            # The driver died or failed in the middle of a write: its next complete write (or a
            # recreated stream) makes the stream readable again.
            self.incomplete_writes += 1
            self.wait(0.01)
            self._check_generation()
        return False

    def _check_generation(self) -> None:
        """While idle, notice a driver that removed or recreated its stream, and re-attach."""
        now = time.monotonic()
        if now < self._next_generation_check:
            return
        self._next_generation_check = now + GENERATION_CHECK_S
        try:
            current = self.pyshmem.stat(self.settings.pyshmem_stream).get("instance_id")
        except FileNotFoundError:
            current = _GONE
        except ValueError:  # being recreated right now
            return
        if current == self.handle.instance_id:
            return
        self.handle.close()
        self.handle, self.created = None, False
        self.reattached += 1
        self._waiting_since = now
        self._attach_now()

    def _forward(self, stream) -> bool:
        """Copy the newest publication into the stream's next slot and publish it; False if unreadable."""
        if self._out_views is None:
            shape = tuple(self.handle.shape)
            self._out_views = tuple(view.reshape(shape) for view in stream.slot_views)
        index = stream.count % stream.nslots
        stream.next_slot()
        try:
            publication = self.handle.read_publication(out=self._out_views[index], timeout=WAIT_SLICE_S)
        except (TimeoutError, self.pyshmem.InconsistentStreamError):
            self.incomplete_writes += 1
            return False  # nothing published: the slot stays the next one
        age_ns = time.time_ns() - int(publication.write_time * 1e9)
        origin_ns = time.monotonic_ns() - (age_ns if age_ns > 0 else 0)
        stream.publish(publication.frame_id, origin_ns)
        self._forwarded_count = publication.count
        self.frames_forwarded += 1
        self.missed_publications += publication.missed_publications
        return True

    def plugin_metrics(self) -> dict:
        return {**self._handle_metrics(), "frames_forwarded": self.frames_forwarded,
                "missed_publications": self.missed_publications, "incomplete_writes": self.incomplete_writes,
                "reattached": self.reattached}


# --------------------------------------------------------------------------- the sink


class PyshmemSink(_PyshmemEndpoint, Sink):
    """``pyshmem.sink``: write each publication of a pipeline stream to a pyshmem stream.

    Parameters: ``pyshmem_stream`` (required), ``create`` (default true:
    create it when missing with the pipeline stream's shape and dtype; false:
    it must exist when the pipeline starts), ``notify`` (when creating;
    default true, so pyshmem readers are woken by each write),
    ``keep_created`` (default false: a stream created here is removed when
    the sink closes) and ``lock_timeout_s`` (default 1; how long a write waits
    for pyshmem's stream lock before the sink fails).  An existing stream
    must have the pipeline stream's dtype and number of elements.  Each write
    carries the pipeline frame id.
    """

    kind = "pyshmem.sink"

    @classmethod
    def validate_config(cls, config, shared_memory: Mapping[str, Any]) -> None:
        super().validate_config(config, shared_memory)
        if config.outputs:
            raise _error(config, "writes no pipeline streams: remove its outputs")
        bridge_settings(config, SINK_PARAMETERS, create_default=True)
        load_pyshmem(config)

    def __init__(self, context) -> None:
        super().__init__(context)
        self._setup(context, bridge_settings(context.config, SINK_PARAMETERS, create_default=True))
        self.frames_written = 0

    def open(self) -> None:
        if not self._attach():
            raise FileNotFoundError(
                f"sink {self.context.config.name!r} (pyshmem.sink): pyshmem stream "
                f"{self.settings.pyshmem_stream!r} does not exist: start the driver that creates it first, "
                "or set create: true")

    def close(self) -> None:
        self._detach()

    def consume_publication(self, publication, writers) -> None:
        handle = self.handle
        payload = publication.payload
        if payload.shape != handle.shape:
            payload = payload.reshape(handle.shape)
        try:
            with handle.locked(timeout=self.settings.lock_timeout_s):
                handle.write_locked(payload, frame_id=publication.frame_id)
        except TimeoutError:
            raise TimeoutError(
                f"sink {self.context.config.name!r} (pyshmem.sink): pyshmem stream "
                f"{self.settings.pyshmem_stream!r} stayed locked by another process for more than "
                f"{self.settings.lock_timeout_s:g} s (lock_timeout_s)") from None
        self.frames_written += 1

    def plugin_metrics(self) -> dict:
        return {**self._handle_metrics(), "frames_written": self.frames_written}
