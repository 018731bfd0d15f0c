"""The Helm chart (helm/shmpiped): linted, rendered and checked against the Kubernetes API schemas.

`helm lint --strict` and `helm template` run on the default values and on every
realistic values file in helm/shmpiped/ci/.  Every rendered object is validated
with kubernetes-validate (strict: unknown fields are errors) for KUBE_VERSION;
the prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule),
whose CRDs are not in the core schemas, are checked field by field
(tests/helm_support.py) and their rules by promtool.  The pipeline in each ConfigMap is loaded by shmpiped's own validator.

CI (CI=true) installs helm, kubectl and kubernetes-validate with
.ci/install-helm.sh and these tests fail there when a tool is missing; elsewhere
they skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from . import helm_support
from .daemon_support import free_port
from .helm_support import (
    CHART,
    CI_VALUES,
    DASHBOARDS_SOURCE,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    RULES_SOURCE,
    check_monitoring_object,
    check_prometheus_rule,
    check_service_monitor,
    checksum,
    ci_values,
    container,
    env,
    hook_pods,
    of_kind,
    only,
    pipeline_configmap,
    pod_spec,
    render,
    run_helm,
    tool,
    values_args,
    workload,
)

# None: the chart's defaults; else a file of helm/shmpiped/ci/.
VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["defaults", *(path.stem for path in CI_VALUES)]


# The session fixtures of tests/helm_support.py.
helm, kubernetes_validate = helm_support.helm, helm_support.kubernetes_validate


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", ".ci/install-prometheus.sh")


# ------------------------------------------------------------------------------ the chart itself


def test_chart_metadata_matches_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "shmpiped"
    project = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.M).group(1)
    assert chart["appVersion"] == version == "0.1.0"
    for name in ("values.yaml", "values.schema.json", "README.md", "templates/NOTES.txt"):
        assert (CHART / name).is_file(), name


def test_realistic_values_files_are_there():
    names = {path.name for path in CI_VALUES}
    assert {"gpu-daemonset-values.yaml", "hostipc-values.yaml", "monitoring-values.yaml",
            "custom-pipeline-values.yaml"} <= names, names


def test_rules_copy_equals_the_source():
    assert RULES_SOURCE.is_file(), f"{RULES_SOURCE} is missing"
    copy = CHART / "files" / "shmpiped-rules.yml"
    assert copy.read_bytes() == RULES_SOURCE.read_bytes(), (
        f"{copy} differs from {RULES_SOURCE}: cp {RULES_SOURCE.relative_to(REPO)} {copy.relative_to(REPO)}")


def test_dashboard_copies_equal_the_sources():
    sources = {path.name: path for path in DASHBOARDS_SOURCE.glob("*.json")}
    assert sources, f"no dashboards in {DASHBOARDS_SOURCE}"
    copies = {path.name: path for path in (CHART / "files" / "dashboards").glob("*.json")}
    assert sorted(copies) == sorted(sources), "cp grafana/dashboards/*.json helm/shmpiped/files/dashboards/"
    for name, source in sources.items():
        assert copies[name].read_bytes() == source.read_bytes(), f"files/dashboards/{name} differs from {source}"


def test_schema_closes_every_object_level():
    """Every object of values.schema.json lists its keys (additionalProperties: false) or is a
    map whose values have a schema; the only open objects are Kubernetes types passed through."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, where):
        if isinstance(node, dict):
            types = node.get("type")
            types = types if isinstance(types, list) else [types]
            if "object" in types:
                closed = node.get("additionalProperties") is False and "properties" in node
                is_map = isinstance(node.get("additionalProperties"), dict)
                passthrough = "Passed to Kubernetes as it is" in node.get("description", "")
                if not (closed or is_map or passthrough):
                    open_objects.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(schema, "#")
    assert not open_objects, f"objects without additionalProperties: false: {open_objects}"
    assert schema["additionalProperties"] is False
    # Every top-level key of values.yaml is declared.
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"]), set(defaults) - set(schema["properties"])


