"""Tests of shmpiped.config: parsing, defaults, every load-time rule, locations."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from shmpiped.config import (
    AuxiliaryBinding,
    InitialValueConfig,
    KernelConfig,
    PipelineConfig,
    SharedMemoryConfig,
    SinkConfig,
    SourceConfig,
    SynchronizationConfig,
    gpu_device_index,
)
from shmpiped.errors import ConfigValidationError, ShmPipelineError

# ----------------------------------------------------------------------------- helpers


def minimal(**overrides) -> dict:
    """A valid two-stream, one-kernel pipeline mapping."""
    data = {
        "shared_memory": [
            {"name": "a", "shape": [4], "dtype": "float32"},
            {"name": "b", "shape": [4], "dtype": "float32"},
        ],
        "kernels": [{"name": "k", "kind": "cpu.copy", "input": "a", "output": "b"}],
    }
    data.update(overrides)
    return data


def with_stream(**fields) -> dict:
    stream = {"name": "a", "shape": [4], "dtype": "float32"}
    stream.update(fields)
    return minimal(shared_memory=[stream, {"name": "b", "shape": [4], "dtype": "float32"}])


def with_kernel(**fields) -> dict:
    kernel = {"name": "k", "kind": "cpu.copy", "input": "a", "output": "b"}
    kernel.update(fields)
    for key, value in list(kernel.items()):
        if value is DROP:
            del kernel[key]
    return minimal(
        shared_memory=[{"name": n, "shape": [4], "dtype": "float32"} for n in "abcd"],
        kernels=[kernel],
    )


def with_source(**fields) -> dict:
    source = {"name": "s", "kind": "synthetic", "stream": "a"}
    source.update(fields)
    for key, value in list(source.items()):
        if value is DROP:
            del source[key]
    return {
        "shared_memory": [{"name": n, "shape": [4], "dtype": "float32"} for n in "abcd"],
        "sources": [source],
    }


def with_sink(**fields) -> dict:
    sink = {"name": "x", "kind": "null", "stream": "a"}
    sink.update(fields)
    for key, value in list(sink.items()):
        if value is DROP:
            del sink[key]
    return {
        "shared_memory": [{"name": n, "shape": [4], "dtype": "float32"} for n in "abcd"],
        "sinks": [sink],
    }


DROP = object()


def errors_of(data, **kwargs) -> tuple[str, ...]:
    with pytest.raises(ConfigValidationError) as info:
        PipelineConfig.from_dict(data, **kwargs)
    assert str(info.value) == info.value.errors[0]
    return info.value.errors


def only_error(data) -> str:
    errors = errors_of(data)
    assert len(errors) == 1, errors
    return errors[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(path: Path, marker: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line of ``path`` containing ``marker``."""
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if marker in line]
    return hits[occurrence - 1]


def yaml_errors(path: Path) -> tuple[str, ...]:
    with pytest.raises(ConfigValidationError) as info:
        PipelineConfig.from_yaml(path)
    assert str(info.value) == info.value.errors[0]
    return info.value.errors


def at(path: Path, line: int | None) -> str:
    if line is None:
        return f" (in {path.resolve()})"
    return f" (in {path.resolve()}, line {line})"


FULL_YAML = """
namespace: " lab "
shared_memory:
  - name: frames
    shape: [8, 8]
    dtype: uint16
    notify: true
    initial: {pattern: constant, value: 3}
  - name: slopes
    shape: [16]
    dtype: f4
    mode: CREATE
    initial:
      pattern: normal
      seed: 7
      mean: 0.5
      std: 2
  - name: gains
    shape: [16]
    dtype: float32
    initial: {pattern: values, values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]}
  - name: recon
    shape: [16, 16]
    dtype: float64
    storage: GPU
    gpu_device: cuda:0
    cpu_mirror: true
    initial: {pattern: identity, scale: 0.5}
  - name: command
    shape: [16]
    dtype: float64
  - name: applied
    shape: [16]
    dtype: float64
  - name: unused
    shape: [1]
    dtype: bool
sources:
  - name: camera
    kind: synthetic
    streams: [frames]
    auxiliary: {applied_state: applied}
    parameters: {pattern: ramp, rate_hz: 200}
    poll_interval: 0.002
    read_timeout: 0.5
kernels:
  - name: centroid
    kind: cpu.centroid
    input: frames
    output: slopes
    poll_interval: 1e-4
    propagate_frame_id: true
  - name: reconstruct
    kind: cpu.custom_operation
    inputs: [slopes]
    outputs: [command]
    auxiliary: [gains]
    operation: "slopes * gains"
    parameters: {nested: {list: [1, 2], date: 2024-01-01}}
    read_timeout: 2
    pause_sleep: 0.05
    trigger_policy: ALL_NEW
    synchronization: {mode: matching_frame_id, max_skew_generations: 4, timeout: 0.25}
sinks:
  - name: mirror
    kind: dm
    stream: command
    outputs: [applied]
    auxiliary: {reference: recon}
    parameters: {port: 3}
    read_timeout: 0.2
    pause_sleep: 0.02
    consume_timeout: 0.1
"""


@pytest.fixture
def full(tmp_path) -> PipelineConfig:
    return PipelineConfig.from_yaml(write(tmp_path, FULL_YAML))


# ----------------------------------------------------------------------------- loading


def test_from_yaml_parses_every_field(full, tmp_path):
    assert full.namespace == "lab"
    assert full.base_path == tmp_path.resolve()
    assert full.source_path == (tmp_path / "pipeline.yaml").resolve()
    frames, slopes, gains, recon, command, applied, unused = full.shared_memory
    assert frames == SharedMemoryConfig(
        name="frames", shape=(8, 8), dtype="uint16", notify=True, namespace="lab",
        initial=InitialValueConfig(pattern="constant", value=3),
    )
    assert slopes.dtype == "float32" and slopes.mode == "create"
    assert slopes.initial == InitialValueConfig(pattern="normal", seed=7, mean=0.5, std=2.0)
    assert gains.initial.values == list(range(1, 17))
    assert recon.storage == "gpu" and recon.gpu_device == "cuda:0" and recon.cpu_mirror is True
    assert recon.initial == InitialValueConfig(pattern="identity", scale=0.5)
    assert unused.dtype == "bool"
    assert all(spec.namespace == "lab" for spec in full.shared_memory)

    (camera,) = full.sources
    assert camera.streams == ("frames",) and camera.stream == "frames"
    assert camera.auxiliary == (AuxiliaryBinding("applied_state", "applied"),)
    assert camera.parameters == {"pattern": "ramp", "rate_hz": 200}
    assert (camera.poll_interval, camera.read_timeout) == (0.002, 0.5)

    centroid, reconstruct = full.kernels
    assert centroid.inputs == ("frames",) and centroid.outputs == ("slopes",)
    assert centroid.poll_interval == 1e-4 and centroid.propagate_frame_id is True
    assert reconstruct.auxiliary == (AuxiliaryBinding("gains", "gains"),)
    assert reconstruct.operation == "slopes * gains"
    assert reconstruct.parameters == {"nested": {"list": [1, 2], "date": "2024-01-01"}}
    assert (reconstruct.read_timeout, reconstruct.pause_sleep) == (2.0, 0.05)
    assert reconstruct.trigger_policy == "all_new"
    assert reconstruct.synchronization == SynchronizationConfig(
        mode="matching_frame_id", max_skew_generations=4, max_wait_s=0.25
    )

    (mirror,) = full.sinks
    assert mirror.stream == "command" and mirror.outputs == ("applied",)
    assert mirror.auxiliary_by_alias == {"reference": "recon"}
    assert (mirror.read_timeout, mirror.pause_sleep, mirror.consume_timeout) == (0.2, 0.02, 0.1)


