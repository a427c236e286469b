// slotswitch console: reads the admin API (GET /v1/whoami, the /v1/events stream) and posts its
// actions to it. No framework, no build step. Everything from the server is written with
// textContent, never as HTML. The token lives in this tab's sessionStorage and travels only in an
// Authorization header (fetch() reads the stream, as EventSource cannot send headers).
"use strict";

const TOKEN_KEY = "slotswitch.token";
const WINDOW_S = 300; // the charts show up to the last five minutes ...
const MIN_SPAN_S = 60; // ... and at least one
const COLORS = { blue: "#3b82f6", green: "#22c55e" };
const OTHER_COLORS = ["#a855f7", "#f59e0b", "#ec4899", "#14b8a6"];

const view = { state: null, role: null, points: [], frameAt: 0, stream: null, retry: 1000 };
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}
function colorOf(slot, i) { return COLORS[slot] || OTHER_COLORS[i % OTHER_COLORS.length]; }

// -- formatting -------------------------------------------------------------------------------
function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  return v.toFixed(digits === undefined ? (Number.isInteger(v) ? 0 : 2) : digits);
}
function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(2) + "%"; }
function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "–"; }
function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}
function plain(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return num(v, Number.isInteger(v) ? 0 : 4);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// -- login ------------------------------------------------------------------------------------
async function start() {
  let r;
  try {
    r = await fetch("/v1/whoami", { headers: headers(), cache: "no-store" });
  } catch (e) {
    $("conn").textContent = "admin API unreachable";
    setTimeout(start, 3000);
    return;
  }
  if (r.status === 401) return showLogin(token() ? "That token was refused." : "");
  if (!r.ok) return showLogin(`whoami answered ${r.status}`);
  const who = await r.json();
  view.role = who.role;
  $("who").textContent = `${who.name} (${who.role})`;
  $("logout").hidden = !token();
  $("login").hidden = true;
  $("main").hidden = false;
  $("actions").hidden = who.role !== "operator";
  connect();
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
  $("conn").textContent = "";
  $("token").focus();
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  start();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (view.stream) view.stream.abort();
  location.reload();
});

