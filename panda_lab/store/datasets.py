"""Datasets, their files and replicas; analysis chunks and merged results.

A dataset is registered once (entries, sizes and cluster boundaries read from the files'
metadata) and shared by every notebook of the server; files found bad at registration and
skipped are kept with their reasons.  An analysis task keeps the input chunk of each job,
so its report can say, for every file and entry range, what happened.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, delete, func, insert, select, update

from panda_lab.store.base import StoreBase, now
from panda_lab.store.schema import (
    accumulators,
    bad_files,
    chunks,
    datasets,
    files,
    replicas,
)


class DatasetExists(ValueError):
    pass


class DatasetNotFound(LookupError):
    pass


class DatasetStore:
    # ---- datasets -------------------------------------------------------------------
    def register_dataset(self: StoreBase, name: str, tree: str, files_: list[dict],
                         replace: bool = False, bad_files_: list[dict] | None = None) -> int:
        """Record a dataset and its files; each file dict has path, tree, entries,
        size_bytes, clusters, branches and optional file_index and replicas
        [{endpoint, url}].  ``bad_files_`` [{path, reason, optional tree and file_index}]
        are the files given that cannot be used, kept with the reason so analyses can
        report them as skipped.  A ``file_index`` is the file's place in the list the user
        gave (good and bad together); without one, good files count from 0 and bad files
        follow them."""
        bad_ = bad_files_ or []
        with self.tx() as conn:
            old = conn.execute(select(datasets.c.id).where(datasets.c.name == name)).scalar()
            if old is not None:
                if not replace:
                    raise DatasetExists(f"dataset {name!r} exists; pass replace=True to "
                                        "register it again")
                file_ids = select(files.c.id).where(files.c.dataset_id == old)
                conn.execute(delete(replicas).where(replicas.c.file_id.in_(file_ids)))
                conn.execute(delete(files).where(files.c.dataset_id == old))
                conn.execute(delete(bad_files).where(bad_files.c.dataset_id == old))
                conn.execute(delete(datasets).where(datasets.c.id == old))
            ds_id = conn.execute(insert(datasets).values(
                name=name, tree=tree, n_files=len(files_),
                n_events=sum(int(f["entries"]) for f in files_),
                size_bytes=sum(int(f["size_bytes"]) for f in files_), created_at=now(),
            ).returning(datasets.c.id)).scalar_one()
            for i, f in enumerate(files_):
                index = f["file_index"] if f.get("file_index") is not None else i
                fid = conn.execute(insert(files).values(
                    dataset_id=ds_id, file_index=index, path=f["path"],
                    tree=f.get("tree", tree), entries=int(f["entries"]),
                    size_bytes=int(f["size_bytes"]),
                    clusters=json.dumps([int(c) for c in f["clusters"]]),
                    branches=json.dumps(f.get("branches", [])),
                ).returning(files.c.id)).scalar_one()
                reps = f.get("replicas") or [{"endpoint": "origin", "url": f["path"]}]
                conn.execute(insert(replicas), [
                    {"file_id": fid, "endpoint": r["endpoint"], "url": r["url"]} for r in reps])
            if bad_:
                conn.execute(insert(bad_files), [
                    {"dataset_id": ds_id, "path": b["path"], "tree": b.get("tree") or tree,
                     "reason": b["reason"],
                     "file_index": b["file_index"] if b.get("file_index") is not None
                     else len(files_) + k}
                    for k, b in enumerate(bad_)])
        return ds_id

    def get_dataset(self: StoreBase, name: str, with_files: bool = True) -> dict:
        with self.tx() as conn:
            row = conn.execute(select(datasets).where(datasets.c.name == name)).first()
            if row is None:
                known = [r[0] for r in conn.execute(select(datasets.c.name).limit(20))]
                raise DatasetNotFound(f"no dataset named {name!r}; known: {known}")
            out = dict(row._mapping)
            if with_files:
                out["files"] = self._files(conn, row.id)
                out["bad_files"] = [
                    {"file_index": b.file_index, "path": b.path, "tree": b.tree,
                     "reason": b.reason}
                    for b in conn.execute(select(bad_files).where(
                        bad_files.c.dataset_id == row.id).order_by(bad_files.c.file_index))]
        return out

    def _files(self, conn: Connection, ds_id: int) -> list[dict]:
        rows = conn.execute(select(files).where(files.c.dataset_id == ds_id)
                            .order_by(files.c.file_index)).all()
        reps: dict[int, list[dict]] = {}
        for r in conn.execute(select(replicas).where(
                replicas.c.file_id.in_([f.id for f in rows])).order_by(replicas.c.id)):
            reps.setdefault(r.file_id, []).append({"endpoint": r.endpoint, "url": r.url})
        return [{"file_index": f.file_index, "path": f.path, "tree": f.tree,
                 "entries": f.entries, "size_bytes": f.size_bytes,
                 "clusters": json.loads(f.clusters), "branches": json.loads(f.branches),
                 "replicas": reps.get(f.id, [])} for f in rows]

    def list_datasets(self: StoreBase) -> list[dict]:
        with self.tx() as conn:
            return [dict(r._mapping) for r in
                    conn.execute(select(datasets).order_by(datasets.c.name))]

    # ---- analysis chunks -----------------------------------------------------------------
    def task_chunks(self: StoreBase, task_id: int) -> list[dict]:
        with self.tx() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(chunks).where(chunks.c.task_id == task_id).order_by(chunks.c.job_index))]

    # ---- merged results ---------------------------------------------------------------------
    def load_accumulator(self: StoreBase, task_id: int) -> tuple[bytes | None, set[int], int]:
        with self.tx() as conn:
            row = conn.execute(select(accumulators).where(
                accumulators.c.task_id == task_id)).first()
        if row is None:
            return None, set(), 0
        return row.data, set(json.loads(row.merged)), row.events

    def save_accumulator(self: StoreBase, task_id: int, data: bytes | None, merged: set[int],
                         events: int) -> None:
        """Persist the merged result and exactly the job indices it contains, together."""
        values = {"data": data, "merged": json.dumps(sorted(merged)), "events": events,
                  "updated_at": now()}
        with self.tx() as conn:
            done = conn.execute(update(accumulators).where(accumulators.c.task_id == task_id)
                                .values(**values))
            if not done.rowcount:
                conn.execute(insert(accumulators).values(task_id=task_id, **values))

    def analysis_tasks_to_merge(self: StoreBase) -> list[int]:
        """Analysis tasks with results not yet in their merged state (after a restart)."""
        from panda_lab.store.schema import results

        with self.tx() as conn:
            with_results = select(results.c.task_id, func.count().label("n")).group_by(
                results.c.task_id).subquery()
            rows = conn.execute(
                select(with_results.c.task_id, with_results.c.n, accumulators.c.merged)
                .join(chunks, chunks.c.task_id == with_results.c.task_id)
                .outerjoin(accumulators, accumulators.c.task_id == with_results.c.task_id)
                .distinct()).all()
        return sorted({r.task_id for r in rows
                       if r.merged is None or len(json.loads(r.merged)) < r.n})


class ReportStore:
    def analysis_report(self: StoreBase, task_id: int) -> list[dict]:
        """Every input range of an analysis task with the fate of its job: state of the
        latest attempt, number of attempts, sites tried, and the error if it failed.

        After the jobs' rows (in job order) come, in file order, the files no job reads:
        those without entries (``start == stop == 0``, no error) and those found bad at
        registration (``start``/``stop`` None, ``error_category`` "input", ``error`` the
        reason); both have ``job_index`` and ``state`` None and no attempts.  Raises
        :class:`~panda_lab.store.tasks.TaskNotFound` for an unknown task."""
        from panda_lab.store.base import loads
        from panda_lab.store.schema import jobs, tasks
        from panda_lab.store.tasks import TaskNotFound

        with self.tx() as conn:
            options = conn.execute(select(tasks.c.options).where(tasks.c.id == task_id)).scalar()
            if options is None:
                raise TaskNotFound(f"no task with id {task_id}")
            rows = conn.execute(select(chunks).where(chunks.c.task_id == task_id)
                                .order_by(chunks.c.job_index, chunks.c.id)).all()
            attempts: dict[int, list] = {}
            for j in conn.execute(
                    select(jobs.c.job_index, jobs.c.attempt, jobs.c.state, jobs.c.site,
                           jobs.c.error_category, jobs.c.error_message)
                    .where(jobs.c.task_id == task_id).order_by(jobs.c.job_index, jobs.c.attempt)):
                attempts.setdefault(j.job_index, []).append(j)
        out = []
        for r in rows:
            tries = attempts.get(r.job_index, [])
            last = tries[-1] if tries else None
            out.append({
                "job_index": r.job_index, "file_index": r.file_index, "path": r.path,
                "tree": r.tree, "start": r.start, "stop": r.stop, "scout": bool(r.scout),
                "state": last.state if last else "defined", "attempts": len(tries),
                "sites": [t.site for t in tries],
                "error_category": last.error_category if last else None,
                "error": last.error_message if last else None,
            })
        options = loads(options)
        without_job = [
            {"file_index": i, "path": path, "tree": tree, "start": 0, "stop": 0,
             "error_category": None, "error": None}
            for i, path, tree in options.get("empty_files", [])
        ] + [
            {"file_index": b["file_index"], "path": b["path"], "tree": b["tree"], "start": None,
             "stop": None, "error_category": "input",
             "error": f"skipped at registration: {b['reason']}"}
            for b in options.get("bad_files", [])
        ]
        for row in sorted(without_job, key=lambda r: r["file_index"]):
            out.append({"job_index": None, **row, "scout": False, "state": None,
                        "attempts": 0, "sites": []})
        return out
