/**
 * The panda-lab JupyterLab extension: a side panel with the tasks, jobs, sites and
 * errors of a panda-lab server, and job counts in the status bar.  This file only
 * activates it: the model (model.ts) fetches through request.ts, render.ts draws,
 * widgets.ts holds the views.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { PandaModel } from './model';
import { PandaPanel, PandaStatus } from './widgets';

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
    app.shell.add(new PandaPanel(model, insert), 'left', { rank: 900 });
    if (statusBar) {
      statusBar.registerStatusItem('panda-lab:status', {
        item: new PandaStatus(model),
        align: 'left',
        rank: 100
      });
    }
  }
};

export default plugin;
