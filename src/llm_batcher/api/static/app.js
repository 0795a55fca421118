// llm-batcher test bench. Vanilla ES2020, no dependencies.
// SECURITY: contexts, answers and server messages are untrusted. The DOM is built with
// createElement / textContent / Text nodes only; never innerHTML and friends.
"use strict";

const MAX_URL_CHARS = 6000;     // longer GET URLs risk 414s and proxy limits: use POST instead
const RECONNECT_BUDGET_MS = 30000; // EventSource retries forever: give up after 30 s without a reply
const FETCH_RETRIES = 5;        // resume attempts for the fetch path
const STATS_EVERY_MS = 2000;

const SAMPLES = [
  ["Plain echo", "Hello, batching world!"],
  ["Slow and steady", "@mock ttft_ms=500 itl_ms=80\nA slow, steady answer streamed token by token."],
  ["Fast with filler", "@mock ttft_ms=0 itl_ms=10 extra_tokens=40\nFast with filler"],
  ["Crash mid-stream", "@mock fail=exit fail_after=3\nThis one crashes mid-stream"],
  ["Hang until deadline", "@mock fail=hang\nThis one hangs until the batch deadline"],
  ["Garbage output", "@mock fail=garbage fail_after=2\nThe model writes a malformed line"],
  ["Bad directive", "@mock nope=1\nAn unknown key makes the mock exit before writing"],
  ["Hostile text", "<script>alert(1)</script> <img src=x onerror=alert(2)> hostile text is shown as text"],
  ["Unicode & whitespace", "Tabs\there,\nnew lines,\n  indents, emoji 🚀🧪, RTL עברית, CJK 漢字, combining é"],
];

const $ = (id) => document.getElementById(id);
let cardSeq = 0;
// With API keys on, the server answers 401 and the page asks for a key. An EventSource cannot
// send headers, so from then on every stream goes through fetch() with Authorization.
let apiKey = "";

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function askForKey() {
  $("key-field").hidden = false;
  $("api-key").focus();
}
const live = new Set(); // cards whose stream is still open

// ---------- DOM helpers ----------

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(v) {
  if (typeof v === "number" && Number.isFinite(v)) return Number.isInteger(v) ? String(v) : v.toFixed(1);
  if (typeof v === "string" && v !== "") return v;
  return "—";
}

// `at` may be epoch seconds, epoch ms or an ISO string.
function when(at) {
  const d = typeof at === "number" ? new Date(at > 1e12 ? at : at * 1000) : new Date(String(at));
  return at == null || Number.isNaN(d.getTime()) ? fmt(at) : d.toLocaleTimeString();
}

function preview(context, max = 90) {
  const flat = context.replace(/\r\n|\r|\n/g, " ⏎ ").replace(/\t/g, " ");
  const chars = Array.from(flat); // do not cut surrogate pairs in half
  return chars.length > max ? chars.slice(0, max).join("") + "…" : flat;
}

function parseJson(text) {
  try { return JSON.parse(text); } catch { return null; }
}

// ---------- cards ----------

function metric(dl, testid, label) {
  const dd = el("dd", { "data-testid": testid }, "—");
  dl.appendChild(el("div", { class: "metric" })).append(el("dt", {}, label), dd);
  return dd;
}

function createCard(context) {
  const n = ++cardSeq;
  const root = el("article", { class: "card", "data-testid": "card", id: `card-${n}`, "data-state": "queued" });
  const status = el("span", { class: "status", "data-testid": "status" }, "queued");
  root.append(el("header", { class: "card-head" }));
  root.lastChild.append(el("span", { class: "card-num" }, `#${n}`), status);
  root.append(el("p", { class: "preview", title: context }, preview(context) || "(empty context)"));
  // "—" until the `task` event: with HTTP/1.1 the browser opens at most 6 streams per host.
  const taskId = el("code", { "data-testid": "task-id" }, "—");
  const hint = el("span", { class: "hint" }, " connecting…");
  root.append(el("p", { class: "task" }, "task "));
  root.lastChild.append(taskId, hint);

  const answer = el("div", { class: "answer", "data-testid": "answer", "aria-live": "off", tabindex: "0" });
  const textNode = document.createTextNode(""); // appendData keeps streaming O(n)
  answer.append(textNode);
  root.append(answer);

  const error = el("p", { class: "error", "data-testid": "error" });
  error.hidden = true;
  root.append(error);

  const dl = el("dl", { class: "metrics" });
  const m = {
    batch: metric(dl, "batch-size", "batch"),
    queue: metric(dl, "queue-ms", "queue ms"),
    ttft: metric(dl, "ttft-ms", "ttft ms"),
    total: metric(dl, "total-ms", "total ms"),
    tokens: metric(dl, "tokens", "tokens"),
  };
  root.append(dl);

  $("cards").prepend(root);
  $("empty").hidden = true;
  return {
    context, root, status, taskId, hint, answer, textNode, error, m,
    state: "queued", task: null, lastId: "", lastIndex: -1, count: 0, pending: "",
    finished: false, es: null, abort: null,
  };
}

