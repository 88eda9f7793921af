"""Site rows, and the loads brokerage weighs them by.

Functions take a ``Connection`` and open no transaction; the workflow verbs do.
"""

from __future__ import annotations

import functools

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from panda_lab.model import JOB_ON_PILOT, JobState, PilotState, SiteState
from panda_lab.model.brokerage import SiteLoad
from panda_lab.store.base import dumps, loads, now
from panda_lab.store.errors import UnknownSite
from panda_lab.store.rows import staging
from panda_lab.store.rows.links import site_statistics
from panda_lab.store.schema import jobs, pilots, sites, tasks

J = JobState
#: Jobs brokered to a site and waiting for a pilot there.
QUEUED = (J.ASSIGNED, J.ACTIVATED)
#: Jobs a site has: queued there, or on its pilots.
AT_SITE = [str(s) for s in (*QUEUED, *sorted(JOB_ON_PILOT, key=list(J).index))]


def upsert(conn: Connection, configs: list[dict]) -> None:
    """Record the configured sites (name, kind, provisioner, config); others are kept."""
    rows = [{"name": c["name"], "kind": c["kind"], "provisioner": c["provisioner"],
             "config": dumps(c), "state": str(SiteState.ONLINE), "reason": "",
             "updated_at": now()} for c in configs]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(sites).values(rows)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[sites.c.name],
        set_={"kind": stmt.excluded.kind, "provisioner": stmt.excluded.provisioner,
              "config": stmt.excluded.config, "updated_at": stmt.excluded.updated_at}))


def set_state(conn: Connection, name: str, state: str, reason: str) -> None:
    """A site's state (a SiteState) and the reason."""
    conn.execute(update(sites).where(sites.c.name == name)
                 .values(state=str(state), reason=reason, updated_at=now()))


def names(conn: Connection) -> list[str]:
    """The site names, sorted."""
    return [r[0] for r in conn.execute(select(sites.c.name).order_by(sites.c.name))]


def require(conn: Connection, name: str) -> None:
    """Raises :class:`UnknownSite` (naming the known sites) unless ``name`` is a site."""
    if conn.execute(select(sites.c.name).where(sites.c.name == name)).first() is None:
        raise UnknownSite(f"unknown site {name!r}; known sites: "
                          f"{', '.join(names(conn)) or 'none'}")


def states(conn: Connection) -> dict[str, str]:
    """Each site's state, by name."""
    return dict(conn.execute(select(sites.c.name, sites.c.state)).all())


def endpoints(conn: Connection) -> dict[str, str]:
    """Each site's own storage endpoint (its ``endpoint`` key; ``""`` when it names none)."""
    return {r.name: str(loads(r.config).get("endpoint") or "")
            for r in conn.execute(select(sites.c.name, sites.c.config))}


def demand(conn: Connection, name: str) -> int:
    """Jobs queued or held by pilots at a site."""
    return conn.execute(select(func.count()).select_from(jobs)
                        .where(jobs.c.site == name, jobs.c.state.in_(AT_SITE))).scalar_one()


def loads_(conn: Connection, owner: str | None = None) -> list[SiteLoad]:
    """The snapshot brokerage decides on: each site's state, capacity (slots of its
    running pilots, else the slots it is configured for), queued and running jobs, the
    jobs there reading over each link (``readers``), the files its stage-in cache holds
    and its bound, and what its past attempts measured (events/s per slot, failure
    rate, mean job time).  With ``owner``, queued and running count that owner's jobs
    only (what a user is shown; brokerage always weighs everyone's)."""
    counts: dict[str, dict[str, int]] = {}
    readers: dict[str, dict[str, int]] = {}
    query = (select(jobs.c.site, jobs.c.state, jobs.c.read_from, func.count())
             .where(jobs.c.state.in_(AT_SITE)))
    if owner is not None:
        query = query.where(jobs.c.task_id.in_(select(tasks.c.id)
                                               .where(tasks.c.owner == owner)))
    for site, state, ep, n in conn.execute(
            query.group_by(jobs.c.site, jobs.c.state, jobs.c.read_from)):
        c = counts.setdefault(site, {})
        c[state] = c.get(state, 0) + n
        if ep:  # the jobs there reading over the link from ``ep`` share it
            r = readers.setdefault(site, {})
            r[ep] = r.get(ep, 0) + n
    slots = dict(conn.execute(select(pilots.c.site, func.sum(pilots.c.slots))
                              .where(pilots.c.state == str(PilotState.RUNNING))
                              .group_by(pilots.c.site)).all())
    stats = site_statistics(conn)
    cached = staging.held(conn)
    rows = [(row, loads(row.config)) for row in conn.execute(select(sites).order_by(sites.c.name))]
    pooled = shared_speed(stats, [row.name for row, cfg in rows if cfg.get("shared_cores")])
    out = []
    for row, cfg in rows:
        c = counts.get(row.name, {})
        rate, failure, mean_s = stats.get(row.name, (None, 0.0, None))
        rate, mean_s = pooled.get(row.name, (rate, mean_s))
        configured = int(cfg.get("pilots", 1)) * int(cfg.get("slots", 1))
        out.append(SiteLoad(
            name=row.name, kind=row.kind, state=row.state, reason=row.reason,
            capacity=int(slots.get(row.name) or configured),
            queued=sum(c.get(s, 0) for s in QUEUED),
            running=sum(c.get(s, 0) for s in JOB_ON_PILOT),
            endpoint=str(cfg.get("endpoint") or ""), slot_rate=rate, failure_rate=failure,
            mean_job_s=mean_s, readers=readers.get(row.name, {}),
            cached=cached.get(row.name, frozenset()),
            cache_bytes=int(cfg.get("cache_bytes") or 0)))
    return out


