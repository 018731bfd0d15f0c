"""The registry and plugins (spec 10.5), the built-in null.sink, and whole-pipeline
validation (spec 1.6 and the feedback-path rule of 6.4)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import threading
import time
import uuid
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from shmpiped.config import PipelineConfig, SinkConfig, SourceConfig
from shmpiped.errors import ConfigValidationError
from shmpiped.kernels import (
    Kernel,
    KernelRegistry,
    Sink,
    SinkContext,
    Source,
    SourceContext,
    default_registry,
)
from shmpiped.kernels.elementwise import CopyKernel, ScaleKernel
from shmpiped.kernels.null_sink import NullSink, percentile
from shmpiped.shm import Stream
from shmpiped.validation import raise_for_invalid, validate_pipeline_config
from tests.kernel_helpers import REGISTRY, kernel_config, stream_specs


class DoubleKernel(Kernel):
    kind = "test.double"

    def compute_into(self, trigger_input, output, auxiliary_inputs):
        np.multiply(trigger_input, 2, out=output)


class CounterSource(Source):
    kind = "test.counter"


class RecordingSink(Sink):
    kind = "test.recording"

    def __init__(self, context):
        super().__init__(context)
        self.values = []

    def consume(self, value):
        self.values.append(value)


# --------------------------------------------------------------------------- registry


class TestLookup:
    def test_unknown_kinds(self):
        registry = KernelRegistry()
        with pytest.raises(ConfigValidationError, match=r"^unknown kernel kind: 'nope'$"):
            registry.get("nope")
        with pytest.raises(ConfigValidationError, match=r"^unknown source kind: 'nope'$"):
            registry.get_source("nope")
        with pytest.raises(ConfigValidationError, match=r"^unknown sink kind: 'nope'$"):
            registry.get_sink("nope")

    def test_kinds_are_sorted_and_include_lazy_entries(self):
        registry = KernelRegistry(kernels=[ScaleKernel, CopyKernel], lazy_kernels={"a.lazy": "x:y"},
                                  sources=[CounterSource], sinks={"test.recording": RecordingSink})
        assert registry.kinds() == ("a.lazy", "cpu.copy", "cpu.scale")
        assert registry.source_kinds() == ("test.counter",)
        assert registry.sink_kinds() == ("test.recording",)

    def test_lazy_entries_resolve_once_and_are_cached(self):
        calls = []

        def load():
            calls.append(1)
            return DoubleKernel

        registry = KernelRegistry(lazy_kernels={"test.double": load})
        assert calls == []
        assert registry.get("test.double") is DoubleKernel
        assert registry.get("test.double") is DoubleKernel
        assert calls == [1]

    def test_lazy_import_path(self):
        registry = KernelRegistry(lazy_kernels={"cpu.copy": "shmpiped.kernels.elementwise:CopyKernel"})
        assert registry.get("cpu.copy") is CopyKernel

    def test_lazy_entry_of_the_wrong_kind(self):
        registry = KernelRegistry(lazy_kernels={"test.triple": lambda: DoubleKernel})
        with pytest.raises(ValueError, match="'test.triple' provides class DoubleKernel of kind 'test.double'"):
            registry.get("test.triple")

    def test_lazy_entry_of_the_wrong_role(self):
        registry = KernelRegistry(lazy_sinks={"test.double": lambda: DoubleKernel})
        with pytest.raises(TypeError, match="must subclass Sink"):
            registry.get_sink("test.double")

    def test_default_registry_lists_builtins(self):
        registry = default_registry(entry_points=[])
        assert "cpu.copy" in registry.kinds()
        assert registry.source_kinds() == ("pyshmem.source", "synthetic.array", "synthetic.frame_set")
        assert registry.sink_kinds() == ("null.sink", "pyshmem.sink")
        assert registry.get_sink("null.sink") is NullSink

    def test_default_registry_discovers_installed_entry_points(self):
        registry = default_registry()  # whatever is installed; the built-ins are always there
        assert set(REGISTRY.kinds()) <= set(registry.kinds())

    def test_gpu_kinds_only_when_asked_or_usable(self):
        assert not [k for k in default_registry(entry_points=[]).kinds() if k.startswith("gpu.")] or (
            importlib.util.find_spec("cupy") is not None)
        with_gpu = default_registry(entry_points=[], include_gpu=True)
        assert "gpu.scale" in with_gpu.kinds() and "gpu.reduce" not in with_gpu.kinds()

    def test_synthetic_sources_resolve_from_shmpiped_synthetic(self):
        registry = default_registry(entry_points=[])
        if importlib.util.find_spec("shmpiped.synthetic") is None:
            with pytest.raises(ImportError):
                registry.get_source("synthetic.array")
        else:
            assert registry.get_source("synthetic.array").kind == "synthetic.array"
            assert registry.get_source("synthetic.frame_set").kind == "synthetic.frame_set"


class TestRegistration:
    def test_duplicate_kind(self):
        registry = KernelRegistry(kernels=[CopyKernel])
        with pytest.raises(ValueError, match=r"^kernel kind 'cpu.copy' is already registered$"):
            registry.register(CopyKernel)
        replacement = type("OtherCopy", (CopyKernel,), {})
        registry.register(replacement, replace=True)
        assert registry.get("cpu.copy") is replacement

    def test_duplicate_of_a_lazy_kind(self):
        registry = KernelRegistry(lazy_kernels={"test.double": "nowhere:Nothing"})
        with pytest.raises(ValueError, match="already registered"):
            registry.register(DoubleKernel)
        registry.register(DoubleKernel, replace=True)
        assert registry.get("test.double") is DoubleKernel

    def test_sources_and_sinks(self):
        registry = KernelRegistry()
        registry.register_source(CounterSource)
        registry.register_sink(RecordingSink)
        with pytest.raises(ValueError, match=r"^source kind 'test.counter' is already registered$"):
            registry.register_source(CounterSource)
        with pytest.raises(ValueError, match=r"^sink kind 'test.recording' is already registered$"):
            registry.register_sink(RecordingSink)

    def test_class_must_derive_from_the_right_base(self):
        registry = KernelRegistry()
        with pytest.raises(TypeError, match="must subclass Kernel"):
            registry.register(CounterSource)
        with pytest.raises(TypeError, match="must subclass Source"):
            registry.register_source(DoubleKernel)
        with pytest.raises(TypeError, match="is not a class"):
            registry.register(DoubleKernel(SimpleNamespace(xp=np)))

    def test_kind_must_be_non_empty(self):
        with pytest.raises(ValueError, match="must define a non-empty kind"):
            KernelRegistry().register(type("NoKind", (Kernel,), {}))

    def test_extended_returns_a_new_registry(self):
        base = KernelRegistry(kernels=[CopyKernel])
        bigger = base.extended(DoubleKernel, sources=[CounterSource], sinks=[RecordingSink])
        assert bigger.kinds() == ("cpu.copy", "test.double") and base.kinds() == ("cpu.copy",)
        assert bigger.source_kinds() == ("test.counter",) and base.source_kinds() == ()
        assert base.extended_sources(CounterSource).source_kinds() == ("test.counter",)
        assert base.extended_sinks(RecordingSink).sink_kinds() == ("test.recording",)
        with pytest.raises(ValueError):
            base.extended(CopyKernel)
        assert base.extended(type("Copy2", (CopyKernel,), {}), replace=True).get("cpu.copy") is not CopyKernel


class TestValidateAndCreate:
    LAYOUTS = {"x": ((3,), "float32"), "y": ((3,), "float32")}

    def test_validate(self):
        REGISTRY.validate(kernel_config("cpu.scale", parameters={"factor": 2}), stream_specs(self.LAYOUTS))
        with pytest.raises(ConfigValidationError, match="numeric parameter 'factor'"):
            REGISTRY.validate(kernel_config("cpu.scale"), stream_specs(self.LAYOUTS))

    def test_create_validates_first(self):
        with pytest.raises(ConfigValidationError, match="numeric parameter 'factor'"):
            REGISTRY.create(kernel_config("cpu.scale"), stream_specs(self.LAYOUTS))

    def test_create_builds_a_working_kernel(self):
        registry = KernelRegistry(kernels=[DoubleKernel])
        kernel = registry.create(kernel_config("test.double"), stream_specs(self.LAYOUTS), config_base_dir="/srv")
        output = np.zeros(3, np.float32)
        kernel.compute_into(np.arange(3, dtype=np.float32), output, {})
        assert output.tolist() == [0, 2, 4]
        assert kernel.context.config_base_dir == Path("/srv")

    def test_create_source_and_sink_bind_auxiliary_handles_by_alias(self):
        specs = stream_specs({"out": ((2,), "float64"), "fb": ((2,), "float64"), "in": ((2,), "float64")})
        registry = KernelRegistry(sources=[CounterSource], sinks=[RecordingSink])
        stop, pause = threading.Event(), threading.Event()
        source_config = SourceConfig("s", "test.counter", ("out",), auxiliary={"feedback": "fb"})
        by_name = registry.create_source(source_config, specs, {"fb": "handle"}, config_base_dir="/cfg",
                                         stop_event=stop, pause_event=pause)
        by_alias = registry.create_source(source_config, specs, {"feedback": "handle"})
        assert by_name.context.auxiliary_streams == {"feedback": "handle"}
        assert by_alias.context.auxiliary_streams == {"feedback": "handle"}
        assert by_name.context.config_base_dir == Path("/cfg")
        assert by_name.context.stop_event is stop and by_name.context.pause_event is pause
        sink = registry.create_sink(SinkConfig("k", "test.recording", "in", outputs=("fb",)), specs)
        assert isinstance(sink, RecordingSink) and sink.context.auxiliary_streams == {}

    def test_validate_source_and_sink(self):
        specs = stream_specs({"out": ((2,), "float64", "gpu"), "in": ((2,), "float64")})
        registry = KernelRegistry(sources=[CounterSource], sinks=[RecordingSink])
        with pytest.raises(ConfigValidationError, match="requires cpu shared memory for 'out'"):
            registry.validate_source(SourceConfig("s", "test.counter", ("out",)), specs)
        registry.validate_sink(SinkConfig("k", "test.recording", "in"), specs)


# --------------------------------------------------------------------------- entry-point plugins


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A real module on sys.path holding plugin classes; yields its (unique) name."""
    name = f"acme_plugins_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import numpy as np
        from shmpiped.kernels import Kernel, Sink, Source


        class TripleKernel(Kernel):
            kind = "acme.triple"

            def compute_into(self, trigger_input, output, auxiliary_inputs):
                np.multiply(trigger_input, 3, out=output)


        class WrongKindKernel(TripleKernel):
            kind = "acme.something_else"


        class ShadowCopy(Kernel):
            kind = "cpu.copy"


        class CameraSource(Source):
            kind = "acme.camera"


        class MirrorSink(Sink):
            kind = "acme.mirror"


        class ShmpipelineStyleKernel:
            # written against shmpipeline's base class: no shmpiped base, same protocol
            kind = "legacy.negate"

            def __init__(self, context):
                self.context = context

            @classmethod
            def validate_config(cls, config, shared_memory):
                pass

            def compute_into(self, trigger_input, output, auxiliary_inputs):
                np.negative(trigger_input, out=output)


        class ShmpipelineStyleSource:
            kind = "legacy.multi"

            def __init__(self, context):
                self.context = context

            @classmethod
            def validate_config(cls, config, shared_memory):
                pass

            def produce(self, writers):
                return 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def entry(name, value, group):
    return EntryPoint(name=name, value=value, group=group)


