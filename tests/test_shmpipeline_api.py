"""shmpipeline 1.3.0's public API, complete, in shmpiped: names, modules and the contracts behind them.

``SURFACE`` lists shmpipeline 1.3.0's public surface as data (read from its
source; nothing here imports shmpipeline): each public module, the names it
defines, and the public attributes and methods of each class.  Every one must
exist in the shmpiped module of the same name.  The tests after it check the
contracts that code written for shmpipeline relies on.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import shmpiped
from shmpiped.config import (
    InitialValueConfig,
    KernelConfig,
    PipelineConfig,
    SharedMemoryConfig,
    SinkConfig,
    SourceConfig,
    SynchronizationConfig,
)
from shmpiped.errors import ConfigValidationError
from shmpiped.shm import Stream, layout

from .conftest import run_python

TOP_LEVEL = (
    "Kernel", "KernelConfig", "KernelContext", "KernelRegistry", "PipelineConfig", "PipelineGraph",
    "PipelineManager", "PipelineState", "SharedMemoryConfig", "Sink", "SinkConfig", "SinkContext", "Source",
    "SourceConfig", "SourceContext", "SyntheticInputConfig", "__version__", "get_default_registry",
)

ENDPOINT_HELPERS = ("plugin_metrics", "stop_requested", "paused", "wait", "read_auxiliary",
                    "_attach_runtime_events")

#: module -> {name: public attributes of that class (() for functions, constants, non-class names)}
SURFACE: dict[str, dict[str, tuple[str, ...]]] = {
    "config": {
        "SharedMemoryConfig": ("name", "shape", "dtype", "storage", "gpu_device", "cpu_mirror", "notify", "mode",
                               "initial", "namespace", "resource_name", "from_dict"),
        "AuxiliaryBinding": ("alias", "name"),
        "SynchronizationConfig": ("mode", "on_skew", "max_skew_generations", "max_wait_s", "from_dict"),
        "KernelConfig": ("name", "kind", "input", "output", "auxiliary", "operation", "parameters",
                         "read_timeout", "pause_sleep", "poll_interval", "outputs", "inputs", "trigger_policy",
                         "synchronization", "propagate_frame_id", "from_dict", "all_inputs", "trigger_inputs",
                         "requires_matching_frame_id", "tracks_frame_id", "all_outputs", "auxiliary_names",
                         "auxiliary_aliases", "auxiliary_by_alias"),
        "SourceConfig": ("name", "kind", "stream", "auxiliary", "parameters", "poll_interval", "read_timeout",
                         "streams", "from_dict", "output_streams", "auxiliary_names", "auxiliary_aliases",
                         "auxiliary_by_alias"),
        "SinkConfig": ("name", "kind", "stream", "auxiliary", "parameters", "read_timeout", "pause_sleep",
                       "consume_timeout", "outputs", "from_dict", "auxiliary_names", "output_streams",
                       "auxiliary_aliases", "auxiliary_by_alias"),
        "PipelineConfig": ("shared_memory", "kernels", "sources", "sinks", "namespace", "base_path",
                           "source_path", "from_dict", "from_yaml", "shared_memory_by_name"),
    },
    "graph": {
        "GraphEdge": ("source", "target", "role", "stream"),
        "PipelineGraph": ("from_config", "edges", "source_streams", "sink_streams", "orphaned_streams",
                          "upstream_kernels", "downstream_kernels", "validation_errors", "raise_for_errors",
                          "to_dict", "describe"),
        "validate_pipeline_config": (),
    },
    "kernel": {
        "KernelContext": ("config", "shared_memory", "config_base_dir", "input_specs", "trigger_input_spec",
                          "trigger_input_specs", "auxiliary_specs", "output_spec", "output_specs"),
        "Kernel": ("kind", "storage", "input_arity", "auxiliary_arity", "output_arity", "validate_config",
                   "compute_into", "compute_into_multiple"),
    },
    "source": {
        "SourceContext": ("config", "shared_memory", "config_base_dir", "auxiliary_streams", "stream_spec",
                          "output_specs", "auxiliary_specs"),
        "Source": ("kind", "storage", "required_feedback_aliases", "validate_config", "open", "read", "produce",
                   "close", *ENDPOINT_HELPERS),
    },
    "sink": {
        "SinkContext": ("config", "shared_memory", "config_base_dir", "auxiliary_streams", "stream_spec",
                        "output_specs", "auxiliary_specs"),
        "Sink": ("kind", "storage", "validate_config", "open", "consume", "consume_publication", "close",
                 *ENDPOINT_HELPERS),
    },
    "registry": {
        "LEGACY_AO_KERNEL_KINDS": (),
        "KernelRegistry": ("get", "kinds", "source_kinds", "sink_kinds", "register", "get_source",
                           "register_source", "get_sink", "register_sink", "extended", "extended_sources",
                           "extended_sinks", "validate", "create", "validate_source", "create_source",
                           "validate_sink", "create_sink"),
        "get_default_registry": (),
    },
    "state": {
        "PipelineState": ("INITIALIZED", "BUILT", "RUNNING", "PAUSED", "FAILED", "STOPPED"),
    },
    "synthetic": {
        "available_synthetic_patterns": (),
        "SyntheticInputConfig": ("stream_name", "pattern", "rate_hz", "seed", "amplitude", "offset", "period",
                                 "constant", "impulse_interval"),
        "SyntheticPatternGenerator": ("next_frame",),
        "synthetic_config_from_parameters": (),
        "pattern_generator_for_stream": (),
        "SyntheticSourceController": ("start", "stop", "snapshot"),
    },
    "errors": {
        "ShmPipelineError": (), "ConfigValidationError": (), "StateTransitionError": (),
        "WorkerProcessError": (), "KernelExecutionError": (),
    },
    "document": {
        "Document": (), "default_document": (), "clone_document": (), "normalize_document": (),
        "load_document": (), "document_to_yaml": (), "save_document": (), "parse_inline_yaml": (),
        "config_to_document": (),
    },
    "logging_utils": {
        "ColorFormatter": ("RESET", "COLORS", "format"),
        "get_logger": (),
        "configure_colored_logging": (),
    },
    "shm_cleanup": {"close_stream": (), "unlink_stream_name": ()},
    "scheduling": {
        "WorkerPlacementPolicy": ("cpu_slot_for", "describe"),
        "RoundRobinPlacementPolicy": ("cpu_slot_for", "describe"),
        "NoAffinityPlacementPolicy": ("cpu_slot_for", "describe"),
        "normalize_placement_policy": (),
    },
    "sinks": {"NullSink": ("kind", "validate_config", "consume", "plugin_metrics")},
    "sinks.null_sink": {"NullSink": ("kind", "validate_config", "consume", "plugin_metrics")},
    "sources": {
        "SyntheticArraySource": ("kind", "validate_config", "read"),
        "SyntheticFrameSetSource": ("kind", "validate_config", "produce", "plugin_metrics"),
    },
    "sources.array_source": {"SyntheticArraySource": ("kind", "validate_config", "read")},
    "sources.frame_set_source": {
        "SyntheticFrameSetSource": ("kind", "validate_config", "produce", "plugin_metrics"),
    },
    "manager": {
        "PipelineManager": ("graph", "build", "start", "pause", "resume", "stop", "shutdown", "poll_events",
                            "restart", "add_kernel", "status", "source_status", "sink_status",
                            "runtime_snapshot", "raise_if_failed", "get_stream", "start_synthetic_input",
                            "stop_synthetic_input", "stop_all_synthetic_inputs", "synthetic_input_status",
                            "benchmark", "failures", "events"),
    },
}

SURFACE_ITEMS = [(module, name, attribute)
                 for module, names in SURFACE.items()
                 for name, attributes in names.items()
                 for attribute in (None, *attributes)]


def has_member(owner, attribute: str) -> bool:
    """A class attribute or method, or a dataclass field (fields without a default are no class attribute)."""
    if hasattr(owner, attribute):
        return True
    return dataclasses.is_dataclass(owner) and attribute in {f.name for f in dataclasses.fields(owner)}


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_top_level_name(name):
    assert name in shmpiped.__all__
    assert getattr(shmpiped, name) is not None


@pytest.mark.parametrize("module, name, attribute", SURFACE_ITEMS,
                         ids=[f"{m}.{n}" + (f".{a}" if a else "") for m, n, a in SURFACE_ITEMS])
def test_every_public_module_name_and_member(module, name, attribute):
    owner = getattr(importlib.import_module(f"shmpiped.{module}"), name)
    if attribute is not None:
        assert has_member(owner, attribute), f"shmpiped.{module}.{name} has no {attribute!r}"


def test_top_level_names_are_the_module_objects():
    from shmpiped import kernel, manager, registry, sink, source, state

    assert shmpiped.Kernel is kernel.Kernel and shmpiped.Source is source.Source and shmpiped.Sink is sink.Sink
    assert shmpiped.PipelineState is state.PipelineState is manager.PipelineState
    assert shmpiped.get_default_registry is registry.get_default_registry
    assert registry.get_default_registry() is registry.get_default_registry()
    assert "cpu.scale" in registry.get_default_registry().kinds()
    assert isinstance(registry.LEGACY_AO_KERNEL_KINDS, frozenset)
    assert "cpu.centroid" in registry.LEGACY_AO_KERNEL_KINDS


# ----------------------------------------------------------------------------- config


STREAM = {"name": "frames", "shape": [4, 4], "dtype": "float32"}


def pipeline_yaml(tmp_path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""\
        namespace: lab
        shared_memory:
          - {name: frames, shape: [4], dtype: float32}
          - {name: scaled, shape: [4], dtype: float32}
          - {name: echo, shape: [4], dtype: float32}
        kernels:
          - {name: scale, kind: cpu.scale, input: frames, output: scaled, parameters: {factor: 2.0}}
        sinks:
          - {name: drain, kind: null.sink, stream: scaled, outputs: [echo]}
    """))
    return path


