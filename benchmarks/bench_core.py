"""The control plane against Dask ``distributed``, on the same cores, in one run.

- round-trip latency of one no-op job, submit to result in the client (p50, p95):
  Dask ``client.submit(f).result()``; panda-lab ``ex.submit(f).result()`` (futures
  resolved from the event stream) and the plain path (a one-job task, ``wait``,
  ``results``);
- throughput of 10,000 no-op jobs submitted at once, end to end, every job persisted
  in SQLite: Dask ``client.map`` + ``wait`` and a ``client.submit`` loop + ``wait``;
  panda-lab one task of 10,000 jobs (``lab.submit`` + ``wait``) and ``ex.map``;
- memory: the server's RSS at 10k, 50k and 100k finished jobs in the store, and a
  pilot's own RSS (without its payload worker).

    python benchmarks/bench_core.py            # full (about 3 minutes)
    python benchmarks/bench_core.py --quick    # smoke check (under a minute)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import payloads
import psutil
from payloads import noop


def pct(ts: list[float], q: float) -> float:
    ts = sorted(ts)
    return ts[min(len(ts) - 1, int(q * len(ts)))]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-n", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--memory-jobs", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.latency_n, args.jobs, args.memory_jobs, args.repeats = 100, 2_000, 10_000, 1
    res: dict[str, float] = {}

    def show(key: str, value: float, unit: str, label: str) -> None:
        res[key] = value
        print(f"  {label:<58} {value:10.1f} {unit}", flush=True)

    # ---- Dask --------------------------------------------------------------------------
    from distributed import Client, LocalCluster, wait

    print("Dask distributed: LocalCluster(2 worker processes, 1 thread each)", flush=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for i in range(20):
            client.submit(noop, i, pure=False).result()
        ts = []
        for i in range(args.latency_n):
            t = time.perf_counter()
            client.submit(noop, i, pure=False).result()
            ts.append(time.perf_counter() - t)
        show("dask_p50_ms", pct(ts, 0.5) * 1e3, "ms", "Dask submit().result() p50")
        show("dask_p95_ms", pct(ts, 0.95) * 1e3, "ms", "Dask submit().result() p95")

        def dmap():
            futs = client.map(noop, range(args.jobs), pure=False)
            wait(futs)

        def dloop():
            futs = [client.submit(noop, i, pure=False) for i in range(args.jobs)]
            wait(futs)

        for key, fn, label in (("dask_map_jps", dmap, "client.map + wait"),
                               ("dask_loop_jps", dloop, "client.submit loop + wait")):
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            show(key, args.jobs / statistics.median(times), "jobs/s",
                 f"Dask {label}, {args.jobs:,} no-ops")

    # ---- panda-lab ---------------------------------------------------------------------
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from harness import ServerProcess

    cloudpickle.register_pickle_by_value(payloads)  # pilots cannot import benchmarks/
    home = Path(tempfile.mkdtemp(prefix="panda-bench-core-"))
    print(f"panda-lab: server on SQLite, 3 local sites x 1 pilot (home {home})", flush=True)
    # the server's defaults, what a user runs (not the tests' short timeouts)
    server = ServerProcess(home, fast=False).start()
    try:
        lab = server.lab()
        with lab.executor(name="latency") as ex:
            for i in range(20):
                ex.submit(noop, i).result()
            ts = []
            for i in range(args.latency_n):
                t = time.perf_counter()
                ex.submit(noop, i).result()
                ts.append(time.perf_counter() - t)
        show("panda_p50_ms", pct(ts, 0.5) * 1e3, "ms", "panda-lab ex.submit().result() p50")
        show("panda_p95_ms", pct(ts, 0.95) * 1e3, "ms", "panda-lab ex.submit().result() p95")
        ts = []
        for i in range(min(100, args.latency_n)):
            t = time.perf_counter()
            task = lab.submit(noop, [(i,)], name="plain")
            lab.wait(task)
            lab.results(task)
            ts.append(time.perf_counter() - t)
        show("panda_plain_p50_ms", pct(ts, 0.5) * 1e3, "ms",
             "panda-lab one-job task: submit, wait, results p50")

        def ptask():
            task = lab.submit(noop, [(i,) for i in range(args.jobs)], name="throughput")
            info = lab.wait(task)
            assert info["state"] == "done" and info["n_done"] == args.jobs, info

        def pmap():
            with lab.executor(name="map") as ex:
                out = list(ex.map(noop, range(args.jobs)))
            assert out == list(range(args.jobs))

        for key, fn, label in (("panda_task_jps", ptask, "one task of N jobs, submit + wait"),
                               ("panda_map_jps", pmap, "ex.map (one job per call)")):
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            show(key, args.jobs / statistics.median(times), "jobs/s",
                 f"panda-lab {label}, {args.jobs:,} no-ops")

        # ---- memory: finished jobs must not grow the server ------------------------------
        pilots = server.pilot_pids()
        done = sum(t["n_done"] for t in lab.list_tasks(10_000))
        marks = [m for m in (done + 10_000, done + 50_000, done + args.memory_jobs)]
        for mark in sorted(set(marks)):
            while done < mark:
                n = min(20_000, mark - done)
                lab.wait(lab.submit(noop, [()] * n, name="memory"))
                done += n
            show(f"server_rss_mb_{mark}", rss_mb(server.proc.pid), "MB",
                 f"server RSS with {done:,} finished jobs")
        show("pilot_rss_mb", max(rss_mb(p) for p in pilots), "MB",
             "largest pilot RSS (without its worker)")
        lab.close()
    finally:
        server.stop()

    print("\nratios (panda-lab / Dask):")
    ratios = {
        "latency_p50": res["panda_p50_ms"] / res["dask_p50_ms"],
        "throughput_task_vs_map": res["panda_task_jps"] / res["dask_map_jps"],
        "throughput_map_vs_map": res["panda_map_jps"] / res["dask_map_jps"],
    }
    for k, v in ratios.items():
        print(f"  {k:<26} {v:6.2f}  ({'lower' if 'latency' in k else 'higher'} is better)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps({"results": res, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
