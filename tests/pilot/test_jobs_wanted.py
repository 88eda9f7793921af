"""How far ahead a pilot acquires (``panda_lab.pilot.pilot.jobs_wanted``): late binding
with the round trip hidden.

The kind of bug: a pilot that holds back work an idle pilot could run (too deep a queue
at a task's end), or one that leaves a slot idle for a round trip per job (asks only once
the slot is free).  Each member is checked: long jobs, short jobs, a slot about to free,
the caps.  And the jobs a pilot asks for to hold ahead (``Pilot._extra``, given by the
server only while its site has jobs to spare, tests/store/test_jobs_ahead.py): none
before its first job is measured, none for jobs of ``AHEAD_S`` or longer, none while
stopping or draining, and never past ``max_batch``, ``max_jobs`` or a walltime that
would not let them run."""

from __future__ import annotations

import shutil
import time

import pytest

from panda_lab.pilot.pilot import AHEAD_S, Pilot, PilotOptions, jobs_wanted


def test_long_jobs_are_not_queued_behind_a_running_one():
    # 1 slot busy with a 0.5 s job, not about to end: nothing held back behind it.
    assert jobs_wanted(1, idle=0, ending_soon=0, queued=0, mean_duration=0.5,
                       fill_seconds=0.1, max_batch=200) == 0
    # Idle: exactly one per free slot.
    assert jobs_wanted(3, idle=3, ending_soon=0, queued=0, mean_duration=60.0,
                       fill_seconds=0.1, max_batch=200) == 3


def test_a_slot_about_to_free_asks_for_its_next_job_while_its_job_runs():
    assert jobs_wanted(1, idle=0, ending_soon=1, queued=0, mean_duration=0.15,
                       fill_seconds=0.1, max_batch=200) == 1
    # Once that job is held, no more.
    assert jobs_wanted(1, idle=0, ending_soon=1, queued=1, mean_duration=0.15,
                       fill_seconds=0.1, max_batch=200) == 0
    # Two slots, one about to free, the other mid-job: one job.
    assert jobs_wanted(2, idle=0, ending_soon=1, queued=0, mean_duration=0.15,
                       fill_seconds=0.1, max_batch=200) == 1


def test_short_jobs_fill_fill_seconds_per_slot_and_no_more_than_max_batch():
    # 10 ms jobs: 10 per slot hold 0.1 s of work; one runs, so 9 more behind it.
    assert jobs_wanted(1, idle=0, ending_soon=0, queued=0, mean_duration=0.01,
                       fill_seconds=0.1, max_batch=200) == 9
    assert jobs_wanted(2, idle=2, ending_soon=0, queued=0, mean_duration=0.01,
                       fill_seconds=0.1, max_batch=200) == 20
    # No-op jobs: capped by max_batch.
    assert jobs_wanted(1, idle=1, ending_soon=0, queued=0, mean_duration=1e-5,
                       fill_seconds=0.1, max_batch=200) == 200
    # Never negative with a deep queue.
    assert jobs_wanted(1, idle=0, ending_soon=0, queued=50, mean_duration=0.01,
                       fill_seconds=0.1, max_batch=200) == 0


@pytest.fixture
def pilot():
    p = Pilot(PilotOptions("http://127.0.0.1:9", "LOCAL", "t"))
    yield p
    shutil.rmtree(p.spool, ignore_errors=True)


def busy(pilot, measured: bool = True) -> None:
    """The pilot runs a job of task 1, a task it has (or has not) measured jobs of."""
    pilot.workers[0].job = {"id": 1, "task": 1, "attempt": 1}
    if measured:
        pilot.measured[1] = None


def test_short_jobs_are_asked_for_with_as_many_to_hold_ahead(pilot):
    busy(pilot, measured=False)
    assert pilot._extra(1) == 0                 # nothing measured yet
    pilot.done, pilot.mean_duration = 3, 0.15
    assert pilot._extra(1) == 0                 # nor of the task it runs
    busy(pilot)
    assert pilot._extra(1) == 1
    assert pilot._extra(3) == 3
    pilot.mean_duration = AHEAD_S               # long enough: strict late binding
    assert pilot._extra(1) == 0


def test_nothing_is_held_ahead_while_stopping_or_draining(pilot):
    busy(pilot)
    pilot.done, pilot.mean_duration = 3, 0.15
    pilot.stopping = True
    assert pilot._extra(1) == 0
    pilot.stopping, pilot.draining = False, True
    assert pilot._extra(1) == 0


def test_the_extras_keep_within_max_batch_max_jobs_and_the_walltime(pilot):
    busy(pilot)
    pilot.done, pilot.mean_duration = 3, 0.15
    pilot.opts.max_batch = 5
    assert pilot._extra(4) == 1
    pilot.opts.max_batch, pilot.opts.max_jobs = 200, 6  # 3 done, 1 running, 1 asked
    assert pilot._extra(1) == 1
    pilot.opts.max_jobs = 5
    assert pilot._extra(1) == 0
    pilot.opts.max_jobs = 0
    pilot.started = time.monotonic()
    pilot.opts.walltime = 3600.0                # plenty of time left
    assert pilot._extra(1) == 1
    pilot.opts.walltime = 1.2                   # less left than 1.5 x 0.15 s x 2 jobs + 1 s
    assert pilot._extra(1) == 0
