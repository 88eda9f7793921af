/**
 * The panda-lab panel: tasks, jobs, sites and errors of the panda-lab server, in
 * JupyterLab's left sidebar, and job counts in the status bar.
 *
 * All logic lives behind the jupyter_server extension's REST API (/panda-lab/...); this
 * file only draws what it answers, with plain DOM in Lumino widgets, so it depends on
 * few JupyterLab APIs and survives their minor releases.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
  '<circle class="jp-icon3" fill="#616161" cx="7" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="17" cy="8" r="3"/>' +
  '<circle class="jp-icon3" fill="#616161" cx="12" cy="15" r="6"/></svg>';
const pandaIcon = new LabIcon({ name: 'panda-lab:panel', svgstr: ICON_SVG });

type Json = any; // the REST API's answers, described in panda_lab/jupyter/server_extension.py

/** GET or POST an endpoint of the server extension; Jupyter's auth comes with it. */
async function api(path: string, method = 'GET'): Promise<{ status: number; body: Json }> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'panda-lab', path);
  const response = await ServerConnection.makeRequest(url, { method }, settings);
  let body: Json = null;
  try {
    body = await response.json();
  } catch {
    body = { message: response.statusText };
  }
  return { status: response.status, body };
}

function el(tag: string, cls = '', text = ''): HTMLElement {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** A table with its header row, ready for its body rows. */
function table(cls: string, headers: string[]): HTMLElement {
  const node = el('table', cls);
  const head = el('tr');
  headers.forEach(h => head.appendChild(el('th', '', h)));
  node.appendChild(head);
  return node;
}

function age(seconds: number): string {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) {
    return `${Math.round(s)} s`;
  }
  if (s < 3600) {
    return `${Math.round(s / 60)} min`;
  }
  return `${Math.round(s / 3600)} h`;
}

const STATES = ['defined', 'assigned', 'activated', 'sent', 'starting', 'running',
  'transferring', 'finished', 'failed', 'cancelled', 'closed'];

/** The side panel. */
class PandaPanel extends Widget {
  private selected: number | null = null;
  private events: EventSource | null = null;
  private pending = false;
  private timer: number;
  private header = el('div', 'panda-header');
  private tasks = el('div', 'panda-tasks');
  private detail = el('div', 'panda-detail');
  private job = el('div', 'panda-job');
  private sites = el('div', 'panda-sites');

  constructor(private insert: (code: string) => boolean) {
    super();
    this.id = 'panda-lab-panel';
    this.addClass('panda-lab-panel');
    this.title.icon = pandaIcon;
    this.title.caption = 'PanDA: tasks, jobs and sites';
    for (const part of [this.header, this.tasks, this.detail, this.job, this.sites]) {
      this.node.appendChild(part);
    }
    this.timer = window.setInterval(() => this.refresh(), 2000);
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    this.events?.close();
    super.dispose();
  }

  /** Refresh soon, at most a few times a second however many events arrive. */
  private soon(): void {
    if (this.pending) {
      return;
    }
    this.pending = true;
    window.setTimeout(() => {
      this.pending = false;
      void this.refresh();
    }, 200);
  }

  private listen(): void {
    if (this.events) {
      return;
    }
    const settings = ServerConnection.makeSettings();
    const url = URLExt.join(settings.baseUrl, 'panda-lab', 'events');
    this.events = new EventSource(url, { withCredentials: true });
    this.events.onmessage = () => this.soon();
    this.events.onerror = () => {
      this.events?.close();
      this.events = null; // the next refresh opens it again
    };
  }

  async refresh(): Promise<void> {
    if (this.isDisposed) {
      return;
    }
    const status = await api('status');
    if (status.status !== 200) {
      this.showDown(status.body);
      return;
    }
    this.header.className = 'panda-header';
    this.header.textContent = `panda-lab ${status.body.version} · ${status.body.url}`;
    this.listen();
    const [tasks, sites] = await Promise.all([api('tasks'), api('sites')]);
    this.showTasks(tasks.body || []);
    this.showSites(sites.body || []);
    if (this.selected !== null) {
      await this.showTask(this.selected);
    }
  }

