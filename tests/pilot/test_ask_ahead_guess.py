"""A pilot asks for no job it would hold behind a job of unknown length.

The kind of fault: a job bound to a pilot that cannot start it, while another pilot could
(PanDA's late binding undone by a guess).  A pilot asks for a busy slot's next job just
in time, by its mean job time, and fills a queue of short jobs ahead (``fill_seconds``).
Members: before it has measured a job it asks nothing ahead (its first job was guessed
at 1 s, and a short job asked for behind a 20-s first job waited 20 s in
tests/server/test_core_siblings_live.py); a slot whose job ran past twice the mean and a
second past it is asked nothing for, neither just in time nor to fill a queue (a 60-s job
after 0.02-s ones had four jobs asked behind it), while a slot whose job is on time is;
with several slots, only the overrun slot stops asking.  And, found on the way: a pilot
with ``idle_exit`` counts idle time from its last job's news, not from the last loop
that saw a job (a loop held up by a server outage left with 7 jobs waiting for it,
tests/pilot/test_pilot.py's server outage).  No server: the stand-in for urllib3's pool
of tests/pilot/test_report_timing.py.
"""

from __future__ import annotations

import shutil
import time

import pytest
from test_report_timing import Recorder

from panda_lab.pilot.pilot import Pilot, PilotOptions


@pytest.fixture
def make():
    made = []

    def make(slots: int = 1, mean: float = 0.2, done: int = 3) -> Pilot:
        p = Pilot(PilotOptions("http://lab.invalid", "LOCAL", "t", slots=slots,
                               flush_interval=0.0))
        p.api._http = Recorder()
        p.mean_duration, p.done = mean, done    # measured on its jobs so far
        p.round_trip = 0.005
        made.append(p)
        return p

    yield make
    for p in made:
        shutil.rmtree(p.spool, ignore_errors=True)


def running(p: Pilot, slot: int, job_id: int, for_s: float) -> None:
    """Slot ``slot`` runs job ``job_id``, started ``for_s`` seconds ago."""
    p.workers[slot].job = {"id": job_id, "task": 1, "attempt": 1}
    p.workers[slot].started_at = time.time() - for_s


def test_a_pilot_that_measured_nothing_asks_nothing_ahead(make):
    p = make(mean=1.0, done=0)
    running(p, 0, 10, for_s=30.0)
    assert p._ending_soon() == [] and p._capacity() == 0
    p.done = 1                                  # its first job measured
    running(p, 0, 11, for_s=1.0)                # due now, on time
    assert [w.job["id"] for w in p._ending_soon()] == [11] and p._capacity() == 1


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
