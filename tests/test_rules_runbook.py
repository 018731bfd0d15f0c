"""The alert rules against docs/runbook.md and against many daemons: every alert links a runbook section
that exists, and no alert aggregates across daemons (a DaemonSet runs the same pipeline on every node).

The firing behaviour with two daemons is pinned by promtool in deploy/prometheus/shmpiped-rules.test.yml
(the latency test runs two instances with different budgets); these are the static halves.
"""

from __future__ import annotations

import re

from .promql_catalogue import REPO, RULES_FILE, alert_rules

RUNBOOK = REPO / "docs" / "runbook.md"
AGGREGATIONS = ("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group")


def _sections() -> dict[str, str]:
    """Runbook heading -> its text, for the `## Name` sections."""
    parts = re.split(r"^## (\w+)\s*$", RUNBOOK.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_alert_links_its_runbook_section():
    sections = _sections()
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= set(sections), names - set(sections)
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url")
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", (rule["alert"], url)
        path, anchor = url.split("#")
        assert (REPO / path).is_file()
        # GitHub's anchor of "## ShmpipedDaemonDown" is "shmpipeddaemondown"
        assert anchor in {heading.lower() for heading in sections}
    for name in names:
        text = sections[name]
        for part in ("**Means.**", "**Check.**", "**Fix.**"):
            assert part in text, (name, part)


def test_no_alert_mixes_daemons():
    """Every aggregation and every vector match keeps `instance` (and `job`); nothing drops it with `without`."""
    for rule in alert_rules():
        expr = rule["expr"]
        where = rule["alert"]
        assert " without " not in expr and "without(" not in expr, where
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            assert {"instance", "job"} <= labels, (where, clause)
        # an aggregation is written `op by (...) (x)`: `op (` right after its name would aggregate all daemons
        bare = re.search(rf"\b({'|'.join(AGGREGATIONS)})\s*\(", expr)
        assert bare is None, (where, bare and bare.group(0))


def test_rules_select_the_job_literally():
    """The contract with the Helm chart: it substitutes its own job label for the literal `job="shmpiped"`."""
    text = RULES_FILE.read_text()
    matchers = re.findall(r'job\s*=~?\s*"[^"]*"', text.split("groups:", 1)[1])
    assert matchers and set(matchers) == {'job="shmpiped"'}, matchers
