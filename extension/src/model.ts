/**
 * The one model behind the panel and the status bar item: one poll and one event stream
 * for both, whatever number of views, and a signal (`changed`) they render from.
 *
 * Views say what they show (`watch(widget, parts)`); the model fetches only the parts
 * that some *visible* view shows, and polls not at all while none is visible (the panel
 * hidden in its sidebar and the status bar hidden, or the browser tab in the
 * background).  Between polls the event stream says what changed and `refresh.ts`
 * decides which parts to fetch again, coalescing bursts of events.  The poll is the
 * safety net: every `POLL_MS` while events stream, every `POLL_DOWN_MS` while they do
 * not (no server yet, or the stream broke).
 */
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';
import { Coalescer, Part, affected, shownParts } from './refresh';
import { PandaRequestError, eventsURL, requestAPI } from './request';
import type { Counts, Job, PandaEvent, ServerUp, Site, Task, TaskDetail, Vocabulary } from './types';

/** Poll interval (ms) while the event stream runs: it catches what events do not carry
 * (pilots coming and going, site health). */
export const POLL_MS = 10_000;
/** Poll interval (ms) while no event stream runs: how soon a started server is seen. */
export const POLL_DOWN_MS = 2_000;

/** What the views render: the last answer of each part. */
export interface PandaState {
  /** The server's status; null before the first answer. */
  server: ServerUp | { running: false; message: string } | null;
  /** The states and their sets (GET states); null until the server answered it. */
  vocabulary: Vocabulary | null;
  tasks: Task[];
  sites: Site[];
  counts: Counts | null;
  /** The task opened in the panel: its detail, or why it could not be shown. */
  task: { id: number; detail: TaskDetail | null; error: string | null } | null;
  /** The job opened in the panel. */
  job: Job | null;
  /** What the server said to the last refused command, and of which task. */
  actionError: { task: number; message: string } | null;
  /** What the start button says while or after starting a server (null: idle). */
  starting: string | null;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class PandaModel implements IDisposable {
  private readonly _changed = new Signal<this, PandaState>(this);
  private readonly watchers = new Map<Widget, ReadonlySet<Part>>();
  private readonly poll: Poll;
  private readonly coalescer: Coalescer<Part>;
  private events: EventSource | null = null;
  private queue: Promise<void> = Promise.resolve();
  private _isDisposed = false;
  readonly state: PandaState = {
    server: null, vocabulary: null, tasks: [], sites: [], counts: null, task: null,
    job: null, actionError: null, starting: null
  };

  constructor() {
    this.coalescer = new Coalescer<Part>(parts => this.fetch(parts));
    this.poll = new Poll({
      name: 'panda-lab:model',
      factory: () => this.fetch(new Set(this.wanted())),
      frequency: { interval: POLL_DOWN_MS, backoff: false, max: POLL_DOWN_MS },
      standby: () => this.wanted().size === 0
    });
    document.addEventListener('visibilitychange', this.onVisibility);
    this.poll.ticked.connect((_, tick) => {
      if (tick.phase === 'standby') {
        this.closeEvents(); // nobody looks: no stream either
      }
    });
  }

  /** Emitted after every fetch that changed what the views show. */
  get changed(): ISignal<this, PandaState> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    document.removeEventListener('visibilitychange', this.onVisibility);
    this.poll.dispose();
    this.coalescer.dispose();
    this.closeEvents();
    Signal.clearData(this);
  }

  /**
   * Fetch `parts` for as long as `widget` lives and is visible.  Call `show()` when it
   * becomes visible, so that it is not left waiting for the next poll.
   * @returns a handle whose dispose() ends the watch.
   */
  watch(widget: Widget, parts: Iterable<Part>): IDisposable {
    this.watchers.set(widget, new Set(parts));
    const end = { isDisposed: false, dispose: () => {
      end.isDisposed = true;
      this.watchers.delete(widget);
    } };
    widget.disposed.connect(() => end.dispose());
    return end;
  }

  /** A view became visible: fetch what it shows now. */
  show(): void {
    void this.poll.refresh();
  }

  /** Open a task in the panel (null: close it); its detail is fetched at once. */
  select(task: number | null): void {
    this.state.task = task === null ? null :
      { id: task, detail: this.state.task?.id === task ? this.state.task.detail : null, error: null };
    this.state.job = null;
    this.jobId = null;
    this.state.actionError = null;
    this.emit();
    void this.fetch(new Set<Part>(['task']));
  }

  /** The attempt opened (null: none). */
  get openJobId(): number | null {
    return this.jobId;
  }

  /** Open one attempt (its brokerage and logs). */
  openJob(job: number): void {
    this.jobId = job;
    this.emit();
    void this.fetch(new Set<Part>(['job']));
  }

  /** Kill or retry a task, or acknowledge its failures; a refusal is kept in
   * `actionError` for the view to show. */
  async command(task: number, verb: 'kill' | 'retry' | 'acknowledge'): Promise<void> {
    try {
      await requestAPI<unknown>(`tasks/${task}/${verb}`, { method: 'POST' });
      this.state.actionError = null;
    } catch (error) {
      this.state.actionError = { task, message: message(error) };
    }
    await this.fetch(new Set<Part>(['tasks', 'task', 'counts']));
  }

