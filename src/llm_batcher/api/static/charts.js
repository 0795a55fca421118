// llm-batcher test bench: the batch timeline and the latency histogram, drawn as plain SVG.
// Loaded before app.js; exposes one global, `Charts`. Under the page's CSP (style-src 'self')
// nothing here sets a style attribute: looks come from classes in style.css, geometry from SVG
// attributes. Text goes in with textContent only.
"use strict";

const Charts = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TIMELINE_BATCHES = 40;     // the newest batches stay on the timeline...
  const TIMELINE_SPAN_MS = 120000; // ...if they ended within the last two minutes
  const PRUNE_EVERY_MS = 5000;
  const LANE_H = 34;
  const GUTTER = 96;               // left margin for the worker names
  const AXIS_H = 22;
  const WIDTH = 960;

  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function tip(node, text) {
    node.append(svgEl("title", {}, text));
    return node;
  }

  const num = (v) => typeof v === "number" && Number.isFinite(v);
  const ms = (v) => (v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} s` : `${Math.round(v)} ms`);

  // ---------- batch timeline ----------

  const batches = new Map(); // batch_id -> {id, worker, size, start, end, reqs: [...]}
  const workers = [];        // lane order: first seen first
  let timelineRoot = null;
  let drawQueued = false;

  // One `done` event of this page's request. The clocks of page and server differ, so every
  // time is placed from the moment the `done` arrived: the task was created total_ms before,
  // its batch started queue_ms after that, and its first token came ttft_ms after creation.
  // (A request the browser held back, past its 6 streams per host, still lands where it ran.)
  function addDone(data, label) {
    const d = data || {};
    if (typeof d.batch_id !== "string" || !num(d.total_ms) || !num(d.queue_ms)) return;
    const end = Date.now();
    const created = end - d.total_ms;
    const req = {
      task: typeof d.task_id === "string" ? d.task_id : "",
      label,
      created,
      start: created + d.queue_ms,
      firstToken: num(d.ttft_ms) ? created + d.ttft_ms : null,
      end,
    };
    const worker = typeof d.worker === "string" && d.worker ? d.worker : "?";
    let batch = batches.get(d.batch_id);
    if (!batch) {
      batch = { id: d.batch_id, worker, size: 0, start: req.start, end, reqs: [] };
      batches.set(d.batch_id, batch);
    }
    if (!workers.includes(worker)) workers.push(worker);
    batch.size = Math.max(batch.size, num(d.batch_size) ? d.batch_size : 1);
    batch.start = Math.min(batch.start, req.start);
    batch.end = Math.max(batch.end, end);
    if (!batch.reqs.some((r) => r.task && r.task === req.task)) batch.reqs.push(req);
    queueDraw();
  }

  function queueDraw() {
    if (drawQueued || !timelineRoot) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; drawTimeline(); });
  }

  function prune() {
    const newest = [...batches.values()].sort((a, b) => b.end - a.end);
    const cutoff = Date.now() - TIMELINE_SPAN_MS;
    newest.forEach((b, i) => { if (i >= TIMELINE_BATCHES || b.end < cutoff) batches.delete(b.id); });
    for (let i = workers.length - 1; i >= 0; i--) {
      if (![...batches.values()].some((b) => b.worker === workers[i])) workers.splice(i, 1);
    }
  }

  // Nice tick spacing: 1-2-5 steps giving at most ~8 ticks over the span.
  function tickStep(spanMs) {
    for (const step of [100, 200, 500, 1000, 2000, 5000, 10000, 20000, 30000, 60000]) {
      if (spanMs / step <= 8) return step;
    }
    return 120000;
  }

  function drawAxis(svg, t0, span, x, height) {
    const step = tickStep(span);
    for (let t = 0; t <= span; t += step) {
      const px = x(t0 + t);
      svg.append(svgEl("line", { class: "tl-grid", x1: px, x2: px, y1: AXIS_H - 4, y2: height }));
      svg.append(svgEl("text", { class: "tl-tick", x: px, y: AXIS_H - 8, "text-anchor": "middle" },
        t === 0 ? new Date(t0).toLocaleTimeString() : `+${ms(t)}`));
    }
  }

  function drawBatch(svg, batch, lane, x) {
    const top = AXIS_H + lane * LANE_H + 3;
    const h = LANE_H - 6;
    const x0 = x(batch.start);
    const w = Math.max(2, x(batch.end) - x0);
    const g = svgEl("g", { class: "tl-batch-group" });
    const mine = batch.reqs.length;
    g.append(tip(svgEl("rect", {
      class: "tl-batch", x: x0, y: top, width: w, height: h, rx: 3,
      "data-batch-id": batch.id, "data-worker": batch.worker, "data-batch-size": batch.size,
    }), `batch ${batch.id} on ${batch.worker}: ${batch.size} task(s), ${mine} from this page, ${ms(batch.end - batch.start)}`));
    // This page's requests as thin rows inside the bar: wait for the first token, then stream.
    const rowH = Math.max(1.5, (h - 4) / Math.max(batch.size, mine));
    batch.reqs.forEach((r, i) => {
      const y = top + 2 + i * rowH;
      const rx0 = x(r.start);
      const mark = svgEl("rect", {
        class: "tl-req", x: rx0, y, width: Math.max(1.5, x(r.end) - rx0), height: Math.max(1, rowH - 1),
        "data-task-id": r.task, "data-batch-id": batch.id,
      });
      g.append(tip(mark, `request ${r.label || ""} · task ${r.task} · queued ${ms(r.start - r.created)}, ` +
        `first token ${r.firstToken === null ? "—" : ms(r.firstToken - r.created)}, total ${ms(r.end - r.created)}`));
      if (r.firstToken !== null && r.firstToken > r.start) {
        g.append(svgEl("rect", {
          class: "tl-wait", x: rx0, y, width: Math.max(0.5, x(r.firstToken) - rx0), height: Math.max(1, rowH - 1),
        }));
      }
    });
    if (w > 28) {
      g.append(svgEl("text", { class: "tl-label", x: x0 + 4, y: top + h - 5 }, `×${batch.size}`));
    }
    svg.append(g);
  }

  function drawTimeline() {
    prune();
    const list = [...batches.values()];
    const empty = timelineRoot.querySelector(".chart-empty");
    const svg = timelineRoot.querySelector("svg");
    empty.hidden = list.length > 0;
    svg.replaceChildren();
    svg.toggleAttribute("hidden", !list.length);
    if (!list.length) return;
    const t0 = Math.min(...list.map((b) => b.start));
    const span = Math.max(100, Math.max(...list.map((b) => b.end)) - t0);
    const height = AXIS_H + workers.length * LANE_H;
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    const x = (t) => GUTTER + ((t - t0) / span) * (WIDTH - GUTTER - 8);
    drawAxis(svg, t0, span, x, height);
    workers.forEach((w, i) => {
      const y = AXIS_H + i * LANE_H;
      svg.append(svgEl("rect", { class: "tl-lane", x: 0, y, width: WIDTH, height: LANE_H, "data-worker": w }));
      const name = Array.from(w).length > 14 ? `${Array.from(w).slice(0, 13).join("")}…` : w;
      svg.append(tip(svgEl("text", { class: "tl-worker", x: 6, y: y + LANE_H / 2 + 4 }, name), `worker ${w}`));
    });
    for (const b of list) drawBatch(svg, b, workers.indexOf(b.worker), x);
  }

  function clearTimeline() {
    batches.clear();
    workers.length = 0;
    queueDraw();
  }

  // ---------- latency histogram (from /stats) ----------

  const SERIES = [["queue_ms", "queue"], ["ttft_ms", "first token"], ["total_ms", "total"]];
  const HIST_H = 170;
  const BASE = HIST_H - 22;

  function bucketLabel(bounds, i) {
    return i < bounds.length ? `≤${ms(bounds[i])}` : `>${ms(bounds[bounds.length - 1])}`;
  }

  // Bars per bucket (equal widths: the buckets are 1-2-5 steps, i.e. a log axis), one per
  // series, over the buckets from the first to the last that holds anything.
  function drawLatency(root, hist) {
    const svg = root.querySelector("svg");
    const bounds = hist && Array.isArray(hist.le_ms) ? hist.le_ms : null;
    const counts = SERIES.map(([k]) => (hist && Array.isArray(hist[k]) ? hist[k] : []));
    const used = counts.flatMap((c) => c.map((n, i) => (n > 0 ? i : -1))).filter((i) => i >= 0);
    root.hidden = !bounds;
    root.querySelector(".chart-empty").hidden = used.length > 0;
    svg.replaceChildren();
    svg.toggleAttribute("hidden", !bounds || !used.length);
    if (!bounds || !used.length) return;
    const lo = Math.max(0, Math.min(...used) - 1);
    const hi = Math.min(bounds.length, Math.max(...used) + 1);
    const most = Math.max(...counts.flat().filter(num), 1);
    const slot = (WIDTH - 16) / (hi - lo + 1);
    const barW = Math.max(2, (slot - 8) / SERIES.length);
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HIST_H}`);
    svg.append(svgEl("line", { class: "lat-axis", x1: 8, x2: WIDTH - 8, y1: BASE, y2: BASE }));
    for (let i = lo; i <= hi; i++) {
      const sx = 8 + (i - lo) * slot;
      svg.append(svgEl("text", { class: "lat-tick", x: sx + slot / 2, y: HIST_H - 6, "text-anchor": "middle" },
        bucketLabel(bounds, i)));
      SERIES.forEach(([key, label], s) => {
        const n = num(counts[s][i]) ? counts[s][i] : 0;
        if (n === 0) return;
        const h = Math.max(1, (n / most) * (BASE - 14));
        const bar = svgEl("rect", {
          class: `lat-bar lat-${key}`, x: sx + 4 + s * barW, y: BASE - h, width: barW - 1, height: h,
          "data-series": key, "data-bucket": bucketLabel(bounds, i), "data-count": n,
        });
        svg.append(tip(bar, `${label} ${bucketLabel(bounds, i)}: ${n} request(s)`));
        if (barW >= 14) {
          svg.append(svgEl("text", { class: "lat-count", x: sx + 4 + (s + 0.5) * barW, y: BASE - h - 3, "text-anchor": "middle" }, n));
        }
      });
    }
  }

  function mount(timeline) {
    timelineRoot = timeline;
    queueDraw();
    setInterval(queueDraw, PRUNE_EVERY_MS); // batches age out even when nothing new arrives
  }

  return { mount, addDone, clearTimeline, drawLatency };
})();