def test_entry_lines_point_at_each_mapping(full, tmp_path):
    path = tmp_path / "pipeline.yaml"
    assert full.stream("frames").line == line_of(path, "- name: frames")
    assert full.stream("unused").line == line_of(path, "- name: unused")
    assert full.node("reconstruct").line == line_of(path, "- name: reconstruct")
    assert full.node("camera").line == line_of(path, "- name: camera")
    assert full.node("mirror").line == line_of(path, "- name: mirror")


def test_values_are_plain_and_picklable(full):
    params = full.node("reconstruct").parameters
    assert type(params) is dict and type(params["nested"]) is dict
    assert type(params["nested"]["list"]) is list
    assert type(full.stream("gains").initial.values) is list
    again = pickle.loads(pickle.dumps(full))
    assert again == full
    assert again.node("reconstruct").line == full.node("reconstruct").line
    assert again.source_path == full.source_path


def test_defaults():
    config = PipelineConfig.from_dict({
        "shared_memory": [{"name": n, "shape": [2], "dtype": "float32"} for n in "abcd"],
        "kernels": [
            {"name": "one", "kind": "k", "input": "a", "output": "b"},
            {"name": "two", "kind": "k", "inputs": ["a", "b"], "outputs": ["c"]},
        ],
        "sources": [{"name": "s", "kind": "src", "stream": "a"}],
        "sinks": [{"name": "x", "kind": "snk", "stream": "c"}],
    })
    stream = config.stream("a")
    assert (stream.storage, stream.gpu_device, stream.cpu_mirror, stream.notify) == (
        "cpu", None, None, None)
    assert (stream.mode, stream.initial, stream.namespace, stream.line) == (
        "create_or_attach", None, None, None)
    one, two = config.kernels
    assert one.auxiliary == () and one.operation is None and one.parameters == {}
    assert (one.read_timeout, one.pause_sleep, one.poll_interval) == (1.0, 0.01, 1e-5)
    assert one.trigger_policy == "any_new" and two.trigger_policy == "all_new"
    assert one.synchronization == SynchronizationConfig("count", "drop_older", 16, None)
    assert one.propagate_frame_id is False and one.tracks_frame_id is False
    assert one.requires_matching_frame_id is False
    (source,) = config.sources
    assert (source.auxiliary, source.parameters, source.poll_interval, source.read_timeout) == (
        (), {}, 0.01, None)
    (sink,) = config.sinks
    assert (sink.outputs, sink.auxiliary, sink.parameters) == ((), (), {})
    assert (sink.read_timeout, sink.pause_sleep, sink.consume_timeout) == (1.0, 0.01, None)
    assert config.namespace is None and config.source_path is None
    assert config.base_path == Path.cwd().resolve()


def test_initial_defaults():
    normal = PipelineConfig.from_dict(with_stream(initial={"pattern": "normal"}))
    assert normal.stream("a").initial == InitialValueConfig("normal", None, 0, 0.0, 1.0, None, 1.0)
    identity = PipelineConfig.from_dict(minimal(shared_memory=[
        {"name": "a", "shape": [2, 2], "dtype": "f8", "initial": {"pattern": "identity"}},
        {"name": "b", "shape": [4], "dtype": "f4"},
    ]))
    assert identity.stream("a").initial.scale == 1.0


def test_null_values_mean_default():
    config = PipelineConfig.from_dict(with_kernel(
        parameters=None, auxiliary=None, read_timeout=None, synchronization=None,
        propagate_frame_id=None, trigger_policy=None,
    ))
    kernel = config.kernels[0]
    assert kernel.parameters == {} and kernel.auxiliary == () and kernel.read_timeout == 1.0
    assert kernel.trigger_policy == "any_new" and kernel.propagate_frame_id is False


def test_from_dict_base_path_and_source_path(tmp_path):
    config = PipelineConfig.from_dict(minimal(), base_path=tmp_path)
    assert config.base_path == tmp_path
    errors = errors_of(minimal(kernels=[]), source_path="/etc/p.yaml")
    assert errors[0] == (
        "pipeline config must define at least one kernel, source, or sink (in /etc/p.yaml)")


def test_sources_and_sinks_only_is_legal():
    config = PipelineConfig.from_dict(with_sink())
    assert config.kernels == () and config.sinks[0].stream == "a"
    assert PipelineConfig.from_dict(with_source()).sources[0].streams == ("a",)


# ----------------------------------------------------------------------------- normalisation


def test_kernel_properties():
    config = PipelineConfig.from_dict(with_kernel(
        input=DROP, output=DROP, inputs=["a", "b"], outputs=["c", "d"], auxiliary=[],
    ))
    kernel = config.kernels[0]
    assert kernel.input == "a" and kernel.trigger_inputs == ("a", "b")
    assert kernel.output == "c" and kernel.all_outputs == ("c", "d")
    config = PipelineConfig.from_dict(with_kernel(auxiliary={"gain": "c", "ref": "d"}))
    kernel = config.kernels[0]
    assert kernel.auxiliary_names == ("c", "d") and kernel.auxiliary_aliases == ("gain", "ref")
    assert kernel.auxiliary_by_alias == {"gain": "c", "ref": "d"}
    assert kernel.all_inputs == ("a", "c", "d")


def test_auxiliary_list_form_uses_names_as_aliases():
    kernel = PipelineConfig.from_dict(with_kernel(auxiliary=["c", " d "])).kernels[0]
    assert kernel.auxiliary == (AuxiliaryBinding("c", "c"), AuxiliaryBinding("d", "d"))


def test_tracks_frame_id():
    matching = PipelineConfig.from_dict(with_kernel(
        input=DROP, inputs=["a", "b"], output="c", synchronization={"mode": "matching_frame_id"},
    )).kernels[0]
    assert matching.requires_matching_frame_id and matching.tracks_frame_id
    propagating = PipelineConfig.from_dict(with_kernel(propagate_frame_id=True)).kernels[0]
    assert propagating.tracks_frame_id and not propagating.requires_matching_frame_id


@pytest.mark.parametrize("given, canonical", [
    ("f4", "float32"), ("float", "float64"), ("int", "int64"), ("<u2", "uint16"),
    ("bool", "bool"), ("complex64", "complex64"), ("float16", "float16"),
])
def test_dtype_is_canonical_numpy_name(given, canonical):
    spec = PipelineConfig.from_dict(with_stream(dtype=given)).stream("a")
    assert spec.dtype == canonical
    assert spec.numpy_dtype == np.dtype(canonical)


def test_nbytes():
    spec = PipelineConfig.from_dict(with_stream(shape=[3, 5], dtype="float64")).stream("a")
    assert spec.nbytes == 3 * 5 * 8


