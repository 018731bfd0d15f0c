"""Every PromQL expression shmpiped ships: dashboard panel queries and alert rules.

Used by the static checks (tests/test_grafana.py, tests/test_alert_rules.py)
and by the real-Prometheus test, which evaluates each of them against a live
server after :func:`substitute` has filled in Grafana's template variables.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = REPO / "grafana" / "dashboards"
RULES_FILE = REPO / "deploy" / "prometheus" / "shmpiped-rules.yml"
RULES_TEST_FILE = REPO / "deploy" / "prometheus" / "shmpiped-rules.test.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"

#: A shmpiped metric name inside an expression.
METRIC_NAME = re.compile(r"shmpiped_[a-z_]+")
#: The series a histogram ``name`` is exported as, besides ``name`` itself.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def grafana_build() -> ModuleType:
    """grafana/build.py, the dashboards' generator, as a module."""
    spec = importlib.util.spec_from_file_location("shmpiped_grafana_build", REPO / "grafana" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dashboards() -> dict[str, dict]:
    """Dashboard uid -> the committed JSON model of grafana/dashboards/*.json."""
    models = [json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))]
    return {model["uid"]: model for model in models}


def iter_panels(model: dict):
    """Every panel of a dashboard, the panels inside rows included (rows themselves excluded)."""
    for panel in model.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[tuple[str, str, str]]:
    """``(dashboard uid, panel title, expr)`` for every query of every panel."""
    return [(uid, panel["title"], target["expr"])
            for uid, model in load_dashboards().items()
            for panel in iter_panels(model)
            for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    """The alerting rules of deploy/prometheus/shmpiped-rules.yml, in file order."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_expressions() -> list[tuple[str, str]]:
    """``(alert name, expr)`` for every alerting rule (a name may appear twice, once per severity)."""
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()]


def substitute(expr: str, pipeline: str, worker: str, *, instance: str = "lab1:9750", job: str = "shmpiped",
               rate_interval: str = "1m", interval: str = "15s", range_: str = "5m") -> str:
    """``expr`` with Grafana's template variables replaced by concrete values.

    ``$pipeline``/``${pipeline}``/``${pipeline:fmt}``, the same for ``$worker``,
    ``$instance`` and ``$job``, ``$__rate_interval`` (1m), ``$__interval`` (15s)
    and ``$__range`` (5m).
    """
    values = {"pipeline": pipeline, "worker": worker, "instance": instance, "job": job,
              "__rate_interval": rate_interval, "__interval": interval, "__range": range_}

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def template_variables(expr: str) -> set[str]:
    """Names of the template variables ``expr`` uses (``$x``, ``${x}``, ``${x:fmt}``)."""
    return {a or b for a, b in re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", expr)}


def metric_catalogue() -> dict[str, str]:
    """Metric name -> type, from the catalogue table of docs/metrics.md."""
    rows = re.findall(r"^\|\s*`(shmpiped_[a-z_]+)`\s*\|\s*(\w+)\s*\|", METRICS_DOC.read_text(), re.MULTILINE)
    return dict(rows)


def referenced_metrics(expr: str) -> set[str]:
    """The shmpiped series names ``expr`` selects (``_bucket``/``_sum``/``_count`` kept)."""
    return set(METRIC_NAME.findall(expr))


def unknown_metrics(expr: str, catalogue: dict[str, str] | None = None) -> set[str]:
    """Names in ``expr`` that docs/metrics.md does not define (histogram series count as their family)."""
    catalogue = metric_catalogue() if catalogue is None else catalogue
    unknown = set()
    for name in referenced_metrics(expr):
        if name in catalogue:
            continue
        family = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if family is None or catalogue.get(family) != "histogram":
            unknown.add(name)
    return unknown
