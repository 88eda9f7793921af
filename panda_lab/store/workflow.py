"""The store's workflow verbs: each is ONE transaction (``with self.tx() as conn:``) over
the row repositories (:mod:`panda_lab.store.rows`) and the pure policies of the model
(:mod:`panda_lab.model.brokerage`, :mod:`panda_lab.model.retry`, the states).

The path of a job, in the order of this module:

1. submit and split: :meth:`Workflow.create_task` (and :meth:`Workflow.add_jobs` for an
   open task) makes the task, and :meth:`Workflow._split` its job rows, from the job specs
   the splitter made (the server's JEDI splitter for an analysis);
2. broker: :meth:`Workflow._place` asks :func:`panda_lab.model.brokerage.choose` for a
   site per attempt, on the site loads read in the same transaction, and inserts the
   attempts ``activated``;
3. dispatch: :meth:`Workflow.acquire` hands activated jobs to a pilot
   (``activated → sent``, atomic);
4. run and report: :meth:`Workflow.apply_updates` applies a pilot's bulk report
   (``sent → starting → running → finished | failed``), keeps results, and makes the
   next attempt of a failed job by :func:`panda_lab.model.retry.next_attempt`;
5. merge: the analysis service's merger folds finished results into the task's
   accumulator (``save_accumulator``);
6. notify: every verb returns the :class:`~panda_lab.store.base.Changes` it made, which
   the server announces with ``Server.publish`` (server/app.py).

Then the verbs that end or move jobs by other roads: the watchdog's
(:meth:`Workflow.fail_jobs`, :meth:`Workflow.pilots_gone`, :meth:`Workflow.rebroker_offline`,
:meth:`Workflow.close_expired_leases`) and the client's or user's
(:meth:`Workflow.close_task`, :meth:`Workflow.cancel_waiting`, :meth:`Workflow.kill_task`,
:meth:`Workflow.kill_jobs`, :meth:`Workflow.fail_task`, :meth:`Workflow.retry_task`).
Reads are in :mod:`panda_lab.store.reads`; small writes that move no job
(pilots, sites, datasets, leases, settings) in :mod:`panda_lab.store.admin`.
"""

from __future__ import annotations

from collections.abc import Collection

import orjson
from sqlalchemy import Connection
from sqlalchemy.engine import Row

from panda_lab.model import JOB_FINAL, ErrorCategory, JobState, PilotState, TaskState
from panda_lab.model.brokerage import (
    ANY,
    NETWORK_MODES,
    Policy,
    Request,
    filter_summary,
    sites_of,
)
from panda_lab.model.lease import CLIENT_GONE
from panda_lab.model.retry import Cause, NextAttempt, Previous, accepted_sites, next_attempt
from panda_lab.model.states import TASK_FINAL, TASK_RETRYABLE, TransitionError, job_path
from panda_lab.store.admin import Admin
from panda_lab.store.base import Changes, JobChange, collector_paused, loads, now
from panda_lab.store.errors import TaskNotFound, TaskStateError
from panda_lab.store.rebroker import Rebrokerage
from panda_lab.store.rows import datasets as dataset_rows
from panda_lab.store.rows import jobs as job_rows
from panda_lab.store.rows import links as link_rows
from panda_lab.store.rows import pilots as pilot_rows
from panda_lab.store.rows import results as result_rows
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows import staging as staging_rows
from panda_lab.store.rows import submissions as submission_rows
from panda_lab.store.rows import tasks as task_rows
from panda_lab.store.rows.holders import data_key
from panda_lab.store.rows.submissions import SubmissionKey

J = JobState
T = TaskState


