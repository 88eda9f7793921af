"""Client leases in the store, on SQLite and PostgreSQL: the watchdog's rule with explicit
times (no sleeping), renewal, re-grant at a server start, and the upgrade of a database
made before leases existed."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from panda_lab.store import Store, TaskStateError
from panda_lab.store.base import now

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 4}]
LEASE = 30.0



def jobs_(n: int) -> list[dict]:
    return [{"payload": b"job %d" % i} for i in range(n)]


def open_task(store: Store, n_jobs: int, lease_s: float | None = LEASE) -> tuple[int, list[int]]:
    """An executor's task: opened empty with a lease, then given ``n_jobs`` jobs."""
    task_id, _, _ = store.create_task("ex", [], open_=True, lease_s=lease_s,
                                      options={"kind": "executor"})
    ids, _ = store.add_jobs(task_id, jobs_(n_jobs)) if n_jobs else ([], None)
    return task_id, ids


def finish(store: Store, job_ids: list[int], state: str = "finished") -> None:
    """A pilot takes the jobs and reports them ``state``."""
    p = store.register_pilot("A", "host", 1, 4, {})
    got, _ = store.acquire(p, "A", 1000)
    assert set(job_ids) <= {j["id"] for j in got}
    updates = []
    for jid in job_ids:
        u = {"id": jid, "attempt": 1, "state": state}
        if state == "finished":
            u["result"] = b"r%d" % jid
        else:
            u["error"] = {"category": "user", "message": "ValueError: no"}
        updates.append(u)
    _, ignored = store.apply_updates(p, updates)
    assert not ignored


def test_an_open_task_gets_a_lease_and_a_closed_or_server_held_one_none(store):
    t = now()
    task_id, _ = open_task(store, 0)
    assert t + LEASE <= store.get_task(task_id)["lease_until"] <= now() + LEASE
    held, _ = open_task(store, 0, lease_s=None)       # the server holds it (scouting)
    closed, _, _ = store.create_task("plain", jobs_(1), lease_s=LEASE)
    assert store.get_task(held)["lease_until"] is None
    assert store.get_task(closed)["lease_until"] is None


def test_a_lapsed_lease_closes_a_task_whose_jobs_all_finished_as_done(store):
    task_id, ids = open_task(store, 3)
    finish(store, ids)
    assert store.get_task(task_id)["state"] == "running"   # open: more jobs may come
    until = store.get_task(task_id)["lease_until"]
    assert store.close_expired_leases(until - 1.0)[0] == []   # not yet
    closed, changes = store.close_expired_leases(until + 1.0)
    assert closed == [task_id]
    assert changes.tasks == [(task_id, "done")]
    task = store.get_task(task_id)
    assert (task["state"], task["open"], task["n_done"]) == ("done", False, 3)
    assert task["message"].startswith("closed: client gone (lease expired at ")
    assert task["message"].endswith("UTC); all 3 jobs finished")
    assert [r["data"] for r in store.results(task_id)] == [b"r%d" % i for i in ids]
    assert store.close_expired_leases(until + 100.0)[0] == []   # once only


def test_the_jobs_of_a_closed_task_run_on_and_it_ends_when_they_do(store):
    task_id, ids = open_task(store, 4)
    finish(store, ids[:1])
    until = store.get_task(task_id)["lease_until"]
    closed, changes = store.close_expired_leases(until + 1.0)
    assert closed == [task_id] and changes.tasks == []   # three jobs still to run
    task = store.get_task(task_id)
    assert (task["state"], task["open"]) == ("running", False)
    assert task["message"].startswith("closed: client gone")
    assert {j["state"] for j in store.list_jobs(task_id)[1:]} == {"sent"}, \
        "the jobs already submitted are neither cancelled nor closed"
    with pytest.raises(TaskStateError, match=r"is closed \(closed: client gone .*no new jobs"):
        store.add_jobs(task_id, jobs_(1))
    finish_rest = [j["id"] for j in store.list_jobs(task_id)[1:]]
    # (they were sent to the first pilot: report them from it)
    p = store.list_jobs(task_id)[1]["pilot_id"]
    store.apply_updates(p, [{"id": j, "attempt": 1, "state": "finished", "result": b"x"}
                            for j in finish_rest[:2]]
                        + [{"id": finish_rest[2], "attempt": 1, "state": "failed",
                            "error": {"category": "user", "message": "ValueError: no"}}])
    task = store.get_task(task_id)
    assert task["state"] == "finished"        # PanDA's partial: 3 of 4 jobs finished
    assert task["message"].startswith("closed: client gone")
    assert task["message"].endswith("; 3 of 4 jobs finished")


