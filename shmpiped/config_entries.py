"""One entry of a pipeline file -> one frozen model object, every field error located.

Owns the field rules of the shmpipeline format (spec section 1): what each
key of a ``kernels``, ``sources`` or ``sinks`` entry may hold, its default,
and the message naming the field, the entry and its line when it is wrong,
and the machinery every entry is read with (``_Entry``, the field parsers);
``shared_memory`` entries are ``config_stream_entries``'.  Every error of an
entry is reported, not just the first (``_Report`` collects them, each cut
short, at most ``config_limits.MAX_REPORTED_ERRORS``).  ``config_loading`` runs these parsers over a
whole document, and over one entry for the model's ``from_dict``
classmethods (``config_loading.entry_from_mapping``).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .config import (
    KERNEL_KEYS,
    SINK_KEYS,
    SOURCE_KEYS,
    SYNCHRONIZATION_KEYS,
    SYNCHRONIZATION_MODES,
    TRIGGER_POLICIES,
    AuxiliaryBinding,
    KernelConfig,
    SinkConfig,
    SourceConfig,
    SynchronizationConfig,
    _where,
)
from .config_limits import (
    MAX_REPORTED_ERRORS,
    bounded_message,
    kernel_name_problem,
    namespace_problem,
    short_repr,
)
from .config_realtime import (
    OVERRIDE_KEYS,
    PIPELINE_ONLY_KEYS,
    REALTIME_KEYS,
    RealtimeConfig,
    field_problem,
    normalised_value,
)
from .errors import ConfigValidationError

# --------------------------------------------------------------------------- field parsers


class _Invalid(Exception):
    """A field value is invalid; the message is the user-facing error."""


_BAD = object()  # a field that failed to parse (its error is already reported)
_REQUIRED = object()  # default of a field that has none: None goes to the parser


class _Report:
    """Collects located error messages: each cut to ``MAX_MESSAGE_CHARS``, at most ``MAX_REPORTED_ERRORS``."""

    def __init__(self, source_path: str | None) -> None:
        self.source_path = source_path
        self.messages: list[str] = []
        self.omitted = 0

    def __call__(self, message: str, line: int | None = None) -> None:
        self.add_located(bounded_message(message) + _where(self.source_path, line))

    def add_located(self, message: str) -> None:
        if len(self.messages) < MAX_REPORTED_ERRORS:
            self.messages.append(message)
        else:
            self.omitted += 1

    def errors(self) -> list[str]:
        """Every message kept, and a last one counting those left out."""
        if not self.omitted:
            return list(self.messages)
        return [*self.messages, f"... and {self.omitted} more errors (the first {MAX_REPORTED_ERRORS} "
                                f"are listed)" + _where(self.source_path, None)]


class _Entry:
    """A raw mapping being parsed: reads fields, reports errors at their lines."""

    def __init__(self, raw: Mapping, report: _Report, parent: _Entry | None = None,
                 line: int | None = None) -> None:
        self.raw = raw
        self.report = report
        self.parent = parent
        self.line = getattr(raw, "line", None) or line or (parent.line if parent else None)
        self.key_lines: dict = getattr(raw, "key_lines", None) or {}
        self._ok = True

    @property
    def ok(self) -> bool:
        return self._ok

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)

    def fail(self, message: str, key: Any = None) -> None:
        self.report(message, self.line if key is None else self.line_of(key))
        self._mark_failed()

    def _mark_failed(self) -> None:
        entry: _Entry | None = self
        while entry is not None:
            entry._ok = False
            entry = entry.parent

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        """The parsed field, ``default`` when absent or null, ``_BAD`` when invalid."""
        value = self.raw.get(key)
        if value is None and default is not _REQUIRED:
            return default
        try:
            return parse(value)
        except _Invalid as exc:
            self.fail(str(exc), key)
            return _BAD

    def reject_unknown(self, allowed: tuple[str, ...], what: str, quote: bool = True) -> None:
        unknown = sorted((key for key in self.raw if key not in allowed), key=short_repr)
        if unknown:
            listed = ", ".join(short_repr(key) if quote or not isinstance(key, str) else short_repr(key)[1:-1]
                               for key in unknown)
            lines = [self.key_lines[key] for key in unknown if key in self.key_lines]
            self.report(f"{what} contains unsupported fields: {listed}",
                        min(lines) if lines else self.line)
            self._mark_failed()


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _text(what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"{what} must be a non-empty string")
        return value.strip()
    return parse


def _boolean(what: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _Invalid(f"{what} must be boolean")
        return bool(value)
    return parse


def _number(what: str, *, positive: bool = False, non_negative: bool = False,
            finite: bool = True) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if not _is_real(value) or math.isnan(float(value)):
            raise _Invalid(f"{what} must be a number")
        number = float(value)
        if finite and math.isinf(number):
            raise _Invalid(f"{what} must be finite")
        if positive and number <= 0:
            raise _Invalid(f"{what} must be positive")
        if non_negative and number < 0:
            raise _Invalid(f"{what} must be non-negative")
        return number
    return parse


def _timeout(what: str) -> Callable[[Any], float]:
    return _number(what, positive=True)


def _choice(choices: tuple[str, ...], message: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else None
        if text not in choices:
            raise _Invalid(message)
        return text
    return parse


def _stream_names(what: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise _Invalid(f"{what} must be a non-empty list of stream names")
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise _Invalid(f"{what} must contain only non-empty stream names, got {short_repr(item)}")
        return tuple(item.strip() for item in value)
    return parse


def plain_data(value: Any, _copies: dict | None = None) -> Any:
    """Deep copy of YAML data into plain dicts and lists (picklable, no lines).

    A collection met twice (a YAML alias) is copied once and shared, as the
    loaded data shares it: the copy costs what the file holds, not what its
    aliases expand to.
    """
    if not isinstance(value, (Mapping, list, tuple)):
        return copy.deepcopy(value)
    copies = {} if _copies is None else _copies
    done = copies.get(id(value))
    if done is not None:
        return done[1]
    if isinstance(value, Mapping):
        copied: Any = {}
        copies[id(value)] = (value, copied)
        copied.update((key, plain_data(item, copies)) for key, item in value.items())
    elif isinstance(value, list):
        copied = []
        copies[id(value)] = (value, copied)
        copied.extend(plain_data(item, copies) for item in value)
    else:
        copied = tuple(plain_data(item, copies) for item in value)
        copies[id(value)] = (value, copied)
    return copied


def _parameters(owner: str) -> Callable[[Any], dict]:
    def parse(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise _Invalid(f"parameters for {owner} must be a mapping")
        return plain_data(value)
    return parse


def _auxiliary(owner: str) -> Callable[[Any], tuple[AuxiliaryBinding, ...]]:
    what = f"auxiliary for {owner}"

    def parse(value: Any) -> tuple[AuxiliaryBinding, ...]:
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif isinstance(value, (list, tuple)):
            pairs = [(item, item) for item in value]
        else:
            raise _Invalid(
                f"{what} must be a list of stream names or a mapping of alias to stream name"
            )
        bindings = []
        for alias, name in pairs:
            if not isinstance(name, str) or not name.strip():
                raise _Invalid(f"{what} must name streams with non-empty strings, got {short_repr(name)}")
            if not isinstance(alias, str) or not alias.strip():
                raise _Invalid(f"{what} aliases must be non-empty strings, got {short_repr(alias)}")
            bindings.append(AuxiliaryBinding(alias.strip(), name.strip()))
        return tuple(bindings)
    return parse


def _repeats(items: tuple) -> bool:
    return len(set(items)) != len(items)


def _check_auxiliary_repeats(entry: _Entry, owner: str, auxiliary: Any) -> None:
    if auxiliary is _BAD:
        return
    if _repeats(tuple(b.name for b in auxiliary)):
        entry.fail(f"{owner} cannot reuse the same auxiliary stream more than once", "auxiliary")
    elif _repeats(tuple(b.alias for b in auxiliary)):
        entry.fail(f"{owner} cannot reuse the same auxiliary alias more than once", "auxiliary")


# -- kernels, sources, sinks ---------------------------------------------------------------


def _synchronization(entry: _Entry, owner: str) -> Any:
    raw = entry.raw.get("synchronization")
    if raw is None:
        return SynchronizationConfig()
    if not isinstance(raw, Mapping):
        entry.fail(f"synchronization for {owner} must be a mapping", "synchronization")
        return _BAD
    sub = _Entry(raw, entry.report, parent=entry, line=entry.line_of("synchronization"))
    sub.reject_unknown(SYNCHRONIZATION_KEYS, f"synchronization for {owner}")
    mode = sub.get("mode", _choice(
        SYNCHRONIZATION_MODES,
        f"synchronization mode for {owner} must be either 'count' or 'matching_frame_id'",
    ), "count")
    on_skew = sub.get("on_skew", _choice(
        ("drop_older",), f"synchronization on_skew for {owner} must be 'drop_older'"
    ), "drop_older")
    generations = sub.get("max_skew_generations", _generations(owner), 16)
    if raw.get("max_wait_s") is not None and raw.get("timeout") is not None:
        sub.fail(f"synchronization for {owner} must use either 'max_wait_s' or 'timeout', "
                 "not both", "timeout")
        max_wait = _BAD
    else:
        key = "timeout" if raw.get("timeout") is not None else "max_wait_s"
        max_wait = sub.get(key, _timeout(f"synchronization {key} for {owner}"))
    if not sub.ok:
        return _BAD
    return SynchronizationConfig(mode=mode, on_skew=on_skew, max_skew_generations=generations,
                                 max_wait_s=max_wait)


def _generations(owner: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not _is_integer(value) or value < 1:
            raise _Invalid(f"synchronization max_skew_generations for {owner} must be an "
                           "integer >= 1")
        return int(value)
    return parse


def _reject_both(entry: _Entry, label: str, *pairs: tuple[str, str]) -> None:
    """Fail where an entry uses both the single and the plural form of a key."""
    for single, plural in pairs:
        if entry.has(single) and entry.has(plural):
            entry.fail(f"{label} entry must use either {single!r} or {plural!r}, not both", plural)


def _node_start(entry: _Entry, label: str, keys: tuple[str, ...]) -> tuple[str, str, Any] | None:
    """Reject unknown keys, read name and kind: ``(name, owner, kind)``; None for a bad name."""
    entry.reject_unknown(keys, f"{label} entry")
    name = entry.get("name", _node_name(label), _REQUIRED)
    if name is _BAD:
        return None
    owner = f"{label} {short_repr(name)}"
    return name, owner, entry.get("kind", _text(f"kind for {owner}"), _REQUIRED)


def _one_or_many(entry: _Entry, single: str, plural: str, owner: str) -> Any:
    """``single`` (one stream name) or ``plural`` (a list), as a tuple; one of them is required."""
    if entry.raw.get(single) is not None:
        name = entry.get(single, _text(f"{single} for {owner}"))
        return _BAD if name is _BAD else (name,)
    names = entry.get(plural, _stream_names(f"{plural} for {owner}"))
    if names is None:
        entry.fail(f"{owner} must declare {single!r} or {plural!r}")
        return _BAD
    return names


def _node_name(label: str) -> Callable[[Any], str]:
    """A kernel, source or sink name: no NUL (it names processes and records); kernels' fit a record."""
    def parse(value: Any) -> str:
        name = _text(f"{label} name")(value)
        if "\0" in name:
            raise _Invalid(f"{label} name {short_repr(name)} must not contain NUL characters")
        problem = kernel_name_problem(name) if label == "kernel" else None
        if problem:
            raise _Invalid(problem)
        return name
    return parse


