"""A job's brokerage in the task monitor: choose a job, read why it went where it went.

The sentence is the model's (:func:`panda_lab.model.explain.explain`), the one
``task.job(i).brokerage`` and the side panel show, with the candidates' weights and
estimated times beneath it.  The jobs are asked of the server only when the section is
opened or another job is chosen, never at each look of the monitor.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as w

from panda_lab.model.explain import explain
from panda_lab.widgets.snapshot import LabView


def job_html(record: Mapping[str, Any]) -> str:
    """One job's decision as HTML: ``job I (attempt A) at SITE``, the sentence
    (``<p class='panda-broker-sentence'>``), and a table of the candidates (site, passed
    or the filter that removed it, weight, estimated read and total seconds, access),
    the pick in bold.  Everything the server sent is HTML-escaped."""
    info = record.get("broker_info") or {}
    head = (f"<b>job {int(record.get('job_index', 0))}</b> (attempt "
            f"{int(record.get('attempt', 1))}) at <b>{html.escape(str(record.get('site')))}"
            f"</b>")
    sentence = f"<p class='panda-broker-sentence'>{html.escape(explain(info))}</p>"
    rows = []
    for c in info.get("candidates") or ():
        est = c.get("est") or {}
        cells = [c.get("site"), "passed" if c.get("passed") else c.get("filter"),
                 f"{c.get('weight', 0):.4g}", est.get("read_s", ""), est.get("total_s", ""),
                 c.get("access") or ""]
        tds = "".join(f"<td>{html.escape(str(x))}</td>" for x in cells)
        rows.append(f"<tr style='font-weight:{'bold' if c.get('picked') else 'normal'}'>"
                    f"{tds}</tr>")
    table = ("<table class='panda-broker-candidates'><tr><th>site</th><th>filter</th>"
             "<th>weight</th><th>read s</th><th>total s</th><th>access</th></tr>"
             + "".join(rows) + "</table>") if rows else ""
    return head + sentence + table


class BrokerageView(w.VBox):
    """The brokerage section of a task monitor: a job index and its decision.

    :meth:`show` asks the server for the task's jobs and shows the chosen one (the latest
    attempt of that index); it is called when the index changes and when the section is
    opened (:meth:`opened`).  A failed request is shown in place, never raised."""

    def __init__(self, lab: LabView, task_id: int) -> None:
        self.lab, self.task_id = lab, task_id
        self.index = w.BoundedIntText(description="job", min=0, max=0, value=0,
                                      layout=w.Layout(width="160px"))
        self.decision = w.HTML()
        self.index.observe(lambda _: self.show(), names="value")
        super().__init__([self.index, self.decision])
        self.add_class("panda-brokerage")

    def set_jobs(self, n_jobs: int) -> None:
        """The task has ``n_jobs`` jobs: indices 0 to ``n_jobs - 1`` can be chosen."""
        self.index.max = max(int(n_jobs) - 1, 0)

    def opened(self, change: dict) -> None:
        """An ``Accordion``'s ``selected_index`` observer: show when opened."""
        if change.get("new") is not None:
            self.show()

    def show(self, index: int | None = None) -> str:
        """Show job ``index`` (default: the chosen one); returns the HTML shown."""
        if index is not None and index != self.index.value:
            self.index.value = index  # its observer shows it
            return self.decision.value
        want = self.index.value
        try:
            jobs = self.lab.api.get(f"/api/tasks/{self.task_id}/jobs")
        except Exception as exc:  # the monitor stays up when the server does not answer
            self.decision.value = f"<i>cannot read the jobs: {html.escape(str(exc))}</i>"
            return self.decision.value
        mine = [j for j in jobs if j.get("job_index") == want]
        if not mine:
            self.decision.value = f"<i>no job {want} yet</i>"
        else:
            self.decision.value = job_html(max(mine, key=lambda j: j.get("attempt", 1)))
        return self.decision.value
