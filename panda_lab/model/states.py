"""Job and task states and the transitions allowed between them, as data.

PanDA's job life cycle, simplified but faithful.  The tables below are the single
source of truth: the store refuses any change they do not allow, so a final state
can never change and a retry is always a *new* attempt (a new job row).
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
#: Final task states that never change again, not even by ``retry``.
TASK_IMMUTABLE: frozenset[TaskState] = frozenset(
    s for s, nxt in TASK_TRANSITIONS.items() if not nxt
)


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