// -- the event stream -------------------------------------------------------------------------
async function connect() {
  const ctl = new AbortController();
  view.stream = ctl;
  try {
    const r = await fetch("/v1/events", {
      headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: ctl.signal,
    });
    if (r.status === 401) return showLogin("The token was refused.");
    if (!r.ok || !r.body) throw new Error(`events answered ${r.status}`);
    setConn(true);
    view.retry = 1000;
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        dispatch(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  setConn(false);
  setTimeout(connect, view.retry);
  view.retry = Math.min(view.retry * 2, 15000);
}

function setConn(live) {
  $("conn").textContent = live ? "live" : "reconnecting…";
  $("conn").classList.toggle("live", live);
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (name === "backlog") {
    view.points = payload.points || [];
  } else if (name === "state") {
    const last = view.points[view.points.length - 1];
    if (!last || last.t !== payload.point.t) view.points.push(payload.point);
    const horizon = payload.t - WINDOW_S;
    while (view.points.length && view.points[0].t < horizon) view.points.shift();
    view.state = payload;
    view.frameAt = Date.now() / 1000;
    render();
  }
}

// -- rendering --------------------------------------------------------------------------------
function render() {
  const s = view.state;
  const active = $("active");
  active.textContent = `active: ${s.active}`;
  active.className = "pill " + (COLORS[s.active] ? s.active : "");
  active.dataset.slot = s.active;
  $("phase").textContent = s.phase;
  $("generation").textContent = `gen ${s.generation}`;
  $("generation").dataset.generation = s.generation;
  renderSlots(s);
  renderCharts(s);
  renderRelease(s);
  renderJudge(s.analysis || {});
  renderHistory(s.history || []);
  renderSlotChoice(s);
  renderShadow(s.shadow);
}

function renderSlots(s) {
  const names = Object.keys(s.slots);
  $("slots").replaceChildren(...names.map((name, i) => {
    const slot = s.slots[name];
    const rate = slot.rate || {};
    const tags = [];
    if (name === s.active) tags.push("active");
    if (s.ramp && s.ramp.slot === name) tags.push("ramping in");
    if (name === s.previous) tags.push("previous");
    const bar = el("div", { class: "weight " + (COLORS[name] ? name : "") }, el("span"));
    bar.firstChild.style.width = `${slot.weight}%`; // CSSOM, allowed by the CSP (no style attribute)
    const stat = (label, value, key) => el("div", {}, el("dt", {}, label), el("dd", { data: { k: key } }, value));
    const drain = slot.drain && slot.drain.state ? slot.drain.state : "idle";
    return el("article", { class: "card slot" + (name === s.active ? " is-active" : ""), data: { slot: name } },
      el("h2", {}, el("span", { class: "dot " + name }), name,
        el("span", { class: "muted" }, tags.join(", ")),
        el("span", { class: "spacer" }),
        el("span", { class: "pill", data: { k: "weight" } }, `${slot.weight}%`)),
      bar,
      el("dl", { class: "stats" },
        stat("req/s", num(rate.rps, 1), "rps"),
        stat("errors", pct(rate.error_ratio), "error_ratio"),
        stat("in flight", slot.in_flight, "in_flight"),
        stat("p50", rate.p50_ms === null || rate.p50_ms === undefined ? "–" : num(rate.p50_ms, 1) + " ms", "p50"),
        stat("p99", rate.p99_ms === null || rate.p99_ms === undefined ? "–" : num(rate.p99_ms, 1) + " ms", "p99"),
        stat("drain", drain + (slot.drain && slot.drain.in_flight ? ` (${slot.drain.in_flight})` : ""), "drain")),
      el("ul", { class: "upstreams" }, ...slot.upstreams.map((u) =>
        el("li", { class: u.healthy ? "up" : "down", title: u.healthy ? "healthy" : "unhealthy" }, u.url))));
  }));
  $("legend").replaceChildren(...names.map((name, i) => {
    const dot = el("span", { class: "dot" });
    dot.style.background = colorOf(name, i);
    return el("span", {}, dot, name);
  }));
}

function renderRelease(s) {
  const facts = [["phase", s.phase], ["generation", s.generation]];
  const ramp = s.ramp;
  if (ramp) {
    const left = ramp.paused || ramp.next_step_in_s === null ? null
      : Math.max(0, ramp.next_step_in_s - (Date.now() / 1000 - view.frameAt));
    facts.push(["ramp", `${ramp.slot} at ${ramp.percent}% (step ${ramp.step + 1} of ${ramp.steps.length})`]);
    facts.push(["next step", ramp.paused ? "paused" : `in ${num(left, 0)}s if the judge passes`]);
    facts.push(["interval", `${ramp.interval_s}s`]);
  } else {
    facts.push(["ramp", "none"]);
  }
  const lc = s.last_change || {};
  facts.push(["last change", `${lc.action || "–"} by ${lc.by || "–"} (${lc.trigger || "–"}) at ${clock(lc.at)}`]);
  if (lc.reason) facts.push(["reason", lc.reason]);
  fillFacts($("release-facts"), facts);
  $("ramp-steps").replaceChildren(...(ramp ? ramp.steps.map((p, i) =>
    el("li", { class: i < ramp.step ? "done" : i === ramp.step ? "current" : "" }, `${p}%`)) : []));
}

// Shown above, or the same fact under an older name (subject, watching_until): not repeated below.
const JUDGE_SHOWN = new Set(["state", "reasons", "numbers", "compares", "comparing", "subject", "watching_until"]);
const STATE_PILL = { judging: "inconclusive", passed: "pass", failed: "fail", inconclusive: "inconclusive" };
function renderJudge(a) {
  const v = $("verdict");
  const state = a.state || "not_watching";
  v.textContent = state.replace(/_/g, " ") + (state === "judging" && a.outcome ? `: ${a.outcome} so far` : "");
  v.className = "pill " + (STATE_PILL[state] || "");
  $("reasons").replaceChildren(...(a.reasons || []).map((r) => el("li", {}, r)));
  const numbers = a.numbers || {};
  $("numbers").tBodies[0].replaceChildren(...Object.keys(numbers).sort().map((k) =>
    el("tr", {}, el("td", {}, k), el("td", {}, plain(numbers[k])))));
  const facts = [];
  const c = a.compares || {};
  if (c.candidate) facts.push(["compares", `${c.candidate} against ${c.baseline}`]);
  if (c.since) facts.push(["evidence", `accumulated since ${new Date(c.since * 1000).toLocaleTimeString()} (looked at every ${c.tick_s}s; a step passes from ${c.min_requests} requests)`]);
  for (const [k, val] of Object.entries(a)) {
    if (JUDGE_SHOWN.has(k) || val === null || (Array.isArray(val) && !val.length)) continue;
    facts.push([k.replace(/_/g, " "), k.endsWith("_until") && typeof val === "number" ? clock(val) : plain(val)]);
  }
  fillFacts($("judge-facts"), facts);
}

function fillFacts(dl, facts) {
  dl.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, plain(v))]));
}

