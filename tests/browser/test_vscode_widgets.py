"""The monitor in VS Code: rendered by the widget bundle the VS Code Jupyter extension ships.

There is no VS Code here. What VS Code uses to show a widget is its Jupyter extension's
ipywidgets 8 bundle (npm ``@vscode/jupyter-ipywidgets8``), which its notebook webview loads
after require.js, then creates the bundle's ``WidgetManager`` over the kernel and shows each
widget output with ``get_model`` → ``create_view`` → ``display_view``. ``vscode_host/`` is a page
that does the same in headless Chromium, with a real kernel connection where VS Code has a proxy
of one. What this does not cover: VS Code's own window, themes and message passing between its
extension host and the webview.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import WATCH_HISTOGRAMS, JupyterServer, ServerProcess, wait_for

HOST = Path(__file__).resolve().parent / "vscode_host"
NOTEBOOK = Path(__file__).resolve().parents[2] / "example_notebooks" / "02-dimuon-analysis.ipynb"


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}, and CI must run the VS Code widget tests: run scripts/test")
    pytest.skip(f"{why} (scripts/test installs it)")


@pytest.fixture(scope="module")
def host_dist() -> Path:
    """The host page, built from its sources now (esbuild: about a second)."""
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed")
    if not (HOST / "node_modules" / "@vscode" / "jupyter-ipywidgets8").is_dir():
        _unavailable(f"the host page's npm packages are not installed in {HOST}")
    subprocess.run([npm, "run", "--silent", "build"], cwd=HOST, check=True)
    return HOST / "dist"


@pytest.fixture
def vscode(chromium, host_dist, tmp_path):
    """A panda-lab server, a Jupyter server serving the host page, and the page with a
    kernel started and the widget manager created."""
    home = tmp_path / "home"
    home.mkdir()
    panda = ServerProcess(home).start()
    work = tmp_path / "work"
    work.mkdir()
    jupyter = JupyterServer(home, work, app="jupyter_server",
                            extra_args=[f"--ServerApp.extra_static_paths={[str(host_dist)]}"])
    jupyter.start()
    page = chromium.new_page(viewport={"width": 1200, "height": 1000})
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        page.goto(f"{jupyter.url}/static/host.html")
        page.wait_for_function("window.vscodeHost !== undefined")
        page.evaluate("token => window.vscodeHost.start(token)", jupyter.token)
        yield {"page": page, "panda": panda, "problems": problems}
    finally:
        page.close()
        jupyter.stop()
        panda.stop()


def run_cell(page, code: str) -> None:
    status = page.evaluate("code => window.vscodeHost.run(code)", code)
    errors = page.locator(".vscode-cell .error").all_inner_texts()
    assert status == "ok", f"cell failed: {errors}\n{code}"


def host_errors(page) -> list[str]:
    return page.evaluate("window.vscodeHost.errors")


def test_dimuon_notebook_monitor_renders_and_fills_in(vscode, artifacts):
    page = vscode["page"]
    page.evaluate(WATCH_HISTOGRAMS)  # every picture the monitor shows, as it is swapped in
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    monitor = page.locator(".panda-task-monitor").first
    for cell in cells:
        run_cell(page, "".join(cell["source"]))
    try:
        monitor.locator(".panda-counts:has-text('(100%)')").wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(artifacts / "vscode-dimuon.png"), full_page=True)
    monitor.screenshot(path=str(artifacts / "vscode-dimuon-monitor.png"))
    assert "4,000,000 / 4,000,000 events (100%)" in monitor.locator(".panda-counts").inner_text()
    state = monitor.locator(".panda-state").inner_text()
    assert state.startswith("done: all ") and state.endswith(" jobs finished"), state
    bar = monitor.locator(".widget-hprogress .progress-bar")
    assert bar.evaluate("e => e.style.width") == "100%"
    assert "progress-bar-success" in bar.get_attribute("class")
    assert monitor.locator("table.panda-sites").is_visible()
    # a final task has nothing to kill: its Kill button goes away (the button's own
    # update is a message of its own after the counts', so wait for it)
    monitor.locator("button:has-text('Kill')").wait_for(state="hidden", timeout=10_000)
    assert page.evaluate("window.__histograms.size") >= 2, \
        "the histogram did not change while the analysis ran"
    # the notebook's other outputs: the fit, the plot
    assert "(PDG: 91.19)" in page.locator(".vscode-cell pre:has-text('Z mass:')").inner_text()
    assert page.locator(".vscode-cell img.image").count() >= 1
    assert host_errors(page) == []
    assert vscode["problems"] == []


def test_kill_button_reaches_the_server(vscode, artifacts):
    """A click in the view travels back through the comm to the kernel, which kills the task."""
    page = vscode["page"]
    run_cell(page, """\
import panda_lab
lab = panda_lab.connect()
def nap(t):
    import time
    time.sleep(t)
    return t
task = lab.task(lab.submit(nap, [(30.0,)] * 4, name="to-kill-from-vscode", retries=0))
task
""")
    lab = vscode["panda"].lab()
    task_id = lab.task_info("to-kill-from-vscode")["id"]
    wait_for(lambda: any(j["state"] == "running" for j in lab.jobs(task_id)), 30,
             what="the long task running")
    monitor = page.locator(".panda-task-monitor").first
    monitor.locator("button:has-text('Kill')").click()
    wait_for(lambda: lab.task_info(task_id)["state"] == "aborted", 10,
             what="the task aborted on the server")
    assert {j["state"] for j in lab.jobs(task_id)} == {"cancelled"}
    monitor.locator(".panda-state:has-text('aborted')").wait_for(timeout=10_000)
    monitor.screenshot(path=str(artifacts / "vscode-killed.png"))
    assert host_errors(page) == []
    assert vscode["problems"] == []