class TestEntryPoints:
    def test_plugins_of_every_group_load_lazily(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("acme.triple", f"{plugin_module}:TripleKernel", "shmpiped.kernels"),
            entry("acme.camera", f"{plugin_module}:CameraSource", "shmpiped.sources"),
            entry("acme.mirror", f"{plugin_module}:MirrorSink", "shmpiped.sinks"),
        ])
        assert "acme.triple" in registry.kinds()
        assert "acme.camera" in registry.source_kinds() and "acme.mirror" in registry.sink_kinds()
        assert plugin_module not in sys.modules  # listed, not imported
        kernel = registry.create(kernel_config("acme.triple"),
                                 stream_specs({"x": ((2,), "int64"), "y": ((2,), "int64")}))
        output = np.zeros(2, np.int64)
        kernel.compute_into(np.array([1, 2]), output, {})
        assert output.tolist() == [3, 6]
        assert registry.get_source("acme.camera").kind == "acme.camera"
        assert registry.get_sink("acme.mirror").kind == "acme.mirror"

    def test_shmpipeline_groups_load_protocol_compatible_classes(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("legacy.negate", f"{plugin_module}:ShmpipelineStyleKernel", "shmpipeline.kernels"),
            entry("acme.camera", f"{plugin_module}:CameraSource", "shmpipeline.sources"),
            entry("legacy.multi", f"{plugin_module}:ShmpipelineStyleSource", "shmpipeline.sources"),
            entry("legacy.bad", f"{plugin_module}:ShmpipelineStyleSource", "shmpipeline.sinks"),
        ])
        kernel = registry.create(kernel_config("legacy.negate"),
                                 stream_specs({"x": ((2,), "float64"), "y": ((2,), "float64")}))
        output = np.zeros(2)
        kernel.compute_into(np.array([1.0, -2.0]), output, {})
        assert output.tolist() == [-1.0, 2.0]
        assert registry.get_source("acme.camera").kind == "acme.camera"
        assert registry.get_source("legacy.multi").__name__ == "ShmpipelineStyleSource"
        with pytest.raises(TypeError, match="must subclass Sink"):  # a source is no sink
            registry.get_sink("legacy.bad")

    def test_entry_point_name_must_match_the_class_kind(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("acme.wrong", f"{plugin_module}:WrongKindKernel", "shmpiped.kernels")])
        with pytest.raises(ValueError, match="'acme.wrong' provides class WrongKindKernel of kind 'acme.something_else'"):
            registry.get("acme.wrong")

    def test_builtin_kinds_win(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("cpu.copy", f"{plugin_module}:ShadowCopy", "shmpiped.kernels"),
            entry("null.sink", f"{plugin_module}:MirrorSink", "shmpipeline.sinks")])
        assert registry.get("cpu.copy") is CopyKernel
        assert registry.get_sink("null.sink") is NullSink
        assert plugin_module not in sys.modules

    def test_earlier_entry_points_win(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("acme.triple", f"{plugin_module}:TripleKernel", "shmpiped.kernels"),
            entry("acme.triple", f"{plugin_module}:WrongKindKernel", "shmpipeline.kernels")])
        assert registry.get("acme.triple").__name__ == "TripleKernel"

    def test_other_groups_are_ignored(self, plugin_module):
        registry = default_registry(entry_points=[
            entry("acme.triple", f"{plugin_module}:TripleKernel", "console_scripts")])
        assert "acme.triple" not in registry.kinds()

    def test_broken_plugin_fails_only_when_resolved(self):
        registry = default_registry(entry_points=[entry("acme.gone", "no_such_module_xyz:K", "shmpiped.kernels")])
        assert "acme.gone" in registry.kinds()
        with pytest.raises(ImportError):
            registry.get("acme.gone")