function routing(r) {
  if (!r) return "–";
  const w = Object.entries(r.weights || {}).map(([k, v]) => `${k} ${v}%`).join(" / ");
  return `${r.active}${w ? ` (${w})` : ""}`;
}

function renderHistory(entries) {
  $("history").replaceChildren(...entries.map((e) => {
    const refused = e.outcome === "refused";
    const what = `${e.action}${refused ? ` refused (${e.status})` : ""} by ${e.actor}` +
      (e.trigger && e.trigger !== "api" ? ` [${e.trigger}]` : "");
    const details = [];
    if (e.from || e.to) details.push(`${routing(e.from)} → ${routing(e.to)}`);
    if (e.reason) details.push(`reason: ${e.reason}`);
    if (refused && e.error) details.push(`${e.error.code}: ${e.error.message}`);
    const d = e.details || {};
    for (const [k, v] of Object.entries(d)) if (k !== "method" && k !== "path") details.push(`${k}=${plain(v)}`);
    return el("li", { class: refused ? "refused" : "applied" },
      el("span", { class: "when" }, when(e.time)), el("span", { class: "what" }, what),
      details.length ? el("span", { class: "detail" }, details.join(" · ")) : null);
  }));
}

function renderSlotChoice(s) {
  const select = $("slot");
  const names = Object.keys(s.slots);
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    const idle = names.find((n) => n !== s.active);
    if (idle) select.value = idle;
  }
}

// -- shadow traffic: the comparison's totals, its worst endpoints, one sample side by side -----
const shadowView = { open: null, seq: 0 };
function renderShadow(sh) {
  $("shadow").hidden = !sh;
  if (!sh) return;
  const t = sh.totals;
  const rate = $("shadow-rate");
  rate.textContent = t.diff_rate === null ? "nothing compared yet" : `${pct(t.diff_rate)} differ`;
  rate.className = "pill " + (t.diff_rate === null ? "" : t.differ || t.errors ? "fail" : "pass");
  fillFacts($("shadow-facts"), [
    ["compares", `${sh.slot} (${sh.upstreams.join(", ")}) with ${sh.active}`],
    ["mirrors", `${sh.percent}% of requests; ${t.mirrored} since ${clock(sh.since)}`],
    ["answers", `${t.same} same, ${t.differ} differ, ${t.errors} errors, ${t.skipped} skipped, ${t.dropped} dropped`],
  ]);
  $("shadow-endpoints").tBodies[0].replaceChildren(...sh.endpoints.map((e) => {
    const key = `${e.method} ${e.path}`;
    const open = el("button", { type: "button", class: "link" }, key);
    open.addEventListener("click", () => openSample(key));
    const where = (e.top_differences || []).map((d) => `${d.where} (${d.count})`).join(", ");
    return el("tr", { class: key === shadowView.open ? "open" : "", data: { endpoint: key } },
      el("td", {}, open), el("td", {}, e.mirrored), el("td", {}, e.same), el("td", {}, e.differ),
      el("td", {}, e.errors), el("td", {}, where || "–"));
  }));
  const more = $("shadow-more");
  more.hidden = !sh.more_endpoints;
  more.textContent = `and ${sh.more_endpoints} more endpoints: slotswitch diff lists them all`;
}

