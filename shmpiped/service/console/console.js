// shmpiped web console: polls /status, draws /graph, follows /events (SSE), previews streams from
// /preview/STREAM.png|.json, and sends control commands with a bearer token typed by the user.
// No framework, no build step, nothing fetched from elsewhere; the token lives in this page's memory only.
"use strict";

(function () {
  const STATUS_PERIOD_MS = 1000;
  const MAX_EVENTS = 200;
  const FAILURE_EVENT = /fail|error|damaged|exhausted/;
  // Event names the daemon sends on /events; EventSource delivers named events only to listeners by name.
  const EVENT_NAMES = [
    "state", "worker", "failure", "restart", "reload", "command", "message", "event", "state_changed", "status", "reloaded",
    "reconfigured", "worker_failed", "worker_restarted", "worker_stopped", "worker_started", "kernel_added",
    "source_failed", "source_restarted", "sink_failed", "overrun_burst", "segment_damaged",
    "stale_segments_removed", "streams_prefaulted", "synthetic_input_started", "synthetic_input_stopped",
    "restart_budget_exhausted", "service_error", "health_changed", "daemon", "shutdown",
  ];

  const page = {
    token: null,
    status: null,
    graph: null,
    graphKey: null,
    events: null,
    seenFailures: new Set(),
    previewTimer: null,
    previewUrl: null,
    previewBusy: false,
    selected: null,
  };

  const $ = (id) => document.getElementById(id);

  function element(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  // -- HTTP --------------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (page.token) headers.Authorization = "Bearer " + page.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, cache: "no-store", credentials: "omit",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      return { ok: false, status: 0, detail: "the daemon does not answer (" + error.message + ")" };
    }
    const type = response.headers.get("Content-Type") || "";
    let data = null;
    if (type.startsWith("application/json")) data = await response.json().catch(() => null);
    else if (type.startsWith("image/")) data = await response.blob();
    else data = await response.text();
    const detail = data && typeof data === "object" && "detail" in data ? String(data.detail) : null;
    return { ok: response.ok, status: response.status, data, detail };
  }

  function banner(text) {
    const node = $("banner");
    node.hidden = !text;
    node.textContent = text || "";
  }

  // -- formatting ------------------------------------------------------------------------------
  function micros(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    if (value >= 1e6) return (value / 1e6).toFixed(2) + " s";
    if (value >= 1000) return (value / 1000).toFixed(value >= 1e4 ? 1 : 2) + " ms";
    return value.toFixed(value >= 100 ? 0 : 1) + " µs";
  }

  function rate(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " Hz";
  }

  function number(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 1e5 || (Math.abs(value) < 1e-3 && value !== 0) ? value.toExponential(3)
      : value.toPrecision(5).replace(/\.?0+$/, "");
  }

  function clock(seconds) {
    const when = seconds ? new Date(seconds * 1000) : new Date();
    return when.toTimeString().slice(0, 8);
  }

  function realtimeText(realtime) {
    const effective = (realtime && realtime.effective) || {};
    const parts = [];
    const policy = effective.policy || "other";
    parts.push(policy === "fifo" || policy === "rr" ? policy.toUpperCase() + " " + effective.priority : policy);
    if (effective.cpus && effective.cpus.length) parts.push("cpu " + effective.cpus.join(","));
    if (effective.memory_locked_bytes) parts.push("mlock");
    if (effective.wait && effective.wait !== "futex") parts.push(effective.wait);
    return parts.join(" · ");
  }

  // Rows are updated in place when the same keys come back, so a button or row being clicked is never
  // replaced under the pointer (a press and release on two different elements is no click).
  function updateRows(body, rows, key) {
    const current = [...body.rows];
    const same = rows.length === current.length && rows.every((row, i) =>
      row.getAttribute(key) !== null && current[i].getAttribute(key) === row.getAttribute(key));
    if (!same) {
      body.replaceChildren(...rows);
      return;
    }
    rows.forEach((row, i) => {
      const target = current[i];
      target.className = row.className;
      [...row.cells].forEach((cell, j) => {
        const old = target.cells[j];
        const button = old.querySelector("button");
        if (button) button.disabled = cell.querySelector("button").disabled;
        else if (old.outerHTML !== cell.outerHTML) target.replaceChild(cell, old);
      });
    });
  }

  // -- status ------------------------------------------------------------------------------------
  async function refreshStatus() {
    const answer = await api("GET", "/status");
    if (!answer.ok) {
      $("pipeline-state").textContent = "unreachable";
      $("pipeline-state").setAttribute("data-health", "down");
      if (answer.status === 401) banner("This daemon requires a read token: enter it above.");
      else banner(answer.detail || ("GET /status: " + (answer.status || "no answer")));
      return;
    }
    banner(null);
    const status = answer.data;
    page.status = status;
    renderHeader(status);
    renderWorkers(status);
    renderLatency(status);
    renderStreams(status);
    noteFailures(status.failures || []);
    const key = status.namespace + "@" + ((status.daemon || {}).last_reload_success_time || "");
    if (key !== page.graphKey) {
      page.graphKey = key;
      await loadGraph(status);
    } else {
      colourGraph(status);
    }
  }

  function renderHeader(status) {
    $("pipeline-name").textContent = status.namespace || "pipeline";
    const state = $("pipeline-state");
    state.textContent = status.state || "?";
    state.setAttribute("data-health", status.state || "idle");
    const summary = status.summary || {};
    const parts = [summary.workers_total + " workers", summary.active_workers + " active"];
    if (summary.failed_workers) parts.push(summary.failed_workers + " failed");
    if (summary.paused_workers) parts.push(summary.paused_workers + " paused");
    if (summary.sources_total) parts.push(summary.sources_total + (summary.sources_total === 1 ? " source" : " sources"));
    const daemon = status.daemon || {};
    if (daemon.started_at) parts.push("up " + Math.round(Date.now() / 1000 - daemon.started_at) + " s");
    $("pipeline-summary").textContent = parts.join(" · ");
  }

  function renderWorkers(status) {
    const body = $("workers").tBodies[0];
    const rows = [];
    for (const [name, worker] of Object.entries(status.workers || {})) {
      const restart = element("button", { className: "small needs-token", text: "Restart", title: "restart " + name });
      restart.disabled = !page.token;
      restart.addEventListener("click", () => command("/commands/restart", { worker: name }, "restart " + name));
      const problems = ((worker.realtime || {}).problems || []).join("; ");
      rows.push(element("tr", { "data-worker": name }, [
        element("td", { text: name }),
        element("td", { className: "kind", text: worker.kind || "", title: worker.kind || "" }),
        element("td", {}, [element("span", { className: "badge", text: worker.health || "?",
                                             "data-health": worker.health || "idle" })]),
        element("td", { className: "num", text: micros(worker.avg_exec_us) }),
        element("td", { className: "num", text: micros(worker.jitter_us_rms) }),
        element("td", { className: "num", text: micros(worker.p99_exec_us) }),
        element("td", { className: "num", text: rate(worker.throughput_hz) }),
        element("td", { className: "num", text: String(worker.restarts || 0) }),
        element("td", { className: "rt", text: realtimeText(worker.realtime) + (problems ? " ⚠" : ""),
                        title: problems }),
        element("td", {}, [restart]),
      ]));
    }
    if (!rows.length) rows.push(element("tr", {}, [element("td", { className: "empty", colSpan: 10,
                                                                    text: "no workers" })]));
    updateRows(body, rows, "data-worker");
  }

  function renderLatency(status) {
    const body = $("latency").tBodies[0];
    const budget = (status.daemon || {}).latency_budget_s;
    const rows = [];
    for (const [stream, entry] of Object.entries(status.end_to_end || {})) {
      const p99 = element("td", { className: "num", text: micros(entry.p99_us) });
      if (budget && entry.p99_us > budget * 1e6) p99.classList.add("over-budget");
      rows.push(element("tr", {}, [
        element("td", { text: stream }), element("td", { className: "kind", text: entry.producer || "" }),
        element("td", { className: "num", text: micros(entry.p50_us) }),
        element("td", { className: "num", text: micros(entry.p90_us) }), p99,
        element("td", { className: "num", text: micros(entry.max_us) }),
        element("td", { className: "num", text: String(entry.samples || 0) }),
      ]));
    }
    if (!rows.length) rows.push(element("tr", {}, [element("td", { className: "empty", colSpan: 7,
                                                                    text: "no sink stream yet" })]));
    body.replaceChildren(...rows);
    $("latency-budget").textContent = budget ? "latency budget " + micros(budget * 1e6) +
      " (p99 above it in red)" : "";
  }

  function renderStreams(status) {
    const now = Date.now() / 1000;
    const specs = new Map(((page.graph || status.graph || {}).shared_memory || []).map((s) => [s.name, s]));
    const previous = page.streamCounts || {};
    const counts = {};
    const rows = [];
    for (const [name, stream] of Object.entries(status.streams || {})) {
      const spec = specs.get(name) || {};
      const before = previous[name];
      counts[name] = [stream.count, status.timestamp || now, before ? before[2] : null];
      if (before && (status.timestamp || now) > before[1]) {
        counts[name][2] = (stream.count - before[0]) / ((status.timestamp || now) - before[1]);
      }
      const age = stream.write_time ? Math.max(0, (status.timestamp || now) - stream.write_time) : null;
      const storage = stream.storage === "gpu" ? "gpu" + (stream.cpu_mirror ? " + mirror" : "") : stream.storage;
      const row = element("tr", { "data-stream": name, className: name === page.selected ? "selected" : "" }, [
        element("td", { text: name }),
        element("td", { className: "kind", text: ((spec.shape || []).join("×") || "scalar") + " " + (spec.dtype || "") }),
        element("td", { className: "kind", text: stream.role || spec.role || "" }),
        element("td", { className: "kind", text: (storage || "") + (stream.damaged ? " ⚠ damaged" : "") }),
        element("td", { className: "num", text: String(stream.count) }),
        element("td", { className: "num", text: counts[name][2] === null ? "–" : rate(counts[name][2]) }),
        element("td", { className: "num", text: age === null ? "never" : micros(age * 1e6) + " ago" }),
      ]);
      row.addEventListener("click", () => selectPreview(name));
      rows.push(row);
    }
    page.streamCounts = counts;
    updateRows($("streams").tBodies[0], rows, "data-stream");
  }

  // -- graph ------------------------------------------------------------------------------------
  async function loadGraph(status) {
    const answer = await api("GET", "/graph");
    page.graph = answer.ok && answer.data && answer.data.kernels ? answer.data : status.graph;
    if (!page.graph) return;
    window.shmpipedGraph.draw($("graph"), $("legend"), page.graph, selectPreview);
    colourGraph(status);
    fillStreamChoices(page.graph);
  }

  function colourGraph(status) {
    window.shmpipedGraph.colour($("graph"), status, page.selected);
  }

  // -- preview ------------------------------------------------------------------------------------
  function fillStreamChoices(graph) {
    const streams = (graph.shared_memory || []).map((s) => s.name);
    const choice = $("preview-stream");
    const previous = page.selected || choice.value;
    choice.replaceChildren(...(graph.shared_memory || []).map((s) =>
      element("option", { value: s.name, text: `${s.name}  [${(s.shape || []).join("×") || "scalar"} ${s.dtype}]` })));
    const sinks = graph.sink_streams || [];
    page.selected = streams.includes(previous) ? previous : (streams.find((s) => !sinks.includes(s)) || streams[0] || null);
    if (page.selected) choice.value = page.selected;
    const writable = (graph.shared_memory || []).filter((s) => !(s.producers || []).length).map((s) => s.name);
    const synthetic = $("synthetic-stream");
    synthetic.replaceChildren(...writable.map((name) => element("option", { value: name, text: name })));
    schedulePreview();
  }

  function selectPreview(name) {
    page.selected = name;
    $("preview-stream").value = name;
    if (page.status) colourGraph(page.status);
    for (const row of document.querySelectorAll("#streams tbody tr")) {
      row.classList.toggle("selected", row.getAttribute("data-stream") === name);
    }
    schedulePreview(true);
  }

  function schedulePreview(now) {
    clearTimeout(page.previewTimer);
    const hz = Number($("preview-rate").value);
    if (now || !page.previewUrl) refreshPreview();
    if (hz > 0) page.previewTimer = setTimeout(() => { refreshPreview(); schedulePreview(); }, 1000 / hz);
  }

  async function refreshPreview() {
    const name = page.selected;
    if (!name || page.previewBusy) return;
    page.previewBusy = true;
    try {
      const hz = Math.max(1, Number($("preview-rate").value));
      const encoded = encodeURIComponent(name);
      const summary = await api("GET", `/preview/${encoded}.json?max_hz=${hz}`);
      if (name !== page.selected) return;
      const image = $("preview-image"), value = $("preview-value"), info = $("preview-info");
      if (!summary.ok) {
        image.hidden = true; value.hidden = true;
        info.textContent = summary.detail || ("preview unavailable (" + summary.status + ")");
        return;
      }
      const data = summary.data;
      const shape = data.shape || [];
      const parts = [`count ${data.count}`];
      if (data.age_s !== null && data.age_s !== undefined) parts.push(`age ${micros(data.age_s * 1e6)}`);
      if (data.min !== null && shape.reduce((a, b) => a * b, 1) > 1) parts.push(`range ${number(data.min)} … ${number(data.max)}`);
      if (data.slice) parts.push(`slice ${data.slice}`);
      info.textContent = parts.join(" · ");
      const single = shape.reduce((a, b) => a * b, 1) === 1;  // a 0-D stream, or one value: the number
      if (single) {
        value.textContent = number(Array.isArray(data.values) ? data.values[0] : data.values);
        value.setAttribute("data-stream", name);
        value.setAttribute("data-count", String(data.count));
        value.hidden = false; image.hidden = true;
        $("preview-frame").classList.remove("plot");
        return;
      }
      const frame = $("preview-frame");
      const width = Math.min(1024, Math.max(64, Math.ceil(frame.clientWidth * (window.devicePixelRatio || 1) / 64) * 64));
      const picture = await api("GET", `/preview/${encoded}.png?width=${width}&max_hz=${hz}`);
      if (name !== page.selected) return;
      if (!picture.ok || !(picture.data instanceof Blob)) {
        info.textContent = picture.detail || ("preview unavailable (" + picture.status + ")");
        return;
      }
      const url = URL.createObjectURL(picture.data);
      const old = page.previewUrl;
      page.previewUrl = url;
      image.className = shape.length >= 2 ? "image2d" : "plot";
      frame.classList.toggle("plot", shape.length < 2);
      image.setAttribute("data-count", String(data.count));
      image.setAttribute("data-stream", name);
      image.src = url;
      image.hidden = false; value.hidden = true;
      if (old) setTimeout(() => URL.revokeObjectURL(old), 2000);
    } finally {
      page.previewBusy = false;
    }
  }

  // -- events ---------------------------------------------------------------------------------------
  function lastLine(text) {
    return String(text || "").trim().split("\n").pop();
  }

  function eventText(name, data) {
    if (!data || typeof data !== "object") return data === undefined ? "" : String(data);
    if (name === "worker" && data.worker) return `${data.worker}: ${data.previous || "new"} → ${data.health}`;
    if (name === "state" && data.state) return `pipeline ${data.previous || "?"} → ${data.state}`;
    if (name === "restart" && data.workers) return "restarted " + data.workers.join(", ");
    if (name === "reload") return data.ok === false ? "reload failed: " + lastLine(data.error)
      : "reloaded (document revision " + data.document_revision + ")";
    if (name === "command" && data.command) {
      const what = [data.command, data.action, data.worker, data.stream].filter(Boolean).join(" ");
      const outcome = data.ok === false ? " refused: " + lastLine(data.error || data.detail) : "";
      return what + outcome + (data.peer ? "  (" + (data.via || "") + " " + data.peer + ")" : "");
    }
    if (data.kernel && data.error) return `${data.kernel}: ${lastLine(data.error)}`;
    const parts = [];
    for (const [key, value] of Object.entries(data)) {
      if (["time", "timestamp", "type", "snapshot"].includes(key) || value === null) continue;
      let text = typeof value === "object" ? JSON.stringify(value) : String(value);
      if (key === "error" || key === "traceback") text = lastLine(text);
      parts.push(key + "=" + text);
    }
    return parts.join("  ").slice(0, 400);
  }

  function addEvent(name, data, when) {
    const list = $("events");
    const empty = list.querySelector("li.empty");
    if (empty) empty.remove();
    const failure = FAILURE_EVENT.test(name) || Boolean(data && typeof data === "object" && (
      (data.type && FAILURE_EVENT.test(data.type)) || data.health === "failed" || data.state === "failed" ||
      data.ok === false));
    const text = eventText(name, data);
    list.prepend(element("li", { className: failure ? "failure" : "", title: text }, [
      element("span", { className: "time", text: clock(when || (data && (data.time || data.timestamp))) }),
      element("span", { className: "name", text: name }),
      element("span", { className: "text", text }),
    ]));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function noteFailures(failures) {
    for (const failure of failures) {
      const key = JSON.stringify([failure.kernel, failure.time, failure.type]);
      if (page.seenFailures.has(key)) continue;
      page.seenFailures.add(key);
      addEvent(failure.type || "failure", failure, failure.time);
    }
  }

  function connectEvents() {
    if (page.events) page.events.close();
    const url = "/events" + (page.token ? "?access_token=" + encodeURIComponent(page.token) : "");
    const source = new EventSource(url);
    page.events = source;
    const state = $("events-state");
    state.textContent = "connecting…";
    source.onopen = () => { state.textContent = "live"; };
    source.onerror = () => {
      state.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
    };
    const handle = (message) => {
      let data = message.data;
      try { data = JSON.parse(message.data); } catch (error) { /* plain text */ }
      if (message.type === "snapshot") {
        state.textContent = "live";
        return;  // the state it carries is drawn from /status
      }
      addEvent(message.type === "message" ? (data && data.type) || "event" : message.type, data);
      if (page.status) setTimeout(refreshStatus, 50);
    };
    for (const name of EVENT_NAMES.concat(["snapshot"])) source.addEventListener(name, handle);
  }

  // -- commands -----------------------------------------------------------------------------------------
  async function command(path, body, what) {
    const result = $("command-result");
    result.className = "command-result muted";
    result.textContent = what + "…";
    const answer = await api("POST", path, body === undefined ? {} : body);
    result.className = "command-result " + (answer.ok ? "ok" : "error");
    result.textContent = answer.ok ? what + ": done" : what + " refused (" + answer.status + "): " +
      (answer.detail || "no detail");
    await refreshStatus();
  }

  function setToken(token) {
    page.token = token || null;
    for (const button of document.querySelectorAll(".needs-token")) button.disabled = !page.token;
    $("command-result").className = "command-result muted";
    $("command-result").textContent = page.token ? "token set (this page only)"
      : "Enter a control token (top right) to use these buttons.";
    connectEvents();
    refreshStatus();
  }

  function wire() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setToken($("token-input").value.trim());
      $("token-input").value = "";
    });
    $("token-forget").addEventListener("click", () => setToken(null));
    for (const button of document.querySelectorAll("button[data-command]")) {
      const name = button.getAttribute("data-command");
      button.addEventListener("click", () => command("/commands/" + name, {}, name));
    }
    $("cmd-synthetic-start").addEventListener("click", () => {
      const stream = $("synthetic-stream").value;
      const body = { stream_name: stream, pattern: $("synthetic-pattern").value };
      const hz = Number($("synthetic-rate").value);
      if (hz > 0) body.rate_hz = hz;
      command("/synthetic/start", body, "synthetic input on " + stream);
    });
    $("cmd-synthetic-stop").addEventListener("click", () => {
      const stream = $("synthetic-stream").value;
      command("/synthetic/stop", { stream_name: stream }, "stop synthetic input on " + stream);
    });
    $("preview-stream").addEventListener("change", (event) => selectPreview(event.target.value));
    $("preview-rate").addEventListener("change", () => schedulePreview(true));
    $("events").append(element("li", { className: "empty", text: "no event yet" }));
  }

  async function statusLoop() {
    await refreshStatus();
    setTimeout(statusLoop, STATUS_PERIOD_MS);
  }

  wire();
  connectEvents();
  statusLoop();
})();