def test_paths_are_paths_and_streams_are_looked_up_by_name(tmp_path):
    config = PipelineConfig.from_yaml(pipeline_yaml(tmp_path))
    assert isinstance(config.source_path, Path) and config.source_path == (tmp_path / "pipeline.yaml").resolve()
    assert isinstance(config.base_path, Path) and config.base_path == tmp_path.resolve()
    assert config.shared_memory_by_name == config.streams_by_name
    assert list(config.shared_memory_by_name) == ["frames", "scaled", "echo"]
    assert config.sinks[0].output_streams == ("echo",) and config.kernels[0].all_outputs == ("scaled",)
    assert config.stream("frames").resource_name == "shmpiped.lab.frames"
    assert config.stream("frames").dtype == np.dtype("float32") == "float32"
    assert config.stream("frames").dtype.itemsize == 4


def test_resource_name_is_the_file_in_dev_shm(namespace):
    spec = SharedMemoryConfig.from_dict({**STREAM, "shape": [4]})
    spec = dataclasses.replace(spec, namespace=namespace)
    stream = Stream.create(spec.name, spec.shape, spec.dtype, namespace=namespace)
    try:
        assert os.path.exists(os.path.join(layout.DEV_SHM, spec.resource_name))
        assert stream.resource_name == spec.resource_name
    finally:
        stream.close()
        stream.unlink()