async function openSample(key) {
  shadowView.open = key;
  const seq = ++shadowView.seq;
  let r, body;
  try {
    r = await fetch("/v1/shadow?endpoint=" + encodeURIComponent(key), { headers: headers(), cache: "no-store" });
    body = await r.json().catch(() => ({}));
  } catch (e) {
    return showSample(key, null, "the admin API could not be reached");
  }
  if (seq !== shadowView.seq) return; // another endpoint was opened meanwhile
  if (!r.ok) return showSample(key, null, (body.error && body.error.message) || `HTTP ${r.status}`);
  const samples = body.samples || [];
  showSample(key, samples[samples.length - 1] || null, "no sample kept for this endpoint yet");
}

function sideHead(side) {
  if (!side) return "–";
  return `${side.slot}: ${side.error ? side.error : side.status}`;
}

function showSample(key, sample, message) {
  $("shadow-sample").hidden = false;
  $("shadow-sample-title").textContent = sample ? `${sample.request.method} ${sample.request.target}` : key;
  let where = message;
  if (sample) {
    where = sample.result === "error" ? `error: ${sample.detail || "–"}`
      : `differs at ${(sample.differences || []).join(", ") || "–"}`;
    if ((sample.noise || []).length) where += ` (noise: ${sample.noise.join(", ")})`;
  }
  $("shadow-sample-where").textContent = where;
  $("shadow-active-head").textContent = sample ? sideHead(sample.active) : "";
  $("shadow-active-body").textContent = sample && sample.active ? sample.active.body || "" : "";
  $("shadow-idle-head").textContent = sample ? sideHead(sample.shadow) : "";
  $("shadow-idle-body").textContent = sample && sample.shadow ? sample.shadow.body || "" : "";
  for (const row of $("shadow-endpoints").tBodies[0].rows) row.classList.toggle("open", row.dataset.endpoint === key);
}

// -- charts: small line charts on <canvas>, both slots on each ---------------------------------
function renderCharts(s) {
  const names = Object.keys(s.slots);
  const series = (key) => names.map((name, i) => ({
    color: colorOf(name, i), values: view.points.map((p) => [p.t, p.slots[name] ? p.slots[name][key] : null]),
  }));
  const now = s.t;
  const first = view.points.length ? view.points[0].t : now;
  const span = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, now - first));
  const draw = (canvas, lines, fmt, fixedMax) => drawChart(canvas, lines, now, span, fmt, fixedMax);
  draw($("chart-rps"), series("rps"), axis);
  draw($("chart-err"), series("error_ratio"), (v) => +(v * 100).toFixed(2) + "%");
  draw($("chart-lat"), [...series("p99_ms"), ...series("p50_ms").map((x) => ({ ...x, dash: true }))], axis);
  draw($("chart-inflight"), series("in_flight"), axis);
  draw($("chart-weight"), series("weight"), axis, 100);
}

