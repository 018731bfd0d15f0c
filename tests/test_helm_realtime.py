"""The chart's real time (``realtime.enabled``): the capabilities, the user, the pipeline's realtime block.

Rendered with ``helm template`` (no cluster here) and validated as the other
chart tests do; the rendered pipeline is then run by the real daemon, which must
put its workers at the policy, priority and memory lock the release asked for,
read back from /proc.  tests/test_container.py runs the same securityContext in
Docker.  Off CI these tests skip without helm; under CI=true they fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from shmpiped.config import PipelineConfig
from shmpiped.config_realtime import REALTIME_KEYS, RealtimeConfig

from .conftest import unavailable
from .helm_support import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ci_values,
    container,
    pipeline_configmap,
    pod_spec,
    render,
    run_helm,
    tool,
    validator,
)


@pytest.fixture(scope="session")
def helm_command() -> str:
    return tool("helm", ".ci/install-helm.sh")


@pytest.fixture(scope="session", name="validator")
def validator_module():
    return validator()


REALTIME_VALUES = "realtime-values.yaml"
CAPABILITIES = ["SYS_NICE", "IPC_LOCK"]


def context(objects: list[dict]) -> dict:
    return container(objects)["securityContext"]


def loaded(objects: list[dict], tmp_path: Path) -> PipelineConfig:
    path = tmp_path / f"pipeline-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(pipeline_configmap(objects)["data"]["pipeline.yaml"])
    return PipelineConfig.from_yaml(str(path))


def test_off_by_default(helm_command):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["realtime"]
    assert defaults["enabled"] is False
    objects = render(helm_command)
    assert context(objects)["capabilities"] == {"drop": ["ALL"]}
    assert "runAsUser" not in context(objects)   # the pod's user, 10001, non-root
    assert pod_spec(objects)["securityContext"]["runAsNonRoot"] is True
    assert pod_spec(objects)["securityContext"]["runAsUser"] == 10001


def test_enabled_adds_the_two_capabilities_as_uid_0_and_nothing_else(helm_command):
    objects = render(helm_command, ci_values(REALTIME_VALUES))
    ctx = context(objects)
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": CAPABILITIES}
    # Kubernetes gives added capabilities to uid 0 only: the container runs as root, everything else locked.
    assert ctx["runAsUser"] == 0 and ctx["runAsNonRoot"] is False and ctx["runAsGroup"] == 10001
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["readOnlyRootFilesystem"] is True and ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = pod_spec(objects)
    assert pod["securityContext"]["fsGroup"] == 10001 and "hostIPC" not in pod
    # runAsRoot false: the pod's user, which then needs the limits from the node's runtime.
    objects = render(helm_command, ci_values(REALTIME_VALUES), "realtime.runAsRoot=false")
    ctx = context(objects)
    assert not {"runAsUser", "runAsNonRoot"} & set(ctx), ctx
    assert pod_spec(objects)["securityContext"]["runAsUser"] == 10001
    assert pod_spec(objects)["securityContext"]["runAsNonRoot"] is True
    assert ctx["capabilities"]["add"] == CAPABILITIES
    # Capabilities asked for besides are kept, once each.
    ctx = context(render(helm_command, ci_values(REALTIME_VALUES), set_json=('securityContext.addCapabilities=["IPC_LOCK","NET_RAW"]',)))
    assert ctx["capabilities"]["add"] == ["IPC_LOCK", "NET_RAW", "SYS_NICE"]


def test_every_rendered_object_is_valid_with_real_time(helm_command, validator, tmp_path):
    for values in (ci_values(REALTIME_VALUES), ci_values("custom-pipeline-values.yaml")):
        for extra in ((), ("realtime.enabled=true",)):
            for obj in render(helm_command, values, *extra):
                if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                    continue
                validator.validate(obj, KUBE_VERSION, strict=True)
    result = run_helm(helm_command, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f",
                      str(ci_values(REALTIME_VALUES)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_string_pipeline_gets_the_block_appended(helm_command, tmp_path):
    values = ci_values(REALTIME_VALUES)
    given = yaml.safe_load(values.read_text())
    text = pipeline_configmap(render(helm_command, values))["data"]["pipeline.yaml"]
    assert text.startswith(given["pipeline"])  # the file as written, then the block
    config = loaded(render(helm_command, values), tmp_path)
    assert config.realtime == RealtimeConfig(**given["realtime"]["settings"])
    assert config.realtime_for("centroid").priority == 50
    assert config.realtime_for("gain").priority == 60        # the kernel's own override stays
    assert config.realtime_for("gain").wait == "hybrid"
    # A string that has its own top-level realtime: reaches the daemon byte for byte.
    own = given["pipeline"] + "realtime: {policy: rr, priority: 20}\n"
    text = pipeline_configmap(render(helm_command, values, set_json=(f"pipeline={json.dumps(own)}",)))["data"]["pipeline.yaml"]
    assert text == own


def test_a_mapping_pipeline_keeps_its_own_keys(helm_command, tmp_path):
    objects = render(helm_command, ci_values("custom-pipeline-values.yaml"), "realtime.enabled=true",
                     "pipeline.realtime.priority=70", "realtime.settings.wait=spin")
    config = loaded(objects, tmp_path)
    assert config.realtime == RealtimeConfig(policy="fifo", priority=70, lock_memory=True, wait="spin", required=True)
    # Disabled, the pipeline's block is its own alone.
    config = loaded(render(helm_command, ci_values("custom-pipeline-values.yaml"), "pipeline.realtime.policy=rr"), tmp_path)
    assert config.realtime == RealtimeConfig(policy="rr")


def test_what_cannot_take_the_block_fails_with_the_way_out(helm_command):
    result = run_helm(helm_command, "template", RELEASE, str(CHART), "--set", "realtime.enabled=true")
    assert result.returncode != 0 and "embedded demo takes none: set pipeline" in result.stderr
    flow = json.dumps('{"namespace": "x", "shared_memory": []}')
    result = run_helm(helm_command, "template", RELEASE, str(CHART), "--set", "realtime.enabled=true",
                      "--set-json", f"pipeline={flow}")
    assert result.returncode != 0 and "flow style" in result.stderr


def test_schema_matches_the_daemons_keys_and_rejects_typos(helm_command):
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["realtime"]
    assert set(schema["properties"]) == {"enabled", "runAsRoot", "settings"}
    assert set(schema["properties"]["settings"]["properties"]) == set(REALTIME_KEYS)
    for bad in ("realtime.settings.polcy=fifo", "realtime.enable=true"):
        result = run_helm(helm_command, "template", RELEASE, str(CHART), "--set", bad)
        assert result.returncode != 0 and "additional properties" in result.stderr.lower(), result.stderr
    for bad in ("realtime.settings.priority=100", "realtime.settings.policy=deadline", "realtime.settings.wait=poll",
                "realtime.enabled=yes"):
        result = run_helm(helm_command, "template", RELEASE, str(CHART), "-f", str(ci_values(REALTIME_VALUES)), "--set", bad)
        assert result.returncode != 0 and "schema" in result.stderr.lower(), (bad, result.stderr)


def test_notes_say_how_to_check_the_node(helm_command):
    result = run_helm(helm_command, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                      "-f", str(ci_values(REALTIME_VALUES)))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "CAP_SYS_NICE and CAP_IPC_LOCK" in notes and "runs as uid 0" in notes
    assert "-- shmpiped doctor /etc/shmpiped/pipeline.yaml" in notes


def test_the_rendered_pipeline_runs_its_workers_in_real_time(helm_command, tmp_path, daemons, namespace):
    """The daemon, given the release's pipeline and environment, puts each worker at the policy, priority
    and memory lock asked for, as the kernel reads them back (it runs here with this user's privileges:
    the container test runs the pod's securityContext itself)."""
    from shmpiped.realtime import Privileges, privilege_problems

    objects = render(helm_command, ci_values(REALTIME_VALUES))
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline_configmap(objects)["data"]["pipeline.yaml"])
    config = PipelineConfig.from_yaml(str(path))
    if privilege_problems(config, Privileges.of_this_process()):
        unavailable("needs CAP_SYS_NICE and CAP_IPC_LOCK (run as root): " + "; ".join(privilege_problems(config)),
                    "chart real-time run")
    text = re.sub(r"(?m)^namespace: .*$", f"namespace: {namespace}", path.read_text())
    path.write_text(text)
    daemon = daemons(path, namespace, tmp_path)
    try:
        daemon.wait_ready(timeout=60)
        workers = daemon.status()["workers"]
        for name, priority in (("centroid", 50), ("gain", 60)):
            with open(f"/proc/{workers[name]['pid']}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            assert (int(fields[38]), int(fields[37])) == (1, priority), (name, fields[37:39])   # SCHED_FIFO
            with open(f"/proc/{workers[name]['pid']}/status") as handle:
                locked = next(int(line.split()[1]) for line in handle if line.startswith("VmLck:"))
            assert locked > 0, name
    finally:
        assert daemon.stop() == 0, daemon.output
