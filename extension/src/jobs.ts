/**
 * A task's job table: one row per logical job (its newest attempt), with the input it
 * reads (file and entry range, from the analysis report), its site, attempts and
 * duration; sorted by any column (failures first by default) and filtered by state or
 * by text.  Pure: records in, rows or virtual DOM out.
 */
import { h, VirtualElement } from '@lumino/virtualdom';
import { duration } from './render';
import type { JobSummary, ReportRow, TaskDetail, Vocabulary } from './types';

export type SortKey = 'state' | 'index' | 'input' | 'site' | 'attempts' | 'duration';
/** Which jobs are shown: all, those that failed (or were cancelled), those not ended. */
export type Show = 'all' | 'failed' | 'unfinished';

/** How the table is sorted and filtered (kept by the view, not the model). */
export interface JobView {
  sort: SortKey;
  descending: boolean;
  show: Show;
  /** Shown when site, state, file, error or "#index" contains it (any case). */
  text: string;
}

export const DEFAULT_VIEW: JobView = { sort: 'state', descending: false, show: 'all', text: '' };

/** What a person can do with the table. */
export interface JobTableActions {
  openJob(job: number): void;
  /** Sort by `key`; by the same key again, the other way round. */
  sortBy(key: SortKey): void;
  show(which: Show): void;
  filter(text: string): void;
}

/** One row: the job, the input range it reads, how long its newest attempt ran. */
export interface JobRow {
  job: JobSummary;
  input: ReportRow | null;
  /** Seconds; null before its pilot started it. */
  seconds: number | null;
}

/** The rank of a state when failures come first: unsuccessful, on a pilot, waiting,
 * finished, then states the vocabulary does not know. */
export function stateRank(state: string, vocabulary: Vocabulary | null): number {
  if (vocabulary === null) {
    return state === 'failed' ? 0 : 1;
  }
  const groups = [vocabulary.job_unsuccessful, vocabulary.job_active, vocabulary.job_queued,
    ['finished']];
  const i = groups.findIndex(g => g.includes(state));
  return i < 0 ? groups.length : i;
}

function basename(path: string): string {
  return path.split(/[\\/]/).pop() || path;
}

/** The input a row reads: "file.root 0–1000" (entries, stop exclusive). */
export function inputText(r: ReportRow | null): string {
  if (r === null) {
    return '';
  }
  const range = r.start === null || r.stop === null ? '' : ` ${r.start}–${r.stop}`;
  return `${basename(r.path)}${range}`;
}

/**
 * The rows to show, sorted and filtered.
 * @param now - Unix seconds, the end of attempts still running.
 * @returns the rows (all of them: the caller shows the first ones) and how many jobs
 *   the task listed before filtering.
 */
export function jobRows(t: TaskDetail, vocabulary: Vocabulary | null, view: JobView,
  now: number): { rows: JobRow[]; total: number } {
  const byIndex = new Map<number, ReportRow>();
  for (const r of t.report ?? []) {
    if (r.job_index !== null) {
      byIndex.set(r.job_index, r);
    }
  }
  const unsuccessful = vocabulary?.job_unsuccessful ?? ['failed', 'cancelled', 'closed'];
  const ended = vocabulary?.job_final ?? ['finished', ...unsuccessful];
  const needle = view.text.trim().toLowerCase();
  let rows: JobRow[] = t.jobs.map(job => ({
    job, input: byIndex.get(job.job_index) ?? null,
    seconds: job.started_at === null ? null :
      Math.max((job.ended_at ?? now) - job.started_at, 0)
  }));
  rows = rows.filter(r => {
    if (view.show === 'failed' && !unsuccessful.includes(r.job.state)) {
      return false;
    }
    if (view.show === 'unfinished' && ended.includes(r.job.state)) {
      return false;
    }
    if (!needle) {
      return true;
    }
    const hay = [`#${r.job.job_index}`, r.job.state, r.job.site ?? '', r.input?.path ?? '',
      inputText(r.input), r.job.error_message ?? ''].join(' ').toLowerCase();
    return hay.includes(needle);
  });
  const key = (r: JobRow): number | string => {
    switch (view.sort) {
      case 'state': return stateRank(r.job.state, vocabulary);
      case 'index': return r.job.job_index;
      case 'input': return r.input ? `${r.input.path}\u0000${String(r.input.start ?? 0)
        .padStart(15, '0')}` : '';
      case 'site': return r.job.site ?? '';
      case 'attempts': return r.job.attempts;
      case 'duration': return r.seconds ?? -1;
    }
  };
  const sign = view.descending ? -1 : 1;
  rows.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    const c = typeof ka === 'number' && typeof kb === 'number' ? ka - kb :
      String(ka).localeCompare(String(kb));
    return sign * c || a.job.job_index - b.job.job_index;
  });
  return { rows, total: t.jobs.length };
}

