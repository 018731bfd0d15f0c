#!/usr/bin/env python3
"""shmpiped's Grafana dashboards as code: plain dicts written as JSON.

    python grafana/build.py            # (re)write grafana/dashboards/*.json
    python grafana/build.py --check    # exit 1 if a committed file differs from this code

The JSON files are generated: change this file and rerun it, never edit them
by hand (tests/test_grafana.py fails when they are out of date).  Standard
library only, so that it runs anywhere the repository is checked out.

Conventions (the metric catalogue is docs/metrics.md):

* every panel and query uses the ``$datasource`` variable
  (``{"type": "prometheus", "uid": "${datasource}"}``); uids are stable;
* ``$job`` and ``$instance`` select one daemon (one node in a DaemonSet, where
  every node runs the same ``pipeline``): every selector carries both and
  every aggregation keeps ``instance`` in its ``by (...)``, so that no panel
  mixes two daemons; ``$pipeline`` is the pipeline's namespace, ``$worker``
  one of its workers;
* the latency budget is the daemon's ``shmpiped_latency_budget_seconds``
  (``shmpiped run --latency-budget``), never a constant here;
* rates use ``$__rate_interval`` (the provisioned datasource declares the 5 s
  scrape interval, so it spans at least four scrapes), totals over the
  dashboard's range use ``$__range``;
* quantiles come from the histograms with ``histogram_quantile()``;
* state-set metrics (one 0/1 series per state) are drawn by turning the
  current state into its position in the state list, which value mappings
  turn back into the state's name and colour.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["shmpiped"]
OVERVIEW_UID = "shmpiped-overview"
WORKER_UID = "shmpiped-worker"

#: ``shmpiped.service.metrics.PIPELINE_STATES`` and ``WORKER_HEALTH_STATES`` (a test keeps them equal),
#: each with its colour.
PIPELINE_STATES = {
    "initialized": "blue",
    "built": "light-blue",
    "running": "green",
    "paused": "purple",
    "failed": "red",
    "stopped": "orange",
}
WORKER_HEALTH_STATES = {
    "starting": "blue",
    "waiting-input": "light-blue",
    "active": "green",
    "idle": "yellow",
    "paused": "purple",
    "failed": "red",
    "stopped": "orange",
}

#: ``shmpiped.service.metrics.SCHEDULING_POLICIES`` (shmpiped_worker_scheduling_policy's states), each with
#: its colour: the real-time policies stand out.
SCHEDULING_POLICIES = {
    "other": "text",
    "fifo": "green",
    "rr": "green",
    "batch": "orange",
    "idle": "orange",
    "deadline": "purple",
}

DAEMON = 'job="$job", instance="$instance"'
PIPELINE = f'{DAEMON}, pipeline="$pipeline"'
WORKER = f'{PIPELINE}, worker="$worker"'
#: The budget series, drawn on the latency panels (the alert reads the same series).
BUDGET = f"shmpiped_latency_budget_seconds{{{PIPELINE}}}"


# ---------------------------------------------------------------------- queries


def state_code(metric: str, states: dict[str, str], selector: str, by: str) -> str:
    """The current state's 1-based position in ``states``, per ``by`` labels (``instance`` always among them)."""
    terms = [f'({metric}{{{selector}, state="{state}"}} == 1) * {code}'
             for code, state in enumerate(states, start=1)]
    return f"max by (instance, {by}) (\n  " + "\n  or ".join(terms) + "\n)"


def quantile(q: float, histogram: str, selector: str, by: str) -> str:
    return (f"histogram_quantile({q}, sum by (instance, {by}, le) "
            f"(rate({histogram}_bucket{{{selector}}}[$__rate_interval])))")


def jitter(histogram: str, selector: str) -> str:
    """Standard deviation of a histogram's observations over the rate interval, from its ``_sum`` and
    ``_count`` and the ``<name>_squared_total`` counter (E[x^2] - E[x]^2, clamped at 0 against rounding)."""
    rate = lambda series: f"rate({series}{{{selector}}}[$__rate_interval])"  # noqa: E731
    count = rate(f"{histogram}_count")
    return (f"sqrt(clamp_min(\n  {rate(histogram + '_squared_total')} / {count}\n"
            f"  - ({rate(histogram + '_sum')} / {count}) ^ 2,\n  0))")


