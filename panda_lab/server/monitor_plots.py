"""The merged histograms of an analysis task, drawn on the server for the monitor's task
page (a colleague with a share link has no notebook to draw them in).

The drawing is the notebook's (:mod:`panda_lab.widgets.histplot`: mplhep's HEP style,
matplotlib without pyplot, so it runs on any thread): the same figure the task's widget
shows, as SVG.  A drawing costs tens of milliseconds, and a live page asks for the task
many times a second: each task's drawings are kept until its merged result changes
(jobs merged, events, final), for the :data:`TASKS_KEPT` tasks drawn last, and drawn on
a worker thread, one drawing per task at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections import OrderedDict
from typing import TYPE_CHECKING

from panda_lab.widgets.histplot import find_histograms, plot_histogram, render

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.server.monitor")

#: Histograms drawn per task (the first ones of its result, in its order).
MAX_PLOTS = 4
#: Tasks whose drawings are kept.
TASKS_KEPT = 32


def draw(data: bytes, events: tuple[int, int] | None, final: bool) -> list[dict]:
    """The 1-D histograms of a pickled merged result (the merger's own copy), drawn:
    ``[{"name": key path, "svg": SVG text}]``, at most :data:`MAX_PLOTS`; ``events`` and
    ``final`` as :func:`~panda_lab.widgets.histplot.plot_histogram` marks them."""
    value = pickle.loads(data)  # the server's own merge of its jobs' results
    out = []
    for name, h in list(find_histograms(value).items())[:MAX_PLOTS]:
        fig = plot_histogram(h, name, events=events, final=final)
        out.append({"name": name, "svg": render(fig, "svg").decode("utf-8")})
    return out


class MergedPlots:
    """Drawings per task, redrawn when the merged result changes."""

    def __init__(self) -> None:
        self._kept: OrderedDict[int, tuple[tuple, list[dict]]] = OrderedDict()
        self._drawing: dict[int, asyncio.Future] = {}

    async def of(self, server: Server, task: dict) -> list[dict]:
        """The drawn histograms of ``task`` (a ``monitor_task`` record) with the merged
        result's ``events`` and ``final`` flag: ``[{"name", "svg", "events", "final"}]``;
        ``[]`` for a task that is not an analysis or has no merged histogram yet, or
        whose drawing failed (logged).  Runs on the event loop."""
        if task["options"].get("kind") != "analysis":
            return []
        task_id = task["id"]
        data, n_merged, events, final, _error = server.analysis.merger.snapshot(task_id)
        if data is None:
            return []
        key = (n_merged, events, final)
        kept = self._kept.get(task_id)
        if kept is not None and kept[0] == key:
            self._kept.move_to_end(task_id)
            return kept[1]
        pending = self._drawing.get(task_id)
        if pending is not None:
            return await asyncio.shield(pending)
        total = sum(f["entries"] for f in server.analysis.files_of(task_id)) or None
        marks = (events, total) if total else None
        fut = asyncio.ensure_future(asyncio.to_thread(self._draw, data, marks, final, key))
        self._drawing[task_id] = fut
        try:
            plots = await asyncio.shield(fut)
        finally:
            self._drawing.pop(task_id, None)
        self._kept[task_id] = (key, plots)
        self._kept.move_to_end(task_id)
        while len(self._kept) > TASKS_KEPT:
            self._kept.popitem(last=False)
        return plots

    @staticmethod
    def _draw(data: bytes, marks: tuple[int, int] | None, final: bool, key: tuple
              ) -> list[dict]:
        try:
            plots = draw(data, marks, final)
        except Exception:  # a result the monitor cannot draw is no reason to fail the page
            log.exception("drawing a merged result failed")
            return []
        return [{**p, "events": key[1], "final": final} for p in plots]
