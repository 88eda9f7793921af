"""The PanDA side panel in a real JupyterLab, against a real panda-lab server."""

from __future__ import annotations

import time

from harness import open_new_notebook, wait_for

NOTEBOOK_CODE = """\
import time
import panda_lab
lab = panda_lab.connect()
def nap(t):
    time.sleep(t)
    return t
task_id = lab.submit(nap, [(0.4,)] * 12, name="from-notebook")
print("submitted", task_id, time.time())
"""


def run_in_notebook(page, code: str) -> None:
    """Put ``code`` in the active cell of the open notebook and run it."""
    page.evaluate("""code => {
        const nb = window.jupyterapp.shell.currentWidget.content;
        nb.activeCell.model.sharedModel.setSource(code);
        return window.jupyterapp.commands.execute('notebook:run-cell');
    }""", code)


def test_the_panel_follows_a_notebooks_task_and_kills_and_inserts(chromium, lab_server,
                                                                   artifacts):
    lab = lab_server["panda"].lab()
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{lab_server['url']}/lab?token={lab_server['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")

    # the panel's tab is in the left sidebar; the status bar shows the counts
    tab = page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']")
    tab.wait_for()
    tab.click()
    panel = page.locator(".panda-lab-panel")
    panel.locator(".panda-header:has-text('panda-lab')").wait_for()
    assert "LOCAL-GRID" in panel.locator(".panda-site-row").first.inner_text() or \
        panel.locator(".panda-site-row[data-site='LOCAL-GRID']").count() == 1
    page.locator(".panda-status-item:has-text('running')").wait_for()

    # a task submitted from a notebook shows up, and its progress moves
    open_new_notebook(page)
    run_in_notebook(page, NOTEBOOK_CODE)
    page.locator(".jp-OutputArea-output:has-text('submitted')").wait_for()
    printed = page.locator(".jp-OutputArea-output:has-text('submitted')").inner_text().split()
    task_id = int(printed[1])
    row = panel.locator(f".panda-task-row[data-task-id='{task_id}']")
    row.wait_for(timeout=1_000)           # within 1 s of the cell's output
    progress = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress.add(row.locator(".panda-progress").inner_text())
        if row.get_attribute("data-state") == "done":
            break
        time.sleep(0.1)
    progress.add(row.locator(".panda-progress").inner_text())
    assert "12/12" in progress and len(progress) >= 3, progress
    assert "LOCAL-" in row.locator(".panda-task-sites").inner_text()   # where its jobs went
    page.screenshot(path=str(artifacts / "panel-task-done.png"))

    # open the task (in the main area): jobs per site; insert its handle into the notebook
    row.click()
    detail = page.locator(f".panda-task-view .panda-task-detail[data-task-id='{task_id}']")
    detail.wait_for()
    assert "LOCAL-" in detail.locator(".panda-jobs-by-site").inner_text()
    detail.locator(".panda-job-row").first.click()          # a job's brokerage decision
    job = page.locator(".panda-task-view .panda-job-detail")
    job.wait_for()
    assert "finished at LOCAL-" in job.inner_text()
    assert job.locator(".panda-broker-sentence").inner_text().lower().startswith("sent to local-")
    detail.locator(".panda-insert").click()
    page.wait_for_function("""id => [...window.jupyterapp.shell.widgets('main')]
        .some(w => w.content && w.content.model && w.content.model.cells
              && w.content.model.cells.length > 1
              && w.content.model.cells.get(1).sharedModel.getSource()
                 === `task = lab.task(${id})`)""", arg=task_id)

    # kill a long task from the panel: it stops on the server
    long_task = lab.submit(_sleep, [(30.0,)] * 4, name="to-kill", retries=0)
    wait_for(lambda: any(j["state"] == "running" for j in lab.jobs(long_task)), 30,
             what="the long task running")
    long_row = panel.locator(f".panda-task-row[data-task-id='{long_task}']")
    long_row.click()
    kill = page.locator(f".panda-task-detail[data-task-id='{long_task}'] .panda-kill")
    kill.click()
    wait_for(lambda: lab.task_info(long_task)["state"] == "aborted", 10,
             what="the task aborted on the server")
    assert {j["state"] for j in lab.jobs(long_task)} == {"cancelled"}
    page.locator(f".panda-task-row[data-task-id='{long_task}'][data-state='aborted']").wait_for()
    # a final task has no Kill button
    page.locator(f".panda-task-detail[data-task-id='{long_task}'] .panda-kill").wait_for(
        state="detached")
    page.screenshot(path=str(artifacts / "panel-killed.png"))


def _sleep(t):
    import time

    time.sleep(t)
    return t


def test_with_no_server_the_panel_offers_to_start_one(chromium, tmp_path, artifacts):
    from harness import JupyterServer

    from panda_lab.cli.main import main as cli

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    jupyter = JupyterServer(home, work).start()
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{jupyter.url}/lab?token={jupyter.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
        page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']").click()
        down = page.locator(".panda-lab-panel .panda-server-down")
        down.wait_for()
        assert "no panda-lab server" in down.inner_text()
        page.locator(".panda-status-item:has-text('no server')").wait_for()
        page.screenshot(path=str(artifacts / "panel-no-server.png"))
        down.locator(".panda-start").click()
        page.locator(".panda-lab-panel .panda-site-row[data-site='LOCAL-GRID']").wait_for(
            timeout=90_000)
    finally:
        jupyter.stop()
        cli(["--home", str(home), "server", "stop"])


def bins_by_run(events):
    """10 bins for the first file, 20 for the second: results that cannot be merged."""
    import hist
    import numpy as np

    bins = 10 if int(events.run[0]) == 1000 else 20
    return {"mass": hist.Hist(hist.axis.Regular(bins, 0, 150)).fill(np.asarray(events.nMuon))}


def test_the_panel_shows_why_results_could_not_be_merged(chromium, lab_server, tmp_path,
                                                         artifacts):
    from panda_lab.analysis.sample import make_sample

    lab = lab_server["panda"].lab()
    files = make_sample(tmp_path / "data", files=2, events=1_000, basket_events=500)
    lab.datasets.register("panel-merge", [str(f) for f in files])
    task = lab.analyze(bins_by_run, "panel-merge", events_per_job=1_000, name="panel-merge")
    lab.wait(task.id, timeout=60)
    message = lab.task_info(task.id)["options"]["merge_error"]["message"]
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{lab_server['url']}/lab?token={lab_server['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
    page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']").click()
    panel = page.locator(".panda-lab-panel")
    panel.locator(f".panda-task-row[data-task-id='{task.id}'][data-state='failed']").click()
    detail = page.locator(f".panda-task-detail[data-task-id='{task.id}']")
    detail.wait_for()
    first = detail.locator(".panda-error-group").first.inner_text()
    assert first.startswith(f"1 \u00d7 [merge] {message}")      # count, category, message
    assert "histograms differ" in first and any(f"{f} entries 0-1000" in first for f in files)
    page.screenshot(path=str(artifacts / "panel-merge-error.png"))
