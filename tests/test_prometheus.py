"""A real Prometheus server scraping a real daemon: every dashboard query and alert rule evaluates.

Prometheus (Debian's package) runs on loopback with a 1 s scrape interval,
loading the packaged alert rules.  CI installs it; elsewhere the tests skip
when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import wait_for
from .daemon_support import free_port, write_pipeline

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "shmpiped-rules.yml"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None and not os.environ.get("CI"),
    reason="prometheus not installed: run .ci/install-prometheus.sh",
)


class PrometheusServer:
    def __init__(self, tmp_path: Path, target: str):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: shmpiped\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.log = open(tmp_path / "prometheus.log", "w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def monitored(tmp_path, namespace, daemons):
    """A daemon (1 kHz source, two stages) scraped by a real Prometheus every second."""
    path = tmp_path / "p.yaml"
    write_pipeline(path, namespace, rate=1000)
    daemon = daemons(path, namespace, tmp_path, "--target-rate", "1000", "--backoff-initial", "3")
    daemon.wait_ready()
    server = PrometheusServer(tmp_path, f"127.0.0.1:{daemon.port}")
    try:
        wait_for(lambda: _up(server), timeout=60, interval=0.5)
        # enough scrapes for rate() over the dashboards' intervals
        wait_for(lambda: (server.value("count_over_time(shmpiped_worker_frames_total[1m])") or 0) >= 8,
                 timeout=60, interval=0.5)
        yield daemon, server
    finally:
        server.stop()


def _up(server: PrometheusServer) -> bool:
    try:
        return server.value('up{job="shmpiped"}') == 1.0
    except OSError:
        return False


def test_every_dashboard_query_returns_series(monitored, namespace):
    from .promql_catalogue import dashboard_queries, substitute

    daemon, server = monitored
    queries = dashboard_queries()
    assert queries
    empty = []
    instance = f"127.0.0.1:{daemon.port}"
    for dashboard, panel, expr in queries:
        result = server.query(substitute(expr, namespace, "stage", instance=instance))
        if not result:
            empty.append((dashboard, panel, expr))
    assert not empty, f"panels without data: {empty}"


def test_every_alert_rule_evaluates_and_stays_quiet_when_healthy(monitored, namespace):
    from .promql_catalogue import alert_expressions

    daemon, server = monitored
    expressions = alert_expressions()
    assert expressions
    for _, expr in expressions:
        server.query(expr)  # evaluates without error
    rules = server.api("rules")["data"]["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    assert {name for name, _ in expressions} <= loaded
    assert all(rule.get("health") in ("ok", "unknown") for group in rules for rule in group["rules"])
    firing = [a["labels"]["alertname"] for a in server.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert not firing, firing


def test_killed_worker_shows_in_prometheus(monitored, namespace):
    daemon, server = monitored
    pid = daemon.status()["workers"]["stage"]["pid"]
    assert server.value(f'shmpiped_worker_restarts_total{{pipeline="{namespace}",worker="stage"}}') == 0.0
    os.kill(pid, signal.SIGKILL)
    # with a 3 s back-off the failed state lasts several scrapes
    wait_for(lambda: server.value(
        f'shmpiped_worker_health{{pipeline="{namespace}",worker="stage",state="failed"}}') == 1.0,
        timeout=20, interval=0.5)
    wait_for(lambda: server.value(
        f'shmpiped_worker_restarts_total{{pipeline="{namespace}",worker="stage"}}') == 1.0,
        timeout=30, interval=0.5)
    wait_for(lambda: server.value(
        f'shmpiped_worker_health{{pipeline="{namespace}",worker="stage",state="active"}}') == 1.0,
        timeout=30, interval=0.5)
    assert server.value(f'shmpiped_pipeline_failures_total{{pipeline="{namespace}"}}') == 1.0
    changes = server.value(
        f'changes(shmpiped_worker_health{{pipeline="{namespace}",worker="stage",state="active"}}[1m])')
    assert changes is not None and changes >= 2  # active -> not active -> active


def test_scrape_is_negotiated_and_carries_the_new_series(monitored, namespace):
    """Prometheus's own scrape (OpenMetrics and gzip, as it asks) stores the process collector, the worker
    info, the timestamps, the budget and the sum of squares; the jitter from the counters is a real number."""
    import gzip

    daemon, server = monitored
    # what Prometheus asks for (its default scrape protocols), answered over real HTTP
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
                  "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert text.endswith("# EOF\n") and "\nshmpiped_worker_info{" in text
    status, plain = daemon.get("/metrics")  # no Accept header: the classic text format, uncompressed
    assert status == 200 and plain.startswith(b"# HELP") and b"# EOF" not in plain

    selector = f'job="shmpiped", instance="127.0.0.1:{daemon.port}", pipeline="{namespace}", worker="stage"'
    assert server.value('process_start_time_seconds{job="shmpiped"}') > 1.6e9
    assert server.value('process_resident_memory_bytes{job="shmpiped"}') > 0
    assert server.value('count({job="shmpiped", __name__="shmpiped_daemon_start_time_seconds"})') is None
    [info] = server.query(f"shmpiped_worker_info{{{selector}}}")
    # an empty label is no label in Prometheus: a CPU worker's info has no gpu_uuid
    assert info["metric"]["kind"] == "cpu.scale" and "gpu_uuid" not in info["metric"]
    # a join on the info series (as with dcgm-exporter's UUID): frames per second labelled with the kind
    joined = server.query(f"rate(shmpiped_worker_frames_total{{{selector}}}[30s]) * on (instance, pipeline, worker) "
                          f"group_left (kind) shmpiped_worker_info")
    assert [r["metric"]["kind"] for r in joined] == ["cpu.scale"]
    # timestamps: a worker fed at 1 kHz completed a frame within the last few scrapes
    assert 0 <= server.value(f"time() - shmpiped_worker_last_frame_timestamp_seconds{{{selector}}}") < 5
    assert 0 <= server.value(f"time() - shmpiped_worker_heartbeat_timestamp_seconds{{{selector}}}") < 5
    assert server.value(f'shmpiped_latency_budget_seconds{{pipeline="{namespace}"}}') == 0.002
    from .promql_catalogue import dashboard_queries, substitute

    [jitter] = [e for _, panel, e in dashboard_queries() if panel == "Jitter" and "squared" in e]
    value = server.value(substitute(jitter, namespace, "stage", instance=f"127.0.0.1:{daemon.port}"))
    window = server.value(f"shmpiped_worker_jitter_rms_seconds{{{selector}}}")
    assert value is not None and 0 < value < 0.01 and window is not None and 0 < window < 0.01


# ---------------------------------------------------------------------- real time (issue 13)


@pytest.fixture
def monitored_realtime(tmp_path, namespace, daemons):
    """A daemon whose worker runs SCHED_FIFO 50 with locked memory, scraped every second."""
    from shmpiped.config import PipelineConfig
    from shmpiped.realtime import privilege_problems

    from .conftest import unavailable

    path = tmp_path / "p.yaml"
    write_pipeline(path, namespace, rate=500)
    path.write_text(path.read_text() + "realtime: {policy: fifo, priority: 50, lock_memory: true, required: true}\n")
    problems = privilege_problems(PipelineConfig.from_yaml(str(path)))
    if problems:
        unavailable("needs CAP_SYS_NICE and CAP_IPC_LOCK (run as root): " + "; ".join(problems), "real-time metrics")
    daemon = daemons(path, namespace, tmp_path)
    daemon.wait_ready()
    server = PrometheusServer(tmp_path, f"127.0.0.1:{daemon.port}")
    try:
        wait_for(lambda: _up(server), timeout=60, interval=0.5)
        wait_for(lambda: (server.value("count_over_time(shmpiped_worker_cpu_seconds_total[1m])") or 0) >= 8,
                 timeout=60, interval=0.5)
        yield daemon, server
    finally:
        server.stop()


def test_real_time_panels_and_alert_see_the_real_time_worker(monitored_realtime, namespace):
    """The worker dashboard's real-time panels return the worker's series, and the alert's selector picks it
    (and only the condition it watches keeps it quiet: a healthy fifo worker is not preempted)."""
    from .promql_catalogue import alert_expressions, dashboard_queries, substitute

    daemon, server = monitored_realtime
    selector = f'pipeline="{namespace}",worker="stage"'
    assert server.value(f"shmpiped_worker_scheduling_policy{{{selector},state=\"fifo\"}}") == 1.0
    assert server.value(f"shmpiped_worker_realtime_priority{{{selector}}}") == 50.0
    assert server.value(f"shmpiped_worker_memory_locked_bytes{{{selector}}}") > 64 << 20
    # The counters move while frames flow: the loop parks on its input, the process uses CPU.
    assert server.value(f"rate(shmpiped_worker_voluntary_context_switches_total{{{selector}}}[30s])") > 0
    assert server.value(f"rate(shmpiped_worker_cpu_seconds_total{{{selector}}}[30s])") > 0
    realtime_panels = [(panel, expr) for uid, panel, expr in dashboard_queries()
                       if "shmpiped_worker_scheduling_policy" in expr or "page_faults" in expr
                       or "context_switches" in expr or "cpu_seconds" in expr or "realtime_priority" in expr]
    assert len(realtime_panels) >= 6
    for panel, expr in realtime_panels:
        result = server.query(substitute(expr, namespace, "stage", instance=f"127.0.0.1:{daemon.port}"))
        assert result, (panel, expr)
    # The policy panel shows fifo: its code is fifo's position in the list (2).
    [(_, policy)] = [(p, e) for p, e in realtime_panels if p == "Scheduling policy"]
    assert [float(r["value"][1]) for r in server.query(
        substitute(policy, namespace, "stage", instance=f"127.0.0.1:{daemon.port}"))] == [2.0]
    [expr] = [e for name, e in alert_expressions() if name == "ShmpipedRealtimeWorkerDisturbed"]
    watched = expr.rstrip().rsplit("and on (instance, job, pipeline, worker)", 1)[1]
    assert [r["metric"]["worker"] for r in server.query(watched)] == ["stage"]
    assert server.query(expr) == []