def core_siblings(conn: Connection, site: str) -> list[str]:
    """The other online sites whose pilots share this machine's cores with ``site``'s
    (each with ``shared_cores`` in its configuration: the embedded default's local sites
    on a machine of fewer cores than their workers, :func:`panda_lab.resources.plan_local`),
    sorted; ``[]`` when ``site`` shares none or is not online.  One statement."""
    group = {r.name for r in conn.execute(_ONLINE, {"online": str(SiteState.ONLINE)})
             if _shares_cores(r.config)}
    return sorted(group - {site}) if site in group else []


@functools.lru_cache(maxsize=256)
def _shares_cores(config: str | None) -> bool:
    """Whether a site's configuration (JSON text, as stored) has ``shared_cores``: read
    on every acquisition that looks at the siblings' queues, parsed once per text."""
    return bool(loads(config).get("shared_cores"))


_ONLINE = select(sites.c.name, sites.c.config).where(sites.c.state == bindparam("online"))
_ON_PILOT = [str(s) for s in JOB_ON_PILOT]
#: :func:`all_busy`'s one statement, built once (parameter ``names``).
_ALL_BUSY = select(sites.c.name).where(
    sites.c.name.in_(bindparam("names", expanding=True)),
    select(func.count()).where(jobs.c.site == sites.c.name, jobs.c.state.in_(_ON_PILOT))
    .scalar_subquery()
    >= select(func.coalesce(func.sum(pilots.c.slots), 0))
    .where(pilots.c.site == sites.c.name, pilots.c.state == str(PilotState.RUNNING))
    .scalar_subquery())


def all_busy(conn: Connection, names: list[str]) -> list[str]:
    """Those of ``names`` whose running pilots have no slot free: as many jobs on them
    (``sent`` included) as they have slots, or no running pilot at all; in the order of
    ``names``.  One statement (none for no names)."""
    if not names:
        return []
    busy = set(conn.execute(_ALL_BUSY, {"names": list(names)}).scalars())
    return [n for n in names if n in busy]


def shared_speed(stats: dict[str, tuple], names: list[str]
                 ) -> dict[str, tuple[float | None, float | None]]:
    """One speed for the local sites that share the machine's cores (``shared_cores``):
    ``{site: (slot_rate, mean_job_s)}``, each the mean of the group's measured ones
    (``stats`` as :func:`~.links.site_statistics` gives it); ``{}`` for a group of
    fewer than two or with nothing measured.

    Their jobs run on the same cores, taking turns: speeds learned apart differ by the
    noise of a few jobs only (0.095, 0.109 and 0.137 s a job for the embedded default's
    three sites after a warm-up, on two cores), and brokerage weighs by them, so an
    analysis split unevenly (13/10/9 of 32 jobs) and the site with the most ran alone on
    one core at the end.  Failure rates stay each site's own."""
    rates = [stats[n][0] for n in names if n in stats and stats[n][0] is not None]
    if len(names) < 2 or not rates:
        return {}
    means = [stats[n][2] for n in names if n in stats and stats[n][2] is not None]
    mean = sum(means) / len(means) if means else None
    return {name: (sum(rates) / len(rates), mean) for name in names}


def stalled(conn: Connection, since: float) -> list[str]:
    """Sites whose queue stalled: they have jobs activated before ``since`` still waiting,
    and none of their jobs moved (dispatched, started, ended) after ``since``.  Sorted."""
    waiting = {site for site, in conn.execute(
        select(jobs.c.site).where(jobs.c.state == str(J.ACTIVATED),
                                  jobs.c.modified_at < since).group_by(jobs.c.site))}
    if not waiting:
        return []
    active = {site for site, in conn.execute(
        select(jobs.c.site).where(jobs.c.site.in_(sorted(waiting)),
                                  jobs.c.state.notin_([str(s) for s in QUEUED]),
                                  jobs.c.modified_at >= since).group_by(jobs.c.site))}
    return sorted(waiting - active)


def listing(conn: Connection, owner: str | None = None) -> list[dict]:
    """Sites with their running pilots, queued and running jobs (``owner``'s only when
    given; pilots are everyone's):
    ``[{"name", "kind", "provisioner", "state", "reason", "pilots", "queued", "running",
    "description", optional "cache": {"files", "bytes", "limit"}}]`` by name (``cache``:
    a site's stage-in cache, as its pilots reported it)."""
    by_name = {s.name: s for s in loads_(conn, owner)}
    n_pilots = dict(conn.execute(select(pilots.c.site, func.count())
                                 .where(pilots.c.state == str(PilotState.RUNNING))
                                 .group_by(pilots.c.site)).all())
    out = []
    for row in conn.execute(select(sites).order_by(sites.c.name)):
        ld = by_name[row.name]
        out.append({
            "name": row.name, "kind": row.kind, "provisioner": row.provisioner,
            "state": row.state, "reason": row.reason, "pilots": n_pilots.get(row.name, 0),
            "queued": ld.queued, "running": ld.running,
            "description": loads(row.config).get("description", ""),
        })
        if ld.cache_bytes:  # its stage-in cache: files held, their bytes, the bound
            held = staging.listing(conn, row.name)
            out[-1]["cache"] = {"files": len(held), "bytes": sum(h["bytes"] for h in held),
                                "limit": ld.cache_bytes}
    return out
