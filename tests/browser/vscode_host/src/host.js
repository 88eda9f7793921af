// A stand-in for VS Code's notebook webview, for tests: it renders widget outputs with the
// widget bundle the VS Code Jupyter extension ships (@vscode/jupyter-ipywidgets8), creating
// its WidgetManager and showing a view the way the extension's webview does (get_model,
// create_view, display_view into a container). VS Code hands that manager a proxy of the
// kernel connection; here it is a real @jupyterlab/services connection to a Jupyter server.
import '@jupyter-widgets/controls/css/labvariables.css';
import { KernelManager, ServerConnection } from '@jupyterlab/services';
import { activate } from '@vscode/jupyter-ipywidgets8';

const WIDGET_MIMETYPE = 'application/vnd.jupyter.widget-view+json';

const host = {
  kernel: null,
  manager: null,
  /** Messages from the widget manager and render failures, for the test to read. */
  log: [],
  errors: [],
  /** Views rendered, by model id. */
  views: {},

  /** Start a kernel on the Jupyter server this page came from, and the widget manager. */
  async start(token) {
    const serverSettings = ServerConnection.makeSettings({
      baseUrl: `${location.origin}/`,
      wsUrl: `${location.origin.replace(/^http/, 'ws')}/`,
      token,
      appendToken: true
    });
    const kernels = new KernelManager({ serverSettings });
    this.kernel = await kernels.startNew({ name: 'python3' });
    await this.kernel.info;
    activate();
    window.vscIPyWidgets8.load();
    const scriptLoader = {
      // the standard controls are in the bundle; a third-party widget would be fetched here
      widgetsRegisteredInRequireJs: new Set(),
      loadWidgetScript: async (moduleName, moduleVersion) => {
        throw new Error(`no widget scripts are fetched in this host: ${moduleName}@${moduleVersion}`);
      },
      successHandler: () => {},
      errorHandler: (className, moduleName, moduleVersion, error) =>
        this.errors.push(`cannot load ${moduleName}@${moduleVersion} ${className}: ${error}`)
    };
    const container = document.getElementById('cells');
    this.manager = new window.vscIPyWidgets.WidgetManager(
      this.kernel, container, scriptLoader, (message) => this.log.push(message));
    document.getElementById('status').textContent = 'ready';
  },

  /** Run one cell's code; its outputs appear below the previous cell's. */
  async run(code) {
    const cell = document.createElement('div');
    cell.className = 'vscode-cell';
    document.getElementById('cells').appendChild(cell);
    const future = this.kernel.requestExecute({ code, stop_on_error: true });
    const rendering = [];
    future.onIOPub = (msg) => {
      const type = msg.header.msg_type;
      if (type === 'stream') {
        append(cell, 'pre', msg.content.name).textContent = msg.content.text;
      } else if (type === 'display_data' || type === 'execute_result') {
        rendering.push(this.display(cell, msg.content.data));
      } else if (type === 'error') {
        append(cell, 'pre', 'error').textContent =
          `${msg.content.ename}: ${msg.content.evalue}`;
      } else if (type === 'clear_output') {
        cell.replaceChildren();
      }
    };
    const reply = await future.done;
    await Promise.all(rendering);
    return reply.content.status;
  },

  /** One output: a widget through the manager, else the richest plain type. */
  async display(cell, data) {
    const widget = data[WIDGET_MIMETYPE];
    if (widget) {
      const element = append(cell, 'div', 'cell-output-ipywidget-background');
      try {
        const model = await this.manager.get_model(widget.model_id);
        const view = await this.manager.create_view(model, { el: element });
        await this.manager.display_view(widget, view, { node: element });
        this.views[widget.model_id] = view;
      } catch (error) {
        this.errors.push(`cannot render widget ${widget.model_id}: ${error}`);
      }
    } else if (data['image/png']) {
      append(cell, 'img', 'image').src = `data:image/png;base64,${data['image/png']}`;
    } else if (data['text/html']) {
      append(cell, 'div', 'html').innerHTML = data['text/html'];
    } else if (data['text/plain']) {
      append(cell, 'pre', 'text').textContent = data['text/plain'];
    }
  }
};

function append(parent, tag, className) {
  const element = document.createElement(tag);
  element.className = className;
  parent.appendChild(element);
  return element;
}

window.vscodeHost = host;
