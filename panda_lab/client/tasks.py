"""Task handles: re-attach to a task by id or name, from any kernel, at any time.

Everything a handle knows comes from the server, so a kernel restart loses nothing:
``lab.task(12).results()`` works the same an hour later from a new notebook.
"""

from __future__ import annotations

import base64
import html
import pickle
import time
from typing import TYPE_CHECKING, Any

import pandas as pd

from panda_lab.client.futures import exception_from_job
from panda_lab.model import TASK_FINAL
from panda_lab.model.outcome import TONE_COLOURS, final_line, summary_of

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.session import Lab


JOB_COLUMNS = ["id", "job_index", "attempt", "state", "site", "pilot_id", "created_at",
               "started_at", "ended_at", "error_category", "error_message",
               # what the payload used: peak resident memory (MB) and CPU seconds
               "peak_rss_mb", "cpu_s"]


class TaskHandle:
    def __init__(self, lab: Lab, task_id: int) -> None:
        self.lab = lab
        self.id = task_id

    def info(self) -> dict:
        """The server's view of the task (state, counts by job state...); raises
        :class:`panda_lab.http.ApiError` (404) when the server does not know it."""
        return self.lab.api.get(f"/api/tasks/{self.id}")

    @property
    def status(self) -> str:
        """The task's state, one of :class:`panda_lab.model.TaskState`'s values."""
        return self.info()["state"]

    @property
    def summary(self) -> dict:
        """The task's outcome as the server says it: ``label`` (one line, e.g.
        ``"finished: 10 of 40 jobs failed (1,234,000 events not processed)"``), ``tone``
        (``success``, ``warning``, ``danger``, ``active``, ``neutral``), ``jobs_lost``,
        ``events_lost`` (None without a dataset), ``wall_s`` and ``rate`` (mean events
        per second, once final).  One request to the server."""
        return summary_of(self.info())

    #: Where a notebook user looks for what a task lost.
    _look = "task.errors()"

    @property
    def name(self) -> str:
        """The task's name, as given at submission (one request to the server)."""
        return self.info()["name"]

    def jobs(self, all_attempts: bool = False) -> pd.DataFrame:
        """One row per job (its latest attempt), or per attempt with ``all_attempts``."""
        rows = self.lab.jobs(self.id, all_attempts=all_attempts)
        df = pd.DataFrame(rows, columns=JOB_COLUMNS + [c for c in (rows[0] if rows else {})
                                                      if c not in JOB_COLUMNS])
        for col in ("created_at", "started_at", "ended_at"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df[[c for c in JOB_COLUMNS if c in df]].set_index("id") if not df.empty \
            else df[JOB_COLUMNS].set_index("id")

    def brokerage(self, all_attempts: bool = False) -> pd.DataFrame:
        """Why each job went where it went: one row per (job, candidate site), each
        filter passed or failed with its reason, each weight factor, the estimated
        times, the weight and the pick (see
        :func:`panda_lab.client.brokerage.brokerage_frame`); the latest attempt of each
        job, or every attempt with ``all_attempts``.  The task's counts of candidates
        each filter removed are ``info()["brokerage"]``."""
        from panda_lab.client.brokerage import brokerage_frame

        return brokerage_frame(self.lab.jobs(self.id, all_attempts=all_attempts))

    def job(self, index: int) -> Any:
        """Job ``index`` (its latest attempt): ``.brokerage`` says in one sentence why it
        went where it went, ``.candidates`` is its rows of :meth:`brokerage`, ``.record``
        the server's record.  Raises ``KeyError`` for an index the task does not have."""
        from panda_lab.client.brokerage import JobBrokerage, job_of

        return JobBrokerage(job_of(self.lab.jobs(self.id), index))

    def wait(self, timeout: float | None = None) -> TaskHandle:
        """Block until the task is final (``TASK_FINAL``); return this handle.

        Raises :class:`TimeoutError` when it is not final after ``timeout`` seconds."""
        self.lab.wait(self.id, timeout=timeout)
        return self

    def results(self) -> dict[int, Any]:
        """The results of the jobs that finished so far, by job index.

        For an executor's task each job is one call (or one ``map`` chunk, a list)."""
        rows = self.lab.api.get(f"/api/tasks/{self.id}/results")
        return {r["index"]: pickle.loads(base64.b64decode(r["data"])) for r in rows}

    def errors(self) -> dict[int, BaseException]:
        """The exception of each job that failed for good, by job index."""
        return {j["job_index"]: exception_from_job(j) for j in self.lab.failures(self.id)}

    def kill(self) -> dict:
        """pbook's ``kill``: abort the task and cancel its jobs not yet final; return the
        server's reply (``{"task": id, "cancelled": [job ids]}``).  A ``done`` or
        ``aborted`` task is refused with an :class:`panda_lab.http.ApiError` (409)."""
        return self.lab.kill(self.id)

    def retry(self) -> dict:
        """pbook's ``retry``: new attempts of the jobs whose last attempt failed or was
        cancelled (``JOB_RETRYABLE``; not those the client cancelled before they ran) of a
        task in ``TASK_RETRYABLE``; return ``{"task": id, "jobs": [new job ids]}``.
        Any other task is refused with an :class:`panda_lab.http.ApiError` (409)."""
        return self.lab.retry(self.id)

    def __repr__(self) -> str:
        i = self.info()
        summary = summary_of(i)
        tail = f" · {final_line(summary, self._look)}" if i["state"] in TASK_FINAL else ""
        return f"<{type(self).__name__} {i['id']} {i['name']!r} {summary['label']}{tail}>"

    def monitor(self, interval: float = 0.25) -> Any:
        """A live widget of this task (progress, sites, errors, histogram, kill/retry)."""
        from panda_lab.widgets.monitor import TaskMonitor

        return TaskMonitor(self.lab, self.id, interval=interval)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict | None:
        """In a kernel, a task displays as its live monitor; elsewhere as HTML or text."""
        try:
            from panda_lab.widgets.monitor import task_mimebundle
        except ImportError:  # no ipywidgets: the notebook extra is not installed
            return None
        return task_mimebundle(self.lab, self.id, include=include, exclude=exclude)

    def _repr_html_(self) -> str:
        i = self.info()
        summary = summary_of(i)
        colour = TONE_COLOURS.get(summary["tone"], "#000")
        head = (f"<b>panda-lab task {i['id']}</b> <code>{html.escape(i['name'])}</code> "
                f"<b class='panda-state panda-tone-{summary['tone']}' style='color:{colour}'>"
                f"{html.escape(summary['label'])}</b>")
        if i["state"] in TASK_FINAL:
            return f"{head} &middot; {html.escape(final_line(summary, self._look))}"
        by_state = ", ".join(f"{k}: {v}" for k, v in sorted(i["attempts_by_state"].items()))
        age = time.time() - i["created_at"]
        return (f"{head} &middot; attempts {html.escape(by_state) or 'none'} &middot; "
                f"{age:.0f} s old")


def tasks_frame(rows: list[dict]) -> pd.DataFrame:
    """Task records as a table indexed by ``id``: ``name``, ``state``, ``outcome`` (the
    task's one label), ``n_jobs``, ``n_done``, ``jobs_lost``, ``events_lost`` (<NA>
    without a dataset), ``wall_s`` (seconds), ``site``, ``owner``, and
    ``created_at``/``ended_at`` as UTC timestamps (from seconds since the epoch; ``NaT``
    while not ended)."""
    cols = ["id", "name", "state", "outcome", "n_jobs", "n_done", "jobs_lost", "events_lost",
            "wall_s", "site", "owner", "created_at", "ended_at"]
    rows = [{**r, "outcome": (s := summary_of(r))["label"], "jobs_lost": s["jobs_lost"],
             "events_lost": s["events_lost"], "wall_s": s["wall_s"]} for r in rows]
    df = pd.DataFrame(rows, columns=cols)
    df["events_lost"] = df["events_lost"].astype("Int64")
    for col in ("created_at", "ended_at"):
        df[col] = pd.to_datetime(df[col], unit="s", utc=True)
    return df.set_index("id")
