"""The realtime block of a pipeline file (issue 13): every field rule located, merging, the round trip."""

from __future__ import annotations

import pickle
import textwrap

import pytest

from shmpiped.config import KernelConfig, PipelineConfig, RealtimeConfig, SourceConfig, effective_realtime
from shmpiped.errors import ConfigValidationError

HEAD = """\
shared_memory:
  - {name: a, shape: [4], dtype: float32}
  - {name: b, shape: [4], dtype: float32}
"""


def load(tmp_path, body: str) -> PipelineConfig:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + textwrap.dedent(body))
    return PipelineConfig.from_yaml(path)


def errors(tmp_path, body: str) -> tuple[str, ...]:
    with pytest.raises(ConfigValidationError) as caught:
        load(tmp_path, body)
    return caught.value.errors


KERNEL = """\
kernels:
  - name: k
    kind: cpu.copy
    input: a
    output: b
"""


@pytest.mark.parametrize("block, message, line", [
    ("realtime: {policy: deadline}", "realtime policy must be one of other, fifo, rr, got 'deadline'", 9),
    ("realtime:\n  policy: fifo\n  priority: 100", "realtime priority must be an integer from 1 to 99, got 100", 11),
    ("realtime:\n  policy: fifo\n  priority: 0", "realtime priority must be an integer from 1 to 99, got 0", 11),
    ("realtime:\n  priority: 10",
     "realtime priority applies only to policy fifo or rr, and the policy is 'other': set policy: fifo (or rr), "
     "or remove priority", 10),
    ("realtime:\n  policy: other\n  priority: 10", "realtime priority applies only to policy fifo or rr", 11),
    ("realtime:\n  spin_us: -1", "realtime spin_us must not be negative, got -1", 10),
    ("realtime:\n  wait: busy", "realtime wait must be one of futex, hybrid, spin, got 'busy'", 10),
    ("realtime:\n  lock_memory: yes please", "realtime lock_memory must be true or false", 10),
    ("realtime:\n  cpus: [0, 0]", "realtime cpus must list each CPU once; 0 appears more than once", 10),
    ("realtime:\n  cpus: [-1]", "realtime cpus must be a non-empty list of CPU numbers (integers from 0)", 10),
    ("realtime:\n  cpus: 3", "realtime cpus must be a non-empty list of CPU numbers", 10),
    ("realtime:\n  cpus: [1.5]", "realtime cpus must be a non-empty list of CPU numbers", 10),
    ("realtime:\n  policy: fifo\n  priorty: 50", "realtime contains unsupported fields: 'priorty'", 11),
    ("realtime: fifo", "realtime must be a mapping of policy, priority", 9),
])
def test_pipeline_block_rules(tmp_path, block, message, line):
    found = errors(tmp_path, KERNEL + block + "\n")
    assert len(found) == 1, found
    assert found[0].startswith(message), found
    assert found[0].endswith(f"(in {tmp_path / 'p.yaml'}, line {line})"), found


@pytest.mark.parametrize("fields, message, line", [
    ("    cpu: -2", "cpu for kernel 'k' must be a CPU number (an integer from 0), got -2", 9),
    ("    cpu: one", "cpu for kernel 'k' must be a CPU number", 9),
    ("    realtime: {cpus: [1]}",
     "realtime for kernel 'k' cannot set 'cpus': cpus and required are the whole pipeline's", 9),
    ("    realtime: {required: true}", "realtime for kernel 'k' cannot set 'required'", 9),
    ("    realtime: {nice: 5}", "realtime for kernel 'k' contains unsupported fields: 'nice'", 9),
    ("    realtime:\n      policy: fifo\n      priority: 120",
     "realtime for kernel 'k' priority must be an integer from 1 to 99, got 120", 11),
    ("    realtime: {priority: 60}",  # the pipeline's policy is other
     "realtime for kernel 'k': priority applies only to policy fifo or rr", 5),
    ("    realtime: {spin_us: -5}", "realtime for kernel 'k' spin_us must not be negative, got -5", 9),
])
def test_kernel_rules(tmp_path, fields, message, line):
    found = errors(tmp_path, KERNEL + fields + "\n")
    assert len(found) == 1, found
    assert found[0].startswith(message), found
    assert found[0].endswith(f"line {line})"), found


def test_a_kernel_cpu_must_be_one_of_realtime_cpus(tmp_path):
    [found] = errors(tmp_path, KERNEL + "    cpu: 3\nrealtime:\n  cpus: [0, 1]\n")
    assert found.startswith("kernel 'k' is pinned to cpu 3, which is not one of realtime.cpus [0, 1]")
    assert found.endswith("line 5)")


def test_source_overrides_need_their_own_process(tmp_path):
    body = ("sources:\n  - name: cam\n    kind: synthetic.array\n    stream: a\n"
            "    realtime: {priority: 70}\nrealtime: {policy: fifo}\n")
    [found] = errors(tmp_path, body)
    assert found.startswith("realtime for source 'cam' applies only to a source that runs in its own process")
    config = load(tmp_path, body.replace("    realtime:", "    process: true\n    realtime:"))
    assert config.sources[0].process is True
    assert config.realtime_for("cam") == RealtimeConfig(policy="fifo", priority=70)


