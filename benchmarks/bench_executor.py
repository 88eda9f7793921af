"""The executor against Dask ``distributed`` on the same cores, in one run, as ratios.

- ``ex.map`` over 10,000 no-op calls (chunksize 1 and 100) vs ``client.map`` + ``wait``;
- ``dask.compute`` of a 1,000-task delayed graph with ``scheduler=ex``, with
  ``scheduler=lab.get`` (tasks packed into jobs), and on the distributed Client.

    python benchmarks/bench_executor.py            # 3 repeats, medians
    python benchmarks/bench_executor.py --quick    # 2,000 calls, 200 tasks, 1 repeat
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
import dask
import payloads
from payloads import graph, noop


def timed(fn, repeats):
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.calls, args.tasks, args.repeats = 2_000, 200, 1
    n = args.calls
    expected = dask.compute(graph(args.tasks), scheduler="sync")[0]
    res: dict[str, dict] = {}

    def record(key, label, seconds, units, what):
        res[key] = {"label": label, "seconds": seconds, "per_s": units / seconds}
        print(f"  {key:<18} {label:<46} {units / seconds:9.0f} {what}/s", flush=True)

    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(noop, 0).result()

        def dmap():
            futs = client.map(noop, range(n), pure=False)
            wait(futs)
            return client.gather(futs)

        t, out = timed(dmap, args.repeats)
        assert out == list(range(n))
        record("dask_map", f"Dask client.map + wait, {n:,} no-ops", t, n, "calls")
        # A new graph each time (new keys: no result reused), built outside the timing.
        fresh = iter([graph(args.tasks) for _ in range(args.repeats)])
        t, out = timed(lambda: dask.compute(next(fresh), scheduler=client)[0], args.repeats)
        assert out == expected
        record("dask_graph", f"Dask distributed, {args.tasks:,}-task graph", t, args.tasks,
               "tasks")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from harness import ServerProcess

    cloudpickle.register_pickle_by_value(payloads)  # pilots cannot import benchmarks/

    # the server's defaults, what a user runs (not the tests' short timeouts)
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="panda-bench-ex-")), fast=False).start()
    try:
        lab = server.lab()
        with lab.executor(name="warm") as ex:
            list(ex.map(noop, range(100)))
        for chunk in (1, 100):
            def pmap(chunk=chunk):
                with lab.executor(name=f"map-{chunk}") as ex:
                    return list(ex.map(noop, range(n), chunksize=chunk))

            t, out = timed(pmap, args.repeats)
            assert out == list(range(n))
            record(f"panda_map_{chunk}", f"panda-lab ex.map, chunksize={chunk}", t, n, "calls")

        fresh = iter([graph(args.tasks) for _ in range(args.repeats)])

        def pgraph_ex():
            with lab.executor(name="graph-ex") as ex:
                return dask.compute(next(fresh), scheduler=ex)[0]

        t, out = timed(pgraph_ex, args.repeats)
        assert out == expected
        record("panda_graph_ex", "panda-lab scheduler=executor", t, args.tasks, "tasks")
        fresh = iter([graph(args.tasks) for _ in range(args.repeats)])
        t, out = timed(lambda: dask.compute(next(fresh), scheduler=lab.get)[0], args.repeats)
        assert out == expected
        record("panda_graph_get", "panda-lab scheduler=lab.get (packed)", t, args.tasks,
               "tasks")
        lab.close()
    finally:
        server.stop()
    print("\nratios to Dask distributed (higher is better):")
    for key in ("panda_map_1", "panda_map_100"):
        print(f"  {key:<18} {res[key]['per_s'] / res['dask_map']['per_s']:6.2f}")
    for key in ("panda_graph_ex", "panda_graph_get"):
        print(f"  {key:<18} {res[key]['per_s'] / res['dask_graph']['per_s']:6.2f}")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "executor.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
