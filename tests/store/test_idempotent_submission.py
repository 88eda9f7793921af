"""Idempotency keys of submissions in the store, on SQLite and PostgreSQL.

Kind (a retried request that creates work twice): the same key sent again for a task's
creation, or for jobs added to an open task, finds the work the first made and makes
nothing; a key is its owner's (another user's same key is another request); a key used
again for a different request is refused; a key is recorded in the transaction of the
work, so a rolled-back creation leaves no key behind (its retry makes the work).
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from panda_lab.store import IdempotencyKeyReused, Store, SubmissionKey
from panda_lab.store.rows.submissions import fingerprint
from panda_lab.store.schema import jobs, tasks

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 4}]


def specs(n: int) -> list[dict]:
    return [{"payload": b"job %d" % i} for i in range(n)]


def counts(store: Store) -> tuple[int, int]:
    with store.tx() as conn:
        return (conn.execute(select(func.count()).select_from(tasks)).scalar_one(),
                conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def key(owner: str = "ann", k: str = "k-1", body: object = "task") -> SubmissionKey:
    return SubmissionKey(owner, k, fingerprint("POST /tasks", body))


def test_the_same_key_twice_makes_one_task_and_replays_its_jobs(store):
    k = key()
    assert store.submission(k) is None
    task_id, ids, _ = store.create_task("t", specs(5), owner="ann", key=k)
    assert store.submission(k) == {"task": task_id, "jobs": ids, "indices": [0, 1, 2, 3, 4]}
    # the request again (its answer was lost): the replay, and nothing new may be made
    with pytest.raises(IntegrityError):
        store.create_task("t", specs(5), owner="ann", key=k)
    assert counts(store) == (1, 5)
    assert store.submission(k)["task"] == task_id


def test_a_key_is_its_owners_and_tied_to_its_request(store):
    store.create_task("t", specs(1), owner="ann", key=key("ann"))
    assert store.submission(key("bob")) is None      # bob's k-1 is another request
    store.create_task("t", specs(1), owner="bob", key=key("bob"))
    assert counts(store) == (2, 2)
    with pytest.raises(IdempotencyKeyReused, match="'k-1' was used for a different request"):
        store.submission(key("ann", body="another task"))


def test_a_rolled_back_creation_leaves_no_key_and_its_retry_makes_the_task(store):
    k = key()
    with pytest.raises(Exception, match="NOWHERE"):  # brokerage refuses: nothing is made
        store.create_task("t", specs(3), owner="ann", site="NOWHERE", key=k)
    assert store.submission(k) is None and counts(store) == (0, 0)
    task_id, ids, _ = store.create_task("t", specs(3), owner="ann", key=k)
    assert store.submission(k) == {"task": task_id, "jobs": ids, "indices": [0, 1, 2]}


def test_jobs_added_with_a_key_are_added_once_and_replayed_by_their_indices(store):
    task_id, _, _ = store.create_task("ex", [], owner="ann", open_=True, key=key(k="open"))
    assert store.submission(key(k="open")) == {"task": task_id, "jobs": [], "indices": []}
    first, _ = store.add_jobs(task_id, specs(2))
    batch = SubmissionKey("ann", "batch-2", fingerprint(f"POST /tasks/{task_id}/jobs", "b"))
    ids, _ = store.add_jobs(task_id, specs(3), key=batch)
    with pytest.raises(IntegrityError):
        store.add_jobs(task_id, specs(3), key=batch)
    assert store.submission(batch) == {"task": task_id, "jobs": ids, "indices": [2, 3, 4]}
    assert counts(store) == (1, 5)
    assert set(ids).isdisjoint(first)
