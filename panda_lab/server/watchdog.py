"""The watchdog: fails attempts whose pilot went silent and lets the retry rules act;
closes open tasks whose client lease lapsed (model/lease.py).

It runs inside the server's event loop on a fixed period; the store does the work in
one transaction per sweep, so a crash in between loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.exc import OperationalError

from panda_lab.model import ErrorCategory, JobState
from panda_lab.model.retry import Cause
from panda_lab.server.app import Server

log = logging.getLogger("panda_lab.watchdog")


async def sweep(server: Server) -> int:
    """One pass; returns how many attempts it failed.  Silence is judged from ``now``
    less the loop's recent lag (loop_lag.py): a word the server was too busy to read is
    not the pilot's silence."""
    cfg = server.config
    await server.heartbeats.flush()   # every heartbeat heard is written before judging
    await server.db(server.store.flush_learning)  # what reports measured, held: written
    t = time.time()
    heard = t - server.lag.grace()   # the latest moment every word sent has been read
    lost = await server.db(server.store.lost_jobs, heard - cfg.heartbeat_timeout,
                           heard - cfg.sent_timeout)
    failed = 0
    for why in ("lost heartbeat", "stuck in sent"):
        group = [j for j in lost if j["why"] == why]
        if not group:
            continue
        if why == "lost heartbeat":
            msg = f"lost heartbeat: no word from its pilot for over {cfg.heartbeat_timeout:g} s"
        else:
            msg = f"stuck in sent for over {cfg.sent_timeout:g} s"
        # An attempt still ``sent`` was not reported started: on a pilot that still
        # beats it never started (held behind longer jobs: a start is reported within
        # the pilot's flush interval: Cause.LOST); on a silent one it may have started
        # in the last moments, unreported (Cause.UNSEEN).  Its next attempt does not
        # count against the job's limit, up to a bound (model/retry.py), and the
        # message says only what the server knows.
        never = [j["id"] for j in group if j["state"] == str(JobState.SENT)]
        ran = [j["id"] for j in group if j["state"] != str(JobState.SENT)]
        unseen, unseen_cause = (("it never started", Cause.LOST) if why == "stuck in sent"
                                else ("its start was never reported", Cause.UNSEEN))
        for ids, text, cause in ((never, f"{msg}; {unseen}", unseen_cause),
                                 (ran, msg, Cause.FAILED)):
            if ids:
                changes = await server.db(server.store.fail_jobs, ids,
                                          str(ErrorCategory.SYSTEM), text, cause)
                server.publish(changes)
        failed += len(group)
        log.warning("%s: failed %d attempt(s)", why, len(group))
    moved = await server.db(server.store.rebroker_offline)
    if moved.jobs:
        server.publish(moved)
        log.warning("re-brokered %d job(s) waiting at offline sites",
                    sum(c.state == JobState.CLOSED for c in moved.jobs))
    if cfg.stall_after > 0:
        stalled = await server.db(server.store.rebroker_stalled, cfg.stall_after)
        if stalled.jobs:
            server.publish(stalled)
            log.warning("re-brokered %d job(s) waiting at stalled sites",
                        sum(c.state == JobState.CLOSED for c in stalled.jobs))
    closed, ended = await server.db(server.store.close_expired_leases, t)
    if closed:
        server.publish(ended)
        log.warning("closed task(s) %s: no lease renewal from their client for %g s",
                    closed, cfg.task_lease)
    lost_pilots = await server.db(server.store.mark_lost_pilots, heard - cfg.heartbeat_timeout)
    if lost_pilots:
        log.warning("pilots lost (no heartbeat): %s", lost_pilots)
    return failed


async def watchdog_loop(server: Server) -> None:
    """Sweep every ``watchdog_interval`` seconds.  After sweeps that failed (the database
    unreachable), jobs and pilots get a fresh start first, as after a server restart:
    no heartbeat could be recorded meanwhile, so silence then says nothing of a pilot."""
    failed = False
    while True:
        try:
            if failed:
                n = await server.db(server.store.grace_after_restart)
                log.warning("database back: %d job(s) on pilots judged from now", n)
            await sweep(server)
            failed = False
        except asyncio.CancelledError:
            raise
        except OperationalError as exc:  # the database is unreachable: said once
            if not failed:
                log.warning("watchdog: the database cannot be reached: %s",
                            str(exc.orig or exc).splitlines()[0])
            failed = True
        except Exception:  # a bad sweep must not stop the next one
            log.exception("watchdog sweep failed")
            failed = True
        # its own wake-up's lateness counts before its next sweep: a timer due while the
        # loop was held runs before the requests read with it, so the probe's may not yet
        due = time.monotonic() + server.config.watchdog_interval
        await asyncio.sleep(server.config.watchdog_interval)
        server.lag.note(time.monotonic() - due)
