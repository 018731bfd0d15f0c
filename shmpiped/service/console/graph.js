// shmpiped web console: the pipeline graph (sources -> streams -> kernels -> sinks) as SVG, laid out in
// columns by longest path, nodes coloured by health.  Loaded before console.js, which calls
// window.shmpipedGraph.draw(container, legend, graph, onStreamClick) and .colour(container, status, selected).
"use strict";

window.shmpipedGraph = (function () {
  const SVG = "http://www.w3.org/2000/svg";
  const LEGEND = ["active", "idle", "waiting-input", "paused", "failed"];

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children || []) node.append(child);
    return node;
  }

  function graphModel(graph) {
    const nodes = new Map();
    const edges = [];
    const add = (type, name) => {
      const id = type + ":" + name;
      if (!nodes.has(id)) nodes.set(id, { id, type, name, level: 0, order: nodes.size, auxOnly: false });
      return id;
    };
    for (const stream of graph.shared_memory || []) add("stream", stream.name);
    for (const source of graph.sources || []) {
      const id = add("source", source.name);
      for (const stream of source.streams || [source.stream]) edges.push({ from: id, to: add("stream", stream) });
    }
    for (const kernel of graph.kernels || []) {
      const id = add("kernel", kernel.name);
      for (const stream of kernel.inputs || [kernel.input]) edges.push({ from: add("stream", stream), to: id });
      for (const stream of Object.values(kernel.auxiliary || {})) {
        edges.push({ from: add("stream", stream), to: id, auxiliary: true });
      }
      for (const stream of kernel.outputs || [kernel.output]) edges.push({ from: id, to: add("stream", stream) });
    }
    for (const sink of graph.sinks || []) {
      const id = add("sink", sink.name);
      edges.push({ from: add("stream", sink.stream), to: id });
      for (const stream of Object.values(sink.auxiliary || {})) {
        edges.push({ from: add("stream", stream), to: id, auxiliary: true });
      }
      for (const stream of sink.outputs || []) edges.push({ from: id, to: add("stream", stream) });
    }
    // Levels: longest path over the data edges (bounded, so a feedback loop cannot spin).
    const main = edges.filter((e) => !e.auxiliary);
    for (let pass = 0; pass < nodes.size; pass++) {
      let moved = false;
      for (const e of main) {
        const from = nodes.get(e.from), to = nodes.get(e.to);
        if (to.level < from.level + 1 && from.level + 1 <= 2 * nodes.size) { to.level = from.level + 1; moved = true; }
      }
      if (!moved) break;
    }
    // Streams only read as auxiliaries sit in the column before their first reader.
    for (const node of nodes.values()) {
      if (node.type !== "stream") continue;
      const touching = edges.filter((e) => e.from === node.id || e.to === node.id);
      if (touching.length && touching.every((e) => e.auxiliary)) {
        node.auxOnly = true;
        node.level = Math.max(0, Math.min(...touching.map((e) => nodes.get(e.to).level)) - 1);
      }
    }
    return { nodes, edges };
  }

  function drawGraph(container, legendBox, graph, onStreamClick) {
    const { nodes, edges } = graphModel(graph);
    const columns = [];
    for (const node of nodes.values()) (columns[node.level] = columns[node.level] || []).push(node);
    // Order each column by where its predecessors sit (one barycentre pass); auxiliary-only streams last.
    const rowOf = new Map();
    columns.forEach((column) => {
      if (!column) return;
      column.forEach((node) => {
        const from = edges.filter((e) => e.to === node.id && rowOf.has(e.from)).map((e) => rowOf.get(e.from));
        node.weight = (node.auxOnly ? 1000 : 0) + (from.length ? from.reduce((a, b) => a + b, 0) / from.length
          : node.order / 1000);
      });
      column.sort((a, b) => a.weight - b.weight);
      column.forEach((node, row) => rowOf.set(node.id, row));
    });
    const nodeW = 98, nodeH = 24, colW = 110, rowH = 32, pad = 6;
    const rows = Math.max(1, ...columns.filter(Boolean).map((c) => c.length));
    const width = Math.max(1, columns.length) * colW - (colW - nodeW) + 2 * pad;
    const height = rows * rowH - (rowH - nodeH) + 2 * pad;
    const position = new Map();
    columns.forEach((column, level) => (column || []).forEach((node, row) => {
      position.set(node.id, { x: pad + level * colW, y: pad + row * rowH });
    }));
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                              "aria-label": "pipeline graph" });
    const edgeLayer = svg("g");
    for (const e of edges) {
      const a = position.get(e.from), b = position.get(e.to);
      const x1 = a.x + nodeW, y1 = a.y + nodeH / 2, x2 = b.x, y2 = b.y + nodeH / 2;
      const bend = Math.max(20, Math.abs(x2 - x1) / 2);
      const path = x2 > x1
        ? `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`
        : `M${x1},${y1} C${x1 + 40},${y1 + rowH} ${x2 - 40},${y2 + rowH} ${x2},${y2}`;  // feedback
      edgeLayer.append(svg("path", { d: path, class: "edge" + (e.auxiliary ? " auxiliary" : ""),
                                     "marker-end": "url(#arrow)" }));
    }
    const defs = svg("defs", {}, [svg("marker", { id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4,
                                                   markerWidth: 6, markerHeight: 6, orient: "auto" },
                                      [svg("path", { d: "M0,0 L8,4 L0,8 z", fill: "#95a3b3" })])]);
    const nodeLayer = svg("g");
    for (const node of nodes.values()) {
      const p = position.get(node.id);
      const label = node.name.length > 15 ? node.name.slice(0, 14) + "…" : node.name;
      const group = svg("g", { class: "node " + node.type, "data-node": node.id,
                               transform: `translate(${p.x},${p.y})` }, [
        svg("title", {}, [node.type + " " + node.name]),
        svg("rect", { width: nodeW, height: nodeH, rx: node.type === "stream" ? 12 : 4 }),
        svg("text", { x: nodeW / 2, y: nodeH / 2 + 4, "text-anchor": "middle" }, [label]),
      ]);
      if (node.type === "stream") group.addEventListener("click", () => onStreamClick(node.name));
      nodeLayer.append(group);
    }
    root.append(defs, edgeLayer, nodeLayer);
    container.replaceChildren(root);
    const legend = LEGEND.map((h) =>
      Object.assign(document.createElement("span"), { className: "badge", textContent: h }));
    legend.forEach((badge, i) => badge.setAttribute("data-health", LEGEND[i]));
    legendBox.replaceChildren(...legend);
  }

  const HEALTH_COLOURS = {
    active: "#2e9d57", idle: "#7f8fa3", "waiting-input": "#4a90c8", starting: "#8e7cc3", paused: "#d89a1c",
    failed: "#d0453a", stopped: "#9aa3ad",
  };

  function colourGraph(container, status, selected) {
    const paused = status.state === "paused";
    const health = (type, name) => {
      if (type === "kernel") return ((status.workers || {})[name] || {}).health || "stopped";
      const entry = ((type === "source" ? status.sources : status.sinks) || {})[name];
      if (!entry) return "stopped";
      if (entry.last_error) return "failed";
      if (!entry.alive) return "stopped";
      return paused ? "paused" : "active";
    };
    for (const group of container.querySelectorAll("g.node")) {
      const [type, name] = group.getAttribute("data-node").split(/:(.*)/s);
      group.classList.toggle("selected", type === "stream" && name === selected);
      if (type === "stream") continue;
      const state = health(type, name);
      const rect = group.querySelector("rect");
      rect.setAttribute("fill", HEALTH_COLOURS[state] || HEALTH_COLOURS.idle);
      rect.setAttribute("stroke", HEALTH_COLOURS[state] || HEALTH_COLOURS.idle);
      group.setAttribute("data-health", state);
      group.querySelector("title").textContent = type + " " + name + ": " + state;
    }
  }

  return { draw: drawGraph, colour: colourGraph };
})();
