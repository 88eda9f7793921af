"""Task rows: insert, read, lock, change state by compare-and-set, end when complete.

Functions take a ``Connection`` and open no transaction; the workflow verbs do.
"""

from __future__ import annotations

from sqlalchemy import Connection, Select, bindparam, func, insert, select, update
from sqlalchemy.engine import Row

from panda_lab.model import (
    JOB_FINAL,
    JOB_UNSUCCESSFUL,
    TASK_FINAL,
    JobState,
    TaskState,
    can_task,
)
from panda_lab.model.lease import ended_message
from panda_lab.model.outcome import all_jobs, task_outcome
from panda_lab.store.base import Changes, dumps, loads, now
from panda_lab.store.errors import TaskNotFound
from panda_lab.store.schema import chunks, jobs, results, tasks

T = TaskState
FINAL_JOBS = [str(s) for s in JOB_FINAL]
#: The other states: "is a job still pending?" asks for one row in these, an index seek per
#: state on ``ix_jobs_task_state``, where ``NOT IN`` (final) scanned the task's finished
#: rows on every report of a large task.
PENDING_JOBS = sorted(str(s) for s in JobState if s not in JOB_FINAL)


def insert_task(conn: Connection, *, name: str, owner: str, sites: tuple[str, ...],
                options: dict, common: bytes | None, open_: bool,
                lease_until: float | None, t: float) -> int:
    """A new task row in state ``defined``; returns its id."""
    return conn.execute(
        insert(tasks).values(
            name=name, owner=owner, state=str(T.DEFINED), site=",".join(sites),
            options=dumps(options), common=common, open=open_, n_jobs=0,
            lease_until=lease_until, created_at=t, modified_at=t, message="",
        ).returning(tasks.c.id)
    ).scalar_one()


def task_row(conn: Connection, task_id: int, lock: bool = False) -> Row:
    """The task's row; raises :class:`TaskNotFound`.  ``lock`` serializes commands on one
    task (PostgreSQL row lock), so a concurrent retry then sees what this one did.  Take
    it only where no job row is locked afterwards: reports lock jobs first, then tasks."""
    q = select(tasks).where(tasks.c.id == task_id)
    row = conn.execute(q.with_for_update(key_share=True) if lock else q).first()
    if row is None:
        raise TaskNotFound(f"no task with id {task_id}")
    return row


def task_by_name(conn: Connection, name: str, owner: str | None = None) -> int:
    """The id of the newest task called ``name`` (of ``owner``; None: anyone's); raises
    :class:`TaskNotFound`."""
    q = select(tasks.c.id).where(tasks.c.name == name)
    if owner is not None:
        q = q.where(tasks.c.owner == owner)
    row = conn.execute(q.order_by(tasks.c.id.desc()).limit(1)).first()
    if row is None:
        raise TaskNotFound(f"no task named {name!r}")
    return row[0]


def reserve_indices(conn: Connection, task_id: int, n: int) -> int:
    """Reserve ``n`` job indices of a task; returns the first."""
    start = conn.execute(select(tasks.c.n_jobs).where(tasks.c.id == task_id)).scalar_one()
    conn.execute(update(tasks).where(tasks.c.id == task_id)
                 .values(n_jobs=start + n, modified_at=now()))
    return start


def add_options(conn: Connection, task_id: int, old: str, values: dict,
                **columns: object) -> None:
    """Add ``values`` to the task's options (``old``: its options' JSON text as read);
    ``columns`` are set in the same statement (``open=False``)."""
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(
        options=dumps(loads(old) | values), modified_at=now(), **columns))


def add_filter_summary(conn: Connection, summaries: dict[int, dict[str, int]]) -> None:
    """Add each task's ``{filter: candidates removed}`` counts to its brokerage summary
    (tasks with nothing removed are not written)."""
    wanted = {t: s for t, s in summaries.items() if s}
    if not wanted:
        return
    old = dict(conn.execute(select(tasks.c.id, tasks.c.brokerage)
                            .where(tasks.c.id.in_(sorted(wanted)))).all())
    for task_id, summary in sorted(wanted.items()):
        total = loads(old.get(task_id) or "{}")
        for name, n in summary.items():
            total[name] = total.get(name, 0) + int(n)
        conn.execute(update(tasks).where(tasks.c.id == task_id)
                     .values(brokerage=dumps(total)))


