"""Tasks in the store: submission (split into jobs and brokered), queries, kill and retry."""

from __future__ import annotations

import base64

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from panda_lab.model import (
    JOB_FINAL,
    JOB_ON_PILOT,
    JOB_RETRYABLE,
    TASK_FINAL,
    TASK_RETRYABLE,
    JobState,
    TaskState,
    can_task,
)
from panda_lab.model.lease import CLIENT_GONE, ended_message
from panda_lab.server.brokerage import Request
from panda_lab.store.base import Changes, JobChange, StoreBase, dumps, loads, now
from panda_lab.store.schema import chunks, jobs, results, tasks

J = JobState
T = TaskState
FINAL = [str(s) for s in JOB_FINAL]

#: The error message of an attempt cancelled by its client before any attempt of its
#: logical job reached a pilot (``JobStore.cancel_waiting``); pbook's ``retry`` never
#: brings such a job back: its client was told it would never run.
CANCELLED_BY_CLIENT = "cancelled by its client before it ran"


class TaskNotFound(LookupError):
    pass


class TaskStateError(ValueError):
    pass


def _sites_of(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None or value == "":
        return ("ANY",)
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip()) or ("ANY",)
    return tuple(value) or ("ANY",)


class TaskStore:
    # ---- submission -------------------------------------------------------------
    def create_task(
        self: StoreBase,
        name: str,
        jobs_: list[dict],
        *,
        owner: str = "",
        site: str | list[str] | None = None,
        options: dict | None = None,
        common: bytes | None = None,
        open_: bool = False,
        state: TaskState = T.READY,
        job_chunks: list[list[dict]] | None = None,
        lease_s: float | None = None,
    ) -> tuple[int, list[int], Changes]:
        """Create a task and its first jobs, brokered and activated in one transaction.

        An open task opened by a client gets a lease of ``lease_s`` seconds, which its
        client renews (see :mod:`panda_lab.model.lease`); ``None``: the server holds it."""
        t = now()
        sites_ = _sites_of(site)
        with self.tx() as conn:
            task_id = conn.execute(
                insert(tasks).values(
                    name=name, owner=owner, state=str(T.DEFINED), site=",".join(sites_),
                    options=dumps(options or {}), common=common, open=open_, n_jobs=0,
                    lease_until=t + lease_s if open_ and lease_s else None,
                    created_at=t, modified_at=t, message="",
                ).returning(tasks.c.id)
            ).scalar_one()
            changes = Changes()
            self._set_task_state(conn, task_id, T.DEFINED, T.READY, changes)
            if state != T.READY:
                self._set_task_state(conn, task_id, T.READY, state, changes)
            ids = self._add_jobs(conn, task_id, jobs_, sites_, options or {}, changes,
                                 job_chunks, scout=state == T.SCOUTING)
            if not open_ and not jobs_:
                self._check_tasks(conn, [task_id], changes)
        return task_id, ids, changes

    def add_jobs(self: StoreBase, task_id: int, jobs_: list[dict],
                 job_chunks: list[list[dict]] | None = None,
                 advance: tuple[TaskState, TaskState] | None = None,
                 options: dict | None = None) -> tuple[list[int], Changes]:
        """Add jobs to an open task; in the same transaction, move the task from
        ``advance[0]`` to ``advance[1]`` and add ``options`` to its options (the sizing
        after scouting is one step: a crash leaves it all undone or all done)."""
        with self.tx() as conn:
            task = self._task_row(conn, task_id)
            if not task.open:
                why = f" ({task.message})" if task.message.startswith(CLIENT_GONE) else ""
                raise TaskStateError(f"task {task_id} is closed{why}: it takes no new jobs")
            if task.state in (T.ABORTED,):
                raise TaskStateError(f"task {task_id} was aborted")
            changes = Changes()
            if options:
                conn.execute(update(tasks).where(tasks.c.id == task_id).values(
                    options=dumps(loads(task.options) | options), modified_at=now()))
            ids = self._add_jobs(conn, task_id, jobs_, _sites_of(task.site),
                                 loads(task.options), changes, job_chunks)
            if advance is not None:
                self._set_task_state(conn, task_id, advance[0], advance[1], changes)
        return ids, changes

    def close_task(self: StoreBase, task_id: int) -> Changes:
        """No more jobs will come: the task may now end when its jobs end."""
        with self.tx() as conn:
            self._task_row(conn, task_id)
            conn.execute(update(tasks).where(tasks.c.id == task_id)
                         .values(open=False, modified_at=now()))
            changes = Changes()
            self._check_tasks(conn, [task_id], changes)
        return changes

    def _add_jobs(self, conn: Connection, task_id: int, specs: list[dict],
                  sites_: tuple[str, ...], options: dict, changes: Changes,
                  job_chunks: list[list[dict]] | None = None, scout: bool = False) -> list[int]:
        if not specs:
            return []
        start = conn.execute(select(tasks.c.n_jobs).where(tasks.c.id == task_id)).scalar_one()
        if job_chunks is not None:
            # The input ranges of an analysis job, in the transaction that makes the job.
            conn.execute(insert(chunks), [
                {"task_id": task_id, "job_index": start + i, "file_index": c["file_index"],
                 "path": c["path"], "tree": c["tree"], "start": c["start"], "stop": c["stop"],
                 "scout": scout}
                for i, cs in enumerate(job_chunks) for c in cs])
        attempts = [
            {
                "task_id": task_id, "job_index": start + i, "attempt": 1,
                "payload": spec["payload"],
                "sites": _sites_of(spec.get("site")) if spec.get("site") else sites_,
                "avoid": frozenset(),
                # where an analysis job's input is stored: brokerage prefers sites near it
                "near": frozenset(r["endpoint"] for c in job_chunks[i]
                                  for r in c.get("replicas") or []) if job_chunks else frozenset(),
                "priority": int(spec.get("priority", options.get("priority", 0))),
                "cores": int(spec.get("cores", options.get("cores", 1))),
                "memory_mb": int(spec.get("memory_mb", options.get("memory_mb", 0))),
                "walltime_s": float(spec.get("walltime_s", options.get("walltime_s", 0.0))),
                "max_attempts": int(spec.get("max_attempts", options.get("max_attempts", 3))),
                "retry_of": None,
            }
            for i, spec in enumerate(specs)
        ]
        conn.execute(update(tasks).where(tasks.c.id == task_id)
                     .values(n_jobs=start + len(specs), modified_at=now()))
        return self._insert_attempts(conn, attempts, changes)

    def _insert_attempts(self, conn: Connection, attempts: list[dict],
                         changes: Changes) -> list[int]:
        """Broker and insert new attempts, recording defined → assigned → activated."""
        loads_ = self._site_loads(conn)
        choices = self.broker.choose(
            [Request(sites=a["sites"], avoid=a["avoid"], near=a.get("near", frozenset()))
             for a in attempts], loads_)
        t = now()
        rows = []
        for a, choice in zip(attempts, choices, strict=True):
            row = {k: v for k, v in a.items() if k not in ("sites", "avoid", "near")}
            # The sites the job accepts and where its data is are kept with the decision,
            # so a retry stays within the sites and still prefers its data.
            row.update(state=str(J.ACTIVATED), site=choice.site, created_at=t, modified_at=t,
                       broker_info=dumps({**choice.info, "sites": list(a["sites"]),
                                          "near": sorted(a.get("near", ()))}))
            rows.append(row)
        ids = list(conn.execute(
            insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows).scalars())
        self._history(conn, [(i, (J.DEFINED, J.ASSIGNED, J.ACTIVATED), t, "") for i in ids])
        for jid, row in zip(ids, rows, strict=True):
            changes.jobs.append(JobChange(jid, row["task_id"], row["job_index"], row["attempt"],
                                          row["site"], str(J.ACTIVATED)))
            changes.activated_sites.add(row["site"])
        return ids

    # ---- task state ---------------------------------------------------------------
    def _set_task_state(self, conn: Connection, task_id: int, old: str, new: str,
                        changes: Changes, message: str | None = None) -> bool:
        if not can_task(old, new):
            return False
        values: dict = {"state": str(new), "modified_at": now()}
        if TaskState(new) in TASK_FINAL:
            values["ended_at"] = now()
        else:
            values["ended_at"] = None
        if message is not None:
            values["message"] = message
        res = conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.state == str(old))
                           .values(**values))
        if res.rowcount:
            changes.tasks.append((task_id, str(new)))
        return bool(res.rowcount)

    def set_task_state(self: StoreBase, task_id: int, old: TaskState,
                       new: TaskState) -> Changes:
        changes = Changes()
        with self.tx() as conn:
            self._set_task_state(conn, task_id, old, new, changes)
        return changes

    def update_task_options(self: StoreBase, task_id: int, values: dict) -> None:
        """Add to a task's options (e.g. what its scouts measured), keeping the rest."""
        with self.tx() as conn:
            row = self._task_row(conn, task_id)
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(
                options=dumps(loads(row.options) | values), modified_at=now()))

    def tasks_of_kind(self: StoreBase, kind: str) -> list[dict]:
        """Id, state and options of the tasks whose options say ``kind``."""
        with self.tx() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.state, tasks.c.options).where(
                tasks.c.options.like(f'%"kind":"{kind}"%'))).all()
        return [{"id": r.id, "state": r.state, "options": loads(r.options)} for r in rows]

    def _check_tasks(self, conn: Connection, task_ids: list[int], changes: Changes) -> None:
        """End the tasks whose every job has a final attempt and that take no more jobs."""
        for task_id in set(task_ids):
            task = conn.execute(select(tasks.c.state, tasks.c.open, tasks.c.n_jobs,
                                       tasks.c.message)
                                .where(tasks.c.id == task_id)).first()
            if task is None or task.open or TaskState(task.state) in TASK_FINAL:
                continue
            pending = conn.execute(
                select(func.count()).select_from(jobs)
                .where(jobs.c.task_id == task_id, jobs.c.state.not_in(FINAL))
            ).scalar_one()
            if pending:
                continue
            done = conn.execute(
                select(func.count()).select_from(results).where(results.c.task_id == task_id)
            ).scalar_one()
            if done == task.n_jobs:
                new, msg = T.DONE, f"all {done} jobs finished"
            elif done == 0:
                new, msg = T.FAILED, f"none of {task.n_jobs} jobs finished"
            else:
                new, msg = T.FINISHED, f"{done} of {task.n_jobs} jobs finished"
            self._set_task_state(conn, task_id, task.state, new, changes,
                                 ended_message(task.message, msg))

    def _task_row(self, conn: Connection, task_id: int, lock: bool = False):
        """The task's row; ``lock`` serializes commands on one task (PostgreSQL row lock),
        so a concurrent retry then sees what this one did.  Take it only where no job row
        is locked afterwards: reports lock jobs first, then their task."""
        q = select(tasks).where(tasks.c.id == task_id)
        row = conn.execute(q.with_for_update(key_share=True) if lock else q).first()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id}")
        return row

    def resolve_task(self: StoreBase, id_or_name: int | str) -> int:
        """A task id from an id or a name (the newest task of that name)."""
        with self.tx() as conn:
            if isinstance(id_or_name, int) or str(id_or_name).isdigit():
                self._task_row(conn, int(id_or_name))
                return int(id_or_name)
            row = conn.execute(select(tasks.c.id).where(tasks.c.name == id_or_name)
                               .order_by(tasks.c.id.desc()).limit(1)).first()
            if row is None:
                raise TaskNotFound(f"no task named {id_or_name!r}")
            return row[0]

    # ---- queries ------------------------------------------------------------------
    def _task_dict(self, conn: Connection, row) -> dict:
        counts: dict[str, int] = {}
        q = (select(jobs.c.state, func.count()).where(jobs.c.task_id == row.id)
             .group_by(jobs.c.state))
        for state, n in conn.execute(q):
            counts[state] = n
        n_done = conn.execute(select(func.count()).select_from(results)
                              .where(results.c.task_id == row.id)).scalar_one()
        return {
            "id": row.id, "name": row.name, "owner": row.owner, "state": row.state,
            "site": row.site, "options": loads(row.options), "open": bool(row.open),
            "lease_until": row.lease_until,
            "n_jobs": row.n_jobs, "n_done": n_done, "attempts_by_state": counts,
            "created_at": row.created_at, "modified_at": row.modified_at,
            "ended_at": row.ended_at, "message": row.message,
        }

    def get_task(self: StoreBase, task_id: int) -> dict:
        with self.tx() as conn:
            row = self._task_row(conn, task_id)
            out = self._task_dict(conn, row)
            # Latest attempt per logical job, by site and state: what a monitor shows.
            latest = self._latest_attempts(conn, task_id)
            per_site: dict[str, dict[str, int]] = {}
            for r in conn.execute(select(jobs.c.site, jobs.c.state).where(jobs.c.id.in_(latest))):
                per_site.setdefault(r.site or "-", {}).setdefault(r.state, 0)
                per_site[r.site or "-"][r.state] += 1
            out["jobs_by_site"] = per_site
            return out

    def list_tasks(self: StoreBase, limit: int = 100, state: str | None = None) -> list[dict]:
        with self.tx() as conn:
            q = select(tasks).order_by(tasks.c.id.desc()).limit(limit)
            if state:
                q = q.where(tasks.c.state == state)
            out = [self._task_dict(conn, r) for r in conn.execute(q).all()]
            # The sites each task's jobs went to (one query for the whole list).
            used: dict[int, set[str]] = {}
            if out:
                for task_id, site in conn.execute(
                        select(jobs.c.task_id, jobs.c.site).distinct()
                        .where(jobs.c.task_id.in_([t["id"] for t in out]),
                               jobs.c.site.is_not(None))):
                    used.setdefault(task_id, set()).add(site)
            for t in out:
                t["sites"] = sorted(used.get(t["id"], ()))
            return out

    @staticmethod
    def _latest_attempts(conn: Connection, task_id: int):
        """The newest attempt of each logical job of a task, as a subquery of ids."""
        return (select(func.max(jobs.c.id)).where(jobs.c.task_id == task_id)
                .group_by(jobs.c.job_index))

    def list_jobs(self: StoreBase, task_id: int, all_attempts: bool = False,
                  state: str | None = None) -> list[dict]:
        cols = [c for c in jobs.c if c.name != "payload"]
        with self.tx() as conn:
            self._task_row(conn, task_id)
            q = select(*cols).where(jobs.c.task_id == task_id)
            if not all_attempts:
                q = q.where(jobs.c.id.in_(self._latest_attempts(conn, task_id)))
            if state:
                q = q.where(jobs.c.state == state)
            q = q.order_by(jobs.c.job_index, jobs.c.attempt)
            return [self._job_dict(r) for r in conn.execute(q)]

    def get_job(self: StoreBase, job_id: int) -> dict:
        """One attempt with its status history and the other attempts of its logical job."""
        from panda_lab.store.schema import job_status

        cols = [c for c in jobs.c if c.name != "payload"]
        with self.tx() as conn:
            row = conn.execute(select(*cols).where(jobs.c.id == job_id)).first()
            if row is None:
                raise TaskNotFound(f"no job with id {job_id}")
            out = self._job_dict(row)
            out["history"] = [
                {"state": h.state, "time": h.time, "info": h.info}
                for h in conn.execute(select(job_status).where(job_status.c.job_id == job_id)
                                      .order_by(job_status.c.id))]
            out["attempts"] = [r[0] for r in conn.execute(
                select(jobs.c.id).where(jobs.c.task_id == row.task_id,
                                        jobs.c.job_index == row.job_index)
                .order_by(jobs.c.attempt))]
        return out

    @staticmethod
    def _job_dict(r) -> dict:
        d = dict(r._mapping)
        d.pop("payload", None)
        exc = d.pop("error_pickle", None)
        d["error_exception"] = base64.b64encode(exc).decode() if exc else None
        d["broker_info"] = loads(d.get("broker_info"))
        return d

    # ---- commands (pbook's verbs) --------------------------------------------------
    def kill_task(self: StoreBase, task_id: int) -> Changes:
        """Abort a task: waiting jobs are cancelled at once; jobs on pilots are marked
        cancelled and their pilots are told to kill them at their next heartbeat."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            task = self._task_row(conn, task_id)
            if TaskState(task.state) in (T.DONE, T.ABORTED):
                raise TaskStateError(f"task {task_id} is {task.state}: nothing to kill")
            victims = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.job_index, jobs.c.attempt, jobs.c.site)
                .where(jobs.c.task_id == task_id, jobs.c.state.not_in(FINAL))
                .order_by(jobs.c.id)
                .with_for_update()  # wait for a report in flight, then see its outcome
            ).all()
            self._cancel(conn, victims, task_id, t, "killed by user", changes)
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(open=False))
            self._set_task_state(conn, task_id, task.state, T.ABORTED, changes, "killed by user")
        return changes

    def fail_task(self: StoreBase, task_id: int, message: str, options: dict) -> Changes:
        """End a task as ``failed`` for a reason found on the server (results that cannot be
        merged): waiting and running jobs are cancelled as by ``kill``, the task takes no
        more jobs, ``options`` are added to its options.  A task already final keeps its
        state and message and gets only the options."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            task = self._task_row(conn, task_id)
            # jobs first, then their task: the order in which reports lock them
            victims = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.job_index, jobs.c.attempt, jobs.c.site)
                .where(jobs.c.task_id == task_id, jobs.c.state.not_in(FINAL))
                .order_by(jobs.c.id).with_for_update()).all()
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(
                options=dumps(loads(task.options) | options), open=False, modified_at=t))
            if TaskState(task.state) in TASK_FINAL:
                return changes
            self._cancel(conn, victims, task_id, t, f"task failed: {message}", changes)
            self._set_task_state(conn, task_id, task.state, T.FAILED, changes, message)
        return changes

    def reopen_task(self: StoreBase, task_id: int) -> None:
        """Let a task take jobs again and not end by itself (see ``close_task``)."""
        with self.tx() as conn:
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(open=True))

    def _cancel(self, conn: Connection, victims, task_id: int, t: float, why: str,
                changes: Changes) -> None:
        if not victims:
            return
        ids = [v.id for v in victims]
        conn.execute(update(jobs).where(jobs.c.id.in_(ids), jobs.c.state.not_in(FINAL)).values(
            state=str(J.CANCELLED), modified_at=t, ended_at=t,
            error_category="killed", error_message=why))
        self._history(conn, [(v.id, (J.CANCELLED,), t, why) for v in victims])
        for v in victims:
            changes.jobs.append(JobChange(v.id, task_id, v.job_index, v.attempt, v.site,
                                          str(J.CANCELLED), "killed", why))

    def kill_jobs(self: StoreBase, job_ids: list[int]) -> Changes:
        """Cancel single attempts (an executor's ``Future.cancel``)."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            victims = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.task_id, jobs.c.job_index,
                       jobs.c.attempt, jobs.c.site)
                .where(jobs.c.id.in_(job_ids), jobs.c.state.not_in(FINAL))
                .order_by(jobs.c.id).with_for_update()).all()
            by_task: dict[int, list] = {}
            for v in victims:
                by_task.setdefault(v.task_id, []).append(v)
            for task_id, vs in by_task.items():
                self._cancel(conn, vs, task_id, t, "killed by user", changes)
            self._check_tasks(conn, list(by_task), changes)
        return changes

    def retry_task(self: StoreBase, task_id: int) -> tuple[list[int], Changes]:
        """pbook's retry: a new attempt for every logical job whose last attempt failed
        or was cancelled; finished jobs, and jobs their client cancelled before they
        ran, are left alone."""
        changes = Changes()
        with self.tx() as conn:
            task = self._task_row(conn, task_id, lock=True)
            if TaskState(task.state) not in TASK_RETRYABLE:
                raise TaskStateError(
                    f"task {task_id} is {task.state}: only ready, running, finished or failed "
                    "tasks can be retried")
            latest = conn.execute(
                select(jobs).where(jobs.c.id.in_(self._latest_attempts(conn, task_id)),
                                   jobs.c.state.in_([str(s) for s in JOB_RETRYABLE]),
                                   or_(jobs.c.error_message.is_(None),
                                       jobs.c.error_message != CANCELLED_BY_CLIENT))
            ).all()
            done = {r[0] for r in conn.execute(
                select(results.c.job_index).where(results.c.task_id == task_id))}
            latest = [r for r in latest if r.job_index not in done]
            if not latest:
                return [], changes
            if TaskState(task.state) in TASK_FINAL:
                self._set_task_state(conn, task_id, task.state, T.RUNNING, changes,
                                     "retried by user")
            options = loads(task.options)
            attempts = [self._next_attempt(r, _sites_of(task.site), frozenset(), options)
                        for r in latest]
            for a in attempts:  # a user's retry grants one more attempt than the last one
                a["max_attempts"] = max(a["max_attempts"], a["attempt"])
            ids = self._insert_attempts(conn, attempts, changes)
        return ids, changes

    @staticmethod
    def _next_attempt(row, sites_: tuple[str, ...], avoid: frozenset[str], options: dict) -> dict:
        info = loads(row.broker_info)
        sites_ = tuple(info.get("sites") or sites_)
        return {
            "task_id": row.task_id, "job_index": row.job_index, "attempt": row.attempt + 1,
            "payload": row.payload, "sites": sites_, "avoid": avoid,
            "near": frozenset(info.get("near") or ()),
            "priority": row.priority, "cores": row.cores, "memory_mb": row.memory_mb,
            "walltime_s": row.walltime_s, "max_attempts": row.max_attempts,
            "retry_of": row.id,
        }

    def results(self: StoreBase, task_id: int, indices: list[int] | None = None) -> list[dict]:
        """Results by logical job: ``{"index", "job_id", "data"}`` with the pickled bytes."""
        with self.tx() as conn:
            self._task_row(conn, task_id)
            q = select(results).where(results.c.task_id == task_id)
            if indices is not None:
                q = q.where(results.c.job_index.in_(indices))
            rows = conn.execute(q.order_by(results.c.job_index)).all()
        out = []
        for r in rows:
            data = r.inline if r.inline is not None else (self.result_dir / r.ref).read_bytes()
            out.append({"index": r.job_index, "job_id": r.job_id, "data": data})
        return out

    def failures(self: StoreBase, task_id: int) -> list[dict]:
        """The final failed attempt of each logical job that has no result."""
        with self.tx() as conn:
            self._task_row(conn, task_id)
            cols = [c for c in jobs.c if c.name != "payload"]
            q = select(*cols).where(
                jobs.c.id.in_(self._latest_attempts(conn, task_id)),
                or_(jobs.c.state == str(J.FAILED), jobs.c.state == str(J.CANCELLED)),
            )
            return [self._job_dict(r) for r in conn.execute(q.order_by(jobs.c.job_index))]

    def on_pilot_jobs(self: StoreBase, task_id: int) -> list[int]:
        with self.tx() as conn:
            return [r[0] for r in conn.execute(select(jobs.c.id).where(and_(
                jobs.c.task_id == task_id, jobs.c.state.in_([str(s) for s in JOB_ON_PILOT]))))]
