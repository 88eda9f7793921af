"""What the status bar counts, each number one SQL aggregate over the jobs table.

The numbers follow the state a job is in, as a pilot reports it (PanDA's job life cycle,
panda_lab/model/states.py):

- ``running``: started on a pilot (``starting``, ``running``, ``transferring``);
- ``prefetched``: dispatched to a pilot that has not started it yet (``sent``: a pilot
  that pulls more jobs than it has free slots holds them, as PanDA's pilots do);
- ``waiting``: not on any pilot yet (``defined``, ``assigned``, ``activated``);
- ``failed``: logical jobs whose *newest* attempt failed (a retry that recovered a job
  takes it out), in tasks not aborted by their owner, and that failed after the task's
  failures were last acknowledged (``task_acks``).  These are what still needs a person.

Each number can be taken over one owner's tasks only (``owner``): a user's status bar
counts their own jobs, an admin's everyone's (panda_lab.server.auth's rule).

Functions take a ``Connection`` and open no transaction; the verbs do.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, or_, select

from panda_lab.model import JOB_ON_PILOT, JOB_WAITING, JobState, TaskState
from panda_lab.store.schema import jobs, task_acks, tasks

J = JobState
#: Started on a pilot: it occupies one of the pilot's slots now.
STARTED = [str(s) for s in sorted(JOB_ON_PILOT - {J.SENT}, key=list(J).index)]
#: Dispatched to a pilot, not started there yet.
PREFETCHED = [str(J.SENT)]
#: Waiting for a pilot.
WAITING = [str(s) for s in sorted(JOB_WAITING, key=list(J).index)]


def job_counts(conn: Connection, owner: str | None = None) -> dict:
    """``{"running", "prefetched", "waiting", "failed", "failed_tasks"}``: counts of jobs
    (attempts) in each group of the module's docstring, of ``owner``'s tasks (None:
    everyone's); ``failed`` counts logical jobs and ``failed_tasks`` the tasks they
    belong to."""
    query = (select(jobs.c.state, func.count())
             .where(jobs.c.state.in_(STARTED + PREFETCHED + WAITING)))
    if owner is not None:
        query = query.where(jobs.c.task_id.in_(select(tasks.c.id)
                                               .where(tasks.c.owner == owner)))
    by_state = dict(conn.execute(query.group_by(jobs.c.state)).all())
    failed, failed_tasks = unattended_failures(conn, owner)
    return {"running": sum(by_state.get(s, 0) for s in STARTED),
            "prefetched": sum(by_state.get(s, 0) for s in PREFETCHED),
            "waiting": sum(by_state.get(s, 0) for s in WAITING),
            "failed": failed, "failed_tasks": failed_tasks}


def unattended_failures(conn: Connection, owner: str | None = None) -> tuple[int, int]:
    """``(logical jobs, tasks)`` whose newest attempt failed and that still need a person
    (see the module's docstring), of ``owner``'s tasks (None: everyone's)."""
    # only tasks with a failed attempt at all: the newest-attempt subquery stays small
    suspects = select(jobs.c.task_id).where(jobs.c.state == str(J.FAILED)).distinct()
    newest = (select(func.max(jobs.c.id))
              .where(jobs.c.task_id.in_(suspects))
              .group_by(jobs.c.task_id, jobs.c.job_index))
    row = conn.execute(
        select(func.count(), func.count(jobs.c.task_id.distinct()))
        .select_from(jobs.join(tasks, tasks.c.id == jobs.c.task_id)
                     .outerjoin(task_acks, task_acks.c.task_id == jobs.c.task_id))
        .where(jobs.c.id.in_(newest), jobs.c.state == str(J.FAILED),
               tasks.c.state != str(TaskState.ABORTED),
               # a final attempt's modified_at is when it ended
               or_(task_acks.c.time.is_(None), jobs.c.modified_at > task_acks.c.time),
               *([tasks.c.owner == owner] if owner is not None else []))
    ).one()
    return int(row[0]), int(row[1])


def acknowledge(conn: Connection, task_id: int, t: float) -> None:
    """Record that a person saw the task's failed jobs at ``t`` (Unix seconds)."""
    if conn.execute(select(task_acks.c.task_id)
                    .where(task_acks.c.task_id == task_id)).first() is None:
        conn.execute(task_acks.insert().values(task_id=task_id, time=t))
    else:
        conn.execute(task_acks.update().where(task_acks.c.task_id == task_id).values(time=t))