class Workflow(Rebrokerage, Admin):
    """The store: the verbs that move tasks and jobs, each one transaction."""

    # ---- 1. submit and split ---------------------------------------------------------
    def create_task(
        self,
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
        key: SubmissionKey | None = None,
    ) -> tuple[int, list[int], Changes]:
        """Create a task and its first jobs, brokered and activated in one transaction.

        ``jobs_`` are job specs ``{"payload": bytes, optional "site", "priority", "cores",
        "memory_mb", "walltime_s", "max_attempts"}`` (defaults from ``options``);
        ``job_chunks`` the input ranges of each job of an analysis task.  An open task
        opened by a client gets a lease of ``lease_s`` seconds, which its client renews
        (see :mod:`panda_lab.model.lease`); ``None``: the server holds it.  ``key``: the
        request's idempotency key, recorded with the work (store/rows/submissions.py).
        Returns ``(task id, job ids in spec order, changes)``.  Raises ``BrokerageError``
        for an unknown site (and then creates nothing)."""
        t = now()
        sites_ = sites_of(site)
        changes = Changes()
        with self.tx() as conn:
            task_id = task_rows.insert_task(
                conn, name=name, owner=owner, sites=sites_, options=options or {},
                common=common, open_=open_,
                lease_until=t + lease_s if open_ and lease_s else None, t=t)
            task_rows.set_state(conn, task_id, T.DEFINED, T.READY, changes)
            if state != T.READY:
                task_rows.set_state(conn, task_id, T.READY, state, changes)
            ids = self._split(conn, task_id, jobs_, sites_, options or {}, changes,
                              job_chunks, scout=state == T.SCOUTING, key=key)
            if not open_ and not jobs_:
                task_rows.end_if_complete(conn, [task_id], changes)
        return task_id, ids, changes

    def add_jobs(self, task_id: int, jobs_: list[dict],
                 job_chunks: list[list[dict]] | None = None,
                 advance: tuple[TaskState, TaskState] | None = None,
                 options: dict | None = None,
                 key: SubmissionKey | None = None) -> tuple[list[int], Changes]:
        """Add jobs (specs as for :meth:`create_task`) to an open task; in the same
        transaction, move the task from ``advance[0]`` to ``advance[1]`` and add
        ``options`` to its options (the sizing after scouting is one step: a crash leaves
        it all undone or all done); ``key`` as for :meth:`create_task`.  Returns
        ``(job ids, changes)``.  Raises
        ``TaskNotFound``, and ``TaskStateError`` for a closed or aborted task."""
        changes = Changes()
        with self.tx() as conn:
            task = task_rows.task_row(conn, task_id)
            if not task.open:
                why = f" ({task.message})" if task.message.startswith(CLIENT_GONE) else ""
                raise TaskStateError(f"task {task_id} is closed{why}: it takes no new jobs")
            if task.state == T.ABORTED:
                raise TaskStateError(f"task {task_id} was aborted")
            if options:
                task_rows.add_options(conn, task_id, task.options, options)
            ids = self._split(conn, task_id, jobs_, sites_of(task.site), loads(task.options),
                              changes, job_chunks, key=key)
            if advance is not None:
                task_rows.set_state(conn, task_id, advance[0], advance[1], changes)
        return ids, changes

    def _split(self, conn: Connection, task_id: int, specs: list[dict],
               sites_: tuple[str, ...], options: dict, changes: Changes,
               job_chunks: list[list[dict]] | None = None, scout: bool = False,
               key: SubmissionKey | None = None) -> list[int]:
        """The job rows of specs: indices reserved, chunks kept, first attempts placed;
        the request's ``key`` recorded with them."""
        if key is not None:  # in the transaction that makes the work: never apart from it
            first = task_rows.reserve_indices(conn, task_id, 0)
            submission_rows.record(conn, key, task_id, first, len(specs))
        if not specs:
            return []
        start = task_rows.reserve_indices(conn, task_id, len(specs))
        if job_chunks is not None:
            # The input ranges of an analysis job, in the transaction that makes the job.
            dataset_rows.insert_chunks(conn, task_id, start, job_chunks, scout)

        def request(i: int, sites: tuple[str, ...]) -> Request:
            # what an analysis job reads, and where it is stored: brokerage weighs it
            return dataset_rows.input_request(job_chunks[i], sites) if job_chunks \
                else Request(sites)

        # the task's brokerage policy (a comparison), else its network term, else the server's
        mode = options.get("policy") or options.get("network")
        first = []
        for i, spec in enumerate(specs):
            first.append(({
                "task_id": task_id, "job_index": start + i, "attempt": 1,
                "payload": spec["payload"],
                "priority": int(spec.get("priority", options.get("priority", 0))),
                "cores": int(spec.get("cores", options.get("cores", 1))),
                "memory_mb": int(spec.get("memory_mb", options.get("memory_mb", 0))),
                "walltime_s": float(spec.get("walltime_s", options.get("walltime_s", 0.0))),
                "max_attempts": int(spec.get("max_attempts", options.get("max_attempts", 3))),
                "retry_of": None, "network": mode,
                "data_key": data_key(job_chunks[i]) if job_chunks else None,
            }, request(i, sites_of(spec["site"]) if spec.get("site") else sites_)))
        return self._place(conn, first, changes)

    # ---- 2. broker ---------------------------------------------------------------------
    def _place(self, conn: Connection, attempts: list[tuple[dict, Request]],
               changes: Changes) -> list[int]:
        """Broker attempts (job row values without site, plus ``network``: the task's
        network term (``active``/``passive``/``off``) or brokerage policy, or None for
        the server's; with their request) on the site loads and
        the links of this transaction, and insert them ``activated``; the filters' counts
        are added to each task's brokerage summary.  Returns their ids."""
        if not attempts:
            return []
        with collector_paused():  # a decision per job: base.collector_paused says why
            return self._place_all(conn, attempts, changes)

    def _place_all(self, conn: Connection, attempts: list[tuple[dict, Request]],
                   changes: Changes) -> list[int]:
        t = now()
        self._learn_now(conn)  # brokerage weighs what every report measured
        loads_ = site_rows.loads_(conn)
        links = link_rows.effective_links(conn, t, self.link_window)
        groups: dict[str, list[int]] = {}
        for i, (values, _) in enumerate(attempts):
            groups.setdefault(values.get("network") or self.network, []).append(i)
        choices: list = [None] * len(attempts)
        for mode, idx in groups.items():  # one call per policy; the loads carry over
            for i, c in zip(idx, self.broker.choose(
                    [attempts[i][1] for i in idx], loads_, links=links,
                    policy=NETWORK_MODES.get(mode) or Policy(mode), now=t), strict=True):
                choices[i] = c
        rows = []
        per_task: dict[int, list] = {}
        for (values, req), choice in zip(attempts, choices, strict=True):
            mode = values.get("network") or self.network
            # The sites the job accepts, where its data is and what it reads are kept
            # with the decision, so a retry stays within the sites and is weighed alike.
            info = {**choice.info, "sites": list(req.sites), "near": sorted(req.near),
                    "network": mode}
            if req.events or req.input_bytes:
                info["input"] = {"events": req.events, "bytes": req.input_bytes,
                                 "files": list(req.files), "requests": req.read_requests}
                if req.file_bytes:
                    info["input"]["file_bytes"] = req.file_bytes
            per_task.setdefault(values["task_id"], []).append(choice)
            rows.append({**{k: v for k, v in values.items() if k != "network"},
                         "state": str(J.ACTIVATED), "site": choice.site,
                         # how it reads its input, and over which link: the site's
                         # readers of each link, and what the pilot is told to do
                         "access": choice.info.get("access"),
                         "read_from": choice.info.get("read_from"),
                         "created_at": t, "modified_at": t,
                         # orjson: the decision with its candidates is the largest JSON
                         # written per job, and json.dumps would double brokerage's cost
                         "broker_info": orjson.dumps(info).decode()})
        task_rows.add_filter_summary(conn, {task: filter_summary(cs)
                                            for task, cs in per_task.items()})
        return job_rows.insert_attempts(conn, rows, t, changes)

    @staticmethod
    def _again(row: Row, nxt: NextAttempt) -> tuple[dict, Request]:
        """The next attempt of a job (its last attempt's ``row``), to place: with the
        input and the network term its first attempt was weighed by."""
        info = loads(row.broker_info)
        read = info.get("input") or {}
        return ({"task_id": row.task_id, "job_index": row.job_index, "attempt": nxt.attempt,
                 "payload": row.payload, "priority": row.priority, "cores": row.cores,
                 "memory_mb": row.memory_mb, "walltime_s": row.walltime_s,
                 "max_attempts": nxt.max_attempts, "retry_of": row.id,
                 "network": info.get("network"),
                 "data_key": getattr(row, "data_key", None)},
                Request(sites=nxt.sites, avoid=nxt.avoid, near=nxt.near,
                        events=int(read.get("events") or 0),
                        input_bytes=dict(read.get("bytes") or {}),
                        files=tuple(read.get("files") or ()),
                        read_requests=int(read.get("requests") or 1),
                        file_bytes=int(read.get("file_bytes") or 0)))

    @staticmethod
    def _previous(row: Row, task_site: str, decision: str | None = None) -> Previous:
        """What the retry rules weigh of an attempt: its ``decision`` (JSON text), or the
        row's own ``broker_info`` when not given."""
        info = loads(decision if decision is not None else row.broker_info)
        return Previous(attempt=row.attempt, max_attempts=row.max_attempts, site=row.site,
                        sites=accepted_sites(info.get("sites"), sites_of(task_site)),
                        near=frozenset(info.get("near") or ()))

    # ---- 3. dispatch -----------------------------------------------------------------------
    def acquire(self, pilot_id: int, site: str, n: int, held: list[int] | None = None,
                touch: bool = True, extra: int = 0,
                commons_held: Collection[int] | None = None) -> tuple[list[dict], Changes]:
        """Hand up to ``n`` activated jobs of ``site`` to a pilot, and up to ``extra``
        more while the site has jobs to spare (``job_rows.spare``), atomically; the pilot
        and the jobs it already ``held`` are heartbeated on the way, unless ``touch`` is
        False (the server's API: its heartbeat goes to the coalesced ones,
        server/heartbeats.py, two statements fewer per acquisition).  Returns
        ``(jobs, changes)``, jobs
        ``[{"id", "task", "index", "attempt", "payload", "walltime_s", "cores", "common",
        "output_limit", "workdir", "access", "read_from"}]`` by priority, then age
        (``access``: how the job reads its input, ``read_from``: the endpoint brokerage
        chose for it, both None for a job without input).

        With ``commons_held`` (the tasks whose common payload part the pilot holds), the
        first job of each other task with one of at most ``task_rows.INLINE_COMMON`` bytes
        also has ``"common_payload"`` (``task_rows.INLINE_ANSWER`` bytes at most in all):
        the pilot's first job of a task needs no request of its own to fetch it."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            if touch:
                self._touch(conn, pilot_id, t, held)  # the pilot lives at t
            rows, moved = job_rows.dispatch(conn, pilot_id, site, n, t, extra)
            if not rows:
                return [], changes
            job_rows.history(conn, [(r.id, (J.SENT,), t, f"pilot {pilot_id}" + (
                f" of {site}, from {moved[r.id]}'s queue" if r.id in moved else ""))
                for r in rows])
            task_ids = sorted({r.task_id for r in rows})
            per_task, states = task_rows.common_and_limits(conn, task_ids, with_state=True)
            for task_id in task_ids:  # a task's first dispatch starts it: read, not written
                if states.get(task_id) == T.READY:
                    task_rows.set_state(conn, task_id, T.READY, T.RUNNING, changes)
            wanted = [] if commons_held is None else [
                i for i in task_ids if per_task.get(i, (False,))[0] and i not in commons_held]
            inline = task_rows.small_commons(conn, wanted) if wanted else {}
        out = []
        budget = task_rows.INLINE_ANSWER
        for r in rows:
            changes.jobs.append(JobChange(r.id, r.task_id, r.job_index, r.attempt, site,
                                          str(J.SENT)))
            has_common, limit, workdir = per_task.get(r.task_id, (False, None, None))
            out.append({"id": r.id, "task": r.task_id, "index": r.job_index,
                        "attempt": r.attempt, "payload": r.payload, "walltime_s": r.walltime_s,
                        "cores": r.cores, "common": has_common, "output_limit": limit,
                        "workdir": workdir, "access": r.access, "read_from": r.read_from})
            if r.task_id in inline and len(inline[r.task_id]) <= budget:
                out[-1]["common_payload"] = inline.pop(r.task_id)
                budget -= len(out[-1]["common_payload"])
        return out, changes

    @staticmethod
    def _touch(conn: Connection, pilot_id: int, t: float, held: list[int] | None,
               usage: dict | None = None, done: int = 0) -> None:
        """The pilot lives (using ``usage``, having finished ``done`` more jobs, see
        ``pilot_rows.touch``), and so do the jobs it says it holds: only those.  A job
        the pilot lost track of must go stale, so the watchdog can retry it."""
        pilot_rows.touch(conn, pilot_id, t, usage, done)
        if held:
            job_rows.heartbeat(conn, pilot_id, held, t)

    # ---- 4. run and report ---------------------------------------------------------------------
    def apply_updates(self, pilot_id: int, updates: list[dict],
                      held: list[int] | None = None,
                      usage: dict | None = None) -> tuple[Changes, list[dict]]:
        """Apply a pilot's bulk report: updates ``{"id", "attempt", "state", optional
        "started_at", "result" (bytes), "result_ref", "error": {category, message,
        traceback, exception}, "stdout", "stderr", "peak_rss_mb", "cpu_s", "unstarted"
        (failed without having started: its next attempt does not count)}``; ``usage``
        the pilot's own ``{"rss_mb", "cpu_s", "cpu_pct"}``.  Returns ``(changes, ignored)``,
        ignored ``[{"id", "reason"}]`` (stale attempt, not this pilot's job, already
        final, a transition the model forbids, ...)."""
        changes, ignored, _ = self.apply_report(pilot_id, updates, held, usage, drop=False)
        return changes, ignored

    def apply_report(self, pilot_id: int, updates: list[dict], held: list[int] | None = None,
               usage: dict | None = None,
               drop: bool = True) -> tuple[Changes, list[dict], list[int]]:
        """:meth:`apply_updates`, and then, in the same transaction, which of the
        ``held`` jobs the pilot must kill or drop (:meth:`held_to_drop`'s answer, ``[]``
        without ``held`` or with ``drop`` False): ``(changes, ignored, to drop)``.  The
        pilot API's report: one transaction where there were two."""
        t = now()
        changes = Changes()
        ignored: list[dict] = []
        learned: list[tuple[link_rows.Samples, float]] = []
        with self.tx() as conn:
            current = job_rows.lock_for_report(conn, [u["id"] for u in updates])
            params, history, failed, finished, output = [], [], [], [], []
            unstarted: list[tuple[Row, dict]] = []
            measured: list[tuple[Row, dict, JobState]] = []
            seen: set[int] = set()
            for u in updates:
                row = current.get(u["id"])
                why = _stale(row, u, pilot_id, seen)
                if why:
                    ignored.append({"id": u["id"], "reason": why})
                    continue
                seen.add(row.id)
                # a finished job without a result it can keep fails: the retry rules act
                u = result_rows.kept(self.result_dir, row, u)
                try:
                    path = job_path(row.state, u["state"])
                except TransitionError as exc:
                    ignored.append({"id": row.id, "reason": str(exc)})
                    continue
                out, err_out = job_rows.text(u.get("stdout")), job_rows.text(u.get("stderr"))
                if not path:
                    if out or err_out:
                        output.append({"b_id": row.id, "b_old": row.state, "b_time": t,
                                       "b_out": out, "b_err": err_out})
                    continue
                new = path[-1]
                err = {k: job_rows.text(v) for k, v in (u.get("error") or {}).items()}
                # a pilot sends started_at only for a job it started: also when its first
                # report is the end (sent -> failed passes no running state); the start
                # and end it measured are kept inside what the server knows
                floor = row.modified_at or 0.0
                started, ended = _payload_times(u.get("started_at"), u.get("ended_at"),
                                                row.started_at, t, floor)
                at = _event_times(path, started if started is not None else row.started_at,
                                  ended, t, floor)
                params.append({
                    "b_id": row.id, "b_old": row.state, "b_state": str(new), "b_time": t,
                    "b_started": started, "b_ended": at[-1] if new in JOB_FINAL else None,
                    "b_cat": err.get("category"), "b_msg": err.get("message"),
                    "b_tb": err.get("traceback"), "b_exc": err.get("exception"),
                    "b_out": out, "b_err": err_out,
                    "b_rss": u.get("peak_rss_mb"), "b_cpu": u.get("cpu_s"),
                })
                history.append((row.id, path, at, ""))
                change = JobChange(row.id, row.task_id, row.job_index, row.attempt, row.site,
                                   str(new), err.get("category"), err.get("message"))
                changes.jobs.append(change)
                # Handed back unstarted (the pilot stopped, or its walltime ran out): not
                # the job's failure nor its site's, and its next attempt does not count.
                never_ran = (new == J.FAILED and row.state == J.SENT and not started
                             and bool(u.get("unstarted")))
                if u.get("reads") or (new in (J.FINISHED, J.FAILED) and not never_ran):
                    measured.append((row, u, new))
                if new == J.FINISHED:
                    finished.append((row, u, change))
                elif never_ran:
                    unstarted.append((row, err))
                elif new == J.FAILED:
                    failed.append((row, err))
            if output:
                conn.execute(job_rows.OUTPUT, output)
            if params:
                conn.execute(job_rows.UPDATE, params)
                job_rows.history(conn, history)
            if measured:  # what the links and the sites learn: written with a later one
                learned = [(link_rows.samples(measured), t)]
                # what each attempt read, and what its pilot did to its site's cache
                staging_rows.record_reads(conn, [(row.id, u["reads"]) for row, u, _
                                                 in measured if u.get("reads")])
                staging_rows.apply(conn, [(row.site, u["cache"]) for row, u, _
                                          in measured if u.get("cache")], t)
            result_rows.store(conn, self.result_dir, finished)
            if failed and (learned or self._learning):
                # a retry is weighed with what this report measured (its site's failure)
                self._learn_now(conn, *learned)
                learned = []
            self._retry(conn, failed, changes)
            self._retry(conn, unstarted, changes, Cause.LOST)
            self._touch(conn, pilot_id, t, held, usage, done=len(finished))
            task_rows.end_if_complete(conn, [c.task_id for c in changes.jobs
                                             if JobState(c.state) in JOB_FINAL], changes)
            if (learned or self._learning) and \
                    (changes.tasks or self._learning_due(t, len(learned))):
                self._learn_now(conn, *learned)  # a task ended, or samples waited
                learned = []
            to_drop = job_rows.to_drop(conn, pilot_id, held) if drop and held else []
        self._learning.extend(learned)  # committed: held until written
        return changes, ignored, to_drop

    def _retry(self, conn: Connection, failed: list[tuple[Row, dict]],
               changes: Changes, cause: Cause = Cause.FAILED) -> None:
        """Ask the retry rules about each failed attempt ``(row, error)``; place the new
        attempts they allow.  The tasks are read only when the rules allow one (a batch
        of user errors costs no query); the rows need not carry their decision (a
        report's do not): it is read here."""
        if not failed:
            return
        decided = job_rows.decisions(conn, [row.id for row, _ in failed])

        def ask(row: Row, err: dict, task_site: str = ANY, aborted: bool = False):
            return next_attempt(self._previous(row, task_site, decided[row.id]), cause,
                                category=err.get("category"), message=err.get("message"),
                                task_aborted=aborted)

        candidates = [(row, err) for row, err in failed if ask(row, err) is not None]
        if not candidates:
            return
        task = task_rows.task_sites(conn, {r.task_id for r, _ in candidates})
        wanted: dict[int, NextAttempt] = {}
        for row, err in candidates:
            t = task[row.task_id]
            nxt = ask(row, err, t.site, t.state == T.ABORTED)
            if nxt is not None:
                wanted[row.id] = nxt
        if wanted:
            full = job_rows.full_rows(conn, list(wanted))  # the payloads, for those only
            self._place(conn, [self._again(r, wanted[r.id]) for r in full], changes)

    # ---- 5. merge (the analysis service's merger) and 6. notify (Server.publish) happen
    # outside the store, on the Changes each verb returns.

    # ---- the watchdog's roads -------------------------------------------------------------------
    def fail_jobs(self, job_ids: list[int], category: str, message: str,
                  cause: Cause = Cause.FAILED) -> Changes:
        """Fail attempts that are still on pilots (the watchdog's hammer), then retry them
        as the rules allow (``cause``: ``Cause.LOST`` for attempts that never started,
        whose next attempt does not count against the limit); tasks whose last job this
        was end.  Returns the changes."""
        changes = Changes()
        with self.tx() as conn:
            self._fail(conn, job_ids, category, message, changes, cause)
        return changes

    def _fail(self, conn: Connection, job_ids: list[int], category: str, message: str,
              changes: Changes, cause: Cause = Cause.FAILED) -> None:
        rows = job_rows.on_pilot(conn, job_ids)
        if not rows:
            return
        job_rows.fail(conn, rows, category, message, now(), changes)
        self._retry(conn, [(r, {"category": category, "message": message}) for r in rows],
                    changes, cause)
        task_rows.end_if_complete(conn, [r.task_id for r in rows], changes)

    def not_held(self, pilot_id: int, held: list[int], sent_message: str,
                 message: str) -> tuple[list[int], Changes]:
        """Fail the jobs on ``pilot_id`` that are not in ``held`` (the pilot said it holds
        those), in one transaction: those still ``sent`` went out in an answer it never
        read, so they never ran, and their next attempt does not count against the limit
        (``Cause.LOST``, ``sent_message``); the others it started and then lost track
        of, and are retried as any failure (``message``).  Returns their ids, sorted, and
        the changes."""
        changes = Changes()
        with self.tx() as conn:
            keep = set(held)
            mine = [j for j in job_rows.held_by(conn, [pilot_id])[pilot_id] if j not in keep]
            if not mine:
                return [], changes
            self._fail_held(conn, mine, sent_message, message, changes)
        return mine, changes

    def _fail_held(self, conn: Connection, job_ids: list[int], sent_message: str,
                   message: str, changes: Changes, sent_cause: Cause = Cause.LOST) -> None:
        """Fail jobs a pilot held, as system failures: those still ``sent`` were not
        reported started, and their next attempt does not count (``sent_cause``:
        ``Cause.LOST``, they never ran; ``Cause.UNSEEN``, they may have, in the pilot's
        last moments; ``sent_message``); the others are retried as any failure
        (``message``)."""
        sent = {r.id for r in job_rows.on_pilot(conn, job_ids) if r.state == J.SENT}
        started = [j for j in job_ids if j not in sent]
        system = str(ErrorCategory.SYSTEM)
        if sent:
            self._fail(conn, sorted(sent), system, sent_message, changes, sent_cause)
        if started:
            self._fail(conn, started, system, message, changes)

    def pilots_gone(self, site: str, host: str,
                    gone: list[tuple[int, int | None]]) -> Changes:
        """Pilots of ``site`` on ``host`` whose processes were seen to end without saying
        goodbye (``gone``: ``(pid, exit code or None)``; a negative code is a signal):
        marked lost, last heard of now (so that a heartbeat heard before, written later
        with the coalesced ones, does not revive them), and the jobs they held failed
        (and retried), in one transaction: those still ``sent`` were not reported started
        (held ahead, or started in its last moments: a job that kills its pilot within
        the pilot's flush interval is one), and their next attempt does not count
        against the limit (``Cause.UNSEEN``, up to ``UNSEEN_ATTEMPTS``).  Returns the
        changes."""
        codes = dict(gone)
        changes = Changes()
        with self.tx() as conn:
            found = pilot_rows.running_with_pids(conn, site, host, list(codes))
            if not found:
                return changes
            pilot_rows.set_state(conn, [r.id for r in found], PilotState.LOST, now())
            held = job_rows.held_by(conn, [r.id for r in found])
            for r in found:
                if held[r.id]:
                    code = codes[r.pid]
                    why = f"exit code {code}" if code is not None and code >= 0 else \
                        f"killed by signal {-code}" if code is not None else "exit unknown"
                    ended = f"its pilot {r.id} (pid {r.pid}) ended ({why})"
                    self._fail_held(conn, held[r.id],
                                    f"{ended} before it reported the job's start",
                                    f"{ended} while holding the job", changes,
                                    Cause.UNSEEN)
        return changes

    def close_expired_leases(self, t: float) -> tuple[list[int], Changes]:
        """Close every open task whose lease lapsed before ``t`` (the watchdog's rule).

        Its jobs already submitted run on; the task ends when they do (at once if they
        all ended already).  Returns ``(task ids closed, changes)``."""
        from panda_lab.model import lease

        changes = Changes()
        with self.tx() as conn:
            closed = [r.id for r in task_rows.open_leases(conn, before=t)
                      if task_rows.close_lapsed(conn, r.id, t,
                                                lease.client_gone_message(r.lease_until))]
            task_rows.end_if_complete(conn, closed, changes)
        return closed, changes

    # ---- the client's and the user's roads ---------------------------------------------------
    def close_task(self, task_id: int) -> Changes:
        """No more jobs will come: the task may now end when its jobs end (at once if
        they all have).  Returns the changes; raises ``TaskNotFound``."""
        changes = Changes()
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            task_rows.set_open(conn, task_id, False)
            task_rows.end_if_complete(conn, [task_id], changes)
            if changes.tasks:  # an ended task's measurements are written with it
                self._learn_now(conn)
        return changes

    def cancel_waiting(self, task_id: int, indices: list[int]) -> tuple[list[int], Changes]:
        """Cancel the logical jobs ``indices`` of a task that never reached a pilot.

        One compare-and-set, the counterpart of ``acquire``'s ``activated → sent``: the
        waiting attempt (defined, assigned or activated) of each index becomes
        ``cancelled``, provided that no attempt of that index was ever handed to a
        pilot.  A job a pilot holds (sent, starting, running), or whose earlier attempt
        ran and is being retried, is left alone, so it is never said to be cancelled
        while it runs, or after it ran: ``concurrent.futures``' contract, where
        ``cancel()`` fails once a call was handed to a worker.  Returns the indices
        cancelled (shape ``[int]``, in ascending order) and the changes to publish.
        Raises ``TaskNotFound``."""
        t = now()
        changes = Changes()
        if not indices:
            return [], changes
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            rows = job_rows.cancel_never_ran(conn, task_id, indices, t)
            if not rows:
                return [], changes
            why = job_rows.CANCELLED_BY_CLIENT
            job_rows.history(conn, [(r.id, (J.CANCELLED,), t, why) for r in rows])
            for r in rows:
                changes.jobs.append(JobChange(r.id, task_id, r.job_index, r.attempt, r.site,
                                              str(J.CANCELLED), str(ErrorCategory.KILLED), why))
            task_rows.end_if_complete(conn, [task_id], changes)
        return [r.job_index for r in rows], changes

    def kill_task(self, task_id: int) -> Changes:
        """Abort a task: waiting jobs are cancelled at once; jobs on pilots are marked
        cancelled and their pilots are told to kill them at their next heartbeat.
        Returns the changes.  Raises ``TaskNotFound``, and ``TaskStateError`` for a task
        done or aborted already."""
        t = now()
        changes = Changes()
        with self.tx() as conn:
            task = task_rows.task_row(conn, task_id)
            if TaskState(task.state) in (T.DONE, T.ABORTED):
                raise TaskStateError(f"task {task_id} is {task.state}: nothing to kill")
            # wait for a report in flight, then see its outcome
            victims = job_rows.unfinished(conn, task_id=task_id)
            job_rows.cancel(conn, victims, t, "killed by user", changes)
            task_rows.set_open(conn, task_id, False, touch=False)
            task_rows.set_state(conn, task_id, task.state, T.ABORTED, changes, "killed by user")
        return changes

    def kill_jobs(self, job_ids: list[int]) -> Changes:
        """Cancel single attempts (an executor's ``Future.cancel``); attempts final already
        are left alone.  Returns the changes."""
        changes = Changes()
        with self.tx() as conn:
            victims = job_rows.unfinished(conn, ids=job_ids)
            job_rows.cancel(conn, victims, now(), "killed by user", changes)
            task_rows.end_if_complete(conn, [v.task_id for v in victims], changes)
        return changes

    def fail_task(self, task_id: int, message: str, options: dict) -> Changes:
        """End a task as ``failed`` for a reason found on the server (results that cannot be
        merged): waiting and running jobs are cancelled as by ``kill``, the task takes no
        more jobs, ``options`` are added to its options.  A task already final keeps its
        state and message and gets only the options.  Returns the changes; raises
        ``TaskNotFound``."""
        changes = Changes()
        with self.tx() as conn:
            task = task_rows.task_row(conn, task_id)
            # jobs first, then their task: the order in which reports lock them
            victims = job_rows.unfinished(conn, task_id=task_id)
            task_rows.add_options(conn, task_id, task.options, options, open=False)
            if TaskState(task.state) in TASK_FINAL:
                return changes
            job_rows.cancel(conn, victims, now(), f"task failed: {message}", changes)
            task_rows.set_state(conn, task_id, task.state, T.FAILED, changes, message)
        return changes

    def retry_task(self, task_id: int) -> tuple[list[int], Changes]:
        """pbook's retry: a new attempt for every logical job whose last attempt failed
        or was cancelled; finished jobs, and jobs their client cancelled before they
        ran, are left alone.  Returns ``(new job ids, changes)`` (``[]`` when nothing
        was to retry).  Raises ``TaskNotFound``, and ``TaskStateError`` for a task not
        in ``TASK_RETRYABLE``."""
        changes = Changes()
        with self.tx() as conn:
            task = task_rows.task_row(conn, task_id, lock=True)
            if TaskState(task.state) not in TASK_RETRYABLE:
                raise TaskStateError(
                    f"task {task_id} is {task.state}: only ready, running, finished or failed "
                    "tasks can be retried")
            done = result_rows.indices_done(conn, task_id)
            latest = [r for r in job_rows.retryable_latest(conn, task_id)
                      if r.job_index not in done]
            if not latest:
                return [], changes
            if TaskState(task.state) in TASK_FINAL:
                task_rows.set_state(conn, task_id, task.state, T.RUNNING, changes,
                                    "retried by user")
            ids = self._place(conn, [
                self._again(r, next_attempt(self._previous(r, task.site), Cause.USER_RETRY))
                for r in latest], changes)
        return ids, changes


