"""The simulator: the model's splitter and brokerage in virtual time, with links learned
by the model's own smoothing.

Kinds tested:
* a policy that loses where its scenario is made for it.  Members: data at one site
  (network spreads by capacity: beats round-robin and locality), a slow undeclared link to
  the biggest site (network learns it: beats round-robin, locality and passive), a site
  that fails a fifth of its attempts (its failure rate is learned; network finishes
  within one job length of round-robin: the tail decides there, see the test);
* a run that is not reproducible or loses work.  Members: same seed, same result; every
  job ends; scouting sizes the jobs from what the scouts measured.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from panda_lab.sim import load, parse, simulate
from panda_lab.sim.engine import Simulation

SHIPPED = Path(__file__).resolve().parents[2] / "panda_lab" / "sim" / "scenarios"


def run(name: str, *policies: str) -> dict:
    return {r.policy: r for r in simulate(load(SHIPPED / f"{name}.toml"), list(policies))}


def test_data_at_one_site_network_spreads_by_capacity():
    r = run("data-at-one-site", "network", "round-robin", "locality", "passive")
    net = r["network"].makespan_s
    print({p: x.makespan_s for p, x in r.items()})
    assert net < r["round-robin"].makespan_s and net < r["locality"].makespan_s
    assert r["passive"].makespan_s == r["locality"].makespan_s  # computed, not applied
    assert r["network"].jobs_by_site["HOME"] < r["locality"].jobs_by_site["HOME"]


def test_a_slow_link_to_the_biggest_site_is_learned_and_avoided():
    r = run("slow-link-to-big-site", "network", "round-robin", "locality", "passive")
    net = r["network"]
    print({p: x.makespan_s for p, x in r.items()})
    for other in ("round-robin", "locality", "passive"):
        assert net.makespan_s < r[other].makespan_s / 2, other
    assert net.remote_bytes < r["round-robin"].remote_bytes
    # learned from the reads, contention included: well under the prior of 10 MB/s
    learned = {k: v for k, v in net.learned_links.items() if k.endswith("-> BIG")}
    assert learned and all(v < 10 for v in learned.values())
    assert 0 < net.jobs_by_site["BIG"] < r["round-robin"].jobs_by_site["BIG"]


def test_a_failing_site_is_measured_and_weighed_down_but_the_tail_decides():
    """Every policy keeps every slot busy, so FLAKY wastes a fifth of its slots under all
    of them; what differs is whether one of the last jobs fails there, which adds a job
    length (51 s) to the makespan by the luck of the draw.  So: network within one job
    length of round-robin, FLAKY's failure rate learned (its weight falls by 1 - f)."""
    sc = load(SHIPPED / "failing-site.toml")
    sim = Simulation(sc, "network")
    net = sim.run()
    rr = Simulation(sc, "round-robin").run()
    assert net.makespan_s <= rr.makespan_s + 52
    assert net.attempts > net.jobs == 600 and net.failed == 0
    flaky = sim.load["FLAKY"]
    assert 0.08 < flaky.failure_rate < 0.4
    assert sim.load["GOOD-1"].failure_rate == 0.0


def test_same_seed_same_result_and_every_job_ends():
    sc = load(SHIPPED / "failing-site.toml")
    def outcome(seed: int) -> dict:  # all but the brokerage's CPU time
        r = Simulation(sc, "network", seed).run().as_dict()
        r.pop("broker_us_per_job")
        return r

    a, b, c = outcome(9), outcome(9), outcome(10)
    assert a == b
    assert c["jobs"] == a["jobs"] == 600 and c != a


SCOUTED = """
[sites.FAST]
slots = 4
speed = 1000
endpoint = "F-SE"
[sites.SLOW]
slots = 4
speed = 250
endpoint = "S-SE"
[datasets.d]
files = 6
file_mb = 1
events_per_file = 40000
clusters_per_file = 40
replicas = { "F-SE" = 1.0, "S-SE" = 1.0 }
[[tasks]]
dataset = "d"
split = "auto"
target_job_seconds = 20
"""


def test_auto_split_runs_scouts_first_and_sizes_jobs_from_them():
    sc = parse(tomllib.loads(SCOUTED))
    r = Simulation(sc, "network").run()
    # scouts of 20,000 events on the first 3 files, then jobs sized for ~20 s on the
    # slowest site's measured rate (about 250 events/s): some 5,000 events each
    assert r.failed == 0
    assert r.jobs == pytest.approx(3 + (6 * 40_000 - 3 * 20_000) / 5000, rel=0.35)


def test_a_site_s_job_start_cost_is_part_of_every_job():
    """``job_start_s``: the seconds a job costs before it reads or computes, per site
    (default the brokerage's JOB_START_S); one slot runs the jobs one after another."""
    def makespan(start: float | None) -> float:
        site = {"slots": 1, "speed": 1000, "endpoint": "E"}
        if start is not None:
            site["job_start_s"] = start
        sc = parse({"sites": {"A": site},
                    "datasets": {"d": {"files": 4, "file_mb": 1, "events_per_file": 1000,
                                       "replicas": {"E": 1.0}}},
                    "network": {"local_latency_ms": 0.0, "local_mbps": 1e6},
                    "tasks": [{"dataset": "d", "split": "files"}]})
        return Simulation(sc, "network").run().makespan_s
    assert makespan(None) == pytest.approx(4 * (1 + 1.0), abs=0.1)
    assert makespan(0.25) == pytest.approx(4 * (1 + 0.25), abs=0.1)
    with pytest.raises(Exception, match="job_start_s"):
        parse({"sites": {"A": {"slots": 1, "speed": 1, "job_start_s": "x"}},
               "datasets": {"d": {"files": 1, "file_mb": 1, "events_per_file": 1,
                                  "replicas": {"A": 1.0}}},
               "tasks": [{"dataset": "d"}]})