def test_every_error_of_a_file_at_once(tmp_path):
    found = errors(tmp_path, KERNEL + "    cpu: -1\n    realtime: {cpus: [0]}\n"
                   "realtime:\n  policy: fast\n  spin_us: -1\n")
    assert len(found) == 4, found


def test_a_cpu_of_another_machine_is_valid_here(tmp_path):
    """Whether a CPU exists is checked where the pipeline runs (shmpiped.realtime.cpu_problems)."""
    from shmpiped import realtime

    config = load(tmp_path, KERNEL + "    cpu: 4095\nrealtime:\n  cpus: [4094, 4095]\n")
    problems = realtime.cpu_problems(config, allowed=[0, 1])
    assert len(problems) == 1  # the kernel's cpu is one of the missing ones: said once
    assert problems[0].startswith("realtime cpus lists CPU 4094, 4095, which this machine does not have")
    assert problems[0].endswith("line 10)")
    assert realtime.cpu_problems(config, allowed=range(4096)) == []


def test_defaults_and_merging():
    plain = RealtimeConfig()
    assert (plain.policy, plain.priority, plain.lock_memory, plain.wait, plain.spin_us, plain.required,
            plain.cpus) == ("other", None, False, "futex", 50, False, None)
    assert RealtimeConfig(policy="FIFO").priority == 50
    base = RealtimeConfig(policy="fifo", priority=40, lock_memory=True, wait="hybrid", spin_us=20,
                          required=True, cpus=(1, 2))
    assert effective_realtime(base, {}) == base
    assert effective_realtime(base, {"priority": 60}).priority == 60
    assert effective_realtime(base, {"policy": "rr"}) == RealtimeConfig(
        policy="rr", priority=40, lock_memory=True, wait="hybrid", spin_us=20, required=True, cpus=(1, 2))
    dropped = effective_realtime(base, {"policy": "other"})
    assert (dropped.policy, dropped.priority, dropped.cpus, dropped.required) == ("other", None, (1, 2), True)
    assert effective_realtime(None, {"policy": "fifo"}).priority == 50
    with pytest.raises(ConfigValidationError, match="may set policy, priority, lock_memory, wait, spin_us"):
        effective_realtime(base, {"cpus": [0]})
    with pytest.raises(ConfigValidationError, match="priority applies only to policy fifo or rr"):
        effective_realtime(None, {"priority": 3})


def test_direct_construction_checks_too():
    with pytest.raises(ConfigValidationError, match="realtime for kernel 'k': unsupported field 'cpus'"):
        KernelConfig(name="k", kind="cpu.copy", input="a", output="b", realtime={"cpus": [0]})
    with pytest.raises(ConfigValidationError, match="realtime wait must be one of"):
        RealtimeConfig(wait="poll")
    with pytest.raises(ConfigValidationError, match="realtime for source 's': policy must be one of"):
        SourceConfig(name="s", kind="synthetic.array", stream="a", realtime={"policy": "idle"})
    config = PipelineConfig.from_dict({**yaml_mapping(), "realtime": None})
    assert config.realtime == RealtimeConfig()


def yaml_mapping() -> dict:
    return {"shared_memory": [{"name": "a", "shape": [4], "dtype": "float32"},
                              {"name": "b", "shape": [4], "dtype": "float32"}],
            "kernels": [{"name": "k", "kind": "cpu.copy", "input": "a", "output": "b"}]}


def test_round_trip_and_pickle(tmp_path):
    config = load(tmp_path, KERNEL + "    cpu: 1\n    realtime: {priority: 60, wait: spin}\n"
                  "sources:\n  - {name: cam, kind: synthetic.array, stream: a, process: true,\n"
                  "     realtime: {policy: rr}}\n"
                  "realtime:\n  policy: fifo\n  lock_memory: true\n  wait: hybrid\n  spin_us: 12.5\n"
                  "  required: true\n  cpus: [0, 1]\n")
    data = config.to_dict()
    assert data["realtime"] == {"policy": "fifo", "priority": 50, "lock_memory": True, "wait": "hybrid",
                                "spin_us": 12.5, "required": True, "cpus": [0, 1]}
    assert data["kernels"][0]["cpu"] == 1 and data["kernels"][0]["realtime"] == {"priority": 60, "wait": "spin"}
    assert data["sources"][0]["process"] is True and data["sources"][0]["realtime"] == {"policy": "rr"}
    again = PipelineConfig.from_dict(data, base_path=config.base_path)
    assert again == config
    assert pickle.loads(pickle.dumps(config)) == config
    assert config.realtime_for("k") == RealtimeConfig(policy="fifo", priority=60, lock_memory=True, wait="spin",
                                                      spin_us=12.5, required=True, cpus=(0, 1))
    assert config.realtime_for("cam").policy == "rr"


def test_a_shmpipeline_file_has_no_realtime_keys_in_its_round_trip():
    data = PipelineConfig.from_dict(yaml_mapping()).to_dict()
    assert "realtime" not in data
    assert "cpu" not in data["kernels"][0] and "realtime" not in data["kernels"][0]