def test_entry_from_dict_validates_like_a_file():
    kernel = KernelConfig.from_dict({"name": "k", "kind": "cpu.copy", "input": "a", "output": "b"})
    assert (kernel.input, kernel.inputs, kernel.output, kernel.all_outputs) == ("a", ("a",), "b", ("b",))
    assert SourceConfig.from_dict({"name": "s", "kind": "x", "stream": "a"}).output_streams == ("a",)
    assert SinkConfig.from_dict({"name": "d", "kind": "null.sink", "stream": "a"}).output_streams == ()
    spec = SharedMemoryConfig.from_dict({**STREAM, "initial": {"pattern": "constant", "value": 2}})
    assert spec.shape == (4, 4) and spec.initial["value"] == 2 and spec.initial.get("pattern") == "constant"
    assert dict(spec.initial) == {"pattern": "constant", "value": 2}
    sync = SynchronizationConfig.from_dict({"mode": "matching_frame_id", "timeout": 0.5}, context="kernel 'k'")
    assert (sync.mode, sync.max_wait_s) == ("matching_frame_id", 0.5)

    with pytest.raises(ConfigValidationError) as caught:
        KernelConfig.from_dict({"name": "k", "kind": "cpu.copy", "input": "a", "read_timeout": -1, "colour": 1})
    assert list(caught.value.errors) == [  # every error of the entry, not just the first
        "kernel entry contains unsupported fields: 'colour'",
        "kernel 'k' must declare 'output' or 'outputs'",
        "read_timeout for kernel 'k' must be positive",
    ]
    with pytest.raises(ConfigValidationError, match="shape for 'frames' dimensions must be positive"):
        SharedMemoryConfig.from_dict({**STREAM, "shape": [0]})
    with pytest.raises(ConfigValidationError, match="synchronization mode for kernel 'k' must be either"):
        SynchronizationConfig.from_dict({"mode": "sometimes"}, context="kernel 'k'")
    with pytest.raises(ConfigValidationError, match="sink entry must be a mapping, got list"):
        SinkConfig.from_dict([])


