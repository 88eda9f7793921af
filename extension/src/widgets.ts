/**
 * The three views of the model: the side panel (the server, its tasks and sites, narrow
 * enough for the default sidebar), the task view in the main area (a task opened, as
 * dask-labextension opens its plots in main-area tabs) and the status bar item.  Each
 * renders the model's state with the pure functions of render.ts, detail.ts and jobs.ts
 * through Lumino's virtual DOM (which keeps the DOM nodes that did not change), and
 * tells the model what it shows.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { VirtualDOM, h } from '@lumino/virtualdom';
import { Widget } from '@lumino/widgets';
import { DetailActions, renderJob, renderTaskDetail } from './detail';
import { DEFAULT_VIEW, JobView } from './jobs';
import { PandaModel, PandaState } from './model';
import type { Part } from './refresh';
import {
  PanelActions, renderHeader, renderServerDown, renderSites, renderTaskError, renderTasks,
  statusText, statusTooltip
} from './render';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
  '<circle class="jp-icon3" fill="#616161" cx="7" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="17" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="12" cy="15" r="6"/></svg>';
export const pandaIcon = new LabIcon({ name: 'panda-lab:panel', svgstr: ICON_SVG });

/** What the side panel shows: the server, its tasks and sites. */
export const PANEL_PARTS: readonly Part[] = ['status', 'tasks', 'sites'];
/** What the task view shows: the task and job opened. */
export const TASK_PARTS: readonly Part[] = ['status', 'task', 'job'];
/** What the status bar item shows: the counts, one request (GET counts) per refresh. */
export const STATUS_PARTS: readonly Part[] = ['counts'];

/** The commands both views offer, bound to the model. */
function bind(model: PandaModel, insert: (code: string) => boolean, openTask: () => void,
  rerender: () => void): PanelActions {
  return {
    select: task => {
      openTask();            // first, so that the model fetches what a visible view shows
      model.select(task);
    },
    openJob: job => model.openJob(job),
    kill: task => void model.command(task, 'kill'),
    retry: task => void model.command(task, 'retry'),
    acknowledge: task => void model.command(task, 'acknowledge'),
    insert: task => {
      if (!insert(`task = lab.task(${task})`)) {
        model.state.actionError = { task, message: 'open a notebook first' };
        rerender();
      }
    },
    start: () => void model.start()
  };
}

/** The side panel: header, tasks (a click opens one in the task view), sites. */
export class PandaPanel extends Widget {
  private readonly actions: PanelActions;

  /** @param insert - puts code below the notebook's active cell; false without one.
   * @param openTask - shows the task view in the main area. */
  constructor(private readonly model: PandaModel, insert: (code: string) => boolean,
    openTask: () => void) {
    super();
    this.id = 'panda-lab-panel';
    this.addClass('panda-lab-panel');
    this.title.icon = pandaIcon;
    this.title.caption = 'PanDA: tasks, jobs and sites';
    this.actions = bind(model, insert, openTask, () => this.render(model.state));
    model.watch(this, PANEL_PARTS);
    model.changed.connect((_, state) => this.render(state), this);
    this.render(model.state);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.show();
  }

  private render(state: PandaState): void {
    if (this.isDisposed) {
      return;
    }
    const server = state.server;
    if (server === null) {
      VirtualDOM.render(h.div({ className: 'panda-header' }, 'PanDA: connecting…'),
        this.node);
      return;
    }
    if (!server.running) {
      VirtualDOM.render(renderServerDown(server.message, state.starting, this.actions),
        this.node);
      return;
    }
    VirtualDOM.render([
      renderHeader(server),
      renderTasks(state.tasks, state.task?.id ?? null, Date.now() / 1000, this.actions),
      renderSites(state.sites)
    ], this.node);
  }
}

/** A task opened, in the main area: its outcome, stream, jobs, report and the job
 * opened beside them (below them when the area is narrow). */
export class PandaTaskView extends Widget {
  private readonly actions: DetailActions;
  private view: JobView = { ...DEFAULT_VIEW };
  private viewOf: number | null = null;