def test_strings_are_stripped_and_lowered():
    config = PipelineConfig.from_dict({
        "namespace": "  ns ",
        "shared_memory": [
            {"name": " a ", "shape": [4], "dtype": "float32", "mode": " Attach "},
            {"name": "b", "shape": [4], "dtype": "float32", "storage": "Gpu",
             "gpu_device": " cuda:1 "},
        ],
        "kernels": [{"name": " k ", "kind": " cpu.copy ", "input": " a ", "output": "b",
                     "trigger_policy": "ANY_NEW"}],
    })
    assert config.namespace == "ns"
    assert config.stream("a").mode == "attach"
    assert config.stream("b").storage == "gpu" and config.stream("b").gpu_device == "cuda:1"
    kernel = config.node("k")
    assert (kernel.kind, kernel.inputs, kernel.trigger_policy) == ("cpu.copy", ("a",), "any_new")


def test_synchronization_timeout_alias():
    sync = PipelineConfig.from_dict(with_kernel(
        input=DROP, inputs=["a", "b"], output="c",
        synchronization={"mode": "matching_frame_id", "max_wait_s": 2},
    )).kernels[0].synchronization
    assert sync.max_wait_s == 2.0 and isinstance(sync.max_wait_s, float)


def test_yaml_reads_exponent_floats_and_keeps_dates_as_text(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - {name: a, shape: [4], dtype: float32}
          - {name: b, shape: [4], dtype: float32}
        kernels:
          - name: k
            kind: cpu.copy
            input: a
            output: b
            poll_interval: 1e-5
            read_timeout: 2E+1
            parameters: {when: 2024-05-01, gain: -1.5e3, label: "1e-5"}
    """)
    kernel = PipelineConfig.from_yaml(path).kernels[0]
    assert kernel.poll_interval == 1e-5 and kernel.read_timeout == 20.0
    assert kernel.parameters == {"when": "2024-05-01", "gain": -1500.0, "label": "1e-5"}


def test_yaml_anchors_and_merge_keys(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - &vec {name: a, shape: [4], dtype: float32}
          - <<: *vec
            name: b
        kernels:
          - {name: k, kind: cpu.copy, input: a, output: b}
    """)
    config = PipelineConfig.from_yaml(path)
    assert config.stream("b").shape == (4,) and config.stream("b").line == 3


def test_direct_construction_normalises():
    spec = SharedMemoryConfig(name="a", shape=[2, 3], dtype=np.float32)
    assert spec.shape == (2, 3) and spec.dtype == "float32"
    kernel = KernelConfig(name="k", kind="cpu.copy", inputs="a", outputs=["b", "c"],
                          auxiliary=["d"])
    assert kernel.inputs == ("a",) and kernel.outputs == ("b", "c")
    assert kernel.auxiliary == (AuxiliaryBinding("d", "d"),)
    assert kernel.trigger_policy == "any_new"
    assert KernelConfig(name="k", kind="x", inputs=("a", "b"), outputs=("c",)).trigger_policy == (
        "all_new")
    assert SourceConfig(name="s", kind="x", streams="a").streams == ("a",)
    assert SinkConfig(name="x", kind="x", stream="a", outputs=["b"]).outputs == ("b",)
    config = PipelineConfig(shared_memory=[spec], kernels=[kernel], namespace="ns")
    assert config.kernels == (kernel,) and config.stream("a").namespace == "ns"
    with pytest.raises(ConfigValidationError, match="must declare a dtype"):
        SharedMemoryConfig(name="a", shape=(2,), dtype=None)
    with pytest.raises(ConfigValidationError, match="invalid dtype for shared memory 'a'"):
        SharedMemoryConfig(name="a", shape=(2,), dtype="nope")