def _stale(row: Row | None, u: dict, pilot_id: int, seen: set[int]) -> str | None:
    """Why an update of a report is ignored, or None to apply it."""
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


def _payload_times(started: float | None, ended: float | None, known_start: float | None,
                   t: float, floor: float) -> tuple[float | None, float | None]:
    """A payload's ``(start, end)`` (seconds since the epoch, ``None`` when not sent) from
    a report's ``started``/``ended``, as the pilot measured them (its clock, as PanDA's
    pilot reports ``startTime`` and ``endTime``), kept inside what the server knows: the
    payload ran after the job's last recorded change (``floor``: its dispatch) and before
    the report arrived (``t``).  A pilot clock ahead or behind is thus pulled into that
    window: never a time in the future, never a start before the job was handed out, an
    end never before the start (``known_start``: the one recorded already, used when the
    report sends none).  An end before the start the same pilot sent is not believed:
    ``t``, the report's arrival."""
    lo = min(floor, t)
    start = None if started is None else min(max(started, lo), t)
    if ended is None:
        return start, None
    first = started if started is not None else known_start
    if first is not None and ended < first:
        return start, t
    begun = start if start is not None else known_start
    return start, min(max(ended, lo if begun is None else max(begun, lo)), t)


def _event_times(path: tuple[JobState, ...], start: float | None, end: float | None,
                 t: float, floor: float = 0.0) -> tuple[float, ...]:
    """When each state of ``path`` (a report's transitions, :func:`job_path`) happened,
    in seconds since the epoch: ``starting`` and ``running`` at the payload's ``start``,
    a final state at its ``end`` (:func:`_payload_times`); any other state, or a time the
    pilot did not send, at ``t``, the report's arrival.  A pilot sends a short job's
    ``running`` with its end, and its end with its next batch (up to ``flush_interval``
    later): with the arrival time for all three, a job of 0.05 s read as running 0.4 s, and
    its CPU as a fraction of that run.  The times never decrease along the path, nor fall
    before ``floor`` (the job's last recorded change) nor after ``t``."""
    out, last = [], min(floor, t)
    for state in path:
        at = t
        if state in (JobState.STARTING, JobState.RUNNING) and start is not None:
            at = start
        elif state in JOB_FINAL and end is not None:
            at = end
        at = max(min(at, t), last)
        out.append(at)
        last = at
    return tuple(out)


__all__ = ["TaskNotFound", "Workflow"]