  /** Start the local server of Jupyter's panda-lab home, then show it. */
  async start(): Promise<void> {
    this.state.starting = 'starting…';
    this.emit();
    try {
      await requestAPI<unknown>('start', { method: 'POST' });
      this.state.starting = null;
    } catch (error) {
      this.state.starting = `could not start: ${message(error)}`;
    }
    await this.fetch(new Set(this.wanted()));
  }

  /** The browser tab came back to the front: catch up at once. */
  private readonly onVisibility = (): void => {
    if (document.hidden) {
      this.closeEvents(); // nobody looks: no stream (the poll stands by at its next tick)
    } else {
      this.show();
    }
  };

  /** The job opened, kept apart from `state.job` so that it is known before its answer. */
  private jobId: number | null = null;

  /** The parts some visible view shows; none while the browser tab is hidden. */
  private wanted(): Set<Part> {
    const views = [...this.watchers].map(
      ([widget, shown]): [boolean, ReadonlySet<Part>] => [widget.isVisible, shown]);
    return shownParts(views, document.hidden);
  }

  /** Fetch parts, one round at a time (an older answer never overwrites a newer one). */
  private fetch(parts: Set<Part>): Promise<void> {
    const run = this.queue.then(() => this.fetchNow(parts));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async fetchNow(requested: Set<Part>): Promise<void> {
    if (this._isDisposed) {
      return;
    }
    const wanted = this.wanted();
    const parts = new Set([...requested].filter(p => wanted.has(p)));
    const wasUp = this.state.server?.running === true;
    if (wanted.has('status') && !wasUp) {
      parts.add('status');
    }
    if (parts.size === 0) {
      return;
    }
    try {
      if (parts.has('status')) {
        this.state.server = await requestAPI<ServerUp>('status');
        if (!wasUp) {
          wanted.forEach(p => parts.add(p)); // (re)connected: everything
        }
        if (this.state.vocabulary === null || !wasUp) {
          this.state.vocabulary = await requestAPI<Vocabulary>('states');
        }
      }
      // each part is shown as soon as it is in: a slow one never holds the others back
      const shown = (): void => this.emit();
      await Promise.all([
        parts.has('tasks') &&
          requestAPI<Task[]>('tasks').then(t => { this.state.tasks = t; }).then(shown),
        parts.has('sites') &&
          requestAPI<Site[]>('sites').then(s => { this.state.sites = s; }).then(shown),
        parts.has('counts') &&
          requestAPI<Counts>('counts').then(c => { this.state.counts = c; }).then(shown),
        parts.has('task') && this.fetchTask().then(shown),
        parts.has('job') && this.fetchJob().then(shown)
      ]);
      if (this.state.server?.running === false) {
        this.state.server = null; // it answers again; its status when a view shows it
      }
      this.openEvents();
    } catch (error) {
      if (!(error instanceof PandaRequestError) || error.serverDown || error.status === 0) {
        this.down(message(error));
      } else {
        console.warn('panda-lab: the panel could not refresh:', error);
      }
    }
    this.emit();
  }

  private async fetchTask(): Promise<void> {
    const open = this.state.task;
    if (open === null) {
      return;
    }
    try {
      const detail = await requestAPI<TaskDetail>(`tasks/${open.id}`);
      if (this.state.task?.id === open.id) {
        this.state.task = { id: open.id, detail, error: null };
      }
    } catch (error) {
      if (error instanceof PandaRequestError && error.serverDown) {
        throw error;
      }
      if (this.state.task?.id === open.id) {
        this.state.task = { id: open.id, detail: null, error: message(error) };
      }
    }
  }

  private async fetchJob(): Promise<void> {
    const id = this.jobId;
    if (id === null) {
      return;
    }
    const job = await requestAPI<Job>(`jobs/${id}`);
    if (this.jobId === id) {
      this.state.job = job;
    }
  }

  private down(why: string): void {
    this.state.server = { running: false, message: why };
    this.state.counts = null;
    this.closeEvents();
  }

  private openEvents(): void {
    // nothing shown (the tab was hidden while a fetch ran): no stream
    if (this.events !== null || this.state.server?.running === false ||
        this.wanted().size === 0) {
      return;
    }
    const events = new EventSource(eventsURL(), { withCredentials: true });
    events.onmessage = (message: MessageEvent<string>) => {
      let event: PandaEvent;
      try {
        event = JSON.parse(message.data) as PandaEvent;
      } catch {
        return; // not ours to read
      }
      this.coalescer.add(affected(event, { task: this.state.task?.id ?? null,
        job: this.jobId }));
    };
    events.onerror = () => {
      this.closeEvents(); // the next fetch opens it again, and its hello re-syncs
    };
    this.events = events;
    this.poll.frequency = { interval: POLL_MS, backoff: false, max: POLL_MS };
  }

  private closeEvents(): void {
    if (this.events !== null) {
      this.events.close();
      this.events = null;
    }
    if (!this.poll.isDisposed) {
      this.poll.frequency = { interval: POLL_DOWN_MS, backoff: false, max: POLL_DOWN_MS };
    }
  }

  private emit(): void {
    if (!this._isDisposed) {
      this._changed.emit(this.state);
    }
  }
}
