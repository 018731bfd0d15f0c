"""What the chart lets a site add to the pod, and its `helm test` pod.

extraVolumes/extraVolumeMounts/extraEnvFrom/initContainers (plugins and calibration data),
image.digest, the pod and container securityContexts passed through (merged with what
realtime.enabled forces), the PodDisruptionBudget, and the `helm test` pod, whose script is run
here against a real daemon.  Every rendering is validated against the Kubernetes schemas; wrong
values are refused by values.schema.json or by the templates with the way out.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse

import pytest
import yaml

from . import helm_support
from .daemon_support import free_port, write_pipeline
from .helm_support import (
    CHART,
    NAMESPACE,
    RELEASE,
    ci_values,
    container,
    env,
    hook_pods,
    of_kind,
    only,
    pod_spec,
    refused,
    render,
    run_helm,
    selects,
    valid,
    workload,
)

EXTRAS = "volumes-initcontainers-digest-values.yaml"
DIGEST = "sha256:" + "ab" * 32
CHART_VOLUMES = {"dev-shm", "run", "tmp"}


# The session fixtures of tests/helm_support.py.
helm, kubernetes_validate = helm_support.helm, helm_support.kubernetes_validate


# ------------------------------------------------------------------------------ volumes, env, init containers


def test_extra_volumes_mounts_env_from_and_init_containers(helm, kubernetes_validate):
    given = yaml.safe_load(ci_values(EXTRAS).read_text())
    objects = valid(kubernetes_validate, render(helm, ci_values(EXTRAS)))
    pod = pod_spec(objects)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert CHART_VOLUMES | {"pipeline"} | {"plugins", "calibration"} == set(volumes)
    for volume in given["extraVolumes"]:
        assert volumes[volume["name"]] == volume
    mounts = container(objects)["volumeMounts"]
    assert mounts[-len(given["extraVolumeMounts"]):] == given["extraVolumeMounts"]
    assert {"/dev/shm", "/etc/shmpiped", "/run/shmpiped", "/tmp"} <= {mount["mountPath"] for mount in mounts}
    assert container(objects)["envFrom"] == given["extraEnvFrom"]
    assert env(objects)["PYTHONPATH"] == "/opt/shmpiped/plugins"
    assert pod["initContainers"] == given["initContainers"]
    # The init container's mount names a volume of the pod.
    assert {mount["name"] for mount in pod["initContainers"][0]["volumeMounts"]} <= set(volumes)
    # None of it by default.
    objects = render(helm)
    assert {volume["name"] for volume in pod_spec(objects)["volumes"]} == CHART_VOLUMES
    assert "initContainers" not in pod_spec(objects) and "envFrom" not in container(objects)


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "extraVolumes.name=calibration"), "at '/extraVolumes': got object, want array"),
    (("--set-json", 'extraVolumes=[{"emptyDir": {}}]'), "missing property 'name'"),
    (("--set-json", 'extraVolumeMounts=[{"name": "x", "mountPath": "relative/path"}]'), "/extraVolumeMounts/0/mountPath"),
    (("--set-json", 'extraVolumeMounts=[{"name": "x", "mountpath": "/x"}]'), "additional properties 'mountpath'"),
    (("--set-json", 'initContainers=[{"name": "copy"}]'), "missing property 'image'"),
    (("--set-json", 'extraEnvFrom=[{"configMap": {"name": "x"}}]'), "additional properties 'configMap'"),
    (("--set", "image.digest=latest"), "/image/digest"),
    (("--set-json", "podSecurityContext.supplementalGroup=[44]"), "additional properties 'supplementalGroup'"),
    (("--set", "securityContext.readOnlyRootFileSystem=false"), "additional properties 'readOnlyRootFileSystem'"),
])
def test_schema_refuses_wrong_values_saying_where(helm, args, message):
    stderr = refused(helm, *args)
    assert "values don't meet the specifications of the schema" in stderr and message in stderr, stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]},
     'extraVolumes[0]: the name "tmp" is taken'),
    ({"extraVolumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]},
     'extraVolumes[1]: the name "a" is taken'),
    ({"extraVolumeMounts": [{"name": "calibration", "mountPath": "/data"}]},
     'extraVolumeMounts[0]: no volume is named "calibration": add it to extraVolumes'),
    ({"extraVolumes": [{"name": "a", "emptyDir": {}}], "extraVolumeMounts": [{"name": "a", "mountPath": "/tmp"}]},
     "extraVolumeMounts[0]: mountPath /tmp is at or under the chart's mount /tmp (volume tmp)"),
    ({"pipeline": "namespace: x\n", "extraVolumes": [{"name": "a", "emptyDir": {}}],
      "extraVolumeMounts": [{"name": "a", "mountPath": "/etc/shmpiped/plugins/"}]},
     "mountPath /etc/shmpiped/plugins/ is at or under the chart's mount /etc/shmpiped (volume pipeline): "
     "mount it elsewhere"),
    ({"extraVolumes": [{"name": "a", "emptyDir": {}}],
      "extraVolumeMounts": [{"name": "a", "mountPath": "/x"}, {"name": "a", "mountPath": "/x/"}]},
     "extraVolumeMounts[1]: mountPath /x/ is used twice"),
])
def test_collisions_with_the_chart_are_refused_with_the_way_out(helm, tmp_path, values, message):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    stderr = refused(helm, "-f", str(path))
    assert message in stderr, stderr


def test_a_mount_beside_the_chart_mounts_is_accepted(helm):
    """/etc/shmpiped is taken only while the pipeline ConfigMap is mounted; /tmpdata is not under /tmp."""
    objects = render(helm, None, "extraVolumes[0].name=a", "extraVolumes[0].emptyDir.sizeLimit=1Mi",
                     "extraVolumeMounts[0].name=a", "extraVolumeMounts[0].mountPath=/etc/shmpiped/site",
                     "extraVolumeMounts[1].name=a", "extraVolumeMounts[1].mountPath=/tmpdata")
    assert {"/etc/shmpiped/site", "/tmpdata"} <= {mount["mountPath"] for mount in container(objects)["volumeMounts"]}


# ------------------------------------------------------------------------------ the image


@pytest.mark.parametrize(("sets", "image"), [
    ((), "shmpiped:0.1.0"),
    (("image.tag=1.2",), "shmpiped:1.2"),
    ((f"image.digest={DIGEST}",), f"shmpiped@{DIGEST}"),
    (("image.tag=1.2", f"image.digest={DIGEST}", "image.repository=registry.example.org/ao/shmpiped"),
     f"registry.example.org/ao/shmpiped:1.2@{DIGEST}"),
])
def test_image_reference(helm, sets, image):
    objects = render(helm, None, *sets)
    assert container(objects)["image"] == image
    [test] = hook_pods(objects)
    assert test["spec"]["containers"][0]["image"] == image, "the test pod runs the same image"


def test_the_extras_file_pins_its_image_by_digest(helm):
    given = yaml.safe_load(ci_values(EXTRAS).read_text())["image"]
    image = container(render(helm, ci_values(EXTRAS)))["image"]
    assert image == f"{given['repository']}:{given['tag']}@{given['digest']}"


# ------------------------------------------------------------------------------ security contexts


def test_pod_security_context_passes_through_over_the_secure_defaults(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, ci_values(EXTRAS)))
    assert pod_spec(objects)["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"}, "supplementalGroups": [44],
        "fsGroupChangePolicy": "OnRootMismatch"}
    # null drops a default; a sysctl is added as given.
    objects = valid(kubernetes_validate, render(
        helm, None, "podSecurityContext.fsGroup=null",
        set_json=('podSecurityContext.sysctls=[{"name": "kernel.shm_rmid_forced", "value": "1"}]',)))
    context = pod_spec(objects)["securityContext"]
    assert "fsGroup" not in context and context["runAsNonRoot"] is True
    assert context["sysctls"] == [{"name": "kernel.shm_rmid_forced", "value": "1"}]


def test_container_security_context_passes_through(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, None, "securityContext.runAsGroup=44",
                                                "securityContext.capabilities.add[0]=NET_RAW",
                                                "securityContext.procMount=Default"))
    context = container(objects)["securityContext"]
    assert context["runAsGroup"] == 44 and context["procMount"] == "Default"
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert context["readOnlyRootFilesystem"] is True and "addCapabilities" not in context


def test_real_time_merges_into_a_custom_security_context(helm, kubernetes_validate):
    """realtime.enabled forces uid 0 and its two capabilities; what the values set besides stays."""
    objects = valid(kubernetes_validate, render(
        helm, ci_values("realtime-values.yaml"), "securityContext.capabilities.add[0]=NET_RAW",
        "securityContext.addCapabilities[0]=SYS_PTRACE", "podSecurityContext.supplementalGroups[0]=44",
        "securityContext.seccompProfile.type=Localhost",
        "securityContext.seccompProfile.localhostProfile=profiles/shmpiped.json"))
    context = container(objects)["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "SYS_PTRACE", "SYS_NICE", "IPC_LOCK"]}
    assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False and context["runAsGroup"] == 10001
    assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "profiles/shmpiped.json"}
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert pod_spec(objects)["securityContext"]["supplementalGroups"] == [44]
    # The container's own group wins over the pod's.
    context = container(render(helm, ci_values("realtime-values.yaml"), "securityContext.runAsGroup=44"))[
        "securityContext"]
    assert context["runAsGroup"] == 44 and context["runAsUser"] == 0


# ------------------------------------------------------------------------------ the PodDisruptionBudget


def test_pod_disruption_budget(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, ci_values("networkpolicy-podmonitor-pdb-values.yaml")))
    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert selects(budget["selector"]["matchLabels"], workload(objects)["spec"]["template"]["metadata"]["labels"])
    assert not any(selects(budget["selector"]["matchLabels"], pod["metadata"]["labels"]) for pod in hook_pods(objects))
    assert budget["maxUnavailable"] == 0 and "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    objects = valid(kubernetes_validate, render(helm, None, "mode=daemonset", "podDisruptionBudget.enabled=true",
                                                "podDisruptionBudget.maxUnavailable=null",
                                                "podDisruptionBudget.minAvailable=50%",
                                                "podDisruptionBudget.unhealthyPodEvictionPolicy="))
    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == "50%" and "maxUnavailable" not in budget
    assert "unhealthyPodEvictionPolicy" not in budget
    assert not of_kind(render(helm), "PodDisruptionBudget")
    # Before Kubernetes 1.27 the policy field is left out.
    result = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.26.0",
                      "--set", "podDisruptionBudget.enabled=true")
    budget = next(obj for obj in yaml.safe_load_all(result.stdout) if obj and obj["kind"] == "PodDisruptionBudget")
    assert result.returncode == 0 and "unhealthyPodEvictionPolicy" not in budget["spec"], result.stderr
    stderr = refused(helm, "--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.minAvailable=1")
    assert "set exactly one of maxUnavailable and minAvailable" in stderr, stderr
    stderr = refused(helm, "--set", "podDisruptionBudget.maxUnavailable=half")
    assert "/podDisruptionBudget/maxUnavailable" in stderr, stderr


# ------------------------------------------------------------------------------ the helm test pod


def test_the_helm_test_pod(helm, kubernetes_validate):
    objects = valid(kubernetes_validate, render(helm, None, "service.port=9800", "serviceMonitor.enabled=true",
                                                "imagePullSecrets[0].name=registry"))
    [test] = hook_pods(objects)
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test["metadata"]["namespace"] == NAMESPACE and test["spec"]["restartPolicy"] == "Never"
    service = only(objects, "Service")
    assert not selects(service["spec"]["selector"], test["metadata"]["labels"]), "the Service must not route to it"
    monitor = only(objects, "ServiceMonitor")
    assert not selects(monitor["spec"]["selector"]["matchLabels"], test["metadata"]["labels"])
    [main] = test["spec"]["containers"]
    variables = {item["name"]: item["value"] for item in main["env"]}
    url = urllib.parse.urlsplit(variables["READYZ_URL"])
    assert url.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc" and url.port == 9800
    assert url.path == "/readyz"
    assert test["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    # No privileges: the Pod Security "restricted" profile.
    assert test["spec"]["securityContext"]["runAsNonRoot"] is True
    assert test["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert test["spec"]["automountServiceAccountToken"] is False
    assert not hook_pods(render(helm, None, "tests.enabled=false"))


def run_test_pod(objects: list[dict], url: str, timeout_s: int) -> subprocess.CompletedProcess:
    """The test pod's command, with this interpreter for the image's python3, against ``url``."""
    [main] = hook_pods(objects)[0]["spec"]["containers"]
    command = main["command"]
    assert command[:2] == ["python3", "-c"]
    variables = {item["name"]: item["value"] for item in main["env"]}
    variables.update(READYZ_URL=url, READYZ_TIMEOUT=str(timeout_s))
    return subprocess.run([sys.executable, *command[1:]], env=variables, capture_output=True, text=True,
                          timeout=timeout_s + 30)


def test_the_test_pod_passes_on_a_ready_daemon_and_fails_without_one(helm, daemons, namespace, tmp_path):
    objects = render(helm)
    pipeline = tmp_path / "pipeline.yaml"
    write_pipeline(pipeline, namespace)
    daemon = daemons(pipeline, namespace, tmp_path)
    # Started before the daemon is ready: the pod waits for /readyz to answer 200.
    result = run_test_pod(objects, f"http://127.0.0.1:{daemon.port}/readyz", 60)
    assert result.returncode == 0, result.stdout + result.stderr + daemon.output
    assert f"GET http://127.0.0.1:{daemon.port}/readyz: 200" in result.stdout
    assert daemon.stop() == 0
    result = run_test_pod(objects, f"http://127.0.0.1:{free_port()}/readyz", 2)
    assert result.returncode == 1
    assert "never answered 200" in result.stderr, result.stderr


def test_every_value_is_in_the_readme_and_the_schema():
    """Each key of values.yaml, to the second level, is described by values.schema.json and named in
    the chart's README (the values table)."""
    import json

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    readme = (CHART / "README.md").read_text()
    missing = []
    for key, value in defaults.items():
        if f"`{key}" not in readme or key not in schema:
            missing.append(key)
        # Kubernetes objects passed through are described as whole objects, not key by key.
        if isinstance(value, dict) and key not in ("resources", "nodeSelector", "affinity", "podAnnotations",
                                                   "podLabels", "pipeline", "podSecurityContext",
                                                   "securityContext"):
            for inner in value:
                if inner not in schema[key].get("properties", {}) or not (
                        f"`{key}.{inner}`" in readme or f"`{inner}`" in readme or f", {inner}`" in readme):
                    missing.append(f"{key}.{inner}")
    assert not missing, f"not described: {missing}"
