"""Pilots in the store: registration, heartbeats, and which held jobs they must drop."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from panda_lab.model import JOB_FINAL
from panda_lab.store.base import Changes, StoreBase, dumps, loads, now
from panda_lab.store.schema import jobs, pilots, sites


class UnknownSite(LookupError):
    pass


class UnknownPilot(LookupError):
    pass


class PilotStore:
    def register_pilot(self: StoreBase, site: str, host: str, pid: int, slots: int,
                       info: dict) -> int:
        t = now()
        with self.tx() as conn:
            if conn.execute(select(sites.c.name).where(sites.c.name == site)).first() is None:
                known = ", ".join(r[0] for r in conn.execute(select(sites.c.name))) or "none"
                raise UnknownSite(f"unknown site {site!r}; known sites: {known}")
            return conn.execute(insert(pilots).values(
                site=site, host=host, pid=pid, state="running", slots=slots, started_at=t,
                heartbeat_at=t, jobs_done=0, info=dumps(info)).returning(pilots.c.id)).scalar_one()

    def pilot(self: StoreBase, pilot_id: int) -> dict:
        with self.tx() as conn:
            row = conn.execute(select(pilots).where(pilots.c.id == pilot_id)).first()
        if row is None:
            raise UnknownPilot(f"no pilot with id {pilot_id}")
        d = dict(row._mapping)
        d["info"] = loads(d["info"])
        return d

    def heartbeat(self: StoreBase, pilot_id: int, held: list[int]) -> list[int]:
        """Record that a pilot lives; return the held jobs it must kill or drop
        (cancelled, failed by the watchdog, or given to another attempt)."""
        t = now()
        with self.tx() as conn:
            state = conn.execute(select(pilots.c.state).where(pilots.c.id == pilot_id)).scalar()
            if state is None:
                raise UnknownPilot(f"no pilot with id {pilot_id}")
            if state == "lost":  # it came back: the watchdog was too quick, not the pilot
                conn.execute(update(pilots).where(pilots.c.id == pilot_id)
                             .values(state="running"))
            self._touch_pilot(conn, pilot_id, t, held)
            if not held:
                return []
            rows = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.pilot_id)
                                .where(jobs.c.id.in_(held))).all()
        final = {str(s) for s in JOB_FINAL}
        known = {r.id for r in rows}
        drop = [r.id for r in rows if r.state in final or r.pilot_id != pilot_id]
        return sorted(drop + [i for i in held if i not in known])

    def end_pilot(self: StoreBase, pilot_id: int, state: str = "finished") -> None:
        with self.tx() as conn:
            conn.execute(update(pilots).where(pilots.c.id == pilot_id)
                         .values(state=state, heartbeat_at=now()))

    def mark_lost_pilots(self: StoreBase, heartbeat_before: float) -> list[int]:
        with self.tx() as conn:
            ids = [r[0] for r in conn.execute(select(pilots.c.id).where(
                pilots.c.state == "running", pilots.c.heartbeat_at < heartbeat_before))]
            if ids:
                conn.execute(update(pilots).where(pilots.c.id.in_(ids)).values(state="lost"))
        return ids

    def pilots_gone(self: StoreBase, site: str, host: str,
                    gone: list[tuple[int, int | None]]) -> Changes:
        """Pilots of ``site`` on ``host`` whose processes were seen to end without saying
        goodbye: marked lost, and the jobs they held failed (and retried) at once."""
        from panda_lab.store.jobs import ON_PILOT

        codes = dict(gone)
        with self.tx() as conn:
            found = conn.execute(select(pilots.c.id, pilots.c.pid).where(
                pilots.c.site == site, pilots.c.host == host, pilots.c.state == "running",
                pilots.c.pid.in_(list(codes)))).all()
            if found:
                conn.execute(update(pilots).where(pilots.c.id.in_([r.id for r in found]))
                             .values(state="lost"))
            held = {r.id: [j[0] for j in conn.execute(select(jobs.c.id).where(
                jobs.c.pilot_id == r.id, jobs.c.state.in_(ON_PILOT)))] for r in found}
        changes = Changes()
        for r in found:
            if held[r.id]:
                code = codes[r.pid]
                why = f"exit code {code}" if code is not None and code >= 0 else \
                    f"killed by signal {-code}" if code is not None else "exit unknown"
                more = self.fail_jobs(held[r.id], "system",
                                      f"its pilot {r.id} (pid {r.pid}) ended ({why}) "
                                      "while holding the job")
                changes.extend(more)
        return changes

    def list_pilots(self: StoreBase, site: str | None = None,
                    state: str | None = None) -> list[dict]:
        with self.tx() as conn:
            q = select(pilots).order_by(pilots.c.id)
            if site:
                q = q.where(pilots.c.site == site)
            if state:
                q = q.where(pilots.c.state == state)
            out = []
            for r in conn.execute(q):
                d = dict(r._mapping)
                d["info"] = loads(d["info"])
                out.append(d)
            return out
