"""Client leases on open tasks in the store: renew, re-grant at start, close the lapsed.

The rule is :mod:`panda_lab.model.lease`; here it meets the ``tasks.lease_until`` column.
"""

from __future__ import annotations

from sqlalchemy import select, update

from panda_lab.model import lease
from panda_lab.store.base import Changes, StoreBase, now
from panda_lab.store.schema import tasks
from panda_lab.store.tasks import TaskStateError


class LeaseStore:
    def renew_lease(self: StoreBase, task_id: int, lease_s: float) -> dict:
        """Extend an open task's client lease to ``lease_s`` seconds from now.

        Returns ``{"task", "lease_until", "lease_s"}``.  Raises ``TaskNotFound``, and
        ``TaskStateError`` when the task is closed (by its client, or by the watchdog
        because the lease lapsed: the message says which) or has no client lease."""
        t = now()
        with self.tx() as conn:
            row = self._task_row(conn, task_id)
            if not row.open:
                why = f" ({row.message})" if row.message.startswith(lease.CLIENT_GONE) else ""
                raise TaskStateError(f"task {task_id} is closed{why}: its lease cannot be "
                                     "renewed")
            if row.lease_until is None:
                raise TaskStateError(f"task {task_id} is held open by the server, not by a "
                                     "client lease")
            until = t + lease_s
            res = conn.execute(update(tasks).where(tasks.c.id == task_id,
                                                   tasks.c.open.is_(True))
                               .values(lease_until=until))
            if not res.rowcount:  # closed in between (PostgreSQL: another server process)
                raise TaskStateError(f"task {task_id} is closed: its lease cannot be renewed")
        return {"task": task_id, "lease_until": until, "lease_s": lease_s}

    def regrant_leases(self: StoreBase, lease_s: float) -> int:
        """At server start: every open lease runs a full ``lease_s`` from now, since no
        client could renew while the server was down.  Returns the leases re-granted."""
        t = now()
        with self.tx() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.lease_until).where(
                tasks.c.open.is_(True), tasks.c.lease_until.is_not(None))).all()
            for r in rows:
                conn.execute(update(tasks).where(tasks.c.id == r.id).values(
                    lease_until=lease.regranted(r.lease_until, t, lease_s)))
        return len(rows)

    def close_expired_leases(self: StoreBase, t: float) -> tuple[list[int], Changes]:
        """Close every open task whose lease lapsed before ``t`` (the watchdog's rule).

        Its jobs already submitted run on; the task ends when they do (at once if they
        all ended already).  Returns the ids closed and what changed."""
        changes = Changes()
        with self.tx() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.lease_until).where(
                tasks.c.open.is_(True), tasks.c.lease_until < t)).all()
            closed = []
            for r in rows:
                # (again in the update: a renewal may have come in between)
                res = conn.execute(update(tasks).where(
                    tasks.c.id == r.id, tasks.c.open.is_(True), tasks.c.lease_until < t,
                ).values(open=False, modified_at=now(),
                         message=lease.client_gone_message(r.lease_until)))
                if res.rowcount:
                    closed.append(r.id)
            self._check_tasks(conn, closed, changes)
        return closed, changes
