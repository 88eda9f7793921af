"""The store's steps of an analysis task, on SQLite and PostgreSQL: sizing after scouting in
one transaction, failing a task for results that cannot be merged, opening it again."""

from __future__ import annotations

import pytest

from panda_lab.model import TaskState
from panda_lab.store import Store, TaskStateError

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}]



def chunk(start: int, stop: int) -> list[dict]:
    return [{"file_index": 0, "path": "/f.root", "tree": "Events", "start": start,
             "stop": stop}]


def scouting_task(store: Store) -> int:
    task_id, _, _ = store.create_task("ana", [{"payload": b"scout"}], options={"kind": "x"},
                                      open_=True, state=TaskState.SCOUTING,
                                      job_chunks=[chunk(0, 10)])
    return task_id


def test_sizing_adds_jobs_moves_the_state_and_records_options_together(store):
    task_id = scouting_task(store)
    ids, changes = store.add_jobs(task_id, [{"payload": b"a"}, {"payload": b"b"}],
                                  job_chunks=[chunk(10, 20), chunk(20, 30)],
                                  advance=(TaskState.SCOUTING, TaskState.RUNNING),
                                  options={"scouting": {"events_per_job": 10}})
    task = store.get_task(task_id)
    assert len(ids) == 2 and task["n_jobs"] == 3 and task["state"] == "running"
    assert task["options"] == {"kind": "x", "scouting": {"events_per_job": 10}}
    assert (task_id, "running") in changes.tasks and task["open"]
    assert [c["start"] for c in store.task_chunks(task_id)] == [0, 10, 20]


def test_a_failed_sizing_changes_nothing(store):
    task_id = scouting_task(store)
    with pytest.raises(KeyError):  # a chunk without its file: the transaction is undone
        store.add_jobs(task_id, [{"payload": b"a"}], job_chunks=[[{"start": 1}]],
                       advance=(TaskState.SCOUTING, TaskState.RUNNING),
                       options={"scouting": {}})
    task = store.get_task(task_id)
    assert (task["state"], task["n_jobs"], task["options"]) == ("scouting", 1, {"kind": "x"})


def test_fail_task_cancels_the_rest_and_keeps_the_error(store):
    task_id = scouting_task(store)
    changes = store.fail_task(task_id, "results differ", {"merge_error": {"job_index": 0}})
    task = store.get_task(task_id)
    assert (task["state"], task["message"], task["open"]) == ("failed", "results differ", False)
    assert task["options"]["merge_error"] == {"job_index": 0}
    (job,) = store.list_jobs(task_id)
    assert job["state"] == "cancelled" and job["error_message"] == "task failed: results differ"
    assert (task_id, "failed") in changes.tasks
    with pytest.raises(TaskStateError, match="closed"):
        store.add_jobs(task_id, [{"payload": b"late"}])


def test_fail_task_of_an_ended_task_only_records_the_error(store):
    task_id = scouting_task(store)
    store.kill_task(task_id)
    changes = store.fail_task(task_id, "results differ", {"merge_error": {"job_index": 0}})
    task = store.get_task(task_id)
    assert (task["state"], task["message"]) == ("aborted", "killed by user")
    assert task["options"]["merge_error"] == {"job_index": 0} and not changes.tasks


def test_reopen_lets_a_closed_task_take_jobs(store):
    task_id = scouting_task(store)
    store.add_jobs(task_id, [], advance=(TaskState.SCOUTING, TaskState.RUNNING))
    store.close_task(task_id)
    store.reopen_task(task_id)
    ids, _ = store.add_jobs(task_id, [{"payload": b"more"}], job_chunks=[chunk(10, 20)])
    assert len(ids) == 1 and store.get_task(task_id)["open"]


def test_a_tasks_summary_counts_the_events_of_lost_jobs(store):
    """The summary the server serves with a task: while running, the jobs lost so far;
    once ended, PanDA's partial ``finished`` in the warning tone with the events lost."""
    task_id, ids, _ = store.create_task(
        "ana", [{"payload": b"%d" % i} for i in range(3)], options={"max_attempts": 1},
        job_chunks=[chunk(0, 10), chunk(10, 30), chunk(30, 60)])
    pilot_id = store.register_pilot("A", "host", 1, 3, {})
    store.acquire(pilot_id, "A", 3)
    def report(job_id, state, **fields):
        store.apply_updates(pilot_id, [{"id": job_id, "attempt": 1, "state": state, **fields}])
    report(ids[0], "finished", result=b"r")
    report(ids[1], "failed", category="user", message="ValueError: bad",
           traceback="Traceback ...", exception=b"x")
    s = store.get_task(task_id)["summary"]
    assert (s["tone"], s["jobs_lost"], s["events_lost"], s["rate"]) == ("active", 1, 20, None)
    assert s["label"] == "running: 1 of 3 jobs done, 1 failed (20 events not processed)"
    report(ids[2], "finished", result=b"r")
    task = store.get_task(task_id)
    s = task["summary"]
    assert task["state"] == "finished" and s["tone"] == "warning"
    assert s["label"] == "finished: 1 of 3 jobs failed (20 events not processed)"
    assert s["wall_s"] == pytest.approx(task["ended_at"] - task["created_at"])
    assert s["rate"] == pytest.approx(40 / s["wall_s"])
    assert store.list_tasks()[0]["summary"] == s


def test_a_task_list_reads_its_summaries_together(store):
    """Each task in a list is what ``get_task`` shows for it, and the list costs a fixed
    number of queries however many tasks it holds (it used to cost several per task)."""
    from sqlalchemy import event

    def make(n_tasks: int) -> None:
        for k in range(n_tasks):
            _task_id, ids, _ = store.create_task(
                f"ana{k}-{n_tasks}", [{"payload": b"%d" % i} for i in range(2)],
                options={"max_attempts": 1}, job_chunks=[chunk(0, 10), chunk(10, 30)])
            pilot_id = store.register_pilot("A", "host", 1, 2, {})
            store.acquire(pilot_id, "A", 2)
            store.apply_updates(pilot_id, [{"id": ids[0], "attempt": 1, "state": "finished",
                                            "result": b"r"}])
            store.create_task(f"plain{k}-{n_tasks}", [{"payload": b"p"}])

    def queries(limit: int) -> int:
        seen = []
        listener = lambda *a: seen.append(1)  # noqa: E731
        event.listen(store.engine, "before_cursor_execute", listener)
        try:
            store.list_tasks(limit=limit)
        finally:
            event.remove(store.engine, "before_cursor_execute", listener)
        return len(seen)

    make(1)
    few = queries(2)
    make(10)
    assert queries(22) == few
    listed = store.list_tasks(limit=22)
    assert len(listed) == 22
    for task in listed:
        one = store.get_task(task["id"])
        for t in (one, task):  # a running task's wall time so far moves with the clock
            t["summary"].pop("wall_s")
        assert {k: one[k] for k in task if k != "sites"} == \
            {k: task[k] for k in task if k != "sites"}
    running = [t for t in listed if t["name"].startswith("ana")]
    assert all(t["summary"]["events_lost"] == 0 and t["summary"]["tone"] == "active"
               for t in running)