def test_constructors_take_shmpipelines_keywords():
    kernel = KernelConfig(name="k", kind="cpu.copy", input="a", output="b")
    assert kernel.inputs == ("a",) and kernel.outputs == ("b",) and kernel.trigger_policy == "any_new"
    multi = KernelConfig(name="k", kind="x", input="a", output="c", inputs=("a", "b"), trigger_policy="all_new")
    assert multi.trigger_inputs == ("a", "b") and multi.input == "a"
    assert KernelConfig("k", "cpu.copy", "a", "b") == kernel  # positional, as in shmpipeline
    source = SourceConfig(name="s", kind="x", stream="cam")
    assert source.streams == ("cam",) and source.stream == "cam"
    sink = SinkConfig("d", "null.sink", "a", ("aux",))  # shmpipeline's order: auxiliary is fourth
    assert sink.auxiliary_names == ("aux",) and sink.outputs == ()
    spec = SharedMemoryConfig(name="m", shape=(2, 2), dtype=np.dtype("float64"),
                              initial={"pattern": "identity", "scale": 2.0})
    assert spec.initial == InitialValueConfig(pattern="identity", scale=2.0)
    with pytest.raises(ConfigValidationError, match="kernel 'k' must declare 'input' or 'inputs'"):
        KernelConfig(name="k", kind="x", output="b")
    with pytest.raises(ConfigValidationError, match="identity initializer for shared memory 'v' requires a 2D"):
        SharedMemoryConfig(name="v", shape=(3,), dtype="f4", initial={"pattern": "identity"})


# ----------------------------------------------------------------------------- graph, contexts


def test_graph_from_config_edges_and_validation(tmp_path):
    from shmpiped import graph, validation

    config = PipelineConfig.from_yaml(pipeline_yaml(tmp_path))
    built = graph.PipelineGraph.from_config(config)
    assert isinstance(built, graph.PipelineGraph)
    assert built.edges[0] == graph.GraphEdge(source="frames", target="scale", role="input", stream="frames")
    assert [edge.role for edge in built.edges] == ["input", "output", "sink", "sink_output"]
    assert graph.validate_pipeline_config is validation.validate_pipeline_config
    assert graph.validate_pipeline_config(config, registry=None) == []


def test_contexts_keep_shmpipelines_types():
    from shmpiped.kernel import KernelContext
    from shmpiped.sink import SinkContext

    specs = {name: SharedMemoryConfig(name, (2,), "f8") for name in ("a", "m", "y")}
    kernel = KernelConfig(name="k", kind="x", input="a", output="y", auxiliary={"matrix": "m"})
    context = KernelContext(kernel, specs, config_base_dir="/srv/loop")
    assert context.config_base_dir == Path("/srv/loop") and isinstance(context.config_base_dir, Path)
    assert context.auxiliary_specs == (specs["m"],)
    assert isinstance(KernelContext(kernel, specs).config_base_dir, Path)
    sink = SinkContext(SinkConfig("d", "x", "a", ("m",), outputs=("y",)), specs)
    assert sink.auxiliary_specs == {"m": specs["m"]} and sink.output_specs == (specs["y"],)


# ----------------------------------------------------------------------------- document


