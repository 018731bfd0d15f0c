"""The plugin contracts: kernels (worker processes), sources and sinks (manager threads).

This module owns what every plugin sees:

- ``KernelContext`` and ``Kernel``: a kernel is validated from its config
  (``validate_config``, a classmethod that starts with the base arity and
  storage checks of spec 1.6), allocates every buffer it needs in
  ``__init__`` and then computes each frame straight into the output view.
  Kernels are written once against the array namespace ``context.xp``
  (numpy for ``cpu`` storage, cupy for ``gpu``), so the GPU twin of a CPU
  kernel is a one-line subclass that only changes ``kind`` and ``storage``
  (see ``shmpiped.kernels.gpu``).
- ``SourceContext``/``Source`` and ``SinkContext``/``Sink`` (spec 10.5),
  with the shared endpoint helpers ``stop_requested``, ``paused``, ``wait``,
  ``read_auxiliary`` and ``plugin_metrics``. The manager hands the runtime
  hooks in through the context (``stop_event``, ``pause_event``,
  ``auxiliary_streams``; ``_attach_runtime_events`` swaps the events in, as
  shmpipeline's controllers do); each has a safe default so a plugin can be
  built and driven directly in a test.

The contexts keep shmpipeline 1.3.0's contract: ``config_base_dir`` is a
``pathlib.Path``, ``KernelContext.auxiliary_specs`` a tuple in config order,
the endpoint contexts' ``auxiliary_specs`` a dict keyed by alias.  The
public modules ``shmpiped.kernel``, ``shmpiped.source`` and ``shmpiped.sink``
re-export these classes under shmpipeline's module names.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import numpy

from shmpiped.errors import ConfigValidationError

if TYPE_CHECKING:
    from shmpiped.config import KernelConfig, SharedMemoryConfig, SinkConfig, SourceConfig

#: Longest single sleep inside ``wait()``, so a stop request is seen quickly.
WAIT_SLICE_S = 0.05


def array_namespace(storage: str) -> ModuleType:
    """Return the array module that computes on ``storage`` ("cpu" or "gpu").

    For ``gpu`` that is the device backend's: cupy, or numpy under
    ``SHMPIPED_GPU_EMULATION`` (see ``shmpiped.shm.device``).
    """
    if storage == "gpu":
        from shmpiped.shm import device  # imported only for GPU kernels

        return device.backend().xp
    return numpy


def _cwd() -> Path:
    return Path.cwd().resolve()


class _BaseDirAsPath:
    """Frozen contexts store ``config_base_dir`` as a Path, whatever they were given."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_base_dir", Path(self.config_base_dir))


# --------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class KernelContext(_BaseDirAsPath):
    """What a kernel instance knows: its config, the stream specs and where to find files."""

    config: KernelConfig
    shared_memory: Mapping[str, SharedMemoryConfig]  # stream name -> spec
    config_base_dir: Path = field(default_factory=_cwd)
    xp: ModuleType = numpy

    @property
    def input_specs(self) -> tuple:
        """Trigger inputs then auxiliary streams, in config order."""
        return tuple(self.shared_memory[name] for name in self.config.all_inputs)

    @property
    def trigger_input_spec(self):
        """The primary (first) trigger input stream."""
        return self.shared_memory[self.config.input]

    @property
    def trigger_input_specs(self) -> tuple:
        return tuple(self.shared_memory[name] for name in self.config.trigger_inputs)

    @property
    def auxiliary_specs(self) -> tuple:
        """Auxiliary stream specs in config order."""
        return tuple(self.shared_memory[name] for name in self.config.auxiliary_names)

    @property
    def output_spec(self):
        """The primary (first) output stream."""
        return self.shared_memory[self.config.output]

    @property
    def output_specs(self) -> tuple:
        return tuple(self.shared_memory[name] for name in self.config.all_outputs)