  private showDown(body: Json): void {
    this.header.replaceChildren();
    this.header.className = 'panda-header panda-server-down';
    this.header.appendChild(el('div', '', body?.message || 'no panda-lab server answers'));
    const start = el('button', 'jp-Button panda-start', 'Start the local server');
    start.onclick = async () => {
      start.textContent = 'starting…';
      (start as HTMLButtonElement).disabled = true;
      const reply = await api('start', 'POST');
      if (reply.status !== 200) {
        start.textContent = `could not start: ${reply.body?.message || reply.status}`;
      }
      await this.refresh();
    };
    this.header.appendChild(start);
    for (const part of [this.tasks, this.detail, this.job, this.sites]) {
      part.replaceChildren();
    }
  }

  private showTasks(tasks: Json[]): void {
    const list = table('panda-table', ['task', 'owner', 'state', 'progress', 'sites', 'age']);
    for (const t of tasks) {
      const row = el('tr', 'panda-task-row');
      row.dataset.taskId = String(t.id);
      row.dataset.state = t.state;
      if (t.id === this.selected) {
        row.classList.add('panda-selected');
      }
      row.appendChild(el('td', 'panda-task-name', `${t.id} ${t.name}`));
      row.appendChild(el('td', '', t.owner || ''));
      const state = el('td', `panda-state panda-state-${t.state}`, t.state);
      state.title = t.message || '';
      row.appendChild(state);
      const cell = el('td');
      const bar = el('div', 'panda-bar');
      const fill = el('div', 'panda-bar-fill');
      const pct = t.n_jobs ? Math.round((100 * t.n_done) / t.n_jobs) : 0;
      fill.style.width = `${pct}%`;
      bar.appendChild(fill);
      bar.title = `${t.n_done}/${t.n_jobs} jobs`;
      cell.appendChild(bar);
      cell.appendChild(el('span', 'panda-progress', `${t.n_done}/${t.n_jobs}`));
      row.appendChild(cell);
      // where its jobs went; before any is brokered, what the task asked for
      row.appendChild(el('td', 'panda-task-sites',
        (t.sites && t.sites.length ? t.sites : [t.site || '']).join(' ')));
      row.appendChild(el('td', '', age(t.created_at)));
      row.onclick = () => {
        this.selected = t.id;
        this.job.replaceChildren();
        void this.refresh();
      };
      list.appendChild(row);
    }
    this.tasks.replaceChildren(el('h3', '', 'Tasks'), list);
  }

  private async showTask(id: number): Promise<void> {
    const reply = await api(`tasks/${id}`);
    if (reply.status !== 200) {
      this.detail.replaceChildren(el('div', 'panda-error', reply.body?.message || 'gone'));
      return;
    }
    const t = reply.body;
    const box = el('div', 'panda-task-detail');
    box.dataset.taskId = String(id);
    box.appendChild(el('h3', '', `Task ${t.id} · ${t.name} · ${t.state}`));
    if (t.message) {
      // why it is where it is: how it ended, or why it was closed (its client gone)
      box.appendChild(el('div', 'panda-task-message', t.message));
    }
    const bySite: Record<string, Record<string, number>> = t.jobs_by_site || {};
    const used = STATES.filter(s => Object.values(bySite).some(c => c[s]));
    const perSite = table('panda-table panda-jobs-by-site', ['site', ...used]);
    for (const site of Object.keys(bySite).sort()) {
      const row = el('tr');
      row.appendChild(el('td', '', site));
      used.forEach(s => row.appendChild(el('td', `panda-state-${s}`, String(bySite[site][s] || ''))));
      perSite.appendChild(row);
    }
    box.appendChild(perSite);
    const buttons = el('div', 'panda-buttons');
    const kill = el('button', 'jp-Button panda-kill', 'Kill') as HTMLButtonElement;
    kill.disabled = ['done', 'finished', 'failed', 'aborted'].includes(t.state);
    kill.onclick = async () => {
      await api(`tasks/${id}/kill`, 'POST');
      await this.refresh();
    };
    const retry = el('button', 'jp-Button panda-retry', 'Retry') as HTMLButtonElement;
    retry.disabled = !['finished', 'failed', 'running'].includes(t.state);
    retry.onclick = async () => {
      const r = await api(`tasks/${id}/retry`, 'POST');
      if (r.status !== 200) {
        buttons.appendChild(el('span', 'panda-error', r.body?.message || String(r.status)));
      }
      await this.refresh();
    };
    const insert = el('button', 'jp-Button panda-insert', 'Insert in notebook');
    insert.title = `insert "task = lab.task(${id})" below the active cell`;
    insert.onclick = () => {
      if (!this.insert(`task = lab.task(${id})`)) {
        buttons.appendChild(el('span', 'panda-error', 'open a notebook first'));
      }
    };
    buttons.append(kill, retry, insert);
    box.appendChild(buttons);
    if (t.jobs && t.jobs.length) {
      box.appendChild(el('h4', '', 'Jobs (latest attempts; open one for its brokerage)'));
      const list = el('div', 'panda-job-list');
      for (const j of t.jobs) {
        const link = el('a', `panda-open-job panda-state-${j.state}`,
          `#${j.job_index} ${j.state}${j.site ? ' @' + j.site : ''}`);
        link.dataset.jobId = String(j.id);
        link.onclick = () => void this.showJob(j.id);
        list.append(link, document.createTextNode(' '));
      }
      if (t.n_jobs_listed > t.jobs.length) {
        list.appendChild(el('span', '', `… ${t.n_jobs_listed - t.jobs.length} more`));
      }
      box.appendChild(list);
    }
    if (t.errors && t.errors.length) {
      box.appendChild(el('h4', '', 'Errors'));
      for (const g of t.errors) {
        const line = el('div', 'panda-error-group');
        line.textContent = `${g.count} × [${g.category}] ${g.message} `;
        const open = el('a', 'panda-open-job', `job ${g.example_job}`);
        open.onclick = () => void this.showJob(g.example_job);
        line.appendChild(open);
        box.appendChild(line);
      }
    }
    this.detail.replaceChildren(box);
  }

