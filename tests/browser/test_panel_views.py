"""The panel as a physicist meets it: JupyterLab at its default sidebar width, in the
light and the dark theme, against a real panda-lab server with a dimuon-like analysis
that lost part of its input.

The kind of bug guarded here: a monitor that says something other than what happened
(a task that lost data in the success colour, a final task with a Kill button, a status
bar that counts prefetched jobs as running or recovered attempts as failed), or that
cannot be read (a table wider than the sidebar, a detail drawn out of sight, a label
unreadable in the dark theme).  One JupyterLab, one page and one panda-lab server for
the module; the tests run in order on the same page."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import JupyterServer, ServerProcess, wait_for

#: The page's size: a laptop screen, JupyterLab's left sidebar at its default width.
VIEWPORT = {"width": 1280, "height": 860}


def dimuon_with_bad_file(events):
    """A dimuon-like processor that raises on the second file's chunks."""
    import hist
    import numpy as np

    if int(events.run[0]) != 1000:
        raise ValueError("bad muon collection in this file")
    h = hist.Hist(hist.axis.Regular(10, 0, 10, name="n", label="muons"))
    return {"n": h.fill(np.asarray(events.nMuon))}


def _sleep(t):
    import time

    time.sleep(t)
    return t


@pytest.fixture(scope="module")
def lab_page(chromium, tmp_path_factory):
    """A panda-lab server with a finished analysis that lost half its chunks, a
    JupyterLab with its panel open, and a page on it."""
    import sys

    import cloudpickle

    from panda_lab.analysis.sample import make_sample

    # before the per-test fixture does it: pilots cannot import this module
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    panda = ServerProcess(home).start()
    jupyter = JupyterServer(home, work)
    pool = ThreadPoolExecutor(1)
    starting = pool.submit(jupyter.start)          # JupyterLab boots while the task runs
    try:
        lab = panda.lab()
        files = make_sample(tmp_path_factory.mktemp("data"), files=2, events=1_000,
                            basket_events=500)
        lab.datasets.register("dimuon-views", [str(f) for f in files])
        task = lab.analyze(dimuon_with_bad_file, "dimuon-views", events_per_job=500,
                           name="dimuon", retries=0)
        lab.wait(task.id, timeout=60)
        starting.result()
        page = chromium.new_page(viewport=VIEWPORT)
        page.set_default_timeout(30_000)
        page.goto(f"{jupyter.url}/lab?token={jupyter.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
        page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']").click()
        page.locator(".panda-lab-panel .panda-header:has-text('panda-lab')").wait_for()
        yield {"page": page, "lab": lab, "task": task.id, "panda": panda}
        page.close()
    finally:
        starting.result()
        pool.shutdown()
        jupyter.stop()
        panda.stop()


def luminance(css: str) -> float:
    """Relative luminance (WCAG) of an ``rgb(...)``/``rgba(...)`` colour."""
    parts = [float(p) for p in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
    lin = [(c / 255) / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4
           for c in parts]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(page, selector: str) -> float:
    """The WCAG contrast ratio of the first element's text against the panel's
    background."""
    fg, bg = page.evaluate("""sel => {
        const el = document.querySelector(sel);
        const bg = el.closest('.panda-lab-panel, .panda-task-view');
        return [getComputedStyle(el).color, getComputedStyle(bg).backgroundColor];
    }""", selector)
    hi, lo = sorted([luminance(fg), luminance(bg)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_the_sidebar_fits_and_a_task_that_lost_data_warns(lab_page, artifacts):
    page, task = lab_page["page"], lab_page["task"]
    panel = page.locator(".panda-lab-panel")
    row = panel.locator(f".panda-task-row[data-task-id='{task}']")
    row.wait_for()
    width = panel.evaluate("el => el.getBoundingClientRect().width")
    assert 200 <= width <= 320, width                      # JupyterLab's default sidebar
    # nothing wider than the panel: no horizontal scrolling, no element past its edge
    wider = panel.evaluate("""el => {
        const right = el.getBoundingClientRect().right;
        return [...el.querySelectorAll('*')]
            .filter(c => c.getBoundingClientRect().right > right + 1)
            .map(c => c.className + ': ' + c.textContent.slice(0, 40));
    }""")
    assert wider == [] and panel.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), wider
    label = row.locator(".panda-label")
    assert label.inner_text().startswith("finished: 2 of 4 jobs failed")
    assert "panda-tone-warning" in label.get_attribute("class")
    assert row.get_attribute("data-tone") == "warning"
    warn = page.evaluate("getComputedStyle(document.body).getPropertyValue("
                         "'--jp-warn-color1').trim()")
    assert warn and contrast(page, f".panda-task-row[data-task-id='{task}'] .panda-label") > 2
    page.screenshot(path=str(artifacts / "panel-sidebar-default-width.png"))


def test_a_task_opens_beside_the_sidebar_with_its_summary_stream_jobs_and_report(
        lab_page, artifacts):
    page, task = lab_page["page"], lab_page["task"]
    page.locator(f".panda-lab-panel .panda-task-row[data-task-id='{task}']").click()
    view = page.locator(".panda-task-view")
    detail = view.locator(f".panda-task-detail[data-task-id='{task}']")
    detail.wait_for()
    box = view.bounding_box()
    assert box and box["x"] > 250 and box["width"] > 400    # in the main area, in sight
    header = detail.locator(".panda-task-header").inner_text()
    assert "dimuon-views" in header and "1,000 of 2,000 processed" in header
    assert "wall time" in header and "ETA" not in header
    assert "Lost: 2 of 4 jobs" in detail.locator(".panda-lost").inner_text()
    assert detail.locator(".panda-kill").count() == 0         # final: no Kill

    # the task stream: one bar per attempt on its pilot's row, the failures marked
    bars = detail.locator(".panda-timeline svg rect.panda-tl-bar")
    bars.first.wait_for()
    assert bars.count() == 4
    assert detail.locator(".panda-timeline rect.panda-tl-failed").count() == 2
    assert detail.locator(".panda-timeline path.panda-tl-mark").count() == 2

    # the job table: failures first; sorted by duration; filtered
    rows = detail.locator(".panda-job-row")
    assert [r.get_attribute("data-state") for r in rows.all()] == [
        "failed", "failed", "finished", "finished"]
    detail.locator(".panda-show-failed").click()
    page.wait_for_function("() => document.querySelectorAll('.panda-job-row').length === 2")
    detail.locator(".panda-job-show").select_option("all")
    detail.locator(".panda-job-filter").fill("500\u2013")  # each file's second chunk, 500 to 1000
    page.wait_for_function("() => document.querySelectorAll('.panda-job-row').length === 2")
    detail.locator(".panda-job-filter").fill("")
    detail.locator("th[data-sort='duration']").click()
    assert "time ▲" in detail.locator(".panda-sorted").inner_text()

    # task.report(), rendered
    statuses = [r.get_attribute("data-status")
                for r in detail.locator(".panda-report-row").all()]
    assert sorted(statuses) == ["done", "done", "failed", "failed"]
    page.screenshot(path=str(artifacts / "panel-task-view.png"))


def test_a_job_says_in_words_why_it_went_where_it_went(lab_page, artifacts):
    page = lab_page["page"]
    view = page.locator(".panda-task-view")
    view.locator(".panda-timeline rect.panda-tl-failed").first.click()
    job = view.locator(".panda-job-detail")
    job.wait_for()
    # brought into sight, wherever the layout put it
    page.wait_for_function("""() => {
        const r = document.querySelector('.panda-job-detail').getBoundingClientRect();
        return r.top >= 0 && r.top < window.innerHeight - 40;
    }""")
    sentence = job.locator(".panda-broker-sentence").inner_text()
    assert sentence.lower().startswith("sent to local-"), sentence
    # every site the brokerage considered, with its fate, weight and chance
    candidates = job.locator(".panda-broker-candidates").inner_text()
    assert "picked" in candidates and "%" in candidates, candidates
    assert "LOCAL-GRID" in candidates and "LOCAL-HPC" in candidates, candidates
    assert "each site the brokerage considered" in \
        job.locator(".panda-broker-meaning").inner_text()
    assert "bad muon collection" in job.locator(".panda-error").inner_text()
    page.screenshot(path=str(artifacts / "panel-job-brokerage.png"))


def test_the_status_bar_counts_apart_explains_and_opens_the_panel(lab_page, artifacts):
    page, lab = lab_page["page"], lab_page["lab"]
    long = lab.submit(_sleep, [(20.0,)] * 12, name="to-count", retries=0)
    try:
        wait_for(lambda: lab.api.get("/api/counts")["running"] > 0, 30,
                 what="jobs running")
        item = page.locator(".panda-status-item")
        # the numbers the server counts, with SQL, shown apart
        def shown() -> bool:
            c = lab.api.get("/api/counts")
            return item.inner_text() == (
                f"PanDA: {c['running']} running · {c['prefetched']} prefetched · "
                f"{c['waiting']} waiting · {c['failed']} failed")
        wait_for(shown, 20, interval=0.3, what="the status bar showing the server's counts")
        counts = lab.api.get("/api/counts")
        assert counts["failed"] == 2 and counts["failed_tasks"] == 1
        assert counts["running"] + counts["prefetched"] + counts["waiting"] == 12
        tip = item.get_attribute("title")
        assert "running: jobs started on a pilot" in tip
        assert "prefetched: jobs a pilot holds but has not started yet" in tip
        # a click opens the panel after another sidebar took its place
        page.evaluate("window.jupyterapp.shell.activateById('filebrowser')")
        page.locator(".panda-lab-panel").wait_for(state="hidden")
        item.click()
        page.locator(".panda-lab-panel").wait_for(state="visible")
        page.screenshot(path=str(artifacts / "panel-status-bar.png"))
    finally:
        lab.kill(long)
    # the analysis' failures seen: they leave the count
    page.locator(".panda-task-view .panda-ack").click()
    wait_for(lambda: lab.api.get("/api/counts")["failed"] == 0, 10, what="failures seen")
    page.locator(".panda-status-item:has-text('0 failed')").wait_for()


def test_the_dark_theme_keeps_every_tone_readable(lab_page, artifacts):
    page, task = lab_page["page"], lab_page["task"]
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', "
                  "{theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.locator(f".panda-lab-panel .panda-task-row[data-task-id='{task}']").click()
    page.locator(".panda-task-view .panda-task-label").wait_for()
    # the panel's background follows the theme, and the tones stay readable on it
    bg = page.evaluate("getComputedStyle(document.querySelector('.panda-lab-panel'))"
                       ".backgroundColor")
    assert luminance(bg) < 0.1, bg
    for selector in (f".panda-task-row[data-task-id='{task}'] .panda-label",
                     ".panda-task-view .panda-task-label", ".panda-task-view .panda-lost",
                     ".panda-task-view .panda-job-row[data-state='failed'] td"
                     ".panda-state-failed"):
        assert contrast(page, selector) > 3, selector
    page.screenshot(path=str(artifacts / "panel-dark-theme.png"))
