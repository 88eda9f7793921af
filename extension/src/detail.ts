/**
 * A task opened, as its main-area view shows it: a header with its outcome in the
 * server's words and tone, dataset, events, wall time and rate and the server's message;
 * for a final task what was lost and where to look (never a rate to come or an ETA);
 * the commands; jobs per site; the task stream; the job table; the errors grouped; an
 * analysis task's report (what `task.report()` gives in a notebook); and the job
 * opened, with its brokerage decision in words.  Pure: records in, virtual DOM out.
 */
import { h, VirtualElement } from '@lumino/virtualdom';
import { renderBrokerage } from './brokerage';
import { JobTableActions, JobView, inputText, renderJobTable } from './jobs';
import {
  PanelActions, canKill, canRetry, count, duration, off, statesShown, summaryOf, table,
  toneClass
} from './render';
import { layout, renderTimeline, renderUsage } from './timeline';
import type { ErrorGroup, Job, ReportRow, TaskDetail, Vocabulary } from './types';

/** Everything a person can do in the task view. */
export type DetailActions = PanelActions & JobTableActions;

/** What an input range became, in `task.report()`'s words
 * (panda_lab/client/analysis.py `AnalysisTask.report`). */
export function reportStatus(r: ReportRow, skipBadFiles: boolean, mergeFailed: boolean,
  vocabulary: Vocabulary | null): string {
  if (r.job_index === null) {
    return r.error === null ? 'done' : 'skipped';
  }
  if (r.error_category === 'merge') {
    return 'merge failed';
  }
  if (r.state === 'finished') {
    if (mergeFailed && !r.merged) {
      return 'not merged';
    }
    return r.attempts === 1 ? 'done' : 'done after retry';
  }
  const unsuccessful = vocabulary?.job_unsuccessful ?? ['failed', 'cancelled', 'closed'];
  if (r.state !== null && unsuccessful.includes(r.state)) {
    return skipBadFiles && r.error_category === 'input' ? 'skipped' : 'failed';
  }
  return r.state ?? '';
}

/** Events of an analysis task from its report: all its ranges, and those processed. */
export function reportEvents(report: ReportRow[]): { total: number; done: number } {
  let total = 0;
  let done = 0;
  for (const r of report) {
    if (r.start !== null && r.stop !== null) {
      total += r.stop - r.start;
      if (r.state === 'finished') {
        done += r.stop - r.start;
      }
    }
  }
  return { total, done };
}

function fact(label: string, value: string, className = ''): VirtualElement {
  return h.div({ className: `panda-fact ${className}`.trim() },
    h.span({ className: 'panda-fact-label' }, label), h.span(value));
}

/** The header: name, outcome, dataset, events, wall time, rate, the server's message,
 * and for a task that lost jobs what was lost and where to look. */
