"""The alert rules and the scrape config in deploy/prometheus/, checked and unit-tested by promtool.

promtool comes with Debian's `prometheus` package (.ci/install-prometheus.sh);
these tests fail, not skip, without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from .promql_catalogue import (
    REPO,
    RULES_FILE,
    RULES_TEST_FILE,
    alert_expressions,
    alert_rules,
    grafana_build,
    metric_catalogue,
    unknown_metrics,
)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"

REQUIRED_ALERTS = {
    "ShmpipedDaemonDown",
    "ShmpipedPipelineNotRunning",
    "ShmpipedWorkerNotActive",
    "ShmpipedWorkerFlapping",
    "ShmpipedLoopRateLow",
    "ShmpipedFramesStale",
    "ShmpipedEndToEndLatencyHigh",
    "ShmpipedOverrunsRising",
    "ShmpipedRealtimeWorkerDisturbed",
}
SERIES_LABELS = {"job", "instance", "pipeline", "worker", "stream", "state", "le"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (.ci/install-prometheus.sh)")
    return path


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_promtool_check_rules(promtool):
    result = run_promtool(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = run_promtool(promtool, "test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool, tmp_path):
    """The unit tests pin the thresholds: a budget not read from the daemon's metric makes them fail."""
    rules = RULES_FILE.read_text()
    budget = "max by (instance, job, pipeline) (shmpiped_latency_budget_seconds)"
    assert rules.count(budget) == 1 and "0.002" not in rules.split("groups:", 1)[1]
    (tmp_path / RULES_FILE.name).write_text(rules.replace(budget, "0 * " + budget + " + 0.005"))
    (tmp_path / RULES_TEST_FILE.name).write_text(RULES_TEST_FILE.read_text())
    result = run_promtool(promtool, "test", "rules", str(tmp_path / RULES_TEST_FILE.name))
    assert result.returncode != 0
    assert "ShmpipedEndToEndLatencyHigh" in result.stdout + result.stderr


def test_scrape_config_is_valid_and_loads_the_rules(promtool):
    result = run_promtool(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert [(PROMETHEUS_DIR / f).resolve() for f in config["rule_files"]] == [RULES_FILE.resolve()]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "shmpiped"
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"] == [{"targets": ["localhost:9750"]}]


def test_every_required_alert_exists_with_for_severity_and_annotations():
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert [g["name"] for g in groups] == ["shmpiped"]
    rules = alert_rules()
    assert {r["alert"] for r in rules} == REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Shmpiped[A-Z][A-Za-z]+", name)
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        for text in (annotations["summary"], annotations["description"]):
            assert "$labels." in text, f"{name}: annotation without labels: {text!r}"
    # two severities of one alert may share a name, never the same severity
    keys = [(r["alert"], r["labels"]["severity"]) for r in rules]
    assert len(keys) == len(set(keys))


def test_worker_not_active_severities():
    by_severity = {r["labels"]["severity"]: r["expr"] for r in alert_rules() if r["alert"] == "ShmpipedWorkerNotActive"}
    assert 'state=~"failed|stopped|starting"' in by_severity["critical"]
    assert 'state="idle"' in by_severity["warning"]
    assert len(by_severity) == 2
    assert all("waiting-input" not in e for e in by_severity.values())


def test_alert_expressions_use_only_catalogue_metrics():
    catalogue = metric_catalogue()
    for name, expr in alert_expressions():
        assert not unknown_metrics(expr, catalogue), f"{name}: {unknown_metrics(expr, catalogue)}"
    used = {m for _, e in alert_expressions() for m in re.findall(r"shmpiped_[a-z_]+", e)}
    assert {"shmpiped_pipeline_target_rate_hertz", "shmpiped_end_to_end_latency_seconds_bucket",
            "shmpiped_worker_restarts_total", "shmpiped_worker_overruns_total",
            "shmpiped_stream_frames_total"} <= used


def test_alert_expressions_helper_lists_every_rule():
    names = [name for name, _ in alert_expressions()]
    assert set(names) == REQUIRED_ALERTS
    assert len(names) == len(alert_rules())
    assert all(expr.strip() for _, expr in alert_expressions())


def _unit_tests() -> list[dict]:
    return yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]