def set_open(conn: Connection, task_id: int, open_: bool, touch: bool = True) -> None:
    """Open or close a task to new jobs."""
    values: dict = {"open": open_}
    if touch:
        values["modified_at"] = now()
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def set_state(conn: Connection, task_id: int, old: str, new: str, changes: Changes,
              message: str | None = None) -> bool:
    """Move a task ``old → new`` if the model allows it and the task is still ``old``
    (compare-and-set); records the change in ``changes``.  Returns whether it moved."""
    if not can_task(old, new):
        return False
    values: dict = {"state": str(new), "modified_at": now()}
    values["ended_at"] = now() if TaskState(new) in TASK_FINAL else None
    if message is not None:
        values["message"] = message
    res = conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.state == str(old))
                       .values(**values))
    if res.rowcount:
        changes.tasks.append((task_id, str(new)))
    return bool(res.rowcount)


def end_if_complete(conn: Connection, task_ids: list[int], changes: Changes) -> None:
    """End the tasks whose every job has a final attempt and that take no more jobs:
    ``done`` when each logical job has a result, ``failed`` when none has, else
    ``finished`` (PanDA's partial success)."""
    for task_id in set(task_ids):
        task = conn.execute(select(tasks.c.state, tasks.c.open, tasks.c.n_jobs, tasks.c.message)
                            .where(tasks.c.id == task_id)).first()
        if task is None or task.open or TaskState(task.state) in TASK_FINAL:
            continue
        pending = conn.execute(select(jobs.c.id).where(
            jobs.c.task_id == task_id, jobs.c.state.in_(PENDING_JOBS)).limit(1)).first()
        if pending is not None:
            continue
        done = conn.execute(select(func.count()).select_from(results)
                            .where(results.c.task_id == task_id)).scalar_one()
        if done == task.n_jobs:
            new, msg = T.DONE, all_jobs(done, "finished")
        elif done == 0:
            new, msg = T.FAILED, ("its job did not finish" if task.n_jobs == 1 else
                                  f"none of {task.n_jobs:,} jobs finished")
        else:
            new, msg = T.FINISHED, f"{done:,} of {task.n_jobs:,} jobs finished"
        set_state(conn, task_id, task.state, new, changes, ended_message(task.message, msg))


def task_sites(conn: Connection, task_ids: set[int]) -> dict[int, Row]:
    """Id, site list, state and options of tasks, by id."""
    return {r.id: r for r in conn.execute(
        select(tasks.c.id, tasks.c.site, tasks.c.state, tasks.c.options)
        .where(tasks.c.id.in_(task_ids)))}


#: Built once: every acquisition runs it.
_COMMON_AND_LIMITS = (select(tasks.c.id, tasks.c.common.is_not(None), tasks.c.options,
                             tasks.c.state)
                      .where(tasks.c.id.in_(bindparam("ids", expanding=True))))


def common_and_limits(conn: Connection, task_ids: list[int], with_state: bool = False):
    """Whether each task has a common payload part, its ``output_limit`` option and its
    ``workdir`` option (the client's host and directory, or None):
    ``{task_id: (has_common, output_limit, workdir)}``; with ``with_state``, the pair of
    that and ``{task_id: state}``."""
    out, states = {}, {}
    for task_id, has_common, options, state in conn.execute(_COMMON_AND_LIMITS,
                                                            {"ids": task_ids}):
        o = loads(options)
        out[task_id] = (bool(has_common), o.get("output_limit"), o.get("workdir"))
        states[task_id] = state
    return (out, states) if with_state else out


def common(conn: Connection, task_id: int) -> bytes | None:
    """The payload part shared by a task's jobs, or None."""
    return conn.execute(select(tasks.c.common).where(tasks.c.id == task_id)).scalar()


#: The largest common payload part an acquisition carries (bytes); a larger one the pilot
#: fetches on its own (``GET /api/pilot/tasks/{id}/common``), so an answer that hands out
#: jobs stays small however large a task's function is.
INLINE_COMMON = 1 << 20
#: The most bytes of common parts one answer carries, all tasks together; the others'
#: the pilot fetches.
INLINE_ANSWER = 4 << 20

_SMALL_COMMONS = (select(tasks.c.id, tasks.c.common)
                  .where(tasks.c.id.in_(bindparam("ids", expanding=True)),
                         func.length(tasks.c.common) <= INLINE_COMMON))


