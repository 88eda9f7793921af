"""What a monitor shows of a task at one moment, taken from the server in a few requests.

Kept apart from the widgets: the same snapshot feeds the ipywidgets view, its text form
in a terminal, and the tests, which check the figures without drawing anything.
"""

from __future__ import annotations

import base64
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from panda_lab.model import JOB_ORDER, TASK_FINAL
from panda_lab.model.outcome import final_line, summary_of


class Api(Protocol):
    """The one call the monitors make: ``get(path, **query)`` returning decoded JSON
    (``panda_lab.http.ApiClient.get``)."""

    def get(self, path: str, **params: Any) -> Any: ...


class LabView(Protocol):
    """What the monitors need of a connection to a server; ``panda_lab.client.Lab`` has
    this shape.  Declared here so that the widgets never import the client (which
    imports them for ``lab.monitor()``)."""

    api: Api

    def kill(self, task: int | str) -> Any: ...

    def retry(self, task: int | str) -> Any: ...

    def list_tasks(self, limit: int = 50) -> list[dict]: ...

    def sites(self) -> list[dict]: ...



@dataclass
class ErrorGroup:
    """Failed attempts that share a category and message, with one example."""

    category: str
    message: str
    count: int
    example_job: int
    traceback: str


@dataclass
class TaskSnapshot:
    """A task at ``taken_at`` (seconds since the epoch): its jobs' latest attempts counted
    by state and by site, its failed attempts grouped (largest first, a merge error on
    top), and for an analysis the events merged of the total and the merged result."""

    id: int
    name: str
    state: str
    n_jobs: int
    n_done: int
    #: Latest attempt of each job, by state.
    by_state: dict[str, int]
    #: Latest attempt of each job, by site, then state.
    by_site: dict[str, dict[str, int]]
    errors: list[ErrorGroup]
    taken_at: float
    analysis: bool = False
    events: int = 0
    total_events: int = 0
    jobs_merged: int = 0
    #: The merged result so far (analysis tasks), as the processor returns it.
    result: Any = None
    partial_final: bool = False
    #: Why the task is where it is: how it ended, or why it was closed (its client gone).
    message: str = ""
    #: The server's outcome of the task (``label``, ``tone``, ``jobs_lost``,
    #: ``events_lost``, ``wall_s``, ``rate``: :mod:`panda_lab.model.outcome`).
    summary: dict = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """The task's state is final: no rate, no ETA, no Kill; its summary instead."""
        return self.state in TASK_FINAL

    @property
    def look(self) -> str:
        """Where to look for what a task lost, in a notebook."""
        return "task.report(), task.errors()" if self.analysis else "task.errors()"

    @property
    def final(self) -> bool:
        """Nothing will change any more (for an analysis: its last result merged)."""
        return self.state in TASK_FINAL and (not self.analysis or self.partial_final)

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) in the unit that matters: events for an analysis, else jobs."""
        if self.analysis and self.total_events:
            return self.events, self.total_events
        return self.n_done, self.n_jobs


def take(lab: LabView, task_id: int, errors_seen: int | None = None,
         previous: TaskSnapshot | None = None) -> TaskSnapshot:
    """One look at a task.  Failed attempts are fetched only when their count changed
    since ``previous`` (a task of 10,000 jobs costs one request per look, not 10,000).
    ``errors_seen`` is not used.

    Returns a :class:`TaskSnapshot`; for an analysis task the merged result is unpickled
    only when more jobs were merged than in ``previous``.  Raises what ``lab.api.get``
    raises: :class:`~panda_lab.http.ApiError` (404 for an unknown task),
    :class:`~panda_lab.http.ServerUnreachable`."""
    info = lab.api.get(f"/api/tasks/{task_id}")
    by_site = info.get("jobs_by_site", {})
    by_state: dict[str, int] = {}
    for states in by_site.values():
        for state, n in states.items():
            by_state[state] = by_state.get(state, 0) + n
    n_failed = info["attempts_by_state"].get("failed", 0)
    if previous is not None and n_failed == sum(g.count for g in previous.errors):
        errors = previous.errors
    elif n_failed:
        errors = group_errors(lab.api.get(f"/api/tasks/{task_id}/jobs",
                                          all_attempts=True, state="failed"))
    else:
        errors = []
    merge = merge_error_group(info)
    if merge is not None:
        errors = [merge, *(g for g in errors if g.category != "merge")]
    snap = TaskSnapshot(info["id"], info["name"], info["state"], info["n_jobs"],
                        info["n_done"], by_state, by_site, errors, time.time(),
                        message=info.get("message") or "", summary=summary_of(info))
    if info["options"].get("kind") == "analysis":
        part = lab.api.get(f"/api/tasks/{task_id}/partial")
        snap.analysis = True
        snap.events, snap.total_events = part["events"], part["total_events"]
        snap.jobs_merged, snap.partial_final = part["jobs_merged"], part.get("final", False)
        if previous is not None and previous.jobs_merged == snap.jobs_merged:
            snap.result = previous.result  # unchanged: do not unpickle it again
        elif part["data"]:
            snap.result = pickle.loads(base64.b64decode(part["data"]))
    return snap


def merge_error_group(info: dict) -> ErrorGroup | None:
    """The task's merge error (results that could not be merged) as an error group, first
    in a monitor's or the panel's list of errors; ``info`` is the task's record.

    Returns ``None`` when the task has no merge error; the group's ``example_job`` is 0
    when the error names no job."""
    err = info.get("options", {}).get("merge_error")
    if not err:
        return None
    return ErrorGroup("merge", err["message"], 1, err.get("job_id") or 0, "")


def group_errors(attempts: list[dict]) -> list[ErrorGroup]:
    """Failed attempts grouped by (category, message), the largest group first.

    ``attempts`` are the server's job records (``id``, ``error_category``,
    ``error_message``, ``error_traceback``); a missing category counts as "system".
    Each group's example is its first attempt.  Ties are ordered by category, then
    message; ``[]`` for no attempts."""
    groups: dict[tuple[str, str], ErrorGroup] = {}
    for a in attempts:
        key = (a.get("error_category") or "system", a.get("error_message") or "")
        g = groups.get(key)
        if g is None:
            groups[key] = ErrorGroup(key[0], key[1], 1, a["id"], a.get("error_traceback") or "")
        else:
            g.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.category, g.message))


@dataclass
class Rate:
    """Units per second over the last ``window`` seconds, and the time left at that pace."""

    window: float = 10.0
    points: deque = field(default_factory=deque)

    def add(self, t: float, done: int) -> None:
        """Record ``done`` units at time ``t`` (seconds); points older than ``window``
        are dropped, two always kept."""
        self.points.append((t, done))
        while len(self.points) > 2 and t - self.points[0][0] > self.window:
            self.points.popleft()

    @property
    def per_second(self) -> float | None:
        """Units per second between the oldest and newest point kept; ``None`` with fewer
        than two points or no time between them."""
        if len(self.points) < 2:
            return None
        (t0, d0), (t1, d1) = self.points[0], self.points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, left: int) -> float | None:
        """Seconds to do ``left`` more units at :attr:`per_second`: 0.0 when none are
        left, ``None`` when the pace is unknown or zero."""
        r = self.per_second
        if left <= 0:
            return 0.0
        return left / r if r else None


def text(snap: TaskSnapshot, rate: Rate | None = None) -> str:
    """The snapshot as a few lines of plain text: the terminal's view.

    The first line is the task's outcome label and its progress (events or jobs,
    percent; while it runs, rate per second and ETA in seconds when ``rate`` knows
    them); a final task's second line is its summary (wall time, mean rate, what was
    lost, where to look).  Then the task's message, jobs per state (in
    :data:`~panda_lab.model.JOB_ORDER`), per site, and the five largest error groups."""
    done, total = snap.progress
    unit = "events" if snap.analysis and snap.total_events else "jobs"
    label = snap.summary.get("label") or snap.state
    lines = [f"task {snap.id} {snap.name!r}: {label} · {done:,}/{total:,} {unit}"
             + (f" ({100 * done / total:.0f}%)" if total else "")]
    if snap.ended:
        lines.append(f"  {final_line(snap.summary, snap.look)}")
    elif rate is not None and rate.per_second:
        eta = rate.eta(total - done)
        lines[0] += f", {rate.per_second:,.0f} {unit}/s" + (f", ETA {eta:.0f} s" if eta else "")
    if snap.message:
        lines.append(f"  {snap.message}")
    states = ", ".join(f"{s} {snap.by_state[s]}" for s in JOB_ORDER if snap.by_state.get(s))
    lines.append(f"  jobs: {states or 'none'}")
    for site, states_at in sorted(snap.by_site.items()):
        lines.append(f"  {site}: " + ", ".join(f"{s} {states_at[s]}" for s in JOB_ORDER
                                                if states_at.get(s)))
    for g in snap.errors[:5]:
        lines.append(f"  {g.count} x [{g.category}] {g.message}")
    return "\n".join(lines)