// The status text is exactly the state name so tests can match either.
function setState(card, state) {
  card.state = state;
  card.root.setAttribute("data-state", state);
  card.status.textContent = state;
  updateSummary();
}

function resetAnswer(card) {
  card.textNode.data = "";
  card.pending = "";
  card.lastIndex = -1;
  card.count = 0;
}

// ---------- stream event handlers (shared by both transports) ----------

function onTask(card, data) {
  const id = data && typeof data.task_id === "string" ? data.task_id : null;
  if (!id) return;
  // A different task id after a reconnect means the server started over: drop the partial answer.
  if (card.task && card.task !== id) resetAnswer(card);
  card.task = id;
  card.taskId.textContent = id;
  card.hint.textContent = "";
  if (card.count === 0) setState(card, "queued");
}

function onToken(card, data, eventId) {
  const index = Number(String(eventId || "").split(":").pop());
  // Resumed streams may replay a token we already have: keep each index once.
  if (Number.isInteger(index) && eventId) {
    if (index <= card.lastIndex) return;
    card.lastIndex = index;
  }
  card.pending += data && typeof data.text === "string" ? data.text : "";
  scheduleRender(card);
  card.count += 1;
  if (card.state !== "streaming") setState(card, "streaming");
}

// Fast streams can deliver hundreds of tokens per frame; touching the DOM (and measuring the
// scroll position) once per animation frame keeps 16 parallel cards smooth.
const dirty = new Set();
function scheduleRender(card) {
  if (dirty.size === 0) requestAnimationFrame(renderPending);
  dirty.add(card);
}

function renderPending() {
  for (const card of dirty) flushText(card);
  dirty.clear();
}

function flushText(card) {
  if (!card.pending) return;
  const a = card.answer;
  const atBottom = a.scrollHeight - a.scrollTop - a.clientHeight < 8;
  card.textNode.appendData(card.pending);
  card.pending = "";
  if (atBottom) a.scrollTop = a.scrollHeight; // follow the stream unless the user scrolled up
}

function onDone(card, data) {
  finish(card);
  const d = data || {};
  flushText(card);
  if (typeof d.text === "string") card.textNode.data = d.text; // authoritative full answer
  if (typeof d.task_id === "string") card.taskId.textContent = d.task_id;
  const tokens = Array.isArray(d.tokens) ? d.tokens.length : d.tokens;
  card.m.batch.textContent = fmt(d.batch_size);
  card.m.queue.textContent = fmt(d.queue_ms);
  card.m.ttft.textContent = fmt(d.ttft_ms);
  card.m.total.textContent = fmt(d.total_ms);
  card.m.tokens.textContent = fmt(tokens ?? card.count);
  setState(card, "done");
}

function fail(card, code, message) {
  finish(card);
  flushText(card); // keep the partial answer visible
  card.error.hidden = false;
  card.error.textContent = "";
  card.error.append(el("strong", {}, code || "error"), document.createTextNode(`: ${message || "unknown error"}`));
  setState(card, "error");
}

function onServerError(card, data) {
  const d = data || {};
  fail(card, typeof d.code === "string" && d.code ? d.code : "error", typeof d.message === "string" ? d.message : "");
}

function finish(card) {
  card.finished = true;
  if (card.es) card.es.close(); // without this the browser would reconnect after the server closes
  if (card.abort) card.abort.abort();
  live.delete(card);
}

// Routes one parsed SSE event (unknown types are ignored, for forward compatibility).
function dispatch(card, type, dataText, eventId) {
  const data = parseJson(dataText);
  if (type === "task") onTask(card, data);
  else if (type === "token") onToken(card, data, eventId);
  else if (type === "done") onDone(card, data);
  else if (type === "error") onServerError(card, data);
}

// ---------- transport 1: EventSource (GET) ----------

