"""The live monitor widgets, against a real server and pilots (no browser: the widget
models are checked; tests/browser shows them drawn)."""

from __future__ import annotations

import html
import itertools
import time

import pytest
from harness import wait_for

from panda_lab.model.explain import explain
from panda_lab.widgets.brokerage import BrokerageView, job_html
from panda_lab.widgets.monitor import LabMonitor, TaskMonitor
from panda_lab.widgets.snapshot import Rate, group_errors, take, text


def maybe_fail(i, t=0.0):
    time.sleep(t)
    if i % 4 == 3:
        raise ValueError(f"bad input {i % 2}")
    return i


def nap(t):
    time.sleep(t)
    return t


def test_the_monitor_shows_counts_sites_and_grouped_errors(nlab):
    task = nlab.submit(maybe_fail, [(i,) for i in range(12)], name="m-errors", retries=0)
    nlab.wait(task, timeout=60)
    m = TaskMonitor(nlab, task, start=False)
    # PanDA's "finished": ended with some jobs failed for good
    assert m.snapshot.state == "finished" and m.bar.bar_style == "warning"
    assert (m.bar.value, m.bar.max) == (9, 12)
    assert "9 / 12 jobs (75%)" in m.counts.value
    for site in ("LOCAL-GRID", "LOCAL-CLOUD", "LOCAL-HPC"):
        assert site in m.sites.value
    assert "<th>finished</th>" in m.sites.value and "<th>failed</th>" in m.sites.value
    # three failures, one message ("bad input 1"): one group of three, with a traceback
    assert "<b>3</b> &times; [user] ValueError: bad input 1" in m.errors.value
    raise_line = maybe_fail.__code__.co_firstlineno + 3     # its ``raise``
    assert f"line {raise_line}, in maybe_fail" in m.errors.value  # the example traceback
    assert m.kill_button.disabled and not m.retry_button.disabled
    assert m.kill_button.layout.display == "none", "a final task has nothing to kill"
    assert repr(m).startswith(f"task {task} 'm-errors': finished: 3 of 12 jobs failed · "
                              "9/12 jobs (75%)\n  wall time ")
    assert "3 jobs lost: see task.errors()" in repr(m) and "ETA" not in repr(m)
    assert "3 x [user] ValueError: bad input 1" in repr(m)
    # the task stream: every attempt a bar on its pilot's row, the three failures marked
    assert m.stream.value.count("class='panda-stream-bar'") == 12
    assert m.stream.value.count("class='panda-stream-failed'") == 3
    assert m.stream.value.count("data-state='finished'") == 9 and " · pilot " in m.stream.value
    # a job's brokerage, asked of the server once the section is opened: the model's
    # sentence (the panel's and task.job(i).brokerage's) and the candidates
    assert m.brokerage.decision.value == "" and m.brokerage.index.max == 11
    m.brokerage_section.selected_index = 0
    first = next(j for j in nlab.jobs(task) if j["job_index"] == 0)
    assert html.escape(explain(first["broker_info"])) in m.brokerage.decision.value
    assert "<b>job 0</b>" in m.brokerage.decision.value
    m.brokerage.index.value = 11
    last = next(j for j in nlab.jobs(task) if j["job_index"] == 11)
    assert f"<b>job 11</b> (attempt 1) at <b>{last['site']}</b>" in m.brokerage.decision.value
    assert m.brokerage.decision.value.count("<tr") == 1 + len(
        last["broker_info"]["candidates"])
    # each pilot's row: its memory and CPU, reported by the pilot and measured on its jobs
    assert "class='panda-stream-usage'" in m.stream.value
    assert ": now " in m.stream.value and "jobs here: peak " in m.stream.value
    assert "pilot usage unknown" not in m.stream.value


def test_the_monitor_updates_in_place_until_the_task_ends(nlab):
    task = nlab.submit(nap, [(0.3,)] * 12, name="m-live")
    values: list[int] = []
    m = TaskMonitor(nlab, task, interval=0.1, start=False)
    m.bar.observe(lambda change: values.append(change["new"]), names="value")
    m.start()
    assert m.wait(60), "the monitor's thread did not end with the task"
    assert values[-1] == 12 and values == sorted(values)
    assert len(set(values)) >= 3, f"too few updates seen: {values}"
    assert m.snapshot.state == "done" and m.bar.bar_style == "success"


