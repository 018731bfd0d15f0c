"""Pipeline files and mappings -> ``PipelineConfig``: the one place YAML is read and parsed.

Owns reading a pipeline file (``read_config_text``), parsing YAML
(``parse_yaml``: a safe loader that records the line of every mapping,
sequence and key, reports duplicate keys, reads ``1e-5`` as a number and
keeps timestamps as strings), and building a whole pipeline from the parsed
document (``load_pipeline_file``, ``pipeline_from_mapping``): each entry through
``config_entries`` and ``config_stream_entries``, then the checks across
entries (unique names, references to undefined streams, ``base_path``, the
number of kernels).  Every error is collected and located by file and line;
one ``ConfigValidationError`` carries them all.

``PipelineConfig.from_yaml``/``from_dict`` and the entries' ``from_dict``
(through ``entry_from_mapping`` ...) delegate here, and so does every other
reader of pipeline YAML (``document``), so the limits on what a file may cost
to load (``config_limits``: bytes read, values once aliases are expanded,
aliases, nesting, integer digits, characters YAML forbids) are enforced here
and nowhere else, each as a located error, before the work they bound.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import yaml

from . import config_limits as limits
from .config import (
    TOP_LEVEL_KEYS,
    InitialValueConfig,
    PipelineConfig,
    RealtimeConfig,
    SynchronizationConfig,
    _where,
)
from .config_entries import (
    _BAD,
    _Entry,
    _Invalid,
    _namespace,
    _parse_kernel,
    _parse_sink,
    _parse_source,
    _Report,
    _synchronization,
    parse_realtime_block,
)
from .config_realtime import effective_realtime
from .config_stream_entries import _initial, _parse_stream
from .errors import ConfigFileUnreadable, ConfigValidationError

__all__ = [
    "entry_from_mapping",
    "initial_from_mapping",
    "load_pipeline_file",
    "load_yaml",
    "parse_yaml",
    "pipeline_from_mapping",
    "read_config_text",
    "realtime_from_mapping",
    "synchronization_from_mapping",
    "whole_config_errors_of",
]

# --------------------------------------------------------------------------- YAML


class _LocatedDict(dict):
    """A mapping read from YAML that remembers its line and its keys' lines."""

    __slots__ = ("line", "key_lines")


class _LocatedList(list):
    """A sequence read from YAML that remembers its line and its items' lines."""

    __slots__ = ("line", "item_lines")


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
# YAML 1.1 wants a dot in a float; people write 1e-5 and mean a number.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _LineLoader(yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader recording lines and duplicate keys, reading 1e-5 as a float, within limits.

    Timestamps stay strings, so that every loaded value is JSON-serialisable.
    Composing a document stops at the first node over a limit of
    ``config_limits`` (nesting, aliases, nodes once aliases are expanded, a
    recursive alias), so no file costs more than those limits allow.  The
    events come from PyYAML's parser (``_PyYAMLLoader``) or libyaml's
    (``_LibYAMLLoader``, several times faster); the nodes are composed here.
    """

    def __init__(self) -> None:
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.duplicate_keys: list[tuple[Any, int]] = []
        self.depth = 0
        self.nodes = 0  # nodes composed so far, aliases counted as what they expand to
        self.aliases = 0
        self.anchored_sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._count_alias(event, node)
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > limits.MAX_NESTING_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"the document nests deeper than {limits.MAX_NESTING_DEPTH} levels",
                event.start_mark)
        before = self.nodes
        node = super().compose_node(parent, index)
        self.depth -= 1
        self._count(1, event)
        if event.anchor is not None:
            self.anchored_sizes[id(node)] = self.nodes - before
        return node

    def _count_alias(self, event, node) -> None:
        size = self.anchored_sizes.get(id(node))
        if size is None:  # its collection is still being composed
            raise yaml.composer.ComposerError(
                None, None, f"alias *{limits.short_repr(event.anchor)[1:-1]} refers to a collection "
                "that contains it (a recursive alias)", event.start_mark)
        self.aliases += 1
        if self.aliases > limits.MAX_ALIASES:
            raise yaml.composer.ComposerError(
                None, None, f"the document uses more than {limits.MAX_ALIASES} aliases", event.start_mark)
        self._count(size, event)

    def _count(self, nodes: int, event) -> None:
        self.nodes += nodes
        if self.nodes > limits.MAX_DOCUMENT_NODES:
            where = ""
            if isinstance(event, yaml.AliasEvent):
                where = f" once its aliases are expanded (at alias *{limits.short_repr(event.anchor)[1:-1]})"
            raise yaml.composer.ComposerError(
                None, None, f"the document holds more than {limits.MAX_DOCUMENT_NODES} values{where}",
                event.start_mark)


def _construct_map(loader: _LineLoader, node: yaml.MappingNode):
    data = _LocatedDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    first_explicit = len(node.value) - explicit
    seen = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found unhashable key", key_node.start_mark,
            ) from exc
        line = key_node.start_mark.line + 1
        if index >= first_explicit:
            if key in seen:
                loader.duplicate_keys.append((key, line))
            seen.add(key)
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = line


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode):
    data = _LocatedList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_LineLoader.yaml_implicit_resolvers = {
    first: [resolver for resolver in resolvers if resolver[0] != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789"))
_LineLoader.add_constructor(_MAP_TAG, _construct_map)
_LineLoader.add_constructor(_SEQ_TAG, _construct_seq)


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    """An integer of at most ``MAX_INTEGER_DIGITS`` digits (any base: the same magnitude)."""
    digits = sum(char.isdigit() for char in node.value)
    if digits <= limits.MAX_INTEGER_DIGITS:
        value = loader.construct_yaml_int(node)
        if abs(value) < limits.MAX_INTEGER:
            return value
    raise yaml.constructor.ConstructorError(
        None, None, f"an integer of {digits} digits or more; at most {limits.MAX_INTEGER_DIGITS} are read",
        node.start_mark)


_LineLoader.add_constructor(_INT_TAG, _construct_int)


#: Text up to this size that libyaml finds a syntax error in is parsed again by PyYAML (about
#: 2 s at most), whose messages are the ones shmpipeline users know; a larger file keeps libyaml's.
_REWORDED_SYNTAX_ERRORS_CHARS = 256 * 1024


class _PyYAMLLoader(_LineLoader, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """``_LineLoader`` over PyYAML's own reader, scanner and parser (its messages say the most)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _LineLoader.__init__(self)