def small_commons(conn: Connection, task_ids: list[int]) -> dict[int, bytes]:
    """The common payload parts of ``task_ids`` of at most :data:`INLINE_COMMON` bytes:
    ``{task_id: bytes}`` (a task without one, or with a larger one, is absent)."""
    return {i: c for i, c in conn.execute(_SMALL_COMMONS, {"ids": task_ids})}


def _task_dicts_sql() -> dict[str, Select]:
    """:func:`task_dicts`' statements over the tasks ``ids`` (an expanding parameter)."""
    ids = bindparam("ids", expanding=True)
    newest_ids = (select(func.max(jobs.c.id)).where(jobs.c.task_id.in_(ids))
                  .group_by(jobs.c.task_id, jobs.c.job_index))
    return {
        "counts": select(jobs.c.task_id, jobs.c.state, func.count())
        .where(jobs.c.task_id.in_(ids)).group_by(jobs.c.task_id, jobs.c.state),
        "n_done": select(results.c.task_id, func.count())
        .where(results.c.task_id.in_(ids)).group_by(results.c.task_id),
        "newest": select(jobs.c.task_id, jobs.c.state, func.count())
        .where(jobs.c.id.in_(newest_ids)).group_by(jobs.c.task_id, jobs.c.state),
        # events done and lost: only analysis tasks have chunks
        "sizes": select(chunks.c.task_id, chunks.c.job_index,
                        func.sum(chunks.c.stop - chunks.c.start))
        .where(chunks.c.task_id.in_(ids)).group_by(chunks.c.task_id, chunks.c.job_index),
        "done": select(results.c.task_id, results.c.job_index)
        .where(results.c.task_id.in_(ids)),
        "states": select(jobs.c.task_id, jobs.c.job_index, jobs.c.state)
        .where(jobs.c.id.in_(newest_ids)),
    }


#: Built once: a client's wait, a panel's poll and every task listing read tasks this way,
#: and building the statements cost about as much as running them on SQLite.
_TASK_DICTS = _task_dicts_sql()


def task_dicts(conn: Connection, rows: list[Row]) -> list[dict]:
    """Tasks as the API shows them (see :func:`task_dict`), read together: a fixed number
    of grouped queries whatever the number of tasks (a list of 50 tasks costs what one
    task does, not fifty times it)."""
    if not rows:
        return []
    ids = [r.id for r in rows]
    q = _TASK_DICTS
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for t, st, n in conn.execute(q["counts"], {"ids": ids}):
        counts[t][st] = n
    n_done = dict(conn.execute(q["n_done"], {"ids": ids}).all())
    newest: dict[int, dict[str, int]] = {i: {} for i in ids}
    for t, st, n in conn.execute(q["newest"], {"ids": ids}):
        newest[t][st] = n
    sizes: dict[int, dict[int, int]] = {}
    for t, j, n in conn.execute(q["sizes"], {"ids": ids}):
        sizes.setdefault(t, {})[j] = int(n)
    done: dict[int, set[int]] = {t: set() for t in sizes}
    states: dict[int, dict[int, str]] = {t: {} for t in sizes}
    if sizes:
        analysis = list(sizes)
        for t, j in conn.execute(q["done"], {"ids": analysis}):
            done[t].add(j)
        for t, j, st in conn.execute(q["states"], {"ids": analysis}):
            states[t][j] = st
    unsuccessful = {str(s) for s in JOB_UNSUCCESSFUL}
    t_now = now()
    out = []
    for row in rows:
        events_done = events_lost = None
        if row.id in sizes:
            final = TaskState(row.state) in TASK_FINAL
            got, size = done[row.id], sizes[row.id]
            lost = {j for j, st in states[row.id].items()
                    if j not in got and (final or st in unsuccessful)}
            events_done = sum(n for j, n in size.items() if j in got)
            events_lost = sum(n for j, n in size.items() if j in lost)
        finished = n_done.get(row.id, 0)
        summary = task_outcome(row.state, row.n_jobs, finished, newest[row.id],
                               events_done=events_done, events_lost=events_lost,
                               created_at=row.created_at, ended_at=row.ended_at, now=t_now,
                               message=row.message).as_dict()
        out.append({
            "id": row.id, "name": row.name, "owner": row.owner, "state": row.state,
            "site": row.site, "options": loads(row.options), "open": bool(row.open),
            "lease_until": row.lease_until,
            "n_jobs": row.n_jobs, "n_done": finished, "attempts_by_state": counts[row.id],
            "created_at": row.created_at, "modified_at": row.modified_at,
            "ended_at": row.ended_at, "message": row.message,
            "summary": summary,
            # JEDI's task diagnostics: candidates each brokerage filter removed
            "brokerage": loads(row.brokerage or "{}"),
        })
    return out


