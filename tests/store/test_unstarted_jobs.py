"""An attempt that never started is not charged as a failure.  Both backends.

The kind of fault: a job handed to a pilot and never started there, failed with the
failures its payload causes, so that it uses up an attempt (with ``max_attempts=1`` it is
lost for good) and counts against its site.  A pilot holds jobs ahead of its running one
(pilot.py, ``_extra``), so each pilot that dies or stops has some.  Members: a pilot seen
to end (``pilots_gone``) with a job running and one held ahead; a pilot that hands a job
back unstarted in its report (it stopped, or its walltime ran out: ``unstarted``); and
the controls: a job that started and failed before its "running" report went out, a
failure of the user's code, and a failure the pilot does not say is unstarted, all
charged as before; and a hand-back does not raise its site's failure rate.  A dead
pilot's ``sent`` job may also have started in the pilot's last moments (a job that kills
its pilot at once is never reported running): it is free up to three attempts, then
charged.
"""

from __future__ import annotations

import time

from panda_lab.store.rows import sites as site_rows

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def setup(store, n: int = 2):
    """A task of ``n`` jobs of one attempt each, all handed to one pilot; the first runs."""
    ids = store.create_task("t", [{"payload": b"x"}] * n, site="A",
                            options={"max_attempts": 1})[1]
    pilot = store.register_pilot("A", "host", 101, 1, {})
    got, _ = store.acquire(pilot, "A", n)
    assert sorted(j["id"] for j in got) == sorted(ids)
    store.apply_updates(pilot, [{"id": ids[0], "attempt": 1, "state": "running",
                                 "started_at": time.time()}])
    return ids, pilot


def attempts(store, task: int = 1) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for j in store.list_jobs(task, all_attempts=True):
        out.setdefault(j["job_index"], []).append((j["attempt"], j["state"]))
    return {k: sorted(v) for k, v in out.items()}


def test_a_dead_pilots_job_held_ahead_gets_another_attempt_its_running_one_fails(store):
    ids, _ = setup(store)
    store.pilots_gone("A", "host", [(101, -9)])
    got = attempts(store)
    assert got[0] == [(1, "failed")]                  # it ran: charged, none left
    assert got[1] == [(1, "failed"), (2, "activated")]  # never ran: not charged
    jobs = {j["id"]: j for j in store.list_jobs(1, all_attempts=True)}
    # what the server knows, not more: a start it was not told of (the job may have
    # started in the pilot's last moments, its "running" report not sent yet)
    assert "before it reported the job's start" in jobs[ids[1]]["error_message"]
    assert "while holding the job" in jobs[ids[0]]["error_message"]


def test_a_job_handed_back_unstarted_gets_another_attempt(store):
    ids, pilot = setup(store)
    store.apply_updates(pilot, [{"id": ids[1], "attempt": 1, "state": "failed", "error": {
        "category": "system", "message": "pilot stopped before the job ran"},
        "unstarted": True}])
    assert attempts(store)[1] == [(1, "failed"), (2, "activated")]
    store.flush_learning()
    with store.tx() as conn:
        stats = {s.name: s for s in site_rows.loads_(conn)}
    assert not stats.get("A") or not stats["A"].failure_rate


def test_a_failure_not_said_unstarted_is_charged(store):
    ids, pilot = setup(store, 4)
    # started and failed before its "running" report went out: started_at is sent
    store.apply_updates(pilot, [
        {"id": ids[1], "attempt": 1, "state": "failed", "started_at": time.time(),
         "error": {"category": "system", "message": "worker process died"}},
        {"id": ids[2], "attempt": 1, "state": "failed",
         "error": {"category": "user", "message": "ZeroDivisionError"}},
        # a pilot that does not say so (another pilot's version, a test's shortcut)
        {"id": ids[3], "attempt": 1, "state": "failed",
         "error": {"category": "system", "message": "crash"}}])
    got = attempts(store)
    assert got[1] == got[2] == got[3] == [(1, "failed")]


def test_a_job_whose_pilots_keep_dying_before_its_start_is_reported_ends(store):
    from panda_lab.model.retry import UNSEEN_ATTEMPTS

    store.create_task("t", [{"payload": b"x"}], site="A", options={"max_attempts": 1})
    for pid in range(201, 201 + UNSEEN_ATTEMPTS):
        pilot = store.register_pilot("A", "host", pid, 1, {})
        (job,), _ = store.acquire(pilot, "A", 1)
        store.pilots_gone("A", "host", [(pid, -9)])  # before its "running" went out
    got = attempts(store)[0]
    assert len(got) == UNSEEN_ATTEMPTS and all(s == "failed" for _, s in got)
    assert store.get_job(job["id"])["error_message"].endswith(
        "before it reported the job's start")