try:
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _LibYAMLLoader = None
else:
    class _LibYAMLLoader(_LineLoader, CParser):  # type: ignore[no-redef]
        """``_LineLoader`` over libyaml's parser."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _LineLoader.__init__(self)


def _line_of(text: str | bytes, offset: int) -> int:
    return text.count("\n" if isinstance(text, str) else b"\n", 0, offset) + 1


def read_config_text(path: str | os.PathLike) -> str:
    """The text of a pipeline file; a ``ConfigValidationError`` naming it when unreadable.

    At most ``MAX_FILE_BYTES`` are read: a bigger file (or a device that never
    ends) is refused without reading the rest.
    """
    source = str(path)
    try:
        # O_NONBLOCK: a named pipe nobody writes would block the open; it is refused below instead.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigValidationError(f"pipeline config {source} is not a regular file")
            os.set_blocking(fd, True)
            data = handle.read(limits.MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigFileUnreadable(f"pipeline config file not found: {source}") from exc
    except OSError as exc:
        raise ConfigFileUnreadable(f"cannot read pipeline config {source}: {exc.strerror or exc}") from exc
    if len(data) > limits.MAX_FILE_BYTES:
        raise ConfigValidationError(
            f"pipeline config is larger than {limits.MAX_FILE_BYTES // (1024 * 1024)} MiB, the most a "
            f"pipeline file may have: keep large arrays in files of their own" + _where(source, None))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigValidationError(
            f"cannot read pipeline config {source}: it is not UTF-8 text (byte {exc.start})"
            + _where(source, _line_of(data, exc.start))) from exc


def _character_problem(text: str, source: Any) -> ConfigValidationError | None:
    """A located error for the first character YAML does not allow (a NUL byte ...), else None."""
    match = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if match is None:
        return None
    char = match.group()
    what = "a NUL byte" if char == "\0" else f"the control character U+{ord(char):04X}"
    return ConfigValidationError(
        f"invalid YAML: the text contains {what}, which YAML does not allow (column "
        f"{match.start() - text.rfind(chr(10), 0, match.start())})" + _where(source, _line_of(text, match.start())))


def parse_yaml(text: str, source: Any = None) -> tuple[Any, list[tuple[Any, int]]]:
    """Parse YAML ``text``: its data (mappings carry lines) and its duplicate keys.

    A syntax error, or text over a limit of ``config_limits`` (size, nesting,
    aliases, integer digits), is a ``ConfigValidationError`` naming ``source``
    (the file, when there is one) and the line.  Empty text gives None.
    """
    if len(text) > limits.MAX_FILE_BYTES:
        raise ConfigValidationError(f"pipeline config is larger than {limits.MAX_FILE_BYTES} characters"
                                    + _where(source, None))
    problem = _character_problem(text, source)
    if problem is not None:
        raise problem
    try:
        try:
            return _load(_LibYAMLLoader or _PyYAMLLoader, text)
        except (yaml.scanner.ScannerError, yaml.parser.ParserError):
            if _LibYAMLLoader is None or len(text) > _REWORDED_SYNTAX_ERRORS_CHARS:
                raise
        # A syntax error in a small file: PyYAML's parser finds it too, and words it as PyYAML users know.
        return _load(_PyYAMLLoader, text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        line = None if mark is None else mark.line + 1
        message = f"invalid YAML: {limits.bounded_message(problem)}"
        context_mark = exc.context_mark
        if exc.problem and exc.context and context_mark and context_mark.line + 1 != line:
            message += f" ({limits.bounded_message(exc.context)} at line {context_mark.line + 1})"
        raise ConfigValidationError(message + _where(source, line)) from exc
    except yaml.YAMLError as exc:
        raise ConfigValidationError(f"invalid YAML: {limits.bounded_message(str(exc))}"
                                    + _where(source, None)) from exc


def _load(loader_class: type, text: str) -> tuple[Any, list[tuple[Any, int]]]:
    loader = loader_class(text)
    try:
        return loader.get_single_data(), loader.duplicate_keys
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike) -> tuple[Mapping, list[tuple[Any, int]]]:
    """Read and parse a pipeline file: its top-level mapping and its duplicate keys.

    Every failure (unreadable file, syntax error, empty file, not a mapping)
    is a ``ConfigValidationError`` naming the file, and the line when known.
    """
    source = str(path)
    data, duplicates = parse_yaml(read_config_text(path), source)
    if data is None:
        raise ConfigValidationError("pipeline config is empty" + _where(source, None))
    if not isinstance(data, Mapping):
        raise ConfigValidationError(
            f"pipeline config must be a mapping, got {_type_name(data)}"
            + _where(source, getattr(data, "line", None) or 1)
        )
    return data, duplicates


def _type_name(value: Any) -> str:
    return "list" if isinstance(value, list) else type(value).__name__


# -- one entry, for the model's from_dict ---------------------------------------------------

#: section -> (label in messages, parser of one entry)
ENTRY_PARSERS: dict[str, tuple[str, Callable[[_Entry], Any]]] = {
    "shared_memory": ("shared_memory", lambda entry: _parse_stream(entry, None)),
    "kernels": ("kernel", _parse_kernel),
    "sources": ("source", _parse_source),
    "sinks": ("sink", _parse_sink),
}


def _raise_reported(report: _Report) -> None:
    if report.messages:
        raise ConfigValidationError(report.messages[0], errors=report.errors())


def entry_from_mapping(section: str, raw: Any):
    """One entry of ``section`` (``shared_memory``, ``kernels``, ``sources``, ``sinks``), validated.

    Raises ``ConfigValidationError`` carrying every error of the entry.
    """
    label, parse = ENTRY_PARSERS[section]
    if not isinstance(raw, Mapping):
        raise ConfigValidationError(f"{label} entry must be a mapping, got {type(raw).__name__}")
    report = _Report(None)
    result = parse(_Entry(raw, report))
    _raise_reported(report)
    return result


def initial_from_mapping(name: str, raw: Mapping, shape: tuple, dtype: str) -> InitialValueConfig:
    """The ``initial`` value of stream ``name`` given as a mapping, validated."""
    report = _Report(None)
    entry = _Entry({"initial": raw}, report)
    initial = _initial(entry, name, tuple(shape), dtype)
    _raise_reported(report)
    return initial


def synchronization_from_mapping(raw: Any, owner: str) -> SynchronizationConfig:
    """A kernel's ``synchronization`` mapping, validated; messages name ``owner``."""
    report = _Report(None)
    synchronization = _synchronization(_Entry({"synchronization": raw}, report), owner)
    _raise_reported(report)
    return synchronization


