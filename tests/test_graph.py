"""Tests of shmpiped.graph: producers, consumers, roles, edges, checks, views."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from shmpiped.config import KernelConfig, PipelineConfig, SharedMemoryConfig
from shmpiped.errors import ConfigValidationError
from shmpiped.graph import PipelineGraph


def streams(*names: str, shape=(4,)) -> list[dict]:
    return [{"name": n, "shape": list(shape), "dtype": "float32"} for n in names]


def chain() -> PipelineConfig:
    """frames -> centroid -> slopes -> reconstruct -> command."""
    return PipelineConfig.from_dict({
        "shared_memory": streams("frames", "slopes", "command"),
        "kernels": [
            {"name": "centroid", "kind": "cpu.copy", "input": "frames", "output": "slopes"},
            {"name": "reconstruct", "kind": "cpu.scale", "input": "slopes", "output": "command"},
        ],
    })


def closed_loop() -> PipelineConfig:
    """A source, three kernels with auxiliaries and two triggers, a sink with an output."""
    return PipelineConfig.from_dict({
        "shared_memory": streams(
            "frames", "dark", "slopes", "ref", "gains", "command", "applied", "spare"),
        "sources": [{"name": "camera", "kind": "synthetic", "streams": ["frames", "dark"],
                     "auxiliary": {"state": "applied"}, "parameters": {"rate_hz": 100}}],
        "kernels": [
            {"name": "centroid", "kind": "cpu.centroid", "inputs": ["frames", "dark"],
             "output": "slopes"},
            {"name": "reconstruct", "kind": "cpu.matmul", "input": "slopes",
             "output": "command", "auxiliary": {"matrix": "gains", "offset": "ref"}},
            {"name": "calibrate", "kind": "cpu.copy", "input": "frames", "output": "ref"},
        ],
        "sinks": [{"name": "mirror", "kind": "dm", "stream": "command", "outputs": ["applied"],
                   "auxiliary": ["slopes"], "parameters": {"port": 2}}],
    })


# ----------------------------------------------------------------------------- chain


def test_two_kernel_chain_has_four_edges():
    graph = PipelineGraph(chain())
    assert [dataclasses.asdict(edge) for edge in graph.edges] == [
        {"source": "frames", "target": "centroid", "role": "input", "stream": "frames"},
        {"source": "centroid", "target": "slopes", "role": "output", "stream": "slopes"},
        {"source": "slopes", "target": "reconstruct", "role": "input", "stream": "slopes"},
        {"source": "reconstruct", "target": "command", "role": "output", "stream": "command"},
    ]


def test_chain_producers_consumers_and_roles():
    graph = PipelineGraph(chain())
    assert graph.producers("frames") == () and graph.consumers("frames") == ("centroid",)
    assert graph.producers("slopes") == ("centroid",)
    assert graph.consumers("slopes") == ("reconstruct",)
    assert graph.producers("command") == ("reconstruct",) and graph.consumers("command") == ()
    assert graph.source_streams() == ("frames",)
    assert graph.sink_streams() == ("command",)
    assert graph.orphaned_streams() == ()
    assert [graph.stream_role(s) for s in ("frames", "slopes", "command")] == [
        "source", "intermediate", "sink"]
    assert graph.upstream_kernels("centroid") == ()
    assert graph.upstream_kernels("reconstruct") == ("centroid",)
    assert graph.downstream_kernels("centroid") == ("reconstruct",)
    assert graph.downstream_kernels("reconstruct") == ()
    assert graph.validation_errors() == []
    graph.raise_for_errors()


def test_unknown_names():
    graph = PipelineGraph(chain())
    assert graph.producers("nope") == () and graph.consumers("nope") == ()
    with pytest.raises(KeyError):
        graph.upstream_kernels("frames")
    with pytest.raises(KeyError):
        graph.downstream_kernels("nope")


# ----------------------------------------------------------------------------- richer graph


def test_producers_and_consumers_of_every_node_type():
    graph = PipelineGraph(closed_loop())
    assert graph.producers("frames") == ("camera",)
    assert graph.consumers("frames") == ("calibrate", "centroid")
    assert graph.producers("applied") == ("mirror",)
    assert graph.consumers("applied") == ("camera",)
    assert graph.consumers("slopes") == ("mirror", "reconstruct")
    assert graph.consumers("gains") == ("reconstruct",) and graph.producers("gains") == ()
    assert graph.consumers("command") == ("mirror",)


def test_source_sink_and_orphan_streams():
    graph = PipelineGraph(closed_loop())
    # source outputs, plus streams no kernel writes that something reads
    assert graph.source_streams() == ("applied", "dark", "frames", "gains")
    # sink inputs, plus kernel-written streams nothing reads (none here)
    assert graph.sink_streams() == ("command",)
    assert graph.orphaned_streams() == ("spare",)
    roles = {spec.name: graph.stream_role(spec.name) for spec in closed_loop().shared_memory}
    assert roles == {
        "frames": "source", "dark": "source", "slopes": "intermediate", "ref": "intermediate",
        "gains": "source", "command": "sink", "applied": "source", "spare": "orphan",
    }


def test_source_plus_sink_role():
    config = PipelineConfig.from_dict({
        "shared_memory": streams("raw", "done"),
        "sources": [{"name": "cam", "kind": "x", "stream": "raw"}],
        "sinks": [{"name": "disk", "kind": "x", "stream": "raw"}],
        "kernels": [{"name": "k", "kind": "x", "input": "raw", "output": "done"}],
    })
    graph = PipelineGraph(config)
    assert graph.stream_role("raw") == "source+sink"
    assert graph.stream_role("done") == "sink"  # a kernel writes it, nothing reads it


def test_upstream_and_downstream_include_auxiliaries():
    graph = PipelineGraph(closed_loop())
    assert graph.upstream_kernels("reconstruct") == ("calibrate", "centroid")
    assert graph.downstream_kernels("calibrate") == ("reconstruct",)
    assert graph.downstream_kernels("centroid") == ("reconstruct",)
    assert graph.upstream_kernels("centroid") == ()
    assert graph.downstream_kernels("reconstruct") == ()


def test_a_kernel_is_not_its_own_neighbour():
    # built directly (load-time checks would refuse an output used as auxiliary)
    config = PipelineConfig(
        shared_memory=tuple(SharedMemoryConfig(n, (2,), "f4") for n in "xy"),
        kernels=(KernelConfig("loop", "x", ("x",), ("y",), auxiliary=("y",)),),
    )
    graph = PipelineGraph(config)
    assert graph.upstream_kernels("loop") == () and graph.downstream_kernels("loop") == ()


def test_edges_roles_and_order():
    graph = PipelineGraph(closed_loop())
    edges = [(e.source, e.target, e.role, e.stream) for e in graph.edges]
    assert edges == [
        ("applied", "camera", "auxiliary:state", "applied"),
        ("camera", "frames", "source", "frames"),
        ("camera", "dark", "source:1", "dark"),
        ("frames", "centroid", "input", "frames"),
        ("dark", "centroid", "input:1", "dark"),
        ("centroid", "slopes", "output", "slopes"),
        ("slopes", "reconstruct", "input", "slopes"),
        ("gains", "reconstruct", "auxiliary:matrix", "gains"),
        ("ref", "reconstruct", "auxiliary:offset", "ref"),
        ("reconstruct", "command", "output", "command"),
        ("frames", "calibrate", "input", "frames"),
        ("calibrate", "ref", "output", "ref"),
        ("slopes", "mirror", "auxiliary:slopes", "slopes"),
        ("command", "mirror", "sink", "command"),
        ("mirror", "applied", "sink_output", "applied"),
    ]


def test_edges_are_fresh_copies():
    graph = PipelineGraph(chain())
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.edges[0].role = "changed"
    graph.to_dict()["edges"][0]["role"] = "changed"
    assert graph.to_dict()["edges"][0]["role"] == "input"


# ----------------------------------------------------------------------------- producers check


def multi_producer_config() -> PipelineConfig:
    return PipelineConfig.from_dict({
        "shared_memory": streams("in", "k_out", "s_out", "sink_out", "mixed"),
        "sources": [
            {"name": "src_b", "kind": "x", "streams": ["s_out", "mixed"]},
            {"name": "src_a", "kind": "x", "stream": "s_out"},
        ],
        "kernels": [
            {"name": "k2", "kind": "x", "input": "in", "output": "k_out"},
            {"name": "k1", "kind": "x", "input": "in", "outputs": ["k_out", "mixed"]},
        ],
        "sinks": [
            {"name": "z2", "kind": "x", "stream": "in", "outputs": ["sink_out"]},
            {"name": "z1", "kind": "x", "stream": "in", "outputs": ["sink_out", "mixed"]},
        ],
    })


def test_multiple_producer_messages_in_stream_order():
    graph = PipelineGraph(multi_producer_config())
    assert graph.validation_errors() == [
        "shared memory 'k_out' has multiple producer kernels: k1, k2",
        "shared memory 'mixed' has multiple producers: k1, src_b, z1",
        "shared memory 's_out' has multiple producer sources: src_a, src_b",
        "shared memory 'sink_out' has multiple producer sinks: z1, z2",
    ]
    with pytest.raises(ConfigValidationError) as info:
        graph.raise_for_errors()
    assert str(info.value) == "shared memory 'k_out' has multiple producer kernels: k1, k2"
    assert len(info.value.errors) == 4


def test_multiple_producer_errors_are_located(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""
        shared_memory:
          - {name: a, shape: [4], dtype: float32}
          - name: b
            shape: [4]
            dtype: float32
        kernels:
          - {name: one, kind: x, input: a, output: b}
          - {name: two, kind: x, input: a, output: b}
    """).lstrip())
    graph = PipelineGraph(PipelineConfig.from_yaml(path))
    assert graph.validation_errors() == [
        f"shared memory 'b' has multiple producer kernels: one, two (in {path.resolve()}, line 3)"
    ]