def test_entries_are_frozen_and_line_is_not_compared():
    spec = SharedMemoryConfig(name="a", shape=(2,), dtype="f4", line=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "b"  # type: ignore[misc]
    assert spec == SharedMemoryConfig(name="a", shape=(2,), dtype="f4", line=9)
    kernel = KernelConfig(name="k", kind="x", inputs=("a",), outputs=("b",), line=1)
    assert kernel == dataclasses.replace(kernel, line=2)


# ----------------------------------------------------------------------------- round trip


def test_to_dict_round_trips(full):
    data = full.to_dict()
    json.dumps(data)  # plain data only
    again = PipelineConfig.from_dict(data, base_path=full.base_path)
    assert again == full
    assert again.namespace == "lab"
    assert PipelineConfig.from_dict(again.to_dict(), base_path=full.base_path).to_dict() == data


def test_to_dict_round_trips_through_yaml(full, tmp_path):
    other = tmp_path / "again"
    other.mkdir()
    path = other / "pipeline.yaml"
    path.write_text(yaml.safe_dump(full.to_dict(), sort_keys=False))
    again = PipelineConfig.from_yaml(path)
    assert dataclasses.replace(again, base_path=full.base_path) == full


def test_to_dict_omits_unset_optional_fields():
    data = PipelineConfig.from_dict(minimal()).to_dict()
    assert "namespace" not in data
    assert data["shared_memory"][0] == {
        "name": "a", "shape": [4], "dtype": "float32", "storage": "cpu",
        "mode": "create_or_attach"}
    assert data["kernels"][0]["inputs"] == ["a"] and "auxiliary" not in data["kernels"][0]
    assert data["sources"] == [] and data["sinks"] == []


def test_to_dict_keeps_list_form_auxiliary(full):
    kernels = {k["name"]: k for k in full.to_dict()["kernels"]}
    assert kernels["reconstruct"]["auxiliary"] == ["gains"]
    assert full.to_dict()["sources"][0]["auxiliary"] == {"applied_state": "applied"}


def test_to_dict_is_a_copy(full):
    data = full.to_dict()
    data["kernels"][1]["parameters"]["nested"]["list"].append(3)
    assert full.node("reconstruct").parameters["nested"]["list"] == [1, 2]


# ----------------------------------------------------------------------------- look-ups


def test_stream_and_node_lookups(full):
    assert full.stream("slopes").shape == (16,)
    assert list(full.streams_by_name) == [
        "frames", "slopes", "gains", "recon", "command", "applied", "unused"]
    assert full.streams_by_name["recon"] is full.stream("recon")
    assert isinstance(full.node("camera"), SourceConfig)
    assert isinstance(full.node("centroid"), KernelConfig)
    assert isinstance(full.node("mirror"), SinkConfig)
    with pytest.raises(KeyError):
        full.stream("nope")
    with pytest.raises(KeyError):
        full.node("frames")


def test_locate(full, tmp_path):
    path = (tmp_path / "pipeline.yaml").resolve()
    kernel = full.node("reconstruct")
    assert full.locate("bad", kernel) == f"bad (in {path}, line {kernel.line})"
    assert full.locate("bad", "reconstruct") == f"bad (in {path}, line {kernel.line})"
    assert full.locate("bad", "slopes") == f"bad (in {path}, line {full.stream('slopes').line})"
    assert full.locate("bad", 12) == f"bad (in {path}, line 12)"
    assert full.locate("bad", None) == f"bad (in {path})"
    assert full.locate("bad", "no-such-entry") == f"bad (in {path})"
    plain = PipelineConfig.from_dict(minimal())
    assert plain.locate("bad", plain.kernels[0]) == "bad"
    assert plain.locate("bad", 4) == "bad (line 4)"


def test_replace_validates_and_keeps_namespace(full):
    extra = KernelConfig(name="late", kind="cpu.copy", inputs=("command",), outputs=("unused",))
    bigger = full.replace(kernels=full.kernels + (extra,))
    assert bigger.node("late") is extra and full.kernels != bigger.kernels
    assert bigger.node("centroid").line == full.node("centroid").line
    renamed = full.replace(namespace="other")
    assert all(spec.namespace == "other" for spec in renamed.shared_memory)
    with pytest.raises(ConfigValidationError, match="must not contain path separators"):
        full.replace(namespace="a/b")
    with pytest.raises(ConfigValidationError) as info:
        full.replace(kernels=full.kernels + (dataclasses.replace(extra, name="centroid"),))
    assert info.value.errors[0].startswith("kernel names must be unique: 'centroid'")
    with pytest.raises(ConfigValidationError, match="kernel 'late' references undefined shared "
                                                    "memory: nope"):
        full.replace(kernels=(dataclasses.replace(extra, outputs=("nope",)),))


# ----------------------------------------------------------------------------- top level


def test_unsupported_top_level_fields_sorted_and_quoted():
    assert only_error(minimal(zeta=1, alpha=2)) == (
        "pipeline config contains unsupported fields: 'alpha', 'zeta'")


@pytest.mark.parametrize("namespace, message", [
    ("", "pipeline config field 'namespace' must be a non-empty string"),
    ("   ", "pipeline config field 'namespace' must be a non-empty string"),
    (5, "pipeline config field 'namespace' must be a non-empty string"),
    ("a/b", "pipeline config field 'namespace' must not contain path separators or null bytes"),
    ("a\\b", "pipeline config field 'namespace' must not contain path separators or null bytes"),
    ("a\0b", "pipeline config field 'namespace' must not contain path separators or null bytes"),
])
def test_namespace_rules(namespace, message):
    assert only_error(minimal(namespace=namespace)) == message


@pytest.mark.parametrize("shared_memory", [DROP, [], None, {"name": "a"}, "a"])
def test_shared_memory_must_be_a_non_empty_list(shared_memory):
    data = minimal(shared_memory=shared_memory)
    if shared_memory is DROP:
        del data["shared_memory"]
    # references cannot be checked without streams: only this one error
    assert only_error(data) == "pipeline config must define a non-empty shared_memory list"


@pytest.mark.parametrize("section", ["kernels", "sources", "sinks"])
def test_sections_must_be_lists(section):
    data = minimal(**{section: {"name": "x"}})
    assert only_error(data) == f"pipeline config field '{section}' must be a list"


def test_at_least_one_node():
    assert only_error(minimal(kernels=[], sources=None)) == (
        "pipeline config must define at least one kernel, source, or sink")


def test_base_path_must_be_absolute():
    errors = errors_of(minimal(), base_path="relative/dir")
    assert errors == ("pipeline config base_path must be absolute, got 'relative/dir'",)


def test_from_dict_requires_a_mapping():
    with pytest.raises(ConfigValidationError, match="must be a mapping, got list"):
        PipelineConfig.from_dict([minimal()])


def test_errors_are_config_validation_errors():
    with pytest.raises(ShmPipelineError):
        PipelineConfig.from_dict(minimal(kernels=[]))
    with pytest.raises(ValueError):
        PipelineConfig.from_dict(minimal(kernels=[]))


# ----------------------------------------------------------------------------- streams


@pytest.mark.parametrize("fields, message", [
    ({"name": DROP}, "shared memory name must be a non-empty string"),
    ({"name": ""}, "shared memory name must be a non-empty string"),
    ({"name": 3}, "shared memory name must be a non-empty string"),
    ({"name": "a/b"}, "shared memory name 'a/b' must not contain path separators or null bytes"),
    ({"name": "a\\b"}, "shared memory name 'a\\\\b' must not contain path separators or null "
                       "bytes"),
    ({"name": "a\0"}, "shared memory name 'a\\x00' must not contain path separators or null "
                      "bytes"),
    ({"shape": DROP}, "shared memory 'a' must declare a shape"),
    ({"shape": []}, "shape for 'a' must contain at least one dimension"),
    ({"shape": 4}, "shape for 'a' must be a list of positive integers, got 4"),
    ({"shape": [4, 0]}, "shape for 'a' dimensions must be positive"),
    ({"shape": [-1]}, "shape for 'a' dimensions must be positive"),
    ({"shape": [4.5]}, "shape for 'a' dimensions must be integers, got 4.5"),
    ({"shape": ["4"]}, "shape for 'a' dimensions must be integers, got '4'"),
    ({"shape": [True]}, "shape for 'a' dimensions must be integers, got True"),
    ({"dtype": DROP}, "shared memory 'a' must declare a dtype"),
    ({"dtype": "bad"}, "invalid dtype for shared memory 'a': 'bad'"),
    ({"dtype": 5}, "invalid dtype for shared memory 'a': 5"),
    ({"dtype": "object"}, "dtype for shared memory 'a' must be a numeric or bool dtype"),
    ({"dtype": "U8"}, "dtype for shared memory 'a' must be a numeric or bool dtype"),
    ({"dtype": "V8"}, "dtype for shared memory 'a' must be a numeric or bool dtype"),
    ({"dtype": "datetime64[s]"}, "dtype for shared memory 'a' must be a numeric or bool dtype"),
    ({"dtype": ">f8" if np.little_endian else "<f8"},
     "dtype for shared memory 'a' must use native byte order"),
    ({"storage": "tpu"}, "storage must be either 'cpu' or 'gpu', got 'tpu'"),
    ({"storage": 1}, "storage must be either 'cpu' or 'gpu', got 1"),
    ({"storage": "gpu"}, "GPU shared memory 'a' requires gpu_device"),
    ({"gpu_device": "cuda:0"}, "CPU shared memory 'a' cannot declare gpu_device"),
    ({"storage": "gpu", "gpu_device": ""}, "gpu_device for shared memory 'a' must be a "
                                           "non-empty string"),
    ({"storage": "gpu", "gpu_device": 0}, "gpu_device for shared memory 'a' must be a "
                                          "non-empty string"),
    ({"storage": "gpu", "gpu_device": "gpu0"}, "gpu_device for shared memory 'a' must be 'cuda' "
                                               "or 'cuda:<index>', got 'gpu0'"),
    ({"storage": "gpu", "gpu_device": "cuda:"}, "gpu_device for shared memory 'a' must be "
                                                "'cuda' or 'cuda:<index>', got 'cuda:'"),
    ({"storage": "gpu", "gpu_device": "cuda:-1"}, "gpu_device for shared memory 'a' must be "
                                                  "'cuda' or 'cuda:<index>', got 'cuda:-1'"),
    ({"storage": "gpu", "gpu_device": "cuda:x"}, "gpu_device for shared memory 'a' must be "
                                                 "'cuda' or 'cuda:<index>', got 'cuda:x'"),
    ({"storage": "gpu", "gpu_device": "cuda0"}, "gpu_device for shared memory 'a' must be "
                                                "'cuda' or 'cuda:<index>', got 'cuda0'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "datetime64[ns]"},
     "unsupported GPU dtype 'datetime64[ns]' for shared memory 'a'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "m8[s]"},
     "unsupported GPU dtype 'timedelta64[s]' for shared memory 'a'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "object"},
     "unsupported GPU dtype 'object' for shared memory 'a'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "V8"},
     "unsupported GPU dtype '|V8' for shared memory 'a'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "f4,i4"},  # structured
     f"unsupported GPU dtype {str(np.dtype('f4,i4'))!r} for shared memory 'a'"),
    ({"storage": "gpu", "gpu_device": "cuda:0", "dtype": "bad"},
     "invalid dtype for shared memory 'a': 'bad'"),
    ({"cpu_mirror": "yes"}, "cpu_mirror for shared memory 'a' must be boolean"),
    ({"cpu_mirror": 1}, "cpu_mirror for shared memory 'a' must be boolean"),
    ({"notify": 0}, "notify for shared memory 'a' must be boolean"),
    ({"mode": "open"}, "mode for shared memory 'a' must be one of 'create', 'attach', "
                       "'create_or_attach', or 'replace'"),
    ({"extra": 1, "another": 2}, "shared_memory entry contains unsupported fields: 'another', "
                                 "'extra'"),
])
def test_stream_rules(fields, message):
    stream = {"name": "a", "shape": [4], "dtype": "float32"}
    stream.update(fields)
    stream = {k: v for k, v in stream.items() if v is not DROP}
    data = {"shared_memory": [stream, {"name": "z", "shape": [1], "dtype": "f4"}],
            "sinks": [{"name": "x", "kind": "null", "stream": "z"}]}
    assert only_error(data) == message


def test_stream_entry_must_be_a_mapping():
    data = minimal()
    data["shared_memory"].append("c")
    assert only_error(data) == "shared_memory entry must be a mapping"


@pytest.mark.parametrize("given, kept", [
    ("cuda", "cuda"), ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1"), ("cuda:12", "cuda:12"),
    (" CUDA:0 ", "cuda:0"), ("Cuda", "cuda"),
])
def test_gpu_device_forms_accepted(given, kept):
    spec = PipelineConfig.from_dict(with_stream(storage="gpu", gpu_device=given)).stream("a")
    assert spec.gpu_device == kept


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "float16", "float32", "complex64"])
def test_gpu_stream_accepts_numeric_and_bool_dtypes(dtype):
    data = with_stream(storage="gpu", gpu_device="cuda:0", dtype=dtype)
    assert PipelineConfig.from_dict(data).stream("a").dtype == dtype


