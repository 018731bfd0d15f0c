"""What the chart tests share: rendering helm/shmpiped, picking objects out, and the structural checks
of the prometheus-operator objects (ServiceMonitor, PodMonitor, PrometheusRule), whose CRDs are not
in the Kubernetes schemas kubernetes-validate knows.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import unavailable

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "shmpiped"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RULES_SOURCE = REPO / "deploy" / "prometheus" / "shmpiped-rules.yml"
DASHBOARDS_SOURCE = REPO / "grafana" / "dashboards"
KUBE_VERSION = "1.30.0"
RELEASE = "lab"
NAMESPACE = "ao"

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}


def tool(name: str, install: str) -> str:
    """The path of ``name``; skips (fails under CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed: run {install}", "chart tests")
    return path


def validator():
    """The kubernetes_validate module; skips (fails under CI) when it is not installed."""
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate not installed: run .ci/install-helm.sh", "chart tests")
    return kubernetes_validate


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm command (a fixture: a test module takes it with ``helm = helm_support.helm``)."""
    return tool("helm", ".ci/install-helm.sh")


@pytest.fixture(scope="session")
def kubernetes_validate():
    return validator()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def values_args(values: Path | None, *sets: str) -> list[str]:
    args = [] if values is None else ["-f", str(values)]
    for item in sets:
        args += ["--set", item]
    return args


def render(helm: str, values: Path | None = None, *sets: str, set_json: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
            *values_args(values, *sets)]
    for item in set_json:
        args += ["--set-json", item]
    result = run_helm(helm, *args)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def valid(kubernetes_validate, objects: list[dict]) -> list[dict]:
    """``objects``, each checked strictly against Kubernetes' schemas (prometheus-operator's kinds aside)."""
    for obj in objects:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    return objects


def refused(helm: str, *args: str) -> str:
    """helm template's error for values it must refuse."""
    result = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert result.returncode != 0, f"helm template accepted {args}"
    return result.stderr


def only(objects: list[dict], kind: str) -> dict:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def workload(objects: list[dict]) -> dict:
    found = [obj for obj in objects if obj["kind"] in ("Deployment", "DaemonSet")]
    assert len(found) == 1, [obj["kind"] for obj in found]
    return found[0]


def container(objects: list[dict]) -> dict:
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["shmpiped"]
    return containers[0]


def env(objects: list[dict]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container(objects).get("env", [])}


def pipeline_configmap(objects: list[dict]) -> dict | None:
    maps = [obj for obj in of_kind(objects, "ConfigMap") if obj["metadata"]["name"].endswith("-pipeline")]
    assert len(maps) <= 1
    return maps[0] if maps else None


def checksum(objects: list[dict]) -> str | None:
    annotations = workload(objects)["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get("checksum/pipeline")


def ci_values(name: str) -> Path:
    path = CHART / "ci" / name
    assert path.is_file(), f"{path} is missing"
    return path


def pod_spec(objects: list[dict]) -> dict:
    return workload(objects)["spec"]["template"]["spec"]


def hook_pods(objects: list[dict]) -> list[dict]:
    """The `helm test` pods (helm.sh/hook: test)."""
    return [obj for obj in of_kind(objects, "Pod")
            if (obj["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]


def selects(match_labels: dict, labels: dict) -> bool:
    return bool(match_labels) and all(labels.get(key) == value for key, value in match_labels.items())


def check_service_monitor(obj: dict, service: dict) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints", "targetLabels",
                         "podTargetLabels", "sampleLimit"}, set(spec)
    assert spec.get("jobLabel", "app.kubernetes.io/name") in service["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector and all(service["metadata"]["labels"].get(k) == v for k, v in selector.items()), \
        "the ServiceMonitor does not select the metrics Service"
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                                 "relabelings", "metricRelabelings"}, set(endpoint)
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert endpoint["scheme"] in ("http", "https")
        for key in ("interval", "scrapeTimeout"):
            assert DURATION.match(endpoint[key]), (key, endpoint[key])
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert set(relabel) <= RELABEL_KEYS, relabel


def check_prometheus_rule(obj: dict) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
    assert set(obj["spec"]) == {"groups"}
    groups = obj["spec"]["groups"]
    assert groups and len({group["name"] for group in groups}) == len(groups), "group names must be unique"
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy",
                              "query_offset", "labels"}, set(group)
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}, set(rule)
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], (str, int)) and str(rule["expr"]).strip()
            for key in ("for", "keep_firing_for"):
                if key in rule:
                    assert DURATION.match(rule[key]), rule
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values()), rule


def check_pod_monitor(obj: dict, pod_labels: dict) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "podMetricsEndpoints", "podTargetLabels",
                         "sampleLimit"}, set(spec)
    assert selects(spec["selector"]["matchLabels"], pod_labels), "the PodMonitor does not select the pipeline's pods"
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["podMetricsEndpoints"], "no endpoints"
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                                 "relabelings", "metricRelabelings"}, set(endpoint)
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert DURATION.match(endpoint[key]), (key, endpoint[key])
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert set(relabel) <= RELABEL_KEYS, relabel


def check_monitoring_object(obj: dict, objects: list[dict]) -> None:
    """The structural check of a monitoring.coreos.com object among the rendered ``objects``."""
    if obj["kind"] == "ServiceMonitor":
        check_service_monitor(obj, only(objects, "Service"))
    elif obj["kind"] == "PodMonitor":
        check_pod_monitor(obj, workload(objects)["spec"]["template"]["metadata"]["labels"])
    else:
        assert obj["kind"] == "PrometheusRule", obj["kind"]
        check_prometheus_rule(obj)


def job_of_targets(objects: list[dict]) -> str:
    """The job label prometheus-operator gives the daemon's targets (pkg/prometheus/promcfg.go): a
    ServiceMonitor's targets get the Service's name, replaced by the value of the Service label named
    jobLabel when that label is set and not empty; a PodMonitor's get "<namespace>/<PodMonitor name>",
    replaced likewise by the pod's label named jobLabel."""
    monitors = of_kind(objects, "ServiceMonitor") + of_kind(objects, "PodMonitor")
    assert len(monitors) == 1, [obj["kind"] for obj in monitors]
    monitor = monitors[0]
    if monitor["kind"] == "ServiceMonitor":
        service = only(objects, "Service")
        default, labels = service["metadata"]["name"], service["metadata"]["labels"]
    else:
        default = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
        labels = workload(objects)["spec"]["template"]["metadata"]["labels"]
    label = monitor["spec"].get("jobLabel", "")
    return labels.get(label) or default if label else default
