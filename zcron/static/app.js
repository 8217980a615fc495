"use strict";
// The zcron dashboard: renders /api/summary (states, cluster, errors, strips, computed on
// the sink) and the newest runs from /api/runs. Served as a file so the CSP forbids inline
// script; every value is put in the page as text, never as HTML.
const STATUSES = ["ok", "failed", "timeout", "killed", "lost", "skipped", "missed", "refused"];
const FAILURES = new Set(["failed", "timeout", "killed", "lost", "missed", "refused"]);
const STATE_ORDER = { late: 0, failing: 1, paused: 2, ok: 3, disabled: 4 };
const WINDOW_S = 600;
const REFRESH_MS = 2000;
const UTC_NAMES = new Set(["UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "UCT", "Zulu"]);
// The filter and the selected job live in the URL, so a link shows the same view.
const view = readView();

function readView() {
  const q = new URLSearchParams(location.search);
  return { job: q.get("job") || null, text: q.get("q") || "", failing: q.get("failing") === "1" };
}

function writeView() {
  const q = new URLSearchParams();
  if (view.job) q.set("job", view.job);
  if (view.text) q.set("q", view.text);
  if (view.failing) q.set("failing", "1");
  const search = q.toString();
  history.replaceState(null, "", search ? "?" + search : location.pathname);
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue("--" + name) || "#888";
}

function badge(name) {
  if (!name) return el("span", { className: "muted" }, "never");
  const b = el("span", { className: "badge" }, name);
  b.style.background = color(name);
  return b;
}

// Times come from records; an absurd one (year 30000, 1e300) must not break the page.
function isTime(t) { return typeof t === "number" && isFinite(t) && Math.abs(t) < 1e11; }

function iso(t) { return isTime(t) ? new Date(t * 1000).toISOString() : ""; }

function ago(t, now) {
  if (!isTime(t)) return "–";
  const d = now - t;
  const s = Math.abs(d);
  const text = s < 1 ? "now" : s < 90 ? Math.round(s) + "s" : s < 5400 ? Math.round(s / 60) + "m"
    : s < 172800 ? Math.round(s / 3600) + "h" : Math.round(s / 86400) + "d";
  if (text === "now") return text;
  return d >= 0 ? text + " ago" : "in " + text;
}

function when(t, now) { return el("span", { title: iso(t) }, ago(t, now)); }

// A next tick already past has just been fired; the one after it is not known here yet.
function nextRun(t, now) {
  return isTime(t) && t <= now ? el("span", { className: "muted" }, "due now") : when(t, now);
}

function ms(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
  const v = seconds * 1000;
  return (v < 10 ? v.toFixed(2) : v < 1000 ? v.toFixed(1) : Math.round(v).toLocaleString()) + " ms";
}

function recordTime(r) { return r.finished ?? r.started ?? r.tick; }

function lateness(r) {
  return r.attempt === 1 && isTime(r.started) && isTime(r.tick) ? r.started - r.tick : null;
}

function duration(r) {
  if (!isTime(r.started) || !isTime(r.finished)) return "–";
  const s = r.finished - r.started;
  return s < 1 ? ms(s) : s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

function kindTag(kind) {
  return kind && kind !== "scheduled" ? el("span", { className: "kind" }, kind) : "";
}

function timeline(marks, now) {
  const bar = el("div", { className: "timeline" });
  for (const [t, status, kind] of marks || []) {
    if (!isTime(t)) continue;
    const x = 1 - (now - t) / WINDOW_S;
    if (x < 0 || x > 1) continue;
    const block = el("span", { title: `${status} (${kind}) — ${iso(t)}` });
    block.style.left = `calc(${(x * 100).toFixed(2)}% - 4px)`;
    block.style.background = color(status);
    bar.append(block);
  }
  return bar;
}

function td(cls, ...children) { return el("td", { className: cls }, ...children); }

function jobRow(job, strips, now) {
  const last = job.last_run;
  const bad = job.state === "failing" || job.state === "late";
  const row = el("tr", {
    className: ["job", bad ? "bad" : "", job.state === "disabled" ? "disabled" : "",
                job.job === view.job ? "selected" : ""].join(" "),
    onclick: () => { view.job = view.job === job.job ? null : job.job; writeView(); refresh(); },
    title: job.source || "",
  });
  row.dataset.job = job.job;
  row.dataset.state = job.state;
  const noSchedulers = job.schedule != null && job.schedulers.length === 0;
  row.append(
    td("c-state", badge(job.state)),
    td("c-name", el("b", {}, job.job), job.on_failure ? el("span", { className: "hook",
       title: `a failed run runs ${job.job}:on_failure` }, " ⚑") : "",
       el("span", { className: "reason" }, job.reason || "")),
    job.after ? td("c-schedule mono chain", `after: ${job.after.join(", ")}`)
      : td("c-schedule mono", job.schedule ?? "–",
           job.timezone && !UTC_NAMES.has(job.timezone) ? ` ${job.timezone}` : ""),
    td("c-pool", job.pool ?? "–"),
    td("c-last", last ? when(recordTime(last), now) : "–", " ",
       last ? badge(last.status) : "", last ? kindTag(last.kind) : ""),
    td("c-lateness num", ms(last && last.lateness)),
    td("c-next", noSchedulers ? "no live scheduler"
                 : job.state === "paused" ? "paused" : nextRun(job.next_tick, now)),
    td("c-success", when(job.last_success, now)),
    td("c-strip", timeline(strips[job.job], now)),
  );
  return row;
}

function runRow(r, kinds, now) {
  const tail = (r.stderr_tail || r.stdout_tail || "").trim().split("\n").pop();
  return el("tr", { className: FAILURES.has(r.status) ? "bad" : "" },
    td("c-finished", when(recordTime(r), now)),
    td("c-job", r.job),
    td("c-status", badge(r.status)),
    td("c-kind", r.attempt > 1 ? `retry ${r.attempt}` : kinds(r)),
    td("c-lateness num", ms(lateness(r))),
    td("c-duration num", duration(r)),
    td("c-exit num", r.exit_code ?? (r.signal != null ? "sig " + r.signal : "–")),
    td("c-worker", r.worker ?? "–"),
    td("mono tail", el("span", { title: r.stderr_tail || r.stdout_tail || "" }, tail)),
  );
}

function shown(job) {
  if (view.failing && job.state !== "failing" && job.state !== "late") return false;
  return !view.text || job.job.toLowerCase().includes(view.text.toLowerCase());
}

function setStat(id, value, cls) {
  document.getElementById("n-" + id).textContent = value;
  document.getElementById("stat-" + id).className = "stat" + (value ? " " + cls : "");
}

function renderHeader(s) {
  const count = state => s.jobs.filter(j => j.state === state).length;
  document.getElementById("n-jobs").textContent = s.jobs.length;
  setStat("late", count("late"), "warn");
  setStat("failing", count("failing"), "bad");
  document.getElementById("p99").textContent = ms(s.lateness.p99);
  document.getElementById("p99-job").textContent =
    s.lateness.worst_job ? `(worst: ${s.lateness.worst_job} ${ms(s.lateness.worst)})` : "";
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function dot(ok) {
  const d = el("i", { className: "dot" });
  d.style.background = color(ok ? "live" : "dead");
  return d;
}

function renderCluster(s) {
  document.getElementById("schedulers").replaceChildren(...s.schedulers.map(x =>
    el("li", { className: "scheduler " + x.state }, dot(x.state === "live" && x.firing),
       el("b", {}, x.id), ` ${x.state}`, x.state === "live" ? (x.firing ? ", firing" : ", not firing") : "",
       x.reason ? ` — ${x.reason}` : "")));
  const pools = Object.entries(s.pools);
  document.getElementById("pools").replaceChildren(...pools.map(([pool, workers]) =>
    el("li", { className: "pool" }, dot(workers.length > 0), el("b", {}, pool), ": ",
       workers.length ? workers.map(w => `${w.id} ${w.free}/${w.slots} free`).join(", ")
         : "no live worker")));
  document.getElementById("sink").replaceChildren(
    el("li", {}, dot(true), `live, ${s.sink.records.toLocaleString()} records`));
  const errors = document.getElementById("errors");
  errors.replaceChildren(...s.errors.map(e => el("li", {}, e.error)));
  document.getElementById("errors-section").className = s.errors.length ? "" : "hidden";
}

function renderNextUp(s, now) {
  const upcoming = s.jobs.filter(j => isTime(j.next_tick) && j.state !== "disabled" && j.state !== "paused")
    .sort((a, b) => a.next_tick - b.next_tick).slice(0, 8);
  document.getElementById("next-up").replaceChildren(...upcoming.map(j =>
    el("li", {}, el("b", {}, j.job), " ", nextRun(j.next_tick, now))));
}

function render(s, runs) {
  const now = s.now;
  const jobs = s.jobs.filter(shown).sort((a, b) =>
    (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || a.job.localeCompare(b.job));
  renderHeader(s);
  renderCluster(s);
  renderNextUp(s, now);
  document.getElementById("jobs").replaceChildren(...jobs.map(j => jobRow(j, s.strips, now)));
  const byName = new Map(s.jobs.map(j => [j.job, j]));
  const kinds = r => {
    const mark = (s.strips[r.job] || []).find(m => m[0] === (r.started ?? r.tick));
    if (r.job.startsWith("push:")) return "push";
    return mark && mark[2] !== "scheduled" ? mark[2] : "";
  };
  document.getElementById("runs").replaceChildren(...runs.map(r => runRow(r, kinds, now)));
  document.getElementById("strips-note").textContent = s.strips_complete ? ""
    : "— the strips show only the newest runs of the last 10 minutes (too many to show all)";
  document.getElementById("runs-scope").textContent =
    view.job ? `— ${view.job} (select it again for all jobs)` : "— all jobs";
  document.body.dataset.rendered = String(Date.now());
  document.body.dataset.scrollWidth = String(document.scrollingElement.scrollWidth);
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  const banner = document.getElementById("banner");
  try {
    const runsPath = "/api/runs?limit=50" + (view.job ? "&job=" + encodeURIComponent(view.job) : "");
    const [summary, runs] = await Promise.all([getJSON("/api/summary"), getJSON(runsPath)]);
    render(summary, runs);
    banner.className = "hidden";
  } catch (err) {
    banner.textContent = `cannot reach the sink: ${err.message} (retrying)`;
    banner.className = "";
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  document.getElementById("legend").append(...STATUSES.map(s => {
    const swatch = el("i");
    swatch.style.background = color(s);
    return el("span", {}, swatch, s);
  }));
  const text = document.getElementById("filter-text");
  const failing = document.getElementById("filter-failing");
  text.value = view.text;
  failing.checked = view.failing;
  text.addEventListener("input", () => { view.text = text.value; writeView(); refresh(); });
  failing.addEventListener("change", () => { view.failing = failing.checked; writeView(); refresh(); });
  document.getElementById("filters").addEventListener("submit", e => e.preventDefault());
  refresh();
}

start();
