"""The workflow verbs are one transaction each: a verb that fails half-way leaves
nothing of what it did.

Kind tested: a verb made of several transactions (``pilots_gone`` used to mark the
pilots lost in one and fail their jobs in others), which a crash or an error between
them leaves half done: pilots lost whose jobs still run, never to be retried.  Members:
``pilots_gone`` opens one transaction for any number of pilots; when the retries it
makes cannot be placed, neither are the pilots lost nor the jobs failed; when they can,
all of it is there.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event

from panda_lab.model.brokerage import BrokerageError, choose
from panda_lab.store import Store


class Broker:
    """The model's brokerage, which can be told to refuse."""

    def __init__(self) -> None:
        self.refuse = False

    def choose(self, requests, loads, **context):
        if self.refuse:
            raise BrokerageError("no site for the retries")
        return choose(requests, loads, **context)


@pytest.fixture
def setup(db_url, tmp_path):
    broker = Broker()
    store = Store(db_url, tmp_path / "results", broker=broker)
    store.upsert_sites([{"name": "A", "kind": "local", "provisioner": "local"}])
    pilots = {pid: store.register_pilot("A", "host", pid, 2, {}) for pid in (101, 102)}
    task_id, ids, _ = store.create_task("t", [{"payload": b"x"} for _ in range(4)], site="A")
    for _pid, pilot_id in pilots.items():
        store.acquire(pilot_id, "A", 2)
    yield store, broker, pilots, task_id, ids
    store.close()


def transactions(store: Store) -> list[int]:
    count = [0]
    event.listen(store.engine, "begin", lambda _conn: count.__setitem__(0, count[0] + 1))
    return count


def test_pilots_gone_is_one_transaction(setup):
    store, _broker, pilots, _task_id, ids = setup
    count = transactions(store)
    changes = store.pilots_gone("A", "host", [(101, -9), (102, 1)])
    assert count[0] == 1
    assert {p["state"] for p in store.list_pilots()} == {"lost"}
    failed = [c for c in changes.jobs if c.state == "failed"]
    assert sorted(c.job_id for c in failed) == ids
    assert {c.error_message.split(" (")[0] for c in failed} == {
        f"its pilot {pilots[101]}", f"its pilot {pilots[102]}"}
    assert any("killed by signal 9" in c.error_message for c in failed)
    assert any("exit code 1" in c.error_message for c in failed)
    retries = [c for c in changes.jobs if c.state == "activated"]
    assert len(retries) == 4 and {c.attempt for c in retries} == {2}


def test_pilots_gone_that_cannot_finish_leaves_nothing_half_done(setup):
    store, broker, _pilots, task_id, _ids = setup
    broker.refuse = True
    with pytest.raises(BrokerageError):
        store.pilots_gone("A", "host", [(101, -9), (102, None)])
    assert {p["state"] for p in store.list_pilots()} == {"running"}, \
        "pilots lost while their jobs were not failed"
    assert {j["state"] for j in store.list_jobs(task_id)} == {"sent"}
    broker.refuse = False
    store.pilots_gone("A", "host", [(101, -9), (102, None)])
    assert {p["state"] for p in store.list_pilots()} == {"lost"}
    assert [j["attempt"] for j in store.list_jobs(task_id)] == [2, 2, 2, 2]


def test_pilots_gone_of_unknown_processes_changes_nothing(setup):
    store, _broker, _pilots, _task_id, _ids = setup
    count = transactions(store)
    changes = store.pilots_gone("A", "other-host", [(101, 0)])
    assert count[0] == 1 and not changes.jobs and not changes.tasks
    assert {p["state"] for p in store.list_pilots()} == {"running"}


def test_placing_pauses_the_collector_and_restores_it(db_url, tmp_path):
    """A bulk placement runs with the cyclic collector off (``store.base.collector_paused``)
    and leaves it on again after, also when brokerage refuses."""
    import gc

    seen: list[bool] = []

    class Watching(Broker):
        def choose(self, requests, loads, **context):
            seen.append(gc.isenabled())
            return super().choose(requests, loads, **context)

    broker = Watching()
    store = Store(db_url, tmp_path / "results", broker=broker)
    try:
        store.upsert_sites([{"name": "A", "kind": "local", "provisioner": "local"}])
        assert gc.isenabled()
        store.create_task("t", [{"payload": b"x"}] * 3)
        assert seen == [False] and gc.isenabled()
        broker.refuse = True
        with pytest.raises(BrokerageError):
            store.create_task("t", [{"payload": b"x"}])
        assert gc.isenabled(), "a refused placement must turn the collector back on"
    finally:
        store.close()
