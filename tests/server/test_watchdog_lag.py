"""The watchdog judges a pilot's silence, not the server's deafness.

Kind tested: a pilot declared lost because the server's one event loop was too busy (a
long store call, more requests than it answers) to read the word the pilot sent in time
(at 1,000 pilots on one server, 957 pilots were lost so, benchmarks/README.md "Load").
Members: a report read after the loop was held past the heartbeat timeout (the
watchdog's timer, due meanwhile, runs before it); the watchdog's marking of the pilot
itself lost.  And what the heartbeat protects stays: a pilot that really went silent
has its jobs failed and itself marked lost within the timeout and one watchdog period on
a loop that keeps up, and within that plus the lag after a held loop (the grace is
bounded and forgotten: the unit test of LoopLag), and its late report is refused as
stale.

In process, on the server's own loop (the store is called on it, as in the server),
with a 1 s heartbeat timeout and a 0.1 s watchdog period.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from panda_lab.server.app import Server
from panda_lab.server.config import ServerConfig
from panda_lab.server.loop_lag import LoopLag
from panda_lab.server.watchdog import watchdog_loop

TIMEOUT = 1.0
PERIOD = 0.1


@pytest.fixture
def server(tmp_path):
    s = Server(ServerConfig(home=tmp_path, provision=False, heartbeat_timeout=TIMEOUT,
                            watchdog_interval=PERIOD, sent_timeout=3600.0))
    yield s
    s.close()


def _run(server: Server, scenario) -> dict:
    """Run ``scenario(server, pilot, job)`` on a loop with the watchdog and the lag probe
    going, a pilot holding one job it was just handed; returns what it returns."""

    async def main():
        server.loop = asyncio.get_running_loop()
        site = server.config.sites[0].name
        server.store.create_task("t", [{"payload": b"x"}], site=site)
        pilot = server.store.register_pilot(site, "h", 1, 1, {})
        (job,), _ = server.store.acquire(pilot, site, 1)
        bg = [asyncio.create_task(watchdog_loop(server)),
              asyncio.create_task(server.lag.probe(0.05))]
        try:
            return await scenario(server, pilot, job)
        finally:
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)

    return asyncio.run(main())


def _report(server: Server, pilot: int, job: dict) -> list[dict]:
    _, ignored = server.store.apply_updates(pilot, [{
        "id": job["id"], "attempt": job["attempt"], "state": "finished",
        "started_at": time.time(), "result": b"r"}])
    return ignored


def test_a_report_read_late_because_the_loop_was_held_is_not_lost(server):
    async def scenario(server, pilot, job):
        await asyncio.sleep(0.6 * TIMEOUT)   # a loop that keeps up
        got = {}

        async def request():   # a request is a task on the loop, as uvicorn makes it
            got["ignored"] = _report(server, pilot, job)

        # the pilot's report comes at 0.8 x the timeout, while the loop is held by a
        # long store call (a large submission) until 1.5 x: its request runs then,
        # queued behind the watchdog's wake-up, due meanwhile and earlier
        asyncio.get_running_loop().call_later(
            0.2 * TIMEOUT, lambda: asyncio.ensure_future(request()))
        time.sleep(0.9 * TIMEOUT)
        await asyncio.sleep(3 * PERIOD)   # sweeps after it
        got["job"] = server.store.get_job(job["id"])
        got["pilot"] = server.store.pilot(pilot)
        return got

    got = _run(server, scenario)
    assert got["ignored"] == [], got["ignored"]
    assert got["job"]["state"] == "finished", got["job"]["error_message"]
    assert got["pilot"]["state"] == "running"


def test_a_pilot_really_silent_is_lost_within_the_timeout_and_one_period(server):
    async def scenario(server, pilot, job):
        t0 = time.monotonic()
        worst_lag = 0.0
        while server.store.get_job(job["id"])["state"] != "failed":
            worst_lag = max(worst_lag, server.lag.grace())
            assert time.monotonic() - t0 < 3 * TIMEOUT, "never declared lost"
            await asyncio.sleep(0.02)
        return {"after": time.monotonic() - t0, "lag": worst_lag,
                "job": server.store.get_job(job["id"]),
                "pilot": server.store.pilot(pilot),
                "late": _report(server, pilot, job)}

    got = _run(server, scenario)
    assert TIMEOUT <= got["after"] <= TIMEOUT + PERIOD + got["lag"] + 0.25, got
    assert got["job"]["error_message"].startswith("lost heartbeat")
    assert got["pilot"]["state"] == "lost"
    assert [i["id"] for i in got["late"]] == [got["job"]["id"]], "a late report is stale"


def test_after_a_held_loop_a_silent_pilot_is_still_lost_once_the_lag_is_caught_up(server):
    async def scenario(server, pilot, job):
        t0 = time.monotonic()
        await asyncio.sleep(0.1)
        time.sleep(0.5 * TIMEOUT)   # held once, early
        await asyncio.sleep(PERIOD)
        held_grace = worst = server.lag.grace()
        while server.store.get_job(job["id"])["state"] != "failed":
            worst = max(worst, server.lag.grace())
            assert time.monotonic() - t0 < 3 * TIMEOUT, "never declared lost"
            await asyncio.sleep(0.02)
        return {"after": time.monotonic() - t0, "held_grace": held_grace, "worst": worst}

    got = _run(server, scenario)
    assert got["held_grace"] >= 0.4 * TIMEOUT, got
    # later by the lag, no more (the machine's own hiccups count in the lag too)
    assert TIMEOUT + 0.4 * TIMEOUT <= got["after"] <= TIMEOUT + got["worst"] + PERIOD + 0.25, \
        got   # (that the lag is then forgotten: the unit test of LoopLag below)


def test_loop_lag_keeps_the_largest_recent_lag_capped_and_forgets_it():
    lag = LoopLag(window=10.0, cap=4.0)
    assert lag.grace(now=0.0) == 0.0
    lag.note(1.0, at=1.0)
    lag.note(3.0, at=2.0)
    lag.note(0.5, at=3.0)
    lag.note(0.0, at=3.5)   # on time: nothing
    assert lag.grace(now=5.0) == 3.0
    lag.note(9.0, at=6.0)
    assert lag.grace(now=7.0) == 4.0   # capped
    assert lag.grace(now=15.0) == 4.0   # the 9 s lag noted at 6 is remembered until 16
    assert lag.grace(now=16.5) == 0.0   # all older than the window
    lag.note(2.0, at=17.0)
    lag.note(1.0, at=20.0)
    assert lag.grace(now=26.0) == 2.0
    assert lag.grace(now=27.5) == 1.0   # the larger one expired, the later smaller one not