function streamWithEventSource(card, url) {
  const es = new EventSource(url);
  card.es = es;
  let downSince = 0; // when the connection first failed since the last event, 0 while healthy
  const handle = (type) => (e) => {
    downSince = 0;
    if (e.lastEventId) card.lastId = e.lastEventId;
    dispatch(card, type, e.data, e.lastEventId);
  };
  for (const type of ["task", "token", "done"]) es.addEventListener(type, handle(type));
  es.addEventListener("open", () => {
    if (card.state === "reconnecting") setState(card, card.count ? "streaming" : "queued");
  });
  // "error" is both the server's `event: error` (MessageEvent with data) and the
  // connection-level failure (plain Event, no data).
  es.addEventListener("error", (e) => {
    if (card.finished) return;
    if (typeof e.data === "string") return void handle("error")(e);
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      // Closed before any event: most likely a non-2xx answer (413/422/503), which EventSource
      // hides. Re-issue as POST once to show the server's detail (or simply get the stream).
      if (!card.task) return void streamWithFetch(card);
      return void fail(card, "connection", "the server closed the stream (the task may have expired)");
    }
    downSince = downSince || Date.now();
    if (Date.now() - downSince > RECONNECT_BUDGET_MS) return void fail(card, "connection", "lost connection to the server");
    setState(card, "reconnecting");
  });
}

// ---------- transport 2: fetch (POST) with a small SSE parser ----------

class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = "";
    this.reset();
    this.lastId = "";
    this.retry = null;
  }

  reset() { this.type = ""; this.data = []; }

  feed(chunk) {
    this.buf += chunk;
    const re = /\r\n|\r|\n/g;
    let start = 0;
    let m;
    while ((m = re.exec(this.buf))) {
      // A trailing "\r" may be the first half of "\r\n" split across chunks: wait for more.
      if (m[0] === "\r" && re.lastIndex === this.buf.length) break;
      this.line(this.buf.slice(start, m.index));
      start = re.lastIndex;
    }
    this.buf = this.buf.slice(start);
  }

  line(line) {
    if (line === "") return this.flush();
    if (line.startsWith(":")) return; // comment (ping)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  flush() {
    if (this.data.length) this.onEvent(this.type || "message", this.data.join("\n"), this.lastId);
    this.reset();
  }
}

async function httpError(res) {
  const body = parseJson(await res.text().catch(() => ""));
  let detail = body && body.detail !== undefined ? body.detail : res.statusText;
  if (Array.isArray(detail)) detail = detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
  else if (typeof detail !== "string") detail = JSON.stringify(detail);
  return detail || "request failed";
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function streamWithFetch(card) {
  card.es = null;
  for (let attempt = 0; !card.finished; attempt++) {
    let progressed = false;
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() };
    if (card.lastId) headers["Last-Event-ID"] = card.lastId; // resume after the last token we hold
    const parser = new SseParser((type, data, id) => {
      progressed = true;
      if (id) card.lastId = id;
      dispatch(card, type, data, id);
    });
    card.abort = new AbortController();
    try {
      const res = await fetch("/generate", {
        method: "POST", headers, body: JSON.stringify({ context: card.context }), signal: card.abort.signal,
      });
      if (res.status === 401) askForKey();
      if (!res.ok) return fail(card, `HTTP ${res.status}`, await httpError(res));
      if (card.state === "reconnecting") setState(card, card.count ? "streaming" : "queued");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || card.finished) break;
        parser.feed(value);
      }
      parser.feed("\n\n"); // a last event without its blank line still counts
    } catch (err) {
      if (card.finished) return; // aborted on purpose (terminal event or Clear)
    }
    if (card.finished) return;
    if (progressed) attempt = 0; // only consecutive fruitless attempts count
    if (attempt >= FETCH_RETRIES) return fail(card, "connection", "the stream ended without a result");
    setState(card, "reconnecting");
    await sleep(parser.retry ?? 300 * (attempt + 1));
  }
}

// ---------- sending ----------

function send(context) {
  const card = createCard(context);
  live.add(card);
  const url = `/generate?context=${encodeURIComponent(context)}`;
  if (url.length > MAX_URL_CHARS || apiKey) streamWithFetch(card);
  else streamWithEventSource(card, url);
  updateSummary();
}

function readCount() {
  const input = $("count");
  const n = Math.min(16, Math.max(1, Math.round(Number(input.value)) || 1));
  input.value = String(n);
  $("count-label").textContent = String(n);
  return n;
}