function axis(v) { return String(+v.toFixed(v >= 10 ? 0 : 2)); }

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawChart(canvas, series, now, span, fmt, fixedMax) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  let max = 0;
  for (const s of series) for (const [, v] of s.values) if (v !== null && v > max) max = v;
  max = fixedMax || niceMax(max);
  const left = 40, bottom = 16, top = 4, right = 4;
  const x = (t) => left + (w - left - right) * (1 - (now - t) / span);
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#8b98a5";
  g.strokeStyle = "#2a3440";
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const yy = Math.round(y(max * f)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - right, yy); g.stroke();
    g.fillText(fmt(max * f), 2, yy + 4);
  }
  g.fillText(span >= 120 ? `-${Math.round(span / 60)}m` : `-${Math.round(span)}s`, left, h - 3);
  g.fillText("now", w - right - 22, h - 3);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.setLineDash(s.dash ? [4, 3] : []);
    g.beginPath();
    let pen = false;
    for (const [t, v] of s.values) {
      if (v === null || v === undefined || now - t > span) { pen = false; continue; }
      if (pen) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
      pen = true;
    }
    g.stroke();
  }
  g.setLineDash([]);
}
window.addEventListener("resize", () => { if (view.state) renderCharts(view.state); });
setInterval(() => { if (view.state) renderRelease(view.state); }, 1000); // the ramp's countdown

// -- actions ----------------------------------------------------------------------------------
const ACTIONS = {
  switch: (slot) => ({ path: "/v1/switch", body: { slot }, text: `Switch all new traffic to ${slot}` }),
  ramp: (slot) => {
    const steps = $("steps").value.split(/[\s,]+/).filter(Boolean).map(Number);
    return { path: "/v1/ramp", body: { slot, steps, interval: $("interval").value.trim() },
      text: `Ramp ${slot} through ${steps.join("%, ")}% every ${$("interval").value.trim()}` };
  },
  pause: () => ({ path: "/v1/pause", body: {}, text: "Pause the ramp at its current step" }),
  resume: () => ({ path: "/v1/resume", body: {}, text: "Resume the ramp" }),
  promote: () => ({ path: "/v1/promote", body: {}, text: "Advance the ramp one step now" }),
  abort: () => ({ path: "/v1/abort", body: {}, text: "Abort the ramp or switch: all new traffic back" }),
  rollback: () => ({ path: "/v1/rollback", body: {}, text: "Roll back to the previous slot" }),
};

function confirmAction(title, text, generation) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-generation").textContent = `Applies only if the state is still generation ${generation}, as shown.`;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function act(name) {
  if (!view.state) return;
  const generation = view.state.generation; // the generation this view shows: If-Match
  const spec = ACTIONS[name]($("slot").value);
  const reason = $("reason").value.trim();
  if (reason) spec.body.reason = reason;
  if (!(await confirmAction(name, spec.text + (reason ? ` — "${reason}"` : ""), generation))) return;
  let r, body;
  try {
    r = await fetch(spec.path, {
      method: "POST", cache: "no-store",
      headers: headers({ "Content-Type": "application/json", "If-Match": String(generation) }),
      body: JSON.stringify(spec.body),
    });
    body = await r.json().catch(() => ({}));
  } catch (e) {
    return showResult(false, `${name}: the admin API could not be reached`, []);
  }
  if (r.ok) {
    return showResult(true, body.changed ? `${name}: done (generation ${body.generation})` :
      `${name}: nothing to change`, []);
  }
  const err = body.error || {};
  let message = `${name} refused (${r.status} ${err.code || ""}): ${err.message || r.statusText}`;
  if (r.status === 412) {
    message = `${name} not applied: the state changed since this view showed generation ${generation} ` +
      `(someone else acted first). Nothing was changed; look at the new state and try again. (${err.message || ""})`;
  }
  if (r.status === 401) message = `${name}: the token was refused; log in again`;
  showResult(false, message, err.reasons || [], r.status);
}

function showResult(ok, message, reasons, status) {
  const box = $("result");
  box.hidden = false;
  box.className = "result " + (ok ? "ok" : "refused");
  box.dataset.status = status || 200;
  box.replaceChildren(el("div", {}, message), reasons.length ? el("ul", {}, ...reasons.map((r) => el("li", {}, r))) : null);
}

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action));
}

start();