def state_mappings(states: dict[str, str]) -> list[dict]:
    options = {str(code): {"text": state, "color": colour, "index": code - 1}
               for code, (state, colour) in enumerate(states.items(), start=1)}
    return [{"type": "value", "options": options}]


# ---------------------------------------------------------------------- panels


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def _panel(kind: str, title: str, description: str, targets: list[dict], width: int, height: int,
           field_config: dict, options: dict) -> dict:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width},
        "fieldConfig": field_config,
        "options": options,
        "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
    }


def _thresholds(*steps: tuple[float | None, str]) -> dict:
    return {"mode": "absolute", "steps": [{"color": colour, "value": value} for value, colour in steps]}


def timeseries(title: str, description: str, targets: list[dict], unit: str, width: int = 12,
               height: int = 8, *, bars: bool = False, decimals: int | None = None,
               threshold: float | None = None, overrides: list[dict] | None = None,
               links: list[dict] | None = None) -> dict:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisSoftMin": 0,
        "thresholdsStyle": {"mode": "off" if threshold is None else "dashed"},
    }
    defaults: dict = {"unit": unit, "color": {"mode": "palette-classic"}, "custom": custom}
    if threshold is None:
        defaults["thresholds"] = _thresholds((None, "green"))
    else:
        defaults["thresholds"] = _thresholds((None, "green"), (threshold, "red"))
    if decimals is not None:
        defaults["decimals"] = decimals
    if links:
        defaults["links"] = links
    options = {
        "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                   "calcs": ["mean", "lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, targets, width, height,
                  {"defaults": defaults, "overrides": overrides or []}, options)


def stat(title: str, description: str, targets: list[dict], unit: str, width: int, height: int = 4, *,
         thresholds: dict | None = None, mappings: list[dict] | None = None, decimals: int | None = None,
         text_mode: str = "value", color_mode: str = "value", transformations: list[dict] | None = None) -> dict:
    defaults: dict = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "green")),
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
    }
    panel = _panel("stat", title, description, targets, width, height,
                   {"defaults": defaults, "overrides": []}, options)
    if transformations:
        panel["transformations"] = transformations
    return panel


def threshold_from(series: str, ref_id: str) -> dict:
    """A transformation that turns query ``ref_id``'s value (named ``series``) into the panel's red threshold,
    so that a threshold follows a metric (the latency budget) instead of a constant."""
    return {"id": "configFromData",
            "options": {"configRefId": ref_id, "applyTo": {"id": "byFrameRefID", "options": "A"},
                        "mappings": [{"fieldName": series, "handlerKey": "threshold1"}]}}


def state_timeline(title: str, description: str, targets: list[dict], states: dict[str, str],
                   width: int = 24, height: int = 7) -> dict:
    defaults = {
        "color": {"mode": "thresholds"},
        "thresholds": _thresholds((None, "text")),
        "mappings": state_mappings(states),
        "custom": {"fillOpacity": 80, "lineWidth": 0},
    }
    options = {
        "showValue": "never",
        "mergeValues": True,
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return _panel("state-timeline", title, description, targets, width, height,
                  {"defaults": defaults, "overrides": []}, options)


def heatmap(title: str, description: str, targets: list[dict], unit: str, width: int = 12,
            height: int = 8) -> dict:
    options = {
        "calculate": False,
        "yAxis": {"unit": unit, "axisPlacement": "left"},
        "rowsFrame": {"layout": "le"},
        "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                  "steps": 64, "fill": "dark-orange", "reverse": False},
        "cellGap": 1,
        "filterValues": {"le": 1e-9},
        "showValue": "never",
        "legend": {"show": True},
        "tooltip": {"mode": "single", "yHistogram": False},
    }
    return _panel("heatmap", title, description, targets, width, height,
                  {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
                  options)


def dashed(series: str) -> dict:
    """An override drawing the series named ``series`` as a dashed grey reference line."""
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "text"}},
        ],
    }