def test_documents_round_trip_through_files(tmp_path):
    from shmpiped import document

    config = PipelineConfig.from_yaml(pipeline_yaml(tmp_path))
    doc = document.config_to_document(config)
    assert PipelineConfig.from_dict(doc, base_path=config.base_path) == config
    path = tmp_path / "edited.yaml"
    doc["kernels"][0]["parameters"]["factor"] = 3.0
    document.save_document(path, doc)
    loaded = document.load_document(path)
    assert loaded == document.normalize_document(doc) and type(loaded["kernels"][0]) is dict
    assert PipelineConfig.from_yaml(path).kernels[0].parameters == {"factor": 3.0}
    (tmp_path / "empty.yaml").write_text("")
    assert document.load_document(tmp_path / "empty.yaml") == document.default_document()
    assert document.parse_inline_yaml("  ", fallback={"a": 1}) == {"a": 1}
    assert document.parse_inline_yaml("{gain: 1e-3}", fallback=None) == {"gain": 0.001}
    with pytest.raises(ConfigValidationError, match=r"invalid YAML: .* \(line 1\)"):
        document.parse_inline_yaml("{gain: [", fallback=None)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigValidationError, match="must be a mapping"):
        document.load_document(tmp_path / "list.yaml")
    clone = document.clone_document(doc)
    clone["kernels"][0]["name"] = "other"
    assert doc["kernels"][0]["name"] == "scale"


# ----------------------------------------------------------------------------- logging_utils


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colored_logging_only_on_a_terminal(monkeypatch):
    from shmpiped.logging_utils import ColorFormatter, configure_colored_logging, get_logger

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.delenv("NO_COLOR", raising=False)
    try:
        for stream, colored in ((_Terminal(), True), (io.StringIO(), False)):
            configure_colored_logging(level=logging.DEBUG, fmt="%(levelname)s %(name)s %(message)s",
                                      stream=stream)
            get_logger("example").warning("hot")
            expected = "\033[33mWARNING\033[0m" if colored else "WARNING"
            assert stream.getvalue() == f"{expected} shmpiped.example hot\n"
        monkeypatch.setenv("NO_COLOR", "1")
        terminal = _Terminal()
        configure_colored_logging(fmt="%(levelname)s %(message)s", stream=terminal)
        logging.getLogger("x").error("plain")
        assert terminal.getvalue() == "ERROR plain\n"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    record = logging.LogRecord("n", logging.CRITICAL, __file__, 1, "boom", None, None)
    assert ColorFormatter("%(levelname)s").format(record) == ColorFormatter.COLORS[logging.CRITICAL] + \
        "CRITICAL" + ColorFormatter.RESET
    assert record.levelname == "CRITICAL"  # the record is left as it was


# ----------------------------------------------------------------------------- shm_cleanup


def test_close_stream_unlinks_even_when_close_fails(namespace):
    from shmpiped.shm_cleanup import close_stream, unlink_stream_name

    stream = Stream.create("frames", (4,), "float32", namespace=namespace)
    path = os.path.join(layout.DEV_SHM, stream.resource_name)
    close_stream(stream, unlink=False)
    assert os.path.exists(path)

    class Broken:
        resource_name = os.path.basename(path)

        def close(self):
            raise OSError("already closed")

    with pytest.raises(OSError, match="already closed"):
        close_stream(Broken(), unlink=True)
    assert not os.path.exists(path)
    unlink_stream_name(os.path.basename(path))  # absent: no error
    with pytest.raises(ValueError, match="invalid stream name"):
        unlink_stream_name("../etc/passwd")


def test_unlink_stream_name_takes_a_plain_default_namespace_name():
    from shmpiped.shm_cleanup import unlink_stream_name

    name = f"t{os.getpid()}x{id(test_unlink_stream_name_takes_a_plain_default_namespace_name):x}"
    stream = Stream.create(name, (2,), "uint8")
    path = os.path.join(layout.DEV_SHM, layout.stream_segment_name(None, name))
    try:
        assert os.path.exists(path)
        unlink_stream_name(name)
        assert not os.path.exists(path)
    finally:
        stream.close()
        if os.path.exists(path):
            os.unlink(path)


# ----------------------------------------------------------------------------- the shmpipeline import name


FAKE_SHMPIPELINE = {
    "__init__.py": "MARK = 'real'\n",
    "errors.py": "class ConfigValidationError(Exception):\n    pass\n",
}


