"""The store on both backends: every test runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import base64
import os
import random
import threading
import time

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import text as text_

from panda_lab.model.brokerage import BrokerageError, choose
from panda_lab.store import INLINE_LIMIT, Store, TaskNotFound, TaskStateError
from panda_lab.store.schema import job_status, jobs, results

SITES = [{"name": n, "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}
         for n in ("A", "B")]


class SeededBroker:
    """Brokerage with a fixed seed: the same submission lands the same way every run."""

    def __init__(self) -> None:
        self.rng = random.Random(1)

    def choose(self, requests, loads, **context):
        return choose(requests, loads, rng=self.rng, **context)


@pytest.fixture
def store(db_url, tmp_path):
    s = Store(db_url, tmp_path / "results", broker=SeededBroker())
    s.upsert_sites(SITES)
    yield s
    s.close()


def pilot(store: Store, site: str = "A") -> int:
    return store.register_pilot(site, "host", 123, 2, {"version": "test"})


def jobs_(n: int, **spec) -> list[dict]:
    return [{"payload": b"job %d" % i, **spec} for i in range(n)]


def report(store: Store, pilot_id: int, job_id: int, state: str, **fields):
    job = store.get_job(job_id)
    return store.apply_updates(pilot_id, [{"id": job_id, "attempt": job["attempt"],
                                           "state": state, **fields}])


def run_one(store: Store, job_id: int, state: str, **fields) -> dict:
    """Report ``state`` for a job, first dispatching it (and the other jobs waiting at its
    site) to a new pilot there if no pilot holds it yet."""
    job = store.get_job(job_id)
    p = job["pilot_id"]
    if job["state"] == "activated":
        p = pilot(store, job["site"])
        got, _ = store.acquire(p, job["site"], 1000)
        assert job_id in [j["id"] for j in got]
    changes, ignored = report(store, p, job_id, state, **fields)
    assert not ignored
    return {"pilot": p, "changes": changes}


def states(store: Store, job_id: int) -> list[str]:
    return [h["state"] for h in store.get_job(job_id)["history"]]


def user_error(msg: str = "ValueError: bad input") -> dict:
    return {"category": "user", "message": msg, "traceback": "Traceback ...",
            "exception": b"pickled exception"}


# ---- submission and brokerage -------------------------------------------------------


def test_create_task_activates_jobs_brokered_across_sites(store):
    task_id, ids, changes = store.create_task(
        "ana", [*jobs_(12), {"payload": b"pinned", "site": "B"}], owner="me",
        options={"max_attempts": 2})
    assert len(ids) == 13
    assert changes.tasks == [(task_id, "ready")]
    assert changes.activated_sites == {"A", "B"}
    assert [c.state for c in changes.jobs] == ["activated"] * 13
    task = store.get_task(task_id)
    assert (task["state"], task["n_jobs"], task["open"], task["owner"]) == ("ready", 13,
                                                                          False, "me")
    listed = store.list_jobs(task_id)
    assert [j["id"] for j in listed] == ids
    assert [j["job_index"] for j in listed] == list(range(13))
    assert all(j["state"] == "activated" and j["attempt"] == 1 for j in listed)
    assert all(j["max_attempts"] == 2 for j in listed)
    assert {j["site"] for j in listed[:12]} == {"A", "B"}, "brokerage should spread the load"
    assert listed[12]["site"] == "B"
    for j in listed:
        info = j["broker_info"]
        assert info["picked"] == j["site"]
        assert set(info["weights"]) <= {"A", "B"} and j["site"] in info["weights"]
    assert set(listed[12]["broker_info"]["weights"]) == {"B"}
    assert listed[12]["broker_info"]["sites"] == ["B"]
    assert listed[0]["broker_info"]["sites"] == ["ANY"]
    assert states(store, ids[0]) == ["defined", "assigned", "activated"]
    per_site = store.get_task(task_id)["jobs_by_site"]
    assert sum(n for s in per_site.values() for n in s.values()) == 13


def test_brokerage_skips_offline_sites_and_unknown_site_creates_nothing(store):
    store.set_site_state("A", "offline", "maintenance")
    task_id, _ids, _ = store.create_task("t", jobs_(4))
    for j in store.list_jobs(task_id):
        assert j["site"] == "B"
        assert j["broker_info"]["rejected"] == {"A": "offline: maintenance"}
    with pytest.raises(BrokerageError, match="unknown site 'C'"):
        store.create_task("bad", jobs_(2), site="C")
    assert [t["name"] for t in store.list_tasks()] == ["t"], "a refused task must leave no row"


def test_create_empty_closed_task_is_done_at_once(store):
    task_id, ids, changes = store.create_task("empty", [])
    assert ids == []
    assert store.get_task(task_id)["state"] == "done"
    assert (task_id, "done") in changes.tasks


# ---- dispatch -------------------------------------------------------------------------------


def test_acquire_by_two_pilots_respects_priority_and_never_repeats(store):
    priorities = [0, 5, 1, 5, 3]
    task_id, ids, _ = store.create_task(
        "t", [{"payload": b"p%d" % p, "priority": p} for p in priorities], site="A")
    p1, p2, pb = pilot(store), pilot(store), pilot(store, "B")
    assert store.acquire(pb, "B", 10)[0] == [], "pilots only get jobs of their site"
    got1, changes = store.acquire(p1, "A", 2)
    assert [j["id"] for j in got1] == [ids[1], ids[3]]
    assert [j["payload"] for j in got1] == [b"p5", b"p5"]
    assert all(j["attempt"] == 1 and j["task"] == task_id for j in got1)
    assert (task_id, "running") in changes.tasks
    got2, _ = store.acquire(p2, "A", 10)
    assert [j["id"] for j in got2] == [ids[4], ids[2], ids[0]]
    assert store.acquire(p1, "A", 10)[0] == []
    assert store.get_task(task_id)["state"] == "running"
    for j, p in [(j, p1) for j in got1] + [(j, p2) for j in got2]:
        row = store.get_job(j["id"])
        assert (row["state"], row["pilot_id"]) == ("sent", p)
        assert row["history"][-1]["info"] == f"pilot {p}"


# ---- reports and results ---------------------------------------------------------------


def test_finished_result_is_stored_inline_once(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1), site="A")
    p = pilot(store)
    store.acquire(p, "A", 1)
    began = time.time()  # after its dispatch: a start before it is no start (test_event_times)
    changes, ignored = report(store, p, jid, "running", started_at=began)
    assert not ignored and [c.state for c in changes.jobs] == ["running"]
    assert store.get_job(jid)["started_at"] == began
    changes, ignored = report(store, p, jid, "finished", result=b"abc", stdout="hello")
    assert not ignored
    assert [(c.state, c.result) for c in changes.jobs] == [("finished", b"abc")]
    assert (task_id, "done") in changes.tasks
    assert store.results(task_id) == [{"index": 0, "job_id": jid, "data": b"abc"}]
    _, ignored = report(store, p, jid, "finished", result=b"twice")
    assert ignored == [{"id": jid, "reason": "job is already finished"}]
    assert store.results(task_id)[0]["data"] == b"abc"
    job = store.get_job(jid)
    assert job["stdout_tail"] == "hello" and job["ended_at"] is not None
    assert states(store, jid) == ["defined", "assigned", "activated", "sent", "starting",
                                  "running", "finished"]
    assert store.pilot(p)["jobs_done"] == 1
    task = store.get_task(task_id)
    assert (task["state"], task["n_done"], task["message"]) == ("done", 1, "its job finished")


def test_batched_report_records_every_intermediate_state(store):
    """A fast job reported ``finished`` while the server has it ``sent``."""
    _task_id, (jid,), _ = store.create_task("t", jobs_(1), site="A")
    run_one(store, jid, "finished", result=b"r")
    assert states(store, jid)[3:] == ["sent", "starting", "running", "finished"]


def test_large_result_goes_to_the_result_store_with_a_reference(store):
    task_id, ids, _ = store.create_task("t", jobs_(2), site="A")
    big = os.urandom(INLINE_LIMIT + 1)
    out = run_one(store, ids[0], "finished", result=big)
    assert out["changes"].jobs[-1].result is None, "large results are not pushed in events"
    with store.tx() as conn:
        row = conn.execute(select(results).where(results.c.job_id == ids[0])).one()
    assert row.inline is None
    assert row.ref == f"{task_id}/{ids[0]}.pkl" and row.size == len(big)
    assert (store.result_dir / row.ref).read_bytes() == big
    # A pilot may upload first and report only the reference.
    big2 = os.urandom(INLINE_LIMIT * 2)
    ref = store.write_result(task_id, ids[1], big2)
    assert store.result_ref_ok(ref) and not store.result_ref_ok("nope/1.pkl")
    run_one(store, ids[1], "finished", result_ref=ref)
    assert [r["data"] for r in store.results(task_id)] == [big, big2]
    assert [r["data"] for r in store.results(task_id, indices=[1])] == [big2]


def test_finished_without_a_result_fails_the_attempt_and_retries(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1))
    changes = run_one(store, jid, "finished")["changes"]
    job = store.get_job(jid)
    assert (job["state"], job["error_category"]) == ("failed", "system")
    assert store.results(task_id) == []
    assert [c.state for c in changes.jobs] == ["failed", "activated"]
    assert len(store.list_jobs(task_id, all_attempts=True)) == 2


def test_stale_foreign_and_impossible_updates_are_ignored_with_a_reason(store):
    _task_id, (j1, j2), _ = store.create_task("t", jobs_(2), site="A")
    p1, p2 = pilot(store), pilot(store)
    assert [j["id"] for j in store.acquire(p1, "A", 1)[0]] == [j1]
    assert [j["id"] for j in store.acquire(p2, "A", 1)[0]] == [j2]
    changes, ignored = store.apply_updates(p1, [
        {"id": j1, "attempt": 2, "state": "running"},
        {"id": j2, "attempt": 1, "state": "running"},
        {"id": 10**6, "attempt": 1, "state": "running"},
        {"id": j1, "attempt": 1, "state": "activated"},
    ])
    assert not changes.jobs
    assert [i["id"] for i in ignored] == [j1, j2, 10**6, j1]
    reasons = [i["reason"] for i in ignored]
    assert reasons[0] == "stale attempt 2 (current 1)"
    assert reasons[1] == f"job is held by pilot {p2}, not {p1}"
    assert reasons[2] == "unknown job"
    assert "cannot go from sent to activated" in reasons[3]
    assert store.get_job(j1)["state"] == store.get_job(j2)["state"] == "sent"
    changes, ignored = store.apply_updates(p1, [
        {"id": j1, "attempt": 1, "state": "running"},
        {"id": j1, "attempt": 1, "state": "finished", "result": b"x"},
    ])
    assert ignored == [{"id": j1, "reason": "duplicate update in one report"}]
    assert store.get_job(j1)["state"] == "running"


# ---- failures and retries --------------------------------------------------------------


def test_user_failure_is_not_retried(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1))
    changes = run_one(store, jid, "failed", error=user_error(), stderr="oops")["changes"]
    assert [c.state for c in changes.jobs] == ["failed"]
    assert changes.tasks == [(task_id, "failed")]
    assert len(store.list_jobs(task_id, all_attempts=True)) == 1
    (f,) = store.failures(task_id)
    assert (f["id"], f["error_category"], f["error_message"]) == (jid, "user",
                                                                  "ValueError: bad input")
    assert f["error_traceback"] == "Traceback ..." and f["stderr_tail"] == "oops"
    assert base64.b64decode(f["error_exception"]) == b"pickled exception"
    task = store.get_task(task_id)
    assert (task["state"], task["message"]) == ("failed", "its job did not finish")
    assert task["ended_at"] is not None


def test_system_failure_is_retried_elsewhere_up_to_max_attempts(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1), options={"max_attempts": 3})
    seen = []
    for n in (1, 2, 3):
        job = store.get_job(jid)
        assert job["attempt"] == n and job["state"] == "activated"
        seen.append(job["site"])
        changes = run_one(store, jid, "failed",
                          error={"category": "system", "message": "worker died"})["changes"]
        if n < 3:
            new = changes.jobs[-1]
            assert (new.state, new.attempt, new.job_index) == ("activated", n + 1, 0)
            assert new.site != job["site"], "a retry avoids the site that failed"
            nxt = store.get_job(new.job_id)
            assert nxt["retry_of"] == jid
            assert nxt["broker_info"]["rejected"] == {
                job["site"]: "avoided: an earlier attempt failed there"}
            assert store.get_task(task_id)["state"] == "running"
            jid = new.job_id
        else:
            assert [c.state for c in changes.jobs] == ["failed"]
    assert seen in (["A", "B", "A"], ["B", "A", "B"])
    attempts = store.list_jobs(task_id, all_attempts=True)
    assert [(j["attempt"], j["state"]) for j in attempts] == [(1, "failed"), (2, "failed"),
                                                              (3, "failed")]
    assert [j["attempt"] for j in store.list_jobs(task_id)] == [3]
    assert store.get_task(task_id)["state"] == "failed"
    assert [f["attempt"] for f in store.failures(task_id)] == [3]


def test_retry_stays_on_the_only_allowed_site(store):
    _task_id, (jid,), _ = store.create_task("t", jobs_(1), site="A")
    changes = run_one(store, jid, "failed", error={"category": "system", "message": "x"})
    assert changes["changes"].jobs[-1].site == "A"


def test_retry_keeps_a_jobs_own_site_list(store):
    """A job pinned to site B by its own spec stays on B when retried, even though the
    task accepts any site and B is where it failed."""
    task_id, (jid,), _ = store.create_task("t", [{"payload": b"x", "site": "B"}])
    assert store.get_job(jid)["site"] == "B"
    changes = run_one(store, jid, "failed", error={"category": "system", "message": "x"})
    new = changes["changes"].jobs[-1]
    assert (new.attempt, new.site) == (2, "B")
    run_one(store, new.job_id, "failed", error={"category": "user", "message": "x"})
    retried, _ = store.retry_task(task_id)
    assert store.get_job(retried[0])["site"] == "B"


@pytest.mark.parametrize("outcomes,state,message", [
    (["finished", "finished"], "done", "all 2 jobs finished"),
    (["finished", "failed"], "finished", "1 of 2 jobs finished"),
    (["failed", "failed"], "failed", "none of 2 jobs finished"),
])
def test_task_ends_done_finished_or_failed(store, outcomes, state, message):
    task_id, ids, _ = store.create_task("t", jobs_(2))
    for jid, outcome in zip(ids, outcomes, strict=True):
        assert store.get_task(task_id)["ended_at"] is None
        if outcome == "finished":
            run_one(store, jid, "finished", result=b"r")
        else:
            run_one(store, jid, "failed", error=user_error())
    task = store.get_task(task_id)
    assert (task["state"], task["message"]) == (state, message)
    assert task["ended_at"] is not None
    assert task["n_done"] == outcomes.count("finished")


def test_open_task_ends_only_after_close(store):
    task_id, (j0,), _ = store.create_task("t", jobs_(1), open_=True)
    run_one(store, j0, "finished", result=b"0")
    assert store.get_task(task_id)["state"] == "running"
    ids, changes = store.add_jobs(task_id, jobs_(2))
    assert [store.get_job(i)["job_index"] for i in ids] == [1, 2]
    assert changes.activated_sites
    for i in ids:
        run_one(store, i, "finished", result=b"r")
    task = store.get_task(task_id)
    assert (task["state"], task["n_jobs"], task["n_done"], task["ended_at"]) == (
        "running", 3, 3, None)
    changes = store.close_task(task_id)
    assert changes.tasks == [(task_id, "done")]
    assert store.get_task(task_id)["state"] == "done"
    with pytest.raises(TaskStateError, match="closed"):
        store.add_jobs(task_id, jobs_(1))
    empty, _, _ = store.create_task("e", [], open_=True)
    assert store.get_task(empty)["state"] == "ready"
    store.close_task(empty)
    assert store.get_task(empty)["state"] == "done"
    with pytest.raises(TaskNotFound):
        store.close_task(10**6)


def test_pilot_reported_cancel_still_ends_the_task(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1))
    changes = run_one(store, jid, "cancelled")["changes"]
    assert store.get_job(jid)["state"] == "cancelled"
    assert (task_id, "failed") in changes.tasks
    assert store.get_task(task_id)["state"] == "failed"


# ---- commands: kill and retry ---------------------------------------------------------------


def test_kill_task_cancels_waiting_and_running_jobs_and_pilots_drop_them(store):
    task_id, ids, _ = store.create_task("t", jobs_(3), site="A")
    other_task, (other,), _ = store.create_task("o", jobs_(1), site="B")
    p, pb = pilot(store), pilot(store, "B")
    sent = [j["id"] for j in store.acquire(p, "A", 2)[0]]
    store.acquire(pb, "B", 1)
    report(store, p, sent[0], "running")
    changes = store.kill_task(task_id)
    assert sorted(c.job_id for c in changes.jobs) == ids
    assert {(c.state, c.error_category) for c in changes.jobs} == {("cancelled", "killed")}
    assert changes.tasks == [(task_id, "aborted")]
    for jid in ids:
        job = store.get_job(jid)
        assert (job["state"], job["error_message"]) == ("cancelled", "killed by user")
        assert job["history"][-1]["state"] == "cancelled"
    assert store.get_task(task_id)["state"] == "aborted"
    assert store.heartbeat(p, sent) == sorted(sent)
    assert store.heartbeat(pb, [other]) == [], "another task's live job is kept"
    assert store.heartbeat(pb, [other, 10**6]) == [10**6], "unknown jobs are dropped"
    _, ignored = report(store, p, sent[0], "finished", result=b"late")
    assert ignored == [{"id": sent[0], "reason": "job is already cancelled"}]
    assert store.results(task_id) == []
    assert store.acquire(p, "A", 10)[0] == []
    with pytest.raises(TaskStateError):
        store.kill_task(task_id)
    with pytest.raises(TaskStateError, match="aborted"):
        store.retry_task(task_id)
    assert store.get_job(other)["state"] == "sent"
    assert store.get_task(other_task)["state"] == "running"


def test_kill_jobs_cancels_single_attempts(store):
    task_id, (j0, j1), _ = store.create_task("t", jobs_(2))
    changes = store.kill_jobs([j0])
    assert [(c.job_id, c.state) for c in changes.jobs] == [(j0, "cancelled")]
    assert store.kill_jobs([j0]).jobs == [], "a final attempt is not cancelled twice"
    run_one(store, j1, "finished", result=b"r")
    task = store.get_task(task_id)
    assert (task["state"], task["message"]) == ("finished", "1 of 2 jobs finished")


def test_retry_task_makes_new_attempts_only_for_failed_jobs(store):
    task_id, (j0, j1, j2), _ = store.create_task("t", jobs_(3), options={"max_attempts": 1})
    run_one(store, j0, "finished", result=b"0")
    run_one(store, j1, "failed", error={"category": "system", "message": "crash"})
    store.kill_jobs([j2])
    assert store.get_task(task_id)["state"] == "finished"
    assert len(store.list_jobs(task_id, all_attempts=True)) == 3, "max_attempts=1: no retry"
    new_ids, changes = store.retry_task(task_id)
    assert (task_id, "running") in changes.tasks
    assert store.get_task(task_id)["message"] == "retried by user"
    new = [store.get_job(i) for i in new_ids]
    assert sorted((j["job_index"], j["attempt"], j["retry_of"]) for j in new) == [
        (1, 2, j1), (2, 2, j2)]
    assert all(j["state"] == "activated" and j["max_attempts"] >= 2 for j in new)
    assert [j["attempt"] for j in store.list_jobs(task_id)] == [1, 2, 2]
    assert store.retry_task(task_id)[0] == [], "nothing failed: nothing to retry"
    for i in new_ids:
        run_one(store, i, "finished", result=b"r")
    task = store.get_task(task_id)
    assert (task["state"], task["n_done"]) == ("done", 3)
    assert [r["index"] for r in store.results(task_id)] == [0, 1, 2]
    with pytest.raises(TaskStateError, match="done"):
        store.retry_task(task_id)


# ---- the watchdog's path ------------------------------------------------------------------


def test_lost_jobs_are_failed_and_retried_and_pilots_told_to_drop_them(store):
    task_id, (j0, j1), _ = store.create_task("t", jobs_(2), site="A,B")
    p = pilot(store, "A")
    for jid in (j0, j1):  # both onto site A's pilot, whatever brokerage chose
        with store.tx() as conn:
            conn.execute(jobs.update().where(jobs.c.id == jid).values(site="A"))
    assert len(store.acquire(p, "A", 2)[0]) == 2
    report(store, p, j0, "running")
    t = time.time()
    lost = store.lost_jobs(heartbeat_before=t + 60, sent_before=t - 3600)
    assert sorted((j["id"], j["pilot"], j["why"]) for j in lost) == [
        (j0, p, "lost heartbeat"), (j1, p, "lost heartbeat")]
    stuck = store.lost_jobs(heartbeat_before=t - 3600, sent_before=t + 60)
    assert [(j["id"], j["why"]) for j in stuck] == [(j1, "stuck in sent")]
    assert store.lost_jobs(heartbeat_before=t - 3600, sent_before=t - 3600) == []
    changes = store.fail_jobs([j["id"] for j in lost], "system", "lost heartbeat: silent")
    assert sorted((c.job_id, c.state) for c in changes.jobs if c.state == "failed") == [
        (j0, "failed"), (j1, "failed")]
    retries = [c for c in changes.jobs if c.state == "activated"]
    assert sorted(c.job_index for c in retries) == [0, 1]
    assert all(c.attempt == 2 and c.site == "B" for c in retries), "avoid the failed site"
    assert store.get_job(j0)["history"][-1] == {
        "state": "failed", "time": store.get_job(j0)["history"][-1]["time"],
        "info": "lost heartbeat: silent"}
    assert store.heartbeat(p, [j0, j1]) == [j0, j1]
    assert store.fail_jobs([j0, j1], "system", "again").jobs == []
    _, ignored = report(store, p, j0, "finished", result=b"late")
    assert ignored and ignored[0]["reason"] == "job is already failed"
    assert store.get_task(task_id)["state"] == "running"
    assert store.lost_jobs(heartbeat_before=t + 60, sent_before=t + 60) == []


def test_lost_pilot_comes_back_with_a_heartbeat(store):
    p = pilot(store)
    assert store.mark_lost_pilots(time.time() + 60) == [p]
    assert store.pilot(p)["state"] == "lost"
    assert store.mark_lost_pilots(time.time() + 60) == []
    store.heartbeat(p, [])
    assert store.pilot(p)["state"] == "running"
    assert store.mark_lost_pilots(time.time() - 60) == []


# ---- queries and persistence ---------------------------------------------------------------


def test_get_job_has_history_and_attempts(store):
    task_id, (jid,), _ = store.create_task("t", jobs_(1))
    p = run_one(store, jid, "failed", error={"category": "system", "message": "x"})["pilot"]
    second = store.list_jobs(task_id)[0]["id"]
    first = store.get_job(jid)
    assert [h["state"] for h in first["history"]] == [
        "defined", "assigned", "activated", "sent", "failed"]
    assert first["history"][3]["info"] == f"pilot {p}"
    times = [h["time"] for h in first["history"]]
    assert times == sorted(times)
    assert first["attempts"] == [jid, second]
    assert store.get_job(second)["attempts"] == [jid, second]
    assert "payload" not in first
    with pytest.raises(TaskNotFound):
        store.get_job(10**6)
    with pytest.raises(TaskNotFound):
        store.get_task(10**6)


def test_list_sites_counts_queued_and_running(store):
    store.create_task("t", jobs_(3), site="A")
    p = pilot(store)
    store.acquire(p, "A", 1)
    by_name = {s["name"]: s for s in store.list_sites()}
    assert (by_name["A"]["queued"], by_name["A"]["running"], by_name["A"]["pilots"]) == (2, 1, 1)
    assert (by_name["B"]["queued"], by_name["B"]["running"], by_name["B"]["pilots"]) == (0, 0, 0)


def test_tokens_persist_across_store_instances(store, db_url, tmp_path):
    user, pilot_token = store.tokens()
    assert user != pilot_token and len(user) >= 24
    assert store.tokens() == (user, pilot_token)
    again = Store(db_url, tmp_path / "other")
    try:
        assert again.tokens() == (user, pilot_token)
        assert again.site_names() == ["A", "B"], "the data is there too"
    finally:
        again.close()


# ---- concurrency (PostgreSQL): row locks in dispatch ------------------------------------------


@pytest.mark.postgresql
def test_concurrent_acquire_never_hands_a_job_twice(postgres, tmp_path):
    url = postgres.new_database()
    main = Store(url, tmp_path / "results")
    main.upsert_sites(SITES[:1])
    n_jobs, n_threads = 240, 6
    _task_id, ids, _ = main.create_task("t", jobs_(n_jobs), site="A")
    pilots = [pilot(main) for _ in range(n_threads)]
    stores = [Store(url, tmp_path / "results") for _ in range(n_threads)]
    sql: list[str] = []
    event.listen(stores[0].engine, "before_cursor_execute",
                 lambda *a: sql.append(a[2]))
    got: dict[int, list[int]] = {p: [] for p in pilots}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(store: Store, p: int) -> None:
        try:
            barrier.wait()
            while True:
                batch, _ = store.acquire(p, "A", 3)
                assert len(batch) <= 3, f"asked for 3 jobs, got {len(batch)}"
                got[p].extend(j["id"] for j in batch)
                if not batch:
                    with store.tx() as conn:
                        left = conn.execute(select(func.count()).select_from(jobs).where(
                            jobs.c.state == "activated")).scalar_one()
                    if not left:
                        return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, p)) for s, p in zip(stores, pilots,
                                                                          strict=True)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        handed = [i for batch in got.values() for i in batch]
        assert len(handed) == len(set(handed)), "a job was handed out twice"
        assert sorted(handed) == ids
        assert sum(1 for batch in got.values() if batch) > 1, "no concurrency happened"
        with main.tx() as conn:
            sent = conn.execute(select(job_status.c.job_id, func.count())
                                .where(job_status.c.state == "sent")
                                .group_by(job_status.c.job_id)).all()
            holder = dict(conn.execute(select(jobs.c.id, jobs.c.pilot_id)).all())
        assert len(sent) == n_jobs and all(n == 1 for _, n in sent)
        for p, batch in got.items():
            assert all(holder[i] == p for i in batch)
        assert any("FOR UPDATE SKIP LOCKED" in s for s in sql)
    finally:
        for s in stores:
            s.close()
        main.close()


@pytest.mark.postgresql
@pytest.mark.parametrize("kill", ["task", "jobs"])
def test_kill_racing_a_report_never_cancels_a_finished_job(postgres, tmp_path, kill):
    """A kill that starts while a pilot's report holds the job's row lock must see the
    report's outcome, not record ``cancelled`` after ``finished``."""
    url = postgres.new_database()
    store = Store(url, tmp_path / "results")
    other = Store(url, tmp_path / "results")
    try:
        store.upsert_sites(SITES[:1])
        task_id, (jid,), _ = store.create_task("t", jobs_(1), site="A")
        p = pilot(store)
        store.acquire(p, "A", 1)
        report(store, p, jid, "running")
        out: dict = {}
        with other.engine.connect() as conn:
            tx = conn.begin()  # the report's transaction, holding the row lock
            conn.execute(select(jobs.c.id).where(jobs.c.id == jid).with_for_update())

            def killer() -> None:
                out["changes"] = (store.kill_task(task_id) if kill == "task"
                                  else store.kill_jobs([jid]))

            thread = threading.Thread(target=killer)
            thread.start()
            deadline = time.time() + 10
            while time.time() < deadline:  # until the kill waits on the lock
                n = conn.execute(select(func.count()).select_from(
                    text_("pg_stat_activity")).where(text_("wait_event_type = 'Lock'"))
                ).scalar_one()
                if n:
                    break
                time.sleep(0.01)
            conn.execute(jobs.update().where(jobs.c.id == jid).values(
                state="finished", ended_at=time.time()))
            conn.execute(job_status.insert().values(job_id=jid, state="finished",
                                                    time=time.time(), info=""))
            tx.commit()
            thread.join(20)
        assert store.get_job(jid)["state"] == "finished"
        assert states(store, jid)[-1] == "finished", "cancelled recorded after finished"
        assert jid not in [c.job_id for c in out["changes"].jobs]
    finally:
        store.close()
        other.close()


