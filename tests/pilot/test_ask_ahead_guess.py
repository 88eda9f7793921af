"""A pilot asks for no job it would hold behind a job of unknown length.

The kind of fault: a job bound to a pilot that cannot start it, while another pilot could
(PanDA's late binding undone by a guess). A pilot asks for a busy slot's next job just in
time, by its mean job time, and fills a queue of short jobs ahead (``fill_seconds``).
Members: behind a job of a task none of whose jobs it has run it asks nothing ahead,
neither just in time, nor to fill a queue, nor extra (its first job was guessed at 1 s,
and a short job asked for behind a 20-s first job waited 20 s in
tests/server/test_core_siblings_live.py); an idle pilot asks one job a slot (pilots coming
from 0.02-s jobs each took five of a new task's 2-s jobs, so none could be cancelled as
never run in tests/client/test_executor.py's shutdown); a slot whose job ran past twice
the mean and a second past it is asked nothing for, neither just in time nor to fill a
queue (a 60-s job after 0.02-s ones had four jobs asked behind it), while a slot whose job
is on time is; with several slots, only the overrun slot stops asking. And, found on the
way: a pilot with ``idle_exit`` counts idle time from its last job's news, not from the
last loop that saw a job (a loop held up by a server outage left with 7 jobs waiting for
it, tests/pilot/test_pilot.py's server outage). No server: the stand-in for urllib3's pool
of tests/pilot/test_report_timing.py.
"""

from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import pytest
from test_report_timing import Recorder

from panda_lab.pilot.pilot import Pilot, PilotOptions


@pytest.fixture
def make():
    made = []

    def make(slots: int = 1, mean: float = 0.2, measured: tuple = (1,)) -> Pilot:
        p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t", slots=slots,
                               flush_interval=0.0))
        p.api._http = Recorder()
        p.mean_duration, p.done = mean, 3       # measured on its jobs so far,
        p.measured.update(dict.fromkeys(measured))  # of these tasks
        p.round_trip = 0.005
        made.append(p)
        return p

    yield make
    for p in made:
        shutil.rmtree(p.spool, ignore_errors=True)


def running(p: Pilot, slot: int, job_id: int, for_s: float, task: int = 1) -> None:
    """Slot ``slot`` runs job ``job_id`` of ``task``, started ``for_s`` seconds ago."""
    p.workers[slot].job = {"id": job_id, "task": task, "attempt": 1}
    p.workers[slot].started_at = time.time() - for_s


def test_nothing_is_asked_ahead_behind_a_task_not_measured_here(make):
    p = make(mean=0.02, measured=(1,))          # fill 0.1 s: five jobs a slot, for task 1
    running(p, 0, 10, for_s=0.01, task=2)       # a new task's first job here
    assert p._ending_soon() == [] and p._capacity() == 0 and p._extra(1) == 0
    p._finish({"id": 10, "task": 2, "attempt": 1},
              SimpleNamespace(started_at=0.0, ended_at=0.02, stdout="", stderr="",
                              reads=None, ok=True, result=b"", events=None,
                              peak_rss_mb=None, cpu_s=None, cache=None), p.workers[0])
    running(p, 0, 11, for_s=0.01, task=2)       # its second: task 2 is measured now
    assert [w.job["id"] for w in p._ending_soon()] == [11] and p._capacity() == 5
    assert p._extra(5) > 0


def test_an_idle_pilot_asks_one_job_a_slot(make):
    p = make(slots=2, mean=0.02)                # a queue of five a slot when running
    assert p._capacity() == 2 and p._extra(2) == 0


def test_an_overrun_slot_is_asked_nothing_for_one_on_time_is(make):
    p = make(mean=0.02)                         # fill 0.1 s: five jobs a slot
    running(p, 0, 10, for_s=0.01)
    assert p._capacity() == 5                   # on time: its next and a full queue
    running(p, 0, 10, for_s=1.1)                # past max(0.04, 1.02) s
    assert p._overran() == [p.workers[0]]
    assert p._ending_soon() == [] and p._capacity() == 0


def test_a_long_mean_overruns_at_twice_the_mean(make):
    p = make(mean=3.0)                          # overran after max(6.0, 4.0) s
    running(p, 0, 10, for_s=5.0)
    assert p._overran() == [] and p._capacity() == 1   # ending soon: asked just in time
    running(p, 0, 10, for_s=6.1)
    assert p._capacity() == 0


def test_with_several_slots_only_the_overrun_one_stops_asking(make):
    p = make(slots=2, mean=3.0)
    running(p, 0, 10, for_s=9.0)                # overran
    running(p, 1, 20, for_s=2.99)               # due: its next job is asked for
    assert [w.job["id"] for w in p._ending_soon()] == [20]
    assert p._capacity() == 1


def test_idle_time_counts_from_the_last_jobs_news_not_the_last_loop(make):
    p = make()
    p.opts.idle_exit = 2.0
    p.idle_since = time.monotonic() - 10        # the loop was held up for 10 s
    p._set_pending({"id": 10, "task": 1, "attempt": 1}, "finished", result="")
    assert not p._should_exit()
    p.idle_since = time.monotonic() - 10        # and with no news since: it leaves
    assert p._should_exit()