export function renderTaskHeader(t: TaskDetail, vocabulary: Vocabulary | null,
  actions: Pick<DetailActions, 'show' | 'insert'>): VirtualElement {
  const s = summaryOf(t);
  const final = vocabulary ? vocabulary.task_final.includes(t.state) : s.tone !== 'active';
  const facts: VirtualElement[] = [];
  const dataset = t.options.dataset;
  if (typeof dataset === 'string') {
    facts.push(fact('dataset', dataset, 'panda-dataset'));
  }
  const events = t.report ? reportEvents(t.report) : null;
  if (events) {
    facts.push(fact('events', `${count(events.done)} of ${count(events.total)} processed`,
      'panda-events'));
  }
  facts.push(fact('jobs', `${t.n_done} of ${t.n_jobs} with a result`));
  if (s.wall_s !== null) {
    facts.push(fact(final ? 'wall time' : 'running for', duration(s.wall_s), 'panda-wall'));
  }
  if (final && s.rate !== null) {
    facts.push(fact('mean rate', `${count(s.rate)} events/s`, 'panda-rate'));
  } else if (!final && events && s.wall_s) {
    facts.push(fact('rate so far', `${count(events.done / s.wall_s)} events/s`, 'panda-rate'));
  }
  const lost: (VirtualElement | string)[] = [];
  if (final && s.jobs_lost > 0) {
    lost.push(`Lost: ${s.jobs_lost} of ${t.n_jobs} jobs` +
      (s.events_lost ? `, ${count(s.events_lost)} events not processed` : '') +
      '. Where to look: ',
    h.a({ className: 'panda-link panda-show-failed', onclick: () => actions.show('failed') },
      'the failed jobs'),
    ', the errors grouped below' + (t.report ? ', the report (task.report())' : '') +
      ', or ',
    h.a({ className: 'panda-link', onclick: () => actions.insert(t.id),
      title: `insert "task = lab.task(${t.id})" below the active cell` },
    'the task in a notebook'), '.');
  }
  return h.div({ className: 'panda-task-header' },
    h.h3({ className: 'panda-task-title' }, `Task ${t.id} · ${t.name}`),
    h.div({ className: `panda-label panda-task-label ${toneClass(s.tone)}`,
      dataset: { tone: s.tone } }, s.label),
    h.div({ className: 'panda-facts' }, ...facts),
    // why it is where it is: how it ended, or why it was closed (its client gone)
    t.message ? h.div({ className: 'panda-task-message' }, t.message) : null,
    lost.length ? h.div({ className: `panda-lost ${toneClass(s.tone)}` }, ...lost) : null);
}

function renderErrors(errors: ErrorGroup[], actions: Pick<DetailActions, 'openJob'>):
  VirtualElement[] {
  if (!errors.length) {
    return [];
  }
  return [h.h4('Errors'), ...errors.map(g => h.div({ className: 'panda-error-group' },
    `${g.count} × [${g.category}] ${g.message} `,
    h.a({ className: 'panda-open-job', onclick: () => actions.openJob(g.example_job) },
      `job ${g.example_job}`)))];
}

/** An analysis task's input ranges and their fate, as `task.report()` has them. */
export function renderReport(t: TaskDetail, vocabulary: Vocabulary | null): VirtualElement[] {
  if (!t.report || !t.report.length) {
    return [];
  }
  const skip = Boolean(t.options.skip_bad_files);
  const mergeFailed = 'merge_error' in t.options;
  const rows = t.report.slice(0, 500).map(r => {
    const status = reportStatus(r, skip, mergeFailed, vocabulary);
    return h.tr({ className: 'panda-report-row', dataset: { status } },
      h.td(r.job_index === null ? '' : String(r.job_index)),
      h.td({ title: r.path }, inputText(r)),
      h.td({ className: `panda-report-${status.replace(/ /g, '-')}` }, status),
      h.td(String(r.attempts)), h.td(r.sites.join(' ')),
      h.td({ className: 'panda-report-error' }, r.error ?? ''));
  });
  return [h.h4('Report (task.report())'), h.div({ className: 'panda-scroll-x' },
    table('panda-table panda-report', ['job', 'input', 'status', 'tries', 'sites', 'error'],
      rows))];
}

/** A task opened: header, commands, jobs per site, task stream, job table, errors,
 * report.  Kill only for a task not final; "Mark failures seen" for a final task that
 * lost jobs (they leave the status bar's failed count).
 * @param actionError - what the server said to the last refused command, if anything. */