@pytest.mark.postgresql
def test_concurrent_retries_of_a_task_make_one_new_attempt_per_job(postgres, tmp_path):
    url = postgres.new_database()
    stores = [Store(url, tmp_path / "results") for _ in range(4)]
    main = stores[0]
    try:
        main.upsert_sites(SITES[:1])
        task_id, ids, _ = main.create_task("t", jobs_(5), site="A")
        for jid in ids:
            run_one(main, jid, "failed", error=user_error())
        for _round in range(3):
            assert main.get_task(task_id)["state"] == "failed"
            barrier = threading.Barrier(len(stores))
            made: list[list[int]] = []

            def retry(store: Store, barrier: threading.Barrier, made: list) -> None:
                barrier.wait()
                made.append(store.retry_task(task_id)[0])

            threads = [threading.Thread(target=retry, args=(s, barrier, made)) for s in stores]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(len(m) for m in made) == [0, 0, 0, 5], "one retry made them all"
            attempts = main.list_jobs(task_id, all_attempts=True)
            keys = [(j["job_index"], j["attempt"]) for j in attempts]
            assert len(keys) == len(set(keys)), "two attempts with the same number"
            for jid in next(m for m in made if m):
                run_one(main, jid, "failed", error=user_error())
    finally:
        for s in stores:
            s.close()