function sendMany() {
  const base = $("context").value;
  const n = readCount();
  // Suffixes go at the end so a leading @mock directive line stays first.
  for (let i = 1; i <= n; i++) send(`${base} #${i}`);
}

function clearAll() {
  for (const card of [...live]) finish(card);
  $("cards").replaceChildren();
  $("empty").hidden = false;
  updateSummary();
}

function updateSummary() {
  const counts = {};
  for (const c of document.querySelectorAll('[data-testid="card"]')) {
    const s = c.getAttribute("data-state");
    counts[s] = (counts[s] || 0) + 1;
  }
  $("summary").textContent = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(" · ");
}

// ---------- stats panel ----------

function statsTable(caption, head, rows) {
  const table = el("table", { class: "stats-table" });
  table.append(el("caption", {}, caption));
  const tr = el("tr");
  for (const h of head) tr.append(el("th", { scope: "col" }, h));
  table.appendChild(el("thead")).append(tr);
  const body = table.appendChild(el("tbody"));
  for (const row of rows) {
    const r = body.appendChild(el("tr"));
    row.forEach((cell, i) => r.append(el(i ? "td" : "th", i ? {} : { scope: "row" }, fmt(cell))));
  }
  return table;
}

function renderStats(s) {
  const obj = (v) => (v && typeof v === "object" && !Array.isArray(v) ? v : {});
  $("stats-window").textContent = typeof s.window_s === "number" ? `(last ${s.window_s} s)` : "";
  const lat = ["queue_ms", "ttft_ms", "total_ms"].map((k) => [k, ...["p50", "p90", "p99", "max"].map((p) => obj(s[k])[p])]);
  const req = obj(s.requests);
  const general = [["queue depth", s.queue_depth], ["in flight", s.in_flight], ["workers", s.workers],
    ["requests", req.total], ["done", req.done], ["errors", req.error],
    ...Object.entries(obj(req.by_code)).map(([code, n]) => [`· ${code}`, n])];
  const rows = (Array.isArray(s.slowest) ? s.slowest : []).slice(0, 10).map(obj);
  // The public view names no task and shows no context; an admin's view does.
  const named = rows.some((x) => "task_id" in x);
  const slowest = rows.map((x) => [
    ...(named ? [x.task_id, x.context_preview] : []),
    x.code || x.outcome, x.batch_size, x.queue_ms, x.ttft_ms, x.total_ms, x.worker, when(x.at),
  ]);
  const parts = [statsTable("latency", ["", "p50", "p90", "p99", "max"], lat), statsTable("system", ["", "value"], general)];
  if (slowest.length) {
    const head = ["outcome", "batch", "queue", "ttft", "total", "worker", "at"];
    parts.push(statsTable("slowest", named ? ["task", "context", ...head] : head, slowest));
  }
  $("stats-body").replaceChildren(...parts);
}

async function pollStats() {
  try {
    const res = await fetch("/stats", { headers: { Accept: "application/json", ...authHeaders() }, cache: "no-store" });
    if (res.status === 404) { $("stats").hidden = true; return; } // endpoint not there: stop polling
    if (res.status === 401) $("stats").hidden = true; // closed to the public: shown once a key is given
    if (res.ok) {
      const s = await res.json();
      if (s && typeof s === "object") { renderStats(s); $("stats").hidden = false; }
    }
  } catch { /* transient (server restarting, bad JSON): keep polling */ }
  setTimeout(pollStats, STATS_EVERY_MS);
}

// ---------- wiring ----------

function init() {
  const select = $("samples");
  SAMPLES.forEach(([label], i) => select.append(el("option", { value: String(i) }, label)));
  select.addEventListener("change", () => {
    const sample = SAMPLES[Number(select.value)];
    if (sample) { $("context").value = sample[1]; $("context").focus(); }
  });
  $("context").addEventListener("input", () => { select.value = ""; }); // edited: no longer a sample
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("context").value); });
  $("send-many").addEventListener("click", sendMany);
  $("count").addEventListener("input", () => {
    const n = Number($("count").value);
    if (Number.isInteger(n) && n >= 1 && n <= 16) $("count-label").textContent = String(n);
  });
  $("count").addEventListener("change", readCount);
  $("clear").addEventListener("click", clearAll);
  $("api-key").addEventListener("input", () => { apiKey = $("api-key").value.trim(); });
  $("context").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send($("context").value); }
  });
  readCount();
  pollStats();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
