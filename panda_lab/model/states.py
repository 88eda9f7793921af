"""The vocabulary of states: task, job, pilot and site states, the transitions allowed
between them, and the named sets the code uses, all as data defined here once.

PanDA's job life cycle, simplified but faithful.  The tables below are the single
source of truth: the store refuses any change they do not allow, so a final state
can never change and a retry is always a *new* attempt (a new job row).  Every other
module, the client and the notebook widgets import these names; the JupyterLab panel
reads them from the server (``GET /api/states``, built by :func:`vocabulary`).
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum


class JobState(StrEnum):
    DEFINED = "defined"
    ASSIGNED = "assigned"
    ACTIVATED = "activated"
    SENT = "sent"
    STARTING = "starting"
    RUNNING = "running"
    TRANSFERRING = "transferring"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CLOSED = "closed"


class TaskState(StrEnum):
    DEFINED = "defined"
    READY = "ready"
    SCOUTING = "scouting"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


class PilotState(StrEnum):
    """A pilot's life (PanDA's pilot states, reduced to what a server can observe)."""

    RUNNING = "running"    #: registered and heartbeating
    FINISHED = "finished"  #: said goodbye (``POST /api/pilots/end``)
    LOST = "lost"          #: missed heartbeats, or its batch job vanished


class SiteState(StrEnum):
    """A site's health, as its provisioner last reported it (PanDA's queue status)."""

    ONLINE = "online"
    OFFLINE = "offline"


J = JobState
T = TaskState

#: Every allowed job transition.  Anything absent is refused.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.DEFINED: frozenset({J.ASSIGNED, J.CANCELLED, J.CLOSED}),
    J.ASSIGNED: frozenset({J.ACTIVATED, J.CANCELLED, J.CLOSED}),
    J.ACTIVATED: frozenset({J.SENT, J.CANCELLED, J.CLOSED}),
    J.SENT: frozenset({J.STARTING, J.FAILED, J.CANCELLED}),
    J.STARTING: frozenset({J.RUNNING, J.FAILED, J.CANCELLED}),
    J.RUNNING: frozenset({J.TRANSFERRING, J.FINISHED, J.FAILED, J.CANCELLED}),
    J.TRANSFERRING: frozenset({J.FINISHED, J.FAILED, J.CANCELLED}),
    J.FINISHED: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
    J.CLOSED: frozenset(),
}

JOB_FINAL: frozenset[JobState] = frozenset(s for s, nxt in JOB_TRANSITIONS.items() if not nxt)
#: States in which a pilot holds the job and must heartbeat it.
JOB_ON_PILOT: frozenset[JobState] = frozenset({J.SENT, J.STARTING, J.RUNNING, J.TRANSFERRING})
#: States in which the job waits for a pilot (may still be cancelled without one).
JOB_WAITING: frozenset[JobState] = frozenset({J.DEFINED, J.ASSIGNED, J.ACTIVATED})
#: The queue a site's scaling counts: jobs waiting for one of its pilots.
JOB_QUEUED: frozenset[JobState] = JOB_WAITING
#: States in which the job occupies a pilot's slot (sent to, or running on, a pilot).
JOB_ACTIVE: frozenset[JobState] = JOB_ON_PILOT
#: Final job states that are not a success.
JOB_UNSUCCESSFUL: frozenset[JobState] = JOB_FINAL - {J.FINISHED}
#: Job states of which pbook's ``retry`` makes a new attempt (``closed`` jobs never ran
#: because their task ended; they are not retried).
JOB_RETRYABLE: frozenset[JobState] = frozenset({J.FAILED, J.CANCELLED})
#: The order in which states are shown (counts, bars): the life cycle's order.
JOB_ORDER: tuple[JobState, ...] = tuple(JobState)

#: Pilot states after which a pilot never runs a job again.
PILOT_FINAL: frozenset[PilotState] = frozenset({PilotState.FINISHED, PilotState.LOST})

TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    T.DEFINED: frozenset({T.READY, T.FAILED, T.ABORTED}),
    T.READY: frozenset({T.SCOUTING, T.RUNNING, T.PAUSED, T.DONE, T.FINISHED, T.FAILED, T.ABORTED}),
    T.SCOUTING: frozenset({T.RUNNING, T.PAUSED, T.FAILED, T.ABORTED}),
    T.RUNNING: frozenset({T.PAUSED, T.DONE, T.FINISHED, T.FAILED, T.ABORTED}),
    T.PAUSED: frozenset({T.RUNNING, T.ABORTED}),
    # ``retry`` (pbook's verb) re-opens a partially finished or failed task.
    T.FINISHED: frozenset({T.RUNNING}),
    T.FAILED: frozenset({T.RUNNING}),
    T.DONE: frozenset(),
    T.ABORTED: frozenset(),
}

TASK_FINAL: frozenset[TaskState] = frozenset({T.DONE, T.FINISHED, T.FAILED, T.ABORTED})
#: Task states from which pbook's ``retry`` may start new attempts of failed jobs: a task
#: still running or ready, or a finished or failed one (which re-opens).  ``done`` has
#: nothing to retry and ``aborted`` stays aborted.
TASK_RETRYABLE: frozenset[TaskState] = frozenset({T.READY, T.RUNNING, T.FINISHED, T.FAILED})
#: Task states in which the task may still gain jobs or change: not final.
TASK_ACTIVE: frozenset[TaskState] = frozenset(TaskState) - TASK_FINAL
#: Final task states that never change again, not even by ``retry``.
TASK_IMMUTABLE: frozenset[TaskState] = frozenset(
    s for s, nxt in TASK_TRANSITIONS.items() if not nxt
)


#: The tones a task's outcome is shown in (:mod:`panda_lab.model.outcome`), least urgent
#: first: grey, blue, green, orange, red.
TONES: tuple[str, ...] = ("neutral", "active", "success", "warning", "danger")


class TransitionError(ValueError):
    """Raised when a change of state is not in the transition table."""


def can_job(old: JobState | str, new: JobState | str) -> bool:
    return JobState(new) in JOB_TRANSITIONS[JobState(old)]


def can_task(old: TaskState | str, new: TaskState | str) -> bool:
    return TaskState(new) in TASK_TRANSITIONS[TaskState(old)]


def _shortest_paths(table: dict[JobState, frozenset[JobState]]) -> dict[tuple, tuple]:
    paths: dict[tuple, tuple] = {}
    order = list(JobState)
    for start in table:
        seen = {start: ()}
        queue = deque([start])
        while queue:
            cur = queue.popleft()
            # Visit successors in the canonical order so the path is deterministic.
            for nxt in sorted(table[cur], key=order.index):
                if nxt not in seen:
                    seen[nxt] = (*seen[cur], nxt)
                    queue.append(nxt)
        for end, path in seen.items():
            paths[(start, end)] = path
    return paths


_JOB_PATHS = _shortest_paths(JOB_TRANSITIONS)


def job_path(old: JobState | str, new: JobState | str) -> tuple[JobState, ...]:
    """The states a job passes through from ``old`` to ``new`` (excluding ``old``).

    A pilot batches its reports, so a fast job may be reported ``finished`` while
    the server still has it ``sent``.  The server records every intermediate state
    along the canonical path, so the history stays faithful to the table.
    Raises :class:`TransitionError` when ``new`` cannot be reached.
    """
    old, new = JobState(old), JobState(new)
    if old == new:
        return ()
    try:
        return _JOB_PATHS[(old, new)]
    except KeyError:
        raise TransitionError(f"job cannot go from {old} to {new}") from None


def vocabulary() -> dict[str, list[str]]:
    """The states and named sets as plain lists, for clients that cannot import this
    module (the JupyterLab panel, through ``GET /api/states``).  Lists of state names;
    sets are sorted in life-cycle order so that the document is stable."""
    def ordered(states, kind) -> list[str]:
        return [str(s) for s in kind if s in states]

    return {
        "task_states": [str(s) for s in TaskState],
        "job_states": [str(s) for s in JOB_ORDER],
        "pilot_states": [str(s) for s in PilotState],
        "site_states": [str(s) for s in SiteState],
        "task_final": ordered(TASK_FINAL, TaskState),
        "task_retryable": ordered(TASK_RETRYABLE, TaskState),
        "task_active": ordered(TASK_ACTIVE, TaskState),
        "job_final": ordered(JOB_FINAL, JobState),
        "job_queued": ordered(JOB_QUEUED, JobState),
        "job_active": ordered(JOB_ACTIVE, JobState),
        "job_unsuccessful": ordered(JOB_UNSUCCESSFUL, JobState),
        "job_retryable": ordered(JOB_RETRYABLE, JobState),
        "pilot_final": ordered(PILOT_FINAL, PilotState),
        "tones": list(TONES),
    }