def fail_once(marker):
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError("first attempt fails")
    return "ok"


def test_the_kill_button_aborts_the_task_on_the_server(nlab):
    task = nlab.submit(nap, [(5.0,)] * 6, name="m-kill", retries=0)
    m = TaskMonitor(nlab, task, start=False)
    wait_for(lambda: m.refresh().by_state.get("running"), 30, what="jobs running")
    m.kill_button.click()
    wait_for(lambda: nlab.task_info(task)["state"] == "aborted", 10, what="the task aborted")
    assert m.refresh().by_state.get("cancelled") == 6
    assert m.kill_button.disabled and m.retry_button.disabled  # aborted stays aborted
    assert m.message.value == ""


def test_the_retry_button_reruns_the_failed_jobs(nlab, tmp_path):
    task = nlab.submit(fail_once, [(str(tmp_path / f"m{i}"),) for i in range(3)],
                       name="m-retry", retries=0)
    nlab.wait(task, timeout=30)
    m = TaskMonitor(nlab, task, start=False)
    assert m.snapshot.state == "failed" and not m.retry_button.disabled
    m.retry_button.click()
    assert m.wait(60) and m.message.value == ""
    assert nlab.task_info(task)["state"] == "done" and m.bar.value == 3
    assert m.bar.bar_style == "success" and m.retry_button.disabled


def test_a_refused_action_is_shown_in_the_widget(nlab):
    task = nlab.submit(nap, [(0.0,)], name="m-refused")
    nlab.wait(task, timeout=30)
    m = TaskMonitor(nlab, task, start=False)
    m._act(m.retry)                          # nothing failed: the server refuses
    assert "HTTP 409" in m.message.value


def slow_dimuon(events):
    from panda_lab.analysis.dimuon import process

    time.sleep(0.15)                       # slow enough to be watched while it fills
    return process(events)


def test_an_analysis_monitor_redraws_its_histogram_as_chunks_merge(nlab, tmp_path):
    from panda_lab.analysis.sample import make_sample

    files = make_sample(tmp_path, files=2, events=60_000, basket_events=5_000)
    nlab.datasets.register("m-dimuon", [str(f) for f in files], tree="Events")
    from panda_lab.widgets import histplot

    histplot.ready(wait=None)  # drawing's imports done (test_counts_go_on_... is without)
    task = nlab.analyze(slow_dimuon, "m-dimuon", events_per_job=5_000, name="m-analysis")
    images: list[bytes] = []
    drawn_at: list[float] = []
    m = TaskMonitor(nlab, task.id, interval=0.1, start=False)
    m.image.observe(lambda change: (images.append(bytes(change["new"])),
                                    drawn_at.append(time.monotonic())), names="value")
    m.start()
    assert m.wait(120)
    # drawn at most once a second while it ran (each look is 0.1 s apart), the last at once
    gaps = [b - a for a, b in itertools.pairwise(drawn_at[:-1])]
    assert all(gap >= m.redraw_every for gap in gaps), gaps
    snap = m.snapshot
    assert snap.analysis and snap.events == snap.total_events == 120_000
    assert "120,000 / 120,000 events (100%)" in m.counts.value
    assert images and images[-1].lstrip().startswith(b"<?xml") and b"<svg" in images[-1]
    assert len(set(images)) >= 2, "the histogram was drawn once, not while it filled"
    assert m.plot.layout.display == ""
    # marked partial while it filled, not once final; units and bin width on the axes
    assert b"partial: " in images[0] and b"of 120,000 events" in images[0]
    assert b"partial" not in images[-1] and b"Events / 0.5 GeV" in images[-1]
    assert b"no error bars" not in images[-1]  # merged counts keep their variances
    assert list(m.choice.options) == ["mass"] and m.choice.layout.display == "none"
    m.log_scale.value = True                  # a click redraws at once, on a log axis
    assert images[-1] != images[-2] and m.image.value == images[-1]


