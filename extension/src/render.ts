/**
 * What the panel and the status bar item show, as pure functions: records in (types.ts),
 * virtual DOM out (@lumino/virtualdom, which JupyterLab shares), so that they are tested
 * without a browser and the widgets only hand the result to `VirtualDOM.render`.  Text
 * always becomes text nodes, never markup, so whatever a job prints is shown as written.
 *
 * The state sets (which tasks may be killed or retried, the order of job states) come
 * from the server's vocabulary; with no vocabulary yet the commands stay disabled.
 */
import { h, VirtualElement } from '@lumino/virtualdom';
import type { Counts, ServerUp, Site, Task, TaskSummary, Vocabulary } from './types';

/** What a person can do from the panel; the widget binds them to the model. */
export interface PanelActions {
  select(task: number): void;
  openJob(job: number): void;
  kill(task: number): void;
  retry(task: number): void;
  /** Insert `task = lab.task(id)` below the active cell. */
  insert(task: number): void;
  /** The task's failed jobs were seen: they leave the status bar's count. */
  acknowledge(task: number): void;
  start(): void;
}

/** A Unix time's age, rounded to seconds, minutes or hours ("12 s", "3 min", "2 h"). */
export function age(then: number, now: number): string {
  const s = Math.max(0, now - then);
  if (s < 60) {
    return `${Math.round(s)} s`;
  }
  if (s < 3600) {
    return `${Math.round(s / 60)} min`;
  }
  return `${Math.round(s / 3600)} h`;
}

/** Whether the Kill button is offered: the task is not final yet. */
export function canKill(state: string, vocabulary: Vocabulary | null): boolean {
  return vocabulary !== null && !vocabulary.task_final.includes(state);
}

/** Whether the Retry button is offered: the server's rule (TASK_RETRYABLE). */
export function canRetry(state: string, vocabulary: Vocabulary | null): boolean {
  return vocabulary !== null && vocabulary.task_retryable.includes(state);
}

/** The task's outcome as the server says it; from a server without one, its state in
 * the neutral tone (the panel never makes up an outcome of its own). */
export function summaryOf(t: { state: string; summary?: TaskSummary }): TaskSummary {
  return t.summary ?? { label: t.state, tone: 'neutral', jobs_lost: 0, events_lost: null,
    wall_s: null, rate: null };
}

/** The CSS class of a tone: a JupyterLab theme colour, so it reads in dark themes. */
export function toneClass(tone: string): string {
  return `panda-tone panda-tone-${/^[a-z]+$/.test(tone) ? tone : 'neutral'}`;
}