# ---------------------------------------------------------------------- dashboards


def _place(panels: list[dict]) -> list[dict]:
    """Flow panels left to right in rows of 24 columns; give them ids in order."""
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        panel["id"] = number
    return panels


def datasource_variable() -> dict:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": 0,
        "refresh": 2,   # on time range change: pipelines and workers come and go
        "regex": "",
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "options": [],
    }


JOB_VARIABLE = query_variable("job", "Job", "label_values(shmpiped_build_info, job)")
INSTANCE_VARIABLE = query_variable("instance", "Instance", 'label_values(shmpiped_build_info{job="$job"}, instance)')
PIPELINE_VARIABLE = query_variable("pipeline", "Pipeline",
                                   f"label_values(shmpiped_pipeline_state{{{DAEMON}}}, pipeline)")
WORKER_VARIABLE = query_variable("worker", "Worker", f"label_values(shmpiped_worker_health{{{PIPELINE}}}, worker)")
DAEMON_VARIABLES = [JOB_VARIABLE, INSTANCE_VARIABLE, PIPELINE_VARIABLE]


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "id": None,
        "version": 1,
        "schemaVersion": 39,
        "editable": True,
        "graphTooltip": 1,   # shared crosshair
        "liveNow": False,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": [{
            "title": "shmpiped",
            "type": "dashboards",
            "tags": TAGS,
            "asDropdown": False,
            "includeVars": True,
            "keepTime": True,
            "targetBlank": False,
            "icon": "external link",
            "tooltip": "",
            "url": "",
        }],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": _place(panels),
    }


