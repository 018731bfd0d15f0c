"""``KernelRegistry``: kind name -> plugin class, for kernels, sources and sinks (spec 10.5).

A registry holds classes, and lazy entries (an ``importlib.metadata``
entry point, a ``"module:attribute"`` path or a zero-argument callable)
resolved and cached on first use. ``default_registry()`` holds the built-in
kinds plus the plugins installed under the entry-point groups
``shmpiped.kernels``, ``shmpiped.sources`` and ``shmpiped.sinks``, and
shmpipeline's ``shmpipeline.*`` groups so its plugins load unchanged.
An entry point's name is the kind it provides; built-in kinds win.
``get_default_registry()`` is the one default registry of the process, as in
shmpipeline.

Plugin classes need not derive from shmpiped's bases: a class with the
methods of its role (a plugin built on the real shmpipeline's ``Kernel``,
``Source`` or ``Sink``) is accepted.  Before a lazy plugin is imported, the
``shmpipeline`` import fallback is installed (``shmpiped.compat``), so a
plugin that imports ``shmpipeline.kernel`` loads where shmpipeline itself is
not installed; where it is, the real package wins.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import threading
import warnings
from typing import Any, Iterable, Mapping

from shmpiped.errors import ConfigValidationError
from shmpiped.kernels.base import (
    Kernel,
    KernelContext,
    Sink,
    SinkContext,
    Source,
    SourceContext,
    array_namespace,
)
from shmpiped.kernels.catalogue import BUILTIN_LAZY_SINKS, BUILTIN_LAZY_SOURCES, BUILTIN_SINKS, CPU_KERNELS

#: entry-point group -> plugin role, in precedence order (shmpiped's own groups first).
ENTRY_POINT_GROUPS = {
    "shmpiped.kernels": "kernel",
    "shmpiped.sources": "source",
    "shmpiped.sinks": "sink",
    "shmpipeline.kernels": "kernel",
    "shmpipeline.sources": "source",
    "shmpipeline.sinks": "sink",
}

#: The kinds shmpipeline 1.3.0 calls legacy adaptive-optics kernels.  shmpiped keeps
#: ``*.shack_hartmann_centroid`` and ``*.tomographic_controller`` first-class; the
#: kinds whose class sets ``deprecated`` warn when resolved.
LEGACY_AO_KERNEL_KINDS = frozenset({
    "cpu.centroid",
    "cpu.shack_hartmann_centroid",
    "cpu.tip_tilt_controller",
    "cpu.tomographic_controller",
    "gpu.shack_hartmann_centroid",
    "gpu.tip_tilt_controller",
    "gpu.tomographic_controller",
})

#: What a class written for another base (a shmpipeline plugin) must offer, per role:
#: at least one method of each group.
_PLUGIN_METHODS = {
    "kernel": (("validate_config",), ("compute_into", "compute_into_multiple")),
    "source": (("validate_config",), ("read", "produce")),
    "sink": (("validate_config",), ("consume", "consume_publication")),
}


def _offers(cls: type, groups) -> bool:
    return all(any(callable(getattr(cls, name, None)) for name in group) for group in groups)

LazyEntry = Any  # EntryPoint | "module:attribute" | Callable[[], type]


def _load_lazy(entry: LazyEntry):
    if not (isinstance(entry, str) and entry.startswith("shmpiped.")):  # built-ins need no fallback
        from shmpiped.compat import install_shmpipeline_fallback

        install_shmpipeline_fallback()  # plugins written for shmpipeline import it
    if isinstance(entry, str):
        module_name, _, attribute = entry.partition(":")
        target = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            target = getattr(target, part)
        return target
    if hasattr(entry, "load"):
        return entry.load()
    return entry()


class _KindTable:
    """The kinds of one role (kernel, source or sink): resolved classes plus lazy entries."""

    def __init__(self, role: str, base: type, classes=(), lazy: Mapping[str, LazyEntry] | None = None):
        self.role = role
        self.base = base
        self.classes: dict[str, type] = {}
        self.lazy: dict[str, LazyEntry] = dict(lazy or {})
        items = classes.items() if isinstance(classes, Mapping) else ((cls.kind, cls) for cls in classes)
        for kind, cls in items:
            self.check_class(cls, allow_foreign=True)
            self.classes[kind] = cls

    def copy(self) -> "_KindTable":
        table = _KindTable(self.role, self.base)
        table.classes = dict(self.classes)
        table.lazy = dict(self.lazy)
        return table

    def __contains__(self, kind: str) -> bool:
        return kind in self.classes or kind in self.lazy

    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.classes) | set(self.lazy)))

    def check_class(self, cls, allow_foreign: bool = False) -> None:
        """Raise unless ``cls`` is a plugin class of this role with a non-empty kind.

        ``allow_foreign`` accepts a class with the right methods that does not
        derive from shmpiped's base (a plugin written for shmpipeline).
        """
        if not isinstance(cls, type):
            raise TypeError(f"{self.role} plugin {cls!r} is not a class")
        if not issubclass(cls, self.base):
            if not (allow_foreign and _offers(cls, _PLUGIN_METHODS[self.role])):
                raise TypeError(f"{self.role} class {cls.__qualname__} must subclass {self.base.__name__}")
        kind = getattr(cls, "kind", "")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"{self.role} class {cls.__qualname__} must define a non-empty kind")

    def get(self, kind: str) -> type:
        cls = self.classes.get(kind)
        if cls is not None:
            return cls
        if kind not in self.lazy:
            raise ConfigValidationError(f"unknown {self.role} kind: {kind!r}")
        cls = _load_lazy(self.lazy[kind])
        self.check_class(cls, allow_foreign=True)
        if cls.kind != kind:
            raise ValueError(
                f"{self.role} plugin {kind!r} provides class {cls.__qualname__} of kind {cls.kind!r}"
            )
        self.classes[kind] = cls
        self.lazy.pop(kind, None)
        return cls

    def register(self, cls, replace: bool = False) -> None:
        self.check_class(cls, allow_foreign=True)
        if cls.kind in self and not replace:
            raise ValueError(f"{self.role} kind {cls.kind!r} is already registered")
        self.lazy.pop(cls.kind, None)
        self.classes[cls.kind] = cls

    def add_lazy(self, kind: str, entry: LazyEntry) -> bool:
        """Add a lazy entry unless the kind is taken; True when added."""
        if kind in self:
            return False
        self.lazy[kind] = entry
        return True


class KernelRegistry:
    """Resolves kind names to kernel, source and sink classes; validates and builds plugins."""

    def __init__(
        self,
        kernels: Mapping[str, type] | Iterable[type] = (),
        lazy_kernels: Mapping[str, LazyEntry] | None = None,
        sources: Mapping[str, type] | Iterable[type] = (),
        lazy_sources: Mapping[str, LazyEntry] | None = None,
        sinks: Mapping[str, type] | Iterable[type] = (),
        lazy_sinks: Mapping[str, LazyEntry] | None = None,
    ) -> None:
        self._kernels = _KindTable("kernel", Kernel, kernels, lazy_kernels)
        self._sources = _KindTable("source", Source, sources, lazy_sources)
        self._sinks = _KindTable("sink", Sink, sinks, lazy_sinks)
        #: GPU kinds registered on first use, if this process can use a GPU (see ``offer_gpu_kernels``).
        self._gpu_offer: dict[str, type] = {}

    def offer_gpu_kernels(self, kernels: Iterable[type]) -> None:
        """Register these ``gpu.*`` classes when first asked for, only if GPU storage works here.

        Otherwise asking for one raises a ConfigValidationError saying what is
        missing (CuPy, a driver, a device) instead of "unknown kind".  Probing
        is deferred so a CPU-only pipeline never imports CuPy.
        """
        self._gpu_offer.update((cls.kind, cls) for cls in kernels)

    def _gpu_kernel(self, kind: str) -> None:
        """Register offered GPU kind ``kind``, or raise why it cannot run here."""
        from shmpiped.shm.device import gpu_status

        status = gpu_status()
        if not status.usable:
            raise ConfigValidationError(f"kernel kind {kind!r} needs a usable GPU, but {status.reason}")
        self._kernels.register(self._gpu_offer.pop(kind))

    def _table(self, role: str) -> _KindTable:
        return {"kernel": self._kernels, "source": self._sources, "sink": self._sinks}[role]

    # -- lookup

    def get(self, kind: str) -> type:
        """The kernel class of ``kind``; legacy kinds warn with DeprecationWarning."""
        if kind in self._gpu_offer and kind not in self._kernels:
            self._gpu_kernel(kind)
        cls = self._kernels.get(kind)
        if getattr(cls, "deprecated", False):
            warnings.warn(
                f"kernel kind {kind!r} is deprecated and kept for compatibility only",
                DeprecationWarning,
                stacklevel=2,
            )
        return cls

    def get_source(self, kind: str) -> type:
        return self._sources.get(kind)

    def get_sink(self, kind: str) -> type:
        return self._sinks.get(kind)

    def kinds(self) -> tuple[str, ...]:
        """Every kernel kind this registry can build here (offered GPU kinds only where usable)."""
        if self._gpu_offer:
            from shmpiped.shm.device import gpu_status

            if gpu_status().usable:
                return tuple(sorted(set(self._kernels.kinds()) | set(self._gpu_offer)))
        return self._kernels.kinds()

    def source_kinds(self) -> tuple[str, ...]:
        return self._sources.kinds()

    def sink_kinds(self) -> tuple[str, ...]:
        return self._sinks.kinds()

    # -- registration

    def register(self, kernel_class: type, replace: bool = False) -> None:
        self._kernels.register(kernel_class, replace)

    def register_source(self, source_class: type, replace: bool = False) -> None:
        self._sources.register(source_class, replace)

    def register_sink(self, sink_class: type, replace: bool = False) -> None:
        self._sinks.register(sink_class, replace)

    def extended(self, *kernels: type, sources: Iterable[type] = (), sinks: Iterable[type] = (),
                 replace: bool = False) -> "KernelRegistry":
        """A new registry with these classes added; this one is unchanged."""
        registry = KernelRegistry()
        registry._kernels, registry._sources, registry._sinks = (
            self._kernels.copy(), self._sources.copy(), self._sinks.copy())
        registry._gpu_offer = dict(self._gpu_offer)
        for cls in kernels:
            registry.register(cls, replace)
        for cls in sources:
            registry.register_source(cls, replace)
        for cls in sinks:
            registry.register_sink(cls, replace)
        return registry

    def extended_sources(self, *sources: type, replace: bool = False) -> "KernelRegistry":
        return self.extended(sources=sources, replace=replace)

    def extended_sinks(self, *sinks: type, replace: bool = False) -> "KernelRegistry":
        return self.extended(sinks=sinks, replace=replace)

    # -- validation and construction

    def validate(self, config, shared_memory: Mapping[str, Any]) -> None:
        self.get(config.kind).validate_config(config, shared_memory)

    def validate_source(self, config, shared_memory: Mapping[str, Any]) -> None:
        self.get_source(config.kind).validate_config(config, shared_memory)

    def validate_sink(self, config, shared_memory: Mapping[str, Any]) -> None:
        self.get_sink(config.kind).validate_config(config, shared_memory)

    def create(self, config, shared_memory: Mapping[str, Any], config_base_dir: str | None = None):
        """Validate, then build the kernel with the array namespace of its storage."""
        cls = self.get(config.kind)
        cls.validate_config(config, shared_memory)
        context = KernelContext(
            config=config,
            shared_memory=dict(shared_memory),
            config_base_dir=config_base_dir or os.getcwd(),
            xp=array_namespace(getattr(cls, "storage", "cpu")),
        )
        return cls(context)

    def create_source(self, config, shared_memory: Mapping[str, Any], streams: Mapping[str, Any] | None = None,
                      config_base_dir: str | None = None, stop_event=None, pause_event=None):
        """Validate, then build the source.

        ``streams`` holds the live handles of its auxiliary streams, keyed by alias
        or by stream name; the endpoint helpers read them by alias.
        """
        return _build_endpoint(self.get_source(config.kind), SourceContext, config, shared_memory, streams,
                               config_base_dir, stop_event, pause_event)

    def create_sink(self, config, shared_memory: Mapping[str, Any], streams: Mapping[str, Any] | None = None,
                    config_base_dir: str | None = None, stop_event=None, pause_event=None):
        """Validate, then build the sink (``streams`` as for ``create_source``)."""
        return _build_endpoint(self.get_sink(config.kind), SinkContext, config, shared_memory, streams,
                               config_base_dir, stop_event, pause_event)


def _build_endpoint(cls, context_type, config, shared_memory, streams, config_base_dir, stop_event, pause_event):
    """Validate, then build a source or sink with its context."""
    cls.validate_config(config, shared_memory)
    return cls(context_type(config=config, shared_memory=dict(shared_memory),
                            config_base_dir=config_base_dir or os.getcwd(),
                            auxiliary_streams=_auxiliary_streams(config, streams),
                            stop_event=stop_event, pause_event=pause_event))


def _auxiliary_streams(config, streams: Mapping[str, Any] | None) -> dict:
    """alias -> live handle, from handles keyed by alias or by stream name (alias wins)."""
    streams = streams or {}
    bound = {}
    for binding in config.auxiliary:
        handle = streams.get(binding.alias, streams.get(binding.name))
        if handle is not None:
            bound[binding.alias] = handle
    return bound


@functools.lru_cache(maxsize=1)
def installed_entry_points() -> tuple:
    """The entry points of every plugin group, shmpiped's groups first.

    Scanning the installed distributions takes milliseconds, so it is done once
    per process (``installed_entry_points.cache_clear()`` rescans).
    """
    found = []
    for group in ENTRY_POINT_GROUPS:
        found.extend(importlib.metadata.entry_points(group=group))
    return tuple(found)


def default_registry(entry_points: Iterable | None = None, include_gpu: bool | None = None) -> KernelRegistry:
    """The built-in kinds plus plugins from entry points.

    ``entry_points`` defaults to ``installed_entry_points()``; pass objects with
    ``name``, ``group`` and ``load()`` (e.g. ``importlib.metadata.EntryPoint``)
    to choose them. The ``gpu.*`` kinds are offered (registered on first use
    where a GPU is usable); ``include_gpu=True`` registers them at once,
    ``False`` leaves them out. Built-in kinds win over plugins, and earlier
    entry points over later ones.
    """
    from shmpiped.kernels.gpu import GPU_KERNELS

    kernels = CPU_KERNELS + (GPU_KERNELS if include_gpu else ())
    registry = KernelRegistry(kernels=kernels, lazy_sources=BUILTIN_LAZY_SOURCES, sinks=BUILTIN_SINKS,
                              lazy_sinks=BUILTIN_LAZY_SINKS)
    if include_gpu is None:
        registry.offer_gpu_kernels(GPU_KERNELS)
    for entry_point in installed_entry_points() if entry_points is None else entry_points:
        role = ENTRY_POINT_GROUPS.get(entry_point.group)
        if role is not None:
            registry._table(role).add_lazy(entry_point.name, entry_point)
    return registry


_default: KernelRegistry | None = None
_default_lock = threading.Lock()


def get_default_registry() -> KernelRegistry:
    """The process's default registry, built by ``default_registry()`` on first use and shared after.

    To run kinds of your own, pass ``get_default_registry().extended(MyKernel)``
    to ``PipelineManager(registry=...)``.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = default_registry()
        return _default
