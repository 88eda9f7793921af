"""The status bar's numbers (panda_lab/store/rows/counts.py), on both backends.

The kind of bug: a number that says something other than what happened.  Its members
tested here: jobs a pilot prefetched counted as running; failed attempts that a retry
recovered counted as failed; failures of a task its owner killed, or that a person
acknowledged, counted as needing attention; and, the other way, an acknowledged task
whose retry fails again no longer counted.  Another member: one owner's numbers
counting another owner's jobs (a user's status bar and site list count their own)."""

from __future__ import annotations

from panda_lab.store import Store

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}]


def pilot(store: Store) -> int:
    return store.register_pilot("A", "host", 123, 2, {"version": "test"})


def report(store: Store, pilot_id: int, job_id: int, state: str, **fields) -> None:
    job = store.get_job(job_id)
    store.apply_updates(pilot_id, [{"id": job_id, "attempt": job["attempt"], "state": state,
                                    **fields}])


SYSTEM = {"category": "system", "message": "worker died"}
USER = {"category": "user", "message": "ValueError: bad", "traceback": "Traceback ..."}


def test_running_prefetched_and_waiting_apart(store):
    store.create_task("t", [{"payload": b"x"} for _ in range(5)])
    p = pilot(store)
    got, _ = store.acquire(p, "A", 3)             # a pilot pulls 3 jobs ...
    held = [j["id"] for j in got]
    report(store, p, held[0], "running")          # ... and starts one
    c = store.job_counts()
    assert (c["running"], c["prefetched"], c["waiting"]) == (1, 2, 2)
    assert (c["failed"], c["failed_tasks"]) == (0, 0)


def test_failed_counts_only_what_still_needs_attention(store):
    # a system failure retried and recovered: not failed
    _, (recovered,), _ = store.create_task("recovered", [{"payload": b"x"}],
                                           options={"max_attempts": 2})
    p = pilot(store)
    store.acquire(p, "A", 10)
    report(store, p, recovered, "failed", error=SYSTEM)
    retry = store.list_jobs(store.get_job(recovered)["task_id"])[0]["id"]
    assert retry != recovered
    store.acquire(p, "A", 10)
    report(store, p, retry, "finished", result=b"r")
    assert store.job_counts()["failed"] == 0

    # two user failures in one task: they need a person
    task, (a, b, c), _ = store.create_task("broken", [{"payload": b"x"}] * 3)
    store.acquire(p, "A", 10)
    for j in (a, b):
        report(store, p, j, "failed", error=USER)
    report(store, p, c, "finished", result=b"r")
    assert store.get_task(task)["state"] == "finished"
    counts = store.job_counts()
    assert (counts["failed"], counts["failed_tasks"]) == (2, 1)

    # acknowledged: seen, no longer counted
    store.acknowledge_task(task)
    assert store.job_counts()["failed"] == 0

    # retried, and one fails again: counted again, the other recovered is not
    new, _ = store.retry_task(task)
    store.acquire(p, "A", 10)
    report(store, p, new[0], "failed", error=USER)
    report(store, p, new[1], "finished", result=b"r")
    assert (store.job_counts()["failed"], store.job_counts()["failed_tasks"]) == (1, 1)

    # a task its owner killed: its failures were the owner's decision
    killed, (k1, _k2), _ = store.create_task("killed", [{"payload": b"x"}] * 2)
    store.acquire(p, "A", 10)
    report(store, p, k1, "failed", error=USER)
    assert store.job_counts()["failed"] == 2
    store.kill_task(killed)
    assert store.job_counts()["failed"] == 1


def test_each_owners_numbers_count_their_own_jobs_only(store):
    p = pilot(store)
    _, alice, _ = store.create_task("a", [{"payload": b"x"}] * 3, owner="alice")
    store.acquire(p, "A", 2)                       # alice's first two reach the pilot
    report(store, p, alice[0], "running")
    report(store, p, alice[1], "failed", error=USER)
    store.create_task("b", [{"payload": b"x"}] * 4, owner="bob")  # bob's all wait
    mine = {who: store.job_counts(who) for who in ("alice", "bob", "carol")}
    pick = ("running", "prefetched", "waiting", "failed", "failed_tasks")
    assert [mine["alice"][k] for k in pick] == [1, 0, 1, 1, 1]
    assert [mine["bob"][k] for k in pick] == [0, 0, 4, 0, 0]
    assert all(v == 0 for v in mine["carol"].values())
    everyone = store.job_counts()
    assert all(everyone[k] == mine["alice"][k] + mine["bob"][k] for k in pick)

    def site_a(owner):
        (site,) = store.list_sites(owner)
        return site["queued"], site["running"], site["pilots"]

    # pilots are the site's, whoever asks; queued and running are the owner's jobs
    assert site_a("alice") == (1, 1, 1)
    assert site_a("bob") == (4, 0, 1)
    assert site_a("carol") == (0, 0, 1)
    assert site_a(None) == (5, 1, 1)


def _progress_from_task(store: Store, task_id: int) -> dict:
    from panda_lab.model import JOB_FINAL

    t = store.get_task(task_id)
    return {"open": t["open"], "state": t["state"], "n_done": t["n_done"],
            "unfinished": sum(n for st, n in t["attempts_by_state"].items()
                              if st not in JOB_FINAL)}


def test_task_progress_agrees_with_the_task_at_every_step(store):
    """The one-statement check the analysis service makes per report says what the full
    task read says: attempts still to end (a retry's new attempt among them) and results."""
    task, (a, b), _ = store.create_task("p", [{"payload": b"x"}] * 2,
                                        options={"max_attempts": 2}, open_=True)
    assert store.task_progress(task) == _progress_from_task(store, task)
    assert store.task_progress(task)["unfinished"] == 2
    p = pilot(store)
    store.acquire(p, "A", 10)
    report(store, p, a, "failed", error=SYSTEM)      # a retry of a waits: still unfinished
    assert store.task_progress(task) == _progress_from_task(store, task)
    assert store.task_progress(task)["unfinished"] == 2
    report(store, p, b, "finished", result=b"r")
    retry = next(j["id"] for j in store.list_jobs(task) if j["id"] not in (a, b))
    store.acquire(p, "A", 10)
    report(store, p, retry, "finished", result=b"r")
    got = store.task_progress(task)
    assert got == _progress_from_task(store, task)
    assert (got["unfinished"], got["n_done"]) == (0, 2)
    assert store.task_progress(task + 1000) is None
