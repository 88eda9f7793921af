/**
 * The two views of the model: the side panel and the status bar item.  Each renders the
 * model's state with render.ts's pure functions through Lumino's virtual DOM (which
 * keeps the DOM nodes that did not change), and tells the model what it shows.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { VirtualDOM, h } from '@lumino/virtualdom';
import { Widget } from '@lumino/widgets';
import { PandaModel, PandaState } from './model';
import type { Part } from './refresh';
import {
  PanelActions, renderHeader, renderJob, renderServerDown, renderSites, renderTaskDetail,
  renderTaskError, renderTasks, statusText
} from './render';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
  '<circle class="jp-icon3" fill="#616161" cx="7" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="17" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="12" cy="15" r="6"/></svg>';
export const pandaIcon = new LabIcon({ name: 'panda-lab:panel', svgstr: ICON_SVG });

/** What the panel shows: the server, its tasks and sites, the task and job opened. */
export const PANEL_PARTS: readonly Part[] = ['status', 'tasks', 'sites', 'task', 'job'];
/** What the status bar item shows: the counts, one request (GET counts) per refresh. */
export const STATUS_PARTS: readonly Part[] = ['counts'];

/** The side panel: header, tasks, the task and job opened, sites. */
export class PandaPanel extends Widget {
  private readonly actions: PanelActions;

  /** @param insert - puts code below the notebook's active cell; false without one. */
  constructor(private readonly model: PandaModel, insert: (code: string) => boolean) {
    super();
    this.id = 'panda-lab-panel';
    this.addClass('panda-lab-panel');
    this.title.icon = pandaIcon;
    this.title.caption = 'PanDA: tasks, jobs and sites';
    this.actions = {
      select: task => model.select(task),
      openJob: job => model.openJob(job),
      kill: task => void model.command(task, 'kill'),
      retry: task => void model.command(task, 'retry'),
      insert: task => {
        if (!insert(`task = lab.task(${task})`)) {
          model.state.actionError = { task, message: 'open a notebook first' };
          this.render(model.state);
        }
      },
      start: () => void model.start()
    };
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
    const open = state.task;
    let detail = null;
    if (open?.detail) {
      const refused = state.actionError?.task === open.id ? state.actionError.message : null;
      detail = renderTaskDetail(open.detail, state.vocabulary, refused, this.actions);
    } else if (open?.error) {
      detail = renderTaskError(open.error);
    }
    VirtualDOM.render([
      renderHeader(server),
      renderTasks(state.tasks, open?.id ?? null, Date.now() / 1000, this.actions),
      h.div({ className: 'panda-detail' }, detail),
      h.div({ className: 'panda-job' }, state.job ? renderJob(state.job) : null),
      renderSites(state.sites)
    ], this.node);
  }
}

/** The status bar item: jobs running and queued now, failed attempts of recent tasks. */
export class PandaStatus extends Widget {
  constructor(model: PandaModel) {
    super();
    this.addClass('panda-status-item');
    this.node.textContent = statusText(null, false);
    model.watch(this, STATUS_PARTS);
    model.changed.connect((_, state) => {
      this.node.textContent = statusText(state.counts, state.server?.running === false);
    }, this);
  }
}