  private async showJob(id: number): Promise<void> {
    const reply = await api(`jobs/${id}`);
    const j = reply.body;
    const box = el('div', 'panda-job-detail');
    box.appendChild(el('h4', '', `Job ${id} · attempt ${j.attempt} · ${j.state} at ${j.site}`));
    box.appendChild(el('div', '', 'Brokerage:'));
    box.appendChild(el('pre', 'panda-broker', JSON.stringify(j.broker_info, null, 1)));
    if (j.error_message) {
      box.appendChild(el('div', 'panda-error', `[${j.error_category}] ${j.error_message}`));
    }
    for (const [label, text] of [['traceback', j.error_traceback], ['stdout', j.stdout_tail],
      ['stderr', j.stderr_tail]]) {
      if (text) {
        box.appendChild(el('div', '', `${label}:`));
        box.appendChild(el('pre', `panda-log panda-${label}`, text));
      }
    }
    this.job.replaceChildren(box);
  }

  private showSites(sites: Json[]): void {
    const list = table('panda-table', ['site', 'kind', 'health', 'pilots', 'running', 'queued']);
    for (const s of sites) {
      const row = el('tr', 'panda-site-row');
      row.dataset.site = s.name;
      row.append(el('td', '', s.name), el('td', '', s.kind),
        el('td', `panda-health-${s.state}`, s.state + (s.reason ? `: ${s.reason}` : '')),
        el('td', '', String(s.pilots)), el('td', '', String(s.running)),
        el('td', '', String(s.queued)));
      list.appendChild(row);
    }
    this.sites.replaceChildren(el('h3', '', 'Sites'), list);
  }
}

/** The status bar item: jobs running and queued now, failed attempts of recent tasks. */
class PandaStatus extends Widget {
  private timer: number;

  constructor() {
    super();
    this.addClass('panda-status-item');
    this.node.textContent = 'PanDA';
    this.timer = window.setInterval(() => this.refresh(), 2000);
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    const reply = await api('counts');
    if (reply.status !== 200) {
      this.node.textContent = 'PanDA: no server';
      return;
    }
    const c = reply.body;
    this.node.textContent = `PanDA: ${c.running} running · ${c.queued} queued · ${c.failed} failed`;
  }
}

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
    app.shell.add(new PandaPanel(insert), 'left', { rank: 900 });
    if (statusBar) {
      statusBar.registerStatusItem('panda-lab:status', {
        item: new PandaStatus(),
        align: 'left',
        rank: 100
      });
    }
  }
};

export default plugin;
