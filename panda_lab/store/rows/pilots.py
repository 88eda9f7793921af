"""Pilot rows: register, heartbeat, end, mark lost.

Functions take a ``Connection`` and open no transaction; the workflow verbs do.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.engine import Row

from panda_lab.model import PilotState
from panda_lab.store.base import dumps, loads
from panda_lab.store.errors import UnknownPilot
from panda_lab.store.schema import pilots

RUNNING = str(PilotState.RUNNING)


def insert_pilot(conn: Connection, site: str, host: str, pid: int, slots: int, info: dict,
                 t: float) -> int:
    """A new running pilot; returns its id."""
    return conn.execute(insert(pilots).values(
        site=site, host=host, pid=pid, state=RUNNING, slots=slots, started_at=t,
        heartbeat_at=t, jobs_done=0, info=dumps(info)).returning(pilots.c.id)).scalar_one()


def pilot_dict(row: Row) -> dict:
    """A pilot row as a dict, its ``info`` decoded."""
    d = dict(row._mapping)
    d["info"] = loads(d["info"])
    return d


def get(conn: Connection, pilot_id: int) -> dict:
    """A pilot's row as a dict (``info`` decoded); raises :class:`UnknownPilot`."""
    row = conn.execute(select(pilots).where(pilots.c.id == pilot_id)).first()
    if row is None:
        raise UnknownPilot(f"no pilot with id {pilot_id}")
    return pilot_dict(row)


def state(conn: Connection, pilot_id: int) -> str:
    """A pilot's state; raises :class:`UnknownPilot`."""
    st = conn.execute(select(pilots.c.state).where(pilots.c.id == pilot_id)).scalar()
    if st is None:
        raise UnknownPilot(f"no pilot with id {pilot_id}")
    return st


#: What a pilot reports of its usage (panda_lab/pilot/usage.py), as its columns.
USAGE = ("rss_mb", "cpu_s", "cpu_pct")


def touch(conn: Connection, pilot_id: int, t: float, usage: dict | None = None,
          done: int = 0) -> None:
    """The pilot lives at ``t``, using ``usage`` (``{"rss_mb", "cpu_s", "cpu_pct"}``,
    any may be missing: ``cpu_pct`` then reads NULL) when given, and finished ``done``
    more jobs: one statement."""
    params: dict = {"pilot": pilot_id, "t": t, "done": done}
    if usage:
        params.update({f"u_{k}": usage.get(k) for k in USAGE})
    conn.execute(_TOUCH[bool(usage), bool(done)], params)


def _touch(usage: bool, done: bool):
    values: dict = {"heartbeat_at": bindparam("t")}
    if usage:
        values.update({k: bindparam(f"u_{k}") for k in USAGE})
    if done:
        values["jobs_done"] = pilots.c.jobs_done + bindparam("done")
    return update(pilots).where(pilots.c.id == bindparam("pilot")).values(**values)


#: :func:`touch`'s statements, built once (it runs with every report and acquisition).
_TOUCH = {(u, d): _touch(u, d) for u in (False, True) for d in (False, True)}


def set_state(conn: Connection, pilot_ids: list[int], new: str, t: float | None = None) -> None:
    """Pilots move to ``new`` (a PilotState), heartbeating at ``t`` when given."""
    values: dict = {"state": str(new)}
    if t is not None:
        values["heartbeat_at"] = t
    conn.execute(update(pilots).where(pilots.c.id.in_(pilot_ids)).values(**values))


def silent(conn: Connection, heartbeat_before: float) -> list[int]:
    """Running pilots whose last heartbeat is older than ``heartbeat_before``."""
    return [r[0] for r in conn.execute(select(pilots.c.id).where(
        pilots.c.state == RUNNING, pilots.c.heartbeat_at < heartbeat_before))]


def running_with_pids(conn: Connection, site: str, host: str, pids: list[int]) -> list[Row]:
    """(id, pid) of the running pilots of ``site`` on ``host`` with these process ids."""
    return conn.execute(select(pilots.c.id, pilots.c.pid).where(
        pilots.c.site == site, pilots.c.host == host, pilots.c.state == RUNNING,
        pilots.c.pid.in_(pids))).all()


def refresh_running(conn: Connection, t: float) -> None:
    """Every running pilot heartbeats at ``t`` (a server's restart)."""
    conn.execute(update(pilots).where(pilots.c.state == RUNNING).values(heartbeat_at=t))


def list_dicts(conn: Connection, site: str | None, state_: str | None,
               ids: list[int] | None = None) -> list[dict]:
    """Pilots (of ``site``, in ``state_``, among ``ids``) by id, as :func:`pilot_dict`
    makes them."""
    q = select(pilots).order_by(pilots.c.id)
    if ids is not None:
        q = q.where(pilots.c.id.in_(ids))
    if site:
        q = q.where(pilots.c.site == site)
    if state_:
        q = q.where(pilots.c.state == state_)
    return [pilot_dict(r) for r in conn.execute(q)]