def test_every_alert_is_unit_tested_firing_and_quiet():
    firing, quiet = set(), set()
    for group in _unit_tests():
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == REQUIRED_ALERTS, REQUIRED_ALERTS - firing
    assert quiet == REQUIRED_ALERTS, REQUIRED_ALERTS - quiet
    # both severities of ShmpipedWorkerNotActive fire somewhere
    severities = {alert["exp_labels"]["severity"]
                  for group in _unit_tests() for case in group.get("alert_rule_test", [])
                  if case["alertname"] == "ShmpipedWorkerNotActive" for alert in case.get("exp_alerts") or []}
    assert severities == {"warning", "critical"}


def test_unit_test_series_look_like_the_exporter():
    """Input series use catalogue names, the scrape's job and instance, and shmpiped's labels only."""
    catalogue = metric_catalogue()
    series = [s["series"] for group in _unit_tests() for s in group["input_series"]]
    assert series
    for text in series:
        match = re.fullmatch(r"([a-z_:]+)\{(.*)\}", text)
        assert match, text
        name, labels = match.group(1), dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        assert set(labels) <= SERIES_LABELS, text
        if name == "up":
            continue
        assert not unknown_metrics(name, catalogue), text
        assert labels.get("job") == "shmpiped" and labels.get("instance"), text
        assert "pipeline" in labels, text
        if name.startswith("shmpiped_worker_"):
            assert "worker" in labels, text
        if name.startswith(("shmpiped_stream_", "shmpiped_end_to_end_")):
            assert "stream" in labels, text
        if name in ("shmpiped_worker_health", "shmpiped_pipeline_state"):
            assert "state" in labels, text
        if name.endswith("_bucket"):
            assert "le" in labels, text


def test_realtime_alert_watches_only_real_time_workers():
    [rule] = [r for r in alert_rules() if r["alert"] == "ShmpipedRealtimeWorkerDisturbed"]
    expr = rule["expr"]
    assert "rate(shmpiped_worker_involuntary_context_switches_total[1m]) > 1" in expr
    assert "rate(shmpiped_worker_major_page_faults_total[1m]) > 0" in expr
    assert expr.rstrip().endswith("(shmpiped_worker_realtime_priority > 0)")
    assert rule["for"] == "5m" and rule["labels"]["severity"] == "warning"


def test_promtool_unit_tests_catch_a_realtime_alert_on_every_worker(promtool, tmp_path):
    """Without the real-time condition the plain worker fires too, and the unit tests say so."""
    rules = RULES_FILE.read_text()
    (tmp_path / RULES_FILE.name).write_text(rules.replace("(shmpiped_worker_realtime_priority > 0)",
                                                          "(shmpiped_worker_realtime_priority >= 0)"))
    (tmp_path / RULES_TEST_FILE.name).write_text(RULES_TEST_FILE.read_text())
    result = run_promtool(promtool, "test", "rules", str(tmp_path / RULES_TEST_FILE.name))
    assert result.returncode != 0 and "integrator" in result.stdout + result.stderr


def test_latency_budget_matches_the_dashboards():
    """One budget: the daemon's shmpiped_latency_budget_seconds, read by the alert and drawn by the panels."""
    build = grafana_build()
    assert not hasattr(build, "LATENCY_BUDGET_S")  # no constant of its own
    [expr] = [e for n, e in alert_expressions() if n == "ShmpipedEndToEndLatencyHigh"]
    assert expr.rstrip().endswith("(shmpiped_latency_budget_seconds)")
    panels = [t["expr"] for m in build.dashboards().values() for p in m["panels"] for t in p["targets"]
              if "latency" in p["title"].lower() or "p99" in p["title"].lower()]
    assert sum("shmpiped_latency_budget_seconds{" in e for e in panels) == 2  # the stat and the time series
