"""An attempt the watchdog ends before it ever started costs the job no attempt.

The kind of fault: a job charged for what its pilot did, not for what it did.  A pilot
holds jobs ahead (``sent``), and one held behind long jobs for longer than
``sent_timeout``, or held by a pilot that went silent, never ran; the watchdog failed it
like any failure, so a job of ``max_attempts = 1`` failed for good without having run.
The pilot's own hand-backs and a dead pilot's held jobs were already retried this way
(``Cause.LOST``, tests/store/test_unstarted_jobs.py).  Members, through the watchdog's
sweep on a real store: stuck in ``sent`` past ``sent_timeout`` (its pilot still beats, so
it never started); ``sent`` on a pilot whose heartbeat stopped (its start was never
reported: it may have started in the pilot's last moments, and the message says no more
than that); and, the other side, a started job whose pilot went silent still counts (one
attempt allowed: failed for good).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import update

from panda_lab.server.app import Server
from panda_lab.server.config import ServerConfig
from panda_lab.server.watchdog import sweep
from panda_lab.store.schema import jobs, pilots

SITE = "LOCAL-GRID"


@pytest.fixture
def server(tmp_path):
    s = Server(ServerConfig(home=tmp_path, provision=False, heartbeat_timeout=60.0,
                            sent_timeout=600.0))
    yield s
    s.close()


def one_job_on_a_pilot(server: Server, start: bool) -> tuple[int, int, int]:
    task, (job,), _ = server.store.create_task("t", [{"payload": b"x", "max_attempts": 1}],
                                               site=SITE)
    p = server.store.register_pilot(SITE, "h", 1, 1, {})
    (got,), _ = server.store.acquire(p, SITE, 1)
    assert got["id"] == job
    if start:
        server.store.apply_updates(p, [{"id": job, "attempt": 1, "state": "running"}])
    return task, job, p


def run_sweep(server: Server) -> int:
    async def main():
        server.loop = asyncio.get_running_loop()
        return await sweep(server)
    return asyncio.run(main())


def attempts(server: Server, task: int) -> list[tuple[int, str]]:
    return [(j["attempt"], j["state"]) for j in server.store.list_jobs(task, all_attempts=True)]


def test_stuck_in_sent_past_the_timeout_is_retried_without_counting(server):
    task, job, _ = one_job_on_a_pilot(server, start=False)
    with server.store.tx() as conn:         # sent 20 minutes ago; the pilot still beats
        conn.execute(update(jobs).where(jobs.c.id == job)
                     .values(modified_at=time.time() - 1200))
    assert run_sweep(server) == 1
    assert attempts(server, task) == [(1, "failed"), (2, "activated")]
    failed = server.store.get_job(job)
    assert failed["error_message"] == "stuck in sent for over 600 s; it never started"


def test_sent_on_a_silent_pilot_is_retried_without_counting(server):
    task, job, p = one_job_on_a_pilot(server, start=False)
    _silent(server, p, job)
    assert run_sweep(server) == 1
    assert attempts(server, task) == [(1, "failed"), (2, "activated")]
    # a silent pilot may have started it unreported: said as the server knows it
    assert server.store.get_job(job)["error_message"].endswith(
        "; its start was never reported")


def test_a_started_job_on_a_silent_pilot_still_counts(server):
    task, job, p = one_job_on_a_pilot(server, start=True)
    _silent(server, p, job)
    assert run_sweep(server) == 1
    assert attempts(server, task) == [(1, "failed")]          # its one attempt is spent
    assert server.store.get_job(job)["error_message"].startswith("lost heartbeat")


def _silent(server: Server, p: int, job: int) -> None:
    old = time.time() - 300
    with server.store.tx() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job).values(heartbeat_at=old))
        conn.execute(update(pilots).where(pilots.c.id == p).values(heartbeat_at=old))
