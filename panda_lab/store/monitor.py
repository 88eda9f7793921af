"""The web monitor's reads (BigPanDA's views): each one transaction over
:mod:`panda_lab.store.rows.monitor`, whose queries aggregate and paginate in SQL.  None
changes a row; none reads more than a page of rows or a bounded sample."""

from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import func, select

from panda_lab.model import JobState, PilotState
from panda_lab.model.usage import job_usage, pilot_usage
from panda_lab.store.base import loads
from panda_lab.store.reads import Reads
from panda_lab.store.rows import jobs as job_rows
from panda_lab.store.rows import links as link_rows
from panda_lab.store.rows import monitor as rows
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows.monitor import Filter, Page
from panda_lab.store.schema import chunks, jobs, pilots, tasks

#: Jobs whose brokerage decisions a task page sums up (the newest ones).
BROKERAGE_SAMPLE = 500
#: Pilots a site page lists (running first, then the newest).
PILOTS_SHOWN = 50


def _page_info(total: int, page: Page) -> dict:
    return {"total": total, "page": page.page, "per_page": page.per_page,
            "pages": max(1, -(-total // page.per_page)),
            "sort": ("-" if page.descending else "") + page.sort}


class MonitorReads(Reads):
    """The monitor's views as dicts ready for JSON."""

    def monitor_tasks(self, f: Filter, page: Page) -> dict:
        """Tasks matching ``f``, one page sorted by ``page``: ``{"total", "page",
        "per_page", "pages", "sort", "facets": {"state": {state: n}}, "tasks": [{"id",
        "name", "owner", "state", "n_jobs", "done", "progress" (0..1), "attempts":
        {state: n}, "failures", "sites", "created_at", "modified_at", "ended_at",
        "duration", "age", "message"}]}``; times in seconds since the epoch, durations
        and ages in seconds."""
        t = time.time()
        with self.tx() as conn:
            total, facets, found = rows.task_page(conn, f, page)
            aggs = rows.task_aggregates(conn, [r.id for r in found])
        out = []
        for r in found:
            agg = aggs[r.id]
            out.append({"id": r.id, "name": r.name, "owner": r.owner, "state": r.state,
                        "n_jobs": r.n_jobs, "done": agg["done"],
                        "progress": agg["done"] / r.n_jobs if r.n_jobs else 0.0,
                        "attempts": agg["attempts"], "failures": agg["failures"],
                        "sites": agg["sites"], "created_at": r.created_at,
                        "modified_at": r.modified_at, "ended_at": r.ended_at,
                        "duration": r.duration, "age": t - r.created_at,
                        "message": r.message})
        return {**_page_info(total, page), "facets": {"state": facets}, "tasks": out}

    def monitor_task(self, task_id: int) -> dict:
        """One task: what ``get_task`` shows (``jobs_by_site`` counts the newest attempt of
        each logical job), with ``"distributions"`` (per-site histograms of wall time and
        events per second, :func:`~panda_lab.store.rows.monitor.task_distributions`),
        ``"progress"`` (finished jobs over time), ``"brokerage"`` (over the newest
        :data:`BROKERAGE_SAMPLE` attempts: ``{"sampled", "picked": {site: n},
        "rejected": {reason: n}}``), ``"scouting"`` (``{"scouts": [the scout jobs'
        measures, :func:`~panda_lab.store.rows.monitor.scouts`], "sizing": what sizing
        chose from them, ``Scouting.as_dict()``, or None before}``), ``"links"``
        (``{site: [link rows, as GET /api/links shows them]}`` for each site the task's
        jobs went to) and ``"summary"`` when the task record has one.  Raises
        ``TaskNotFound``."""
        task = self.get_task(task_id)
        with self.tx() as conn:
            task["distributions"] = rows.task_distributions(conn, task_id)
            task["progress"] = rows.progress_over_time(conn, task_id)
            infos = conn.execute(select(job_rows.DECISION).where(jobs.c.task_id == task_id)
                                 .order_by(jobs.c.id.desc()).limit(BROKERAGE_SAMPLE)).scalars()
            picked: Counter = Counter()
            rejected: Counter = Counter()
            sampled = 0
            for text in infos:
                info = loads(text)
                sampled += 1
                if info.get("picked"):
                    picked[info["picked"]] += 1
                for site, reason in (info.get("rejected") or {}).items():
                    rejected[f"{site}: {reason}"] += 1
            task["brokerage"] = {"sampled": sampled, "picked": dict(picked),
                                 "rejected": dict(rejected.most_common(20))}
            task["scouting"] = {"scouts": rows.scouts(conn, task_id),
                                "sizing": task["options"].get("scouting")}
            ran = set(task["jobs_by_site"])
            task["links"] = {site: [] for site in sorted(ran)}
            self._learn_now(conn)
            for link in link_rows.listing(conn, time.time(), self.link_window):
                if link["site"] in ran:
                    task["links"][link["site"]].append(link)
        summary = task.get("summary") or task["options"].get("summary")
        if summary is not None:
            task["summary"] = summary
        return task

    def monitor_jobs(self, f: Filter, page: Page) -> dict:
        """Job attempts matching ``f``, one page: ``{"total", "page", "per_page", "pages",
        "sort", "facets": {"state"|"site"|"error_category"|"attempt": {value: n}},
        "jobs": [{"id", "task_id", "job_index", "attempt", "state", "site", "pilot_id",
        "created_at", "modified_at", "started_at", "ended_at", "error_category",
        "error_message" (its first 300 characters), "duration"}]}``."""
        with self.tx() as conn:
            total, facets, found = rows.job_page(conn, f, page)
        return {**_page_info(total, page), "facets": facets,
                "jobs": [dict(r._mapping) for r in found]}

    def monitor_job(self, job_id: int) -> dict:
        """One attempt as ``get_job`` shows it, with ``"task"`` (its id, name, owner,
        state), ``"attempt_rows"`` (each attempt's id, number, state, site, times, error
        category), ``"pilot"`` (where it ran: id, host, pid, site, state, heartbeat age,
        ``rss_mb``, ``cpu_s``, ``cpu_pct`` and ``usage``, those in words), ``"chunks"``
        (its input ranges) and ``"usage"``: what its payload used (``peak_rss_mb``,
        ``cpu_s``) in words (panda_lab/model/usage.py).  Raises ``TaskNotFound``."""
        job = self.get_job(job_id)
        with self.tx() as conn:
            t = conn.execute(select(tasks.c.id, tasks.c.name, tasks.c.owner, tasks.c.state)
                             .where(tasks.c.id == job["task_id"])).one()
            job["task"] = dict(t._mapping)
            job["attempt_rows"] = [dict(r._mapping) for r in conn.execute(
                select(jobs.c.id, jobs.c.attempt, jobs.c.state, jobs.c.site, jobs.c.pilot_id,
                       jobs.c.started_at, jobs.c.ended_at, jobs.c.error_category)
                .where(jobs.c.task_id == job["task_id"], jobs.c.job_index == job["job_index"])
                .order_by(jobs.c.attempt))]
            job["pilot"] = None
            if job["pilot_id"] is not None:
                p = conn.execute(select(pilots.c.id, pilots.c.host, pilots.c.pid,
                                        pilots.c.site, pilots.c.state, pilots.c.heartbeat_at,
                                        pilots.c.rss_mb, pilots.c.cpu_s, pilots.c.cpu_pct)
                                 .where(pilots.c.id == job["pilot_id"])).first()
                if p is not None:
                    job["pilot"] = {**p._mapping, "heartbeat_age": time.time() - p.heartbeat_at,
                                    "usage": pilot_usage(p._mapping)}
            job["chunks"] = [dict(r._mapping) for r in conn.execute(
                select(chunks.c.file_index, chunks.c.path, chunks.c.tree, chunks.c.start,
                       chunks.c.stop, chunks.c.scout)
                .where(chunks.c.task_id == job["task_id"],
                       chunks.c.job_index == job["job_index"]).order_by(chunks.c.id))]
        job.pop("error_exception", None)
        job["usage"] = job_usage(job)  # what its payload used, in words
        return job

    def monitor_errors(self, f: Filter) -> dict:
        """Failed attempts matching ``f``, grouped: ``{"total", "by_message": [{"category",
        "message" (first 200 characters), "n", "sites", "tasks", "last"}], "by_site":
        {site: {category: n}}, "by_task": [{"task_id", "name", "n"}], "over_time":
        histogram of end times per category}``, the longest lists cut at 100.

        The groups by site, by task and over time read the covering index ix_jobs_facets
        only, whatever the filter (a task's, an owner's too: ``seek_tasks=False``); the
        group by message reads the failed attempts' rows (the message is in no index),
        found by an index on their state or, for some tasks, on their task."""
        failed = Filter(**{**f.__dict__, "state": (JobState.FAILED,)})
        where = [*rows.job_conditions(failed, seek_tasks=False),
                 jobs.c.error_category.is_not(None)]
        msg = func.substr(jobs.c.error_message, 1, 200)
        with self.tx() as conn:
            by_message = [{"category": c, "message": m, "n": n, "sites": s, "tasks": t,
                           "last": last} for c, m, n, s, t, last in conn.execute(
                select(jobs.c.error_category, msg, func.count(),
                       func.count(func.distinct(jobs.c.site)),
                       func.count(func.distinct(jobs.c.task_id)), func.max(jobs.c.ended_at))
                .where(*rows.job_conditions(failed), jobs.c.error_category.is_not(None))
                .group_by(jobs.c.error_category, msg)
                .order_by(func.count().desc()).limit(100))]
            by_site: dict[str, dict[str, int]] = {}
            for site, cat, n in conn.execute(
                    select(jobs.c.site, jobs.c.error_category, func.count()).where(*where)
                    .group_by(jobs.c.site, jobs.c.error_category)):
                by_site.setdefault(site or "-", {})[cat] = n
            total = sum(n for cats in by_site.values() for n in cats.values())
            by_task = [{"task_id": i, "name": name, "n": n} for i, name, n in conn.execute(
                select(jobs.c.task_id, tasks.c.name, func.count())
                .join(tasks, tasks.c.id == jobs.c.task_id).where(*where)
                .group_by(jobs.c.task_id, tasks.c.name).order_by(func.count().desc())
                .limit(100))]
            over_time = rows.time_bins(conn, where)
        return {"total": total, "by_message": by_message, "by_site": by_site,
                "by_task": by_task, "over_time": over_time}

    def monitor_sites(self, since: float) -> dict:
        """Every site: ``{"sites": [{"name", "kind", "provisioner", "state", "reason",
        "description", "queued", "running", "pilots": [{"id", "host", "pid", "state",
        "slots", "jobs_done", "heartbeat_age"}] (running first, at most
        :data:`PILOTS_SHOWN`), "n_pilots": {state: n}, "finished", "failed",
        "failure_rate" (failed / ended attempts since ``since``, None when none ended)}]}``.
        """
        t = time.time()
        with self.tx() as conn:
            self._learn_now(conn)
            listing = site_rows.listing(conn)
            ended = {}
            for site, state, n in conn.execute(
                    select(jobs.c.site, jobs.c.state, func.count())
                    .where(jobs.c.ended_at >= since,
                           jobs.c.state.in_([str(JobState.FINISHED), str(JobState.FAILED)]))
                    .group_by(jobs.c.site, jobs.c.state)):
                ended.setdefault(site, {})[state] = n
            n_pilots: dict[str, dict[str, int]] = {}
            for site, state, n in conn.execute(select(pilots.c.site, pilots.c.state,
                                                      func.count())
                                               .group_by(pilots.c.site, pilots.c.state)):
                n_pilots.setdefault(site, {})[state] = n
            running_first = (pilots.c.state != str(PilotState.RUNNING))
            shown = {}
            for s in listing:
                shown[s["name"]] = [
                    {**r._mapping, "heartbeat_age": t - r.heartbeat_at}
                    for r in conn.execute(
                        select(pilots.c.id, pilots.c.host, pilots.c.pid, pilots.c.state,
                               pilots.c.slots, pilots.c.jobs_done, pilots.c.heartbeat_at)
                        .where(pilots.c.site == s["name"])
                        .order_by(running_first, pilots.c.id.desc()).limit(PILOTS_SHOWN))]
        out = []
        for s in listing:
            e = ended.get(s["name"], {})
            fin, fail = e.get(str(JobState.FINISHED), 0), e.get(str(JobState.FAILED), 0)
            out.append({**s, "pilots": shown[s["name"]],
                        "n_pilots": n_pilots.get(s["name"], {}),
                        "finished": fin, "failed": fail,
                        "failure_rate": fail / (fin + fail) if fin + fail else None})
        return {"since": since, "sites": out}


__all__ = ["Filter", "MonitorReads", "Page"]
