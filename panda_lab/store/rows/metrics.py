"""Counts for monitoring (Prometheus' ``/metrics``), each one grouped SQL query: the
store is the truth, so a scrape reads it rather than counters kept beside it.

Functions take a ``Connection`` and open no transaction; :meth:`Reads.metric_counts`
does.  No query loads rows: each answers a few dozen groups whatever the number of jobs
(the job counts walk the ``(site, state, ...)`` index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from panda_lab.model import PilotState
from panda_lab.store.schema import jobs, pilots, sites, tasks


@dataclass
class MetricCounts:
    """What a scrape shows of the store: ``jobs[(state, site)]`` (attempts; ``site`` is
    ``""`` for a job not brokered yet), ``tasks[state]``, ``pilots[(site, state)]``,
    ``oldest_heartbeat[site]`` (seconds since the epoch, of the running pilot heard from
    longest ago) and ``sites``, every site's name."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    pilots: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_heartbeat: dict[str, float] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)


def counts(conn: Connection) -> MetricCounts:
    """Every count a scrape shows, in five grouped queries."""
    out = MetricCounts()
    for site, state, n in conn.execute(
            select(jobs.c.site, jobs.c.state, func.count()).group_by(jobs.c.site,
                                                                      jobs.c.state)):
        out.jobs[(state, site or "")] = n
    out.tasks = dict(conn.execute(select(tasks.c.state, func.count())
                                  .group_by(tasks.c.state)).all())
    for site, state, n in conn.execute(select(pilots.c.site, pilots.c.state, func.count())
                                       .group_by(pilots.c.site, pilots.c.state)):
        out.pilots[(site, state)] = n
    out.oldest_heartbeat = dict(conn.execute(
        select(pilots.c.site, func.min(pilots.c.heartbeat_at))
        .where(pilots.c.state == str(PilotState.RUNNING)).group_by(pilots.c.site)).all())
    out.sites = list(conn.execute(select(sites.c.name).order_by(sites.c.name)).scalars())
    return out
