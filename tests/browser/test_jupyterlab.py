"""What a person sees: the dimuon notebook run in JupyterLab and in Notebook 7, its monitor
filling in."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from harness import WATCH_HISTOGRAMS, kernel_print, open_new_notebook, run_cell, wait_for

NOTEBOOK = Path(__file__).resolve().parents[2] / "example_notebooks" / "02-dimuon-analysis.ipynb"


@pytest.mark.parametrize("lab_server", ["jupyterlab", "notebook"], indirect=True)
def test_dimuon_notebook_runs_and_its_monitor_fills_in(chromium, lab_server, artifacts):
    app = lab_server["jupyter"].app
    route = "lab/tree" if app == "jupyterlab" else "notebooks"
    shutil.copy(NOTEBOOK, lab_server["work"] / NOTEBOOK.name)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{lab_server['url']}/{route}/{NOTEBOOK.name}?token={lab_server['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    # the notebook's kernel started and idle (the app is exposed for tests only)
    page.wait_for_function("""() => {
        const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session
                  && w.sessionContext.session.kernel;
        return k && k.connectionStatus === 'connected' && k.status === 'idle';
    }""", timeout=90_000)
    page.evaluate(WATCH_HISTOGRAMS)  # every picture the monitor shows, as it is swapped in
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    monitor = page.locator(".panda-task-monitor").first
    try:
        monitor.wait_for(timeout=120_000)
    except Exception:
        page.screenshot(path=str(artifacts / f"{app}-no-monitor.png"), full_page=True)
        raise
    monitor.locator(".panda-counts:has-text('(100%)')").wait_for(timeout=120_000)
    try:  # the partial picture, then the final one (redrawn at most once a second)
        page.wait_for_function("window.__histograms.size >= 2", timeout=15_000)
    except Exception:
        pass  # asserted below, with its message
    seen = page.evaluate("window.__histograms.size")
    monitor.screenshot(path=str(artifacts / f"{app}-dimuon-monitor.png"))
    counts = monitor.locator(".panda-counts").inner_text()
    assert "4,000,000 / 4,000,000 events (100%)" in counts
    state = monitor.locator(".panda-state").inner_text()
    assert state.startswith("done: all ") and state.endswith(" jobs finished"), state
    bar = monitor.locator(".widget-hprogress .progress-bar")
    assert bar.evaluate("e => e.style.width") == "100%"
    assert "progress-bar-success" in bar.get_attribute("class")
    assert seen >= 2, "the histogram did not change while the analysis ran"
    # the rest of the notebook ran too: the fit and its plot
    page.wait_for_selector("text=Z mass:", timeout=120_000)
    fit = page.locator(".jp-OutputArea-output:has-text('Z mass:')").first.inner_text()
    assert "(PDG: 91.19)" in fit
    page.locator(".jp-RenderedImage img").first.wait_for()
    page.screenshot(path=str(artifacts / f"{app}-dimuon-end.png"))


def test_a_cleared_monitor_stops_polling_and_a_shown_one_resumes(chromium, lab_server):
    """JupyterLab counts the monitor's views: clearing the output stops the polling."""
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{lab_server['url']}/lab?token={lab_server['token']}")
    open_new_notebook(page)
    run_cell(page, "import panda_lab\nm = panda_lab.connect().monitor(interval=0.1)\nm")
    page.locator(".panda-lab-monitor").wait_for()
    wait_for(lambda: kernel_print(page, "m._view_count") == "1", 10, what="the view counted")
    before = int(kernel_print(page, "m.updates"))
    wait_for(lambda: int(kernel_print(page, "m.updates")) > before + 2, 10,
             what="updates while shown")

    page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.locator(".panda-lab-monitor").wait_for(state="detached")
    wait_for(lambda: kernel_print(page, "m._view_count") == "0", 10, what="the view uncounted")
    idle = int(kernel_print(page, "m.updates"))
    time.sleep(1.0)
    assert int(kernel_print(page, "m.updates")) == idle, "still polling with nothing shown"

    run_cell(page, "m")  # shown again
    page.locator(".panda-lab-monitor").wait_for()
    wait_for(lambda: int(kernel_print(page, "m.updates")) > idle + 2, 10,
             what="updates after it is shown again")