def progress(conn: Connection, task_id: int) -> tuple[bool, str, int, int] | None:
    """What closing a task waits on, in one statement: ``(open, state, attempts not in
    a final state, jobs with a result)``, or None when there is no such task.  The
    analysis service asks it after every report: :func:`task_dict`'s eight grouped
    queries would cost the server more than the report itself."""
    row = conn.execute(_PROGRESS, {"task": task_id}).first()
    return None if row is None else (bool(row[0]), str(row[1]), int(row[2]), int(row[3]))


def _progress():
    task = bindparam("task")
    unfinished = (select(func.count()).select_from(jobs)
                  .where(jobs.c.task_id == task,
                         jobs.c.state.notin_([str(s) for s in JOB_FINAL]))
                  .scalar_subquery())
    done = (select(func.count()).select_from(results).where(results.c.task_id == task)
            .scalar_subquery())
    return select(tasks.c.open, tasks.c.state, unfinished, done).where(tasks.c.id == task)


#: :func:`progress`'s statement, built once (it runs after every report).
_PROGRESS = _progress()


def task_dict(conn: Connection, row: Row) -> dict:
    """A task as the API shows it, with its attempts counted by state, ``n_done`` and
    its ``summary``: ``{"label", "tone", "jobs_lost", "events_lost", "wall_s", "rate"}``
    (see :func:`panda_lab.model.outcome.task_outcome`), from the newest attempt of each
    logical job, the jobs with a result and, for an analysis task, the entries of each
    job's chunks."""
    return task_dicts(conn, [row])[0]


def list_rows(conn: Connection, limit: int, state: str | None,
              owner: str | None = None) -> list[Row]:
    """The newest ``limit`` task rows (in ``state``, of ``owner``), newest first."""
    q = select(tasks).order_by(tasks.c.id.desc()).limit(limit)
    if state:
        q = q.where(tasks.c.state == state)
    if owner is not None:
        q = q.where(tasks.c.owner == owner)
    return conn.execute(q).all()


def of_kind(conn: Connection, kind: str) -> list[dict]:
    """Id, state and options of the tasks whose options say ``kind``."""
    rows = conn.execute(select(tasks.c.id, tasks.c.state, tasks.c.options).where(
        tasks.c.options.like(f'%"kind":"{kind}"%'))).all()
    return [{"id": r.id, "state": r.state, "options": loads(r.options)} for r in rows]


def options_text(conn: Connection, task_id: int) -> str | None:
    """A task's options as stored (JSON text), or None for no such task."""
    return conn.execute(select(tasks.c.options).where(tasks.c.id == task_id)).scalar()


# ---- client leases (the rule is panda_lab.model.lease) ---------------------------------
def renew_lease(conn: Connection, task_id: int, until: float) -> bool:
    """Set an open task's lease; False when it was closed meanwhile."""
    return bool(conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.open.is_(True))
                             .values(lease_until=until)).rowcount)


def open_leases(conn: Connection, before: float | None = None) -> list[Row]:
    """Id and lease end of the open tasks with a client lease (lapsed before ``before``)."""
    q = select(tasks.c.id, tasks.c.lease_until).where(tasks.c.open.is_(True))
    q = q.where(tasks.c.lease_until.is_not(None)) if before is None else \
        q.where(tasks.c.lease_until < before)
    return conn.execute(q).all()


def set_lease(conn: Connection, task_id: int, until: float) -> None:
    """A task's client lease ends at ``until``."""
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(lease_until=until))


def close_lapsed(conn: Connection, task_id: int, before: float, message: str) -> bool:
    """Close a task whose lease lapsed before ``before`` (checked again here: a renewal
    may have come in between); returns whether it closed."""
    return bool(conn.execute(update(tasks).where(
        tasks.c.id == task_id, tasks.c.open.is_(True), tasks.c.lease_until < before,
    ).values(open=False, modified_at=now(), message=message)).rowcount)
