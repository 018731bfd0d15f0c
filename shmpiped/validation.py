"""Whole-pipeline validation before build (spec 1.6 and 6.4).

``validate_pipeline_config`` returns every error message, in this order:

0. names and shapes the segments cannot hold (``segment_limit_errors``; a
   loaded file was refused these already, a config built in Python was not);
1. the graph's multiple-producer errors (``PipelineGraph.validation_errors``);
2. each kernel, source and sink checked by its class through the registry
   (kind, arity, storage, shapes, dtypes, parameters);
3. GPU streams: each ``storage: gpu`` stream needs a usable device here
   (CuPy installed, a driver, that device index);
4. the feedback-path rule: a source that declares
   ``required_feedback_aliases`` must receive, through a sink output, a
   stream whose path back to the source's outputs runs only through kernels
   that propagate the frame id.

Each message ends with the file and line of the entry at fault
(``PipelineConfig.locate``); a plugin's message is cut to
``config_limits.MAX_MESSAGE_CHARS`` first.  Checks cost the same for any
stream size: no check allocates a stream's declared shape. ``raise_for_invalid`` raises them all at once.
``validate_pipeline_config`` is importable from ``shmpiped.graph`` too, as
in shmpipeline.
"""

from __future__ import annotations

from typing import Any

from shmpiped import config_limits as limits
from shmpiped.compat import plugin_config_errors
from shmpiped.config_limits import bounded_message
from shmpiped.errors import ConfigValidationError
from shmpiped.graph import PipelineGraph

__all__ = ["validate_pipeline_config", "raise_for_invalid", "gpu_stream_errors", "feedback_path_errors",
           "segment_limit_errors"]


def validate_pipeline_config(config, registry=None) -> list[str]:
    """Every graph, registry and feedback-path error of ``config`` (empty when valid)."""
    if registry is None:
        from shmpiped.kernels.registry import default_registry

        registry = default_registry()
    errors = segment_limit_errors(config)
    errors.extend(PipelineGraph(config).validation_errors())
    streams = config.streams_by_name
    for kernel in config.kernels:
        errors.extend(_plugin_errors(config, kernel, "kernel", lambda e: registry.validate(e, streams)))
    for source in config.sources:
        errors.extend(_plugin_errors(config, source, "source", lambda e: registry.validate_source(e, streams)))
    for sink in config.sinks:
        errors.extend(_plugin_errors(config, sink, "sink", lambda e: registry.validate_sink(e, streams)))
    errors.extend(gpu_stream_errors(config))
    errors.extend(feedback_path_errors(config, registry))
    return errors


def raise_for_invalid(config, registry=None) -> None:
    """Raise ConfigValidationError carrying every error, if there is any."""
    errors = validate_pipeline_config(config, registry)
    if errors:
        raise ConfigValidationError(errors=errors)


def segment_limit_errors(config) -> list[str]:
    """Names and shapes the segments cannot hold (``config_limits``).

    A loaded file was refused these already; a ``PipelineConfig`` built in
    Python meets them here, before its build would fail on them.
    """
    errors = []
    if config.namespace is not None:
        problem = limits.namespace_problem(config.namespace)
        if problem:
            return [config.locate(problem)]
    for spec in config.shared_memory:
        problem = (limits.stream_name_problem(spec.name, config.namespace)
                   or limits.shape_problem(spec.name, tuple(spec.shape), spec.dtype.itemsize))
        if problem:
            errors.append(config.locate(problem, spec))
    for kernel in config.kernels:
        problem = limits.kernel_name_problem(kernel.name)
        if "\0" in kernel.name:
            problem = f"kernel name {limits.short_repr(kernel.name)} must not contain NUL characters"
        if problem:
            errors.append(config.locate(problem, kernel))
    if len(config.kernels) > limits.MAX_KERNELS:
        errors.append(config.locate(f"pipeline config defines {len(config.kernels)} kernels; a pipeline runs "
                                    f"at most {limits.MAX_KERNELS}", config.kernels[limits.MAX_KERNELS]))
    return errors


