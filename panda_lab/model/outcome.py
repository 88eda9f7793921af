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

__all__ = ["TONES", "Outcome", "task_outcome"]

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
                 now: float | None = None) -> Outcome:
    """The outcome of a task.

    ``state``: the task's state; ``n_jobs``: its logical jobs; ``n_done``: those with a
    result; ``latest``: the newest attempt of each logical job counted by job state
    (``{"failed": 3, "running": 2, ...}``); ``events_done`` / ``events_lost``: input
    events of the jobs with a result / of the lost jobs (None: the task has no input
    dataset); ``created_at``, ``ended_at``, ``now``: epoch seconds (``now`` gives the
    wall time of an active task).

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
        label = f"{state}: {n_done} of {n_jobs} jobs done"
        if lost:
            label += f", {lost} {what}{events_note}"
    elif n_jobs == 0:
        tone, label = "neutral", f"{state}: no jobs"
    elif lost == 0:
        tone = "success"
        label = f"{state}: all {n_jobs} jobs finished"
    elif n_done == 0:
        tone = "danger"
        label = f"{state}: all {n_jobs} jobs {what}{events_note}"
    else:
        tone = "warning"
        label = f"{state}: {lost} of {n_jobs} jobs {what}{events_note}"
    return Outcome(label, tone, lost, events_lost if events_lost is not None else
                   (None if events_done is None else 0), wall, rate)
