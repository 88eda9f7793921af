"""Re-brokerage: jobs waiting at a site that cannot run them soon are placed again.

JEDI re-brokers jobs waiting at a queue that is offline, or that does not move while
others could take the work.  Two roads, one path: the waiting attempt is closed
(``activated → closed``, the reason on it), and its next attempt (``Cause.REBROKER``:
away from the site it leaves, one more attempt allowed) is placed by brokerage in the
same transaction.  The watchdog (server/watchdog.py) calls both on its period.
"""

from __future__ import annotations

from sqlalchemy import Connection

from panda_lab.model import ErrorCategory, SiteState
from panda_lab.model.brokerage import ANY
from panda_lab.model.retry import Cause, next_attempt
from panda_lab.store.base import Changes, loads, now
from panda_lab.store.rows import jobs as job_rows
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows import tasks as task_rows


class Rebrokerage:
    """The re-brokerage verbs of the store; they use the workflow's ``_place``,
    ``_again`` and ``_previous`` (:class:`panda_lab.store.workflow.Workflow`)."""

    def rebroker_offline(self) -> Changes:
        """Jobs waiting at an offline site go back to brokerage: the waiting attempt is
        closed (``activated → closed``) and a new one placed on an online site it
        accepts.  A job that accepts only offline sites keeps waiting.  Returns the
        changes."""
        changes = Changes()
        with self.tx() as conn:
            states = site_rows.states(conn)
            online = {n for n, s in states.items() if s == SiteState.ONLINE}
            offline = [n for n, s in states.items() if s != SiteState.ONLINE]
            if offline and online:
                self._rebroker(conn, offline, online, "site offline: handed back to brokerage",
                               changes)
        return changes

    def rebroker_stalled(self, after: float) -> Changes:
        """JEDI's re-brokerage of a stalled queue: jobs waiting at an online site that
        dispatched nothing for ``after`` seconds (and whose waiting jobs are that old),
        while other online sites have free slots, go back to brokerage, away from the
        stalled site; the closed attempt says why.  A job that accepts no site with free
        slots keeps waiting.  Returns the changes."""
        changes = Changes()
        with self.tx() as conn:
            stalled = site_rows.stalled(conn, now() - after)
            if not stalled:
                return changes
            free = {s.name for s in site_rows.loads_(conn) if s.state == SiteState.ONLINE
                    and s.name not in stalled and s.capacity > s.queued + s.running}
            states = site_rows.states(conn)
            stuck = [n for n in stalled if states.get(n) == SiteState.ONLINE]
            if free and stuck:
                self._rebroker(conn, stuck, free, f"queue stalled: nothing dispatched for "
                               f"{after:g} s while other sites had free slots; handed back "
                               "to brokerage", changes)
        return changes

    def _rebroker(self, conn: Connection, from_: list[str], to: set[str], why: str,
                  changes: Changes) -> None:
        """Close the attempts waiting at the sites ``from_`` that accept a site of ``to``
        and place their next attempts (avoiding the site they leave)."""
        movable = [r for r in job_rows.activated_at(conn, from_)
                   if ANY in (allowed := set(loads(r.broker_info).get("sites") or [ANY]))
                   or allowed & to]
        if not movable:
            return
        job_rows.close(conn, movable, now(), str(ErrorCategory.SYSTEM), why, changes)
        task = task_rows.task_sites(conn, {r.task_id for r in movable})
        self._place(conn, [
            self._again(r, next_attempt(self._previous(r, task[r.task_id].site),
                                        Cause.REBROKER))
            for r in movable], changes)
