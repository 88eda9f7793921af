"""Stage-in rows: the files each site's cache holds, and what each attempt read.

A pilot copies a job's input into its site's cache when brokerage says ``stage-in``
(:mod:`panda_lab.model.staging`), reads it there on later jobs, and evicts the least
recently used files to stay under the site's ``cache_bytes``; it reports each of these
with the job (``cache``: ``[{"action": "staged"|"hit"|"evicted", "path", "bytes"}]``).
The rows follow those reports in the report's transaction, and brokerage counts the
files held as local at the site.  Functions take a ``Connection`` and open no transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from panda_lab.store.schema import jobs, site_cache

#: The actions a pilot reports of its site's cache.
ACTIONS = ("staged", "hit", "evicted")


def apply(conn: Connection, reports: Iterable[tuple[str, list[dict]]], t: float) -> None:
    """Apply what pilots did to their sites' caches, in order: ``reports`` are ``(site,
    [{"action", "path", "bytes"}])``; ``staged`` and ``hit`` record the file as held and
    used at ``t`` (a hit also teaches the server a copy whose report was lost),
    ``evicted`` removes it."""
    held: dict[tuple[str, str], int | None] = {}   # None: evicted
    for site, actions in reports:
        for a in actions:
            key = (site, str(a["path"]))
            held[key] = None if a["action"] == "evicted" else int(a.get("bytes") or 0)
    for site, path in [k for k, v in held.items() if v is None]:
        conn.execute(delete(site_cache).where(site_cache.c.site == site,
                                              site_cache.c.path == path))
    added = [{"site": s, "path": p, "bytes": b, "used_at": t}
             for (s, p), b in held.items() if b is not None]
    if added:
        ins = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(
            site_cache).values(added)
        conn.execute(ins.on_conflict_do_update(
            index_elements=[site_cache.c.site, site_cache.c.path],
            set_={"bytes": ins.excluded.bytes, "used_at": ins.excluded.used_at}))


def held(conn: Connection) -> dict[str, frozenset[str]]:
    """The files each site's cache holds (site -> paths); sites holding none are absent."""
    out: dict[str, set[str]] = {}
    for site, path in conn.execute(select(site_cache.c.site, site_cache.c.path)):
        out.setdefault(site, set()).add(path)
    return {s: frozenset(p) for s, p in out.items()}


def listing(conn: Connection, site: str | None = None) -> list[dict]:
    """The cached files ``[{"site", "path", "bytes", "used_at"}]`` (of ``site`` if
    given), by site, then most recently used first."""
    q = select(site_cache).order_by(site_cache.c.site, site_cache.c.used_at.desc())
    if site is not None:
        q = q.where(site_cache.c.site == site)
    return [dict(r._mapping) for r in conn.execute(q)]


def record_reads(conn: Connection, reads: list[tuple[int, list[dict]]]) -> None:
    """Keep on each attempt what it read, ``(job id, [{"endpoint", "bytes", "seconds",
    "requests"}])``, as JSON in ``jobs.reads``."""
    if reads:
        conn.execute(update(jobs).where(jobs.c.id == bindparam("b_id"))
                     .values(reads=bindparam("b_reads")),
                     [{"b_id": i, "b_reads": orjson.dumps(rs).decode()} for i, rs in reads])