/** At most this many rows are drawn; the filter narrows the rest. */
export const ROWS_SHOWN = 200;

const COLUMNS: [SortKey, string][] = [['index', '#'], ['state', 'state'], ['input', 'input'],
  ['site', 'site'], ['attempts', 'tries'], ['duration', 'time']];

/** The table with its controls: state filter, text filter, sortable headers. */
export function renderJobTable(t: TaskDetail, vocabulary: Vocabulary | null, view: JobView,
  openJob: number | null, now: number, actions: JobTableActions): VirtualElement {
  const { rows, total } = jobRows(t, vocabulary, view, now);
  const showInput = (t.report ?? []).length > 0;
  const columns = COLUMNS.filter(([k]) => showInput || k !== 'input');
  const header = h.tr(...columns.map(([k, label]) => h.th({
    className: 'panda-sortable' + (view.sort === k ? ' panda-sorted' : ''),
    dataset: { sort: k },
    title: k === 'state' ? 'sort by state: failures first' : `sort by ${label}`,
    onclick: () => actions.sortBy(k)
  }, label + (view.sort === k ? (view.descending ? ' ▼' : ' ▲') : ''))));
  const body = rows.slice(0, ROWS_SHOWN).map(r => h.tr({
    key: String(r.job.id),
    className: `panda-job-row panda-state-${r.job.state}` +
      (r.job.id === openJob ? ' panda-selected' : ''),
    dataset: { 'job-id': String(r.job.id), state: r.job.state },
    title: r.job.error_message ?? `open job ${r.job.id}: its brokerage and logs`,
    onclick: () => actions.openJob(r.job.id)
  }, ...columns.map(([k]) => {
    switch (k) {
      case 'index': return h.td(String(r.job.job_index));
      case 'state': return h.td({ className: `panda-state-${r.job.state}` }, r.job.state);
      case 'input': return h.td({ className: 'panda-input', title: r.input?.path ?? '' },
        inputText(r.input));
      case 'site': return h.td(r.job.site ?? '-');
      case 'attempts': return h.td(String(r.job.attempts));
      case 'duration': return h.td(r.seconds === null ? '' : duration(r.seconds));
    }
  })));
  const more = t.n_jobs_listed - total;
  const counts = `${rows.length} of ${total} jobs shown` +
    (rows.length > ROWS_SHOWN ? ` (the first ${ROWS_SHOWN}: filter to see others)` : '') +
    (more > 0 ? `; ${more} more not listed` : '');
  const options: [Show, string][] = [['all', 'all jobs'], ['failed', 'failed'],
    ['unfinished', 'not ended']];
  return h.div({ className: 'panda-job-table' },
    h.div({ className: 'panda-job-controls' },
      h.select({
        className: 'jp-mod-styled panda-job-show',
        onchange: (e: Event) => actions.show((e.target as HTMLSelectElement).value as Show)
      }, ...options.map(([v, label]) => h.option(
        { value: v, ...(view.show === v ? { selected: '' } : {}) }, label))),
      h.input({
        className: 'jp-mod-styled panda-job-filter', type: 'search',
        placeholder: 'filter: site, file, error, #index',
        oninput: (e: Event) => actions.filter((e.target as HTMLInputElement).value)
      })),
    h.div({ className: 'panda-job-counts' }, counts),
    h.div({ className: 'panda-scroll-x' },
      h.table({ className: 'panda-table panda-jobs' }, header, ...body)));
}