def overview() -> dict:
    worker_link = {
        "title": "Worker ${__field.labels.worker}",
        "url": f"/d/{WORKER_UID}/shmpiped-worker?${{datasource:queryparam}}&${{job:queryparam}}"
               "&${instance:queryparam}&${pipeline:queryparam}"
               "&var-worker=${__field.labels.worker}&${__url_time_range}",
    }
    panels = [
        stat("Pipeline state", "The pipeline's lifecycle state (shmpiped_pipeline_state).",
             [target(state_code("shmpiped_pipeline_state", PIPELINE_STATES, PIPELINE, "pipeline"),
                     "{{pipeline}}", instant=True)],
             "none", 4, mappings=state_mappings(PIPELINE_STATES), color_mode="background"),
        stat("Workers by health", "How many workers are in each health state now.",
             [target(f"sum by (instance, state) (shmpiped_worker_health{{{PIPELINE}}}) > 0", "{{state}}",
                     instant=True)],
             "none", 5, text_mode="value_and_name", decimals=0),
        stat("Loop rate now", "Throughput of the slowest worker over its last 1000 frames: the rate the loop "
             "closes at.", [target(f"min by (instance) (shmpiped_worker_throughput_hertz{{{PIPELINE}}})",
                                   "loop rate", instant=True)],
             "hertz", 4),
        stat("End-to-end p99", "Worst p99 latency from a frame's origin to a sink stream, over the rate "
             "interval; red above the daemon's latency budget (shmpiped_latency_budget_seconds, "
             "`shmpiped run --latency-budget`), which the alert rule reads too.",
             [target("max by (instance) "
                     f"({quantile(0.99, 'shmpiped_end_to_end_latency_seconds', PIPELINE, 'stream')})",
                     "p99", instant=True),
              target(BUDGET, "budget", instant=True)],
             "s", 4, thresholds=_thresholds((None, "green"), (0.002, "red")),
             transformations=[threshold_from("budget", "B")]),
        stat("Restarts in range", "Worker restarts in the dashboard's time range.",
             [target(f"sum by (instance) (increase(shmpiped_worker_restarts_total{{{PIPELINE}}}[$__range]))",
                     "restarts",
                     instant=True)],
             "none", 3, decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Failures in range", "Component failures (workers, sources, sinks) in the dashboard's time range.",
             [target(f"sum by (instance) (increase(shmpiped_pipeline_failures_total{{{PIPELINE}}}[$__range]))",
                     "failures",
                     instant=True)],
             "none", 4, decimals=0, thresholds=_thresholds((None, "green"), (1, "red"))),
        state_timeline("Worker health", "Each worker's health over time (shmpiped_worker_health): "
                       + ", ".join(WORKER_HEALTH_STATES) + ".",
                       [target(state_code("shmpiped_worker_health", WORKER_HEALTH_STATES, PIPELINE, "worker"),
                               "{{worker}}")],
                       WORKER_HEALTH_STATES),
        timeseries("Loop rate", "Each worker's throughput over its last 1000 frames, and the daemon's "
                   "--target-rate when set.",
                   [target(f"shmpiped_worker_throughput_hertz{{{PIPELINE}}}", "{{worker}}"),
                    target(f"shmpiped_pipeline_target_rate_hertz{{{PIPELINE}}}", "target")],
                   "hertz", overrides=[dashed("target")]),
        timeseries("Stream publications", "Publications per second on each stream.",
                   [target(f"rate(shmpiped_stream_frames_total{{{PIPELINE}}}[$__rate_interval])", "{{stream}}")],
                   "hertz"),
        timeseries("End-to-end latency", "p50 and p99 latency from a frame's origin to its publication on "
                   "each sink stream (from the histogram); the dashed line is the daemon's latency budget "
                   "(shmpiped_latency_budget_seconds).",
                   [target(quantile(0.5, "shmpiped_end_to_end_latency_seconds", PIPELINE, "stream"),
                           "{{stream}} p50"),
                    target(quantile(0.99, "shmpiped_end_to_end_latency_seconds", PIPELINE, "stream"),
                           "{{stream}} p99"),
                    target(BUDGET, "budget")],
                   "s", overrides=[dashed("budget")]),
        timeseries("Exec time p99 by worker", "p99 of each worker's exec time (kernel plus publication) "
                   "from its histogram. Click a series for the worker's dashboard.",
                   [target(quantile(0.99, "shmpiped_worker_exec_seconds", PIPELINE, "worker"), "{{worker}}")],
                   "s", links=[worker_link]),
        timeseries("Restarts", "Worker restarts, and pipeline restarts by the daemon, per rate interval.",
                   [target(f"increase(shmpiped_worker_restarts_total{{{PIPELINE}}}[$__rate_interval])",
                           "{{worker}}"),
                    target(f"increase(shmpiped_pipeline_restarts_total{{{PIPELINE}}}[$__rate_interval])",
                           "pipeline")],
                   "none", 8, bars=True),
        timeseries("Failures", "Component failures (workers, sources, sinks) per rate interval.",
                   [target(f"increase(shmpiped_pipeline_failures_total{{{PIPELINE}}}[$__rate_interval])",
                           "failures")],
                   "none", 8, bars=True),
        timeseries("Overruns", "Frames each worker dropped because the writer lapped it, per rate interval.",
                   [target(f"increase(shmpiped_worker_overruns_total{{{PIPELINE}}}[$__rate_interval])",
                           "{{worker}}")],
                   "none", 8, bars=True),
    ]
    return dashboard(OVERVIEW_UID, "shmpiped / Overview",
                     "One shmpiped pipeline: state, worker health, loop rate, latency, restarts and failures.",
                     panels, DAEMON_VARIABLES)


