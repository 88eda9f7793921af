"""Read affinity: which pilot last read an analysis job's input, and the order it gives.

Re-running an edited cell over the same data is what interactive analysis does, and a
pilot's workers keep what they read (:mod:`panda_lab.analysis.readcache`).  So dispatch
hands a pilot the jobs whose input it read last before others' (the rule of data-aware
scheduling in Dask's ``decide_worker`` and Spark's locality levels, here at the level of a
pilot), among the next :data:`WINDOW` jobs in priority order beyond the ``n`` it asked
for (:func:`pick`).  Jobs whose input another running pilot read are left to that pilot,
not for ever: a pilot with nothing else to do takes them, one per acquisition.  The key is a
digest of the job's chunks (:func:`data_key`), the holder the pilot last *handed* such a
job (it will read it), recorded in the transaction that hands it out.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import Connection, Select, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from panda_lab.model.states import PilotState
from panda_lab.store.schema import data_holders, pilots

#: Jobs looked at beyond the ``n`` a pilot asks for, to find those whose input it holds.
WINDOW = 64


def data_key(chunks: list[dict]) -> str:
    """A 32-character digest of a job's input: each chunk's ``path``, ``tree``, ``start``
    and ``stop``, in order (so a re-run split the same way has the same keys)."""
    ident = [[c["path"], c["tree"], int(c["start"]), int(c["stop"])] for c in chunks]
    return hashlib.blake2b(json.dumps(ident).encode(), digest_size=16).hexdigest()


def _window(group: bool = False) -> Select:
    from panda_lab.model.states import JobState
    from panda_lab.store.schema import jobs

    holder = (select(data_holders.c.data_key, data_holders.c.pilot_id)
              .join(pilots, pilots.c.id == data_holders.c.pilot_id)
              .where(pilots.c.state == str(PilotState.RUNNING)).subquery())
    where = (jobs.c.site.in_(bindparam("sites", expanding=True)) if group
             else jobs.c.site == bindparam("site"))
    return (select(jobs.c.id, jobs.c.priority, jobs.c.data_key,
                   holder.c.pilot_id.label("holder"), jobs.c.site)
            .select_from(jobs.outerjoin(holder, holder.c.data_key == jobs.c.data_key))
            .where(where, jobs.c.state == str(JobState.ACTIVATED))
            .order_by(jobs.c.priority.desc(), jobs.c.id).limit(bindparam("n")))


#: Built once: every acquisition runs it, and building a statement (and its cache key)
#: cost about as much as running it on SQLite.  Parameters ``site`` and ``n``.
WINDOW_SQL = _window()
#: The same over several sites (parameters ``sites`` and ``n``): the queues of the sites
#: that share a machine's cores with the pilot's (:func:`window_at`).
GROUP_WINDOW_SQL = _window(group=True)


def window(conn: Connection, site: str, n: int) -> list:
    """The first ``n`` activated jobs of ``site`` in dispatch order (priority, then
    age), each with the running pilot holding its input, if any: ``(id, priority,
    data_key, holder, site)`` rows, in one statement."""
    return conn.execute(WINDOW_SQL, {"site": site, "n": n}).all()


def window_at(conn: Connection, sites: list[str], n: int) -> list:
    """:func:`window` over the queues of ``sites`` together: their first ``n`` activated
    jobs by priority, then age."""
    if not sites:
        return []
    return conn.execute(GROUP_WINDOW_SQL, {"sites": sites, "n": n}).all()


def _upsert(dialect) -> object:
    ins = dialect.insert(data_holders)
    return ins.on_conflict_do_update(
        index_elements=[data_holders.c.data_key],
        set_={"pilot_id": ins.excluded.pilot_id, "at": ins.excluded.at})


_HOLD = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}


def hold(conn: Connection, pilot_id: int, keys: set[str], t: float) -> None:
    """``pilot_id`` is handed jobs reading ``keys``: it holds them now."""
    if not keys:
        return
    conn.execute(_HOLD["postgresql" if conn.dialect.name == "postgresql" else "sqlite"],
                 [{"data_key": k, "pilot_id": pilot_id, "at": t} for k in sorted(keys)])


def pick(pilot_id: int, rows: list, held: dict[str, int], n: int,
         site: str | None = None) -> list[int]:
    """Ids of up to ``n`` of ``rows`` (``id``, ``priority``, ``data_key``, ``site``, in
    priority then age order) for ``pilot_id``: by priority, its own inputs first, then
    inputs no running pilot holds, by age.  Inputs another running pilot holds are left to
    it (it takes them when it is free); only when nothing else is left does this pilot
    take one of them, one per acquisition, so an idle pilot helps with the end of a re-run
    without taking a busy one's whole share at once.  With ``site`` (the pilot's), among
    jobs alike in those two the pilot's own site's come before those of the sites whose
    queues it may also take (``jobs.dispatch``'s core siblings)."""
    def rank(r) -> int:
        who = held.get(r.data_key) if r.data_key else None
        return 0 if who == pilot_id else 1 if who is None else 2

    ranked = sorted(rows, key=lambda r: (-r.priority, rank(r),
                                         site is not None and r.site != site, r.id))
    free = [r.id for r in ranked if rank(r) < 2][:n]
    return free or [r.id for r in ranked[:1]]
