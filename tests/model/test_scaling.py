"""The scaling policy, without a cluster: each mode's rule, its limits, and the idle clock.

A fault here starts too many pilots (an allocation wasted per idle batch job), too few (a
queue that never drains), or stops workers under running jobs.
"""

from __future__ import annotations

import pytest

from panda_lab.model.scaling import Decision, Mode, ScalingPolicy, Snapshot


def test_a_fixed_site_keeps_its_pilots_whatever_the_queue():
    policy = ScalingPolicy(Mode.FIXED, max_pilots=3)
    for demand in (None, 0, 1, 100):
        d = policy.decide(Snapshot(demand=demand, current=1))
        assert (d.target, d.start, d.stop) == (3, 2, 0)
    assert policy.decide(Snapshot(current=3)).start == 0


def test_a_dask_site_keeps_one_pilot_per_worker():
    policy = ScalingPolicy(Mode.PER_WORKER, max_pilots=1)
    d = policy.decide(Snapshot(demand=0, current=2, workers=5))
    assert (d.target, d.start, d.stop) == (5, 3, 0)
    # a worker left: its pilot went with it; nothing is stopped by the policy
    d = policy.decide(Snapshot(demand=9, current=5, workers=4))
    assert (d.target, d.start, d.stop) == (4, 0, 0)


@pytest.mark.parametrize(("demand", "slots", "target"), [
    (0, 1, 1),      # min_pilots even with nothing queued
    (1, 1, 1),
    (3, 2, 2),      # ceil(3 / 2)
    (4, 2, 2),
    (7, 1, 4),      # never past max_pilots
    (100, 4, 4),
])
def test_a_batch_site_follows_its_queue_within_its_limits(demand, slots, target):
    policy = ScalingPolicy(Mode.QUEUE, min_pilots=1, max_pilots=4)
    d = policy.decide(Snapshot(demand=demand, current=0, slots=slots))
    assert d.target == target and d.start == target and d.stop == 0


def test_a_batch_site_lets_idle_pilots_leave_by_themselves():
    """Without an idle timeout the policy never stops pilots: they exit when idle."""
    policy = ScalingPolicy(Mode.QUEUE, min_pilots=0, max_pilots=4)
    d = policy.decide(Snapshot(demand=0, current=4))
    assert (d.target, d.start, d.stop) == (0, 0, 0)


def test_an_unknown_queue_means_the_most_pilots():
    d = ScalingPolicy(Mode.QUEUE, min_pilots=1, max_pilots=3).decide(Snapshot(demand=None))
    assert d.target == 3


def test_workers_go_up_at_once_and_down_only_after_the_idle_timeout():
    policy = ScalingPolicy(Mode.QUEUE, min_pilots=1, max_pilots=4, idle_timeout=10)

    def step(demand, current, now, idle_since=None) -> Decision:
        return policy.decide(Snapshot(demand=demand, current=current, now=now,
                                      idle_since=idle_since))

    d = step(3, 1, now=0.0)
    assert (d.target, d.start, d.idle_since) == (3, 2, None)      # up at once
    d = step(1, 4, now=1.0)
    assert (d.target, d.stop) == (4, 0)                           # never down under work
    d = step(0, 4, now=2.0)
    assert (d.target, d.stop, d.idle_since) == (4, 0, 2.0)        # the idle clock starts
    d = step(0, 4, now=11.9, idle_since=2.0)
    assert (d.target, d.idle_since) == (4, 2.0)                   # not idle for long yet
    d = step(0, 4, now=12.0, idle_since=2.0)
    assert (d.target, d.start, d.stop) == (1, 0, 3)               # back to min_pilots
    d = step(2, 1, now=13.0, idle_since=2.0)
    assert (d.target, d.idle_since) == (2, None)                  # busy: the clock resets


def test_an_idle_site_with_no_minimum_keeps_what_it_asked_for_until_the_timeout():
    policy = ScalingPolicy(Mode.QUEUE, min_pilots=0, max_pilots=4, idle_timeout=5)
    assert policy.decide(Snapshot(demand=0, current=-1, now=0.0)).target == 0
    assert policy.decide(Snapshot(demand=0, current=2, now=0.0)).target == 2
    assert policy.decide(Snapshot(demand=0, current=2, now=5.0, idle_since=0.0)).target == 0


def test_a_decision_gives_its_reason():
    d = ScalingPolicy(Mode.QUEUE, 0, 4).decide(Snapshot(demand=3, slots=2))
    assert "3 job(s) need 2" in d.reason


@pytest.mark.parametrize(("low", "high"), [(-1, 2), (3, 2)])
def test_limits_the_wrong_way_round_are_refused(low, high):
    with pytest.raises(ValueError, match="min_pilots"):
        ScalingPolicy(Mode.QUEUE, min_pilots=low, max_pilots=high)
