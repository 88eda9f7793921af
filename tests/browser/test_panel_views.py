"""The panel as a physicist meets it: JupyterLab at its default sidebar width, in the
light and the dark theme, against a real panda-lab server with a dimuon-like analysis
that lost part of its input.

The kind of bug guarded here: a monitor that says something other than what happened
(a task that lost data in the success colour, a final task with a Kill button, a status
bar that counts prefetched jobs as running or recovered attempts as failed), or that
cannot be read (a table wider than the sidebar, a detail drawn out of sight, a label
unreadable in the dark theme), and a live histogram that is not drawn as a physicist
reads one (no error bars, no units or bin width on the axes, a log toggle or a
histogram choice that does nothing, a partial result not marked as such, or a mark that
stays once it is final).  One JupyterLab, one page and one panda-lab server for the
module; the tests run in order on the same page."""

from __future__ import annotations

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import (
    SET_HIDDEN,
    WATCH_SVGS,
    JupyterServer,
    ServerProcess,
    kernel_print,
    run_cell,
    wait_for,
    wait_for_kernel,
)

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
        # the live-histogram test's notebook: its kernel boots while the panel is tested
        kernel = pool.submit(start_kernel, jupyter, work / LIVE_NOTEBOOK)
        page = chromium.new_page(viewport=VIEWPORT)
        page.set_default_timeout(30_000)
        page.goto(f"{jupyter.url}/lab?token={jupyter.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
        page.locator(".lm-TabBar-tab[data-id='panda-lab-panel']").click()
        page.locator(".panda-lab-panel .panda-header:has-text('panda-lab')").wait_for()
        yield {"page": page, "lab": lab, "task": task.id, "panda": panda, "kernel": kernel}
        page.close()
    finally:
        starting.result()
        pool.shutdown()
        jupyter.stop()
        panda.stop()


#: The notebook of the live-histogram test, in JupyterLab's root directory.
LIVE_NOTEBOOK = "live-histogram.ipynb"


def start_kernel(jupyter: JupyterServer, path) -> None:
    """Write an empty notebook at ``path`` and start its kernel session through
    Jupyter's REST API: the page that opens it later finds the kernel running."""
    import json
    import urllib.request

    path.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))
    body = json.dumps({"path": path.name, "name": path.name, "type": "notebook",
                       "kernel": {"name": "python3"}}).encode()
    req = urllib.request.Request(f"{jupyter.url}/api/sessions?token={jupyter.token}",
                                 data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 201, r.status


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


def open_task(page, task: int):
    """The task's view beside the sidebar, opened by its row unless it is open already:
    each test stands on its own, whatever ran before it."""
    detail = page.locator(f".panda-task-view .panda-task-detail[data-task-id='{task}']")
    if not detail.count():
        page.locator(f".panda-lab-panel .panda-task-row[data-task-id='{task}']").click()
    detail.wait_for()
    return detail


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
    view = page.locator(".panda-task-view")
    detail = open_task(page, task)
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
    # each pilot's memory and CPU under the stream, measured (not 0, not the request)
    usage = detail.locator(".panda-tl-usage").inner_text()
    assert "now " in usage and " MB" in usage and "jobs here: peak " in usage, usage

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
    open_task(page, lab_page["task"])
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
    assert job.locator(".panda-job-usage").inner_text().startswith("used: peak memory ")
    page.screenshot(path=str(artifacts / "panel-job-brokerage.png"))

    # closed by its tab, the task view comes back when a task is opened again
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab[data-id='panda-lab-task'] "
                 ".lm-TabBar-tabCloseIcon").click()
    view.wait_for(state="detached")
    page.locator(f".panda-lab-panel .panda-task-row[data-task-id='{lab_page['task']}']").click()
    view.locator(".panda-task-label").wait_for()
    assert view.is_visible()


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
    open_task(page, lab_page["task"]).locator(".panda-ack").click()
    wait_for(lambda: lab.api.get("/api/counts")["failed"] == 0, 10, what="failures seen")
    page.locator(".panda-status-item:has-text('0 failed')").wait_for()



