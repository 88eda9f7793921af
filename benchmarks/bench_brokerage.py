"""Brokerage: what each policy makes of the shipped scenarios, and what brokerage costs
per job.

1. The simulator (``panda_lab.sim``) on the three shipped scenarios (data at one site, a
   slow link to the biggest site, a site failing 20 % of its jobs) and the generated
   100,000-job one over 20 sites: per policy the makespan, the bytes read (all, and from
   another site's endpoint), the jobs per site, the CPU seconds of the run and the
   brokerage's CPU microseconds per placement (without records, as the simulator calls it).
2. :func:`panda_lab.model.brokerage.choose` as the server calls it (records kept, one
   bulk of 10,000 jobs over 5 sites): CPU microseconds per job for jobs without input and
   for jobs reading 2 GB with replicas at two endpoints; best of 3.

CPU time (``time.process_time``), not wall time: on a shared machine the wall clock
counts other people's work.

    python benchmarks/bench_brokerage.py            # everything (about a minute per policy
                                                    # of the 100,000-job scenario)
    python benchmarks/bench_brokerage.py --quick    # the three small scenarios only
    python benchmarks/bench_brokerage.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from panda_lab.model.brokerage import Policy, Request, SiteLoad, choose
from panda_lab.sim import load
from panda_lab.sim.engine import Simulation

SCENARIOS = Path(__file__).resolve().parents[1] / "panda_lab" / "sim" / "scenarios"
SMALL = ["data-at-one-site", "slow-link-to-big-site", "failing-site"]
BIG = "hundred-thousand"


def scenario(name: str, policies: list[str] | None = None) -> list[dict]:
    sc = load(SCENARIOS / f"{name}.toml")
    out = []
    for p in policies or [str(x) for x in sc.policies]:
        t = time.process_time()
        r = Simulation(sc, p).run()
        cpu = time.process_time() - t
        out.append({"scenario": name, "policy": r.policy, "makespan_s": r.makespan_s,
                    "read_gb": round(sum(r.bytes_by_link.values()) / 1e9, 1),
                    "remote_gb": round(r.remote_bytes / 1e9, 1), "jobs": r.jobs,
                    "attempts": r.attempts, "mean_wait_s": r.mean_wait_s,
                    "broker_us_per_job": r.broker_us_per_job, "cpu_s": round(cpu, 1),
                    "jobs_by_site": r.jobs_by_site})
    return out


def per_job(n: int = 10_000) -> dict:
    """CPU microseconds per job of a bulk placement with records, as the server does."""
    def loads() -> list[SiteLoad]:
        return [SiteLoad(f"SITE-{i}", "grid", "online", capacity=50, endpoint=f"SE-{i}")
                for i in range(5)]

    kinds = {
        "no input": [Request() for _ in range(n)],
        "2 GB, 2 replicas": [Request(events=100_000, files=(f"f{i}",),
                                     input_bytes={"SE-0": 2 * 10**9, "SE-1": 2 * 10**9},
                                     near=frozenset({"SE-0", "SE-1"})) for i in range(n)],
    }
    out = {}
    for kind, reqs in kinds.items():
        best = float("inf")
        for _ in range(3):
            ls = loads()
            t = time.process_time()
            choose(reqs, ls, random.Random(1), policy=Policy.NETWORK)
            best = min(best, time.process_time() - t)
        out[kind] = round(best / n * 1e6, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="leave out the 100,000-job scenario")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [r for name in SMALL for r in scenario(name)]
    if not args.quick:
        rows += scenario(BIG, ["network", "locality", "round-robin", "least-loaded"])
    cost = per_job()
    if args.json:
        print(json.dumps({"scenarios": rows, "choose_us_per_job": cost}, indent=2))
        return
    print(f"{'scenario':24} {'policy':13} {'makespan s':>11} {'read GB':>8} {'remote GB':>9} "
          f"{'attempts':>8} {'wait s':>7} {'broker us':>9} {'cpu s':>6}")
    for r in rows:
        print(f"{r['scenario']:24} {r['policy']:13} {r['makespan_s']:11,.0f} {r['read_gb']:8,.1f} "
              f"{r['remote_gb']:9,.1f} {r['attempts']:8} {r['mean_wait_s']:7,.1f} "
              f"{r['broker_us_per_job']:9.1f} {r['cpu_s']:6.1f}")
    print("choose() with records, 5 sites, CPU us per job:",
          ", ".join(f"{k}: {v}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