class Kernel:
    """Base class of every compute kernel.

    Subclasses set ``kind`` and the arities, extend ``validate_config`` (calling
    ``super()`` first), allocate their state and scratch buffers in ``__init__``
    and implement ``compute_into``. ``compute_into`` writes into ``output`` with
    ``out=`` and must not allocate arrays.
    """

    kind: str = ""
    storage: str = "cpu"
    input_arity: int | None = 1
    auxiliary_arity: int | None = 0
    output_arity: int | None = 1
    #: Legacy kinds warn with DeprecationWarning when the registry resolves them.
    deprecated: bool = False

    @classmethod
    def validate_config(cls, config, shared_memory: Mapping[str, Any]) -> None:
        """Raise ConfigValidationError when ``config`` cannot run on this kernel class."""
        inputs = tuple(config.inputs)
        outputs = tuple(config.outputs)
        if cls.input_arity is not None and len(inputs) != cls.input_arity:
            raise ConfigValidationError(
                f"kernel kind {cls.kind!r} expects {cls.input_arity} trigger input stream(s), "
                f"got {len(inputs)}"
            )
        if cls.auxiliary_arity is not None and len(config.auxiliary) != cls.auxiliary_arity:
            raise ConfigValidationError(
                f"kernel kind {cls.kind!r} expects {cls.auxiliary_arity} auxiliary streams"
            )
        if cls.output_arity is not None and len(outputs) != cls.output_arity:
            raise ConfigValidationError(
                f"kernel kind {cls.kind!r} expects {cls.output_arity} output stream(s), "
                f"got {len(outputs)}"
            )
        cls._check_storage(config, shared_memory, (*inputs, *(b.name for b in config.auxiliary)), outputs)

    @classmethod
    def _check_storage(cls, config, shared_memory: Mapping[str, Any], inputs: tuple, outputs: tuple) -> None:
        """Every stream on the kernel's storage; a GPU kernel's on one device.

        Inputs may cross over: a CPU kernel reads a GPU stream that keeps a CPU
        mirror, and a GPU kernel reads a CPU stream (uploaded when it changes).
        """
        device = shared_memory[outputs[0]].gpu_device if outputs else None
        for name in (*inputs, *outputs):
            spec = shared_memory[name]
            if spec.storage == cls.storage:
                if cls.storage == "gpu" and spec.gpu_device != device:
                    raise ConfigValidationError(
                        f"kernel {config.name!r} runs on {device} (its output's gpu_device) but "
                        f"{name!r} lives on {spec.gpu_device}: a GPU kernel's streams share one device"
                    )
                continue
            if name in inputs and (cls.storage == "gpu" or spec.cpu_mirror):
                continue  # uploaded to the device, or read through the host mirror
            hint = (" (give it `cpu_mirror: true` to read it from the CPU, or use a gpu.* kind)"
                    if cls.storage == "cpu" and name in inputs else "")
            raise ConfigValidationError(
                f"kernel {config.name!r} of kind {cls.kind!r} requires "
                f"{cls.storage} shared memory for {name!r}{hint}"
            )

    def __init__(self, context: KernelContext) -> None:
        self.context = context
        self.xp = context.xp

    def compute_into(self, trigger_input, output, auxiliary_inputs: Mapping[str, Any]) -> None:
        """Compute one frame into ``output`` (single-output kernels)."""
        raise NotImplementedError(f"kernel kind {self.kind!r} does not implement compute_into")

    def compute_into_multiple(self, trigger_input, outputs, auxiliary_inputs: Mapping[str, Any]) -> None:
        """Compute one frame into every output; the default serves single-output kernels."""
        self.compute_into(trigger_input, outputs[0], auxiliary_inputs)


# --------------------------------------------------------------------------- endpoints


def _auxiliary_specs(context) -> dict:
    return {binding.alias: context.shared_memory[binding.name] for binding in context.config.auxiliary}


@dataclass(frozen=True)
class SourceContext(_BaseDirAsPath):
    """What a source instance knows, plus the runtime hooks the manager supplies."""

    config: SourceConfig
    shared_memory: Mapping[str, SharedMemoryConfig]
    config_base_dir: Path = field(default_factory=_cwd)
    auxiliary_streams: Mapping[str, Any] = field(default_factory=dict)  # alias -> live handle
    stop_event: Any = None  # threading.Event set when the manager stops the source
    pause_event: Any = None  # threading.Event set while the pipeline is paused

    @property
    def stream_spec(self):
        """The primary output stream."""
        return self.shared_memory[self.config.stream]

    @property
    def output_specs(self) -> tuple:
        return tuple(self.shared_memory[name] for name in self.config.streams)

    @property
    def auxiliary_specs(self) -> dict:
        return _auxiliary_specs(self)


@dataclass(frozen=True)
class SinkContext(_BaseDirAsPath):
    """What a sink instance knows, plus the runtime hooks the manager supplies."""

    config: SinkConfig
    shared_memory: Mapping[str, SharedMemoryConfig]
    config_base_dir: Path = field(default_factory=_cwd)
    auxiliary_streams: Mapping[str, Any] = field(default_factory=dict)
    stop_event: Any = None
    pause_event: Any = None

    @property
    def stream_spec(self):
        """The stream the sink consumes."""
        return self.shared_memory[self.config.stream]

    @property
    def output_specs(self) -> tuple:
        """The streams the sink itself writes (stateful endpoints)."""
        return tuple(self.shared_memory[name] for name in self.config.outputs)

    @property
    def auxiliary_specs(self) -> dict:
        return _auxiliary_specs(self)