@pytest.mark.parametrize("text, index", [
    ("cuda", 0), ("cuda:0", 0), ("cuda:1", 1), ("cuda:7", 7), ("CUDA:3", 3), (" cuda:2 ", 2),
])
def test_gpu_device_index(text, index):
    assert gpu_device_index(text) == index


@pytest.mark.parametrize("text", ["", "gpu0", "cuda:", "cuda:-1", "cuda:1.5", "cuda0", "cpu",
                                  "cuda:0:1", "hip:0"])
def test_gpu_device_index_rejects_other_text(text):
    with pytest.raises(ValueError, match=r"gpu_device must be 'cuda' or 'cuda:<index>'"):
        gpu_device_index(text)


def test_cpu_stream_keeps_accepting_cpu_mirror():
    """shmpipeline files may set cpu_mirror on CPU streams; it is meaningless there, not an error."""
    spec = PipelineConfig.from_dict(with_stream(cpu_mirror=True)).stream("a")
    assert spec.storage == "cpu" and spec.cpu_mirror is True


def test_gpu_errors_point_at_their_field(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - name: a
            shape: [4]
            dtype: float32
            storage: gpu
            gpu_device: gpu0
          - name: b
            shape: [4]
            dtype: datetime64[ns]
            storage: gpu
            gpu_device: cuda:1
          - name: c
            shape: [4]
            dtype: float32
            gpu_device: cuda:0
        sinks: [{name: x, kind: viewer, stream: a}]
    """)
    assert yaml_errors(path) == (
        "gpu_device for shared memory 'a' must be 'cuda' or 'cuda:<index>', got 'gpu0'"
        + at(path, line_of(path, "gpu_device: gpu0")),
        "unsupported GPU dtype 'datetime64[ns]' for shared memory 'b'"
        + at(path, line_of(path, "dtype: datetime64[ns]")),
        "CPU shared memory 'c' cannot declare gpu_device"
        + at(path, line_of(path, "gpu_device: cuda:0")),
    )


def test_gpu_stream_accepts_cpu_mirror_null():
    spec = PipelineConfig.from_dict(with_stream(
        storage="gpu", gpu_device="cuda:0", cpu_mirror=None)).stream("a")
    assert spec.cpu_mirror is None and spec.storage == "gpu"


@pytest.mark.parametrize("shape, dtype, initial, message", [
    ([4], "f4", "constant", "initial value for shared memory 'a' must be a mapping"),
    ([4], "f4", {"pattern": "ramp"},
     "initial pattern for shared memory 'a' must be 'constant', 'normal', 'values', or "
     "'identity'"),
    ([4], "f4", {"value": 1},
     "initial pattern for shared memory 'a' must be 'constant', 'normal', 'values', or "
     "'identity'"),
    ([4], "f4", {"pattern": "constant", "value": 1, "seed": 2, "mean": 0},
     "initial value for shared memory 'a' contains unsupported fields: mean, seed"),
    ([4], "f4", {"pattern": "constant"},
     "initial value for shared memory 'a' requires a numeric 'value'"),
    ([4], "f4", {"pattern": "constant", "value": "1"},
     "initial value for shared memory 'a' requires a numeric 'value'"),
    ([4], "f4", {"pattern": "constant", "value": True},
     "initial value for shared memory 'a' requires a numeric 'value'"),
    ([4], "f4", {"pattern": "normal", "std": -1},
     "initial std for shared memory 'a' must be non-negative"),
    ([4], "f4", {"pattern": "normal", "std": "wide"},
     "initial std for shared memory 'a' must be a number"),
    ([4], "f4", {"pattern": "normal", "mean": False},
     "initial mean for shared memory 'a' must be a number"),
    ([4], "f4", {"pattern": "normal", "seed": True},
     "initial seed for shared memory 'a' must be a non-negative integer"),
    ([4], "f4", {"pattern": "normal", "seed": 1.5},
     "initial seed for shared memory 'a' must be a non-negative integer"),
    ([4], "f4", {"pattern": "normal", "seed": -1},
     "initial seed for shared memory 'a' must be a non-negative integer"),
    ([4], "int32", {"pattern": "normal"},
     "normal initializer for 'a' requires a floating-point dtype"),
    ([4], "f4", {"pattern": "values"},
     "initial value for shared memory 'a' requires a 'values' key"),
    ([4], "f4", {"pattern": "values", "values": [1, 2]},
     "values initializer for 'a' has shape (2,), expected (4,)"),
    ([2, 2], "f4", {"pattern": "values", "values": [[1, 2], [3]]},
     "values initializer for 'a' cannot be converted to float32"),
    ([2], "f4", {"pattern": "values", "values": ["x", "y"]},
     "values initializer for 'a' cannot be converted to float32"),
    ([4], "f4", {"pattern": "identity"},
     "identity initializer for shared memory 'a' requires a 2D shape, got (4,)"),
    ([2, 2], "f4", {"pattern": "identity", "scale": "big"},
     "initial scale for shared memory 'a' must be a number"),
])
def test_initial_rules(shape, dtype, initial, message):
    assert only_error(with_stream(shape=shape, dtype=dtype, initial=initial)) == message


def test_initial_patterns_accepted():
    for shape, initial in [
        ([2], {"pattern": "constant", "value": -2.5}),
        ([2], {"pattern": "Constant", "value": 7}),
        ([2], {"pattern": "normal", "seed": 3, "mean": 1, "std": 0}),
        ([2, 2], {"pattern": "values", "values": [[1, 2], [3, 4]]}),
        ([2, 3], {"pattern": "identity", "scale": 2}),
    ]:
        spec = PipelineConfig.from_dict(with_stream(shape=shape, initial=initial)).stream("a")
        assert spec.initial.pattern == initial["pattern"].lower()
    spec = PipelineConfig.from_dict(with_stream(initial={"pattern": "constant", "value": 7}))
    assert spec.stream("a").initial.value == 7


def test_initial_checks_skip_when_shape_or_dtype_is_broken():
    errors = errors_of(with_stream(shape=[0], dtype="nope",
                                   initial={"pattern": "values", "values": [1]}))
    assert errors == ("shape for 'a' dimensions must be positive",
                      "invalid dtype for shared memory 'a': 'nope'")


def test_every_field_error_of_one_stream_is_reported():
    errors = errors_of(with_stream(shape=[], dtype="bad", storage="tpu", mode="x", notify=1))
    # storage is read before dtype: the dtype rule depends on it
    assert [e.split(" ")[0] for e in errors] == ["shape", "storage", "invalid", "notify", "mode"]


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("fields, message", [
    ({"inputs": ["b"]}, "kernel entry must use either 'input' or 'inputs', not both"),
    ({"outputs": ["b"]}, "kernel entry must use either 'output' or 'outputs', not both"),
    ({"cores": 3, "affinity": 1}, "kernel entry contains unsupported fields: 'affinity', 'cores'"),
    ({"name": DROP}, "kernel name must be a non-empty string"),
    ({"name": " "}, "kernel name must be a non-empty string"),
    ({"kind": DROP}, "kind for kernel 'k' must be a non-empty string"),
    ({"kind": 4}, "kind for kernel 'k' must be a non-empty string"),
    ({"input": DROP}, "kernel 'k' must declare 'input' or 'inputs'"),
    ({"output": DROP}, "kernel 'k' must declare 'output' or 'outputs'"),
    ({"input": ["a"]}, "input for kernel 'k' must be a non-empty string"),
    ({"input": DROP, "inputs": []}, "inputs for kernel 'k' must be a non-empty list of stream "
                                    "names"),
    ({"input": DROP, "inputs": "a"}, "inputs for kernel 'k' must be a non-empty list of stream "
                                     "names"),
    ({"input": DROP, "inputs": ["a", 3]}, "inputs for kernel 'k' must contain only non-empty "
                                          "stream names, got 3"),
    ({"output": DROP, "outputs": [""]}, "outputs for kernel 'k' must contain only non-empty "
                                        "stream names, got ''"),
    ({"auxiliary": "c"}, "auxiliary for kernel 'k' must be a list of stream names or a mapping "
                         "of alias to stream name"),
    ({"auxiliary": [None]}, "auxiliary for kernel 'k' must name streams with non-empty strings, "
                            "got None"),
    ({"auxiliary": {"g": 3}}, "auxiliary for kernel 'k' must name streams with non-empty "
                              "strings, got 3"),
    ({"auxiliary": {1: "c"}}, "auxiliary for kernel 'k' aliases must be non-empty strings, "
                              "got 1"),
    ({"operation": ""}, "operation for kernel 'k' must be a non-empty string"),
    ({"parameters": [1]}, "parameters for kernel 'k' must be a mapping"),
    ({"read_timeout": True}, "read_timeout for kernel 'k' must be a number"),
    ({"read_timeout": "1"}, "read_timeout for kernel 'k' must be a number"),
    ({"read_timeout": 0}, "read_timeout for kernel 'k' must be positive"),
    ({"read_timeout": float("nan")}, "read_timeout for kernel 'k' must be a number"),
    ({"read_timeout": float("inf")}, "read_timeout for kernel 'k' must be finite"),
    ({"pause_sleep": -0.1}, "pause_sleep for kernel 'k' must be positive"),
    ({"poll_interval": 0}, "poll_interval for kernel 'k' must be positive"),
    ({"poll_interval": []}, "poll_interval for kernel 'k' must be a number"),
    ({"trigger_policy": "first"}, "trigger_policy for kernel 'k' must be either 'any_new' or "
                                  "'all_new'"),
    ({"synchronization": "strict"}, "synchronization for kernel 'k' must be a mapping"),
    ({"synchronization": {"mode": "count", "wait": 1}},
     "synchronization for kernel 'k' contains unsupported fields: 'wait'"),
    ({"synchronization": {"mode": "latest"}},
     "synchronization mode for kernel 'k' must be either 'count' or 'matching_frame_id'"),
    ({"synchronization": {"on_skew": "drop_newer"}},
     "synchronization on_skew for kernel 'k' must be 'drop_older'"),
    ({"synchronization": {"max_skew_generations": 0}},
     "synchronization max_skew_generations for kernel 'k' must be an integer >= 1"),
    ({"synchronization": {"max_skew_generations": True}},
     "synchronization max_skew_generations for kernel 'k' must be an integer >= 1"),
    ({"synchronization": {"max_wait_s": -1}},
     "synchronization max_wait_s for kernel 'k' must be positive"),
    ({"synchronization": {"timeout": "soon"}},
     "synchronization timeout for kernel 'k' must be a number"),
    ({"synchronization": {"timeout": 1, "max_wait_s": 1}},
     "synchronization for kernel 'k' must use either 'max_wait_s' or 'timeout', not both"),
    ({"propagate_frame_id": "yes"}, "propagate_frame_id for kernel 'k' must be boolean"),
    ({"input": DROP, "inputs": ["a", "a"]},
     "kernel 'k' cannot declare the same trigger input stream more than once"),
    ({"synchronization": {"mode": "matching_frame_id"}},
     "kernel 'k' synchronization mode 'matching_frame_id' requires trigger_policy 'all_new'"),
    ({"output": DROP, "outputs": ["b", "b"]},
     "kernel 'k' cannot declare the same output stream more than once"),
    ({"output": "a"}, "kernel 'k' cannot use the same shared memory for both input and output"),
    ({"auxiliary": ["c", "c"]}, "kernel 'k' cannot reuse the same auxiliary stream more than "
                                "once"),
    ({"auxiliary": {"g": "c", " g ": "d"}}, "kernel 'k' cannot reuse the same auxiliary alias "
                                            "more than once"),
    ({"auxiliary": ["a"]}, "kernel 'k' cannot reuse the trigger input as auxiliary"),
    ({"auxiliary": {"x": "b"}}, "kernel 'k' cannot reuse the output as auxiliary"),
])
def test_kernel_rules(fields, message):
    assert only_error(with_kernel(**fields)) == message


def test_kernel_entry_must_be_a_mapping():
    assert only_error(minimal(kernels=["k"])) == "kernel entry must be a mapping"


def test_both_forms_checked_before_unknown_fields():
    errors = errors_of(with_kernel(inputs=["a"], outputs=["b"], bogus=1))
    assert errors == (
        "kernel entry must use either 'input' or 'inputs', not both",
        "kernel entry must use either 'output' or 'outputs', not both",
        "kernel entry contains unsupported fields: 'bogus'",
    )


def test_matching_frame_id_with_explicit_any_new_is_rejected():
    data = with_kernel(input=DROP, inputs=["a", "c"], trigger_policy="any_new",
                       synchronization={"mode": "matching_frame_id"})
    assert only_error(data) == (
        "kernel 'k' synchronization mode 'matching_frame_id' requires trigger_policy 'all_new'")


def test_kernel_stream_checks_run_in_spec_order():
    data = with_kernel(input=DROP, inputs=["a", "a"], output=DROP, outputs=["a", "b", "b"],
                       auxiliary=["b"])
    assert errors_of(data) == (
        "kernel 'k' cannot declare the same trigger input stream more than once",
        "kernel 'k' cannot declare the same output stream more than once",
        "kernel 'k' cannot use the same shared memory for both input and output",
        "kernel 'k' cannot reuse the output as auxiliary",
    )


# ----------------------------------------------------------------------------- sources, sinks


@pytest.mark.parametrize("fields, message", [
    ({"streams": ["a"]}, "source entry must use either 'stream' or 'streams', not both"),
    ({"rate": 1}, "source entry contains unsupported fields: 'rate'"),
    ({"name": DROP}, "source name must be a non-empty string"),
    ({"kind": ""}, "kind for source 's' must be a non-empty string"),
    ({"stream": DROP}, "source 's' must declare 'stream' or 'streams'"),
    ({"stream": 1}, "stream for source 's' must be a non-empty string"),
    ({"stream": DROP, "streams": []}, "streams for source 's' must be a non-empty list of stream "
                                      "names"),
    ({"stream": DROP, "streams": ["a", "b", "a"]},
     "source 's' cannot declare the same output stream more than once"),
    ({"auxiliary": ["b", "b"]}, "source 's' cannot reuse the same auxiliary stream more than "
                                "once"),
    ({"auxiliary": 7}, "auxiliary for source 's' must be a list of stream names or a mapping of "
                       "alias to stream name"),
    ({"parameters": "x"}, "parameters for source 's' must be a mapping"),
    ({"poll_interval": 0}, "poll_interval for source 's' must be positive"),
    ({"read_timeout": False}, "read_timeout for source 's' must be a number"),
    ({"read_timeout": -2}, "read_timeout for source 's' must be positive"),
])
def test_source_rules(fields, message):
    assert only_error(with_source(**fields)) == message


@pytest.mark.parametrize("fields, message", [
    ({"streams": ["a"]}, "sink entry contains unsupported fields: 'streams'"),
    ({"name": 1}, "sink name must be a non-empty string"),
    ({"kind": DROP}, "kind for sink 'x' must be a non-empty string"),
    ({"stream": DROP}, "stream for sink 'x' must be a non-empty string"),
    ({"stream": ["a"]}, "stream for sink 'x' must be a non-empty string"),
    ({"outputs": "b"}, "outputs for sink 'x' must be a non-empty list of stream names"),
    ({"outputs": ["b", "b"]}, "sink 'x' cannot declare the same output stream more than once"),
    ({"auxiliary": {"r": "b", " r": "c"}}, "sink 'x' cannot reuse the same auxiliary alias more "
                                           "than once"),
    ({"parameters": 3}, "parameters for sink 'x' must be a mapping"),
    ({"read_timeout": 0}, "read_timeout for sink 'x' must be positive"),
    ({"pause_sleep": "fast"}, "pause_sleep for sink 'x' must be a number"),
    ({"consume_timeout": -1}, "consume_timeout for sink 'x' must be positive"),
])
def test_sink_rules(fields, message):
    assert only_error(with_sink(**fields)) == message


def test_sink_empty_outputs_means_none():
    assert PipelineConfig.from_dict(with_sink(outputs=[])).sinks[0].outputs == ()


# ----------------------------------------------------------------------------- whole config


def test_duplicate_names_within_sections():
    data = minimal()
    data["shared_memory"].append({"name": "a", "shape": [1], "dtype": "f4"})
    data["kernels"].append({"name": "k", "kind": "x", "input": "b", "output": "a"})
    data["sources"] = [{"name": "s", "kind": "x", "stream": "a"}] * 2
    data["sinks"] = [{"name": "z", "kind": "x", "stream": "b"}] * 2
    assert errors_of(data) == (
        "shared memory names must be unique: 'a'",
        "kernel names must be unique: 'k'",
        "source names must be unique: 's'",
        "sink names must be unique: 'z'",
    )


def test_node_names_unique_across_sections():
    data = minimal(sources=[{"name": "k", "kind": "x", "stream": "a"}],
                   sinks=[{"name": "k", "kind": "x", "stream": "b"}])
    assert errors_of(data) == (
        "pipeline node names must be unique across kernels, sources, and sinks: 'k'",
        "pipeline node names must be unique across kernels, sources, and sinks: 'k'",
    )


def test_undefined_references_sorted_and_deduplicated():
    data = minimal(
        kernels=[{"name": "k", "kind": "x", "inputs": ["zz", "a"], "output": "yy",
                  "auxiliary": {"g": "zz2", "h": "b"}},
                 {"name": "k2", "kind": "x", "input": "q", "outputs": ["b"],
                  "auxiliary": ["q2"]}],
        sources=[{"name": "s", "kind": "x", "streams": ["m", "a"], "auxiliary": ["n"]}],
        sinks=[{"name": "x", "kind": "x", "stream": "p", "outputs": ["o"], "auxiliary": ["a"]}],
    )
    assert errors_of(data) == (
        "kernel 'k' references undefined shared memory: yy, zz, zz2",
        "kernel 'k2' references undefined shared memory: q, q2",
        "source 's' references undefined shared memory: m, n",
        "sink 'x' references undefined shared memory: o, p",
    )


def test_references_to_broken_streams_are_not_reported_twice():
    data = with_stream(dtype="bad")
    assert errors_of(data) == ("invalid dtype for shared memory 'a': 'bad'",)


def test_every_bad_entry_is_reported_in_order():
    data = {
        "bogus": 1,
        "shared_memory": [
            {"name": "a", "shape": [4], "dtype": "nope"},
            {"name": "b", "shape": [0], "dtype": "f4"},
            {"name": "c", "shape": [4], "dtype": "f4"},
        ],
        "kernels": [
            {"name": "k1", "kind": "x", "input": "c", "output": "d"},
            {"name": "k2", "kind": "x", "input": "c", "output": "c"},
        ],
        "sources": [{"name": "s", "kind": "x"}],
        "sinks": [{"name": "x", "kind": "x", "stream": "c", "read_timeout": 0}],
    }
    assert errors_of(data) == (
        "pipeline config contains unsupported fields: 'bogus'",
        "invalid dtype for shared memory 'a': 'nope'",
        "shape for 'b' dimensions must be positive",
        "kernel 'k2' cannot use the same shared memory for both input and output",
        "source 's' must declare 'stream' or 'streams'",
        "read_timeout for sink 'x' must be positive",
        "kernel 'k1' references undefined shared memory: d",
    )


# ----------------------------------------------------------------------------- file and line


def test_yaml_errors_name_file_and_line_of_each_entry(tmp_path):
    path = write(tmp_path, """
        namespace: lab
        shared_memory:
          - name: frames
            shape: [4, 4]
            dtype: float32
          - name: frames
            shape: [4]
            dtype: float32
          - name: slopes
            shape: [8]
            dtype: float32
        kernels:
          - name: centroid
            kind: cpu.centroid
            input: frames
            output: slopes
          - name: reconstruct
            kind: cpu.matmul
            input: slopes
            output: command
        sinks:
          - name: centroid
            kind: null
            stream: slopes
    """)
    assert yaml_errors(path) == (
        "kind for sink 'centroid' must be a non-empty string"
        + at(path, line_of(path, "kind: null")),
        "shared memory names must be unique: 'frames'"
        + at(path, line_of(path, "- name: frames", 2)),
        "kernel 'reconstruct' references undefined shared memory: command"
        + at(path, line_of(path, "- name: reconstruct")),
    )
    # with the sink's kind fixed, the cross-section duplicate shows, at the sink
    path.write_text(path.read_text().replace("kind: null", "kind: null_sink"))
    assert yaml_errors(path) == (
        "shared memory names must be unique: 'frames'"
        + at(path, line_of(path, "- name: frames", 2)),
        "pipeline node names must be unique across kernels, sources, and sinks: 'centroid'"
        + at(path, line_of(path, "- name: centroid", 2)),
        "kernel 'reconstruct' references undefined shared memory: command"
        + at(path, line_of(path, "- name: reconstruct")),
    )


def test_field_errors_point_at_the_field_line(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - name: a
            shape: [4]
            dtype: complex_nonsense
          - name: b
            shape: [4]
            dtype: float32
            storage: gpu
          - name: c
            shape: [0]
            dtype: float32
            initial:
              pattern: normal
              std: -1
        kernels:
          - name: k
            kind: cpu.copy
            input: a
            output: b
            read_timeout: 0
            synchronization:
              mode: sometimes
    """)
    assert yaml_errors(path) == (
        "invalid dtype for shared memory 'a': 'complex_nonsense'"
        + at(path, line_of(path, "complex_nonsense")),
        "GPU shared memory 'b' requires gpu_device" + at(path, line_of(path, "storage: gpu")),
        "shape for 'c' dimensions must be positive" + at(path, line_of(path, "shape: [0]")),
        "initial std for shared memory 'c' must be non-negative"
        + at(path, line_of(path, "std: -1")),
        "read_timeout for kernel 'k' must be positive" + at(path, line_of(path, "read_timeout")),
        "synchronization mode for kernel 'k' must be either 'count' or 'matching_frame_id'"
        + at(path, line_of(path, "mode: sometimes")),
    )


