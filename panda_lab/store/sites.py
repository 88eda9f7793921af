"""Sites in the store, and the loads brokerage weighs them by."""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from panda_lab.model import JobState
from panda_lab.server.brokerage import SiteLoad
from panda_lab.store.base import StoreBase, dumps, loads, now
from panda_lab.store.schema import jobs, pilots, sites

J = JobState


class SiteStore(StoreBase):
    def upsert_sites(self, configs: list[dict]) -> None:
        """Record the configured sites (name, kind, provisioner, config); others are kept."""
        rows = [
            {"name": c["name"], "kind": c["kind"], "provisioner": c["provisioner"],
             "config": dumps(c), "state": "online", "reason": "", "updated_at": now()}
            for c in configs
        ]
        if not rows:
            return
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(sites).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[sites.c.name],
            set_={"kind": stmt.excluded.kind, "provisioner": stmt.excluded.provisioner,
                  "config": stmt.excluded.config, "updated_at": stmt.excluded.updated_at},
        )
        with self.tx() as conn:
            conn.execute(stmt)

    def set_site_state(self, name: str, state: str, reason: str = "") -> None:
        with self.tx() as conn:
            conn.execute(update(sites).where(sites.c.name == name)
                         .values(state=state, reason=reason, updated_at=now()))

    def site_demand(self, name: str) -> int:
        """Jobs queued (assigned, activated) or held by pilots at a site: what an elastic
        provisioner sizes its pilots by."""
        states = [str(s) for s in (J.ASSIGNED, J.ACTIVATED, J.SENT, J.STARTING, J.RUNNING,
                                   J.TRANSFERRING)]
        with self.tx() as conn:
            return conn.execute(select(func.count()).select_from(jobs)
                                .where(jobs.c.site == name, jobs.c.state.in_(states))
                                ).scalar_one()

    def site_names(self) -> list[str]:
        with self.tx() as conn:
            return [r[0] for r in conn.execute(select(sites.c.name).order_by(sites.c.name))]

    def list_sites(self) -> list[dict]:
        """Sites with their pilots, queued and running jobs: what ``panda-lab sites`` shows."""
        with self.tx() as conn:
            loads_ = {s.name: s for s in self._site_loads(conn, live_only=True)}
            out = []
            for row in conn.execute(select(sites).order_by(sites.c.name)):
                cfg = loads(row.config)
                n_pilots = conn.execute(
                    select(func.count()).select_from(pilots)
                    .where(pilots.c.site == row.name, pilots.c.state == "running")
                ).scalar_one()
                ld = loads_[row.name]
                out.append({
                    "name": row.name, "kind": row.kind, "provisioner": row.provisioner,
                    "state": row.state, "reason": row.reason, "pilots": n_pilots,
                    "queued": ld.queued, "running": ld.running,
                    "description": cfg.get("description", ""),
                })
            return out

    def _site_loads(self, conn: Connection, live_only: bool = False) -> list[SiteLoad]:
        counts: dict[str, dict[str, int]] = {}
        active = [J.ASSIGNED, J.ACTIVATED, J.SENT, J.STARTING, J.RUNNING, J.TRANSFERRING]
        q = (select(jobs.c.site, jobs.c.state, func.count())
             .where(jobs.c.state.in_([str(s) for s in active]))
             .group_by(jobs.c.site, jobs.c.state))
        for site, state, n in conn.execute(q):
            counts.setdefault(site, {})[state] = n
        slots = dict(conn.execute(
            select(pilots.c.site, func.sum(pilots.c.slots))
            .where(pilots.c.state == "running").group_by(pilots.c.site)
        ).all())
        out = []
        for row in conn.execute(select(sites).order_by(sites.c.name)):
            cfg = loads(row.config)
            c = counts.get(row.name, {})
            configured = int(cfg.get("pilots", 1)) * int(cfg.get("slots", 1))
            out.append(SiteLoad(
                name=row.name, kind=row.kind, state=row.state, reason=row.reason,
                capacity=int(slots.get(row.name) or configured),
                queued=c.get(J.ASSIGNED, 0) + c.get(J.ACTIVATED, 0),
                running=sum(c.get(s, 0) for s in (J.SENT, J.STARTING, J.RUNNING, J.TRANSFERRING)),
                endpoint=str(cfg.get("endpoint") or ""),
            ))
        return out
