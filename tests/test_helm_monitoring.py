"""The chart's monitoring objects against the job Prometheus really assigns, and its NetworkPolicy.

The packaged rules select ``job="shmpiped"``; the chart must put there the job label that
prometheus-operator gives the daemon's targets, which follows nameOverride, fullnameOverride,
``serviceMonitor.jobLabel`` / ``podMonitor.jobLabel`` and the choice of monitor
(helm_support.job_of_targets computes it as promcfg.go does).  The rendered rules then pass
``promtool check rules``, and a promtool unit test shows that ShmpipedDaemonDown stays quiet while
the daemon is up under that job, where the packaged rules (job="shmpiped") fire.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from . import helm_support
from .helm_support import (
    CHART,
    NAMESPACE,
    RELEASE,
    ci_values,
    hook_pods,
    job_of_targets,
    of_kind,
    only,
    render,
    run_helm,
    selects,
    tool,
    workload,
)

PACKAGED = 'job="shmpiped"'
JOB_SELECTOR = re.compile(r'\bjob\s*=\s*"([^"]*)"')

# (id, values file of ci/ or None, --set items, the job expected)
JOB_CASES = [
    ("defaults", None, ("serviceMonitor.enabled=true", "prometheusRule.enabled=true"), "shmpiped"),
    ("nameoverride-file", "nameoverride-monitoring-values.yaml", (), "aopipe"),
    ("nameoverride-podmonitor", None, ("nameOverride=aopipe", "podMonitor.enabled=true",
                                       "prometheusRule.enabled=true"), "aopipe"),
    ("podmonitor-without-joblabel", "networkpolicy-podmonitor-pdb-values.yaml", (), f"{NAMESPACE}/{RELEASE}-shmpiped"),
    ("servicemonitor-without-joblabel", None, ("serviceMonitor.enabled=true", "serviceMonitor.jobLabel=",
                                               "prometheusRule.enabled=true"), f"{RELEASE}-shmpiped"),
    ("fullnameoverride-without-joblabel", None, ("fullnameOverride=tiptilt", "serviceMonitor.enabled=true",
                                                 "serviceMonitor.jobLabel=", "prometheusRule.enabled=true"), "tiptilt"),
    ("servicemonitor-other-label", None, ("serviceMonitor.enabled=true",
                                          "serviceMonitor.jobLabel=app.kubernetes.io/component",
                                          "prometheusRule.enabled=true"), "pipeline"),
    ("podmonitor-pod-label", None, ("podMonitor.enabled=true", "podMonitor.jobLabel=ao.example.org/loop",
                                    r"podLabels.ao\.example\.org/loop=wfs", "prometheusRule.enabled=true"), "wfs"),
    ("podmonitor-label-the-pod-lacks", None, ("podMonitor.enabled=true", "podMonitor.jobLabel=absent-label",
                                              "prometheusRule.enabled=true"), f"{NAMESPACE}/{RELEASE}-shmpiped"),
]
JOB_IDS = [case[0] for case in JOB_CASES]


# The session fixture of tests/helm_support.py.
helm = helm_support.helm


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", ".ci/install-prometheus.sh")


def render_case(helm: str, values: str | None, sets: tuple[str, ...]) -> list[dict]:
    return render(helm, ci_values(values) if values else None, *sets)


def packaged_groups() -> list[dict]:
    return yaml.safe_load((CHART / "files" / "shmpiped-rules.yml").read_text())["groups"]


def rule_expressions(groups: list[dict]) -> list[str]:
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


# ------------------------------------------------------------------------------ the job selector


@pytest.mark.parametrize(("case", "values", "sets", "expected"), JOB_CASES, ids=JOB_IDS)
def test_rules_select_the_job_prometheus_gives_the_targets(helm, case, values, sets, expected):
    objects = render_case(helm, values, sets)
    job = job_of_targets(objects)
    assert job == expected, f"{case}: the monitor gives job={job!r}"
    rendered = only(objects, "PrometheusRule")["spec"]["groups"]
    selected = {match for expr in rule_expressions(rendered) for match in JOB_SELECTOR.findall(expr)}
    assert selected == {job}, f"the rules select {selected}, Prometheus names the job {job!r}"
    # Nothing else changed: the packaged groups with their job selector replaced, key for key.
    expected_groups = packaged_groups()
    for group in expected_groups:
        for rule in group["rules"]:
            rule["expr"] = str(rule["expr"]).replace(PACKAGED, f'job="{job}"') if PACKAGED in str(rule["expr"]) \
                else rule["expr"]
    assert rendered == expected_groups


def test_the_contract_with_the_rules_file_holds():
    """The packaged rules select the literal job="shmpiped" that the chart substitutes."""
    assert any(PACKAGED in expr for expr in rule_expressions(packaged_groups()))


def test_prometheus_rule_job_overrides_the_computed_one(helm):
    for sets in (("prometheusRule.enabled=true", "prometheusRule.job=ao-loop"),
                 ("prometheusRule.enabled=true", "prometheusRule.job=ao-loop", "nameOverride=aopipe",
                  "serviceMonitor.enabled=true")):
        rule = only(render(helm, None, *sets), "PrometheusRule")
        selected = {m for expr in rule_expressions(rule["spec"]["groups"]) for m in JOB_SELECTOR.findall(expr)}
        assert selected == {"ao-loop"}, sets
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "prometheusRule.job=a\"b")
    assert result.returncode != 0 and "/prometheusRule/job" in result.stderr, result.stderr


def test_one_monitor_at_a_time(helm):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "serviceMonitor.enabled=true",
                      "--set", "podMonitor.enabled=true")
    assert result.returncode != 0
    assert "serviceMonitor.enabled and podMonitor.enabled: choose one" in result.stderr, result.stderr


@pytest.mark.parametrize(("case", "values", "sets", "expected"), JOB_CASES, ids=JOB_IDS)
def test_rendered_rules_pass_promtool(helm, promtool, tmp_path, case, values, sets, expected):
    rule = only(render_case(helm, values, sets), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def promtool_daemon_up_test(promtool: str, tmp_path, groups: list[dict], job: str) -> subprocess.CompletedProcess:
    """promtool test rules: the daemon's target of ``job`` is up for 10 minutes and ShmpipedDaemonDown
    must not fire."""
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": f'up{{job="{job}",instance="10.1.2.3:9750"}}', "values": "1x40"}],
            "alert_rule_test": [{"eval_time": "9m", "alertname": "ShmpipedDaemonDown", "exp_alerts": []}],
        }],
    }))
    return subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("sets", [("nameOverride=aopipe", "serviceMonitor.enabled=true", "prometheusRule.enabled=true"),
                                  ("podMonitor.enabled=true", "podMonitor.jobLabel=", "prometheusRule.enabled=true")],
                         ids=["nameoverride", "podmonitor-namespace-name"])
def test_daemon_down_stays_quiet_while_the_renamed_job_is_up(helm, promtool, tmp_path, sets):
    objects = render(helm, None, *sets)
    job = job_of_targets(objects)
    assert job != "shmpiped"
    for folder in ("rendered", "packaged"):
        (tmp_path / folder).mkdir()
    groups = only(objects, "PrometheusRule")["spec"]["groups"]
    rendered = promtool_daemon_up_test(promtool, tmp_path / "rendered", groups, job)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    # The packaged rules, which select job="shmpiped", fire on the same healthy target: the bug this fixes.
    packaged = promtool_daemon_up_test(promtool, tmp_path / "packaged", packaged_groups(), job)
    assert packaged.returncode != 0 and "ShmpipedDaemonDown" in packaged.stdout + packaged.stderr, packaged.stdout


# ------------------------------------------------------------------------------ the PodMonitor


def test_pod_monitor_scrapes_the_pipeline_pods(helm):
    objects = render(helm, ci_values("networkpolicy-podmonitor-pdb-values.yaml"))
    assert not of_kind(objects, "ServiceMonitor")
    monitor = only(objects, "PodMonitor")
    spec = monitor["spec"]
    pod = workload(objects)["spec"]["template"]
    assert selects(spec["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert not any(selects(spec["selector"]["matchLabels"], test["metadata"]["labels"]) for test in hook_pods(objects))
    assert "jobLabel" not in spec
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert endpoint["interval"] == "5s" and endpoint["relabelings"][0]["targetLabel"] == "node"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = only(render(helm, None, "podMonitor.enabled=true"), "PodMonitor")["spec"]
    assert spec["jobLabel"] == "app.kubernetes.io/name"


# ------------------------------------------------------------------------------ the NetworkPolicy


def test_network_policy_admits_prometheus_and_the_test_pod_only(helm):
    objects = render(helm, ci_values("networkpolicy-podmonitor-pdb-values.yaml"))
    policy = only(objects, "NetworkPolicy")
    spec = policy["spec"]
    pod = workload(objects)["spec"]["template"]
    assert selects(spec["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"]
    port_names = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    scrape, test, viewer = spec["ingress"]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert [port["port"] for port in scrape["ports"]] == ["metrics"] and "metrics" in port_names
    [test_pod] = hook_pods(objects)
    [source] = test["from"]
    assert set(source) == {"podSelector"}, "the test pod is admitted from the release's namespace only"
    assert selects(source["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])
    assert not selects(spec["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])
    assert viewer["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ao-lab"}
    # Without the test pod, no rule for it; off by default.
    spec = only(render(helm, ci_values("networkpolicy-podmonitor-pdb-values.yaml"), "tests.enabled=false"),
                "NetworkPolicy")["spec"]
    assert len(spec["ingress"]) == 2 and "podSelector" in spec["ingress"][0]["from"][0]
    assert not of_kind(render(helm), "NetworkPolicy")
    # Only the scrape rule: the default namespace selector, every pod of it.
    spec = only(render(helm, None, "networkPolicy.enabled=true", "tests.enabled=false"), "NetworkPolicy")["spec"]
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}], "ports": [{"port": "metrics", "protocol": "TCP"}]}]


def test_network_policy_refuses_to_admit_every_namespace(helm):
    # null drops the default matchLabels (Helm merges a {} into the defaults, so it would change nothing).
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "networkPolicy.enabled=true",
                      "--set", "networkPolicy.prometheusNamespaceSelector.matchLabels=null")
    assert result.returncode != 0
    assert "prometheusNamespaceSelector" in result.stderr, result.stderr
