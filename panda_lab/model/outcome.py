"""A task's outcome in one label and one tone: the single place that says what a task's
state means to the person who submitted it.

The rule is PanDA's (JEDI's task states): a task ends ``done`` when every job finished,
``failed`` when none did, and ``finished`` when *some* did: PanDA's "finished" means
partly done, so the label keeps the word and says what was lost ("finished: 10 of 40
jobs failed (1,234,000 events not processed)").  Every surface (the server's task
records, the panel, the status bar, the notebook widgets, the CLI and the text reprs)
shows this label and colours it by this tone, instead of computing its own idea of a
task's state.

Tones are the panel's and the widgets' colour classes: ``success`` (green: nothing
lost), ``warning`` (orange: ended, part lost), ``danger`` (red: ended, nothing or
nearly nothing done), ``active`` (blue: still running) and ``neutral`` (grey: paused,
or ended with nothing to do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from panda_lab.model.states import JOB_UNSUCCESSFUL, TASK_FINAL, TONES, JobState, TaskState

__all__ = ["TONES", "TONE_COLOURS", "Outcome", "duration", "final_line", "summary_of",
           "task_outcome"]

T = TaskState
J = JobState

#: How a lost job's newest attempt ended, in words ("10 of 40 jobs failed").
_LOST_WORDS: dict[str, str] = {J.FAILED: "failed", J.CANCELLED: "cancelled",
                               J.CLOSED: "never ran"}


@dataclass(frozen=True)
class Outcome:
    """A task's outcome.  ``label``: one line of text; ``tone``: one of :data:`TONES`;
    ``jobs_lost``: logical jobs that end (or ended) without a result; ``events_lost``:
    the input events of those jobs (None for tasks without an input dataset);
    ``wall_s``: seconds from submission to the end (or to now while active), None when
    unknown; ``rate``: mean events per second over ``wall_s`` of a final task (None
    while active or without events)."""

    label: str
    tone: str
    jobs_lost: int
    events_lost: int | None
    wall_s: float | None
    rate: float | None

    @property
    def final(self) -> bool:
        """Whether the label describes an ended task (its tone is not ``active``)."""
        return self.tone != "active"

    def as_dict(self) -> dict:
        """The outcome as the server serves it under a task's ``summary``."""
        return asdict(self)


def jobs(n: int) -> str:
    """``"1 job"``, ``"3 jobs"``: a count of jobs in words."""
    return f"{n:,} job" if n == 1 else f"{n:,} jobs"


def all_jobs(n: int, what: str) -> str:
    """Every job of a task ended so: ``"all 3 jobs finished"``, ``"its job finished"``."""
    return f"its job {what}" if n == 1 else f"all {n:,} jobs {what}"


def _lost_words(n_lost: int, latest: Mapping[str, int]) -> str:
    """``failed``, ``cancelled``, ``never ran`` when every lost job ended so, else
    ``not processed``."""
    kinds = [s for s in _LOST_WORDS if latest.get(s)]
    if len(kinds) == 1 and latest[kinds[0]] == n_lost:
        return _LOST_WORDS[kinds[0]]
    return "not processed"


