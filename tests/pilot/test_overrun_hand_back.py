"""Jobs a pilot holds behind a job that overran go back to the server, unstarted.

The kind of fault: a job bound to a pilot that cannot start it, while another pilot could
(PanDA's late binding undone by a wrong guess).  A pilot asks for a busy slot's next job
just in time, by its mean job time, and holds short jobs ahead; a job that runs far
longer (a long job among short ones; a pilot's first, expected at 1 s) kept what was
asked for behind it until it ended: 20 s in tests/server/test_core_siblings_live.py
before this rule.  Members: held jobs go back once the slot's job ran past twice the mean
and at least five seconds past it, not before; each says it never started and why; the
pilot asks ahead for that slot no more; with several slots, only when every slot's job
overran (one ending in time starts the held job); and not while a worker is free (a job
waiting for a shared core waits for its turn, not for a job); nor when the slot's job
ended while the pilot was held up elsewhere (its word waits on the worker's pipe: a
report retried through a server outage), and after such a hold-up a pilot with
``idle_exit`` counts idle time from its last job's news, so it asks for the jobs waiting
for it before it leaves (it left with 7 jobs waiting, tests/pilot/test_pilot.py's
server outage).  No server: the stand-in for urllib3's pool of
tests/pilot/test_report_timing.py records the reports.  Before a pilot has measured a
job it neither asks ahead nor hands back: its first job's time is not guessed (a first
guess of 1 s held short jobs behind a 20-s job, and handed back jobs behind a first job
that took its worker's start too).
"""

from __future__ import annotations

import shutil
import time
from collections import deque

import pytest
from test_report_timing import Recorder

from panda_lab.pilot.pilot import OVERRUN_WHY, Pilot, PilotOptions


@pytest.fixture
def make():
    made = []

    def make(slots: int = 1, mean: float = 0.2) -> Pilot:
        p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t", slots=slots,
                               flush_interval=0.0))
        p.api._http = Recorder()
        p.mean_duration, p.done = mean, 3      # measured on its jobs so far
        made.append(p)
        return p

    yield make
    for p in made:
        shutil.rmtree(p.spool, ignore_errors=True)


def running(p: Pilot, slot: int, job_id: int, for_s: float) -> None:
    """Slot ``slot`` runs job ``job_id``, started ``for_s`` seconds ago."""
    p.workers[slot].job = {"id": job_id, "task": 1, "attempt": 1}
    p.workers[slot].started_at = time.time() - for_s


def hold(p: Pilot, *ids: int) -> None:
    p.queue = deque({"id": i, "task": 2, "attempt": 1} for i in ids)


def handed_back(p: Pilot) -> dict[int, dict]:
    p._maybe_flush()
    return {u["id"]: u for u in p.api._http.updates}


def test_held_jobs_go_back_once_the_slots_job_overran_and_not_before(make):
    p = make(mean=0.2)                          # overran after max(0.4, 5.2) s
    running(p, 0, 10, for_s=5.0)
    hold(p, 11, 12)
    p._hand_back_overrun()
    assert list(p.queue) and handed_back(p) == {}
    running(p, 0, 10, for_s=5.3)
    p._hand_back_overrun()
    assert not p.queue
    back = handed_back(p)
    assert set(back) == {11, 12}
    assert all(u["unstarted"] is True and u["state"] == "failed" for u in back.values())
    assert back[11]["error"]["message"] == OVERRUN_WHY
    assert 10 in p.asked_ahead and p._ending_soon() == []   # not asked ahead again


def test_a_long_mean_waits_twice_as_long(make):
    p = make(mean=8.0)                          # overran after max(16.0, 13.0) s
    running(p, 0, 10, for_s=15.0)
    hold(p, 11)
    p._hand_back_overrun()
    assert list(p.queue)
    running(p, 0, 10, for_s=16.1)
    p._hand_back_overrun()
    assert not p.queue


def test_with_several_slots_only_when_every_slots_job_overran(make):
    p = make(slots=2, mean=0.2)
    running(p, 0, 10, for_s=9.0)
    running(p, 1, 20, for_s=0.1)                # ends in time: it starts the held job
    hold(p, 11)
    p._hand_back_overrun()
    assert list(p.queue)
    assert p._overrun_at() == pytest.approx(p.workers[1].started_at + 5.2)
    running(p, 1, 20, for_s=5.5)
    p._hand_back_overrun()
    assert not p.queue and set(handed_back(p)) == {11}


def test_not_while_a_worker_is_free(make):
    p = make(slots=2, mean=0.2)
    running(p, 0, 10, for_s=9.0)                # slot 1 free: the job waits for a core
    hold(p, 11)
    assert p._overrun_at() is None
    p._hand_back_overrun()
    assert list(p.queue)


def test_not_for_a_job_that_ended_while_the_pilot_was_held_up(make):
    import multiprocessing

    p = make(mean=0.2)
    running(p, 0, 10, for_s=9.0)
    hold(p, 11)
    ours, theirs = multiprocessing.Pipe()
    p.workers[0].conn = ours
    theirs.send(("done", 10))                   # its outcome waits to be collected
    p._hand_back_overrun()
    assert list(p.queue) and handed_back(p) == {}
    ours.recv()
    p._hand_back_overrun()                      # nothing waiting: it did overrun
    assert not p.queue


def test_idle_time_counts_from_the_last_jobs_news_not_the_last_loop(make):
    p = make()
    p.opts.idle_exit = 2.0
    p.idle_since = time.monotonic() - 10        # the loop was held up for 10 s
    job = {"id": 10, "task": 1, "attempt": 1}
    p._set_pending(job, "finished", result="")  # the job it ran meanwhile ends
    assert not p._should_exit()


def test_a_pilot_that_measured_nothing_neither_asks_ahead_nor_hands_back(make):
    p = make(mean=1.0)
    p.done = 0
    running(p, 0, 10, for_s=30.0)
    assert p._ending_soon() == []
    hold(p, 11)
    p._hand_back_overrun()
    assert list(p.queue)
    p.done = 1
    assert [w.job["id"] for w in p._ending_soon()] == [10]