def realtime_from_mapping(raw: Any) -> RealtimeConfig:
    """A pipeline's ``realtime:`` mapping, validated (None gives the defaults)."""
    report = _Report(None)
    realtime = parse_realtime_block(_Entry({"realtime": raw}, report))
    _raise_reported(report)
    return realtime


# --------------------------------------------------------------------------- whole pipelines


def load_pipeline_file(path: str | os.PathLike) -> PipelineConfig:
    """Load and validate a pipeline file; errors name the file and line."""
    source = Path(path).expanduser().resolve()
    data, duplicates = load_yaml(source)
    return _build(data, source.parent, source, duplicates)


def pipeline_from_mapping(mapping: Any, base_path: str | os.PathLike | None = None,
                          source_path: str | os.PathLike | None = None) -> PipelineConfig:
    """Validate a mapping of the YAML format (lines are unknown).

    ``base_path`` defaults to the current directory; it is kept as given, so a
    relative one is reported rather than silently resolved.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigValidationError(
            f"pipeline config must be a mapping, got {type(mapping).__name__}"
        )
    base = Path.cwd().resolve() if base_path is None else Path(base_path)
    return _build(mapping, base, None if source_path is None else Path(source_path), ())


def whole_config_errors_of(config: PipelineConfig) -> list[str]:
    """The checks across entries of an already built ``config`` (``PipelineConfig.replace``)."""
    errors = _whole_config_errors(
        config.shared_memory, config.kernels, config.sources, config.sinks, config.base_path,
        {spec.name for spec in config.shared_memory},
        lambda message, line: message + _where(config.source_path, line),
    )
    errors.extend(realtime_errors(config.realtime, config.kernels, config.sources,
                                  lambda message, line: message + _where(config.source_path, line)))
    if config.namespace is not None:
        try:
            _namespace(config.namespace)
        except _Invalid as exc:
            errors.insert(0, str(exc) + _where(config.source_path, None))
            return errors
    for spec in config.shared_memory:  # the file names change with the namespace
        problem = limits.stream_name_problem(spec.name, config.namespace)
        if problem:
            errors.append(config.locate(problem, spec))
    return errors


def _entries(section: Any, report: _Report, label: str, parse: Callable) -> tuple[list, list]:
    """Parse every entry of a section: (parsed entries, raw names of all entries)."""
    parsed, raw_names = [], []
    item_lines = getattr(section, "item_lines", None) or [None] * len(section)
    for raw, line in zip(section, item_lines):
        if not isinstance(raw, Mapping):
            report(f"{label} entry must be a mapping", line)
            continue
        name = raw.get("name")
        if isinstance(name, str) and name.strip():
            raw_names.append(name.strip())
        result = parse(_Entry(raw, report, line=line))
        if result is not None:
            parsed.append(result)
    return parsed, raw_names


def _build(data: Mapping, base_path: Path, source_path: Path | None,
           duplicate_keys: Any) -> PipelineConfig:
    report = _Report(source_path)
    for key, line in duplicate_keys:
        report(f"duplicate key {limits.short_repr(key)} in the same mapping", line)
    top = _Entry(data, report)
    top.line = None  # a missing top-level key has no line of its own
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        listed = ", ".join(repr(key) for key in sorted(unknown, key=str))
        lines = [top.key_lines[key] for key in unknown if key in top.key_lines]
        report(f"pipeline config contains unsupported fields: {listed}", min(lines, default=None))
    namespace = top.get("namespace", _namespace)
    namespace = None if namespace is _BAD else namespace
    realtime = parse_realtime_block(top)

    shared_memory = data.get("shared_memory")
    if not isinstance(shared_memory, (list, tuple)) or not shared_memory:
        report("pipeline config must define a non-empty shared_memory list",
               top.line_of("shared_memory"))
        shared_memory = None
    sections: dict[str, Any] = {}  # None: present but not a list
    for key in ("kernels", "sources", "sinks"):
        value = data.get(key)
        if value is None:
            value = []
        elif not isinstance(value, (list, tuple)):
            report(f"pipeline config field {key!r} must be a list", top.line_of(key))
            value = None
        sections[key] = value
    if all(value is not None for value in sections.values()) and not any(sections.values()):
        report("pipeline config must define at least one kernel, source, or sink")

    streams, known = [], None
    if shared_memory is not None:
        streams, known = _entries(shared_memory, report, "shared_memory",
                                  lambda entry: _parse_stream(entry, namespace))
    parsed = {
        key: _entries(sections[key] or [], report, label, parse)[0]
        for key, label, parse in (
            ("kernels", "kernel", _parse_kernel),
            ("sources", "source", _parse_source),
            ("sinks", "sink", _parse_sink),
        )
    }
    for message in _whole_config_errors(
        streams, parsed["kernels"], parsed["sources"], parsed["sinks"], base_path,
        None if known is None else set(known),
        lambda message, line: limits.bounded_message(message) + _where(source_path, line),
    ):
        report.add_located(message)
    if realtime is not _BAD:
        for message in realtime_errors(realtime, parsed["kernels"], parsed["sources"],
                                       lambda message, line: message + _where(source_path, line)):
            report.add_located(message)
    _raise_reported(report)
    return PipelineConfig(
        shared_memory=tuple(streams), kernels=tuple(parsed["kernels"]),
        sources=tuple(parsed["sources"]), sinks=tuple(parsed["sinks"]), namespace=namespace,
        base_path=base_path, source_path=source_path, realtime=realtime,
    )


def realtime_errors(realtime: RealtimeConfig, kernels, sources,
                    locate: Callable[[str, int | None], str]) -> list[str]:
    """The real-time checks across entries: each node's merged settings hold together (a priority
    only for fifo/rr), and a kernel's ``cpu`` is one of ``realtime.cpus`` when those are given.

    Whether a CPU exists is not checked here: a pipeline file moves between
    machines (``shmpiped.realtime.cpu_problems`` checks it where it runs).
    """
    errors = []
    for entry, label in [(kernel, "kernel") for kernel in kernels] + [(source, "source") for source in sources]:
        try:
            effective_realtime(realtime, entry.realtime)
        except ConfigValidationError as exc:
            errors.append(locate(f"realtime for {label} {entry.name!r}: {str(exc).removeprefix('realtime ')}",
                                 entry.line))
        cpu = getattr(entry, "cpu", None)
        if cpu is not None and realtime.cpus is not None and cpu not in realtime.cpus:
            errors.append(locate(
                f"kernel {entry.name!r} is pinned to cpu {cpu}, which is not one of realtime.cpus "
                f"{list(realtime.cpus)}: add it there or pin the kernel to one of them", entry.line))
    return errors


def _whole_config_errors(streams, kernels, sources, sinks, base_path: Path,
                         known_streams: set[str] | None,
                         locate: Callable[[str, int | None], str]) -> list[str]:
    """The checks across entries (spec 1, step 6), each located at its entry."""
    errors: list[str] = []
    if not os.path.isabs(str(base_path)):
        errors.append(f"pipeline config base_path must be absolute, got {str(base_path)!r}")
    if len(kernels) > limits.MAX_KERNELS:
        errors.append(locate(
            f"pipeline config defines {len(kernels)} kernels; a pipeline runs at most {limits.MAX_KERNELS} "
            "(the worker records of its control block): split it into several pipelines",
            kernels[limits.MAX_KERNELS].line))
    for entries, label in ((streams, "shared memory"), (kernels, "kernel"),
                           (sources, "source"), (sinks, "sink")):
        seen: set[str] = set()
        for entry in entries:
            if entry.name in seen:
                errors.append(locate(f"{label} names must be unique: {entry.name!r}", entry.line))
            seen.add(entry.name)
    section_of: dict[str, str] = {}
    for entries, label in ((kernels, "kernel"), (sources, "source"), (sinks, "sink")):
        for entry in entries:
            first = section_of.setdefault(entry.name, label)
            if first != label:
                errors.append(locate(
                    "pipeline node names must be unique across kernels, sources, and sinks: "
                    f"{entry.name!r}", entry.line,
                ))
    if known_streams is None:
        return errors
    references = (
        [(kernel, "kernel", (*kernel.inputs, *kernel.auxiliary_names, *kernel.outputs))
         for kernel in kernels]
        + [(source, "source", (*source.streams, *source.auxiliary_names)) for source in sources]
        + [(sink, "sink", (sink.stream, *sink.auxiliary_names, *sink.outputs)) for sink in sinks]
    )
    for entry, label, names in references:
        missing = sorted(set(names) - known_streams)
        if missing:
            errors.append(locate(
                f"{label} {entry.name!r} references undefined shared memory: "
                + ", ".join(missing), entry.line,
            ))
    return errors
