"""Heartbeats in bulk: many pilots' heartbeats, and the jobs they hold, in a few
statements (``executemany`` with bound parameters), for the server's coalesced
heartbeats (panda_lab/server/heartbeats.py).

Functions take a ``Connection`` and open no transaction; ``Admin.heartbeats`` does.
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, Float, bindparam, case, or_, update

from panda_lab.model import PilotState
from panda_lab.store.rows.jobs import ON_PILOT
from panda_lab.store.rows.pilots import USAGE
from panda_lab.store.schema import jobs, pilots


def _later(column: Column):
    """The later of a time column and ``b_t`` (portable: no GREATEST in SQLite)."""
    t = bindparam("b_t", type_=Float)
    return case((column.is_(None), t), (column < t, t), else_=column)


#: A pilot lives at ``b_t`` (a heartbeat never moves its time back: an older one flushed
#: after a newer word, a goodbye's, changes nothing).
TOUCH = (update(pilots).where(pilots.c.id == bindparam("b_id"))
         .values(heartbeat_at=_later(pilots.c.heartbeat_at)))
#: The same with the usage it reported.
TOUCH_USAGE = TOUCH.values(**{k: bindparam(f"b_{k}") for k in USAGE})
#: A pilot marked lost that heartbeats runs again (the watchdog was too quick), if heard
#: after it was last heard of: a beat heard before its process was seen to end (held in
#: memory, written up to a second later) must not bring a dead pilot back.
REVIVE = (update(pilots).where(pilots.c.id == bindparam("b_id"),
                               pilots.c.state == str(PilotState.LOST),
                               pilots.c.heartbeat_at < bindparam("b_t", type_=Float))
          .values(state=str(PilotState.RUNNING)))
#: One held job lives at ``b_t``, if its pilot holds it.
JOB = (update(jobs).where(jobs.c.id == bindparam("b_job"), jobs.c.pilot_id == bindparam("b_id"),
                          # an IN list cannot be bound in an executemany
                          or_(*(jobs.c.state == s for s in ON_PILOT)))
       .values(heartbeat_at=_later(jobs.c.heartbeat_at)))


def apply(conn: Connection, beats: list[tuple[int, float, dict | None, list[int]]]) -> None:
    """``beats``: ``(pilot id, time, usage or None, held job ids)``, one per pilot."""
    if not beats:
        return
    conn.execute(REVIVE, [{"b_id": p, "b_t": t} for p, t, _, _ in beats])
    plain = [{"b_id": p, "b_t": t} for p, t, usage, _ in beats if not usage]
    if plain:
        conn.execute(TOUCH, plain)
    used = [{"b_id": p, "b_t": t, **{f"b_{k}": usage.get(k) for k in USAGE}}
            for p, t, usage, _ in beats if usage]
    if used:
        conn.execute(TOUCH_USAGE, used)
    held = [{"b_job": j, "b_id": p, "b_t": t} for p, t, _, ids in beats for j in ids]
    if held:
        conn.execute(JOB, held)
