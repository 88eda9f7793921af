"""Jobs in the store: dispatch to pilots, their reports, heartbeats, and failures.

In the order a job travels: ``acquire`` (atomic ``activated → sent``), its counterpart
``cancel_waiting`` (atomic ``activated → cancelled``, a client's ``Future.cancel``),
``apply_updates`` (the pilot's bulk reports, guarded by attempt and pilot), ``fail_jobs``
(which asks the retry rules what comes next), and the watchdog's ``fail_lost``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, bindparam, exists, func, insert, select, update

from panda_lab.model import (
    JOB_FINAL,
    JOB_ON_PILOT,
    JOB_WAITING,
    Action,
    JobState,
    TaskState,
    TransitionError,
    decide,
    job_path,
)
from panda_lab.store.base import INLINE_LIMIT, Changes, JobChange, StoreBase, loads, now
from panda_lab.store.schema import jobs, pilots, results, sites, tasks
from panda_lab.store.tasks import CANCELLED_BY_CLIENT, TaskNotFound, _sites_of
from panda_lab.text import clean

J = JobState
ON_PILOT = [str(s) for s in JOB_ON_PILOT]
WAITING = [str(s) for s in JOB_WAITING]

_UPDATE = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == bindparam("b_old"))
    .values(
        state=bindparam("b_state"),
        modified_at=bindparam("b_time"),
        heartbeat_at=bindparam("b_time"),
        started_at=func.coalesce(jobs.c.started_at, bindparam("b_started")),
        ended_at=bindparam("b_ended"),
        error_category=bindparam("b_cat"),
        error_message=bindparam("b_msg"),
        error_traceback=bindparam("b_tb"),
        error_pickle=bindparam("b_exc"),
        stdout_tail=func.coalesce(bindparam("b_out"), jobs.c.stdout_tail),
        stderr_tail=func.coalesce(bindparam("b_err"), jobs.c.stderr_tail),
    )
)

# A running job's output so far (the pilot sends it while the job runs): no state change.
_OUTPUT = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.state == bindparam("b_old"))
    .values(
        heartbeat_at=bindparam("b_time"),
        stdout_tail=func.coalesce(bindparam("b_out"), jobs.c.stdout_tail),
        stderr_tail=func.coalesce(bindparam("b_err"), jobs.c.stderr_tail),
    )
)


def _text(value: object) -> object:
    """Text for a ``text`` column: PostgreSQL refuses NUL, and neither database takes a
    lone surrogate (the rule of :mod:`panda_lab.text`; reports arrive clean already)."""
    return clean(value) if isinstance(value, str) else value


class JobStore:
    # ---- dispatch ------------------------------------------------------------------
    def acquire(self: StoreBase, pilot_id: int, site: str, n: int,
                held: list[int] | None = None) -> tuple[list[dict], Changes]:
        """Hand up to ``n`` activated jobs of ``site`` to a pilot, atomically; the jobs it
        already ``held`` are heartbeated on the way."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            self._touch_pilot(conn, pilot_id, t, held)
            pick = (select(jobs.c.id)
                    .where(jobs.c.site == site, jobs.c.state == str(J.ACTIVATED))
                    .order_by(jobs.c.priority.desc(), jobs.c.id).limit(n)
                    .with_for_update(skip_locked=True))
            if conn.dialect.name == "postgresql":
                # PostgreSQL may plan ``IN (... LIMIT n)`` as a nested-loop semi-join that
                # re-runs the subquery for every outer row; each run skips the rows already
                # updated and picks more, so a pilot got more than ``n`` jobs.  Lock the
                # ids first (held until commit), then update exactly those.
                target = jobs.c.id.in_(list(conn.execute(pick).scalars()))
            else:
                target = jobs.c.id.in_(pick.scalar_subquery())
            rows = conn.execute(
                update(jobs)
                .where(target, jobs.c.state == str(J.ACTIVATED))
                .values(state=str(J.SENT), pilot_id=pilot_id, modified_at=t, heartbeat_at=t)
                .returning(jobs.c.id, jobs.c.task_id, jobs.c.job_index, jobs.c.attempt,
                           jobs.c.payload, jobs.c.walltime_s, jobs.c.cores, jobs.c.priority)
            ).all()
            if not rows:
                conn.execute(update(pilots).where(pilots.c.id == pilot_id)
                             .values(heartbeat_at=t))
                return [], changes
            rows.sort(key=lambda r: (-r.priority, r.id))
            self._history(conn, [(r.id, (J.SENT,), t, f"pilot {pilot_id}") for r in rows])
            task_ids = sorted({r.task_id for r in rows})
            for task_id in task_ids:
                self._set_task_state(conn, task_id, TaskState.READY, TaskState.RUNNING, changes)
            common, limits = {}, {}
            for task_id, has_common, options in conn.execute(
                    select(tasks.c.id, tasks.c.common.is_not(None), tasks.c.options)
                    .where(tasks.c.id.in_(task_ids))):
                common[task_id] = has_common
                limits[task_id] = loads(options).get("output_limit")
            conn.execute(update(pilots).where(pilots.c.id == pilot_id).values(heartbeat_at=t))
        out = []
        for r in rows:
            changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, site,
                                          str(J.SENT)))
            out.append({"id": r.id, "task": r.task_id, "index": r.job_index,
                        "attempt": r.attempt, "payload": r.payload, "walltime_s": r.walltime_s,
                        "cores": r.cores, "common": bool(common.get(r.task_id)),
                        "output_limit": limits.get(r.task_id)})
        return out, changes

    def cancel_waiting(self: StoreBase, task_id: int,
                       indices: list[int]) -> tuple[list[int], Changes]:
        """Cancel the logical jobs ``indices`` of a task that never reached a pilot.

        One compare-and-set, the counterpart of ``acquire``'s ``activated → sent``: the
        waiting attempt (defined, assigned or activated) of each index becomes
        ``cancelled``, provided that no attempt of that index was ever handed to a
        pilot.  A job a pilot holds (sent, starting, running), or whose earlier attempt
        ran and is being retried, is left alone, so it is never said to be cancelled
        while it runs, or after it ran: ``concurrent.futures``' contract, where
        ``cancel()`` fails once a call was handed to a worker.  Returns the indices
        cancelled (shape ``[int]``, in ascending order) and the changes to publish."""
        t = now()
        changes = Changes()
        if not indices:
            return [], changes
        other = jobs.alias("other")
        ran = exists().where(other.c.task_id == jobs.c.task_id,
                             other.c.job_index == jobs.c.job_index,
                             other.c.pilot_id.is_not(None))
        with self.tx() as conn:
            self._task_row(conn, task_id)  # TaskNotFound for a task that is not there
            rows = conn.execute(
                update(jobs)
                .where(jobs.c.task_id == task_id, jobs.c.job_index.in_(sorted(set(indices))),
                       jobs.c.state.in_(WAITING), ~ran)
                .values(state=str(J.CANCELLED), modified_at=t, ended_at=t,
                        error_category="killed", error_message=CANCELLED_BY_CLIENT)
                .returning(jobs.c.id, jobs.c.job_index, jobs.c.attempt, jobs.c.site)
            ).all()
            if not rows:
                return [], changes
            rows.sort(key=lambda r: r.job_index)
            self._history(conn, [(r.id, (J.CANCELLED,), t, CANCELLED_BY_CLIENT) for r in rows])
            for r in rows:
                changes.jobs.append(JobChange(r.id, task_id, r.job_index, r.attempt, r.site,
                                              str(J.CANCELLED), "killed", CANCELLED_BY_CLIENT))
            self._check_tasks(conn, [task_id], changes)
        return [r.job_index for r in rows], changes

    def task_common(self: StoreBase, task_id: int) -> bytes | None:
        with self.tx() as conn:
            return conn.execute(select(tasks.c.common).where(tasks.c.id == task_id)).scalar()

    # ---- reports ---------------------------------------------------------------------
    def apply_updates(self: StoreBase, pilot_id: int, updates: list[dict],
                      held: list[int] | None = None) -> tuple[Changes, list[dict]]:
        """Apply a pilot's bulk report.  Returns the changes and the ignored updates, each
        with the reason (stale attempt, not this pilot's job, already final, ...)."""
        t = now()
        changes = Changes()
        ignored: list[dict] = []
        with self.tx() as conn:
            ids = [u["id"] for u in updates]
            cols = [c for c in jobs.c if c.name != "payload"]
            current = {r.id: r for r in conn.execute(
                select(*cols).where(jobs.c.id.in_(ids)).with_for_update())}
            params, history, failed, finished, output = [], [], [], [], []
            seen: set[int] = set()
            for u in updates:
                row = current.get(u["id"])
                why = self._stale(row, u, pilot_id, seen)
                if why:
                    ignored.append({"id": u["id"], "reason": why})
                    continue
                seen.add(row.id)
                if (u["state"] == J.FINISHED and u.get("result") is None
                        and not u.get("result_ref")):
                    # Nothing to count: the work is lost, so let the retry rules act.
                    u = {**u, "state": str(J.FAILED), "error": {
                        "category": "system", "message": "reported finished without a result"}}
                try:
                    path = job_path(row.state, u["state"])
                except TransitionError as exc:
                    ignored.append({"id": row.id, "reason": str(exc)})
                    continue
                out, err_out = _text(u.get("stdout")), _text(u.get("stderr"))
                if not path:
                    if out or err_out:
                        output.append({"b_id": row.id, "b_old": row.state, "b_time": t,
                                       "b_out": out, "b_err": err_out})
                    continue
                new = path[-1]
                err = {k: _text(v) for k, v in (u.get("error") or {}).items()}
                started = u.get("started_at") if (J.STARTING in path or J.RUNNING in path) else None
                params.append({
                    "b_id": row.id, "b_old": row.state, "b_state": str(new), "b_time": t,
                    "b_started": started, "b_ended": t if new in JOB_FINAL else None,
                    "b_cat": err.get("category"), "b_msg": err.get("message"),
                    "b_tb": err.get("traceback"), "b_exc": err.get("exception"),
                    "b_out": out, "b_err": err_out,
                })
                history.append((row.id, path, t, ""))
                change = JobChange(row.id, row.task_id, row.job_index, row.attempt, row.site,
                                   str(new), err.get("category"), err.get("message"))
                changes.jobs.append(change)
                if new == J.FINISHED:
                    finished.append((row, u, change))
                elif new == J.FAILED:
                    failed.append((row, err))
            if output:
                conn.execute(_OUTPUT, output)
            if params:
                conn.execute(_UPDATE, params)
                self._history(conn, history)
            self._store_results(conn, finished)
            if finished:
                conn.execute(update(pilots).where(pilots.c.id == pilot_id)
                             .values(jobs_done=pilots.c.jobs_done + len(finished)))
            self._retry_or_fail(conn, failed, changes)
            self._touch_pilot(conn, pilot_id, t, held)
            self._check_tasks(conn, [c.task_id for c in changes.jobs
                                     if JobState(c.state) in JOB_FINAL], changes)
        return changes, ignored

    @staticmethod
    def _stale(row, u: dict, pilot_id: int, seen: set[int]) -> str | None:
        if row is None:
            return "unknown job"
        if row.id in seen:
            return "duplicate update in one report"
        if int(u.get("attempt", -1)) != row.attempt:
            return f"stale attempt {u.get('attempt')} (current {row.attempt})"
        if row.pilot_id != pilot_id:
            return f"job is held by pilot {row.pilot_id}, not {pilot_id}"
        if JobState(row.state) in JOB_FINAL:
            return f"job is already {row.state}"
        return None

    def _store_results(self, conn: Connection, finished: list) -> None:
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
                continue  # counted once, whatever happens
            data: bytes | None = u.get("result")
            ref = u.get("result_ref")
            if data is not None and len(data) > INLINE_LIMIT:
                ref = self.write_result(r.task_id, r.id, data)
                data = None
            size = len(data) if data is not None else (self.result_dir / ref).stat().st_size
            rows.append({"task_id": r.task_id, "job_index": r.job_index, "job_id": r.id,
                         "inline": data, "ref": ref, "size": size})
            change.result = data
            existing.add((r.task_id, r.job_index))
        if rows:
            conn.execute(insert(results), rows)

    def write_result(self: StoreBase, task_id: int, job_id: int, data: bytes) -> str:
        """Write a large result to the result store; the database keeps the reference."""
        rel = f"{task_id}/{job_id}.pkl"
        path = self.result_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return rel

    def result_ref_ok(self: StoreBase, ref: str) -> bool:
        return (self.result_dir / ref).is_file()

    # ---- full output -------------------------------------------------------------------
    def write_output(self: StoreBase, task_id: int, job_id: int, stream: str,
                     data: bytes) -> int:
        """Keep an attempt's full ``stream`` (UTF-8 bytes) next to its results; returns its
        size.  Raises :class:`TaskNotFound` when the job is not one of ``task_id``."""
        with self.tx() as conn:
            owner = conn.execute(select(jobs.c.task_id).where(jobs.c.id == job_id)).scalar()
        if owner != task_id:
            raise TaskNotFound(f"no job {job_id} in task {task_id}")
        path = self._output_path(task_id, job_id, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return len(data)

    def job_output(self: StoreBase, job_id: int, stream: str) -> str:
        """All that is kept of an attempt's ``stream`` (``stdout`` or ``stderr``): the
        full output a pilot kept, else the tail in the job's row ("" when it printed
        nothing).  Raises :class:`TaskNotFound` for an unknown job."""
        column = jobs.c.stdout_tail if stream == "stdout" else jobs.c.stderr_tail
        with self.tx() as conn:
            row = conn.execute(select(jobs.c.task_id, column).where(jobs.c.id == job_id)).first()
        if row is None:
            raise TaskNotFound(f"no job with id {job_id}")
        path = self._output_path(row[0], job_id, stream)
        if path.is_file():
            return path.read_text("utf-8", errors="replace")
        return row[1] or ""

    def _output_path(self: StoreBase, task_id: int, job_id: int, stream: str) -> Path:
        return self.result_dir / str(task_id) / f"{job_id}.{stream}"

    # ---- failures and retries ------------------------------------------------------
    def _retry_or_fail(self, conn: Connection, failed: list, changes: Changes) -> None:
        """Ask the retry rules about each failed attempt; insert the retries they allow."""
        if not failed:
            return
        retry_rows = []
        for row, err in failed:
            d = decide(err.get("category") or "system", err.get("message") or "",
                       row.attempt, row.max_attempts)
            if d.action is Action.RETRY:
                retry_rows.append((row.id, frozenset({row.site}) if d.other_site else frozenset()))
        if not retry_rows:
            return
        avoid = dict(retry_rows)
        full = conn.execute(select(jobs).where(jobs.c.id.in_(list(avoid)))).all()
        task_rows = {r.id: r for r in conn.execute(
            select(tasks.c.id, tasks.c.site, tasks.c.state, tasks.c.options)
            .where(tasks.c.id.in_({r.task_id for r in full})))}
        attempts = []
        for r in full:
            task = task_rows[r.task_id]
            if task.state == TaskState.ABORTED:
                continue
            attempts.append(self._next_attempt(r, _sites_of(task.site), avoid[r.id],
                                               loads(task.options)))
        if attempts:
            self._insert_attempts(conn, attempts, changes)

    def fail_jobs(self: StoreBase, job_ids: list[int], category: str, message: str) -> Changes:
        """Fail attempts that are still on pilots (the watchdog's hammer), then retry."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            rows = conn.execute(select(*[c for c in jobs.c if c.name != "payload"])
                                .where(jobs.c.id.in_(job_ids), jobs.c.state.in_(ON_PILOT))
                                .with_for_update()).all()
            if not rows:
                return changes
            conn.execute(_UPDATE, [{
                "b_id": r.id, "b_old": r.state, "b_state": str(J.FAILED), "b_time": t,
                "b_started": None, "b_ended": t, "b_cat": category, "b_msg": message,
                "b_tb": None, "b_exc": None, "b_out": None, "b_err": None} for r in rows])
            self._history(conn, [(r.id, (J.FAILED,), t, message) for r in rows])
            for r in rows:
                changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, r.site,
                                              str(J.FAILED), category, message))
            self._retry_or_fail(conn, [(r, {"category": category, "message": message})
                                       for r in rows], changes)
            self._check_tasks(conn, [r.task_id for r in rows], changes)
        return changes

    def rebroker_offline(self: StoreBase) -> Changes:
        """Jobs waiting at an offline site go back to brokerage: the waiting attempt is
        closed (``activated → closed``) and a new one placed on an online site it
        accepts.  A job that accepts only offline sites keeps waiting."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            states = dict(conn.execute(select(sites.c.name, sites.c.state)).all())
            online = {n for n, s in states.items() if s == "online"}
            offline = [n for n, s in states.items() if s != "online"]
            if not offline or not online:
                return changes
            rows = conn.execute(select(jobs).where(jobs.c.site.in_(offline),
                                                   jobs.c.state == str(J.ACTIVATED))
                                .with_for_update()).all()
            movable = []
            for r in rows:
                allowed = set(loads(r.broker_info).get("sites") or ["ANY"])
                if "ANY" in allowed or allowed & online:
                    movable.append(r)
            if not movable:
                return changes
            why = "site offline: handed back to brokerage"
            conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in movable]),
                                            jobs.c.state == str(J.ACTIVATED))
                         .values(state=str(J.CLOSED), modified_at=t, ended_at=t,
                                 error_category="system", error_message=why))
            self._history(conn, [(r.id, (J.CLOSED,), t, why) for r in movable])
            for r in movable:
                changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, r.site,
                                              str(J.CLOSED), "system", why))
            task_sites = dict(conn.execute(select(tasks.c.id, tasks.c.site).where(
                tasks.c.id.in_({r.task_id for r in movable}))).all())
            attempts = []
            for r in movable:
                a = self._next_attempt(r, _sites_of(task_sites[r.task_id]),
                                       frozenset({r.site}), {})
                a["max_attempts"] = r.max_attempts + 1  # not the job's fault: no attempt lost
                attempts.append(a)
            self._insert_attempts(conn, attempts, changes)
        return changes

    def lost_jobs(self: StoreBase, heartbeat_before: float, sent_before: float) -> list[dict]:
        """Attempts on pilots whose heartbeat stopped, or stuck in ``sent`` too long."""
        with self.tx() as conn:
            q = select(jobs.c.id, jobs.c.state, jobs.c.pilot_id, jobs.c.heartbeat_at,
                       jobs.c.modified_at).where(jobs.c.state.in_(ON_PILOT))
            out = []
            for r in conn.execute(q.where(jobs.c.heartbeat_at < heartbeat_before)):
                out.append({"id": r.id, "pilot": r.pilot_id, "why": "lost heartbeat"})
            for r in conn.execute(q.where(jobs.c.state == str(J.SENT),
                                          jobs.c.modified_at < sent_before,
                                          jobs.c.heartbeat_at >= heartbeat_before)):
                out.append({"id": r.id, "pilot": r.pilot_id, "why": "stuck in sent"})
            return out

    def grace_after_restart(self: StoreBase) -> int:
        """A server that was down heard no heartbeat: give every job on a pilot, and every
        pilot, a fresh start, so the watchdog judges them from the restart, not from before
        the outage.  Returns the number of jobs concerned."""
        t = now()
        with self.tx() as conn:
            n = conn.execute(update(jobs).where(jobs.c.state.in_(ON_PILOT))
                             .values(heartbeat_at=t)).rowcount
            conn.execute(update(pilots).where(pilots.c.state == "running")
                         .values(heartbeat_at=t))
        return n

    def _touch_pilot(self, conn: Connection, pilot_id: int, t: float,
                     held: list[int] | None = None) -> None:
        """The pilot lives, and so do the jobs it says it holds: only those.  A job the
        pilot lost track of must go stale, so the watchdog can retry it."""
        conn.execute(update(pilots).where(pilots.c.id == pilot_id).values(heartbeat_at=t))
        if held:
            conn.execute(update(jobs).where(jobs.c.id.in_(held), jobs.c.pilot_id == pilot_id,
                                            jobs.c.state.in_(ON_PILOT))
                         .values(heartbeat_at=t))
