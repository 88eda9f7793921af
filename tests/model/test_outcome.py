"""A task's outcome (label and tone) for every task state, with and without lost jobs.

Kind tested: a task that lost data shown as a success.  Members: every final state with
nothing lost, part lost, all lost; every active state with and without jobs lost so far;
the wall time and the mean rate (only for a final task); and the words themselves, for
a one-job task (every ``%%panda`` cell is one) and a large one ("all 1 jobs", "40000").
"""

from __future__ import annotations

import pytest

from panda_lab.model import TASK_FINAL, TaskState
from panda_lab.model.outcome import task_outcome
from panda_lab.model.states import TONES, vocabulary

T = TaskState
ACTIVE = [s for s in TaskState if s not in TASK_FINAL]


@pytest.mark.parametrize("state", sorted(TASK_FINAL))
def test_a_final_task_with_nothing_lost_is_a_success_unless_it_failed(state):
    o = task_outcome(state, 40, 40, {"finished": 40}, events_done=4000, events_lost=0,
                     created_at=100.0, ended_at=110.0, message="results differ\nin key x")
    tone = {T.FAILED: "danger", T.ABORTED: "neutral"}.get(state, "success")
    assert (o.tone, o.jobs_lost, o.events_lost) == (tone, 0, 0)
    if state == T.FAILED:  # results that could not be merged: the message says why
        assert o.label == "failed: results differ"
        assert task_outcome(state, 2, 2).label == "failed: after all its jobs finished"
    else:
        assert o.label == f"{state}: all 40 jobs finished"
    assert o.wall_s == 10.0 and o.rate == 400.0


@pytest.mark.parametrize("state", sorted(TASK_FINAL))
def test_a_final_task_that_lost_part_is_a_warning_and_says_what(state):
    o = task_outcome(state, 40, 30, {"finished": 30, "failed": 10}, events_done=3_000_000,
                     events_lost=1_234_000, created_at=0.0, ended_at=100.0)
    assert o.tone == "warning" and o.jobs_lost == 10 and o.events_lost == 1_234_000
    assert o.label == f"{state}: 10 of 40 jobs failed (1,234,000 events not processed)"
    assert o.rate == 30_000.0  # processed events only


@pytest.mark.parametrize("state", sorted(TASK_FINAL))
def test_a_final_task_that_lost_everything_is_danger(state):
    o = task_outcome(state, 4, 0, {"failed": 3, "closed": 1}, created_at=0, ended_at=5)
    assert o.tone == "danger" and o.jobs_lost == 4
    assert o.label == f"{state}: all 4 jobs not processed"
    assert o.events_lost is None and o.rate is None  # no dataset: no events


def test_lost_jobs_are_named_by_how_they_ended():
    assert "10 of 40 jobs cancelled" in task_outcome("aborted", 40, 30, {"cancelled": 10}).label
    assert "2 of 3 jobs never ran" in task_outcome("aborted", 3, 1, {"closed": 2}).label
    # a job counted as lost although its newest attempt is not final (a killed task)
    assert "not processed" in task_outcome("aborted", 3, 1, {"running": 2}).label


@pytest.mark.parametrize("state", ACTIVE)
def test_an_active_task_is_active_and_counts_jobs_lost_so_far(state):
    o = task_outcome(state, 40, 12, {"finished": 12, "running": 25, "failed": 3},
                     events_done=1200, events_lost=300, created_at=0.0, now=30.0)
    assert o.tone == ("neutral" if state == T.PAUSED else "active")
    assert o.jobs_lost == 3 and o.events_lost == 300
    assert o.label == f"{state}: 12 of 40 jobs done, 3 failed (300 events not processed)"
    assert o.wall_s == 30.0 and o.rate is None  # no rate while running


@pytest.mark.parametrize("state", ACTIVE)
def test_an_active_task_without_losses_says_only_progress(state):
    o = task_outcome(state, 40, 12, {"finished": 12, "running": 28}, events_done=10,
                     events_lost=0)
    assert o.label == f"{state}: 12 of 40 jobs done" and o.jobs_lost == 0
    assert o.wall_s is None and o.rate is None


def test_counts_read_as_english_for_one_job_and_for_many():
    assert task_outcome(T.DONE, 1, 1).label == "done: its job finished"
    assert task_outcome(T.FAILED, 1, 0, {"failed": 1}).label == "failed: its job failed"
    assert task_outcome(T.RUNNING, 1, 0).label == "running: 0 of 1 job done"
    assert task_outcome(T.DONE, 40_000, 40_000).label == "done: all 40,000 jobs finished"
    assert task_outcome(T.FINISHED, 40_000, 39_000, {"failed": 1_000}).label == \
        "finished: 1,000 of 40,000 jobs failed"


def test_a_final_task_without_jobs_is_neutral():
    o = task_outcome("done", 0, 0)
    assert (o.tone, o.label, o.jobs_lost, o.events_lost) == ("neutral", "done: no jobs", 0, None)


def test_tones_are_served_and_every_outcome_uses_one():
    assert vocabulary()["tones"] == list(TONES)
    for state in TaskState:
        for done in (0, 5, 10):
            assert task_outcome(state, 10, done, {"failed": 10 - done}).tone in TONES
    with pytest.raises(ValueError):
        task_outcome("exploded", 1, 1)
    assert set(task_outcome("done", 1, 1).as_dict()) == {
        "label", "tone", "jobs_lost", "events_lost", "wall_s", "rate"}
