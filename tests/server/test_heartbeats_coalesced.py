"""Coalesced heartbeats: answered at once, written together, and never judged unwritten.

Kind tested: a heartbeat's effect delayed or lost by writing it later.  Members: the
answer (the held jobs to kill, read at once: a kill gets through on the heartbeat that
follows it); the pilot's last word and usage and its held jobs' (written at the time
heard, for many pilots in one transaction, never moving a time back, only the jobs the
pilot holds); a lost pilot that heartbeats runs again; the watchdog writing pending
heartbeats before it judges silence (a pilot heard but not yet written is not lost); a
flush that fails keeping its heartbeats for the next; and a pilot long-polling for work
past the heartbeat timeout (its acquisition heartbeats on every pass, not once).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig
from panda_lab.server.watchdog import sweep
from panda_lab.store.schema import jobs, pilots

SITE = "LOCAL-GRID"


@pytest.fixture
def server(tmp_path):
    s = Server(ServerConfig(home=tmp_path, provision=False, heartbeat_timeout=60.0))
    yield s
    s.close()


def _pilots_with_jobs(server: Server, n: int) -> list[tuple[int, int]]:
    server.store.create_task("t", [{"payload": b"x"}] * n, site=SITE)
    out = []
    for i in range(n):
        p = server.store.register_pilot(SITE, "h", i, 1, {})
        (job,), _ = server.store.acquire(p, SITE, 1)
        out.append((p, job["id"]))
    return out


def _age(server: Server, old: float, held: list[tuple[int, int]]) -> None:
    with server.store.engine.begin() as conn:
        conn.execute(update(pilots).values(heartbeat_at=old))
        conn.execute(update(jobs).values(heartbeat_at=old))


def test_many_heartbeats_are_written_in_one_transaction_at_the_time_heard(server):
    held = _pilots_with_jobs(server, 3)
    _age(server, 1000.0, held)
    (p0, j0), (p1, j1), (p2, j2) = held
    tx = []
    real = server.store.tx
    server.store.tx = lambda: tx.append(1) or real()
    hb = server.heartbeats
    hb.add(p0, [j0], {"rss_mb": 10.0, "cpu_s": 1.0, "cpu_pct": 5.0}, t=2000.0)
    hb.add(p0, [j0], None, t=2001.0)   # newer, no usage: the usage is kept
    hb.add(p1, [j0, j1], None, t=2002.0)   # j0 is not p1's: untouched by p1
    hb.add(p2, [], None, t=500.0)   # older than what the store has: no move back
    assert asyncio.run(hb.flush()) == 3
    assert len(tx) == 1 and len(hb) == 0
    server.store.tx = real
    rows = {r["id"]: r for r in server.store.list_pilots(ids=[p0, p1, p2])}
    assert rows[p0]["heartbeat_at"] == 2001.0 and rows[p0]["rss_mb"] == 10.0
    assert rows[p1]["heartbeat_at"] == 2002.0
    assert rows[p2]["heartbeat_at"] == 1000.0
    beat = {j: server.store.get_job(j)["heartbeat_at"] for j in (j0, j1, j2)}
    assert beat == {j0: 2001.0, j1: 2002.0, j2: 1000.0}


def test_a_lost_pilot_that_heartbeats_runs_again(server):
    ((p, j),) = _pilots_with_jobs(server, 1)
    assert server.store.mark_lost_pilots(time.time() + 1) == [p]
    server.heartbeats.add(p, [j])
    asyncio.run(server.heartbeats.flush())
    assert server.store.pilot(p)["state"] == "running"


def test_the_watchdog_writes_heartbeats_heard_before_judging(server):
    ((p, j),) = _pilots_with_jobs(server, 1)
    _age(server, time.time() - 120, [(p, j)])   # the store's last word: 2 minutes ago
    server.heartbeats.add(p, [j])   # heard now, not yet written

    async def main():
        server.loop = asyncio.get_running_loop()
        return await sweep(server)

    assert asyncio.run(main()) == 0
    assert server.store.get_job(j)["state"] == "sent"
    assert server.store.pilot(p)["state"] == "running"
    # and with nothing heard, the same silence is a loss
    _age(server, time.time() - 120, [(p, j)])
    assert asyncio.run(main()) == 1
    assert server.store.get_job(j)["error_message"].startswith("lost heartbeat")


def test_a_failed_flush_keeps_its_heartbeats_for_the_next(server):
    ((p, j),) = _pilots_with_jobs(server, 1)
    _age(server, 1000.0, [(p, j)])
    server.heartbeats.add(p, [j], t=2000.0)
    real = server.store.heartbeats

    def down(beats):
        raise OperationalError("UPDATE", {}, Exception("database is down"))

    server.store.heartbeats = down
    with pytest.raises(OperationalError):
        asyncio.run(server.heartbeats.flush())
    server.store.heartbeats = real
    assert len(server.heartbeats) == 1
    asyncio.run(server.heartbeats.flush())
    assert server.store.pilot(p)["heartbeat_at"] == 2000.0


def test_over_http_a_kill_gets_through_at_once_and_the_last_word_is_written(tmp_path):
    server = Server(ServerConfig(home=tmp_path, provision=False, watchdog_interval=0.2))
    h = {"Authorization": f"Bearer {server.site_tokens[SITE]}"}
    with TestClient(create_app(server)) as client:
        task = server.db_from_thread(server.store.create_task, "t", [{"payload": b"x"}] * 2,
                                     site=SITE)[0]
        pid = client.post("/api/pilot/register", headers=h, json={
            "site": SITE, "host": "h", "pid": 1, "slots": 2, "info": {}}).json()["pilot"]
        got = client.post("/api/pilot/acquire", headers=h, json={
            "pilot": pid, "site": SITE, "n": 2, "wait": 0, "held": []}).json()["jobs"]
        held = [j["id"] for j in got]
        server.db_from_thread(server.store.kill_jobs, held[:1])
        t = time.time()
        r = client.post("/api/pilot/heartbeat", headers=h, json={
            "pilot": pid, "held": held, "usage": {"rss_mb": 42.0, "cpu_s": 1.0}})
        assert r.json() == {"drop": held[:1]}   # the kill, answered at once
        deadline = time.monotonic() + 5
        while True:   # written within the flush period (0.2 s here)
            (row,) = server.db_from_thread(server.store.list_pilots, ids=[pid])
            if row["rss_mb"] == 42.0:
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        assert row["heartbeat_at"] >= t - 0.01
        job = server.db_from_thread(server.store.get_job, held[1])
        assert job["heartbeat_at"] >= t - 0.01 and job["task_id"] == task
    server.close()


def test_a_pilot_long_polling_past_the_heartbeat_timeout_stays_alive(tmp_path):
    """An acquisition that waits for work longer than the heartbeat timeout is the
    pilot's word on every pass, not only when it arrives: it and its running job live."""
    server = Server(ServerConfig(home=tmp_path, provision=False, heartbeat_timeout=1.5,
                                 watchdog_interval=0.2))
    h = {"Authorization": f"Bearer {server.site_tokens[SITE]}"}
    with TestClient(create_app(server)) as client:
        server.db_from_thread(server.store.create_task, "t", [{"payload": b"x"}], site=SITE)
        pid = client.post("/api/pilot/register", headers=h, json={
            "site": SITE, "host": "h", "pid": 1, "slots": 2, "info": {}}).json()["pilot"]
        [job] = client.post("/api/pilot/acquire", headers=h, json={
            "pilot": pid, "site": SITE, "n": 1, "wait": 0, "held": []}).json()["jobs"]
        client.post("/api/pilot/update", headers=h, json={
            "pilot": pid, "held": [job["id"]],
            "updates": [{"id": job["id"], "attempt": 1, "state": "running"}]})
        t = time.monotonic()
        r = client.post("/api/pilot/acquire", headers=h, json={
            "pilot": pid, "site": SITE, "n": 1, "wait": 4.0, "held": [job["id"]]})
        assert r.json()["jobs"] == [] and time.monotonic() - t >= 3.5
        (row,) = server.db_from_thread(server.store.list_pilots, ids=[pid])
        assert row["state"] == "running", row
        assert server.db_from_thread(server.store.get_job, job["id"])["state"] == "running"
    server.close()


SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def test_the_bulk_write_on_each_database(store):
    """``Store.heartbeats`` on SQLite and PostgreSQL (its statements are executemany)."""
    store.create_task("t", [{"payload": b"x"}] * 2, site="A")
    p, q = (store.register_pilot("A", "h", i, 1, {}) for i in (1, 2))
    (j,), _ = store.acquire(p, "A", 1)
    (k,), _ = store.acquire(q, "A", 1)
    store.mark_lost_pilots(time.time() + 1)
    t = time.time() + 5
    store.heartbeats([(p, t, {"rss_mb": 1.5, "cpu_s": 2.0, "cpu_pct": None}, [j["id"], k["id"]]),
                      (q, t - 1e6, None, [])])
    rows = {r["id"]: r for r in store.list_pilots(ids=[p, q])}
    assert (rows[p]["state"], rows[p]["heartbeat_at"], rows[p]["rss_mb"]) == ("running", t, 1.5)
    # q's beat is older than what was known of it: no news, it stays lost, its time kept
    # (tests/store/test_pilot_revival.py)
    assert rows[q]["state"] == "lost" and rows[q]["heartbeat_at"] < t - 1
    assert store.get_job(j["id"])["heartbeat_at"] == t
    assert store.get_job(k["id"])["heartbeat_at"] < t - 1   # q's job: not p's to touch
    assert store.held_to_drop(p, [j["id"], k["id"], 10**6]) == sorted([k["id"], 10**6])