def test_entry_errors_point_at_the_entry_line(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - {name: a, shape: [4], dtype: float32}
          - {name: b, shape: [4], dtype: float32}
          - just-a-name
        kernels:
          - name: k
            kind: cpu.copy
            input: a
            output: a
          - name: k2
            kind: cpu.copy
            output: b
    """)
    assert yaml_errors(path) == (
        "shared_memory entry must be a mapping" + at(path, line_of(path, "just-a-name")),
        "kernel 'k' cannot use the same shared memory for both input and output"
        + at(path, line_of(path, "- name: k")),
        "kernel 'k2' must declare 'input' or 'inputs'" + at(path, line_of(path, "- name: k2")),
    )


def test_unknown_fields_point_at_the_first_unknown_key(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - name: a
            shape: [4]
            dtype: float32
            colour: red
        sinks:
          - {name: x, kind: null_sink, stream: a}
        extras: 1
        more: 2
    """)
    assert yaml_errors(path) == (
        "pipeline config contains unsupported fields: 'extras', 'more'"
        + at(path, line_of(path, "extras")),
        "shared_memory entry contains unsupported fields: 'colour'"
        + at(path, line_of(path, "colour")),
    )


def test_top_level_errors_locate_their_key_or_the_file(tmp_path):
    path = write(tmp_path, """
        namespace: "a/b"
        shared_memory: []
        kernels: {}
    """)
    assert yaml_errors(path) == (
        "pipeline config field 'namespace' must not contain path separators or null bytes"
        + at(path, 1),
        "pipeline config must define a non-empty shared_memory list" + at(path, 2),
        "pipeline config field 'kernels' must be a list" + at(path, 3),
    )
    path = write(tmp_path, """
        shared_memory:
          - {name: a, shape: [4], dtype: float32}
    """)
    assert yaml_errors(path) == (
        "pipeline config must define at least one kernel, source, or sink" + at(path, None),
    )


