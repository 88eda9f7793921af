// The panda-lab web monitor: BigPanDA's views (tasks, a task, jobs, a job, errors,
// sites) rendered from the server's JSON views (/monitor/api/...), with the page URL's
// query string as the filter, kept live from the server's event stream (/api/events).
//
// Bounded by construction: a refresh replaces a view's nodes, never appends; the stream
// reader (events.js) keeps only the unfinished part of its last line; one pending
// refresh at a time.  A page left open for a day holds what one render holds.
//
// The event stream is the browser's, not the page's: the monitor tabs of one browser
// share one (events.js), each keeping what its view follows.  A hidden tab refreshes
// nothing and stands back from holding the stream; shown again, it refreshes once for
// what it missed.

const REFRESH_MS = {task: 150, job: 150, list: 1000};   // the most often a view refetches
let ctx = null;              // {token, base, share, logout, events}
let stream = null;           // the browser's shared event stream (events.js), or a poll
let wanted = null;           // {tasks: Set of ids, or null: all} the view follows
let timer = null;            // the pending refresh
let current = null;          // {kind, load, render, tasks}
let generation = 0;          // bumped at each navigation: late answers are dropped

const esc = s => String(s ?? "").replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const fmtTime = t => t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "";
function fmtDur(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, s);
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}
const pct = x => x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`;
const state = s => `<span class="state st-${esc(s)}">${esc(s)}</span>`;

async function api(path, params) {
  const qs = params && params.toString() ? `?${params}` : "";
  const r = await fetch(`${ctx.base}api/${path}${qs}`,
                        {headers: {Authorization: `Bearer ${ctx.token}`}});
  const body = await r.json();
  if (r.status === 401) { ctx.logout(body.detail); throw new Error("logged out"); }
  if (!r.ok) {
    const d = body.detail;
    const text = Array.isArray(d) ? d.map(e => `${e.loc.at(-1)}: ${e.msg}`).join("; ") : d;
    throw new Error(`${r.status}: ${text}`);
  }
  return body;
}

// ---- navigation ----------------------------------------------------------------------
// A share link opens its task's page only: there, links to other views are plain text.
const link = (path, text, params) => ctx.share ? `<span>${esc(text)}</span>` :
  `<a href="${esc(ctx.base + path + (params ? `?${params}` : ""))}" data-nav>${esc(text)}</a>`;

function withParam(name, value) {
  const p = new URLSearchParams(location.search);
  if (value === null || value === "") p.delete(name); else p.set(name, value);
  if (name !== "page") p.delete("page");
  return p;
}

function go(url) {
  history.pushState(null, "", url);
  route();
}

function route() {
  const rest = location.pathname.slice(ctx.base.length).replace(/\/$/, "");
  const params = new URLSearchParams(location.search);
  const [view, id] = rest.split("/");
  const views = {"": tasksView, tasks: tasksView, jobs: jobsView, errors: errorsView,
                 sites: sitesView};
  let v;
  if (view === "tasks" && id) v = taskView(id);
  else if (view === "jobs" && id) v = jobView(id);
  else v = (views[view] || notFound)(params);
  show(v);
}

function show(view) {
  generation += 1;
  current = view;
  document.querySelectorAll("nav.top a").forEach(a => a.classList.toggle(
    "here", a.dataset.view === view.nav));
  document.getElementById("view").innerHTML = `<p class="loading">loading…</p>`;
  refresh(generation);
  if (view.followTask) wanted = null;         // a task's or job's page: once it is known
  else listen(view.tasks);
}

async function refresh(gen) {
  const view = current;
  const el = document.getElementById("view");
  try {
    const data = await view.load();
    if (gen !== generation) return;
    el.innerHTML = view.render(data);
    el.dataset.view = view.kind;
    if (view.after) view.after(data);
    el.dataset.updated = String(Date.now());
    if (view.followTask) listen(view.followTask(data));
  } catch (err) {
    if (gen !== generation) return;
    el.innerHTML = `<p class="error" role="alert">${esc(err.message)}</p>`;
  }
}

// ---- live: the event stream -----------------------------------------------------------
const SHARE_POLL_MS = 5000;  // a share link has no event stream: its page is polled

// `tasks`: the task ids (a number or "1,2") the view follows; undefined: every task.
function listen(tasks) {
  if (ctx.share) {
    if (stream) return;
    const id = setInterval(schedule, SHARE_POLL_MS);
    stream = {close() { clearInterval(id); }};
    const indicator = document.getElementById("live");
    indicator.className = "live on";
    indicator.textContent = `shared, read-only: refreshed every ${SHARE_POLL_MS / 1000} s`;
    return;
  }
  wanted = {tasks: tasks === undefined ? null
                   : new Set(String(tasks).split(",").map(Number))};
}

// Whether a message of the stream changes what the view shows.
function concerns(msg) {
  if (msg.resync || msg.overflow) return true;      // a gap: read everything again
  if (!wanted) return false;                          // the view does not know yet
  const ids = wanted.tasks;
  if (!ids) return !!(msg.jobs || msg.tasks);
  return (msg.jobs || []).some(j => ids.has(j.task)) ||
         (msg.tasks || []).some(t => ids.has(t.id));
}

function openStream() {
  const indicator = document.getElementById("live");
  stream = ctx.events.sharedStream({
    url: `${ctx.base.replace(/monitor\/$/, "")}api/events`, base: ctx.base, token: ctx.token,
    onMessage(msg) { if (!document.hidden && concerns(msg)) schedule(); },
    onStatus({on, text, lead}) {
      if (document.hidden) return;
      indicator.className = on ? "live on" : "live off";
      indicator.textContent = text;
      indicator.dataset.lead = lead ? "yes" : "no";
      indicator.title = lead ? "this tab holds the event stream its browser's monitor tabs share"
        : "the event stream is held by another monitor tab of this browser";
    }});
  if (!document.hidden) stream.show();
}

// A refresh at most every REFRESH_MS, never while the tab is hidden: a refresh pending
// when the tab is hidden is dropped (shown again, the tab schedules one).
function schedule() {
  if (timer || !current || document.hidden) return;
  const gen = generation;
  timer = setTimeout(() => {
    timer = null;
    if (gen === generation && !document.hidden) refresh(gen);
  }, REFRESH_MS[current.kind] ?? 1000);
}

// ---- shared pieces --------------------------------------------------------------------
function filterForm(fields) {
  const p = new URLSearchParams(location.search);
  const inputs = fields.map(([name, label]) =>
    `<label>${esc(label)} <input name="${name}" value="${esc(p.get(name) ?? "")}"
       size="${name === "hours" || name === "attempt" ? 4 : 12}"></label>`).join(" ");
  return `<form class="filters">${inputs} <button type="submit">filter</button>
    ${link(location.pathname.slice(ctx.base.length), "clear")}</form>`;
}

function sortHeader(key, label) {
  const p = new URLSearchParams(location.search);
  const now = p.get("sort");
  const next = now === `-${key}` ? key : `-${key}`;
  const mark = now === key ? " ▲" : now === `-${key}` ? " ▼" : "";
  return `<th>${link(location.pathname.slice(ctx.base.length), label + mark,
                     withParam("sort", next))}</th>`;
}

function pager(d) {
  const here = location.pathname.slice(ctx.base.length);
  const prev = d.page > 1 ? link(here, "← previous", withParam("page", d.page - 1)) : "";
  const next = d.page < d.pages ? link(here, "next →", withParam("page", d.page + 1)) : "";
  return `<p class="pager">${prev} page ${d.page} of ${d.pages} (${d.total} in all) ${next}</p>`;
}

function facets(groups, param) {
  const p = new URLSearchParams(location.search);
  const here = location.pathname.slice(ctx.base.length);
  return Object.entries(groups).map(([name, counts]) => {
    const key = param[name] ?? name;
    const items = Object.entries(counts).map(([v, n]) =>
      `<li class="${p.get(key) === v ? "on" : ""}">${link(here, v, withParam(key, v))}
         <span class="n">${n}</span></li>`).join("");
    return `<div class="facet" data-facet="${esc(name)}"><h3>${esc(name)}</h3><ul>${items}</ul></div>`;
  }).join("");
}

function bars(counts, edges, unit) {
  const max = Math.max(1, ...counts);
  const w = 12;
  const rects = counts.map((n, i) => `<rect x="${i * w}" y="${60 - 58 * n / max}" width="${w - 1}"
      height="${58 * n / max}"><title>${n} in [${edges[i].toPrecision(3)}, ${
      edges[i + 1].toPrecision(3)}) ${unit}</title></rect>`).join("");
  return `<svg class="hist" viewBox="0 0 ${counts.length * w} 60" width="${counts.length * w * 1.5}"
      height="70" role="img">${rects}</svg>
    <span class="axis">${edges[0].toPrecision(3)} – ${edges.at(-1).toPrecision(3)} ${unit}</span>`;
}

function histogram(title, h, unit) {
  if (!h.edges.length) return `<h3>${esc(title)}</h3><p class="none">no finished job measured</p>`;
  const rows = Object.entries(h.groups).map(([site, g]) => `<tr data-site="${esc(site)}">
      <td>${esc(site)}</td><td>${g.n}</td><td>${g.min.toPrecision(3)}</td>
      <td>${g.mean.toPrecision(3)}</td><td>${g.max.toPrecision(3)}</td>
      <td>${bars(g.counts, h.edges, unit)}</td></tr>`).join("");
  return `<h3>${esc(title)}</h3><table class="dist" data-title="${esc(title)}"><tr><th>site</th><th>jobs</th><th>min</th>
    <th>mean</th><th>max</th><th>distribution</th></tr>${rows}</table>`;
}

const notFound = () => ({kind: "list", nav: "", load: async () => null,
                         render: () => `<p class="error">no such view</p>`});

// ---- the views ------------------------------------------------------------------------
function tasksView(params) {
  return {kind: "list", nav: "tasks", load: () => api("tasks", params), render: d => `
    <h2>Tasks</h2>
    ${filterForm([["owner", "owner"], ["state", "state"], ["site", "site"], ["name", "name"],
                  ["hours", "hours"]])}
    <div class="facets">${facets(d.facets, {})}</div>
    <table class="rows tasks"><thead><tr>${sortHeader("id", "id")}${sortHeader("name", "name")}
      ${sortHeader("owner", "owner")}${sortHeader("state", "state")}<th>progress</th>
      <th>sites</th><th>failures</th>${sortHeader("created", "age")}
      ${sortHeader("duration", "duration")}</tr></thead><tbody>
    ${d.tasks.map(t => `<tr data-task-id="${t.id}" data-state="${esc(t.state)}">
      <td>${link(`tasks/${t.id}`, t.id)}</td><td>${link(`tasks/${t.id}`, t.name)}</td>
      <td>${esc(t.owner)}</td><td>${state(t.state)}</td>
      <td class="progress"><meter value="${t.progress}"></meter> ${t.done}/${t.n_jobs}</td>
      <td>${t.sites.map(s => link("sites", s, new URLSearchParams({site: s}))).join(" ")}</td>
      <td>${t.failures ? link("jobs", t.failures, new URLSearchParams({task: t.id,
            state: "failed"})) : 0}</td>
      <td>${fmtDur(t.age)}</td><td>${fmtDur(t.duration)}</td></tr>`).join("")}
    </tbody></table>${pager(d)}`};
}

const num = (x, digits = 1) => x === null || x === undefined ? "–" : Number(x).toFixed(digits);

// JEDI's scouting: what the first jobs measured, and the job size it gave the rest.
function scoutingSection(sc) {
  if (!sc.scouts.length && !sc.sizing) return "";
  const rows = sc.scouts.map(s => `<tr data-scout="${s.job_index}"><td>${s.job_index}</td>
    <td>${state(s.state)}</td><td>${esc(s.site)}</td><td>${s.events}</td>
    <td>${fmtDur(s.wall_s)}</td><td>${num(s.events_per_s)}</td></tr>`).join("");
  const z = sc.sizing;
  const rates = z ? Object.entries(z.per_site).map(([site, r]) =>
    `${esc(site)}: ${num(r)} events/s`).join(", ") : "";
  const sizing = z ? `<p class="sizing" data-events-per-job="${z.events_per_job}">
      The rest: <b>${z.events_per_job} events per job</b> (${esc(z.note)}).
      Median rate per site: ${rates || "–"}${z.rss_mb ? `; most memory ${num(z.rss_mb, 0)} MB`
      : ""}.</p>` : `<p class="none">the scouts have not all ended: the rest is not sized yet</p>`;
  return `<h3>Scouting</h3><table class="rows scouts"><tr><th>scout job</th><th>state</th>
    <th>site</th><th>events</th><th>wall time</th><th>events/s (wall)</th></tr>${rows}</table>
    ${sizing}`;
}

// The network links each of the task's sites reads storage over (learned or declared).
function linksSection(links) {
  const rows = Object.entries(links).flatMap(([site, ls]) => ls.map(l =>
    `<tr data-site="${esc(site)}" data-endpoint="${esc(l.endpoint)}"><td>${esc(site)}</td>
     <td>${esc(l.endpoint)}</td><td>${num(l.mbps)}</td><td>${num(l.latency_ms)}</td>
     <td>${esc(l.source)}</td><td>${l.observations}</td><td>${fmtDur(l.age_s)}</td></tr>`));
  if (!rows.length) return "";
  return `<h3>Network links of its sites</h3><table class="rows links"><tr><th>site</th>
    <th>endpoint</th><th>MB/s</th><th>latency ms</th><th>source</th><th>observations</th>
    <th>age</th></tr>${rows.join("")}</table>`;
}

// The merged histograms, drawn by the server (SVG as images: no script runs from them).
function mergedSection(hs) {
  if (!hs || !hs.length) return "";
  return `<h3>Merged result</h3><div class="merged">${hs.map(h => `<figure data-hist="${
    esc(h.name)}"><img alt="${esc(h.name)}" src="data:image/svg+xml;charset=utf-8,${
    encodeURIComponent(h.svg)}"><figcaption>${esc(h.name)}${h.final ? "" : " (partial)"}
    </figcaption></figure>`).join("")}</div>`;
}

function taskView(id) {
  return {kind: "task", nav: "tasks", load: () => api(`tasks/${encodeURIComponent(id)}`),
    followTask: t => t.id, render: t => {
      const states = [...new Set(Object.values(t.jobs_by_site).flatMap(Object.keys))].sort();
      const sites = Object.entries(t.jobs_by_site).map(([site, c]) => `<tr data-site="${
        esc(site)}"><td>${link("jobs", site, new URLSearchParams({task: t.id, site}))}</td>${
        states.map(s => `<td data-state="${esc(s)}">${c[s] ?? 0}</td>`).join("")}</tr>`).join("");
      const prog = t.progress.done.length ? bars(t.progress.done, t.progress.edges.map(
        e => e - t.created_at), "s after submission") : "<p class='none'>no job finished yet</p>";
      const b = t.brokerage;
      const summary = t.summary ? `<h3>Summary</h3><pre class="summary">${
        esc(JSON.stringify(t.summary, null, 2))}</pre>` : "";
      return `<h2>Task ${t.id}: ${esc(t.name)}</h2>
        <p>${state(t.state)} owner ${esc(t.owner) || "–"}, created ${fmtTime(t.created_at)}
           ${t.ended_at ? `, ended ${fmtTime(t.ended_at)}` : ""}. ${esc(t.message)}</p>
        <p id="task-done" data-done="${t.n_done}" data-jobs="${t.n_jobs}">
           <meter value="${t.n_jobs ? t.n_done / t.n_jobs : 0}"></meter>
           ${t.n_done}/${t.n_jobs} jobs done</p>
        ${summary}
        ${mergedSection(t.histograms)}
        ${scoutingSection(t.scouting)}
        <h3>Jobs per site (newest attempt of each)</h3>
        <table class="rows jobs-by-site"><tr><th>site</th>${states.map(
          s => `<th>${state(s)}</th>`).join("")}</tr>${sites}</table>
        <p>${link("jobs", "all attempts", new URLSearchParams({task: t.id}))} ·
           ${link("errors", "errors", new URLSearchParams({task: t.id}))}</p>
        <h3>Progress over time</h3><div class="progress-chart">${prog}</div>
        ${histogram("Wall time per site", t.distributions.walltime_s, "s")}
        ${histogram("Events per second per site", t.distributions.events_per_s, "events/s")}
        ${histogram("Peak memory per site", t.distributions.memory_mb, "MB")}
        <h3>Brokerage (newest ${b.sampled} attempts)</h3>
        <table class="rows brokerage"><tr><th>picked</th><th>jobs</th></tr>${
          Object.entries(b.picked).map(([s, n]) => `<tr><td>${esc(s)}</td><td>${n}</td></tr>`)
            .join("")}</table>
        ${Object.keys(b.rejected).length ? `<table class="rows"><tr><th>rejected</th>
          <th>jobs</th></tr>${Object.entries(b.rejected).map(([r, n]) =>
          `<tr><td>${esc(r)}</td><td>${n}</td></tr>`).join("")}</table>` : ""}
        ${linksSection(t.links)}`;
    }};
}

function jobsView(params) {
  const task = params.get("task");
  return {kind: "list", nav: "jobs", tasks: task && /^\d+$/.test(task) ? task : undefined,
    load: () => api("jobs", params), render: d => `
    <h2>Jobs${task ? ` of task ${link(`tasks/${task}`, task)}` : ""}</h2>
    ${filterForm([["task", "task"], ["owner", "owner"], ["state", "state"], ["site", "site"],
                  ["category", "error"], ["attempt", "attempt"], ["hours", "hours"]])}
    <div class="facets">${facets(d.facets, {error_category: "category"})}</div>
    <table class="rows jobs"><thead><tr>${sortHeader("id", "id")}${sortHeader("task", "task")}
      ${sortHeader("index", "index")}${sortHeader("attempt", "attempt")}
      ${sortHeader("state", "state")}${sortHeader("site", "site")}
      ${sortHeader("started", "started")}${sortHeader("duration", "duration")}<th>error</th>
      </tr></thead><tbody>
    ${d.jobs.map(j => `<tr data-job-id="${j.id}" data-state="${esc(j.state)}">
      <td>${link(`jobs/${j.id}`, j.id)}</td><td>${link(`tasks/${j.task_id}`, j.task_id)}</td>
      <td>${j.job_index}</td><td>${j.attempt}</td><td>${state(j.state)}</td>
      <td>${esc(j.site)}</td><td>${fmtTime(j.started_at)}</td><td>${fmtDur(j.duration)}</td>
      <td class="err">${j.error_category ? `${esc(j.error_category)}: ${esc(j.error_message)}`
        : ""}</td></tr>`).join("")}</tbody></table>${pager(d)}`};
}

function jobView(id) {
  return {kind: "job", nav: "jobs", load: () => api(`jobs/${encodeURIComponent(id)}`),
    followTask: j => j.task_id, render: j => {
      const hist = j.history.map(h => `<tr><td>${fmtTime(h.time)}</td><td>${state(h.state)}</td>
        <td>${esc(h.info)}</td></tr>`).join("");
      const attempts = j.attempt_rows.map(a => `<tr class="${a.id === j.id ? "here" : ""}">
        <td>${link(`jobs/${a.id}`, a.attempt)}</td><td>${state(a.state)}</td><td>${esc(a.site)}</td>
        <td>${fmtTime(a.started_at)}</td><td>${fmtTime(a.ended_at)}</td>
        <td>${esc(a.error_category)}</td></tr>`).join("");
      const chunks = j.chunks.map(c => `<tr><td>${esc(c.path)}</td><td>${esc(c.tree)}</td>
        <td>${c.start}</td><td>${c.stop}</td><td>${c.scout ? "scout" : ""}</td></tr>`).join("");
      const p = j.pilot;
      return `<h2>Job ${j.id}: task ${link(`tasks/${j.task_id}`, `${j.task_id} (${j.task.name})`)}
          job ${j.job_index}, attempt ${j.attempt}</h2>
        <p>${state(j.state)} at <b class="where">${esc(j.site) || "no site yet"}</b>${p ?
          `, pilot ${p.id} on ${esc(p.host)} (pid ${p.pid}, ${esc(p.state)}, heard from ${
            fmtDur(p.heartbeat_age)} ago)` : ""}</p>
        <p class="usage">used: ${esc(j.usage)}${p ? `; pilot ${p.id} with its workers: ${
          esc(p.usage)}` : ""}</p>
        <h3>Attempts</h3><table class="rows attempts"><tr><th>attempt</th><th>state</th>
          <th>site</th><th>started</th><th>ended</th><th>error</th></tr>${attempts}</table>
        <h3>Status history</h3><table class="rows history">${hist}</table>
        ${j.error_category ? `<h3>Error</h3><p class="err">${esc(j.error_category)}: ${
          esc(j.error_message)}</p><pre class="traceback">${esc(j.error_traceback)}</pre>` : ""}
        <h3>Why here: the brokerage decision</h3>
        <pre class="broker">${esc(JSON.stringify(j.broker_info, null, 2))}</pre>
        ${chunks ? `<h3>Input</h3><table class="rows chunks"><tr><th>file</th><th>tree</th>
          <th>start</th><th>stop</th><th></th></tr>${chunks}</table>` : ""}
        <h3>stdout (tail)</h3><pre class="tail stdout">${esc(j.stdout_tail)}</pre>
        <h3>stderr (tail)</h3><pre class="tail stderr">${esc(j.stderr_tail)}</pre>`;
    }};
}

function errorsView(params) {
  const task = params.get("task");
  return {kind: "list", nav: "errors", tasks: task && /^\d+$/.test(task) ? task : undefined,
    load: () => api("errors", params), render: d => {
      const cats = [...new Set(Object.values(d.by_site).flatMap(Object.keys))].sort();
      const over = Object.entries(d.over_time.groups).map(([c, g]) =>
        `<tr><td>${esc(c)}</td><td>${bars(g.counts, d.over_time.edges.map(
          e => e - d.over_time.edges[0]), "s")}</td></tr>`).join("");
      return `<h2>Errors (${d.total} failed attempts)</h2>
        ${filterForm([["task", "task"], ["owner", "owner"], ["site", "site"],
                      ["category", "category"], ["hours", "hours"]])}
        <h3>By category and message</h3><table class="rows by-message"><tr><th>category</th>
          <th>message</th><th>attempts</th><th>sites</th><th>tasks</th><th>last</th></tr>${
          d.by_message.map(e => `<tr><td>${link("jobs", e.category, new URLSearchParams(
            {category: e.category, state: "failed"}))}</td><td>${esc(e.message)}</td>
            <td>${e.n}</td><td>${e.sites}</td><td>${e.tasks}</td><td>${fmtTime(e.last)}</td>
            </tr>`).join("")}</table>
        <h3>By site</h3><table class="rows by-site"><tr><th>site</th>${cats.map(
          c => `<th>${esc(c)}</th>`).join("")}</tr>${Object.entries(d.by_site).map(([s, c]) =>
          `<tr data-site="${esc(s)}"><td>${esc(s)}</td>${cats.map(k => `<td>${c[k] ?? 0}</td>`)
            .join("")}</tr>`).join("")}</table>
        <h3>By task</h3><table class="rows by-task"><tr><th>task</th><th>attempts</th></tr>${
          d.by_task.map(t => `<tr><td>${link(`tasks/${t.task_id}`, `${t.task_id} ${t.name}`)}
          </td><td>${t.n}</td></tr>`).join("")}</table>
        <h3>Over time</h3><table class="rows over-time">${over}</table>`;
    }};
}

function sitesView(params) {
  const only = params.get("site");
  return {kind: "list", nav: "sites", load: () => api("sites", withoutSite(params)),
    render: d => `<h2>Sites</h2>
    ${d.sites.filter(s => !only || s.name === only).map(s => `
      <section class="site" data-site="${esc(s.name)}" data-state="${esc(s.state)}">
        <h3>${esc(s.name)} ${state(s.state)}</h3>
        <p>${esc(s.kind)} site, provisioner ${esc(s.provisioner)}. ${esc(s.description)}
           ${s.reason ? `<br>why ${esc(s.state)}: ${esc(s.reason)}` : ""}</p>
        <p>${link("jobs", `${s.queued} queued`, new URLSearchParams({site: s.name,
              state: "assigned,activated"}))},
           ${link("jobs", `${s.running} on pilots`, new URLSearchParams({site: s.name,
              state: "sent,starting,running,transferring"}))};
           failure rate <span class="failure-rate">${pct(s.failure_rate)}</span>
           (${s.failed} failed, ${s.finished} finished since ${fmtTime(d.since)})</p>
        <table class="rows pilots"><tr><th>pilot</th><th>host</th><th>pid</th><th>state</th>
          <th>slots</th><th>jobs done</th><th>last heartbeat</th></tr>${s.pilots.map(p => `
          <tr data-pilot-id="${p.id}"><td>${p.id}</td><td>${esc(p.host)}</td><td>${p.pid}</td>
          <td>${state(p.state)}</td><td>${p.slots}</td><td>${p.jobs_done}</td>
          <td>${fmtDur(p.heartbeat_age)} ago</td></tr>`).join("")}</table>
      </section>`).join("")}`};
}

function withoutSite(params) {
  const p = new URLSearchParams(params);
  p.delete("site");
  return p;
}

// ---- start -----------------------------------------------------------------------------
export function start(root, options) {
  // logged out (or the token refused): the stream, or the poll, goes with the page
  ctx = {...options, logout(message) { if (stream) stream.close(); options.logout(message); }};
  root.innerHTML = `<header><nav class="top"><b>panda-lab</b>
      ${(ctx.share ? [] : ["tasks", "jobs", "errors", "sites"]).map(v =>
        `<a href="${esc(ctx.base + v)}" data-nav data-view="${v}">${v}</a>`).join("")}
      <span id="live" class="live off">connecting</span>
      <button id="logout" type="button">log out</button></nav></header>
    <main id="view"></main>`;
  root.addEventListener("click", event => {
    const a = event.target.closest("a[data-nav]");
    if (!a || event.ctrlKey || event.metaKey || event.button !== 0) return;
    event.preventDefault();
    go(a.getAttribute("href"));
  });
  root.addEventListener("submit", event => {
    const form = event.target.closest("form.filters");
    if (!form) return;
    event.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) p.set(k, String(v).trim());
    const keep = new URLSearchParams(location.search).get("sort");
    if (keep) p.set("sort", keep);
    go(`${location.pathname}${p.toString() ? `?${p}` : ""}`);
  });
  document.getElementById("logout").addEventListener("click", () => ctx.logout());
  window.addEventListener("popstate", route);
  if (!ctx.share) openStream();
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    }
    if (ctx.share) {                     // polled, no stream: shown, it catches up now
      if (!document.hidden) schedule();
      return;
    }
    if (document.hidden) {
      stream.hide();
      const indicator = document.getElementById("live");
      indicator.className = "live off";
      indicator.textContent = "paused while hidden";
      indicator.dataset.lead = "no";
    } else {
      stream.show();
      schedule();
    }
  });
  route();
}