def test_counts_go_on_while_drawing_is_still_importing(nlab, tmp_path, monkeypatch):
    """Drawing's first import (matplotlib, mplhep and their fonts) took 10 s on a loaded
    machine, on the monitor's thread: under "Run All" the counts stood still for all of
    a short task.  It runs on a thread of its own now; the histogram comes after it."""
    import threading

    from panda_lab.analysis.sample import make_sample
    from panda_lab.widgets import histplot

    release = threading.Event()
    monkeypatch.setattr(histplot, "_READY", threading.Event())
    monkeypatch.setattr(histplot, "_WARMING", threading.Lock())
    monkeypatch.setattr(histplot, "_import_plotting", lambda: release.wait(60))
    files = make_sample(tmp_path, files=1, events=40_000, basket_events=5_000)
    nlab.datasets.register("m-import", [str(f) for f in files], tree="Events")
    task = nlab.analyze(slow_dimuon, "m-import", events_per_job=5_000, name="m-import")
    m = TaskMonitor(nlab, task.id, start=False)
    counts = set()
    try:
        def look() -> None:
            looker = threading.Thread(target=m.refresh)
            looker.start()
            looker.join(10)
            assert not looker.is_alive(), "a look waited for drawing's imports"
            counts.add(m.counts.value)

        wait_for(lambda: look() or len(counts) >= 3, 60, what="the counts moving")
        assert m.image.value == b"" and m.plot.layout.display == "none"
    finally:
        release.set()
    nlab.wait(task.id, timeout=60)
    m.refresh()                                  # the final look draws it
    assert m.snapshot.final and b"<svg" in bytes(m.image.value)


def bins_by_run(events):
    """10 bins for the first file, 20 for the second: results that cannot be merged."""
    import hist
    import numpy as np

    bins = 10 if int(events.run[0]) == 1000 else 20
    return {"mass": hist.Hist(hist.axis.Regular(bins, 0, 150)).fill(np.asarray(events.nMuon))}


def test_the_monitor_shows_a_merge_error_first(nlab, tmp_path):
    from panda_lab.analysis.sample import make_sample

    files = make_sample(tmp_path, files=2, events=1_000, basket_events=500)
    nlab.datasets.register("m-merge", [str(f) for f in files], tree="Events", replace=True)
    task = nlab.analyze(bins_by_run, "m-merge", events_per_job=1_000, name="m-merge")
    nlab.wait(task.id, timeout=60)
    m = TaskMonitor(nlab, task.id, start=False)
    assert m.snapshot.state == "failed" and m.bar.bar_style == "danger" and m.snapshot.final
    message = nlab.task_info(task.id)["options"]["merge_error"]["message"]
    assert "histograms differ" in message and "result['mass']" in message
    first = m.errors.value.split("<details>")[1]
    assert f"<b>1</b> &times; [merge] {html.escape(message)}" in first
    assert f"1 x [merge] {message}" in repr(m)


def test_the_lab_monitor_lists_recent_tasks_and_sites(nlab):
    task = nlab.submit(nap, [(0.0,)] * 3, name="m-lab")
    nlab.wait(task, timeout=30)
    m = LabMonitor(nlab, start=False)
    assert "LOCAL-GRID (grid)" in m.header.value
    label, bar, counts = m.rows[task]
    assert "m-lab" in label.value and (bar.value, bar.max) == (3, 3)
    assert "panda-tone-success" in label.value and bar.bar_style == "success"
    assert counts.value.startswith("3/3 jobs &middot; wall time ")
    assert f"{task}: {task} m-lab done: all 3 jobs finished" in repr(m)
    assert "nothing lost" in repr(m)


def test_the_lab_monitor_updates_its_rows_in_place(nlab):
    first = nlab.submit(nap, [(0.0,)], name="m-rows-1")
    nlab.wait(first, timeout=30)
    m = LabMonitor(nlab, limit=2, start=False)
    line, parts = m.lines[first], m.rows[first]
    m.refresh()
    assert m.lines[first] is line and m.rows[first] is parts  # no new widget per refresh
    # two newer tasks push the first out of the list: its widgets are closed
    for name in ("m-rows-2", "m-rows-3"):
        nlab.wait(nlab.submit(nap, [(0.0,)], name=name), timeout=30)
    m.refresh()
    assert first not in m.rows and first not in m.lines
    assert line.comm is None and all(p.comm is None for p in parts)
    assert len(m.children) == 3


