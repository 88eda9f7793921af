"""The web monitor's queries: filtered, sorted, paginated listings and their aggregates,
each computed in SQL (``GROUP BY``, ``COUNT``, binned histograms), so that no view
loads all jobs into memory: a page reads at most ``per_page`` rows plus grouped counts.

The views and their filters are BigPanDA's (the PanDA monitor): tasks, a task, jobs with
facets, a job, errors grouped by category and message, sites; every filter a URL
parameter (``owner``, ``state``, ``site``, ``name`` with ``*`` wildcards, a time window).
Histograms are fixed-width bins over the range of the values, counted per site with one
grouped query, as BigPanDA's "job attribute summary" plots are.

Functions take a ``Connection`` and open no transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Integer, case, cast, exists, func, literal, select
from sqlalchemy.sql import ColumnElement, Select

from panda_lab.store.schema import chunks, jobs, tasks

#: Bins of a histogram (wall time, events per second, progress over time).
BINS = 20


@dataclass(frozen=True)
class Filter:
    """What a monitor view is narrowed to.  ``name``: a glob (``*`` any text); ``since``:
    seconds since the epoch (rows modified since); ``state``: any of these states."""

    owner: str | None = None
    state: tuple[str, ...] = ()
    site: str | None = None
    name: str | None = None
    since: float | None = None
    task: int | None = None
    error_category: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class Page:
    """Sort key (a column name of the view's ``SORTS``), direction and page (1-based)."""

    sort: str
    descending: bool = True
    page: int = 1
    per_page: int = 50

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def glob(pattern: str) -> str:
    """A ``*`` glob as a LIKE pattern, with ``%``, ``_`` and ``\\`` taken literally."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _ordered(q: Select, col: ColumnElement, page: Page, tiebreak: ColumnElement) -> Select:
    first = col.desc() if page.descending else col.asc()
    if getattr(col, "nullable", True):   # NULLS LAST would keep an index from ordering
        first = first.nulls_last()
    second = tiebreak.desc() if page.descending else tiebreak.asc()
    return q.order_by(first, second).limit(page.per_page).offset(page.offset)


# ---- tasks ---------------------------------------------------------------------------
TASK_DURATION = func.coalesce(tasks.c.ended_at, tasks.c.modified_at) - tasks.c.created_at
TASK_SORTS: dict[str, ColumnElement] = {
    "id": tasks.c.id, "name": tasks.c.name, "owner": tasks.c.owner, "state": tasks.c.state,
    "created": tasks.c.created_at, "modified": tasks.c.modified_at,
    "duration": TASK_DURATION, "jobs": tasks.c.n_jobs,
}


def task_conditions(f: Filter) -> list[ColumnElement]:
    """The ``WHERE`` terms of a task listing."""
    out: list[ColumnElement] = []
    if f.owner:
        out.append(tasks.c.owner == f.owner)
    if f.state:
        out.append(tasks.c.state.in_(f.state))
    if f.name:
        out.append(tasks.c.name.like(glob(f.name), escape="\\"))
    if f.since is not None:
        out.append(tasks.c.modified_at >= f.since)
    if f.site:
        out.append(exists().where(jobs.c.task_id == tasks.c.id, jobs.c.site == f.site))
    return out


def task_page(conn: Connection, f: Filter, page: Page) -> tuple[int, dict[str, int], list]:
    """``(total, {state: n} over the filter, rows of this page)``."""
    where = task_conditions(f)
    total = conn.execute(select(func.count()).select_from(tasks).where(*where)).scalar_one()
    facets = dict(conn.execute(select(tasks.c.state, func.count()).where(*where)
                               .group_by(tasks.c.state)).all())
    q = select(tasks.c.id, tasks.c.name, tasks.c.owner, tasks.c.state, tasks.c.n_jobs,
               tasks.c.created_at, tasks.c.modified_at, tasks.c.ended_at, tasks.c.message,
               TASK_DURATION.label("duration")).where(*where)
    rows = conn.execute(_ordered(q, TASK_SORTS[page.sort], page, tasks.c.id)).all()
    return total, facets, rows


def task_aggregates(conn: Connection, ids: Sequence[int]) -> dict[int, dict]:
    """For each task of ``ids``: ``{"attempts": {state: n}, "sites": [..], "failures": n,
    "done": n}``, three grouped queries for the whole page."""
    out: dict[int, dict] = {i: {"attempts": {}, "sites": set(), "failures": 0} for i in ids}
    if not ids:
        return out
    for task_id, site, state, n in conn.execute(
            select(jobs.c.task_id, jobs.c.site, jobs.c.state, func.count())
            .where(jobs.c.task_id.in_(ids))
            .group_by(jobs.c.task_id, jobs.c.site, jobs.c.state)):
        agg = out[task_id]
        agg["attempts"][state] = agg["attempts"].get(state, 0) + n
        if site:
            agg["sites"].add(site)
        if state == "failed":
            agg["failures"] += n
    done = dict(conn.execute(select(jobs.c.task_id, func.count(func.distinct(jobs.c.job_index)))
                             .where(jobs.c.task_id.in_(ids), jobs.c.state == "finished")
                             .group_by(jobs.c.task_id)).all())
    for task_id, agg in out.items():
        agg["sites"] = sorted(agg["sites"])
        agg["done"] = done.get(task_id, 0)
    return out


# ---- jobs ----------------------------------------------------------------------------
JOB_DURATION = jobs.c.ended_at - jobs.c.started_at
JOB_SORTS: dict[str, ColumnElement] = {
    "id": jobs.c.id, "task": jobs.c.task_id, "index": jobs.c.job_index,
    "attempt": jobs.c.attempt, "state": jobs.c.state, "site": jobs.c.site,
    "modified": jobs.c.modified_at, "started": jobs.c.started_at, "ended": jobs.c.ended_at,
    "duration": JOB_DURATION,
}
#: Columns of a job listing's rows (no payload, no tails, no traceback).
JOB_COLUMNS = (jobs.c.id, jobs.c.task_id, jobs.c.job_index, jobs.c.attempt, jobs.c.state,
               jobs.c.site, jobs.c.pilot_id, jobs.c.created_at, jobs.c.modified_at,
               jobs.c.started_at, jobs.c.ended_at, jobs.c.error_category,
               func.substr(jobs.c.error_message, 1, 300).label("error_message"),
               JOB_DURATION.label("duration"))


def job_conditions(f: Filter, seek_tasks: bool = True) -> list[ColumnElement]:
    """The ``WHERE`` terms of a job listing (owner and name are the task's).

    ``seek_tasks=False`` writes the terms on the task (``task``, ``owner``, ``name``) on
    ``task_id + 0``, an expression no index seeks on (SQLite's query planner documents
    this, "disqualifying WHERE clause terms", with a unary ``+``; PostgreSQL's is the
    same rule): a query then reads ix_jobs_facets, which
    holds ``task_id`` and so covers the term, rather than seeking a task index that does
    not cover the query and reading each job's row.  Without statistics SQLite costs the
    two plans the same and picks by the order the indexes were made in."""
    out: list[ColumnElement] = []
    task_id = jobs.c.task_id if seek_tasks else jobs.c.task_id + 0
    if f.task is not None:
        out.append(task_id == f.task)
    if f.state:
        out.append(jobs.c.state.in_(f.state))
    if f.site:
        out.append(jobs.c.site == f.site)
    if f.error_category:
        out.append(jobs.c.error_category == f.error_category)
    if f.attempt is not None:
        out.append(jobs.c.attempt == f.attempt)
    if f.since is not None:
        out.append(jobs.c.modified_at >= f.since)
    if f.owner or f.name:
        sub = select(tasks.c.id)
        if f.owner:
            sub = sub.where(tasks.c.owner == f.owner)
        if f.name:
            sub = sub.where(tasks.c.name.like(glob(f.name), escape="\\"))
        out.append(task_id.in_(sub))
    return out


JOB_FACETS = {"state": jobs.c.state, "site": jobs.c.site,
              "error_category": jobs.c.error_category, "attempt": jobs.c.attempt}


def job_page(conn: Connection, f: Filter, page: Page) -> tuple[int, dict[str, dict], list]:
    """``(total, {facet: {value: n}} over the filter, rows of this page)``; the facets
    are ``state``, ``site``, ``error_category`` and ``attempt`` (a missing value is
    ``"-"``; at most 50 values each, the commonest).  One grouped scan gives the total
    and every facet: its groups are few (states x sites x categories x attempts)."""
    where = job_conditions(f)
    cols = list(JOB_FACETS.values())
    counts: dict[str, dict[str, int]] = {name: {} for name in JOB_FACETS}
    total = 0
    for *values, n in conn.execute(select(*cols, func.count()).where(*where).group_by(*cols)):
        total += n
        for name, v in zip(JOB_FACETS, values, strict=True):
            key = "-" if v is None else str(v)
            counts[name][key] = counts[name].get(key, 0) + n
    facets = {name: dict(sorted(c.items(), key=lambda kv: -kv[1])[:50])
              for name, c in counts.items()}
    # The page's ids first, from the filter's and the sort's columns alone (an index
    # covers them for the common filters), then only those rows: a deep page does not
    # read every row it skips.
    ids = conn.execute(_ordered(select(jobs.c.id).where(*where), JOB_SORTS[page.sort],
                                page, jobs.c.id)).scalars().all()
    if not ids:
        return total, facets, []
    found = {r.id: r for r in conn.execute(select(*JOB_COLUMNS).where(jobs.c.id.in_(ids)))}
    return total, facets, [found[i] for i in ids]


# ---- scouting ------------------------------------------------------------------------
#: Scout jobs a task page lists (JEDI sends a few: this only bounds a strange task).
SCOUTS_SHOWN = 100


def scouts(conn: Connection, task_id: int) -> list[dict]:
    """A task's scout jobs (JEDI's scouting: the first few jobs, whose measures size the
    rest), the newest attempt of each: ``[{"job_index", "events", "attempt", "state",
    "site", "wall_s", "events_per_s"}]`` by job index; ``wall_s`` and ``events_per_s``
    (events over wall seconds, reading included) are None until the attempt ended."""
    ev = (select(chunks.c.job_index, func.sum(chunks.c.stop - chunks.c.start).label("events"))
          .where(chunks.c.task_id == task_id, chunks.c.scout.is_(True))
          .group_by(chunks.c.job_index).subquery())
    q = (select(ev.c.job_index, ev.c.events, jobs.c.attempt, jobs.c.state, jobs.c.site,
                JOB_DURATION.label("wall_s"))
         .join(jobs, (jobs.c.task_id == task_id) & (jobs.c.job_index == ev.c.job_index))
         .order_by(ev.c.job_index, jobs.c.attempt).limit(SCOUTS_SHOWN * 4))
    newest: dict[int, dict] = {}
    for r in conn.execute(q):
        wall = r.wall_s if r.wall_s is not None and r.wall_s > 0 else None
        newest[r.job_index] = {"job_index": r.job_index, "events": int(r.events),
                               "attempt": r.attempt, "state": r.state, "site": r.site,
                               "wall_s": wall,
                               "events_per_s": r.events / wall if wall else None}
    return list(newest.values())[:SCOUTS_SHOWN]


# ---- histograms ----------------------------------------------------------------------
def histogram(conn: Connection, value: ColumnElement, group: ColumnElement,
              where: Sequence[ColumnElement], source=None) -> dict:
    """``value`` binned into :data:`BINS` equal bins over its range, counted per ``group``:
    ``{"edges": [BINS + 1 floats], "groups": {name: {"counts": [BINS ints], "n", "mean",
    "min", "max"}}}``; ``{"edges": [], "groups": {}}`` when there is no value."""
    base = select(group.label("g"), value.label("v")).where(*where, value.is_not(None))
    if source is not None:
        base = base.select_from(source)
    sub = base.subquery()
    lo, hi = conn.execute(select(func.min(sub.c.v), func.max(sub.c.v))).one()
    if lo is None:
        return {"edges": [], "groups": {}}
    width = (hi - lo) / BINS or 1.0
    scaled = (sub.c.v - literal(lo)) / literal(width)
    # a bin is the floor of the scaled value: SQLite's CAST truncates (the same for values
    # >= 0), PostgreSQL's rounds, so it floors first
    raw = cast(func.floor(scaled) if conn.dialect.name == "postgresql" else scaled, Integer)
    b = case((raw >= BINS, BINS - 1), else_=raw).label("b")
    groups: dict[str, dict] = {}
    for g, n, mean, mn, mx in conn.execute(
            select(sub.c.g, func.count(), func.avg(sub.c.v), func.min(sub.c.v),
                   func.max(sub.c.v)).group_by(sub.c.g)):
        groups[g or "-"] = {"counts": [0] * BINS, "n": n, "mean": float(mean),
                            "min": float(mn), "max": float(mx)}
    for g, bin_, n in conn.execute(select(sub.c.g, b, func.count()).group_by(sub.c.g, b)):
        groups[g or "-"]["counts"][min(max(int(bin_), 0), BINS - 1)] += n
    return {"edges": [lo + i * width for i in range(BINS + 1)], "groups": groups}


def job_events():
    """A subquery ``(task_id, job_index, events)``: the input events of each job's chunks."""
    return (select(chunks.c.task_id, chunks.c.job_index,
                   func.sum(chunks.c.stop - chunks.c.start).label("events"))
            .group_by(chunks.c.task_id, chunks.c.job_index).subquery())


def task_distributions(conn: Connection, task_id: int) -> dict:
    """A task's finished attempts per site: ``{"walltime_s": histogram, "events_per_s":
    histogram, "memory_mb": histogram}`` (see :func:`histogram`; events per second empty
    for tasks without input; memory is each attempt's measured peak resident memory of
    its payload, empty where no pilot measured it)."""
    finished = [jobs.c.task_id == task_id, jobs.c.state == "finished",
                jobs.c.started_at.is_not(None), jobs.c.ended_at > jobs.c.started_at]
    wall = histogram(conn, JOB_DURATION, jobs.c.site, finished)
    ev = job_events()
    rate = ev.c.events / JOB_DURATION
    joined = jobs.join(ev, (ev.c.task_id == jobs.c.task_id) & (ev.c.job_index == jobs.c.job_index))
    return {"walltime_s": wall,
            "events_per_s": histogram(conn, rate, jobs.c.site, finished, source=joined),
            "memory_mb": histogram(conn, jobs.c.peak_rss_mb, jobs.c.site, finished)}


def progress_over_time(conn: Connection, task_id: int) -> dict:
    """Finished attempts of a task by end time, cumulative: ``{"edges": [BINS + 1 times],
    "done": [BINS cumulative counts]}`` (empty lists when none ended)."""
    h = histogram(conn, jobs.c.ended_at, literal("all"),
                  [jobs.c.task_id == task_id, jobs.c.state == "finished"])
    if not h["edges"]:
        return {"edges": [], "done": []}
    total, done = 0, []
    for n in h["groups"]["all"]["counts"]:
        total += n
        done.append(total)
    return {"edges": h["edges"], "done": done}


def time_bins(conn: Connection, where: Sequence[ColumnElement]) -> dict:
    """Failed attempts (of ``where``) by end time and category: :func:`histogram`'s shape,
    grouped by error category."""
    return histogram(conn, jobs.c.ended_at, jobs.c.error_category, where)
