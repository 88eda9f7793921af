"""The web monitor's queries read indexes, not job rows (benchmarks/bench_monitor_web.py
measures them at 100,000 jobs), and a database made before those indexes gets them.

Kind tested: a monitor query over all jobs (or all failures, or a task's jobs) that
reads each job's row where an index holds every column it needs; with 100,000 jobs such
a scan took 0.5 to 1.5 s.  Members: the job listing's total and facets (with and
without a time window), the ids of a sorted page, the errors view's groups by site, by
task and over time (under each of its filters, those on tasks too, whichever order the
indexes were made in), the sites' ended counts, a task page's histograms and progress.
SQLite's plans are checked (no statistics, as a fresh database has none); the
query that reads error messages is the one left reading rows (a message is no index's).
"""

from __future__ import annotations

import time

from sqlalchemy import event, inspect, text

from panda_lab.store import Store
from panda_lab.store.rows.monitor import Filter, Page
from panda_lab.store.schema import jobs


def _plans(store: Store, call) -> list[tuple[str, list[str]]]:
    """``(statement, plan lines)`` of every SELECT ``call`` makes on SQLite."""
    seen: list[tuple[str, tuple]] = []

    def before(conn, cursor, statement, params, context, many):
        if statement.lstrip().upper().startswith("SELECT") and not many:
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", before)
    out = []
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        for statement, params in seen:
            plan = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, params)]
            out.append((" ".join(statement.split()), plan))
    return out


SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 6}]


def _fill(store: Store) -> int:
    store.upsert_sites(SITES)
    task, _, _ = store.create_task("t", [{"payload": b"x"}] * 6, owner="alice", site="A")
    pilot = store.register_pilot("A", "h", 1, 6, {})
    got, _ = store.acquire(pilot, "A", 6)
    now = time.time()
    store.apply_updates(pilot, [{"id": j["id"], "attempt": j["attempt"], "state": "running",
                                 "started_at": now - 5} for j in got])
    store.apply_updates(pilot, [
        {"id": j["id"], "attempt": j["attempt"], "state": "finished", "result": b"r"}
        if i % 2 else
        {"id": j["id"], "attempt": j["attempt"], "state": "failed",
         "error": {"category": "system", "message": "lost", "traceback": "tb"}}
        for i, j in enumerate(got)])
    return task


def test_the_monitor_reads_indexes_not_job_rows(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "results")
    task = _fill(store)
    hour = time.time() - 3600
    calls = {
        "jobs": lambda: store.monitor_jobs(Filter(), Page("id")),
        "jobs in a window": lambda: store.monitor_jobs(Filter(since=hour), Page("id")),
        "failed jobs by duration": lambda: store.monitor_jobs(
            Filter(state=("failed",)), Page("duration", page=2, per_page=1)),
        "errors": lambda: store.monitor_errors(Filter(since=hour)),
        "sites": lambda: store.monitor_sites(hour),
    }
    checked = 0
    for name, call in calls.items():
        for statement, plan in _plans(store, call):
            if " FROM jobs" not in statement or "jobs.id IN" in statement \
                    or "jobs.error_message" in statement:
                continue   # not over jobs; a page's rows by id; the messages
            on_jobs = [p for p in plan if " jobs " in f"{p} "]
            if on_jobs == ["SCAN jobs"] and "ORDER BY jobs.id DESC" in statement:
                continue   # the table in id order, up to the page: no more rows read
            assert on_jobs and all("COVERING INDEX" in p for p in on_jobs), \
                (name, statement, plan)
            checked += 1
    assert checked >= 10
    from panda_lab.store.rows import monitor as rows

    with store.engine.connect() as conn:
        for statement, plan in _plans(store, lambda: (rows.task_distributions(conn, task),
                                                      rows.progress_over_time(conn, task))):
            if "FROM jobs" in statement and "chunks" not in statement:
                assert any("COVERING INDEX ix_jobs_task_site" in p for p in plan), \
                    (statement, plan)
                checked += 1
    store.close()


def test_the_errors_view_groups_failures_from_ix_jobs_facets_under_every_filter(tmp_path):
    """The errors view's groups by site, by task and over time read ix_jobs_facets
    alone (it holds state, site, error category, attempt, time, task and end time),
    whichever of the view's filters is given.  The group by message cannot: the
    message is in no index (a text of any length), so that one query reads the rows of
    failed attempts, found through an index on their state or task, never the table."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "results")
    task = _fill(store)
    filters = {"none": Filter(), "a window": Filter(since=time.time() - 3600),
               "a site": Filter(site="A"), "a task": Filter(task=task),
               "an owner": Filter(owner="alice"), "a category": Filter(error_category="system"),
               "an attempt": Filter(attempt=1), "a name": Filter(name="t*")}
    # Without statistics SQLite breaks a tie between two plans by the order the indexes
    # were made in (which follows a set's order at the database's creation): both ways
    ordered = sorted(jobs.indexes, key=lambda ix: ix.name)
    for remade in (ordered, ordered[::-1]):
        with store.engine.begin() as conn:
            for ix in remade:
                ix.drop(conn)
            for ix in remade:
                ix.create(conn)
        _errors_plans(store, filters)
    assert store.monitor_errors(Filter())["total"] == 3
    store.close()


def _errors_plans(store: Store, filters: dict[str, Filter]) -> None:
    for name, f in filters.items():
        grouped = messages = 0
        for statement, plan in _plans(store, lambda f=f: store.monitor_errors(f)):
            on_jobs = [p for p in plan if " jobs " in f"{p} "]
            assert on_jobs and not any(p.startswith("SCAN jobs") for p in on_jobs), \
                (name, statement, plan)
            if "jobs.error_message" in statement:
                messages += 1
            else:
                assert all("USING COVERING INDEX ix_jobs_facets" in p for p in on_jobs), \
                    (name, statement, plan)
                grouped += 1
        assert (grouped, messages) == (5, 1), name   # site, task, time (3), message


def test_an_older_database_gets_the_monitor_indexes(db_url, tmp_path):
    store = Store(db_url, tmp_path / "results")
    _fill(store)
    with store.engine.begin() as conn:
        for name in ("ix_jobs_facets", "ix_jobs_task_site"):
            conn.execute(text(f"DROP INDEX {name}"))
    store.close()
    store = Store(db_url, tmp_path / "results")   # opened by a newer server
    names = {ix["name"] for ix in inspect(store.engine).get_indexes("jobs")}
    assert {"ix_jobs_facets", "ix_jobs_task_site"} <= names
    assert store.monitor_jobs(Filter(), Page("id"))["total"] == 9   # 6 and 3 retries
    store.close()