def test_duplicate_yaml_keys_are_errors(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - name: a
            shape: [4]
            dtype: float32
            dtype: float64
        sinks:
          - {name: x, kind: null_sink, stream: a}
    """)
    assert yaml_errors(path) == (
        "duplicate key 'dtype' in the same mapping" + at(path, line_of(path, "float64")),
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, """
        shared_memory:
          - name: a
            shape: [4
        kernels: []
    """)
    (error,) = yaml_errors(path)
    assert error == ("invalid YAML: expected ',' or ']', but got ':' (while parsing a flow "
                     "sequence at line 3)" + at(path, 4))


def test_yaml_bad_indentation(tmp_path):
    path = write(tmp_path, "shared_memory:\n  - name: a\n   shape: [4]\n")
    (error,) = yaml_errors(path)
    assert error.startswith("invalid YAML: ") and f"(in {path.resolve()}, line " in error


def test_yaml_unsafe_tags_are_rejected(tmp_path):
    path = write(tmp_path, "shared_memory: !!python/object:os.system {}\n")
    (error,) = yaml_errors(path)
    assert error.startswith("invalid YAML: ") and error.endswith(at(path, 1))


@pytest.mark.parametrize("text, message", [
    ("", "pipeline config is empty"),
    ("# only a comment\n", "pipeline config is empty"),
    ("- a\n- b\n", "pipeline config must be a mapping, got list"),
    ("just text\n", "pipeline config must be a mapping, got str"),
])
def test_empty_or_non_mapping_file(tmp_path, text, message):
    path = write(tmp_path, text)
    (error,) = yaml_errors(path)
    assert error.startswith(message) and f"(in {path.resolve()}" in error


def test_missing_file(tmp_path):
    with pytest.raises(ConfigValidationError, match="pipeline config file not found"):
        PipelineConfig.from_yaml(tmp_path / "nope.yaml")


def test_from_yaml_accepts_str_and_relative_paths(tmp_path, monkeypatch):
    path = write(tmp_path, """
        shared_memory: [{name: a, shape: [2], dtype: f4}]
        sinks: [{name: x, kind: k, stream: a}]
    """)
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig.from_yaml("pipeline.yaml")
    assert config.source_path == path.resolve()
    assert config.base_path == tmp_path.resolve()
    assert config.namespace is None


def test_namespace_is_kept_for_yaml_configs(tmp_path):
    path = write(tmp_path, """
        namespace: cam2
        shared_memory: [{name: a, shape: [2], dtype: f4}]
        sinks: [{name: x, kind: k, stream: a}]
    """)
    config = PipelineConfig.from_yaml(path)
    assert config.namespace == "cam2" and config.stream("a").namespace == "cam2"


def test_copy_and_deepcopy(full):
    assert copy.deepcopy(full) == full
    assert copy.copy(full) == full