def task_outcome(state: TaskState | str, n_jobs: int, n_done: int,
                 latest: Mapping[str, int] | None = None, *,
                 events_done: int | None = None, events_lost: int | None = None,
                 created_at: float | None = None, ended_at: float | None = None,
                 now: float | None = None, message: str = "") -> Outcome:
    """The outcome of a task.

    ``state``: the task's state; ``n_jobs``: its logical jobs; ``n_done``: those with a
    result; ``latest``: the newest attempt of each logical job counted by job state
    (``{"failed": 3, "running": 2, ...}``); ``events_done`` / ``events_lost``: input
    events of the jobs with a result / of the lost jobs (None: the task has no input
    dataset); ``created_at``, ``ended_at``, ``now``: epoch seconds (``now`` gives the
    wall time of an active task); ``message``: the task's own message, which names why
    a task ``failed`` although all its jobs finished (results that could not be merged).

    A final task lost ``n_jobs - n_done`` jobs (failed, cancelled, or closed before they
    ran); an active one has lost the jobs whose newest attempt ended unsuccessfully
    (the server retries at once, so such a job gets no other attempt unless the user
    retries the task).  Raises ``ValueError`` for an unknown state.
    """
    state = TaskState(state)
    latest = latest or {}
    final = state in TASK_FINAL
    if final:
        lost = max(n_jobs - n_done, 0)
    else:
        lost = sum(latest.get(str(s), 0) for s in JOB_UNSUCCESSFUL)
    end = ended_at if final else now
    wall = end - created_at if end is not None and created_at is not None else None
    if wall is not None:
        wall = max(wall, 0.0)
    rate = (events_done / wall if final and events_done and wall else None)
    events_note = f" ({events_lost:,} events not processed)" if events_lost else ""
    what = _lost_words(lost, latest)

    if not final:
        tone = "neutral" if state == T.PAUSED else "active"
        label = f"{state}: {n_done:,} of {jobs(n_jobs)} done"
        if lost:
            label += f", {lost} {what}{events_note}"
    elif n_jobs == 0:
        tone, label = "neutral", f"{state}: no jobs"
    elif lost == 0 and state == T.FAILED:  # every job finished, the task did not
        tone = "danger"
        why = message.splitlines()[0][:80] if message else "after all its jobs finished"
        label = f"{state}: {why}"
    elif lost == 0:
        tone = "neutral" if state == T.ABORTED else "success"
        label = f"{state}: {all_jobs(n_jobs, 'finished')}"
    elif n_done == 0:
        tone = "danger"
        label = f"{state}: {all_jobs(n_jobs, what)}{events_note}"
    else:
        tone = "warning"
        label = f"{state}: {lost:,} of {n_jobs:,} jobs {what}{events_note}"
    return Outcome(label, tone, lost, events_lost if events_lost is not None else
                   (None if events_done is None else 0), wall, rate)


#: The colour of each tone, for HTML (the widgets, the text reprs): the panel's palette.
TONE_COLOURS: dict[str, str] = {"success": "#2e7d32", "warning": "#ef6c00",
                                "danger": "#c62828", "active": "#1565c0",
                                "neutral": "#757575"}


def duration(seconds: float) -> str:
    """Seconds in words: ``"0.4 s"``, ``"12 s"``, ``"4 min 05 s"``, ``"2 h 03 min"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def final_line(summary: dict, look: str = "task.errors()") -> str:
    """What a final task's view shows instead of a rate and an ETA: wall time, mean rate
    (events per second over the wall time), what was lost and, when something was,
    where to look (``look``: ``"task.errors()"`` in a notebook, a command in the CLI).

    ``summary``: a task record's ``summary`` (:meth:`Outcome.as_dict`).  Returns one
    line, e.g. ``"wall time 12 s · mean 327,266 events/s · 10 jobs lost (1,234,000
    events): see task.errors()"``."""
    parts = []
    if summary.get("wall_s") is not None:
        parts.append(f"wall time {duration(summary['wall_s'])}")
    if summary.get("rate"):
        parts.append(f"mean {summary['rate']:,.0f} events/s")
    lost = summary.get("jobs_lost") or 0
    if lost:
        events = summary.get("events_lost")
        parts.append(f"{lost} job{'s' if lost != 1 else ''} lost"
                     + (f" ({events:,} events)" if events else "") + f": see {look}")
    else:
        parts.append("nothing lost")
    return " · ".join(parts)


def summary_of(record: dict) -> dict:
    """A task record's ``summary``; for a record without one (a server from before
    summaries), the outcome from its state and counts alone (no events, no times)."""
    if record.get("summary"):
        return record["summary"]
    return task_outcome(record["state"], record.get("n_jobs", 0),
                        record.get("n_done", 0)).as_dict()