def test_schema_knows_the_pipeline_keys_shmpiped_accepts():
    """A pipeline given as a mapping is checked against the daemon's own key lists (config.py)."""
    from shmpiped import config

    schema = json.loads((CHART / "values.schema.json").read_text())
    mapping = next(option for option in schema["properties"]["pipeline"]["anyOf"] if option.get("type") == "object")
    assert set(mapping["properties"]) == set(config.TOP_LEVEL_KEYS)
    for section, keys in (("shared_memory", config.STREAM_KEYS), ("kernels", config.KERNEL_KEYS),
                          ("sources", config.SOURCE_KEYS), ("sinks", config.SINK_KEYS)):
        assert set(mapping["properties"][section]["items"]["properties"]) == set(keys), section


# ------------------------------------------------------------------------------ lint and schema


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_lint_strict(helm, values):
    result = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values_args(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("bad", [
    "replicas=2",                          # not a value of this chart (a singleton)
    "gpu.enable=true",                     # typo of gpu.enabled
    "shm.hostipc=true",                    # typo of shm.hostIPC
    "serviceMonitor.labels.release=kps",   # additionalLabels is the key
    "probes.startup.initialDelay=30",
    "pipeline.kernels[0].ouput=slopes",    # a pipeline mapping's typo, caught before the daemon
])
def test_schema_rejects_unknown_keys(helm, bad):
    for command in (["template", RELEASE, str(CHART)], ["lint", "--strict", str(CHART)]):
        result = run_helm(helm, *command, "--set", bad)
        assert result.returncode != 0, f"helm {command[0]} accepted --set {bad}"
        output = result.stdout + result.stderr
        assert "additional properties" in output.lower() or "additionalproperties" in output.lower(), output


@pytest.mark.parametrize("bad", ["mode=statefulset", "shm.hostIPC=yes", "daemon.logFormat=xml", "gpu.count=0"])
def test_schema_rejects_bad_values(helm, bad):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", bad)
    assert result.returncode != 0, f"helm template accepted --set {bad}"
    assert "schema" in result.stderr.lower(), result.stderr


def test_gpu_count_belongs_to_gpu_values(helm):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", r"resources.limits.nvidia\.com/gpu=1")
    assert result.returncode != 0
    assert "gpu.enabled and gpu.count" in result.stderr, result.stderr


# ------------------------------------------------------------------------------ Kubernetes schemas


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_rendered_object_is_valid(helm, kubernetes_validate, values):
    objects = render(helm, values)
    kinds = [obj["kind"] for obj in objects]
    assert "Service" in kinds and ("Deployment" in kinds) != ("DaemonSet" in kinds), kinds
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_monitoring_object(obj, objects)
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not a valid Kubernetes {KUBE_VERSION} object: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")
        assert obj["metadata"]["namespace"] == NAMESPACE or obj["kind"] == "ConfigMap", where
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, where


def test_strict_validation_catches_an_unknown_field(kubernetes_validate, helm):
    """The validation above has teeth: a misspelt field in a rendered Deployment fails it."""
    deployment = only(render(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# ------------------------------------------------------------------------------ what the defaults render


def test_defaults_render_a_recreated_single_deployment(helm):
    objects = render(helm)
    assert sorted(obj["kind"] for obj in objects) == ["Deployment", "Pod", "Service"]
    assert len(hook_pods(objects)) == 1, "the only Pod is the `helm test` hook"
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    # No pipeline given: the image's embedded demo, no ConfigMap, no checksum.
    assert pipeline_configmap(objects) is None and checksum(objects) is None
    assert "SHMPIPED_PIPELINE" not in env(objects)


def test_probes_point_at_healthz_and_readyz_on_the_metrics_port(helm):
    objects = render(helm)
    main = container(objects)
    assert main["ports"] == [{"name": "metrics", "containerPort": 9750, "protocol": "TCP"}]
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert main[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # Liveness and readiness wait for startup, which is generous for slow GPU initialisation.
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9750, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= workload(objects)["spec"]["template"]["metadata"]["labels"].items()


def test_container_is_locked_down(helm):
    objects = render(helm)
    pod = pod_spec(objects)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    assert "hostIPC" not in pod
    context = container(objects)["securityContext"]
    # The user and group are the pod's: the container sets none of its own.
    assert not {"runAsUser", "runAsGroup", "runAsNonRoot"} & set(context), context
    assert context["readOnlyRootFilesystem"] is True and context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root: everything the daemon writes is on a volume.
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    assert {"/dev/shm", "/run/shmpiped", "/tmp"} <= set(mounts)


def test_dev_shm_is_a_sized_memory_emptydir_by_default(helm):
    objects = render(helm)
    volumes = {v["name"]: v for v in workload(objects)["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Mi"}
    objects = render(helm, None, "shm.sizeLimit=2Gi")
    volumes = {v["name"]: v for v in workload(objects)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dev-shm"]["emptyDir"]["sizeLimit"] == "2Gi"


def test_daemon_environment(helm):
    variables = env(render(helm))
    assert variables["SHMPIPED_HTTP_ADDRESS"] == "0.0.0.0:9750"
    assert variables["SHMPIPED_LOG_FORMAT"] == "json"
    assert variables["SHMPIPED_CONTROL_SOCKET"] == "/run/shmpiped/control.sock"
    assert not {"SHMPIPED_NAMESPACE", "SHMPIPED_RESTART_BUDGET", "SHMPIPED_TARGET_RATE"} & set(variables)
    variables = env(render(helm, None, "daemon.namespace=ao2", "daemon.restartBudget=3", "daemon.targetRate=500",
                           "daemon.controlSocket=false", "daemon.logFormat=plain"))
    assert variables["SHMPIPED_NAMESPACE"] == "ao2"
    assert variables["SHMPIPED_RESTART_BUDGET"] == "3"
    assert variables["SHMPIPED_TARGET_RATE"] == "500"
    assert variables["SHMPIPED_CONTROL_SOCKET"] == "none"
    assert variables["SHMPIPED_LOG_FORMAT"] == "plain"


def test_notes_tell_how_to_reach_the_daemon(helm):
    result = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"port-forward service/{RELEASE}-shmpiped 9750:9750" in notes
    assert "shmpiped ctl status" in notes and "embedded adaptive-optics demo" in notes


# ------------------------------------------------------------------------------ the pipeline ConfigMap


def load_pipeline_errors(text: str, tmp_path: Path) -> list[str]:
    from shmpiped.cli import load_and_validate

    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    _, errors = load_and_validate(str(path))
    return errors


@pytest.mark.parametrize("values", [v for v in CI_VALUES if "pipeline" in yaml.safe_load(v.read_text())],
                         ids=lambda v: v.stem)
def test_pipeline_configmap_holds_a_valid_pipeline(helm, values, tmp_path, emulated_gpu):
    # emulated_gpu: the GPU values' pipeline is validated on the stand-in for the GPU this machine lacks.
    objects = render(helm, values)
    configmap = pipeline_configmap(objects)
    assert configmap is not None
    text = configmap["data"]["pipeline.yaml"]
    given = yaml.safe_load(values.read_text())["pipeline"]
    expected = yaml.safe_load(given) if isinstance(given, str) else given
    realtime = yaml.safe_load(values.read_text()).get("realtime", {})
    if realtime.get("enabled"):  # realtime.settings join the pipeline's own realtime keys (which win)
        expected = {**expected, "realtime": {**realtime["settings"], **expected.get("realtime", {})}}
    assert yaml.safe_load(text) == expected
    if isinstance(given, str):
        assert text.startswith(given), "the string form reaches the daemon byte for byte"
        assert text == given or realtime.get("enabled")
    assert load_pipeline_errors(text, tmp_path) == []
    # Mounted where the image looks for it, and named to the daemon.
    pod = workload(objects)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert volume["configMap"]["items"] == [{"key": "pipeline.yaml", "path": "pipeline.yaml"}]
    mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": "/etc/shmpiped", "readOnly": True}
    assert env(objects)["SHMPIPED_PIPELINE"] == "/etc/shmpiped/pipeline.yaml"
    assert checksum(objects) == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()


def test_the_embedded_demo_as_a_pipeline_value(helm, tmp_path):
    demo = (REPO / "shmpiped" / "demo" / "ao_loop.yaml").read_text()
    objects = render(helm, None, set_json=(f"pipeline={json.dumps(demo)}",))
    text = pipeline_configmap(objects)["data"]["pipeline.yaml"]
    assert text == demo
    assert load_pipeline_errors(text, tmp_path) == []


def test_checksum_rolls_the_pod_only_when_the_pipeline_changes(helm):
    base = ci_values("custom-pipeline-values.yaml")
    first = checksum(render(helm, base))
    assert first and re.fullmatch(r"[0-9a-f]{64}", first)
    assert checksum(render(helm, base, "daemon.logLevel=DEBUG", "resources.limits.memory=2Gi")) == first
    changed = checksum(render(helm, base, "pipeline.kernels[1].parameters.factor=0.5"))
    assert changed and changed != first
    text_a = "namespace: a\nshared_memory: []\n"
    text_b = "namespace: b\nshared_memory: []\n"
    a = checksum(render(helm, None, set_json=(f"pipeline={json.dumps(text_a)}",)))
    b = checksum(render(helm, None, set_json=(f"pipeline={json.dumps(text_b)}",)))
    assert a and b and a != b


# ------------------------------------------------------------------------------ the realistic value files


def test_gpu_daemonset(helm):
    objects = render(helm, ci_values("gpu-daemonset-values.yaml"))
    assert not of_kind(objects, "Deployment")
    daemonset = only(objects, "DaemonSet")
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    resources = container(objects)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in resources.get("requests", {})
    assert resources["limits"]["cpu"] == resources["requests"]["cpu"]   # Guaranteed QoS
    assert container(objects)["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_NICE", "IPC_LOCK"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dev-shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert container(objects)["startupProbe"]["failureThreshold"] == 90
    objects = render(helm, ci_values("gpu-daemonset-values.yaml"), "gpu.count=2", "runtimeClassName=")
    assert container(objects)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "runtimeClassName" not in workload(objects)["spec"]["template"]["spec"]


def test_no_gpu_no_gpu_limit(helm):
    objects = render(helm)
    assert "nvidia.com/gpu" not in container(objects)["resources"].get("limits", {})
    assert "tolerations" not in workload(objects)["spec"]["template"]["spec"]


def test_host_ipc_is_opt_in_and_replaces_the_emptydir(helm):
    objects = render(helm, ci_values("hostipc-values.yaml"))
    pod = workload(objects)["spec"]["template"]["spec"]
    assert pod["hostIPC"] is True
    assert "dev-shm" not in {v["name"] for v in pod["volumes"]}
    assert "/dev/shm" not in {m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert env(objects)["SHMPIPED_CONTROL_SOCKET"] == "none"
    assert env(objects)["SHMPIPED_NAMESPACE"] == "bench1"
    # The risk is written where a user turns it on.
    values_text = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    for text in (values_text, readme):
        assert "hostIPC" in text and "baseline" in text


def test_monitoring_objects(helm):
    objects = render(helm, ci_values("monitoring-values.yaml"))
    service = only(objects, "Service")
    monitor = only(objects, "ServiceMonitor")
    check_service_monitor(monitor, service)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "5s"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "shmpiped"

    rule = only(objects, "PrometheusRule")
    check_prometheus_rule(rule)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    packaged = yaml.safe_load((CHART / "files" / "shmpiped-rules.yml").read_text())
    assert rule["spec"]["groups"] == packaged["groups"]

    dashboards = [obj for obj in of_kind(objects, "ConfigMap") if "-dashboard-" in obj["metadata"]["name"]]
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files) > 0
    by_key = {key: (obj, value) for obj in dashboards for key, value in obj["data"].items()}
    assert sorted(by_key) == [path.name for path in files]
    for path in files:
        obj, value = by_key[path.name]
        assert value == path.read_text(), f"{path.name} changed on its way into the ConfigMap"
        json.loads(value)
        assert obj["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert obj["metadata"]["namespace"] == "monitoring"
        assert obj["metadata"]["annotations"]["k8s-sidecar-target-directory"] == "shmpiped"


def test_monitoring_is_off_by_default(helm):
    kinds = {obj["kind"] for obj in render(helm)}
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds


def test_packaged_rules_pass_promtool(helm, promtool, tmp_path):
    rule = only(render(helm, None, "prometheusRule.enabled=true"), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_custom_pipeline_values(helm):
    objects = render(helm, ci_values("custom-pipeline-values.yaml"))
    assert workload(objects)["metadata"]["name"] == "tiptilt"
    assert pipeline_configmap(objects)["metadata"]["name"] == "tiptilt-pipeline"
    variables = {item["name"]: item for item in container(objects)["env"]}
    assert variables["SHMPIPED_WATCHDOG_TIMEOUT"]["value"] == "10"
    assert variables["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "podAntiAffinity" in workload(objects)["spec"]["template"]["spec"]["affinity"]


# ------------------------------------------------------------------------------ the pod's contract, for real


def test_the_rendered_pod_contract_runs_the_real_daemon(helm, tmp_path):
    """The real daemon, started with the container's rendered environment and pipeline file, answers
    the probes' paths with 200, logs JSON lines and stops with status 0 well inside the grace period.

    Only what differs between a pod and this machine is changed: the port (9750 may be taken here),
    the file and socket paths, and the shmpiped namespace (unique, so that no other test collides).
    """
    objects = render(helm, ci_values("custom-pipeline-values.yaml"))
    spec = workload(objects)["spec"]["template"]["spec"]
    main = container(objects)
    variables = {item["name"]: item["value"] for item in main["env"] if "value" in item}
    assert variables["SHMPIPED_HTTP_ADDRESS"].endswith(f":{main['ports'][0]['containerPort']}")
    (tmp_path / "pipeline.yaml").write_text(pipeline_configmap(objects)["data"]["pipeline.yaml"])
    port = free_port()
    namespace = f"helm-{os.getpid()}"
    variables.update(SHMPIPED_HTTP_ADDRESS=f"127.0.0.1:{port}", SHMPIPED_PIPELINE=str(tmp_path / "pipeline.yaml"),
                     SHMPIPED_CONTROL_SOCKET=str(tmp_path / "control.sock"), SHMPIPED_NAMESPACE=namespace)
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "shmpiped.cli", "run"], stdout=log,
                                  stderr=subprocess.STDOUT, env={**os.environ, **variables})

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def answers(probe: str) -> bool:
        assert daemon.poll() is None, log_path.read_text()
        return get(main[probe]["httpGet"]["path"]) == 200

    try:
        deadline = time.monotonic() + 60
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            while not answers(probe):
                assert time.monotonic() < deadline, f"{probe} never answered 200:\n{log_path.read_text()}"
                time.sleep(0.1)
        assert os.path.exists(tmp_path / "control.sock")
        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(timeout=spec["terminationGracePeriodSeconds"])
        assert status == 0, log_path.read_text()
        assert time.monotonic() - started < spec["terminationGracePeriodSeconds"] / 2
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines[:5]
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"shmpiped.{namespace}.")]
