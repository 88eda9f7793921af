"""An acquire's cost does not grow with the jobs queued at its site.

Kind tested: a statement on a pilot's path (acquire, report) whose work grows with the
size of the queue or of the task, so that a server holding 100 pilots on a 2,000-job
task does not hold them on a 100,000-job one (benchmarks/README.md, "Load").  Members:
the dispatch's candidate query, which read a site's activated jobs by priority from an
index in the other order and sorted every job of equal priority on each acquire (55 ms
at 50,000 queued jobs); the whole acquire; the whole report (its "is the task complete"
question once scanned the task's finished jobs).  Measured in SQLite virtual-machine
steps, which do not depend on the machine's load; and the plans are checked, also on a
database made before the dispatch's index, which still has the old one.
"""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy import event, inspect, text

from panda_lab.store import Store

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


class Steps:
    """SQLite virtual-machine steps spent by the store's connections while counting."""

    def __init__(self, store: Store) -> None:
        self.n = 0
        self.on = False
        store.engine.dispose()   # every connection from now on gets the handler
        event.listen(store.engine, "connect", self._install)

    def _install(self, dbapi_conn: sqlite3.Connection, _record) -> None:
        dbapi_conn.set_progress_handler(self._tick, 100)

    def _tick(self) -> int:
        if self.on:
            self.n += 100
        return 0

    def count(self, call) -> int:
        self.n, self.on = 0, True
        try:
            call()
        finally:
            self.on = False
        return self.n


def _queued(tmp_path, name: str, n: int) -> tuple[Store, int]:
    store = Store(f"sqlite:///{tmp_path / name}", tmp_path / f"results-{name}")
    store.upsert_sites(SITES)
    store.create_task("t", [{"payload": b"x"}] * n, site="A")
    return store, store.register_pilot("A", "h", 1, 1, {})


def _cycle_steps(store: Store, pilot: int, steps: Steps) -> tuple[int, int]:
    """Steps of one acquire of one job, and of its report (finished), after a warm-up."""
    got = []
    for _ in range(2):
        a = steps.count(lambda: got.append(store.acquire(pilot, "A", 1)[0][0]))
        j = got[-1]
        r = steps.count(lambda j=j: store.apply_updates(pilot, [{
            "id": j["id"], "attempt": j["attempt"], "state": "finished",
            "started_at": time.time(), "result": b"r"}]))
    return a, r


def test_acquire_and_report_cost_the_same_with_ten_times_the_jobs_queued(tmp_path):
    costs = {}
    for n in (300, 3000):
        store, pilot = _queued(tmp_path, f"db{n}.sqlite", n)
        costs[n] = _cycle_steps(store, pilot, Steps(store))
        store.close()
    (a_small, r_small), (a_big, r_big) = costs[300], costs[3000]
    assert a_small > 0 and r_small > 0
    # before the ordered index the acquire took ~10x the steps with 10x the queue
    assert a_big < 1.5 * a_small, costs
    assert r_big < 1.5 * r_small, costs


def _dispatch_plan(store: Store) -> list[str]:
    seen = []

    def before(conn, cursor, statement, params, context, many):
        if "ORDER BY jobs.priority DESC" in statement:
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        pilot = store.register_pilot("A", "h", 2, 1, {})
        store.acquire(pilot, "A", 1)
    finally:
        event.remove(store.engine, "before_cursor_execute", before)
    assert len(seen) == 1
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        return [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1])]


def test_the_dispatch_reads_its_index_in_order_also_beside_the_older_index(tmp_path):
    """No sort: the first n candidates are one range scan of ix_jobs_dispatch_order,
    whether or not a database made before it still has ix_jobs_dispatch, and whichever
    of the two was made first (SQLite breaks ties between plans by that order)."""
    store, _ = _queued(tmp_path, "db.sqlite", 50)
    plan = _dispatch_plan(store)
    assert any("INDEX ix_jobs_dispatch_order" in p for p in plan), plan
    assert not any("TEMP B-TREE" in p for p in plan), plan
    old = ("CREATE INDEX ix_jobs_dispatch ON jobs (site, state, priority, id)")
    new = ("CREATE INDEX ix_jobs_dispatch_order ON jobs (site, state, priority DESC, id)")
    for first, second in ((old, new), (new, old)):
        with store.engine.begin() as conn:
            conn.execute(text("DROP INDEX IF EXISTS ix_jobs_dispatch"))
            conn.execute(text("DROP INDEX ix_jobs_dispatch_order"))
            conn.execute(text(first))
            conn.execute(text(second))
        plan = _dispatch_plan(store)
        assert not any("TEMP B-TREE" in p for p in plan), (first, plan)
    store.close()


def test_an_older_database_gets_the_dispatch_index(db_url, tmp_path):
    store = Store(db_url, tmp_path / "results")
    store.upsert_sites(SITES)
    store.create_task("t", [{"payload": b"p%d" % p, "priority": p} for p in (0, 2, 1)],
                      site="A")
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_dispatch_order"))
        conn.execute(text("CREATE INDEX ix_jobs_dispatch ON jobs (site, state, priority, id)"))
    store.close()
    store = Store(db_url, tmp_path / "results")   # opened by a newer server
    names = {ix["name"] for ix in inspect(store.engine).get_indexes("jobs")}
    assert "ix_jobs_dispatch_order" in names
    pilot = store.register_pilot("A", "h", 1, 1, {})
    assert [j["payload"] for j in store.acquire(pilot, "A", 3)[0]] == [b"p2", b"p1", b"p0"]
    store.close()