export function renderTaskDetail(t: TaskDetail, vocabulary: Vocabulary | null,
  actionError: string | null, view: JobView, openJob: number | null, now: number,
  actions: DetailActions): VirtualElement {
  const used = statesShown(t.jobs_by_site, vocabulary);
  const perSite = Object.keys(t.jobs_by_site).sort().map(site => h.tr(
    h.td(site), ...used.map(s => h.td({ className: `panda-state-${s}` },
      String(t.jobs_by_site[site][s] || '')))));
  const final = vocabulary !== null && vocabulary.task_final.includes(t.state);
  const buttons = h.div({ className: 'panda-buttons' },
    canKill(t.state, vocabulary) ? h.button({
      className: 'jp-Button panda-kill', onclick: () => actions.kill(t.id)
    }, 'Kill') : null,
    h.button({
      className: 'jp-Button panda-retry',
      ...off(!canRetry(t.state, vocabulary)),
      onclick: () => actions.retry(t.id)
    }, 'Retry'),
    final && summaryOf(t).jobs_lost > 0 ? h.button({
      className: 'jp-Button panda-ack',
      title: "its failed jobs leave the status bar's count (until a retry fails again)",
      onclick: () => actions.acknowledge(t.id)
    }, 'Mark failures seen') : null,
    h.button({
      className: 'jp-Button panda-insert',
      title: `insert "task = lab.task(${t.id})" below the active cell`,
      onclick: () => actions.insert(t.id)
    }, 'Insert in notebook'),
    actionError ? h.span({ className: 'panda-error' }, actionError) : null);
  const failedStates = (vocabulary?.job_unsuccessful ?? ['failed'])
    .filter(s => s !== 'closed' && s !== 'cancelled');
  const stream = layout(t.attempts ?? [], now, failedStates, t.pilots ?? []);
  return h.div({ className: 'panda-task-detail', dataset: { 'task-id': String(t.id) } },
    renderTaskHeader(t, vocabulary, actions), buttons,
    h.div({ className: 'panda-scroll-x' },
      table('panda-table panda-jobs-by-site', ['site', ...used], perSite)),
    h.h4('Task stream (each attempt on its pilot; ✕ failed)'),
    renderTimeline(stream, job => actions.openJob(job)),
    renderUsage(stream),
    stream.notStarted ? h.div({ className: 'panda-note' },
      `${stream.notStarted} attempts not started on a pilot`) : null,
    h.h4('Jobs (newest attempts; open one for its brokerage and logs)'),
    renderJobTable(t, vocabulary, view, openJob, now, actions),
    ...renderErrors(t.errors, actions), ...renderReport(t, vocabulary));
}

/** One attempt: its brokerage decision in words, its other attempts, when it ran, its
 * error, traceback and output tails. */
export function renderJob(j: Job, now: number, actions: Pick<DetailActions, 'openJob'>):
  VirtualElement {
  const logs: VirtualElement[] = [];
  for (const [label, text] of [['traceback', j.error_traceback], ['stdout', j.stdout_tail],
    ['stderr', j.stderr_tail]] as const) {
    if (text) {
      logs.push(h.div(`${label}:`), h.pre({ className: `panda-log panda-${label}` }, text));
    }
  }
  const others = (j.attempts ?? []).length > 1 ? h.div({ className: 'panda-attempts' },
    'attempts: ', ...j.attempts.flatMap((id, i) => [id === j.id ?
      h.b(`${i + 1}`) : h.a({ className: 'panda-link panda-attempt', dataset: { 'job-id': String(id) },
        onclick: () => actions.openJob(id) }, `${i + 1}`), ' '])) : null;
  const ran = j.started_at === null ? 'not started on a pilot' :
    `ran ${duration(Math.max((j.ended_at ?? now) - j.started_at, 0))}` +
    (j.pilot_id !== null ? ` on pilot ${j.pilot_id}` : '') + (j.ended_at ? '' : ' so far');
  return h.div({ className: 'panda-job-detail', dataset: { 'job-id': String(j.id) } },
    h.h4(`Job ${j.id} · #${j.job_index} attempt ${j.attempt} · ${j.state} at ${j.site ?? '-'}`),
    others,
    h.div({ className: 'panda-job-ran' }, ran),
    j.usage ? h.div({ className: 'panda-job-usage' }, `used: ${j.usage}`) : null,
    h.div({ className: 'panda-fact-label' }, 'Brokerage'),
    renderBrokerage(j.broker_info ?? {}, j.site, j.explanation ?? null),
    j.error_message ?
      h.div({ className: 'panda-error' }, `[${j.error_category}] ${j.error_message}`) : null,
    ...logs);
}
