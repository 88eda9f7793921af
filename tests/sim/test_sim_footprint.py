"""What the simulator holds and changes while it runs, beyond its results.

Kind tested: a run that costs more than it needs or leaves the process changed.
Members: jobs made long before they are brokered (a queue-limited task makes each job
when it is released, never more at once than the limit lets through), the garbage
collector left off after a run (or turned on where the caller had it off), also when
the run raises.
"""

from __future__ import annotations

import gc

import pytest

from panda_lab.sim import parse
from panda_lab.sim.engine import Simulation

LIMIT = 40
SCENARIO = {
    "seed": 3,
    "sites": {"A": {"slots": 8, "speed": 20000, "endpoint": "A-SE"},
              "B": {"slots": 4, "speed": 10000, "endpoint": "B-SE", "failure_rate": 0.1}},
    "datasets": {"d": {"files": 60, "file_mb": 100, "events_per_file": 100_000,
                       "replicas": {"A-SE": 1.0, "B-SE": 0.5}}},
    "tasks": [{"dataset": "d", "events_per_job": 20_000, "queue_limit": LIMIT}],
}


class Counting(Simulation):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.made: list[int] = []

    def _jobs(self, task, chunks_list):
        jobs = super()._jobs(task, chunks_list)
        self.made.append(len(jobs))
        return jobs


def test_a_queue_limited_task_makes_each_job_when_it_is_released():
    sim = Counting(parse(SCENARIO), "network")
    result = sim.run()
    assert result.jobs == 300 == sum(sim.made)
    assert max(sim.made) <= LIMIT and len(sim.made) > 300 // LIMIT


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_as_the_caller_left_it(enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        Simulation(parse(SCENARIO), "network").run()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_the_collector_is_back_on_after_a_run_that_raises():
    sim = Simulation(parse(SCENARIO), "network")

    def boom(_spec):
        assert not gc.isenabled(), "off while the loop runs"
        raise RuntimeError("boom")

    sim._submit = boom
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="boom"):
        sim.run()
    assert gc.isenabled()