def _key_used(entry: _Entry, single: str, plural: str) -> str:
    return single if entry.has(single) else plural


def _check_unique(entry: _Entry, owner: str, names: Any, what: str, key: str) -> None:
    """Fail at ``key`` when the parsed stream list ``names`` names a stream twice."""
    if isinstance(names, tuple) and _repeats(names):
        entry.fail(f"{owner} cannot declare the same {what} stream more than once", key)


def _checked_auxiliary(entry: _Entry, owner: str) -> Any:
    auxiliary = entry.get("auxiliary", _auxiliary(owner), ())
    _check_auxiliary_repeats(entry, owner, auxiliary)
    return auxiliary


def _timings(entry: _Entry, owner: str, **defaults: float | None) -> dict[str, Any]:
    """A node's durations in seconds (each positive), by key, with their defaults."""
    return {key: entry.get(key, _timeout(f"{key} for {owner}"), default)
            for key, default in defaults.items()}


# -- real time (issue 13) -----------------------------------------------------------------


def _realtime_fields(entry: _Entry, key: str, what: str, allowed: tuple[str, ...]) -> dict | Any:
    """The ``key`` mapping of ``entry`` read as realtime fields: ``{field: value}`` normalised,
    ``{}`` when absent, ``_BAD`` when anything is wrong (each problem reported at its line)."""
    raw = entry.raw.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        entry.fail(f"{what} must be a mapping of {', '.join(allowed)}", key)
        return _BAD
    sub = _Entry(raw, entry.report, parent=entry, line=entry.line_of(key))
    misplaced = [name for name in PIPELINE_ONLY_KEYS if name in raw and name not in allowed]
    if misplaced:
        listed = " and ".join(repr(name) for name in misplaced)
        sub.fail(f"{what} cannot set {listed}: cpus and required are the whole pipeline's (set them in the top-level "
                 "realtime block; pin one kernel with its own 'cpu' key)", misplaced[0])
    sub.reject_unknown(allowed + tuple(misplaced), what)
    values = {}
    for name in allowed:
        if name in raw and raw[name] is not None:
            problem = field_problem(name, raw[name])
            if problem:
                sub.fail(f"{what} {problem}", name)
            else:
                values[name] = normalised_value(name, raw[name])
    return values if sub.ok else _BAD