def worker() -> dict:
    exec_hist = "shmpiped_worker_exec_seconds"
    panels = [
        stat("Health now", "The worker's health now (shmpiped_worker_health).",
             [target(state_code("shmpiped_worker_health", WORKER_HEALTH_STATES, WORKER, "worker"), "{{worker}}",
                     instant=True)],
             "none", 4, mappings=state_mappings(WORKER_HEALTH_STATES), color_mode="background"),
        stat("Throughput now", "Completion rate over the last 1000 frames.",
             [target(f"shmpiped_worker_throughput_hertz{{{WORKER}}}", "throughput", instant=True)],
             "hertz", 4),
        stat("Exec time p99 now", "p99 exec time over the rate interval, from the histogram.",
             [target(quantile(0.99, exec_hist, WORKER, "worker"), "p99", instant=True)], "s", 4),
        stat("Restarts total", "Times the worker was respawned since the daemon started.",
             [target(f"shmpiped_worker_restarts_total{{{WORKER}}}", "restarts", instant=True)],
             "none", 4, decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Overruns total", "Frames dropped since the worker process started (the writer lapped it).",
             [target(f"shmpiped_worker_overruns_total{{{WORKER}}}", "overruns", instant=True)],
             "none", 4, decimals=0, thresholds=_thresholds((None, "green"), (1, "orange"))),
        stat("Placement", "The worker's kernel kind, the CPU it is pinned to (empty when unpinned) and the UUID "
             "of its GPU (empty on the CPU), from shmpiped_worker_info; join dcgm-exporter's series on UUID.",
             [target(f"shmpiped_worker_info{{{WORKER}}}", "{{kind}} cpu {{cpu}} {{gpu_uuid}}", instant=True)],
             "none", 4, text_mode="name", thresholds=_thresholds((None, "text"))),
        state_timeline("Health over time", "The worker's health over time: " + ", ".join(WORKER_HEALTH_STATES) + ".",
                       [target(state_code("shmpiped_worker_health", WORKER_HEALTH_STATES, WORKER, "worker"),
                               "{{worker}}")],
                       WORKER_HEALTH_STATES, height=4),
        timeseries("Exec time", "Exec time (kernel plus publication of the outputs, never the wait for "
                   "input): the mean over the last 1000 frames, and p50/p99 from the histogram.",
                   [target(f"shmpiped_worker_avg_exec_seconds{{{WORKER}}}", "avg (last 1000 frames)"),
                    target(quantile(0.5, exec_hist, WORKER, "worker"), "p50"),
                    target(quantile(0.99, exec_hist, WORKER, "worker"), "p99")],
                   "s"),
        timeseries("Jitter", "Standard deviation of the exec time: over each rate interval, from the "
                   "sum-of-squares, sum and count counters, and over the last 1000 frames.",
                   [target(jitter(exec_hist, WORKER), "jitter (rate interval)"),
                    target(f"shmpiped_worker_jitter_rms_seconds{{{WORKER}}}", "jitter (last 1000 frames)")],
                   "s"),
        timeseries("Throughput", "Completion rate over the last 1000 frames, frames per second from the "
                   "counter, and the daemon's --target-rate when set.",
                   [target(f"shmpiped_worker_throughput_hertz{{{WORKER}}}", "throughput (last 1000 frames)"),
                    target(f"rate(shmpiped_worker_frames_total{{{WORKER}}}[$__rate_interval])", "frames/s"),
                    target(f"shmpiped_pipeline_target_rate_hertz{{{PIPELINE}}}", "target")],
                   "hertz", overrides=[dashed("target")]),
        heatmap("Exec time distribution", "Frames per exec-time bucket and rate interval.",
                [target(f"sum by (instance, le) (increase({exec_hist}_bucket{{{WORKER}}}[$__rate_interval]))", "{{le}}",
                        fmt="heatmap")],
                "s"),
        timeseries("Idle", "Seconds since the worker last completed a frame, and since it last touched its "
                   "telemetry record (which grows only when it hangs); from timestamps, so they keep growing "
                   "when the daemon itself stalls.",
                   [target(f"time() - shmpiped_worker_last_frame_timestamp_seconds{{{WORKER}}}", "idle"),
                    target(f"time() - shmpiped_worker_heartbeat_timestamp_seconds{{{WORKER}}}", "telemetry age")],
                   "s"),
        timeseries("Overruns", "Frames dropped per rate interval because the writer lapped the worker.",
                   [target(f"increase(shmpiped_worker_overruns_total{{{WORKER}}}[$__rate_interval])", "overruns")],
                   "none", bars=True),
        *realtime_panels(),
    ]
    return dashboard(WORKER_UID, "shmpiped / Worker",
                     "One worker of a shmpiped pipeline: exec time, jitter, throughput, idle time, overruns, "
                     "and what the kernel does to it: scheduling, context switches, page faults, CPU time.",
                     panels, [*DAEMON_VARIABLES, WORKER_VARIABLE])