#: Counts the event streams the page opens from now on that are still open.
TRACK_STREAMS = """() => {
  if (window.__streams) return;
  window.__streams = [];
  const Original = window.EventSource;
  window.EventSource = class extends Original {
    constructor(...args) { super(...args); window.__streams.push(this); }
  };
}"""
OPEN_STREAMS = "window.__streams.filter(s => s.readyState !== EventSource.CLOSED).length"


def test_a_hidden_browser_tab_holds_no_event_stream_for_the_panel(lab_page):
    """The browser tab hidden, the panel closes its event stream at once (not at its
    poll's next tick, seconds later), and shown again it opens one."""
    page = lab_page["page"]
    page.evaluate(TRACK_STREAMS)
    page.evaluate(SET_HIDDEN, True)
    page.evaluate(SET_HIDDEN, False)     # shown: a fetch, then a stream, tracked
    page.wait_for_function(f"() => {OPEN_STREAMS} === 1", timeout=15_000)
    page.evaluate(SET_HIDDEN, True)
    try:
        page.wait_for_function(f"() => {OPEN_STREAMS} === 0", timeout=3_000)
    finally:
        page.evaluate(SET_HIDDEN, False)
    page.wait_for_function(f"() => {OPEN_STREAMS} === 1", timeout=15_000)


#: A notebook cell: an analysis of two histograms whose jobs take half a second, and its
#: monitor.  Functions defined in a cell travel by value, as a physicist's do.
LIVE_HISTOGRAM_CELL = """
import panda_lab

def pt_and_count(events):
    import time
    import awkward as ak
    import hist
    import numpy as np
    time.sleep(0.5)  # long enough to watch it fill
    pt = ak.to_numpy(ak.flatten(events.Muon.pt))
    return {"muon_pt": hist.Hist(hist.axis.Regular(30, 0, 60, name="pt",
                                                   label="p_T [GeV]")).fill(pt),
            "n_muons": hist.Hist(hist.axis.Regular(8, 0, 8, name="n",
                                                   label="muons per event")).fill(
                np.asarray(events.nMuon))}

task = panda_lab.connect().analyze(pt_and_count, "dimuon-views", events_per_job=250,
                                   name="live-histogram", retries=0)
monitor = task.monitor()
monitor
"""

CURRENT_SVG = """async () => {
    const img = document.querySelector('.panda-task-monitor img');
    return img && img.src ? (await fetch(img.src)).text() : '';
}"""


def svg_texts(svg: str) -> list[str]:
    """The text of an SVG's ``<text>`` elements (tick labels, axis titles, marks)."""
    return [re.sub(r"<[^>]+>", "", t).strip()
            for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)]


def error_bars(svg: str) -> int:
    """How many error bars an SVG draws: the segments of matplotlib's error-bar
    collection (mplhep's ``histtype="errorbar"``)."""
    group = re.search(r'<g id="LineCollection_\d+">(.*?)</g>', svg, re.S)
    return group.group(1).count("<path") if group else 0


