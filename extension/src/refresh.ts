/**
 * What to fetch again, and when: the panel's refresh rule.
 *
 * The event stream says *what* changed (a batch of job and task state changes); the
 * panel fetches again only the parts of its view those changes touch, and many events
 * arriving close together cost one round of requests (they are coalesced for
 * `COALESCE_MS`).  This follows the way the panda-lab server's own monitors re-sync:
 * events are hints, the REST API is the truth (panda_lab/server/events.py: a subscriber
 * that overflows re-syncs through the API).  Pure: no DOM, no network.
 */
import type { PandaEvent } from './types';

/** The parts of the view the model fetches, one request each. */
export type Part = 'status' | 'tasks' | 'sites' | 'counts' | 'task' | 'job';

/** Every part, for a full re-sync (the stream (re)connected, or overflowed). */
export const ALL_PARTS: ReadonlySet<Part> = new Set<Part>(
  ['status', 'tasks', 'sites', 'counts', 'task', 'job']);

/** Events within this many milliseconds of the first cost one round of requests. */
export const COALESCE_MS = 250;

/** What is open in the panel: the task whose detail is shown, and the job. */
export interface Selection {
  task: number | null;
  job: number | null;
}

/**
 * The parts of the view an event changes.
 *
 * - `hello` (the stream began: changes may have been missed), `overflow` and
 *   `shutdown`: everything.
 * - job changes: the task list (progress), the sites (running and queued counts), the
 *   status bar's counts; the open task if one of them is its job; the open job if it
 *   is one of them.
 * - task state changes: the task list, the counts, and the open task if it is one.
 * - any other kind naming a `task` (`merge_error`, `partial`): the open task if it is
 *   that one.
 *
 * @returns the parts to fetch again; empty when the event changes nothing shown.
 */
export function affected(event: PandaEvent, open: Selection): Set<Part> {
  if (event.hello || event.overflow || event.shutdown !== undefined) {
    return new Set(ALL_PARTS);
  }
  const parts = new Set<Part>();
  const jobs = event.jobs ?? [];
  if (jobs.length) {
    parts.add('tasks').add('sites').add('counts');
    if (jobs.some(j => j.task === open.task)) {
      parts.add('task');
    }
    if (jobs.some(j => j.id === open.job)) {
      parts.add('job');
    }
  }
  const tasks = event.tasks ?? [];
  if (tasks.length) {
    parts.add('tasks').add('counts');
    if (tasks.some(t => t.id === open.task)) {
      parts.add('task');
    }
  }
  for (const [kind, body] of Object.entries(event)) {
    if (['seq', 'time', 'jobs', 'tasks'].includes(kind) || !body || typeof body !== 'object') {
      continue;
    }
    const task = (body as { task?: unknown }).task;
    if (typeof task === 'number' && task === open.task) {
      parts.add('task');
    }
  }
  return parts;
}

/**
 * The parts the visible views show, the union over `views` (each one's visibility in
 * the shell and its parts); none while the browser tab is `hidden` (the Page Visibility
 * API's `document.hidden`): a hidden tab fetches nothing and holds no event stream, not
 * even for a refresh that was pending when it was hidden.  Shown again, the model
 * fetches at once.
 */
export function shownParts(
  views: Iterable<[visible: boolean, parts: ReadonlySet<Part>]>,
  hidden: boolean
): Set<Part> {
  const parts = new Set<Part>();
  if (hidden) {
    return parts;
  }
  for (const [visible, shown] of views) {
    if (visible) {
      shown.forEach(p => parts.add(p));
    }
  }
  return parts;
}

/**
 * Merges requests for refreshes into one run per `delay` ms: `add` parts as often as
 * events come; `run` is called with their union at most once per window, never twice
 * at the same time, and parts added while it runs go into the next run (none is lost).
 */
export class Coalescer<P> {
  private pending = new Set<P>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running = false;
  private disposed = false;

  constructor(
    private readonly run: (parts: Set<P>) => Promise<void>,
    private readonly delay = COALESCE_MS
  ) {}

  /** Ask for these parts to be fetched within `delay` ms of the first pending request;
   * while a run goes on, `delay` ms after it ends. */
  add(parts: Iterable<P>): void {
    for (const p of parts) {
      this.pending.add(p);
    }
    this.schedule();
  }

  /** Forget what is pending and never run again. */
  dispose(): void {
    this.disposed = true;
    this.pending.clear();
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  private schedule(): void {
    if (this.disposed || this.running || this.timer !== null || this.pending.size === 0) {
      return;
    }
    this.timer = setTimeout(() => void this.fire(), this.delay);
  }

  private async fire(): Promise<void> {
    this.timer = null;
    const parts = this.pending;
    this.pending = new Set<P>();
    this.running = true;
    try {
      await this.run(parts);
    } catch {
      // the run reports its own failures; the next events ask again
    } finally {
      this.running = false;
      this.schedule();
    }
  }
}
