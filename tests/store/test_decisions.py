"""An attempt's brokerage decision lives in ``job_decisions``, written once, apart from the
job row that every step of the attempt's life rewrites; attempts placed before that table
existed keep theirs in ``jobs.broker_info``.  Both backends.

The kind of fault: a decision that a reader no longer finds once it moved out of the job
row, or that is found for one kind of attempt and not the other.  Members: the job as the
API shows it (one job, a task's jobs), the task's brokerage summary, a retry made from a
report (whose rows do not carry the decision: the sites it accepts must still hold), a
retry made by the user (``retry_task``), and the same readers over an attempt whose
decision is in the job row (an older database).
"""

from __future__ import annotations

from collections import Counter

import orjson
from sqlalchemy import select, update

from panda_lab.store.schema import job_decisions, jobs

SITES = [{"name": n, "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}
         for n in ("A", "B", "C")]


def fail(store, job_id: int, category: str = "system") -> list:
    job = store.get_job(job_id)
    pilot = store.register_pilot(job["site"], "h", job_id, 1, {})
    got, _ = store.acquire(pilot, job["site"], 10)
    assert job_id in [j["id"] for j in got]
    changes, ignored = store.apply_updates(pilot, [{
        "id": job_id, "attempt": job["attempt"], "state": "failed",
        "error": {"category": category, "message": "boom"}}])
    assert not ignored
    return changes.jobs


def test_a_decision_is_written_once_apart_from_the_job_row(store):
    _task, ids, _ = store.create_task("t", [{"payload": b"x"}] * 3, site=["A", "B"])
    with store.engine.connect() as conn:
        in_row = dict(conn.execute(select(jobs.c.id, jobs.c.broker_info)
                                   .where(jobs.c.id.in_(ids))).all())
        kept = {i: orjson.loads(t) for i, t in conn.execute(select(job_decisions)).all()}
    assert set(in_row.values()) == {"{}"}, "the job row must not carry the decision"
    assert set(kept) == set(ids)
    for jid in ids:
        job = store.get_job(jid)
        assert job["broker_info"] == kept[jid]
        assert job["broker_info"]["picked"] == job["site"] in ("A", "B")
        assert job["broker_info"]["sites"] == ["A", "B"]


def test_a_retry_from_a_report_keeps_the_decisions_sites(store):
    _task, (jid,), _ = store.create_task("t", [{"payload": b"x"}], site=["A", "B"],
                                         options={"max_attempts": 2})
    first = store.get_job(jid)["site"]
    new = fail(store, jid)[-1]
    assert (new.state, new.attempt) == ("activated", 2)
    nxt = store.get_job(new.job_id)
    # C is online and free, but the task accepts only A and B; the failed site is avoided
    assert nxt["site"] == ({"A", "B"} - {first}).pop()
    assert nxt["broker_info"]["sites"] == ["A", "B"]
    assert nxt["broker_info"]["rejected"] == {first: "avoided: an earlier attempt failed there"}


def test_an_attempt_decided_in_its_job_row_reads_and_retries_alike(store):
    task_id, (jid, other), _ = store.create_task("t", [{"payload": b"x"}] * 2,
                                                 site=["A", "B"], options={"max_attempts": 2})
    # as an older database holds it: the decision in the job row, no job_decisions row
    with store.engine.begin() as conn:
        text = conn.execute(select(job_decisions.c.info)
                            .where(job_decisions.c.job_id == jid)).scalar_one()
        conn.execute(job_decisions.delete().where(job_decisions.c.job_id == jid))
        conn.execute(update(jobs).where(jobs.c.id == jid).values(broker_info=text))
    old = store.get_job(jid)
    assert old["broker_info"] == orjson.loads(text)
    listed = {j["id"]: j for j in store.list_jobs(task_id)}
    assert listed[jid]["broker_info"] == old["broker_info"]
    assert listed[other]["broker_info"]["picked"] == listed[other]["site"]
    brokerage = store.monitor_task(task_id)["brokerage"]
    assert brokerage["sampled"] == 2
    assert brokerage["picked"] == dict(Counter(j["site"] for j in listed.values()))
    new = fail(store, jid)[-1]
    assert (new.state, new.attempt) == ("activated", 2)
    nxt = store.get_job(new.job_id)
    assert nxt["site"] == ({"A", "B"} - {old["site"]}).pop()
    assert nxt["broker_info"]["sites"] == ["A", "B"]


def test_a_users_retry_reads_the_decision_too(store):
    task_id, (jid,), _ = store.create_task("t", [{"payload": b"x"}], site=["B"],
                                           options={"max_attempts": 1})
    assert [c.state for c in fail(store, jid, category="user")] == ["failed"]
    ids, _ = store.retry_task(task_id)
    assert len(ids) == 1
    again = store.get_job(ids[0])
    assert again["site"] == "B" and again["broker_info"]["sites"] == ["B"]