@pytest.mark.parametrize("n_finished, state", [(0, "failed"), (1, "finished")])
def test_a_closed_task_ends_by_the_usual_rule(store, n_finished, state):
    task_id, ids = open_task(store, 2)
    finish(store, ids[:n_finished])
    if n_finished < 2:
        p = store.list_jobs(task_id)[0]["pilot_id"]
        store.apply_updates(p, [{"id": j, "attempt": 1, "state": "failed",
                                 "error": {"category": "user", "message": "ValueError: no"}}
                                for j in ids[n_finished:]])
    until = store.get_task(task_id)["lease_until"]
    store.close_expired_leases(until + 1.0)
    assert store.get_task(task_id)["state"] == state


def test_renewal_keeps_a_task_open_past_its_first_lease(store):
    task_id, _ = open_task(store, 1, lease_s=1.0)
    first = store.get_task(task_id)["lease_until"]
    reply = store.renew_lease(task_id, LEASE)
    assert reply["task"] == task_id and reply["lease_s"] == LEASE
    assert reply["lease_until"] >= first + LEASE - 1.0
    assert store.get_task(task_id)["lease_until"] == pytest.approx(reply["lease_until"])
    assert store.close_expired_leases(first + 1.0)[0] == []
    assert store.get_task(task_id)["open"] is True


def test_renewal_is_refused_for_closed_and_server_held_tasks(store):
    task_id, _ = open_task(store, 1)
    store.close_expired_leases(store.get_task(task_id)["lease_until"] + 1.0)
    with pytest.raises(TaskStateError, match=r"is closed \(closed: client gone .*cannot be "):
        store.renew_lease(task_id, LEASE)
    shut, _ = open_task(store, 0)
    store.close_task(shut)                       # its client's shutdown
    with pytest.raises(TaskStateError, match=r"is closed: its lease cannot be renewed"):
        store.renew_lease(shut, LEASE)
    held, _ = open_task(store, 0, lease_s=None)
    with pytest.raises(TaskStateError, match="held open by the server"):
        store.renew_lease(held, LEASE)


def test_a_server_held_open_task_is_never_closed_by_the_rule(store):
    held, _ = open_task(store, 1, lease_s=None)
    assert store.close_expired_leases(now() + 1e9)[0] == []
    assert store.get_task(held)["open"] is True


def test_a_server_start_regrants_open_leases_a_full_period(store):
    lapsed, _ = open_task(store, 1, lease_s=1.0)
    long_, _ = open_task(store, 1, lease_s=10 * LEASE)
    done, _ = open_task(store, 0)
    store.close_task(done)
    before = {i: store.get_task(i)["lease_until"] for i in (lapsed, long_, done)}
    t = now()
    assert store.regrant_leases(LEASE) == 2
    after = {i: store.get_task(i)["lease_until"] for i in (lapsed, long_, done)}
    assert t + LEASE <= after[lapsed] <= now() + LEASE
    assert after[long_] == pytest.approx(before[long_])      # never shortened
    assert after[done] == pytest.approx(before[done])        # closed: untouched
    assert store.close_expired_leases(t + LEASE - 1.0)[0] == []


def test_a_database_made_before_leases_gains_the_column(db_url, tmp_path):
    old = Store(db_url, tmp_path / "results")
    old.upsert_sites(SITES)
    task_id, _, _ = old.create_task("before", jobs_(2), owner="me")
    with old.engine.begin() as conn:
        conn.execute(text("ALTER TABLE tasks DROP COLUMN lease_until"))
    assert "lease_until" not in {c["name"] for c in inspect(old.engine).get_columns("tasks")}
    old.close()

    new = Store(db_url, tmp_path / "results")
    try:
        assert "lease_until" in {c["name"] for c in inspect(new.engine).get_columns("tasks")}
        task = new.get_task(task_id)
        assert (task["name"], task["n_jobs"], task["lease_until"]) == ("before", 2, None)
        opened, _ = open_task(new, 1)
        assert new.get_task(opened)["lease_until"] is not None
    finally:
        new.close()
