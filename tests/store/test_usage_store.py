"""A job's measured memory and CPU and a pilot's usage, kept by the store, on both
backends (panda_lab/pilot/usage.py measures them; jobs.peak_rss_mb, jobs.cpu_s, pilots.*).

The kind of bug: resource numbers that read 0 or the pilot's own instead of the
payload's.  Members here: the measurement dropped by the report (the job reads the
request, 0); a later report without numbers erasing them; a pilot's usage from a
report or a heartbeat never reaching its row; and an old database without the columns.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

from panda_lab.store import Store
from panda_lab.store.base import add_missing_columns, add_missing_indexes

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}]


def test_a_reported_measurement_and_a_pilots_usage_are_kept(store):
    store.create_task("t", [{"payload": b"x"} for _ in range(2)])
    p = store.register_pilot("A", "host", 123, 2, {})
    assert store.pilot(p)["rss_mb"] is None  # nothing reported yet: not 0
    got, _ = store.acquire(p, "A", 2)
    a, b = (j["id"] for j in got)
    store.apply_updates(p, [{"id": a, "attempt": 1, "state": "running", "started_at": 1.0}],
                        usage={"rss_mb": 310.5, "cpu_s": 2.5})
    pilot = store.pilot(p)
    assert (pilot["rss_mb"], pilot["cpu_s"], pilot["cpu_pct"]) == (310.5, 2.5, None)
    store.apply_updates(p, [
        {"id": a, "attempt": 1, "state": "finished", "result": b"r", "peak_rss_mb": 231.4,
         "cpu_s": 4.25},
        {"id": b, "attempt": 1, "state": "failed", "peak_rss_mb": 12.0, "cpu_s": 0.01,
         "error": {"category": "user", "message": "ValueError"}}])
    ja, jb = store.get_job(a), store.get_job(b)
    assert (ja["memory_mb"], ja["peak_rss_mb"], ja["cpu_s"]) == (0, 231.4, 4.25)
    assert (jb["peak_rss_mb"], jb["cpu_s"]) == (12.0, 0.01)  # a failed job is measured too
    store.heartbeat(p, [], {"rss_mb": 120.0, "cpu_s": 9.0, "cpu_pct": 87.5})
    assert {k: store.pilot(p)[k] for k in ("rss_mb", "cpu_s", "cpu_pct")} == \
        {"rss_mb": 120.0, "cpu_s": 9.0, "cpu_pct": 87.5}
    store.heartbeat(p, [])  # a heartbeat without usage (an older pilot) keeps the last
    assert store.pilot(p)["rss_mb"] == 120.0
    assert [x["id"] for x in store.list_pilots(ids=[p])] == [p]
    assert store.list_pilots(ids=[p + 1000]) == []
    rows = store.list_jobs(store.get_job(a)["task_id"])
    assert [r["peak_rss_mb"] for r in rows] == [231.4, 12.0]


def test_an_old_database_gains_the_nullable_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url, tmp_path / "r").close()
    engine = create_engine(url)
    with engine.begin() as conn:
        # an old database has no index over the new columns either: drop those first
        # (SQLite refuses to drop a column an index names)
        conn.execute(text("DROP INDEX ix_jobs_task_site"))
        for table, col in (("jobs", "peak_rss_mb"), ("jobs", "cpu_s"), ("pilots", "rss_mb"),
                           ("pilots", "cpu_s"), ("pilots", "cpu_pct")):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
    added = add_missing_columns(engine)
    made = add_missing_indexes(engine)  # in this order, as Store does: the index needs them
    engine.dispose()
    assert {"jobs.peak_rss_mb", "jobs.cpu_s", "pilots.rss_mb", "pilots.cpu_s",
            "pilots.cpu_pct"} <= set(added), added
    assert "ix_jobs_task_site" in made, made
