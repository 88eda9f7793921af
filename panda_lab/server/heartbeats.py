"""Coalesced heartbeats: a heartbeat is answered at once and written with all others
in one transaction about once a second, not in a transaction of its own.

A real pilot running long jobs says nothing but heartbeats, one each heartbeat interval
(5 s): 1,000 such pilots send 200 a second, each a store transaction on the server's one
event loop (and SQLite's one writer) when it was written at once.  What a heartbeat
answers, the held jobs the pilot must kill or drop, is read at once (a read, no
write), so a kill reaches the pilot as before.  What it records, the pilot's and its held
jobs' last word and the pilot's usage, at the time it was heard, waits at most one
flush period; the watchdog flushes before it judges silence, so no pilot is judged on a
heartbeat not yet written.  A heartbeat lost in a crash (at most a period's) costs
nothing: a server that restarts judges every pilot from its restart (PanDA's pilots
heartbeat every few minutes to a server that batches its writes to the database).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.heartbeats")


class Heartbeats:
    """Heartbeats heard and not yet written, the newest per pilot."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._pending: dict[int, tuple[float, dict | None, list[int]]] = {}

    def add(self, pilot_id: int, held: list[int], usage: dict | None = None,
            t: float | None = None) -> None:
        """A pilot's heartbeat heard at ``t`` (epoch seconds; now if None), holding
        ``held`` (job ids), using ``usage`` (``{"rss_mb", "cpu_s", "cpu_pct"}``, kept
        from an earlier one when None).  A newer one of the same pilot replaces it."""
        t = time.time() if t is None else t
        old = self._pending.get(pilot_id)
        if usage is None and old is not None:
            usage = old[1]
        self._pending[pilot_id] = (t, usage, list(held))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write the pending heartbeats in one transaction; returns how many.  On a
        failure (the database unreachable) they are kept for the next flush, unless a
        newer one of the same pilot came meanwhile, and the error is raised."""
        if not self._pending:
            return 0
        beats, self._pending = self._pending, {}
        try:
            await self.server.db(self.server.store.heartbeats,
                                 [(p, t, usage, held) for p, (t, usage, held) in beats.items()])
        except BaseException:
            for p, beat in beats.items():
                self._pending.setdefault(p, beat)
            raise
        return len(beats)

    async def run(self, period: float) -> None:
        """Flush every ``period`` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(period)
                try:
                    await self.flush()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the watchdog says when the database is down
                    log.debug("heartbeats not written yet: %s", exc)
        finally:
            try:
                await self.flush()
            except Exception as exc:
                log.warning("%d heartbeat(s) not written at shutdown: %s", len(self), exc)