# --------------------------------------------------------------------------- Source and Sink bases


def source_context(stop=None, pause=None, auxiliary_streams=None, auxiliary=()):
    specs = stream_specs({"a": ((2,), "float32"), "b": ((3,), "float32"), "fb": ((2,), "float64")})
    config = SourceConfig("s", "test.counter", ("a", "b"), auxiliary=auxiliary)
    return SourceContext(config, specs, auxiliary_streams=auxiliary_streams or {}, stop_event=stop,
                         pause_event=pause)


class TestEndpointBases:
    def test_defaults_raise_not_implemented(self):
        source = CounterSource(source_context())
        with pytest.raises(NotImplementedError):
            source.read()
        with pytest.raises(NotImplementedError):
            source.produce({})
        sink = Sink(SinkContext(SinkConfig("k", "x", "a"), {}))
        with pytest.raises(NotImplementedError):
            sink.consume(1)
        source.open()
        source.close()
        assert source.plugin_metrics() == {} and CounterSource.required_feedback_aliases == ()

    def test_consume_publication_forwards_the_payload(self):
        sink = RecordingSink(SinkContext(SinkConfig("k", "test.recording", "a"), {}))
        sink.consume_publication(SimpleNamespace(payload="frame", frame_id=3), {})
        assert sink.values == ["frame"]

    def test_contexts(self):
        context = source_context(auxiliary={"feedback": "fb"})
        assert context.stream_spec.name == "a"
        assert [spec.name for spec in context.output_specs] == ["a", "b"]
        assert context.auxiliary_specs["feedback"].name == "fb"
        specs = stream_specs({"in": ((2,), "float32"), "out": ((2,), "float32")})
        sink_context = SinkContext(SinkConfig("k", "x", "in", outputs=("out",)), specs)
        assert sink_context.stream_spec.name == "in"
        assert [spec.name for spec in sink_context.output_specs] == ["out"]
        assert sink_context.auxiliary_specs == {} and sink_context.auxiliary_streams == {}

    def test_stop_and_pause_flags(self):
        assert not CounterSource(source_context()).stop_requested()
        assert not CounterSource(source_context()).paused()
        stop, pause = threading.Event(), threading.Event()
        source = CounterSource(source_context(stop, pause))
        pause.set()
        assert source.paused() and not source.stop_requested()
        stop.set()
        assert source.stop_requested()

    def test_wait_times_out_without_a_stop(self):
        source = CounterSource(source_context(threading.Event()))
        started = time.monotonic()
        assert source.wait(0.12) is False
        assert 0.1 <= time.monotonic() - started < 1.0

    def test_wait_returns_soon_after_a_stop(self):
        stop = threading.Event()
        source = CounterSource(source_context(stop))
        threading.Timer(0.1, stop.set).start()
        started = time.monotonic()
        assert source.wait(10.0) is True
        assert time.monotonic() - started < 0.5

    def test_read_auxiliary_from_a_real_stream(self, namespace):
        stream = Stream.create("fb", (2,), "float64", namespace=namespace)
        try:
            source = CounterSource(source_context(auxiliary_streams={"feedback": stream},
                                                  auxiliary={"feedback": "fb"}))
            assert source.read_auxiliary("missing") is None
            assert source.read_auxiliary("feedback") is None  # nothing published yet
            stream.write(np.array([1.5, -2.0]))
            value = source.read_auxiliary("feedback")
            assert value.tolist() == [1.5, -2.0]
            value[:] = 0  # a private copy
            assert source.read_auxiliary("feedback").tolist() == [1.5, -2.0]
        finally:
            stream.close()
            stream.unlink()

    def test_read_auxiliary_timeout_gives_none(self):
        class Busy:
            count = 1

            def read(self):
                raise TimeoutError

        source = CounterSource(source_context(auxiliary_streams={"feedback": Busy()}))
        assert source.read_auxiliary("feedback", timeout=0.01) is None

    def test_storage_checks(self):
        specs = stream_specs({"a": ((2,), "float32"), "g": ((2,), "float32", "gpu")})
        with pytest.raises(ConfigValidationError, match=r"^source 's' of kind 'test.counter' requires cpu "
                                                         r"shared memory for 'g'$"):
            CounterSource.validate_config(SourceConfig("s", "test.counter", ("a", "g")), specs)
        with pytest.raises(ConfigValidationError, match=r"requires cpu shared memory for auxiliary 'g'$"):
            CounterSource.validate_config(SourceConfig("s", "test.counter", ("a",), auxiliary=("g",)), specs)
        with pytest.raises(ConfigValidationError, match=r"^sink 'k' of kind 'test.recording' requires cpu "
                                                         r"shared memory for 'g'$"):
            RecordingSink.validate_config(SinkConfig("k", "test.recording", "g"), specs)
        with pytest.raises(ConfigValidationError, match=r"for auxiliary 'g'$"):
            RecordingSink.validate_config(SinkConfig("k", "test.recording", "a", auxiliary=("g",)), specs)
        with pytest.raises(ConfigValidationError, match=r"for output 'g'$"):
            RecordingSink.validate_config(SinkConfig("k", "test.recording", "a", outputs=("g",)), specs)


