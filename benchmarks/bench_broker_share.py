"""Brokerage's share of no-op dispatch in the live server: the same server with and
without brokerage's per-job work, interleaved.

Each round starts two servers one after the other, each on SQLite with the embedded
default's sites (3 local sites x 1 pilot) and the server's default settings: ``net``
as shipped, ``skip`` with brokerage's per-job work skipped (``skip_brokerage/``: a
least-loaded pick that records only the picked site; the links, the site statistics and
their learning untouched).  Each runs one task of ``--jobs`` no-ops ``--reps`` times
after a warm-up, and reports jobs per second (submit to the task done) and the server's
CPU per job (psutil, the server process alone).  The ratio ``net / skip`` of the
medians is what brokerage leaves of dispatch throughput; the issue's target is a fall of
under 5 % (ratio > 0.95), and under 0.1 ms of server CPU per job.

    python benchmarks/bench_broker_share.py               # 3 rounds of 10,000 x 2
    python benchmarks/bench_broker_share.py --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import payloads
import psutil
from payloads import noop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from harness import ServerProcess  # noqa: E402

cloudpickle.register_pickle_by_value(payloads)  # pilots cannot import benchmarks/


def one(variant: str, jobs: int, reps: int) -> dict:
    """One server of ``variant`` (``net`` or ``skip``): ``{"jps": [...], "cpu_us": [...]}``."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PANDA_LAB_BENCH_SKIP_BROKERAGE")}
    if variant == "skip":
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HERE / "skip_brokerage"), str(HERE.parent)] + ([saved["PYTHONPATH"]]
                                                               if saved["PYTHONPATH"] else []))
        os.environ["PANDA_LAB_BENCH_SKIP_BROKERAGE"] = "1"
    home = Path(tempfile.mkdtemp(prefix=f"panda-bench-share-{variant}-"))
    try:
        server = ServerProcess(home, fast=False).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        lab = server.lab()
        proc = psutil.Process(server.proc.pid)
        lab.wait(lab.submit(noop, [(i,) for i in range(200)], name="warm"))
        jps, cpu = [], []
        for _ in range(reps):
            c0 = sum(proc.cpu_times()[:2])
            t = time.perf_counter()
            task = lab.submit(noop, [(i,) for i in range(jobs)], name="throughput")
            info = lab.wait(task)
            assert info["state"] == "done" and info["n_done"] == jobs, info
            jps.append(jobs / (time.perf_counter() - t))
            cpu.append((sum(proc.cpu_times()[:2]) - c0) / jobs * 1e6)
        if variant == "skip":  # the patch was in force: the records say so
            assert lab.jobs(task)[0]["broker_info"]["policy"] == "skipped"
        lab.close()
        return {"jps": jps, "cpu_us": cpu}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    got: dict[str, dict[str, list[float]]] = {v: {"jps": [], "cpu_us": []}
                                              for v in ("net", "skip")}
    rounds = []
    for i in range(args.rounds):
        r = {}
        for v in ("net", "skip"):
            one_run = one(v, args.jobs, args.reps)
            for k in one_run:
                got[v][k] += one_run[k]
            r[v] = statistics.median(one_run["jps"])
        rounds.append(r["net"] / r["skip"])
        if not args.json:
            print(f"round {i + 1}: net {r['net']:,.0f} jobs/s, skip {r['skip']:,.0f} jobs/s, "
                  f"ratio {rounds[-1]:.3f} (load {os.getloadavg()[0]:.1f})", flush=True)
    med = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in got.items()}
    out = {"rounds": rounds, "ratio": med["net"]["jps"] / med["skip"]["jps"],
           "server_cpu_us_per_job": {v: med[v]["cpu_us"] for v in med},
           "brokerage_us_per_job": med["net"]["cpu_us"] - med["skip"]["cpu_us"],
           "jobs_per_s": {v: med[v]["jps"] for v in med}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"medians: net {med['net']['jps']:,.0f} jobs/s, skip {med['skip']['jps']:,.0f}: "
          f"ratio {out['ratio']:.3f}; server CPU per job {med['net']['cpu_us']:.0f} us "
          f"against {med['skip']['cpu_us']:.0f} (brokerage {out['brokerage_us_per_job']:.0f} "
          f"us a job)")


if __name__ == "__main__":
    main()