def parse_realtime_block(entry: _Entry) -> RealtimeConfig | Any:
    """The top-level ``realtime:`` block: a ``RealtimeConfig`` (the defaults when absent), or ``_BAD``."""
    values = _realtime_fields(entry, "realtime", "realtime", REALTIME_KEYS)
    if values is _BAD:
        return _BAD
    line = entry.line_of("realtime") if entry.has("realtime") else None
    try:
        return RealtimeConfig(**values, line=line)
    except ConfigValidationError as exc:  # the rule across fields: a priority for policy other
        sub_lines = getattr(entry.raw.get("realtime"), "key_lines", None) or {}
        entry.report(str(exc), sub_lines.get("priority", line))
        return _BAD


def _cpu(owner: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not _is_integer(value) or value < 0:
            raise _Invalid(f"cpu for {owner} must be a CPU number (an integer from 0), got {short_repr(value)}")
        return int(value)
    return parse


def _parse_kernel(entry: _Entry) -> KernelConfig | None:
    _reject_both(entry, "kernel", ("input", "inputs"), ("output", "outputs"))
    start = _node_start(entry, "kernel", KERNEL_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    inputs = _one_or_many(entry, "input", "inputs", owner)
    outputs = _one_or_many(entry, "output", "outputs", owner)
    auxiliary = entry.get("auxiliary", _auxiliary(owner), ())
    operation = entry.get("operation", _text(f"operation for {owner}"))
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, read_timeout=1.0, pause_sleep=0.01, poll_interval=1e-5)
    policy_error = f"trigger_policy for {owner} must be either 'any_new' or 'all_new'"
    trigger_policy = entry.get("trigger_policy", _choice(TRIGGER_POLICIES, policy_error))
    synchronization = _synchronization(entry, owner)
    propagate = entry.get("propagate_frame_id", _boolean(f"propagate_frame_id for {owner}"), False)
    cpu = entry.get("cpu", _cpu(owner))
    realtime = _realtime_fields(entry, "realtime", f"realtime for {owner}", OVERRIDE_KEYS)
    if trigger_policy is None and isinstance(inputs, tuple):
        trigger_policy = "all_new" if len(inputs) > 1 else "any_new"
    if all(isinstance(value, tuple) for value in (inputs, outputs, auxiliary)) and (
        trigger_policy is not _BAD and synchronization is not _BAD
    ):
        _check_kernel_streams(entry, owner, inputs, outputs, auxiliary, trigger_policy,
                              synchronization)
    if not entry.ok:
        return None
    return KernelConfig(
        name=name, kind=kind, inputs=inputs, outputs=outputs, auxiliary=auxiliary,
        operation=operation, parameters=parameters, trigger_policy=trigger_policy,
        synchronization=synchronization, propagate_frame_id=propagate, line=entry.line,
        cpu=cpu, realtime=realtime, **timings,
    )


def _check_kernel_streams(entry: _Entry, owner: str, inputs: tuple, outputs: tuple,
                          auxiliary: tuple, trigger_policy: str,
                          synchronization: SynchronizationConfig) -> None:
    _check_unique(entry, owner, inputs, "trigger input", _key_used(entry, "input", "inputs"))
    if synchronization.mode == "matching_frame_id" and trigger_policy != "all_new":
        entry.fail(f"{owner} synchronization mode 'matching_frame_id' requires trigger_policy "
                   "'all_new'", "synchronization")
    _check_unique(entry, owner, outputs, "output", _key_used(entry, "output", "outputs"))
    if set(inputs) & set(outputs):
        entry.fail(f"{owner} cannot use the same shared memory for both input and output")
    _check_auxiliary_repeats(entry, owner, auxiliary)
    names = {binding.name for binding in auxiliary}
    if names & set(inputs):
        entry.fail(f"{owner} cannot reuse the trigger input as auxiliary", "auxiliary")
    if names & set(outputs):
        entry.fail(f"{owner} cannot reuse the output as auxiliary", "auxiliary")


def _parse_source(entry: _Entry) -> SourceConfig | None:
    _reject_both(entry, "source", ("stream", "streams"))
    start = _node_start(entry, "source", SOURCE_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    streams = _one_or_many(entry, "stream", "streams", owner)
    _check_unique(entry, owner, streams, "output", _key_used(entry, "stream", "streams"))
    auxiliary = _checked_auxiliary(entry, owner)
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, poll_interval=0.01, read_timeout=None)
    process = entry.get("process", _boolean(f"process for {owner}"), False)
    realtime = _realtime_fields(entry, "realtime", f"realtime for {owner}", OVERRIDE_KEYS)
    if realtime and process is False:
        entry.fail(f"realtime for {owner} applies only to a source that runs in its own process: add "
                   "'process: true' to it (a source thread shares the daemon's scheduling)", "realtime")
    if not entry.ok:
        return None
    return SourceConfig(name=name, kind=kind, streams=streams, auxiliary=auxiliary,
                        parameters=parameters, line=entry.line, process=process, realtime=realtime, **timings)


def _parse_sink(entry: _Entry) -> SinkConfig | None:
    start = _node_start(entry, "sink", SINK_KEYS)
    if start is None:
        return None
    name, owner, kind = start
    stream = entry.get("stream", _text(f"stream for {owner}"), _REQUIRED)
    raw_outputs = entry.raw.get("outputs")
    outputs: Any = ()
    if raw_outputs is not None and raw_outputs != []:
        outputs = entry.get("outputs", _stream_names(f"outputs for {owner}"))
        _check_unique(entry, owner, outputs, "output", "outputs")
    auxiliary = _checked_auxiliary(entry, owner)
    parameters = entry.get("parameters", _parameters(owner), {})
    timings = _timings(entry, owner, read_timeout=1.0, pause_sleep=0.01, consume_timeout=None)
    if not entry.ok:
        return None
    return SinkConfig(name=name, kind=kind, stream=stream, outputs=outputs, auxiliary=auxiliary,
                      parameters=parameters, line=entry.line, **timings)


# -- the whole document ---------------------------------------------------------------------


def _namespace(value: Any) -> str:
    namespace = _text("pipeline config field 'namespace'")(value)
    if any(char in namespace for char in "/\\\0"):
        raise _Invalid(
            "pipeline config field 'namespace' must not contain path separators or null bytes"
        )
    problem = namespace_problem(namespace)
    if problem:
        raise _Invalid(problem)
    return namespace