# ----------------------------------------------------------------------------- views


def test_to_dict_structure_and_json():
    data = PipelineGraph(closed_loop()).to_dict()
    json.loads(json.dumps(data))
    assert set(data) == {"shared_memory", "sources", "kernels", "sinks", "edges",
                         "source_streams", "sink_streams", "orphaned_streams"}
    slopes = next(s for s in data["shared_memory"] if s["name"] == "slopes")
    assert slopes == {"name": "slopes", "shape": [4], "dtype": "float32", "storage": "cpu",
                      "gpu_device": None, "producers": ("centroid",),
                      "consumers": ("mirror", "reconstruct"), "role": "intermediate"}
    assert [s["name"] for s in data["shared_memory"]] == [
        "frames", "dark", "slopes", "ref", "gains", "command", "applied", "spare"]
    assert data["sources"] == [{
        "name": "camera", "kind": "synthetic", "stream": "frames", "streams": ["frames", "dark"],
        "auxiliary": {"state": "applied"}, "parameters": {"rate_hz": 100},
        "downstream_kernels": ("calibrate", "centroid"),
    }]
    kernels = {k["name"]: k for k in data["kernels"]}
    assert kernels["centroid"] == {
        "name": "centroid", "kind": "cpu.centroid", "input": "frames",
        "inputs": ["frames", "dark"], "trigger_policy": "all_new", "output": "slopes",
        "outputs": ["slopes"], "auxiliary": {}, "upstream_kernels": (),
        "downstream_kernels": ("reconstruct",),
    }
    assert kernels["reconstruct"]["auxiliary"] == {"matrix": "gains", "offset": "ref"}
    assert data["sinks"] == [{
        "name": "mirror", "kind": "dm", "stream": "command", "outputs": ["applied"],
        "auxiliary": {"slopes": "slopes"}, "parameters": {"port": 2},
        "upstream_kernels": ("reconstruct",),
    }]
    assert len(data["edges"]) == 15
    assert data["source_streams"] == ("applied", "dark", "frames", "gains")
    assert data["sink_streams"] == ("command",)
    assert data["orphaned_streams"] == ("spare",)


