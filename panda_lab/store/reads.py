"""The store's reads: what the API, the monitor and the analysis service show.  Each is
one transaction over the row repositories; none changes a row."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from panda_lab.model import JOB_ON_PILOT, ErrorCategory, JobState
from panda_lab.store.base import Database, loads
from panda_lab.store.errors import TaskNotFound
from panda_lab.store.rows import counts as count_rows
from panda_lab.store.rows import datasets as dataset_rows
from panda_lab.store.rows import jobs as job_rows
from panda_lab.store.rows import metrics as metric_rows
from panda_lab.store.rows import pilots as pilot_rows
from panda_lab.store.rows import results as result_rows
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows import tasks as task_rows
from panda_lab.store.rows.metrics import MetricCounts
from panda_lab.store.schema import job_status, jobs

J = JobState


#: The site and state of each logical job's newest attempt of task ``task``, for
#: :meth:`Reads.get_task` (built once: a client's wait and every poll of a task read it).
_SITES_OF_LATEST = select(jobs.c.site, jobs.c.state).where(
    jobs.c.id.in_(job_rows.latest(bindparam("task"))))


class Reads(Database):
    """Read-only queries of the store."""

    # ---- tasks ------------------------------------------------------------------------
    def resolve_task(self, id_or_name: int | str, owner: str | None = None) -> int:
        """A task id from an id or a name (the newest task of that name, of ``owner``
        when given: a name is looked up among the owner's tasks only).  Raises
        ``TaskNotFound``."""
        with self.tx() as conn:
            if isinstance(id_or_name, int) or (str(id_or_name).isascii()
                                               and str(id_or_name).isdigit()):
                task_rows.task_row(conn, int(id_or_name))
                return int(id_or_name)
            return task_rows.task_by_name(conn, str(id_or_name), owner)

    def get_task(self, task_id: int) -> dict:
        """A task: ``{"id", "name", "owner", "state", "site", "options", "open",
        "lease_until", "n_jobs", "n_done", "attempts_by_state": {state: n}, "created_at",
        "modified_at", "ended_at", "message", "jobs_by_site": {site: {state: n}}}``, the
        last counting the newest attempt of each logical job.  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            out = task_rows.task_dict(conn, task_rows.task_row(conn, task_id))
            per_site: dict[str, dict[str, int]] = {}
            for r in conn.execute(_SITES_OF_LATEST, {"task": task_id}):
                site = per_site.setdefault(r.site or "-", {})
                site[r.state] = site.get(r.state, 0) + 1
            out["jobs_by_site"] = per_site
            return out

    def task_options(self, task_id: int) -> dict:
        """A task's options (its ``options`` as :meth:`get_task` gives them), in one
        statement where :meth:`get_task` counts its jobs too.  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            return loads(task_rows.task_row(conn, task_id).options)

    def task_progress(self, task_id: int) -> dict | None:
        """What closing a task waits on: ``{"open", "state", "unfinished": attempts not
        in a final state, "n_done": jobs with a result}``, or None when there is no such
        task.  One statement (:func:`task_rows.progress`), for a check made per report."""
        with self.tx() as conn:
            got = task_rows.progress(conn, task_id)
        if got is None:
            return None
        return dict(zip(("open", "state", "unfinished", "n_done"), got, strict=True))

    def list_tasks(self, limit: int = 100, state: str | None = None,
                   owner: str | None = None) -> list[dict]:
        """The newest ``limit`` tasks (of ``state``, of ``owner``: None for anyone's),
        each as ``get_task`` shows it without ``jobs_by_site`` but with ``"sites"``: the
        sites its jobs went to, sorted."""
        with self.tx() as conn:
            out = task_rows.task_dicts(conn, task_rows.list_rows(conn, limit, state, owner))
            used: dict[int, set[str]] = {}
            if out:  # the sites each task's jobs went to, in one query for the whole list
                for task_id, site in conn.execute(
                        select(jobs.c.task_id, jobs.c.site).distinct()
                        .where(jobs.c.task_id.in_([t["id"] for t in out]),
                               jobs.c.site.is_not(None))):
                    used.setdefault(task_id, set()).add(site)
            for t in out:
                t["sites"] = sorted(used.get(t["id"], ()))
            return out

    def tasks_of_kind(self, kind: str) -> list[dict]:
        """``[{"id", "state", "options"}]`` of the tasks whose options say ``kind``."""
        with self.tx() as conn:
            return task_rows.of_kind(conn, kind)

    def task_common(self, task_id: int) -> bytes | None:
        """The payload part shared by a task's jobs, or None."""
        with self.tx() as conn:
            return task_rows.common(conn, task_id)

    # ---- jobs -----------------------------------------------------------------------------
    def list_jobs(self, task_id: int, all_attempts: bool = False,
                  state: str | None = None) -> list[dict]:
        """A task's jobs (the newest attempt of each, or every attempt), by index then
        attempt, as ``get_job`` shows them without history.  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            q = select(*job_rows.NO_PAYLOAD).where(jobs.c.task_id == task_id)
            if not all_attempts:
                q = q.where(jobs.c.id.in_(job_rows.latest(task_id)))
            if state:
                q = q.where(jobs.c.state == state)
            q = q.order_by(jobs.c.job_index, jobs.c.attempt)
            return [job_rows.job_dict(r) for r in conn.execute(q)]

    def get_job(self, job_id: int) -> dict:
        """One attempt (its columns but the payload; ``error_exception`` base64,
        ``broker_info`` a dict) with its status ``history`` ``[{"state", "time",
        "info"}]`` and the ids of every ``attempts`` of its logical job.  Raises
        ``TaskNotFound`` for an unknown job."""
        with self.tx() as conn:
            row = conn.execute(select(*job_rows.NO_PAYLOAD).where(jobs.c.id == job_id)).first()
            if row is None:
                raise TaskNotFound(f"no job with id {job_id}")
            out = job_rows.job_dict(row)
            out["history"] = [
                {"state": h.state, "time": h.time, "info": h.info}
                for h in conn.execute(select(job_status).where(job_status.c.job_id == job_id)
                                      .order_by(job_status.c.id))]
            out["attempts"] = [r[0] for r in conn.execute(
                select(jobs.c.id).where(jobs.c.task_id == row.task_id,
                                        jobs.c.job_index == row.job_index)
                .order_by(jobs.c.attempt))]
        return out

    def failures(self, task_id: int) -> list[dict]:
        """The final failed or cancelled attempt of each logical job that has none after
        it, by index.  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            q = select(*job_rows.NO_PAYLOAD).where(
                jobs.c.id.in_(job_rows.latest(task_id)),
                jobs.c.state.in_([str(J.FAILED), str(J.CANCELLED)]))
            return [job_rows.job_dict(r) for r in conn.execute(q.order_by(jobs.c.job_index))]

    def on_pilot_jobs(self, task_id: int) -> list[int]:
        """Ids of a task's attempts on pilots now."""
        with self.tx() as conn:
            return [r[0] for r in conn.execute(select(jobs.c.id).where(
                jobs.c.task_id == task_id, jobs.c.state.in_([str(s) for s in JOB_ON_PILOT])))]

    def lost_jobs(self, heartbeat_before: float, sent_before: float) -> list[dict]:
        """Attempts on pilots whose heartbeat stopped, or stuck in ``sent`` too long:
        ``[{"id", "pilot", "state", "why"}]``."""
        with self.tx() as conn:
            return job_rows.lost(conn, heartbeat_before, sent_before)

    def job_output(self, job_id: int, stream: str) -> str:
        """All that is kept of an attempt's ``stream`` (``stdout`` or ``stderr``): the
        full output a pilot kept, else the tail in the job's row ("" when it printed
        nothing).  Raises :class:`TaskNotFound` for an unknown job."""
        column = jobs.c.stdout_tail if stream == "stdout" else jobs.c.stderr_tail
        with self.tx() as conn:
            row = conn.execute(select(jobs.c.task_id, column).where(jobs.c.id == job_id)).first()
        if row is None:
            raise TaskNotFound(f"no job with id {job_id}")
        path = result_rows.output_path(self.result_dir, row[0], job_id, stream)
        if path.is_file():
            return path.read_text("utf-8", errors="replace")
        return row[1] or ""

    # ---- results ----------------------------------------------------------------------------
    def results(self, task_id: int, indices: list[int] | None = None) -> list[dict]:
        """Results by logical job: ``[{"index", "job_id", "data"}]`` with the pickled
        bytes, by index.  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            rows = result_rows.rows_of(conn, task_id, indices)
        return [{"index": r.job_index, "job_id": r.job_id,
                 "data": r.inline if r.inline is not None
                 else (self.result_dir / r.ref).read_bytes()} for r in rows]

    def result_sizes(self, task_id: int) -> dict[int, int]:
        """Bytes of each logical job's stored result, by job index (nothing is read but
        the rows).  Raises ``TaskNotFound``."""
        with self.tx() as conn:
            task_rows.task_row(conn, task_id)
            return result_rows.sizes_of(conn, task_id)

    def result_ref_ok(self, ref: str) -> bool:
        """Whether a result a pilot wrote to the result store is there."""
        return (self.result_dir / ref).is_file()

    def load_accumulator(self, task_id: int) -> tuple[bytes | None, set[int], int]:
        """An analysis task's merged result: ``(data, merged job indices, events)``;
        ``(None, set(), 0)`` before any merge."""
        with self.tx() as conn:
            return result_rows.load_accumulator(conn, task_id)

    def analysis_tasks_to_merge(self) -> list[int]:
        """Analysis tasks with results not yet in their merged state (after a restart)."""
        with self.tx() as conn:
            return result_rows.tasks_to_merge(conn)

    def job_counts(self, owner: str | None = None) -> dict:
        """What the status bar shows, over all sites and ``owner``'s tasks (None:
        everyone's): ``{"running", "prefetched", "waiting", "failed", "failed_tasks"}``
        (what each counts: :mod:`panda_lab.store.rows.counts`)."""
        with self.tx() as conn:
            return count_rows.job_counts(conn, owner)

    # ---- pilots and sites ---------------------------------------------------------------------
    def pilot(self, pilot_id: int) -> dict:
        """A pilot's row (``info`` a dict).  Raises ``UnknownPilot``."""
        with self.tx() as conn:
            return pilot_rows.get(conn, pilot_id)

    def list_pilots(self, site: str | None = None, state: str | None = None,
                    ids: list[int] | None = None) -> list[dict]:
        """Pilots (of ``site``, in ``state``, among ``ids``) by id, as ``pilot`` shows
        them, with their latest usage: ``rss_mb`` (MB), ``cpu_s``, ``cpu_pct`` (None
        before their first report of it)."""
        with self.tx() as conn:
            return pilot_rows.list_dicts(conn, site, state, ids)

    def site_names(self) -> list[str]:
        """The names of the sites, sorted."""
        with self.tx() as conn:
            return site_rows.names(conn)

    def list_sites(self, owner: str | None = None) -> list[dict]:
        """Sites with their pilots, queued and running jobs (of ``owner``'s tasks only
        when given): what ``panda-lab sites`` shows, ``[{"name", "kind", "provisioner",
        "state", "reason", "pilots", "queued", "running", "description"}]`` by name."""
        with self.tx() as conn:
            self._learn_now(conn)  # each site's speed and failure rate as reported
            return site_rows.listing(conn, owner)

    def site_demand(self, name: str) -> int:
        """Jobs queued (assigned, activated) or held by pilots at a site: what an elastic
        provisioner sizes its pilots by."""
        with self.tx() as conn:
            return site_rows.demand(conn, name)

    def metric_counts(self) -> MetricCounts:
        """Jobs by state and site, tasks by state, pilots by site and state, each site's
        oldest running pilot heartbeat: what ``/metrics`` shows
        (:class:`~panda_lab.store.rows.metrics.MetricCounts`)."""
        with self.tx() as conn:
            return metric_rows.counts(conn)

    # ---- datasets and analysis -------------------------------------------------------------------
    def get_dataset(self, name: str, with_files: bool = True, owner: str | None = None,
                    server_owner: str | None = None) -> dict:
        """A dataset's row as a dict, with ``files`` (each with ``replicas``) and
        ``bad_files`` when ``with_files``.  Raises ``DatasetNotFound``, also for one not
        of ``owner`` when given (``server_owner`` owns those of no recorded owner)."""
        with self.tx() as conn:
            return dataset_rows.get(conn, name, with_files, owner, server_owner)

    def list_datasets(self, owner: str | None = None,
                      server_owner: str | None = None) -> list[dict]:
        """Every dataset's row (of ``owner``, as ``get_dataset`` counts it) as a dict
        (id, name, tree, n_files, n_events, size_bytes, created_at, owner), by name,
        without files."""
        with self.tx() as conn:
            return dataset_rows.listing(conn, owner, server_owner)

    def task_chunks(self, task_id: int) -> list[dict]:
        """An analysis task's input chunks by job index: ``[{"id", "task_id", "job_index",
        "file_index", "path", "tree", "start", "stop", "scout"}]``."""
        with self.tx() as conn:
            return [dict(r._mapping) for r in dataset_rows.chunks_of(conn, task_id)]

    def analysis_report(self, task_id: int) -> list[dict]:
        """Every input range of an analysis task with the fate of its job: state of the
        latest attempt, number of attempts, sites tried, and the error if it failed.

        After the jobs' rows (in job order) come, in file order, the files no job reads:
        those without entries (``start == stop == 0``, no error) and those found bad at
        registration (``start``/``stop`` None, ``error_category`` "input", ``error`` the
        reason); both have ``job_index`` and ``state`` None and no attempts.  Raises
        :class:`TaskNotFound` for an unknown task."""
        with self.tx() as conn:
            options = task_rows.options_text(conn, task_id)
            if options is None:
                raise TaskNotFound(f"no task with id {task_id}")
            rows = dataset_rows.chunks_of(conn, task_id)
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
                "state": last.state if last else str(J.DEFINED), "attempts": len(tries),
                "sites": [t.site for t in tries],
                "error_category": last.error_category if last else None,
                "error": last.error_message if last else None,
            })
        opts = loads(options)
        without_job = [
            {"file_index": i, "path": path, "tree": tree, "start": 0, "stop": 0,
             "error_category": None, "error": None}
            for i, path, tree in opts.get("empty_files", [])
        ] + [
            {"file_index": b["file_index"], "path": b["path"], "tree": b["tree"], "start": None,
             "stop": None, "error_category": str(ErrorCategory.INPUT),
             "error": f"skipped at registration: {b['reason']}"}
            for b in opts.get("bad_files", [])
        ]
        for row in sorted(without_job, key=lambda r: r["file_index"]):
            out.append({"job_index": None, **row, "scout": False, "state": None,
                        "attempts": 0, "sites": []})
        return out
