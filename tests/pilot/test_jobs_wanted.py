"""How far ahead a pilot acquires (``panda_lab.pilot.pilot.jobs_wanted``): late binding
with the round trip hidden.

The kind of bug: a pilot that holds back work an idle pilot could run (too deep a queue
at a task's end), or one that leaves a slot idle for a round trip per job (asks only once
the slot is free).  Each member is checked: long jobs, short jobs, a slot about to free,
the caps."""

from __future__ import annotations

from panda_lab.pilot.pilot import jobs_wanted


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