/** A duration in seconds as a person reads it: "0.4 s", "42 s", "3 min 5 s", "2 h 10 min". */
export function duration(s: number): string {
  if (s < 10) {
    return `${Math.round(s * 10) / 10} s`;
  }
  if (s < 120) {
    return `${Math.round(s)} s`;
  }
  if (s < 7200) {
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** A count with thousands separators ("1,234,000"), as the server's labels write them. */
export function count(n: number): string {
  return Math.round(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** The job states present in a task's per-site counts, in the vocabulary's order; any
 * state the vocabulary does not know (or all, without one) follows, sorted. */
export function statesShown(bySite: Record<string, Record<string, number>>,
  vocabulary: Vocabulary | null): string[] {
  const present = new Set<string>();
  for (const counts of Object.values(bySite)) {
    for (const [state, n] of Object.entries(counts)) {
      if (n) {
        present.add(state);
      }
    }
  }
  const order = vocabulary?.job_states ?? [];
  const known = order.filter(s => present.has(s));
  const other = [...present].filter(s => !order.includes(s)).sort();
  return [...known, ...other];
}

/** The `disabled` attribute when `yes`; none at all otherwise (the virtual DOM would
 * write an undefined value as the text "undefined", which still disables). */
export function off(yes: boolean): { disabled?: string } {
  return yes ? { disabled: '' } : {};
}

export function table(className: string, headers: string[], rows: VirtualElement[]): VirtualElement {
  return h.table({ className }, h.tr(...headers.map(t => h.th(t))), ...rows);
}

/** The header while the server answers: its version and URL. */
export function renderHeader(server: ServerUp): VirtualElement {
  return h.div({ className: 'panda-header' }, `panda-lab ${server.version} · ${server.url}`);
}

/** The header while no server answers: why, and a button to start the local one.
 * @param starting - what the start button says while or after starting (null: idle). */
export function renderServerDown(message: string, starting: string | null,
  actions: Pick<PanelActions, 'start'>): VirtualElement {
  const busy = starting === 'starting…';
  return h.div({ className: 'panda-header panda-server-down' },
    h.div(message || 'no panda-lab server answers'),
    h.button({
      className: 'jp-Button panda-start',
      ...off(busy),
      onclick: () => actions.start()
    }, starting ?? 'Start the local server'));
}

/** The task list, newest first; the selected task's row is marked.  Each task takes
 * three short lines (name and age; its outcome in its tone; progress and sites), so that
 * the list fits the default sidebar width (about 250 px); a click opens the task. */
export function renderTasks(tasks: Task[], selected: number | null, now: number,
  actions: Pick<PanelActions, 'select'>): VirtualElement {
  const rows = tasks.map(t => {
    const pct = t.n_jobs ? Math.round((100 * t.n_done) / t.n_jobs) : 0;
    const progress = `${t.n_done}/${t.n_jobs}`;
    // where its jobs went; before any is brokered, what the task asked for
    const sites = t.sites.length ? t.sites.join(' ') : t.site || '';
    const summary = summaryOf(t);
    return h.div({
      key: String(t.id),
      className: 'panda-task-row' + (t.id === selected ? ' panda-selected' : ''),
      dataset: { 'task-id': String(t.id), state: t.state, tone: summary.tone },
      title: `task ${t.id} by ${t.owner || '?'}; ${t.message || summary.label}`,
      onclick: () => actions.select(t.id)
    },
    h.div({ className: 'panda-task-line' },
      h.span({ className: 'panda-task-name' }, `${t.id} ${t.name}`),
      h.span({ className: 'panda-age' }, age(t.created_at, now))),
    h.div({ className: `panda-state panda-label ${toneClass(summary.tone)}` }, summary.label),
    h.div({ className: 'panda-task-line' },
      h.span(h.span({ className: 'panda-bar', title: `${progress} jobs` },
        h.span({ className: 'panda-bar-fill', style: { width: `${pct}%` } })),
      h.span({ className: 'panda-progress' }, progress)),
      h.span({ className: 'panda-task-sites' }, sites)));
  });
  return h.div({ className: 'panda-tasks' }, h.h3('Tasks'),
    rows.length ? h.div({ className: 'panda-task-list' }, ...rows) :
      h.div({ className: 'panda-empty' }, 'no task yet'));
}

/** A task that could not be shown (gone, or the server refused): the reason. */
export function renderTaskError(message: string): VirtualElement {
  return h.div({ className: 'panda-error' }, message || 'gone');
}

/** The sites: each name in its health's colour (and, when not online, its state and
 * why below it), pilots, jobs on pilots and queued; the kind in the tooltip.  Four
 * narrow columns, so that it fits the default sidebar. */
export function renderSites(sites: Site[]): VirtualElement {
  const rows = sites.map(s => h.tr({
    key: s.name, className: 'panda-site-row', dataset: { site: s.name, health: s.state },
    title: `${s.name}: ${s.kind} site (${s.provisioner}), ${s.state}` +
      (s.reason ? ` (${s.reason})` : '') + (s.description ? `; ${s.description}` : '')
  },
  h.td({ className: `panda-site-name panda-health-${s.state}` }, s.name,
    s.state !== 'online' ? h.div({ className: 'panda-site-health' },
      s.state + (s.reason ? `: ${s.reason}` : '')) : null),
  h.td(String(s.pilots)), h.td(String(s.running)), h.td(String(s.queued))));
  const heads: [string, string][] = [['site', 'the site, in the colour of its health'],
    ['pilots', 'pilots running there'],
    ['run', 'jobs on its pilots (started or prefetched)'],
    ['queue', 'jobs brokered there, waiting for a pilot']];
  return h.div({ className: 'panda-sites' }, h.h3('Sites'),
    h.table({ className: 'panda-table panda-site-table' },
      h.tr(...heads.map(([t, title]) => h.th({ title }, t))), ...rows));
}

/** The status bar's text: jobs running, prefetched and waiting now, and the failed jobs
 * that still need a person; "no server" when none answers, "PanDA" before the first
 * answer. */
export function statusText(counts: Counts | null, serverDown: boolean): string {
  if (serverDown) {
    return 'PanDA: no server';
  }
  if (counts === null) {
    return 'PanDA';
  }
  return `PanDA: ${counts.running} running · ${counts.prefetched} prefetched · ` +
    `${counts.waiting} waiting · ${counts.failed} failed`;
}

/** What each number of the status bar counts, one line each (its tooltip). */
export function statusTooltip(counts: Counts | null, serverDown: boolean): string {
  if (serverDown) {
    return 'No panda-lab server answers: click to open the PanDA panel and start one.';
  }
  const n = (k: keyof Counts): string => counts === null ? '' : `${counts[k]} `;
  return [
    `${n('running')}running: jobs started on a pilot`,
    `${n('prefetched')}prefetched: jobs a pilot holds but has not started yet`,
    `${n('waiting')}waiting: jobs not on any pilot yet`,
    `${n('failed')}failed: jobs whose last attempt failed` +
      (counts && counts.failed_tasks ? ` (in ${counts.failed_tasks} task` +
        `${counts.failed_tasks > 1 ? 's' : ''})` : '') +
      ', not retried, not acknowledged, in tasks not killed',
    'Click to open the PanDA panel.'
  ].join('\n');
}