class TestNullSink:
    def make(self, storage="cpu", **parameters):
        specs = stream_specs({"in": ((4,), "float32", storage)})
        return REGISTRY.create_sink(SinkConfig("n", "null.sink", "in", parameters=parameters), specs)

    def test_any_storage(self):
        assert isinstance(self.make("gpu"), NullSink)

    @pytest.mark.parametrize("parameters, message", [
        ({"device_delay_s": -1}, "sink 'n' device_delay_s must be a non-negative number"),
        ({"device_delay_s": "1ms"}, "sink 'n' device_delay_s must be a non-negative number"),
        ({"sample_window": 0}, "sink 'n' sample_window must be a positive integer"),
        ({"sample_window": 2.5}, "sink 'n' sample_window must be a positive integer"),
        ({"sample_window": True}, "sink 'n' sample_window must be a positive integer"),
    ])
    def test_messages(self, parameters, message):
        with pytest.raises(ConfigValidationError) as caught:
            self.make(**parameters)
        assert str(caught.value) == message

    def test_metrics(self):
        sink = self.make()
        empty = sink.plugin_metrics()
        assert empty == {"consumed": 0, "device_delay_us": 0.0,
                         "consume_us": {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p99_9": 0.0, "max": 0.0}}
        for _ in range(5):
            sink.consume(np.zeros(4))
        metrics = sink.plugin_metrics()
        assert metrics["consumed"] == 5
        assert 0 <= metrics["consume_us"]["p50"] <= metrics["consume_us"]["max"]

    def test_device_delay_and_window(self):
        sink = self.make(device_delay_s=0.005, sample_window=2)
        for _ in range(3):
            sink.consume(None)
        metrics = sink.plugin_metrics()
        assert metrics["consumed"] == 3 and metrics["device_delay_us"] == 5000.0
        assert metrics["consume_us"]["p50"] >= 5000.0
        assert len(sink._samples) == 2

    def test_percentile_interpolates_linearly(self):
        assert percentile([], 0.5) == 0.0
        assert percentile([7.0], 0.99) == 7.0
        assert percentile([0.0, 10.0], 0.5) == 5.0
        assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)


# --------------------------------------------------------------------------- pipeline validation


def load(tmp_path, text) -> PipelineConfig:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return PipelineConfig.from_yaml(path)


def with_streams(body: str) -> str:
    """The five-stream preamble followed by ``body`` (dedented)."""
    return STREAMS + textwrap.dedent(body)


def located(config, message, entry_name) -> str:
    """``message`` with the file and line of the entry named ``entry_name``."""
    return f"{message} (in {config.source_path}, line {config.node(entry_name).line})"


STREAMS = """
shared_memory:
  - {name: cam, shape: [4], dtype: float32}
  - {name: a, shape: [4], dtype: float32}
  - {name: b, shape: [4], dtype: float32}
  - {name: cmd, shape: [4], dtype: float32}
  - {name: applied, shape: [4], dtype: float32}
"""


class FeedbackSource(Source):
    kind = "test.loop_source"
    required_feedback_aliases = ("applied",)


class ApplyingSink(Sink):
    kind = "test.applying_sink"


LOOP_REGISTRY = REGISTRY.extended(sources=[FeedbackSource], sinks=[ApplyingSink])


class TestValidatePipelineConfig:
    def test_a_valid_pipeline(self, tmp_path):
        config = load(tmp_path, with_streams("""
        kernels:
          - {name: k1, kind: cpu.scale, input: cam, output: a, parameters: {factor: 2}}
        sinks:
          - {name: drain, kind: null.sink, stream: a}
        """))
        assert validate_pipeline_config(config) == []
        raise_for_invalid(config)

    def test_every_error_in_order_with_file_and_line(self, tmp_path):
        config = load(tmp_path, with_streams("""
        kernels:
          - {name: k1, kind: cpu.scale, input: cam, output: a}
          - {name: k2, kind: cpu.nope, input: b, output: a}
        sources:
          - {name: s1, kind: acme.nothing, stream: cam}
        sinks:
          - {name: z1, kind: nowhere.sink, stream: a}
          - {name: z2, kind: null.sink, stream: a, parameters: {sample_window: 0}}
        """))
        errors = validate_pipeline_config(config, REGISTRY)
        line_of_a = config.stream("a").line
        assert errors == [
            f"shared memory 'a' has multiple producer kernels: k1, k2 (in {config.source_path}, line {line_of_a})",
            located(config, "kernel 'k1' requires numeric parameter 'factor'", "k1"),
            located(config, "unknown kernel kind: 'cpu.nope'", "k2"),
            located(config, "unknown source kind: 'acme.nothing'", "s1"),
            located(config, "unknown sink kind: 'nowhere.sink'", "z1"),
            located(config, "sink 'z2' sample_window must be a positive integer", "z2"),
        ]
        with pytest.raises(ConfigValidationError) as caught:
            raise_for_invalid(config, REGISTRY)
        assert caught.value.errors == tuple(errors) and str(caught.value) == errors[0]

    def test_plugin_failures_are_reported_not_raised(self, tmp_path, plugin_module):
        config = load(tmp_path, with_streams("""
        kernels:
          - {name: k1, kind: acme.gone, input: cam, output: a}
          - {name: k2, kind: acme.wrong, input: a, output: b}
        """))
        registry = default_registry(entry_points=[
            entry("acme.gone", "no_such_module_xyz:K", "shmpiped.kernels"),
            entry("acme.wrong", f"{plugin_module}:WrongKindKernel", "shmpiped.kernels")])
        first, second = validate_pipeline_config(config, registry)
        assert first.startswith("kernel 'k1' of kind 'acme.gone' could not be loaded: No module named")
        assert first.endswith(f"(in {config.source_path}, line {config.node('k1').line})")
        assert second == located(
            config, "kernel plugin 'acme.wrong' provides class WrongKindKernel of kind 'acme.something_else'", "k2")

    def test_legacy_kinds_validate(self, tmp_path):
        config = load(tmp_path, """
        shared_memory:
          - {name: img, shape: [8, 8], dtype: float32}
          - {name: slopes, shape: [2, 2, 2], dtype: float32}
        kernels:
          - {name: sh, kind: cpu.centroid, input: img, output: slopes, parameters: {tile_size: 4}}
        """)
        with pytest.warns(DeprecationWarning):
            assert validate_pipeline_config(config, REGISTRY) == []


LOOP = STREAMS + """
sources:
  - name: loop
    kind: test.loop_source
    stream: cam
    auxiliary: {applied: applied}
kernels:
  - {name: k1, kind: cpu.copy, input: cam, output: a, propagate_frame_id: true}
  - {name: k2, kind: cpu.copy, input: a, output: cmd, propagate_frame_id: true}
sinks:
  - {name: mirror, kind: test.applying_sink, stream: cmd, outputs: [applied]}
"""


class TestFeedbackPaths:
    def test_a_complete_loop(self, tmp_path):
        assert validate_pipeline_config(load(tmp_path, LOOP), LOOP_REGISTRY) == []

    def test_alias_must_be_bound(self, tmp_path):
        config = load(tmp_path, LOOP.replace("    auxiliary: {applied: applied}\n", ""))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "source 'loop' requires feedback auxiliary alias 'applied'", "loop")]

    def test_stream_must_be_a_sink_output(self, tmp_path):
        config = load(tmp_path, LOOP.replace(", outputs: [applied]", ""))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "feedback stream 'applied' for source 'loop' must be declared as a sink output", "loop")]

    def test_every_kernel_on_the_path_propagates_the_frame_id(self, tmp_path):
        config = load(tmp_path, LOOP.replace(", propagate_frame_id: true", ""))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "kernel 'k2' on feedback path for source 'loop' must set propagate_frame_id: true", "k2"),
            located(config, "kernel 'k1' on feedback path for source 'loop' must set propagate_frame_id: true", "k1"),
        ]

    def test_sink_input_that_no_kernel_produces(self, tmp_path):
        config = load(tmp_path, LOOP.replace("stream: cmd, outputs", "stream: b, outputs"))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "feedback path for source 'loop' and stream 'applied' cannot trace sink input 'b' "
                            "to a source output", "loop")]

    def test_path_that_stops_at_an_external_stream(self, tmp_path):
        config = load(tmp_path, LOOP.replace("input: cam, output: a", "input: b, output: a"))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "feedback path for source 'loop' and stream 'applied' cannot trace sink input 'cmd' "
                            "to a source output", "loop")]

    def test_cycle(self, tmp_path):
        config = load(tmp_path, LOOP.replace("input: cam, output: a", "input: cmd, output: a"))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == [
            located(config, "feedback path for source 'loop' and stream 'applied' contains a cycle before "
                            "reaching a source output", "loop")]

    def test_any_trigger_input_may_lead_back_to_the_source(self, tmp_path):
        config = load(tmp_path, LOOP.replace(
            "{name: k2, kind: cpu.copy, input: a, output: cmd, propagate_frame_id: true}",
            "{name: k2, kind: cpu.concatenate, inputs: [b, a], output: cmd, propagate_frame_id: true}"
        ).replace("{name: cmd, shape: [4]", "{name: cmd, shape: [8]"))
        assert validate_pipeline_config(config, LOOP_REGISTRY) == []

    def test_sources_without_feedback_are_not_traced(self, tmp_path):
        config = load(tmp_path, LOOP.replace("test.loop_source", "test.counter"))
        registry = LOOP_REGISTRY.extended_sources(CounterSource)
        assert validate_pipeline_config(config, registry) == []