def test_the_live_histogram_as_a_physicist_reads_it(lab_page, artifacts):
    """In a notebook beside the panel (the default sidebar width): the merged histogram
    fills in marked "partial: N of M events", ends unmarked, with error bars and the
    axis titles a physicist writes; the log toggle and the histogram choice redraw it."""
    page = lab_page["page"]
    # the notebook as a tab beside the task view, the whole main area theirs
    page.evaluate("""() => { for (const w of [...window.jupyterapp.shell.widgets('main')])
        if (w.node.querySelector('.jp-Launcher')) w.close(); }""")
    lab_page["kernel"].result()  # its kernel started while the panel was tested
    page.evaluate(f"window.jupyterapp.commands.execute('docmanager:open', {{path: "
                  f"'{LIVE_NOTEBOOK}', options: {{mode: 'tab-after', ref: 'panda-lab-task'}}}})")
    wait_for_kernel(page)
    lab_page["notebook"] = page.evaluate("window.jupyterapp.shell.currentWidget.id")
    page.evaluate(WATCH_SVGS)
    run_cell(page, LIVE_HISTOGRAM_CELL)
    monitor = page.locator(".panda-task-monitor")
    try:
        monitor.locator(".panda-counts:has-text('2,000 / 2,000 events (100%)')").wait_for(
            timeout=60_000)
    except Exception:
        page.screenshot(path=str(artifacts / "histogram-not-filled.png"))
        raise AssertionError(page.locator(".jp-OutputArea").first.inner_text()) from None
    page.wait_for_function("() => window.__svgs.length >= 2", timeout=10_000)
    # the counts come with the last report; the final histogram is drawn from the merge
    # after it: wait for that drawing (still marked after 15 s fails below)
    with contextlib.suppress(Exception):
        wait_for(lambda: "partial:" not in page.evaluate(CURRENT_SVG), 15, interval=0.2)
    final = page.evaluate(CURRENT_SVG)
    shown = [t for _, t in sorted(page.evaluate("window.__svgs"))]
    marks = [m for svg in shown for m in re.findall(r"partial: ([\d,]+) of 2,000 events", svg)]
    assert marks and all(0 < int(m.replace(",", "")) < 2000 for m in marks), marks
    # final: every event in, no mark at all; error bars on the filled bins; the x title
    # with its unit, the y title with the bin width and that unit
    texts = svg_texts(final)
    assert not [t for t in texts if "partial" in t or "final:" in t], texts
    assert "p_T [GeV]" in texts and "Events / 2 GeV" in texts and "muon_pt" in texts
    assert error_bars(final) >= 10, error_bars(final)
    assert 'style="fill: none; opacity: 0"' in final  # transparent: the theme shows through
    assert "<tspan" not in final  # linear y: plain tick labels
    monitor.locator("img").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "histogram-light.png"))

    # the log toggle: the y axis in powers of ten (10 with a raised exponent)
    monitor.locator(".widget-toggle-button:has-text('log y')").click()
    wait_for(lambda: "<tspan" in page.evaluate(CURRENT_SVG), 10, interval=0.2,
             what="the histogram redrawn on a log scale")
    assert kernel_print(page, "monitor.log_scale.value") == "True"
    # the other histogram, chosen in the page: its own titles, still on a log scale
    monitor.locator(".widget-dropdown select").select_option("n_muons")
    wait_for(lambda: "muons per event" in page.evaluate(CURRENT_SVG), 10, interval=0.2,
             what="the other histogram drawn")
    other = page.evaluate(CURRENT_SVG)
    texts = svg_texts(other)
    assert "Events / 1" in texts and "n_muons" in texts and "<tspan" in other, texts
    assert error_bars(other) >= 3
    monitor.screenshot(path=str(artifacts / "histogram-monitor-light.png"))


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


def test_the_live_histogram_reads_in_the_dark_theme(lab_page, artifacts):
    """The same monitor once the theme is dark: the picture's grey ink against the
    notebook's dark background stays readable (WCAG contrast above 3)."""
    page = lab_page["page"]
    # dark since the test before; a theme change is applied asynchronously, so asked again
    page.evaluate("window.jupyterapp.commands.execute('apputils:change-theme', "
                  "{theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.evaluate(f"window.jupyterapp.shell.activateById('{lab_page['notebook']}')")
    monitor = page.locator(".panda-task-monitor")
    monitor.locator("img").wait_for()
    bg = page.evaluate("getComputedStyle(document.body).getPropertyValue("
                       "'--jp-layout-color0').trim()")
    rgb = page.evaluate("""c => { const d = document.createElement('div');
        d.style.color = c; document.body.appendChild(d);
        const v = getComputedStyle(d).color; d.remove(); return v; }""", bg)
    ink = luminance("rgb(140, 140, 140)")  # histplot.INK, #8c8c8c
    assert luminance(rgb) < 0.1, rgb
    assert (ink + 0.05) / (luminance(rgb) + 0.05) > 3
    assert "#8c8c8c" in page.evaluate(CURRENT_SVG)
    monitor.locator("img").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "histogram-dark.png"))
    monitor.screenshot(path=str(artifacts / "histogram-monitor-dark.png"))