def context_with_events(context, stop_event, pause_event):
    """``context`` carrying these events: a frozen dataclass copy, or the same object updated."""
    if dataclasses.is_dataclass(context):
        names = {f.name for f in dataclasses.fields(context)}
        if {"stop_event", "pause_event"} <= names:
            return dataclasses.replace(context, stop_event=stop_event, pause_event=pause_event)
    for key, value in (("stop_event", stop_event), ("pause_event", pause_event)):
        try:
            setattr(context, key, value)
        except (AttributeError, dataclasses.FrozenInstanceError):
            object.__setattr__(context, key, value)
    return context


class _Endpoint:
    """Helpers shared by sources and sinks; both run as threads in the manager."""

    kind: str = ""
    storage: str = "cpu"
    _role = "endpoint"

    def __init__(self, context) -> None:
        self.context = context

    @classmethod
    def _require_storage(cls, config, shared_memory, name: str, what: str = "") -> None:
        if shared_memory[name].storage != cls.storage:
            raise ConfigValidationError(
                f"{cls._role} {config.name!r} of kind {cls.kind!r} requires "
                f"{cls.storage} shared memory for {what}{name!r}"
            )

    def open(self) -> None:
        """Acquire resources; called in the manager thread before the plugin thread starts."""

    def close(self) -> None:
        """Release what ``open`` acquired."""

    def _attach_runtime_events(self, *, stop_event, pause_event) -> None:
        """Take the controller's stop and pause events (the helpers below read them)."""
        self.context = context_with_events(self.context, stop_event, pause_event)

    def stop_requested(self) -> bool:
        event = self.context.stop_event
        return bool(event is not None and event.is_set())

    def paused(self) -> bool:
        event = self.context.pause_event
        return bool(event is not None and event.is_set())

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` in slices of at most 50 ms; True when a stop was requested."""
        deadline = time.monotonic() + max(0.0, float(seconds))
        while not self.stop_requested():
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                return False
            time.sleep(min(remaining, WAIT_SLICE_S))
        return True

    def read_auxiliary(self, alias: str, timeout: float = 0.01):
        """The newest value of auxiliary ``alias`` as a private copy, or None.

        None means: the alias is not bound, nothing was published yet, or the
        handle raised TimeoutError. ``shm.Stream.read()`` never blocks (it
        re-reads when lapped by the writer), so ``timeout`` only keeps
        shmpipeline's signature.
        """
        stream = self.context.auxiliary_streams.get(alias)
        if stream is None:
            return None
        try:
            if stream.count <= 0:
                return None
            return stream.read()
        except TimeoutError:
            return None

    def plugin_metrics(self) -> dict:
        """Plugin-specific numbers for status(); empty by default."""
        return {}


class Source(_Endpoint):
    """A thread plugin that writes one or more streams (spec 10.5).

    Single-stream sources implement ``read()`` (return a payload, or None for
    "nothing yet"); multi-stream sources implement ``produce(writers)`` and
    return how many generations they wrote (0 or None for nothing). A source
    that needs feedback lists the auxiliary aliases in ``required_feedback_aliases``.
    """

    _role = "source"
    required_feedback_aliases: tuple[str, ...] = ()

    @classmethod
    def validate_config(cls, config, shared_memory: Mapping[str, Any]) -> None:
        for name in config.streams:
            cls._require_storage(config, shared_memory, name)
        for binding in config.auxiliary:
            cls._require_storage(config, shared_memory, binding.name, "auxiliary ")

    def read(self):
        raise NotImplementedError(f"source kind {self.kind!r} does not implement read()")

    def produce(self, writers: Mapping[str, Any]):
        raise NotImplementedError(f"source kind {self.kind!r} does not implement produce()")


class Sink(_Endpoint):
    """A thread plugin that consumes every publication of one stream (spec 10.5).

    Stateful sinks (with ``outputs``) override ``consume_publication`` and
    write through ``writers[name].write(value, frame_id=publication.frame_id)``.
    """

    _role = "sink"

    @classmethod
    def validate_config(cls, config, shared_memory: Mapping[str, Any]) -> None:
        cls._require_storage(config, shared_memory, config.stream)
        for binding in config.auxiliary:
            cls._require_storage(config, shared_memory, binding.name, "auxiliary ")
        for name in config.outputs:
            cls._require_storage(config, shared_memory, name, "output ")

    def consume(self, value) -> None:
        raise NotImplementedError(f"sink kind {self.kind!r} does not implement consume()")

    def consume_publication(self, publication, writers: Mapping[str, Any]) -> None:
        self.consume(publication.payload)