def test_fallback_serves_shmpipeline_from_shmpiped():
    result = run_python(textwrap.dedent("""
        import importlib.util, sys
        from shmpiped.compat import install_shmpipeline_fallback
        assert importlib.util.find_spec("shmpipeline") is None, "a real shmpipeline is installed here"
        install_shmpipeline_fallback()
        install_shmpipeline_fallback()
        finders = [f for f in sys.meta_path if type(f).__module__ == "shmpiped.compat"]
        assert len(finders) == 2 and sys.meta_path[-1] is finders[-1] and sys.meta_path[0] is finders[0]
        import shmpiped, shmpiped.config, shmpiped.kernels.base
        from shmpipeline.logging_utils import configure_colored_logging
        from shmpipeline.sinks.null_sink import NullSink
        import shmpipeline.config
        from shmpipeline.kernel import Kernel
        assert sys.modules["shmpipeline"] is shmpiped
        assert shmpipeline.config is shmpiped.config
        assert shmpipeline.config.PipelineConfig is shmpiped.config.PipelineConfig
        assert Kernel is shmpiped.kernels.base.Kernel
        assert NullSink is shmpiped.kernels.null_sink.NullSink
        assert shmpiped.config.__spec__.name == "shmpiped.config"
        try:
            import shmpipeline.gui
        except ModuleNotFoundError as exc:
            print("missing:", exc.name)
    """))
    assert result.stdout.strip() == "missing: shmpipeline.gui"


def test_an_installed_shmpipeline_wins_over_the_fallback(tmp_path):
    package = tmp_path / "shmpipeline"
    package.mkdir()
    for name, text in FAKE_SHMPIPELINE.items():
        (package / name).write_text(text)
    result = run_python(textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from shmpiped.compat import install_shmpipeline_fallback, plugin_config_errors
        from shmpiped.errors import ConfigValidationError
        install_shmpipeline_fallback()
        import shmpipeline
        assert shmpipeline.MARK == "real"
        import shmpipeline.errors
        assert plugin_config_errors() == (ConfigValidationError, shmpipeline.errors.ConfigValidationError)
        try:
            import shmpipeline.config
        except ModuleNotFoundError:
            print("not aliased")
    """), str(tmp_path))
    assert result.stdout.strip() == "not aliased"


def test_alias_wins_over_an_installed_shmpipeline(tmp_path):
    package = tmp_path / "shmpipeline"
    package.mkdir()
    (package / "__init__.py").write_text("MARK = 'real'\n")
    result = run_python(textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from shmpiped.compat import alias_shmpipeline
        import shmpiped
        assert alias_shmpipeline() is shmpiped
        import shmpipeline, shmpipeline.state, shmpiped.state
        assert shmpipeline is shmpiped and shmpipeline.state is shmpiped.state
        print("aliased")
    """), str(tmp_path))
    assert result.stdout.strip() == "aliased"


# ----------------------------------------------------------------------------- plugins' own errors


class _ForeignError(Exception):
    """Stands for the real shmpipeline's ConfigValidationError: an Exception, not a ValueError."""


class _ForeignSink:
    kind = "foreign.sink"
    storage = "cpu"

    @classmethod
    def validate_config(cls, config, shared_memory):
        if "path" not in config.parameters:
            raise _ForeignError(f"sink {config.name!r} requires a path")
        config.parameters["path"].upper()  # a plugin bug for non-strings

    def consume(self, value):
        pass


def test_plugin_errors_are_reported_at_their_entry(tmp_path, monkeypatch):
    from types import ModuleType

    from shmpiped.registry import get_default_registry
    from shmpiped.validation import validate_pipeline_config

    errors = ModuleType("shmpipeline.errors")
    errors.ConfigValidationError = _ForeignError
    monkeypatch.setitem(sys.modules, "shmpipeline.errors", errors)
    registry = get_default_registry().extended(sinks=[_ForeignSink])
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        shared_memory: [{name: a, shape: [2], dtype: f4}]
        sinks:
          - {name: first, kind: foreign.sink, stream: a}
          - {name: second, kind: foreign.sink, stream: a, parameters: {path: 3}}
    """))
    config = PipelineConfig.from_yaml(path)
    assert validate_pipeline_config(config, registry) == [
        f"sink 'first' requires a path (in {config.source_path}, line 3)",
        "sink 'second' of kind 'foreign.sink' failed to validate its configuration: AttributeError: "
        f"'int' object has no attribute 'upper' (in {config.source_path}, line 4)",
    ]