def realtime_panels() -> list[dict]:
    """The worker's scheduling as the kernel holds it, and the /proc counters that explain jitter: a real-time
    worker should show its policy and priority, few involuntary switches and no major page faults (the
    ShmpipedRealtimeWorkerDisturbed alert watches those two)."""
    per_second = "rate({metric}{{%s}}[$__rate_interval])" % WORKER
    return [
        stat("Scheduling policy", "The worker process's scheduling policy as the kernel holds it "
             "(shmpiped_worker_scheduling_policy, read from /proc): fifo or rr when its pipeline's realtime block "
             "applied.",
             [target(state_code("shmpiped_worker_scheduling_policy", SCHEDULING_POLICIES, WORKER, "worker"),
                     "{{worker}}", instant=True)],
             "none", 4, mappings=state_mappings(SCHEDULING_POLICIES), color_mode="background"),
        stat("Real-time priority", "rt_priority of the worker process (1-99 under fifo or rr, 0 otherwise).",
             [target(f"shmpiped_worker_realtime_priority{{{WORKER}}}", "priority", instant=True)],
             "none", 4, decimals=0, thresholds=_thresholds((None, "text"), (1, "green"))),
        stat("Locked memory", "Memory the worker process has locked (VmLck): its whole footprint with "
             "lock_memory, 0 without.",
             [target(f"shmpiped_worker_memory_locked_bytes{{{WORKER}}}", "locked", instant=True)],
             "bytes", 4),
        stat("CPU now", "CPU time the worker process used per second over the rate interval (1 = one whole CPU; "
             "a spinning wait stays near 1).",
             [target(per_second.format(metric="shmpiped_worker_cpu_seconds_total"), "cpu", instant=True)],
             "percentunit", 4, decimals=1),
        timeseries("Context switches and page faults", "Per second: voluntary switches (the loop parked on its "
                   "input), involuntary ones (something preempted it: climbing in a real-time worker means a task "
                   "that outranks it shares its CPU), and minor and major page faults (major ones wait for I/O: "
                   "milliseconds each; lock_memory keeps both flat).",
                   [target(per_second.format(metric="shmpiped_worker_voluntary_context_switches_total"),
                           "voluntary switches"),
                    target(per_second.format(metric="shmpiped_worker_involuntary_context_switches_total"),
                           "involuntary switches"),
                    target(per_second.format(metric="shmpiped_worker_minor_page_faults_total"), "minor faults"),
                    target(per_second.format(metric="shmpiped_worker_major_page_faults_total"), "major faults")],
                   "ops"),
        timeseries("CPU time", "CPU seconds per second of the worker process (user + system, every thread), "
                   "against its real-time priority (right axis; 0: not real time).",
                   [target(per_second.format(metric="shmpiped_worker_cpu_seconds_total"), "CPU"),
                    target(f"shmpiped_worker_realtime_priority{{{WORKER}}}", "real-time priority")],
                   "percentunit", overrides=[right_axis("real-time priority", "none")]),
    ]


def right_axis(series: str, unit: str) -> dict:
    """An override drawing the series named ``series`` on a right-hand axis of its own ``unit``."""
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "unit", "value": unit},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def dashboards() -> dict[str, dict]:
    """File name -> dashboard model."""
    return {"shmpiped-overview.json": overview(), "shmpiped-worker.json": worker()}


def render(model: dict) -> str:
    return json.dumps(model, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a written file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder of the JSON files")
    args = parser.parse_args(argv)
    stale = []
    for name, model in dashboards().items():
        path = args.output / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python grafana/build.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