  constructor(private readonly model: PandaModel, insert: (code: string) => boolean) {
    super();
    this.id = 'panda-lab-task';
    this.addClass('panda-task-view');
    this.title.icon = pandaIcon;
    this.title.label = 'PanDA task';
    this.title.closable = true;
    const rerender = (): void => this.render(model.state);
    this.actions = {
      ...bind(model, insert, () => undefined, rerender),
      sortBy: key => {
        this.view = { ...this.view, sort: key,
          descending: this.view.sort === key ? !this.view.descending : false };
        rerender();
      },
      show: which => {
        this.view = { ...this.view, show: which };
        rerender();
      },
      filter: text => {
        this.view = { ...this.view, text };
        rerender();
      }
    };
    model.watch(this, TASK_PARTS);
    model.changed.connect((_, state) => this.render(state), this);
    this.render(model.state);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.show();
  }

  /** Closed by its tab: disposed, so that opening a task again makes a new view (a
   * closed widget is only detached, and a detached one cannot be shown again). */
  protected onCloseRequest(msg: Message): void {
    super.onCloseRequest(msg);
    this.dispose();
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    this.render(this.model.state); // the task stream is drawn as wide as the view
  }

  private render(state: PandaState): void {
    if (this.isDisposed) {
      return;
    }
    const open = state.task;
    if (open?.id !== this.viewOf) {
      this.view = { ...DEFAULT_VIEW }; // another task: its own sort and filter
      this.viewOf = open?.id ?? null;
    }
    const now = Date.now() / 1000;
    let detail = null;
    if (open?.detail) {
      const refused = state.actionError?.task === open.id ? state.actionError.message : null;
      detail = renderTaskDetail(open.detail, state.vocabulary, refused, this.view,
        this.model.openJobId, now, this.actions);
      this.title.label = `PanDA task ${open.id}`;
      this.title.caption = `${open.detail.name}: ${open.detail.summary?.label ?? open.detail.state}`;
    } else if (open?.error) {
      detail = renderTaskError(open.error);
    } else if (open) {
      detail = h.div({ className: 'panda-note' }, `loading task ${open.id}…`);
    } else {
      detail = h.div({ className: 'panda-note' }, 'open a task from the PanDA panel');
    }
    const job = state.job && state.job.id === this.model.openJobId ?
      renderJob(state.job, now, this.actions) :
      h.div({ className: 'panda-note' }, 'open a job (a row of the table, a bar of the ' +
        'stream) for its brokerage and logs');
    VirtualDOM.render(h.div({ className: 'panda-master-detail' },
      h.div({ className: 'panda-detail' }, detail),
      h.div({ className: 'panda-job' }, job)), this.node);
    const shown = state.job?.id ?? null;
    if (shown !== null && shown !== this.jobShown && shown === this.model.openJobId) {
      // a job just opened: bring it into sight (below the task when the view is narrow)
      this.node.querySelector('.panda-job-detail')?.scrollIntoView({ block: 'nearest' });
    }
    this.jobShown = shown;
  }

  /** The job whose detail the last render drew. */
  private jobShown: number | null = null;
}

/** The status bar item: jobs running, prefetched and waiting, and failures that still
 * need a person; its tooltip says what each number counts; a click opens the panel. */
export class PandaStatus extends Widget {
  constructor(model: PandaModel, onClick: () => void) {
    super();
    this.addClass('panda-status-item');
    this.node.title = statusTooltip(null, false);
    this.node.addEventListener('click', onClick);
    model.watch(this, STATUS_PARTS);
    const render = (state: PandaState): void => {
      const down = state.server?.running === false;
      const failed = state.counts?.failed ?? 0;
      this.node.classList.toggle('panda-status-failed', failed > 0 && !down);
      this.node.textContent = statusText(down ? null : state.counts, down);
      this.node.title = statusTooltip(state.counts, down);
    };
    model.changed.connect((_, state) => render(state), this);
    render(model.state);
  }
}