def test_only_jobs_the_pilot_says_it_holds_stay_alive(store):
    """A job the pilot lost track of goes stale and is found by the watchdog, even though
    the same pilot keeps heartbeating its other jobs."""
    store.create_task("held", jobs_(2), site="A")
    p = pilot(store)
    got, _ = store.acquire(p, "A", 2)
    kept, lost = got[0]["id"], got[1]["id"]
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    assert store.heartbeat(p, [kept]) == []
    stale = {j["id"] for j in store.lost_jobs(heartbeat_before=cutoff, sent_before=0)}
    assert stale == {lost}
    store.acquire(p, "A", 1, held=[kept, lost])  # an acquire carries the held jobs too
    assert store.lost_jobs(heartbeat_before=cutoff, sent_before=0) == []


def test_jobs_waiting_at_an_offline_site_are_rebrokered(store):
    moving, _, _ = store.create_task("moving", jobs_(4), site="A")
    pinned, _, _ = store.create_task("pinned", jobs_(1), site="B")
    store.create_task("anywhere", jobs_(6))
    store.set_site_state("B", "offline", "sbatch: invalid partition")
    changes = store.rebroker_offline()
    closed = [c for c in changes.jobs if c.state == "closed"]
    new = [c for c in changes.jobs if c.state == "activated"]
    assert closed and len(new) == len(closed)
    assert {c.site for c in closed} == {"B"} and "B" not in {c.site for c in new}
    assert all(c.attempt == 2 for c in new)
    # a job that accepts only the offline site keeps waiting there
    (only_b,) = store.list_jobs(pinned)
    assert only_b["site"] == "B" and only_b["state"] == "activated"
    for c in closed:
        job = store.get_job(c.job_id)
        assert [h["state"] for h in job["history"]][-2:] == ["activated", "closed"]
        assert job["error_message"].startswith("site offline")
    assert {j["site"] for j in store.list_jobs(moving)} == {"A"}  # online: untouched
    assert store.rebroker_offline().jobs == []   # nothing left to move
    store.set_site_state("B", "online")
    assert store.rebroker_offline().jobs == []