def _plugin_errors(config, entry, role: str, validate) -> list[str]:
    """The messages of one plugin's ``validate_config``, located at its entry.

    A plugin written for the real shmpipeline raises that package's
    ``ConfigValidationError`` (an ``Exception``, not a ``ValueError``); any
    other exception from a plugin is reported too, naming it, rather than
    ending the whole validation with a traceback.
    """
    try:
        validate(entry)
    except plugin_config_errors() as exc:
        messages = getattr(exc, "errors", None) or (str(exc),)
    except ImportError as exc:
        messages = (f"{role} {entry.name!r} of kind {entry.kind!r} could not be loaded: {exc}",)
    except (ValueError, TypeError) as exc:
        # A plugin class with the wrong kind or role.
        messages = (str(exc),)
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug, reported at its entry
        messages = (f"{role} {entry.name!r} of kind {entry.kind!r} failed to validate its "
                    f"configuration: {type(exc).__name__}: {exc}",)
    else:
        return []
    return [config.locate(bounded_message(str(message)), entry) for message in messages]


def gpu_stream_errors(config) -> list[str]:
    """Why the GPU streams cannot be built in this process (empty where a GPU is usable).

    Without any usable GPU that is one error for all of them, at the first.
    """
    specs = [spec for spec in config.shared_memory if spec.storage == "gpu"]
    if not specs:
        return []
    from shmpiped.shm.device import gpu_status  # probes CuPy only for pipelines that use a GPU

    status = gpu_status()
    if not status.usable:
        names = ", ".join(repr(spec.name) for spec in specs)
        devices = ", ".join(sorted({spec.gpu_device for spec in specs}))
        have = "has" if len(specs) == 1 else "have"
        return [config.locate(f"shared memory {names} {have} storage: gpu on {devices}, but {status.reason}",
                              specs[0])]
    errors = []
    for spec in specs:
        try:
            problem = status.check_device(spec.gpu_device)
        except ValueError as exc:
            problem = str(exc)
        if problem:
            errors.append(config.locate(f"shared memory {spec.name!r} has storage: gpu, but {problem}", spec))
    return errors


# --------------------------------------------------------------------------- feedback paths


def feedback_path_errors(config, registry) -> list[str]:
    """The spec 6.4 errors of every source that declares required feedback aliases."""
    errors: list[str] = []
    for source in config.sources:
        try:
            source_class = registry.get_source(source.kind)
        except Exception:  # unknown or unloadable kind: already reported by the registry step
            continue
        for alias in tuple(getattr(source_class, "required_feedback_aliases", ()) or ()):
            errors.extend(_feedback_alias_errors(config, source, alias))
    return errors


def _feedback_alias_errors(config, source, alias: str) -> list[str]:
    bound = source.auxiliary_by_alias
    if alias not in bound:
        return [config.locate(f"source {source.name!r} requires feedback auxiliary alias {alias!r}", source)]
    feedback = bound[alias]
    sink = next((sink for sink in config.sinks if feedback in sink.outputs), None)
    if sink is None:
        return [config.locate(
            f"feedback stream {feedback!r} for source {source.name!r} must be declared as a sink output",
            source,
        )]
    trace = _FeedbackTrace(config, source)
    reached, path, failure = trace.walk(sink.stream, frozenset())
    errors = [
        config.locate(
            f"kernel {kernel.name!r} on feedback path for source {source.name!r} "
            "must set propagate_frame_id: true",
            kernel,
        )
        for kernel in path
        if not kernel.propagate_frame_id
    ]
    if not reached:
        prefix = f"feedback path for source {source.name!r} and stream {feedback!r}"
        if failure == "cycle":
            message = f"{prefix} contains a cycle before reaching a source output"
        else:
            message = f"{prefix} cannot trace sink input {sink.stream!r} to a source output"
        errors.append(config.locate(message, source))
    return errors


class _FeedbackTrace:
    """Walks from a sink's input back through producing kernels' trigger inputs."""

    def __init__(self, config, source) -> None:
        self.targets = set(source.streams)
        self.producer: dict[str, Any] = {}
        for kernel in config.kernels:
            for output in kernel.outputs:
                self.producer.setdefault(output, kernel)

    def walk(self, stream: str, seen: frozenset) -> tuple[bool, list, str | None]:
        """(reached a source output, kernels on the path, "cycle" | "untraceable" | None).

        Every trigger input of a kernel is tried; the first branch that reaches
        the source wins, otherwise the first branch's failure is reported.
        """
        if stream in self.targets:
            return True, [], None
        if stream in seen:
            return False, [], "cycle"
        kernel = self.producer.get(stream)
        if kernel is None:
            return False, [], "untraceable"
        first_failure: tuple[list, str | None] | None = None
        for trigger in kernel.inputs:
            reached, path, failure = self.walk(trigger, seen | {stream})
            if reached:
                return True, [kernel, *path], None
            if first_failure is None:
                first_failure = (path, failure)
        path, failure = first_failure if first_failure is not None else ([], "untraceable")
        return False, [kernel, *path], failure
