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
import type {
  Counts, ErrorGroup, Job, ServerUp, Site, Task, TaskDetail, Vocabulary
} from './types';

/** What a person can do from the panel; the widget binds them to the model. */
export interface PanelActions {
  select(task: number): void;
  openJob(job: number): void;
  kill(task: number): void;
  retry(task: number): void;
  /** Insert `task = lab.task(id)` below the active cell. */
  insert(task: number): void;
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
function off(yes: boolean): { disabled?: string } {
  return yes ? { disabled: '' } : {};
}

function table(className: string, headers: string[], rows: VirtualElement[]): VirtualElement {
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

/** The task list, newest first; the selected task's row is marked. */
export function renderTasks(tasks: Task[], selected: number | null, now: number,
  actions: Pick<PanelActions, 'select'>): VirtualElement {
  const rows = tasks.map(t => {
    const pct = t.n_jobs ? Math.round((100 * t.n_done) / t.n_jobs) : 0;
    const progress = `${t.n_done}/${t.n_jobs}`;
    // where its jobs went; before any is brokered, what the task asked for
    const sites = t.sites.length ? t.sites.join(' ') : t.site || '';
    return h.tr({
      key: String(t.id),
      className: 'panda-task-row' + (t.id === selected ? ' panda-selected' : ''),
      dataset: { 'task-id': String(t.id), state: t.state },
      onclick: () => actions.select(t.id)
    },
    h.td({ className: 'panda-task-name' }, `${t.id} ${t.name}`),
    h.td(t.owner || ''),
    h.td({ className: `panda-state panda-state-${t.state}`, title: t.message || '' }, t.state),
    h.td(
      h.div({ className: 'panda-bar', title: `${progress} jobs` },
        h.div({ className: 'panda-bar-fill', style: { width: `${pct}%` } })),
      h.span({ className: 'panda-progress' }, progress)),
    h.td({ className: 'panda-task-sites' }, sites),
    h.td(age(t.created_at, now)));
  });
  return h.div({ className: 'panda-tasks' }, h.h3('Tasks'),
    table('panda-table', ['task', 'owner', 'state', 'progress', 'sites', 'age'], rows));
}

function renderErrors(errors: ErrorGroup[], actions: Pick<PanelActions, 'openJob'>):
  VirtualElement[] {
  if (!errors.length) {
    return [];
  }
  return [h.h4('Errors'), ...errors.map(g => h.div({ className: 'panda-error-group' },
    `${g.count} × [${g.category}] ${g.message} `,
    h.a({ className: 'panda-open-job', onclick: () => actions.openJob(g.example_job) },
      `job ${g.example_job}`)))];
}

/** A task opened: its message, latest attempts per site and state, the commands, its
 * jobs (each opens to its brokerage) and its errors grouped.
 * @param actionError - what the server said to the last refused command, if anything. */
export function renderTaskDetail(t: TaskDetail, vocabulary: Vocabulary | null,
  actionError: string | null, actions: PanelActions): VirtualElement {
  const used = statesShown(t.jobs_by_site, vocabulary);
  const perSite = Object.keys(t.jobs_by_site).sort().map(site => h.tr(
    h.td(site), ...used.map(s => h.td({ className: `panda-state-${s}` },
      String(t.jobs_by_site[site][s] || '')))));
  const buttons = h.div({ className: 'panda-buttons' },
    h.button({
      className: 'jp-Button panda-kill',
      ...off(!canKill(t.state, vocabulary)),
      onclick: () => actions.kill(t.id)
    }, 'Kill'),
    h.button({
      className: 'jp-Button panda-retry',
      ...off(!canRetry(t.state, vocabulary)),
      onclick: () => actions.retry(t.id)
    }, 'Retry'),
    h.button({
      className: 'jp-Button panda-insert',
      title: `insert "task = lab.task(${t.id})" below the active cell`,
      onclick: () => actions.insert(t.id)
    }, 'Insert in notebook'),
    actionError ? h.span({ className: 'panda-error' }, actionError) : null);
  const jobs: VirtualElement[] = [];
  if (t.jobs.length) {
    const links = t.jobs.flatMap(j => [h.a({
      className: `panda-open-job panda-state-${j.state}`,
      dataset: { 'job-id': String(j.id) },
      onclick: () => actions.openJob(j.id)
    }, `#${j.job_index} ${j.state}${j.site ? ' @' + j.site : ''}`), ' ']);
    const more = t.n_jobs_listed > t.jobs.length ?
      h.span(`… ${t.n_jobs_listed - t.jobs.length} more`) : null;
    jobs.push(h.h4('Jobs (latest attempts; open one for its brokerage)'),
      h.div({ className: 'panda-job-list' }, ...links, more));
  }
  return h.div({ className: 'panda-task-detail', dataset: { 'task-id': String(t.id) } },
    h.h3(`Task ${t.id} · ${t.name} · ${t.state}`),
    // why it is where it is: how it ended, or why it was closed (its client gone)
    t.message ? h.div({ className: 'panda-task-message' }, t.message) : null,
    table('panda-table panda-jobs-by-site', ['site', ...used], perSite),
    buttons, ...jobs, ...renderErrors(t.errors, actions));
}

/** A task that could not be shown (gone, or the server refused): the reason. */
export function renderTaskError(message: string): VirtualElement {
  return h.div({ className: 'panda-error' }, message || 'gone');
}

/** One attempt: its brokerage decision, error, traceback and output tails. */
export function renderJob(j: Job): VirtualElement {
  const logs: VirtualElement[] = [];
  for (const [label, text] of [['traceback', j.error_traceback], ['stdout', j.stdout_tail],
    ['stderr', j.stderr_tail]] as const) {
    if (text) {
      logs.push(h.div(`${label}:`), h.pre({ className: `panda-log panda-${label}` }, text));
    }
  }
  return h.div({ className: 'panda-job-detail' },
    h.h4(`Job ${j.id} · attempt ${j.attempt} · ${j.state} at ${j.site ?? '-'}`),
    h.div('Brokerage:'),
    h.pre({ className: 'panda-broker' }, JSON.stringify(j.broker_info, null, 1)),
    j.error_message ?
      h.div({ className: 'panda-error' }, `[${j.error_category}] ${j.error_message}`) : null,
    ...logs);
}

/** The sites: kind, health (with the reason when not online), pilots and jobs. */
export function renderSites(sites: Site[]): VirtualElement {
  const rows = sites.map(s => h.tr({
    key: s.name, className: 'panda-site-row', dataset: { site: s.name }
  },
  h.td(s.name), h.td(s.kind),
  h.td({ className: `panda-health-${s.state}` }, s.state + (s.reason ? `: ${s.reason}` : '')),
  h.td(String(s.pilots)), h.td(String(s.running)), h.td(String(s.queued))));
  return h.div({ className: 'panda-sites' }, h.h3('Sites'),
    table('panda-table', ['site', 'kind', 'health', 'pilots', 'running', 'queued'], rows));
}

/** The status bar's text: jobs running and queued now, failed attempts of recent tasks;
 * "no server" when none answers, "PanDA" before the first answer. */
export function statusText(counts: Counts | null, serverDown: boolean): string {
  if (serverDown) {
    return 'PanDA: no server';
  }
  if (counts === null) {
    return 'PanDA';
  }
  return `PanDA: ${counts.running} running · ${counts.queued} queued · ${counts.failed} failed`;
}
