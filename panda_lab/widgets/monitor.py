"""Live monitoring widgets: a task's progress, sites, errors and merged histogram.

A background thread takes a :mod:`snapshot <panda_lab.widgets.snapshot>` at most
``interval`` seconds apart and updates the widgets in place, so the kernel stays free
for the next cell; it stops when the task can no longer change, or the widget is closed.
In a terminal the same view is a few lines of text (the widget's ``text/plain``).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import Any

import ipywidgets as w

from panda_lab.model import JOB_ORDER, TASK_FINAL, TASK_RETRYABLE, JobState
from panda_lab.model.outcome import TONE_COLOURS, final_line, summary_of
from panda_lab.text import strip_ansi
from panda_lab.widgets.brokerage import BrokerageView
from panda_lab.widgets.histplot import find_histograms, plot_histogram, render
from panda_lab.widgets.histplot import ready as plotting_ready
from panda_lab.widgets.histplot import warm as warm_plotting
from panda_lab.widgets.snapshot import (
    LabView,
    Rate,
    TaskSnapshot,
    take,
    text,
)
from panda_lab.widgets.stream import layout, svg

log = logging.getLogger("panda_lab.monitor")

#: State colours, shared by the progress bar and the tables.
J = JobState
COLOURS: dict[str, str] = {
    J.FINISHED: "#2e7d32", J.FAILED: "#c62828", J.CANCELLED: "#757575",
    J.RUNNING: "#1565c0", J.STARTING: "#1565c0", J.SENT: "#6a1b9a",
    J.ACTIVATED: "#ef6c00", J.ASSIGNED: "#ef6c00", J.DEFINED: "#9e9e9e"}


#: The progress bar's style (ipywidgets' ``bar_style``) for each outcome tone.
TONE_BAR: dict[str, str] = {"success": "success", "warning": "warning", "danger": "danger",
                            "active": "info", "neutral": ""}


def outcome_html(summary: dict) -> str:
    """A task's outcome label in its tone's colour (``<b class='panda-state
    panda-tone-TONE'>``), HTML-escaped."""
    tone = summary.get("tone", "neutral")
    return (f"<b class='panda-state panda-tone-{tone}' style='color:"
            f"{TONE_COLOURS.get(tone, '#000')}'>{html.escape(summary.get('label', ''))}</b>")


def _state_cells(states: dict[str, int], columns: list[str]) -> str:
    return "".join(f"<td style='text-align:right;color:{COLOURS.get(s, '#000')}'>"
                   f"{states.get(s, 0) or ''}</td>" for s in columns)


def sites_table(snap: TaskSnapshot) -> str:
    """Jobs per site by state, as an HTML table (only the states that occur, in
    :data:`~panda_lab.model.JOB_ORDER`, and a last row ``all``); ``"<i>no jobs yet</i>"``
    before the task has jobs.  Site names are HTML-escaped."""
    columns = [s for s in JOB_ORDER if snap.by_state.get(s)]
    if not columns:
        return "<i>no jobs yet</i>"
    head = "".join(f"<th>{s}</th>" for s in columns)
    rows = "".join(f"<tr><td><b>{html.escape(site)}</b></td>{_state_cells(states, columns)}</tr>"
                   for site, states in sorted(snap.by_site.items()))
    total = f"<tr><td><i>all</i></td>{_state_cells(snap.by_state, columns)}</tr>"
    return (f"<table class='panda-sites'><tr><th>site</th>{head}</tr>{rows}{total}</table>")


def errors_html(snap: TaskSnapshot, limit: int = 5) -> str:
    """Failed attempts grouped by category and message, each with an example traceback.

    What jobs said is escaped, and its ANSI codes (colours of a traceback) dropped.
    Returns an HTML ``<div>`` with the ``limit`` largest groups as ``<details>`` (and how
    many more kinds there are), or ``""`` without errors."""
    if not snap.errors:
        return ""
    items = []
    for g in snap.errors[:limit]:
        tb = html.escape(strip_ansi(g.traceback or "(no traceback)"))
        message = html.escape(strip_ansi(g.message))
        items.append(f"<details><summary><b>{g.count}</b> &times; [{html.escape(g.category)}]"
                     f" {message}</summary><pre style='font-size:11px'>"
                     f"job {g.example_job}:\n{tb}</pre></details>")
    more = len(snap.errors) - limit
    tail = f"<i>and {more} more kinds of error</i>" if more > 0 else ""
    return "<div class='panda-errors'><b>errors</b>" + "".join(items) + tail + "</div>"


class _Watched:
    """Mixin for monitors: poll the server only while a view of the widget is shown.

    The front end counts a widget's views when ``_view_count`` starts as a number: a cell's
    output cleared, re-run or its notebook closed removes the view and the count drops to 0.
    Then nobody is looking, and the background thread stops asking the server until a view
    appears again (``display(monitor)``). Before the first view, and where a front end does
    not count views, someone is assumed to be looking.
    """

    _view_count: int | None
    _was_shown: bool = False

    def _track_views(self) -> None:
        self._was_shown = False
        self.observe(self._on_views, names="_view_count")
        self._view_count = 0

    def _on_views(self, change: dict) -> None:
        if change["new"]:
            self._was_shown = True

    @property
    def shown(self) -> bool:
        """False once every view of this widget has gone away."""
        return not self._was_shown or self._view_count is None or self._view_count > 0


class TaskMonitor(_Watched, w.VBox):
    """A live view of one task: ``display(TaskMonitor(lab, task_id))``, or just display
    the task handle.

    ``interval`` is the seconds between two looks; ``start=False`` takes one snapshot and
    leaves following to :meth:`start`.  Constructing never raises for the server: when
    the first look fails, the widget says the server is unreachable and keeps trying.
    Kill and Retry refusals (``ApiError``) are shown beside the buttons."""

    #: Seconds between two drawings of the merged histogram while the task runs: drawing
    #: one costs about 0.1 s of CPU, taken from the pilots on a small machine, and the
    #: counts above it show the progress at every look anyway.  The last one is drawn
    #: as soon as it is merged.
    redraw_every = 1.0

    def __init__(self, lab: LabView, task_id: int, interval: float = 0.25,
                 start: bool = True) -> None:
        self.lab, self.task_id, self.interval = lab, task_id, interval
        self._drawn_at = float("-inf")
        self.rate = Rate()
        self.snapshot: TaskSnapshot | None = None
        self.updates = 0
        self._drawn_merged = -1
        self._histograms: dict[str, Any] = {}
        self._choosing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.title = w.HTML()
        self.bar = w.IntProgress(min=0, max=1, value=0, bar_style="info",
                                 layout=w.Layout(width="60%"))
        self.counts = w.HTML()
        self.pace = w.HTML()
        self.sites = w.HTML()
        self.stream = w.HTML()
        self._stream_at = float("-inf")
        self._stream_final = False
        self.errors = w.HTML()
        # why a job went where it went: asked of the server only when opened
        self.brokerage = BrokerageView(lab, task_id)
        self.brokerage_section = w.Accordion([self.brokerage], titles=("brokerage",),
                                             selected_index=None)
        self.brokerage_section.observe(self.brokerage.opened, names="selected_index")
        # SVG: sharp at any width and zoom, its text real text
        self.image = w.Image(format="svg+xml", layout=w.Layout(width="500px"))
        self.choice = w.Dropdown(description="histogram", options=[],
                                 layout=w.Layout(width="auto"))
        self.log_scale = w.ToggleButton(description="log y", value=False,
                                        tooltip="logarithmic y axis")
        self.plot = w.VBox([w.HBox([self.choice, self.log_scale]), self.image],
                           layout=w.Layout(display="none"))
        self.choice.observe(lambda _: self._redraw(), names="value")
        self.log_scale.observe(lambda _: self._redraw(), names="value")
        self.kill_button = w.Button(description="Kill", button_style="danger",
                                    tooltip="abort the task: waiting jobs are cancelled, "
                                            "running ones killed")
        self.retry_button = w.Button(description="Retry", tooltip="retry the failed jobs")
        self.message = w.HTML()
        self.kill_button.on_click(lambda _: self._act(self.kill))
        self.retry_button.on_click(lambda _: self._act(self.retry))
        super().__init__([self.title, w.HBox([self.bar, self.counts]), self.pace, self.sites,
                          w.Accordion([self.stream], titles=("task stream",), selected_index=0),
                          self.plot, self.errors, self.brokerage_section,
                          w.HBox([self.kill_button, self.retry_button, self.message])])
        self.add_class("panda-task-monitor")
        self._track_views()
        try:
            self.refresh()
        except Exception as exc:  # displaying a task must not raise: say why it is empty
            self.title.value = f"<b>panda-lab task {task_id}</b>"
            self.pace.value = f"<i>server unreachable ({html.escape(str(exc))})</i>"
        if start:
            self.start()

    # ---- updating ---------------------------------------------------------------------
    def refresh(self) -> TaskSnapshot:
        """Take a snapshot now and show it; returns it.  Raises what
        :func:`~panda_lab.widgets.snapshot.take` raises (``ApiError``,
        ``ServerUnreachable``); the background thread catches those and retries, giving
        up after about 120 failed looks in a row."""
        snap = take(self.lab, self.task_id, previous=self.snapshot)
        self.rate.add(snap.taken_at, snap.progress[0])
        self._show(snap)
        self._show_stream(snap)
        self.snapshot = snap
        self.updates += 1
        return snap

    def _show(self, snap: TaskSnapshot) -> None:
        done, total = snap.progress
        self.title.value = (f"<b>panda-lab task {snap.id}</b> <code>{html.escape(snap.name)}"
                            f"</code> &middot; {outcome_html(snap.summary)}"
                            + (f" &middot; <i class='panda-why'>{html.escape(snap.message)}</i>"
                               if snap.message else ""))
        self.bar.max = max(total, 1)
        self.bar.value = done
        self.bar.bar_style = TONE_BAR.get(snap.summary.get("tone", ""), "info")
        unit = "events" if snap.analysis and snap.total_events else "jobs"
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        self.counts.value = f"<span class='panda-counts'>{done:,} / {total:,} {unit}{pct}</span>"
        pace = self.rate.per_second
        if snap.ended:  # a summary, never a rate or an ETA
            self.pace.value = (f"<span class='panda-summary'>"
                               f"{html.escape(final_line(snap.summary, snap.look))}</span>")
        elif pace:
            eta = self.rate.eta(total - done)
            self.pace.value = (f"{pace:,.0f} {unit}/s" + (f" &middot; ETA {eta:.0f} s"
                                                          if eta and done < total else ""))
        self.sites.value = sites_table(snap)
        self.brokerage.set_jobs(snap.n_jobs)
        self.errors.value = errors_html(snap)
        if snap.analysis:
            warm_plotting()  # its imports, on a thread of their own, before the first merge
            self._show_histogram(snap)
        self.kill_button.disabled = snap.ended
        self.kill_button.layout.display = "none" if snap.ended else ""  # nothing to kill
        # pbook's rule, the store's: an aborted task stays aborted; the others retry
        self.retry_button.disabled = snap.state not in TASK_RETRYABLE \
            or not snap.by_state.get("failed")

    def _show_stream(self, snap: TaskSnapshot) -> None:
        """The task stream from every attempt's record and each pilot's memory and CPU:
        at most once per :attr:`redraw_every` while the task runs (one request for all
        attempts, one for their pilots), and once
        more when it is final.  A failed request keeps the last drawing."""
        if self._stream_final:
            return
        if not snap.ended and time.monotonic() - self._stream_at < self.redraw_every:
            return
        try:
            attempts = self.lab.api.get(f"/api/tasks/{self.task_id}/jobs", all_attempts="true")
            ids = sorted({a["pilot_id"] for a in attempts if a.get("pilot_id") is not None})
            # each row's pilot: its memory and CPU now (one request for them all)
            pilots = {p["id"]: p for p in self.lab.api.get(
                "/api/pilots", ids=",".join(map(str, ids)))} if ids else {}
        except Exception as exc:  # the counts above still tell the progress
            log.debug("task stream not updated: %s", exc)
            return
        self.stream.value = svg(layout(attempts, time.time(), pilots), COLOURS)
        self._stream_at = time.monotonic()
        self._stream_final = snap.ended

    def _show_histogram(self, snap: TaskSnapshot) -> None:
        if snap.jobs_merged == self._drawn_merged or snap.result is None:
            return
        if not snap.final and time.monotonic() - self._drawn_at < self.redraw_every:
            return
        # drawing's imports take seconds the first time: the counts go on meanwhile, and
        # the histogram comes at the first look after them (the final one waits for them)
        if not plotting_ready(wait=None if snap.final else 0.0):
            return
        self._histograms = find_histograms(snap.result)
        paths = list(self._histograms)
        if not paths:
            return
        if list(self.choice.options) != paths:  # the first merge, or a result that grew keys
            keep = self.choice.value if self.choice.value in paths else paths[0]
            self._choosing = True  # not a click: drawn once, below
            try:
                self.choice.options = paths
                self.choice.value = keep
            finally:
                self._choosing = False
        self.choice.layout.display = "" if len(paths) > 1 else "none"
        self._draw(snap)
        self._drawn_merged = snap.jobs_merged

    def _redraw(self) -> None:
        """The histogram chosen, on the scale chosen, of the last snapshot (a click)."""
        if self.snapshot is not None and self._histograms and not self._choosing:
            self._draw(self.snapshot)

    def _draw(self, snap: TaskSnapshot) -> None:
        path = self.choice.value
        h = self._histograms.get(path) if path is not None else None
        if h is None:
            return
        self.image.value = render(plot_histogram(h, path, log=self.log_scale.value,
                                                 events=(snap.events, snap.total_events),
                                                 final=snap.final))
        self.plot.layout.display = ""
        self._drawn_at = time.monotonic()  # from the end of a drawing: a slow one waits more

    def start(self) -> None:
        """Follow the task in the background (a daemon thread, one look every
        ``interval`` seconds while a view is shown) until it cannot change any more or
        the widget is closed; a no-op while it already follows.  Returns at once."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name=f"panda-monitor-{self.task_id}")
        self._thread.start()

    def _follow(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            if not self.shown:
                continue
            try:
                snap = self.refresh()
                failures = 0
            except Exception as exc:  # the server may be restarting: say so, keep trying
                failures += 1
                self.pace.value = f"<i>server unreachable ({html.escape(str(exc))})</i>"
                if failures > 120:
                    return
                continue
            if snap.final:
                return

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background updates ended (the task is final); for scripts.

        ``timeout`` in seconds (``None``: for ever).  Returns ``True`` when they ended
        (also when they never started), ``False`` when the timeout passed first."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop following (the thread ends at its next look) and close the widget."""
        self._stop.set()
        super().close()

    # ---- buttons -----------------------------------------------------------------------
    def _act(self, action) -> None:
        """Run a button's action; a refusal is shown beside the buttons, not lost in a log."""
        self.message.value = ""
        try:
            action()
        except Exception as exc:
            self.message.value = f"<span style='color:#c62828'>{html.escape(str(exc))}</span>"

    def kill(self) -> None:
        """Kill the task (``lab.kill``) and show the result; raises what it raises
        (``ApiError`` 409 for a task already final)."""
        self.lab.kill(self.task_id)
        self.refresh()

    def retry(self) -> None:
        """Retry the task's failed jobs (``lab.retry``, pbook's ``retry``), show the
        result and follow the task again; raises what ``lab.retry`` raises."""
        self.lab.retry(self.task_id)
        self._stream_final = False  # new attempts: the stream moves again
        self.refresh()
        self.start()

    def __repr__(self) -> str:
        return text(self.snapshot, self.rate) if self.snapshot else f"<TaskMonitor {self.task_id}>"


class LabMonitor(_Watched, w.VBox):
    """All recent tasks, one line each, updated in place: ``lab.monitor()``.

    ``limit`` tasks at most (newest first, as ``lab.list_tasks``), one look every
    ``interval`` seconds while a view is shown; a failed look keeps the last view."""

    def __init__(self, lab: LabView, limit: int = 10, interval: float = 0.5,
                 start: bool = True) -> None:
        self.lab, self.limit, self.interval = lab, limit, interval
        self.rows: dict[int, tuple[w.HTML, w.IntProgress, w.HTML]] = {}
        self.lines: dict[int, w.HBox] = {}
        self.updates = 0
        self.header = w.HTML()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__([self.header])
        self.add_class("panda-lab-monitor")
        self._track_views()
        try:
            self.refresh()
        except Exception as exc:  # the thread below keeps trying
            self.header.value = f"<i>panda-lab unreachable ({html.escape(str(exc))})</i>"
        if start:
            self._thread = threading.Thread(target=self._follow, daemon=True,
                                            name="panda-lab-monitor")
            self._thread.start()

    def refresh(self) -> list[dict]:
        """Look once: the sites in the header, one line per listed task; rows of tasks
        no longer listed are closed.  Returns the task records listed.  Raises what
        ``lab.list_tasks`` and ``lab.sites`` raise (``ApiError``,
        ``ServerUnreachable``)."""
        tasks = self.lab.list_tasks(limit=self.limit)
        sites = self.lab.sites()
        self.header.value = ("<b>panda-lab</b> &middot; " + " &middot; ".join(
            f"{html.escape(s['name'])} ({s['kind']}): {s['pilots']} pilot(s), "
            f"{s['running']} running, {s['queued']} queued" for s in sites))
        for t in tasks:
            row = self.rows.get(t["id"])
            if row is None:
                row = (w.HTML(layout=w.Layout(width="30%")),
                       w.IntProgress(min=0, max=1, layout=w.Layout(width="40%")), w.HTML())
                self.rows[t["id"]] = row
                self.lines[t["id"]] = w.HBox(list(row))
            label, bar, counts = row
            summary = summary_of(t)
            label.value = (f"{t['id']} <code>{html.escape(t['name'])}</code> "
                           f"{outcome_html(summary)}") + (
                f" <i class='panda-why'>{html.escape(t['message'])}</i>"
                if t.get("message") else "")
            bar.max, bar.value = max(t["n_jobs"], 1), t["n_done"]
            bar.bar_style = TONE_BAR.get(summary["tone"], "info")
            counts.value = f"{t['n_done']}/{t['n_jobs']} jobs" + (
                f" &middot; {html.escape(final_line(summary))}"
                if t["state"] in TASK_FINAL else "")
        listed = [t["id"] for t in tasks]
        children = (self.header, *(self.lines[i] for i in listed))
        if self.children != children:  # the same widgets, updated in place: no new models
            self.children = children
        for gone in set(self.rows) - set(listed):  # closed, so the front end drops them too
            for part in (self.lines.pop(gone), *self.rows.pop(gone)):
                part.close()
        self.updates += 1
        return tasks

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.shown:
                continue
            try:
                self.refresh()
            except Exception as exc:  # keep the last view; say why it is stale
                log.debug("monitor refresh failed: %s", exc)
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.header.value = (f"<b>panda-lab</b> &middot; <i class='panda-stale'>not "
                                     f"updated: {html.escape(first)}</i>")

    def close(self) -> None:
        """Stop following and close the widget."""
        self._stop.set()
        super().close()

    def __repr__(self) -> str:
        lines = [f"{i}: {strip_tags(lbl.value)} · {strip_tags(counts.value)}"
                 for i, (lbl, _, counts) in self.rows.items()]
        return "panda-lab monitor\n" + "\n".join(lines)


def strip_tags(markup: str) -> str:
    """The text of a bit of this module's HTML: tags dropped, entities unescaped."""
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where widgets can render; False in a terminal
    IPython, a plain interpreter, or without IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def task_mimebundle(lab: LabView, task_id: int, **display_kwargs: Any) -> dict | None:
    """A live widget's bundle for a task shown in a kernel, else ``None`` (the caller
    falls back to HTML and text).  The bundle is ipywidgets' (``application/vnd.jupyter.
    widget-view+json`` and ``text/plain``); the widget follows the task from then on."""
    if not in_kernel():
        return None
    return TaskMonitor(lab, task_id)._repr_mimebundle_(**display_kwargs)
