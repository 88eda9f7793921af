"""A task's common function reaches every job of the task, however many tasks came between.

The kind of fault: two accounts of one cache, on the two ends of a pipe, that drift apart.
A worker process keeps the common functions of its last :data:`COMMONS_KEPT` tasks; the
pilot's handle recorded every task it had sent one for and never forgot, so after 16 other
tasks a job of the first (an executor left open in a notebook while other cells ran) was
sent without its function and failed ("payload names no function and the task has
none").  Members, through a real worker process: a task's job after ``COMMONS_KEPT``
others runs its own function; the handle's account and the process's hold the same tasks
(the handle's never grows past the bound); a new process starts both afresh; and the
pilot's own copies of the functions it fetched are bounded (least recently used dropped,
fetched again when needed).
"""

from __future__ import annotations

import pickle
import shutil
import time
from multiprocessing.connection import wait

import cloudpickle
import pytest

from panda_lab.payload import dumps_call
from panda_lab.pilot.pilot import COMMONS_FETCHED, Pilot, PilotOptions
from panda_lab.pilot.worker import COMMONS_KEPT, Worker


def tagged(tag: int):
    def fn(x: int) -> tuple[int, int]:
        return tag, x
    return fn


def run(w: Worker, job_id: int, task: int) -> tuple[int, int]:
    """Job ``job_id`` of ``task`` (its payload names no function: the task's common one,
    as ``ex.map`` sends them) on ``w``; its result."""
    job = {"id": job_id, "task": task, "payload": dumps_call(None, (job_id,))}
    w.run(job, cloudpickle.dumps(tagged(task)), time.time())
    assert wait([w.conn], timeout=60)
    _job, outcome = w.receive()
    assert outcome.ok, outcome.error
    return pickle.loads(outcome.result)


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.kill()


def test_a_tasks_job_after_many_other_tasks_runs_its_own_function(worker):
    assert run(worker, 1, task=100) == (100, 1)
    for k in range(COMMONS_KEPT):               # as many tasks again: 100's is dropped
        assert run(worker, 10 + k, task=200 + k) == (200 + k, 10 + k)
    assert 100 not in worker.commons and len(worker.commons) == COMMONS_KEPT
    assert run(worker, 99, task=100) == (100, 99)
    assert list(worker.commons)[-1] == 100


def test_a_new_process_starts_both_accounts_afresh(worker):
    run(worker, 1, task=5)
    worker.kill()
    worker.ensure()
    assert not worker.commons
    assert run(worker, 2, task=5) == (5, 2)


def test_the_pilots_fetched_functions_are_bounded(tmp_path):
    p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t"))
    fetched: list[int] = []

    def request(method, path, raw=False, **kw):
        task = int(path.split("/")[-2])
        fetched.append(task)
        return b"fn-%d" % task

    p.api.request = request
    try:
        for task in range(COMMONS_FETCHED + 1):
            assert p._common(task) == b"fn-%d" % task
        assert len(p.commons) == COMMONS_FETCHED and 0 not in p.commons
        assert p._common(1) == b"fn-1" and fetched.count(1) == 1   # kept, now the newest
        assert p._common(0) == b"fn-0" and fetched.count(0) == 2   # dropped: fetched again
        assert 2 not in p.commons                                   # the least recent went
    finally:
        shutil.rmtree(p.spool, ignore_errors=True)
