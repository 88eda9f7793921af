"""Result rows (one per logical job, counted once), the result directory, and the merged
accumulator of an analysis task.

Row functions take a ``Connection`` and open no transaction; the workflow verbs do.
Large results and full job outputs are files under the result directory, written
atomically (a temporary name, then a rename), with only a reference in the database.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.engine import Row

from panda_lab.model import ErrorCategory, JobState
from panda_lab.payload import INLINE_LIMIT
from panda_lab.store.base import JobChange, now
from panda_lab.store.errors import ResultStoreFull
from panda_lab.store.schema import accumulators, chunks, results


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary name, then a rename).  Raises
    :class:`ResultStoreFull` when its file system has no room, ``OSError`` for any other
    failure; either way no part of the file is left taking space."""
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResultStoreFull(
                exc.errno, f"the server's result store is full ({exc.strerror}): "
                f"{len(data):,} bytes could not be kept in {path.parent}; free space "
                "there, then retry") from exc
        raise


def write_result(result_dir: Path, task_id: int, job_id: int, data: bytes) -> str:
    """Write a large result; returns its reference (relative to ``result_dir``)."""
    rel = f"{task_id}/{job_id}.pkl"
    write_file(result_dir / rel, data)
    return rel


def kept(result_dir: Path, row: Row, u: dict) -> dict:
    """A pilot's update ``u`` of the job ``row`` as it can be applied: a ``finished``
    report without a result becomes ``failed`` (the work is lost: the retry rules act);
    a result over ``INLINE_LIMIT`` bytes sent inline is written to the result store
    first and named by ``result_ref``, or, when the store is full, the update becomes
    ``failed`` saying so (a job is never finished without its result).  Other updates
    are returned as they are."""
    if u["state"] != JobState.FINISHED:
        return u
    data = u.get("result")
    if data is None and not u.get("result_ref"):
        message = "reported finished without a result"
    elif data is not None and len(data) > INLINE_LIMIT:
        try:
            ref = write_result(result_dir, row.task_id, row.id, data)
        except ResultStoreFull as exc:
            message = f"result not kept: {exc.strerror}"
        else:
            return {**{k: v for k, v in u.items() if k != "result"}, "result_ref": ref}
    else:
        return u
    return {**u, "state": str(JobState.FAILED), "result": None,
            "error": {"category": str(ErrorCategory.SYSTEM), "message": message}}


def output_path(result_dir: Path, task_id: int, job_id: int, stream: str) -> Path:
    """Where an attempt's full ``stream`` (stdout or stderr) is kept."""
    return result_dir / str(task_id) / f"{job_id}.{stream}"


def store(conn: Connection, result_dir: Path, finished: list[tuple[Row, dict, JobChange]]
          ) -> None:
    """Keep the result of each finished attempt ``(row, update, change)``, unless its
    logical job has one already (a result is counted once, whatever happens); a result
    over ``INLINE_LIMIT`` bytes goes to a file.  An inline result is put on its change,
    for the event stream."""
    if not finished:
        return
    keys = {(r.task_id, r.job_index) for r, _, _ in finished}
    existing = set(conn.execute(
        select(results.c.task_id, results.c.job_index)
        .where(results.c.task_id.in_({k[0] for k in keys}),
               results.c.job_index.in_({k[1] for k in keys}))).all())
    rows = []
    for r, u, change in finished:
        if (r.task_id, r.job_index) in existing:
            continue
        data: bytes | None = u.get("result")
        ref = u.get("result_ref")
        if data is not None and len(data) > INLINE_LIMIT:
            ref = write_result(result_dir, r.task_id, r.id, data)
            data = None
        size = len(data) if data is not None else (result_dir / ref).stat().st_size
        rows.append({"task_id": r.task_id, "job_index": r.job_index, "job_id": r.id,
                     "inline": data, "ref": ref, "size": size})
        change.result = data
        existing.add((r.task_id, r.job_index))
    if rows:
        conn.execute(insert(results), rows)


def indices_done(conn: Connection, task_id: int) -> set[int]:
    """The logical jobs of a task that have a result."""
    return {r[0] for r in conn.execute(select(results.c.job_index)
                                       .where(results.c.task_id == task_id))}


def rows_of(conn: Connection, task_id: int, indices: list[int] | None) -> list[Row]:
    """A task's result rows (of the job ``indices``, when given), by index."""
    q = select(results).where(results.c.task_id == task_id)
    if indices is not None:
        q = q.where(results.c.job_index.in_(indices))
    return conn.execute(q.order_by(results.c.job_index)).all()


def sizes_of(conn: Connection, task_id: int) -> dict[int, int]:
    """A task's result sizes in bytes, by job index (the results themselves not read)."""
    return dict(conn.execute(select(results.c.job_index, results.c.size)
                             .where(results.c.task_id == task_id)
                             .order_by(results.c.job_index)).all())


# ---- merged results ---------------------------------------------------------------------
def load_accumulator(conn: Connection, task_id: int) -> tuple[bytes | None, set[int], int]:
    """``(data, merged job indices, events)``; ``(None, set(), 0)`` before any merge."""
    row = conn.execute(select(accumulators).where(accumulators.c.task_id == task_id)).first()
    if row is None:
        return None, set(), 0
    return row.data, set(json.loads(row.merged)), row.events


def save_accumulator(conn: Connection, task_id: int, data: bytes | None, merged: set[int],
                     events: int) -> None:
    """The merged result and exactly the job indices it holds, in one row."""
    values = {"data": data, "merged": json.dumps(sorted(merged)), "events": events,
              "updated_at": now()}
    done = conn.execute(update(accumulators).where(accumulators.c.task_id == task_id)
                        .values(**values))
    if not done.rowcount:
        conn.execute(insert(accumulators).values(task_id=task_id, **values))


def tasks_to_merge(conn: Connection) -> list[int]:
    """Analysis tasks with results not yet in their merged state."""
    with_results = select(results.c.task_id, func.count().label("n")).group_by(
        results.c.task_id).subquery()
    rows = conn.execute(
        select(with_results.c.task_id, with_results.c.n, accumulators.c.merged)
        .join(chunks, chunks.c.task_id == with_results.c.task_id)
        .outerjoin(accumulators, accumulators.c.task_id == with_results.c.task_id)
        .distinct()).all()
    return sorted({r.task_id for r in rows if r.merged is None or len(json.loads(r.merged)) < r.n})
