// zq dashboard: a small single-page app (no framework, no CDN). Pages are hash routes:
//   #/            Overview     (GET /api/overview, the web process's latest sample)
//   #/tasks?...   Tasks        (GET /api/tasks: filters and a page, counted on the server)
//   #/task/ID     Task detail  (GET /api/tasks/ID; actions POST /tasks/ID/cancel|requeue)
//   #/workers     Workers      (from the overview sample)
//   #/schedules   Schedules    (GET /api/schedules) and task names (enable/disable)
// Every page re-reads its data every POLL_MS; actions send the page's CSRF token.
"use strict";

const POLL_MS = 1500;
const CSRF = document.querySelector('meta[name="zq-csrf"]').content;
const AUTH = document.querySelector('meta[name="zq-auth"]').content;
const STATES = ["QUEUED", "PAUSED", "RESERVED", "RUNNING", "RETRYING", "SUCCESS", "FAILED", "CANCELED"];
const ACTIVE = new Set(["QUEUED", "PAUSED", "RESERVED", "RUNNING", "RETRYING"]);
const main = document.getElementById("main");
let timer = null;
let generation = 0;
let lastKey = "";  // the data last rendered: the page is redrawn only when it changed

// -- helpers ------------------------------------------------------------------------------
function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function localTime(t) {
  if (typeof t !== "number") return "";
  const d = new Date(t * 1000);
  return d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function dur(s) {
  if (typeof s !== "number" || !isFinite(s)) return "";
  if (s < 0) s = 0;
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
  if (s < 60) return s.toFixed(2) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}
function num(v) { return typeof v === "number" ? v.toLocaleString() : "–"; }
function badge(state) { return `<span class="badge s-${esc(state)}">${esc(state)}</span>`; }
function taskLink(id) { return id ? `<a class="mono" href="#/task/${encodeURIComponent(id)}">${esc(id)}</a>` : ""; }
function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text; t.className = bad ? "bad" : ""; t.hidden = false;
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function api(path, method = "GET") {
  const opts = { method, credentials: "same-origin", headers: { "Accept": "application/json" } };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = CSRF;
  const r = await fetch(path, opts);
  if (r.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

async function act(path, what) {
  try {
    const body = await api(path, "POST");
    toast(`${what}: ${JSON.stringify(body)}`);
    lastKey = "";
    refresh();
    return body;
  } catch (e) { toast(`${what} failed: ${e.message}`, true); return null; }
}

function setLive(ok, when) {
  const el = document.getElementById("live");
  el.textContent = ok ? "live · " + new Date((when || Date.now() / 1000) * 1000).toLocaleTimeString(undefined, { hour12: false })
                      : "cluster not answering";
  el.className = ok ? "live" : "live stale";
}

// -- charts (SVG, drawn here) -----------------------------------------------------------------
function chart(points, series, unit) {
  const W = 600, H = 140, P = 28;
  const pts = points.filter((p) => series.some((s) => typeof p[s.key] === "number"));
  if (pts.length < 2) return `<p class="muted">collecting samples…</p>`;
  const t0 = pts[0].t, t1 = pts[pts.length - 1].t;
  let max = 0;
  for (const p of pts) for (const s of series) if (typeof p[s.key] === "number") max = Math.max(max, p[s.key]);
  max = max > 0 ? max * 1.1 : 1;
  const x = (t) => P + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - P - 4);
  const y = (v) => H - 16 - (v / max) * (H - 24);
  let out = `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none"><g class="grid">`;
  for (const f of [0, 0.5, 1]) out += `<line x1="${P}" x2="${W}" y1="${y(max * f / 1.1)}" y2="${y(max * f / 1.1)}"/>`;
  out += `</g><text x="2" y="12">${esc(unit === "s" ? dur(max / 1.1) : (max / 1.1).toFixed(1) + unit)}</text>`;
  out += `<text x="${P}" y="${H - 2}">-${Math.round(t1 - t0)} s</text><text x="${W - 24}" y="${H - 2}">now</text>`;
  for (const s of series) {
    const line = pts.filter((p) => typeof p[s.key] === "number").map((p) => `${x(p.t).toFixed(1)},${y(p[s.key]).toFixed(1)}`);
    out += `<polyline fill="none" stroke="${s.color}" stroke-width="1.6" points="${line.join(" ")}"/>`;
  }
  out += `</svg><div class="legend">` + series.map((s) => `<span><i style="background:${s.color}"></i>${esc(s.label)}</span>`).join("") + `</div>`;
  return out;
}

// -- pages ------------------------------------------------------------------------------------
const pages = {};

pages.overview = {
  async load() { return api("/api/overview"); },
  render(d) {
    setLive(!d.error && d.stats, d.sampled_at);
    if (!d.stats) { main.innerHTML = `<h2>Overview</h2><p class="error">${esc(d.error || "no sample yet")}</p>`; return; }
    const v = d.stats.ventilator || {}, s = d.stats.sink || {}, c = d.counts || {};
    const workers = v.workers || [];
    const slots = workers.reduce((a, w) => a + (w.concurrency || 0), 0);
    const busy = workers.reduce((a, w) => a + (w.running || 0), 0);  // each worker says its busy slots
    const last = (d.series || []).filter((p) => typeof p.done_per_s === "number").slice(-5);
    const rate = last.length ? last.reduce((a, p) => a + p.done_per_s, 0) / last.length : 0;
    const lat = (d.series || []).filter((p) => typeof p.latency_p50 === "number").slice(-1)[0];
    const link = v.sink_link || {};
    const sec = d.security || {};
    const queues = Object.entries(v.queues || {});
    main.innerHTML = `<h2>Overview</h2>
    <div class="grid">
      <div class="card" id="card-workers"><h3>Workers</h3><div class="big">${workers.length}</div>
        <div class="sub">online · ${num((v.counters || {}).lost_attempts || 0)} lost attempts</div></div>
      <div class="card" id="card-slots"><h3>Slots</h3><div class="big">${busy} / ${slots}</div>
        <div class="sub">busy / total · ${slots - busy} free</div></div>
      <div class="card"><h3>Throughput</h3><div class="big">${rate.toFixed(1)}/s</div>
        <div class="sub">tasks finished, last ${last.length} samples</div></div>
      <div class="card"><h3>Latency</h3><div class="big">${lat ? dur(lat.latency_p50) : "–"}</div>
        <div class="sub">p50 · p99 ${lat ? dur(lat.latency_p99) : "–"} (submit→finish, ${lat ? lat.latency_n : 0} tasks)</div></div>
      <div class="card"><h3>Loop lag</h3><div class="big">${dur((v.loop || {}).lag)}</div>
        <div class="sub">ventilator, max ${dur((v.loop || {}).lag_max)}</div></div>
    </div>
    <div class="card" style="margin-bottom:1rem"><h3>Tasks by state <span class="sub muted">(finished ones counted every 10 s)</span></h3><div id="state-counts" class="grid" style="margin:0">
      ${STATES.map((st) => `<a href="#/tasks?state=${st}" data-state="${st}">${badge(st)} <b>${num(c[st])}</b></a>`).join("")}
    </div></div>
    <div class="row2">
      <div class="card"><h3>Throughput (tasks/s)</h3>${chart(d.series || [], [
        { key: "done_per_s", label: "finished (ventilator)", color: "#1f6feb" },
        { key: "results_per_s", label: "results (sink)", color: "#1a7f37" }], "/s")}</div>
      <div class="card"><h3>Latency (submit → finish)</h3>${chart(d.series || [], [
        { key: "latency_p50", label: "p50", color: "#8250df" },
        { key: "latency_p99", label: "p99", color: "#cf222e" }], "s")}</div>
    </div>
    <div class="row2">
      <div class="card"><h3>Queues</h3><table id="queues"><tr><th>queue</th><th class="num">queued</th><th class="num">running</th><th>served</th><th></th></tr>
        ${queues.map(([q, x]) => `<tr data-queue="${esc(q)}"><td>${esc(q)} ${x.paused ? badge("PAUSED") : ""}</td>
          <td class="num">${num(x.queued)}</td><td class="num">${num(x.running)}</td>
          <td>${x.served ? "yes" : '<span class="error">no worker</span>'}</td>
          <td><button class="queue-action" data-queue="${esc(q)}" data-op="${x.paused ? "resume" : "pause"}">${x.paused ? "Resume" : "Pause"}</button></td></tr>`).join("")}
        </table>${queues.length ? "" : '<p class="muted">no queue yet</p>'}</div>
      <div class="card"><h3>Cluster</h3><dl class="kv">
        <dt>ventilator → sink</dt><dd id="sink-link"><span class="${link.up ? "up" : "down"}">${link.up ? "UP" : "DOWN"}</span>
          <span class="mono">${esc(link.endpoint)}</span> · heard ${dur(link.silent)} ago · ${num(link.waiting)} waiting</dd>
        <dt>ventilator</dt><dd class="mono">${esc((v.endpoints || {}).clients)} · up ${dur(v.uptime)} · journal ${esc(v.journal || "none")}</dd>
        <dt>sink</dt><dd>${num(s.retained)} retained · ${num(s.undelivered)} undelivered · ${num(s.awaiting_ack)} awaiting ack</dd>
        <dt>cluster keys</dt><dd id="sec-cluster">${v.secured && s.secured ? '<span class="up">CURVE</span>' : '<span class="down">none</span> (zq keys generate)'}</dd>
        <dt>this web server</dt><dd id="sec-web">auth: ${sec.auth === "token" ? '<span class="up">token</span>' : '<span class="down">none</span>'} ·
          TLS: ${sec.tls ? '<span class="up">on</span>' : "off"} · ${sec.loopback_only ? "loopback only" : (sec.insecure ? '<span class="down">open on the network</span>' : "network")}</dd>
        <dt>disabled names</dt><dd>${(v.disabled || []).map(esc).join(", ") || "none"}</dd>
      </dl></div>
    </div>`;
    for (const b of main.querySelectorAll("button.queue-action"))
      b.onclick = () => act(`/queues/${encodeURIComponent(b.dataset.queue)}/${b.dataset.op}`, `${b.dataset.op} ${b.dataset.queue}`);
  },
};

pages.workers = {
  async load() { return api("/api/overview?series=false"); },
  render(d) {
    setLive(!d.error && d.stats, d.sampled_at);
    const v = (d.stats || {}).ventilator || {};
    const workers = v.workers || [], lost = v.lost_workers || [];
    const causes = Object.entries(v.workers_lost || {}).map(([k, n]) => `${esc(k)}: ${num(n)}`).join(", ");
    main.innerHTML = `<h2>Workers</h2><table id="workers"><tr><th>worker</th><th>host</th><th class="num">pid</th><th>executor</th>
      <th>queues</th><th class="num">slots</th><th class="num">running</th><th class="num">prefetched</th><th class="num">credit</th>
      <th class="num">done</th><th class="num">last heard</th></tr>
      ${workers.map((w) => `<tr data-worker="${esc(w.id)}"><td class="mono">${esc(w.id)}</td><td>${esc(w.host)}</td><td class="num">${esc(w.pid)}</td>
        <td>${esc(w.executor)}</td><td>${(w.queues || []).map(esc).join(", ")}</td><td class="num">${num(w.concurrency)}</td>
        <td class="num">${num(w.running)}</td><td class="num">${num(w.prefetched)}</td><td class="num">${num(w.credit)}</td>
        <td class="num">${num(w.done)}</td><td class="num">${typeof w.silent === "number" ? dur(w.silent) + " ago" : "–"}</td></tr>`).join("")}
      </table>${workers.length ? "" : '<p class="muted">no worker online</p>'}
      <p class="muted">running: slots running a task, as the worker says; prefetched: the other tasks it holds (not started yet, or finished and waiting for the sink to take their results).</p>
      <h2 style="margin-top:1.2rem">Lost workers</h2>
      ${lost.length ? `<table id="lost-workers"><tr><th>worker</th><th>host</th><th class="num">pid</th><th>lost at</th><th>cause</th><th class="num">tasks held</th></tr>
        ${lost.slice().reverse().map((w) => `<tr data-lost="${esc(w.id)}"><td class="mono">${esc(w.id)}</td><td>${esc(w.host)}</td>
          <td class="num">${esc(w.pid)}</td><td>${localTime(w.lost_at)}</td><td class="error">${esc(w.cause)}</td><td class="num">${num(w.tasks)}</td></tr>`).join("")}</table>`
        : '<p class="muted">no worker lost in the last hour</p>'}
      ${causes ? `<p class="muted">lost since the ventilator started, by cause: ${causes}</p>` : ""}`;
  },
};

function tasksQuery() {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  return { state: q.get("state") || "", queue: q.get("queue") || "", name: q.get("name") || "",
           since: q.get("since") || "", until: q.get("until") || "", parent: q.get("parent") || "",
           offset: parseInt(q.get("offset") || "0", 10) || 0 };
}
function filterQuery(f) {  // the filters as the API takes them (times as Unix seconds)
  const q = new URLSearchParams();
  for (const k of ["state", "queue", "name", "parent"]) if (f[k]) q.set(k, f[k]);
  for (const k of ["since", "until"]) if (f[k]) q.set(k, String(new Date(f[k]).getTime() / 1000));
  return q;
}

pages.tasks = {
  limit: 50,
  setup() {
    const f = tasksQuery();
    main.innerHTML = `<h2>Tasks</h2>
    <form class="filters" id="filters">
      <label>state<select id="filter-state" name="state"><option value="">any</option>
        ${STATES.map((s) => `<option value="${s}" ${s === f.state ? "selected" : ""}>${s}</option>`).join("")}</select></label>
      <label>queue<input id="filter-queue" name="queue" value="${esc(f.queue)}" size="10"></label>
      <label>name<input id="filter-name" name="name" value="${esc(f.name)}" size="18" placeholder="mod.fn or fn"></label>
      <label>since<input id="filter-since" name="since" type="datetime-local" step="1" value="${esc(f.since)}"></label>
      <label>until<input id="filter-until" name="until" type="datetime-local" step="1" value="${esc(f.until)}"></label>
      ${f.parent ? `<label>follow-ups of<input id="filter-parent" name="parent" value="${esc(f.parent)}" size="18"></label>` : ""}
      <button id="filter-apply" class="primary" type="submit">Filter</button>
      <button id="filter-clear" type="button">Clear</button>
    </form>
    ${f.state === "FAILED" || f.state === "CANCELED" ? `<p><button id="requeue-all">Requeue the ${f.state === "FAILED" ? "failed" : "cancelled"} tasks shown by this filter (newest ${this.limit})</button></p>` : ""}
    <div class="pager"><button id="page-prev">← newer</button><span id="page-info" class="muted"></span><button id="page-next">older →</button></div>
    <div id="tasks-body"></div>`;
    const form = document.getElementById("filters");
    form.onsubmit = (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const k of ["state", "queue", "name", "since", "until", "parent"]) {
        const v = form.elements[k] ? form.elements[k].value.trim() : ""; if (v) q.set(k, v);
      }
      location.hash = "#/tasks" + (q.toString() ? "?" + q : "");
    };
    document.getElementById("filter-clear").onclick = () => { location.hash = "#/tasks"; };
    const move = (delta) => {
      const q = new URLSearchParams(location.hash.split("?")[1] || "");
      q.set("offset", String(Math.max(0, tasksQuery().offset + delta)));
      location.hash = "#/tasks?" + q;
    };
    const all = document.getElementById("requeue-all");
    if (all) all.onclick = async () => {
      if (!window.confirm("Requeue these tasks (and forget the originals)?")) return;
      const q = filterQuery(f);
      q.set("limit", String(this.limit));
      try {
        const r = await api("/api/tasks/requeue?" + q, "POST");
        const bad = Object.keys(r.errors).length;
        toast(`requeued ${Object.keys(r.requeued).length} task(s)` + (bad ? `, ${bad} refused` : ""), bad > 0);
        lastKey = ""; refresh();
      } catch (e) { toast("requeue failed: " + e.message, true); }
    };
    document.getElementById("page-prev").onclick = () => move(-this.limit);
    document.getElementById("page-next").onclick = () => move(this.limit);
  },
  async load() {
    const f = tasksQuery();
    const q = filterQuery(f);
    q.set("limit", String(this.limit)); q.set("offset", String(f.offset));
    return api("/api/tasks?" + q);
  },
  error(e) { document.getElementById("tasks-body").innerHTML = `<p class="error" id="page-error">${esc(e.message)}</p>`; },
  render(d) {
    setLive(true);
    const now = Date.now() / 1000;
    const first = d.total ? d.offset + 1 : 0, lastN = d.offset + d.items.length;
    document.getElementById("page-info").textContent = `${first}–${lastN} of ${d.total.toLocaleString()}`;
    document.getElementById("page-prev").disabled = d.offset <= 0;
    document.getElementById("page-next").disabled = lastN >= d.total;
    document.getElementById("tasks-body").innerHTML = `<table id="tasks-table"><tr><th>task</th><th>name</th><th>args</th><th>queue</th><th>state</th>
      <th>submitted</th><th>finished</th><th class="num">took</th><th class="num">attempts</th><th>worker</th><th>error</th></tr>
      ${d.items.map((t) => `<tr data-task-id="${esc(t.task_id)}" data-state="${esc(t.state)}"><td>${taskLink(t.task_id)}</td><td>${esc(t.name)}</td>
        <td class="mono args" title="${esc(t.args_repr)}">${esc(t.args_repr)}</td><td>${esc(t.queue)}</td><td>${badge(t.state)}${t.progress ? ` ${Math.round(100 * t.progress[0] / (t.progress[1] || 1))}%` : ""}</td>
        <td class="t">${localTime(t.submitted_at)}</td><td class="t">${localTime(t.finished_at)}</td>
        <td class="num">${dur((t.finished_at || now) - t.submitted_at)}</td><td class="num">${esc(t.attempts)}</td>
        <td class="mono">${esc(t.worker)}</td><td class="error">${t.error && t.error !== t.state ? esc(t.error) : ""}</td></tr>`).join("")}
      </table>${d.items.length ? "" : '<p class="muted">no task matches</p>'}`;
  },
};

function taskId() { return decodeURIComponent(location.hash.slice("#/task/".length).split("?")[0]); }

pages.task = {
  async load() { return api("/api/tasks/" + encodeURIComponent(taskId())); },
  render(d) {
    setLive(true);
    const t = d.task, r = d.result, p = d.progress;
    // the error: from the retained result, else from the ventilator's history
    const err = (r && r.error) || (t.error_type ? { type: t.error_type, message: t.message || "", traceback: t.traceback || "" } : null);
    const started = (r && r.started_at) || t.started_at;
    const host = (r && r.host) || t.host, pid = (r && r.pid) || t.pid;
    const lostList = (r && r.lost && r.lost.length) ? r.lost : (t.lost || []);
    const submitted = (r && r.submitted_at) || t.submitted_at;
    const finished = (r && r.finished_at) || t.finished_at;
    const active = ACTIVE.has(t.state);
    let prog = "";
    if (p) {
      const pct = p.total ? Math.min(100, (100 * p.done) / p.total) : 0;
      prog = `<div class="card" id="progress"><h3>Progress</h3><div class="bar"><div style="width:${pct.toFixed(1)}%"></div></div>
        <p>${esc(p.done)} / ${esc(p.total)} (${pct.toFixed(1)}%) ${esc(p.message || "")} · ETA ${p.eta != null ? dur(p.eta) : "–"}</p></div>`;
    }
    main.innerHTML = `<h2>Task <span class="mono" id="task-id">${esc(t.task_id)}</span> <span id="task-state">${badge(t.state)}</span></h2>
    <p><button id="btn-cancel" class="danger" ${active ? "" : "disabled"}>Cancel</button>
       <button id="btn-requeue" ${t.state === "FAILED" || t.state === "CANCELED" ? "" : "disabled"}>Requeue</button>
       <button id="btn-forget" ${active ? "disabled" : ""}>Forget</button></p>
    <div class="row2">
      <div class="card"><h3>Task</h3><dl class="kv">
        <dt>name</dt><dd class="mono">${esc(t.name)}</dd><dt>queue</dt><dd>${esc(t.queue)}</dd>
        <dt>args</dt><dd class="mono" id="args">${t.args_repr == null ? "<i>not recorded (its client said show_args=False)</i>" : t.args_repr === "" ? "<i>none</i>" : esc(t.args_repr)}</dd>
        <dt>attempts</dt><dd>${esc(t.attempts)}</dd>
        <dt>worker</dt><dd class="mono">${esc((r && r.worker) || t.worker)}${host ? ` on ${esc(host)} pid ${esc(pid)}` : ""}</dd>
        <dt>parent</dt><dd>${taskLink(t.parent) || "–"}</dd>
        <dt>follow-ups</dt><dd><a id="follow-ups" href="#/tasks?parent=${encodeURIComponent(t.task_id)}">list them</a></dd><dt>root</dt><dd>${t.root && t.root !== t.task_id ? taskLink(t.root) : "itself"}</dd>
        ${t.forgotten ? "<dt>forgotten</dt><dd>yes</dd>" : ""}
        ${r && r.value_repr != null ? `<dt>value</dt><dd class="mono" id="value">${esc(r.value_repr)}</dd>` : ""}
      </dl></div>
      <div class="card"><h3>Timings (local time)</h3><dl class="kv" id="timings">
        <dt>submitted</dt><dd>${localTime(submitted)}</dd>
        <dt>started</dt><dd>${localTime(started) || "–"}</dd>
        <dt>finished</dt><dd>${localTime(finished) || "–"}</dd>
        <dt>waited</dt><dd>${r ? dur(r.queue_time) : (started ? dur(started - submitted) : "–")}</dd>
        <dt>ran</dt><dd>${r ? dur(r.run_time) : (started && finished ? dur(finished - started) : "–")}</dd>
        <dt>total</dt><dd>${dur((finished || Date.now() / 1000) - submitted)}</dd>
      </dl></div>
    </div>
    ${prog}
    ${lostList.length ? `<div class="card"><h3>Lost attempts</h3><ul id="lost">${lostList.map((l) => `<li>${esc(l)}</li>`).join("")}</ul></div>` : ""}
    ${err ? `<div class="card"><h3>Error</h3><p class="error" id="error"><b>${esc(err.type)}</b>: ${esc(err.message)}</p>
      ${err.traceback ? `<pre id="traceback">${esc(err.traceback)}</pre>` : ""}</div>`
      : (t.state === "FAILED" ? `<div class="card"><h3>Error</h3><p class="error" id="error">${esc(t.error && t.error !== t.state ? t.error : "failed")}</p>
         <p class="muted">The sink holds no result for this task and its worker did not report the error's details.</p></div>` : "")}
    ${!r && !active ? '<p class="muted">No result retained at the sink for this task: timings shown are the ventilator\'s.</p>' : ""}`;
    const id = encodeURIComponent(t.task_id);
    document.getElementById("btn-cancel").onclick = () => act(`/tasks/${id}/cancel`, "cancel");
    document.getElementById("btn-requeue").onclick = async () => {
      const b = await act(`/tasks/${id}/requeue`, "requeue");
      if (b && b.task_id) location.hash = "#/task/" + encodeURIComponent(b.task_id);
    };
    document.getElementById("btn-forget").onclick = async () => {
      try { await api(`/tasks/${id}`, "DELETE"); toast("forgotten"); location.hash = "#/tasks"; }
      catch (e) { toast("forget failed: " + e.message, true); }
    };
  },
};

pages.schedules = {
  async load() {
    const [reg, ov] = await Promise.all([api("/api/schedules"), api("/api/overview?series=false")]);
    return { reg, disabled: new Set((((ov.stats || {}).ventilator) || {}).disabled || []) };
  },
  render(d) {
    setLive(true);
    const sch = d.reg.schedules, names = Object.entries(d.reg.tasks || {});
    main.innerHTML = `<h2>Schedules</h2>
    ${sch.length ? `<table id="schedules"><tr><th>task</th><th>queue</th><th>every / cron</th><th>last run</th><th class="num">runs</th><th>next run</th></tr>
      ${sch.map((s) => `<tr><td class="mono">${esc(s.name)}</td><td>${esc(s.queue)}</td>
        <td>${s.every ? "every " + dur(s.every) : `<code>${esc(s.cron)}</code> ${esc(s.tz)}`}${s.jitter ? ` ± ${dur(s.jitter)} jitter` : ""}${s.end ? ` until ${localTime(s.end)}` : ""}</td>
        <td>${localTime(s.last_slot) || "–"}</td><td class="num">${num(s.runs)}${s.max_runs ? " / " + num(s.max_runs) : ""}</td>
        <td>${localTime(s.next_run) || "–"}${s.next_run ? ` (in ${dur(s.next_run - d.reg.now)})` : ""}</td></tr>`).join("")}</table>`
      : '<p class="muted">No schedule: workers announce @zq.task(every=…, cron=…) tasks of the modules they --import.</p>'}
    <h2 style="margin-top:1.2rem">Task names</h2>
    <table id="names"><tr><th>name</th><th>queue</th><th>retries</th><th>timeout</th><th>state</th><th></th></tr>
      ${names.map(([n, i]) => { const off = d.disabled.has(n); return `<tr data-name="${esc(n)}"><td class="mono">${esc(n)}</td><td>${esc(i.queue)}</td>
        <td>${esc(i.retries)}</td><td>${i.timeout ? dur(i.timeout) : "–"}</td><td>${off ? badge("PAUSED") + " disabled" : "enabled"}</td>
        <td><button class="name-action" data-name="${esc(n)}" data-op="${off ? "enable" : "disable"}">${off ? "Enable" : "Disable"}</button></td></tr>`; }).join("")}
    </table>${names.length ? "" : '<p class="muted">No worker registered a task by name (zq worker --import MODULE).</p>'}`;
    for (const b of main.querySelectorAll("button.name-action"))
      b.onclick = () => act(`/names/${encodeURIComponent(b.dataset.name)}/${b.dataset.op}`, `${b.dataset.op} ${b.dataset.name}`);
  },
};

// -- router and polling -----------------------------------------------------------------------
function route() {
  const h = location.hash || "#/";
  if (h.startsWith("#/tasks")) return "tasks";
  if (h.startsWith("#/task/")) return "task";
  if (h.startsWith("#/workers")) return "workers";
  if (h.startsWith("#/schedules")) return "schedules";
  return "overview";
}

async function refresh() {
  const gen = generation, page = pages[route()];
  try {
    const data = await page.load();
    const key = JSON.stringify(data);
    if (gen === generation && key !== lastKey) { lastKey = key; page.render(data); }
    else if (gen === generation) setLive(true, data.sampled_at);
  } catch (e) {
    if (gen !== generation) return;
    setLive(false);
    if (page.error) page.error(e);
    else if (!main.dataset.rendered || route() === "task") main.innerHTML = `<p class="error" id="page-error">${esc(e.message)}</p>`;
  }
  main.dataset.rendered = "1";
}

function navigate() {
  generation += 1;
  lastKey = "";
  clearInterval(timer);
  main.dataset.rendered = "";
  const name = route();
  for (const a of document.querySelectorAll("header nav a"))
    a.classList.toggle("active", a.id === "nav-" + (name === "task" ? "tasks" : name));
  if (pages[name].setup) pages[name].setup();
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

document.getElementById("logout").hidden = AUTH !== "token";
window.addEventListener("hashchange", navigate);
navigate();
