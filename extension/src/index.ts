/**
 * The panda-lab JupyterLab extension: a side panel with the tasks and sites of a
 * panda-lab server, a main-area view of the task opened (its jobs, stream, errors,
 * report), and job counts in the status bar.  This file only activates it: the model
 * (model.ts) fetches through request.ts, render.ts, detail.ts, jobs.ts, timeline.ts and
 * brokerage.ts draw, widgets.ts holds the views.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { PandaModel } from './model';
import { PandaPanel, PandaStatus, PandaTaskView } from './widgets';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'panda-lab:plugin',
  description: 'The panda-lab side panel and status bar item.',
  autoStart: true,
  optional: [INotebookTracker, IStatusBar],
  activate: (app: JupyterFrontEnd, notebooks: INotebookTracker | null,
    statusBar: IStatusBar | null) => {
    const insert = (code: string): boolean => {
      const panel = notebooks?.currentWidget;
      if (!panel) {
        return false;
      }
      NotebookActions.insertBelow(panel.content);
      panel.content.activeCell?.model.sharedModel.setSource(code);
      return true;
    };
    const model = new PandaModel();
    let view: PandaTaskView | null = null;
    const openTask = (): void => {
      if (view === null || view.isDisposed) {
        view = new PandaTaskView(model, insert);
        app.shell.add(view, 'main', { mode: 'split-right' });
      }
      app.shell.activateById(view.id);
    };
    const panel = new PandaPanel(model, insert, openTask);
    app.shell.add(panel, 'left', { rank: 900 });
    if (statusBar) {
      statusBar.registerStatusItem('panda-lab:status', {
        item: new PandaStatus(model, () => app.shell.activateById(panel.id)),
        align: 'left',
        rank: 100
      });
    }
  }
};

export default plugin;