def test_to_dict_parameters_are_copies():
    config = closed_loop()
    PipelineGraph(config).to_dict()["sources"][0]["parameters"]["rate_hz"] = 1
    assert config.sources[0].parameters == {"rate_hz": 100}


def test_describe_chain():
    assert PipelineGraph(chain()).describe() == textwrap.dedent("""\
        Pipeline Graph

        Shared Memory:
        - frames [cpu (4,) float32] role=source producers=external consumers=centroid
        - slopes [cpu (4,) float32] role=intermediate producers=centroid consumers=reconstruct
        - command [cpu (4,) float32] role=sink producers=reconstruct consumers=none

        Sources:
        - none

        Kernels:
        - centroid (cpu.copy) inputs=frames trigger_policy=any_new output=slopes auxiliary=none \
upstream=external downstream=reconstruct
        - reconstruct (cpu.scale) inputs=slopes trigger_policy=any_new output=command \
auxiliary=none upstream=centroid downstream=terminal

        Sinks:
        - none""")


def test_describe_full_graph_with_orphans_and_errors():
    text = PipelineGraph(closed_loop()).describe()
    lines = text.splitlines()
    assert lines[:3] == ["Pipeline Graph", "", "Shared Memory:"]
    assert "- spare [cpu (4,) float32] role=orphan producers=external consumers=none" in lines
    assert ("- camera (synthetic) stream=frames, dark auxiliary=state=applied "
            "downstream=calibrate, centroid") in lines
    assert ("- centroid (cpu.centroid) inputs=frames, dark trigger_policy=all_new output=slopes "
            "auxiliary=none upstream=camera (source) downstream=reconstruct") in lines
    assert ("- reconstruct (cpu.matmul) inputs=slopes trigger_policy=any_new output=command "
            "auxiliary=matrix=gains, offset=ref upstream=calibrate, centroid "
            "downstream=terminal") in lines
    assert ("- mirror (dm) stream=command outputs=applied auxiliary=slopes=slopes "
            "upstream=reconstruct") in lines
    assert lines[-3:] == ["", "Orphaned Shared Memory:", "- spare"]
    assert "Validation Errors:" not in lines

    text = PipelineGraph(multi_producer_config()).describe()
    tail = text.split("Validation Errors:\n", 1)[1].splitlines()
    assert tail[0] == "- shared memory 'k_out' has multiple producer kernels: k1, k2"
    assert len(tail) == 4


def test_describe_multidimensional_and_gpu_streams():
    config = PipelineConfig.from_dict({
        "shared_memory": [
            {"name": "img", "shape": [2, 3], "dtype": "uint8", "storage": "gpu",
             "gpu_device": "cuda:0"},
        ],
        "sinks": [{"name": "view", "kind": "x", "stream": "img"}],
    })
    lines = PipelineGraph(config).describe().splitlines()
    assert "- img [gpu (2, 3) uint8] role=source+sink producers=external consumers=view" in lines
    assert lines[lines.index("Kernels:") + 1] == "- none"
    assert "- view (x) stream=img auxiliary=none upstream=external" in lines


def test_graph_does_no_io(monkeypatch):
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError("graph must not open files")

    config = closed_loop()
    monkeypatch.setattr(builtins, "open", refuse)
    graph = PipelineGraph(config)
    graph.describe()
    graph.to_dict()
    graph.validation_errors()

