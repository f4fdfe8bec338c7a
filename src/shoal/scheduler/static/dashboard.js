// The shoal dashboard: polls /api/v1/dashboard and redraws with plain DOM and SVG.
// No libraries and nothing from the internet, so it works on offline machines.
"use strict";

(function () {
  const POLL_MS = 500;
  const WINDOW_S = 20;          // seconds of task stream shown
  const OVERLAP_S = 2;          // re-ask this much stream, in case entries arrive late
  const MAX_RECTS = 4000;
  const LANE_H = 12, LANE_GAP = 6, LABEL_W = 110;
  const SVGNS = "http://www.w3.org/2000/svg";
  const STATE_COLORS = {
    memory: "var(--memory)", erred: "var(--erred)", processing: "var(--processing)",
    queued: "#8fb4f2", "no-worker": "#f2b48f", waiting: "var(--waiting)", released: "#e6e8ec",
  };

  let since = 0;
  let stream = [];
  const seen = new Set();
  let inFlight = false;
  const prefixColors = {};

  function $(id) { return document.getElementById(id); }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
  }

  // Prefixes get distinct colours in the order they first appear.
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2",
                   "#ff9da7", "#9c755f", "#e15759", "#bab0ac"];
  function colorFor(prefix) {
    if (!(prefix in prefixColors)) {
      const n = Object.keys(prefixColors).length;
      prefixColors[prefix] = n < PALETTE.length ? PALETTE[n] : `hsl(${(n * 137) % 360}, 55%, 55%)`;
    }
    return prefixColors[prefix];
  }

  // A horizontal bar of stacked segments [{value, color, title}] out of `total`.
  function stackedBar(segments, total) {
    const bar = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none" });
    bar.appendChild(svg("rect", { x: 0, y: 0, width: 100, height: 10, fill: "#eef0f3" }));
    let x = 0;
    for (const s of segments) {
      if (!s.value || !total) continue;
      const w = Math.max(0, Math.min(100 - x, (100 * s.value) / total));
      const r = svg("rect", { x, y: 0, width: w, height: 10, fill: s.color });
      r.appendChild(svg("title", {}, s.title));
      bar.appendChild(r);
      x += w;
    }
    return bar;
  }

  function setConnection(ok, text) {
    const node = $("connection");
    node.className = `connection ${ok ? "up" : "down"}`;
    node.textContent = text;
  }

  function renderSummary(d) {
    const workers = d.workers;
    $("address").textContent = d.scheduler.address;
    $("n-workers").textContent = workers.length;
    $("n-threads").textContent = workers.reduce((a, w) => a + w.nthreads, 0);
    $("memory-total").textContent = bytes(workers.reduce((a, w) => a + w.memory, 0));
    $("n-finished").textContent = d.counts.finished;
    $("n-erred").textContent = d.counts.erred;
    $("n-clients").textContent = d.scheduler.clients;
    $("loop-lag").textContent = `${(d.scheduler.event_loop_lag * 1000).toFixed(1)} ms`;
  }

  function workerRow(w) {
    const row = html("tr", { "data-worker": w.address });
    row.appendChild(html("td", { title: w.address }, w.name));
    row.appendChild(html("td", { class: `status-${w.status}` }, w.status));
    row.appendChild(html("td", {}, w.nthreads));
    row.appendChild(html("td", { class: "executing" }, `${w.executing} / ${w.nthreads}`));
    const cpu = w.cpu !== null ? w.cpu / 100 : w.busy;
    const cpuCell = html("td", { class: "bar cpu" });
    const cpuBox = cpuCell.appendChild(html("div", { class: "bar-box" }));
    cpuBox.appendChild(stackedBar([{ value: cpu, color: "var(--processing)",
      title: `${(cpu * 100).toFixed(0)}% ${w.cpu !== null ? "CPU" : "of thread time in tasks"}` }], 1));
    cpuBox.appendChild(html("span", { class: "bar-text" }, `${(cpu * 100).toFixed(0)}%`));
    row.appendChild(cpuCell);
    const limit = w.memory_limit || Math.max(w.memory_process, w.memory, 1);
    const memCell = html("td", { class: "bar memory",
      title: `results ${bytes(w.memory)}, process ${bytes(w.memory_process)}, limit ${bytes(w.memory_limit)}` });
    const memBox = memCell.appendChild(html("div", { class: "bar-box" }));
    memBox.appendChild(stackedBar([
      { value: w.memory, color: "var(--memory)", title: `results ${bytes(w.memory)}` },
      { value: Math.max(0, w.memory_process - w.memory), color: "var(--process)",
        title: `rest of the process ${bytes(Math.max(0, w.memory_process - w.memory))}` },
    ], limit));
    memBox.appendChild(html("span", { class: "bar-text" },
      `${bytes(w.memory)} · ${bytes(w.memory_process)} / ${w.memory_limit ? bytes(w.memory_limit) : "no limit"}`));
    row.appendChild(memCell);
    row.appendChild(html("td", {}, bytes(w.memory_spilled)));
    return row;
  }

  function renderWorkers(d) {
    const body = $("workers").tBodies[0];
    body.replaceChildren(...d.workers.map(workerRow));
    if (!d.workers.length) {
      const row = html("tr", {});
      row.appendChild(html("td", { colspan: 7, class: "muted" }, "no workers"));
      body.appendChild(row);
    }
  }

  function takeStream(d) {
    for (const e of d.task_stream) {
      const id = `${e.key}|${e.worker}|${e.stop}`;
      if (!seen.has(id)) { seen.add(id); stream.push(e); }
    }
    const cutoff = d.now - WINDOW_S;
    stream = stream.filter((e) => e.stop > cutoff).slice(-MAX_RECTS);
    for (const id of seen) {
      if (Number(id.slice(id.lastIndexOf("|") + 1)) <= cutoff) seen.delete(id);
    }
    since = d.now - OVERLAP_S;
  }

  // Each worker gets one lane per thread; a task goes in the first lane free at its start.
  function laneOf(lanes, e) {
    for (let i = 0; i < lanes.length; i++) {
      if (lanes[i] <= e.start + 1e-6) { lanes[i] = e.stop; return i; }
    }
    lanes.push(e.stop);
    return lanes.length - 1;
  }

  function renderStream(d) {
    const area = $("task-stream");
    const width = area.clientWidth || 900;
    const t0 = d.now - WINDOW_S;
    const scale = (width - LABEL_W) / WINDOW_S;
    const rows = new Map();
    let y = 0;
    for (const w of d.workers) {
      rows.set(w.address, { y, lanes: [], name: w.name, nthreads: w.nthreads });
      y += w.nthreads * LANE_H + LANE_GAP;
    }
    const nodes = [];
    for (const [, row] of rows) {
      nodes.push(svg("text", { x: 0, y: row.y + 10, class: "worker-label" }, row.name));
    }
    const sorted = stream.slice().sort((a, b) => a.start - b.start);
    for (const e of sorted) {
      const row = rows.get(e.worker);
      if (!row) continue;
      const lane = Math.min(laneOf(row.lanes, e), row.nthreads - 1);
      const x = LABEL_W + Math.max(0, (e.start - t0) * scale);
      const w = Math.max(1, LABEL_W + (e.stop - t0) * scale - x);
      const r = svg("rect", { x: x.toFixed(1), y: row.y + lane * LANE_H, width: w.toFixed(1),
        height: LANE_H - 2, fill: colorFor(e.prefix), class: "task" });
      r.appendChild(svg("title", {}, `${e.key} on ${row.name}: ${((e.stop - e.start) * 1000).toFixed(1)} ms`));
      nodes.push(r);
    }
    area.style.height = `${Math.max(y, 30)}px`;
    area.setAttribute("viewBox", `0 0 ${width} ${Math.max(y, 30)}`);
    area.replaceChildren(...nodes);
  }

  function progressRow(p) {
    const s = p.states;
    const row = html("div", { class: "progress-row", "data-prefix": p.prefix });
    row.appendChild(html("span", { class: "name", title: p.prefix,
      style: `border-left: 8px solid ${colorFor(p.prefix)}; padding-left: 6px` }, p.prefix));
    row.appendChild(stackedBar([
      { value: s.memory, color: "var(--memory)", title: `${s.memory} in memory` },
      { value: s.erred, color: "var(--erred)", title: `${s.erred} erred` },
      { value: s.processing, color: "var(--processing)", title: `${s.processing} processing` },
      { value: s.queued + s["no-worker"], color: STATE_COLORS.queued,
        title: `${s.queued + s["no-worker"]} queued` },
    ], p.total));
    const done = s.memory + s.erred;
    row.appendChild(html("span", { class: "figures", title: `${p.finished} finished in all` },
      `${done} / ${p.total}`));
    return row;
  }

  function renderProgress(d) {
    const box = $("progress");
    if (!d.progress.length) {
      box.replaceChildren(html("p", { class: "muted empty" }, "no tasks"));
      return;
    }
    box.replaceChildren(...d.progress.map(progressRow));
  }

  function renderStates(d) {
    const area = $("tasks-by-state");
    const width = area.clientWidth || 400;
    const entries = Object.entries(d.tasks);
    const most = Math.max(1, ...entries.map(([, n]) => n));
    const barH = 16, labelW = 80, numW = 60;
    const nodes = [];
    entries.forEach(([state, n], i) => {
      const y = i * (barH + 4);
      nodes.push(svg("text", { x: 0, y: y + 12 }, state));
      const w = ((width - labelW - numW) * n) / most;
      const r = svg("rect", { x: labelW, y, width: Math.max(n ? 1 : 0, w), height: barH,
        fill: STATE_COLORS[state] || "#999", "data-state": state, "data-count": n });
      nodes.push(r);
      nodes.push(svg("text", { x: labelW + w + 4, y: y + 12 }, String(n)));
    });
    const height = entries.length * (barH + 4);
    area.style.height = `${height}px`;
    area.setAttribute("viewBox", `0 0 ${width} ${height}`);
    area.replaceChildren(...nodes);
  }

  function render(d) {
    takeStream(d);
    renderSummary(d);
    renderWorkers(d);
    renderStream(d);
    renderProgress(d);
    renderStates(d);
    document.body.dataset.updated = String(d.now);
  }

  async function poll() {
    if (inFlight) return;
    inFlight = true;
    try {
      const response = await fetch(`/api/v1/dashboard?since=${since}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      setConnection(true, "live");
    } catch (err) {
      setConnection(false, `disconnected (${err.message})`);
    } finally {
      inFlight = false;
    }
  }

  $("stream-window").textContent = WINDOW_S;
  poll();
  setInterval(poll, POLL_MS);
})();