@pytest.mark.parametrize("kind", ["task", "lab"])
def test_a_monitor_stops_polling_while_no_view_shows_it(nlab, kind):
    """The front end counts views (``_view_count``); a cleared output drops it to 0."""
    task = nlab.submit(nap, [(30.0,)], name=f"m-unseen-{kind}", retries=0)
    try:
        m = (TaskMonitor(nlab, task, interval=0.05) if kind == "task"
             else LabMonitor(nlab, interval=0.05))
        assert m._view_count == 0  # counting asked of the front end
        # not yet shown anywhere: it polls (it may be about to be displayed)
        before = m.updates
        wait_for(lambda: m.updates >= before + 3, 10, what="updates before any view")
        m._view_count = 1           # what the front end sends as the view is displayed
        before = m.updates
        wait_for(lambda: m.updates >= before + 3, 10, what="updates while shown")
        m._view_count = 0           # the output was cleared
        time.sleep(0.2)
        idle = m.updates
        time.sleep(0.5)
        assert m.updates == idle, "it kept polling the server with nothing shown"
        m._view_count = 1           # displayed again
        wait_for(lambda: m.updates >= idle + 3, 10, what="updates after a new view")
        m.close()
    finally:
        nlab.kill(task)


def test_snapshot_pieces():
    r = Rate(window=10)
    assert r.per_second is None
    r.add(0.0, 0)
    r.add(2.0, 10)
    assert r.per_second == 5.0 and r.eta(20) == 4.0 and r.eta(0) == 0.0
    groups = group_errors([
        {"id": 1, "error_category": "user", "error_message": "a", "error_traceback": "tb1"},
        {"id": 2, "error_category": "user", "error_message": "b"},
        {"id": 3, "error_category": "user", "error_message": "b"},
    ])
    assert [(g.message, g.count, g.example_job) for g in groups] == [("b", 2, 2), ("a", 1, 1)]


def test_a_task_outside_a_kernel_displays_as_html_and_text(nlab):
    task = nlab.submit(nap, [(0.0,)], name="m-repr")
    handle = nlab.task(task)
    handle.wait(30)
    assert handle._repr_mimebundle_() is None          # no kernel: IPython falls back
    assert "m-repr" in handle._repr_html_() and "done" in repr(handle)
    assert text(take(nlab, task)).startswith(
        f"task {task} 'm-repr': done: its job finished · 1/1 jobs")


@pytest.fixture(autouse=True)
def _quiet_widgets():
    yield
    import ipywidgets

    ipywidgets.Widget.close_all()


def test_a_monitor_of_an_unreachable_server_says_so_instead_of_raising():
    from panda_lab.client.session import Lab

    lab = Lab("http://127.0.0.1:9", "no-token")           # nothing listens on port 9
    m = TaskMonitor(lab, 1, start=False)
    assert "server unreachable" in m.pace.value and m.snapshot is None
    assert repr(m) == "<TaskMonitor 1>"
    lm = LabMonitor(lab, start=False)
    assert "unreachable" in lm.header.value
    lm = LabMonitor(lab, interval=0.05)  # a later look that fails says the view is stale
    wait_for(lambda: "not updated: the panda-lab server at" in lm.header.value, 10,
             what="a stale note")
    lm.close()


def test_the_brokerage_view_escapes_what_the_server_sent_and_survives_its_failure():
    record = {"job_index": 3, "attempt": 2, "site": "<b>X</b>", "broker_info": {
        "picked": "<b>X</b>", "policy": "network", "access": "cache", "candidates": [
            {"site": "<b>X</b>", "passed": True, "weight": 1.0, "picked": True,
             "est": {"read_s": 0, "total_s": 1.5}, "access": "cache"}]}}
    shown = job_html(record)
    assert "<b>X</b>" not in shown and "&lt;b&gt;X&lt;/b&gt;" in shown
    assert "reads its input from the site&#x27;s cache" in shown

    class Down:
        class api:
            @staticmethod
            def get(path, **_):
                raise ConnectionError("no server")

    view = BrokerageView(Down(), 1)
    assert "cannot read the jobs: no server" in view.show()
