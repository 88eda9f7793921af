"""Dimuon mass analysis over the generated dataset: panda-lab against its peers, one run.

(a) one process, ``uproot.iterate``; (b) Dask ``distributed`` LocalCluster mapping chunks
and summing histograms, with its defaults and with ``MALLOC_TRIM_THRESHOLD_`` unset in
the workers; (c) coffea's ``processor.Runner`` with a futures executor (a reused pool, and
coffea's default of a new pool per run); (d) the same chunk tasks on a plain
``ProcessPoolExecutor(2)``: the hardware reference, running panda-lab's own job function
(and, as ``d_plain``, the peers' plain uproot function); (e) the raw read limit (uproot
reading the branches, no computation); (f) panda-lab, ``lab.analyze`` over its local sites.
Every configuration fills the same histogram; each must equal (a) bin for bin.

    python benchmarks/bench_analysis.py            # 4 x 2M events, 3 repeats
    python benchmarks/bench_analysis.py --quick    # 2 x 500k events, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import uproot

from panda_lab.analysis.dimuon import MASS_AXIS, process
from panda_lab.analysis.sample import make_sample

BRANCHES = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]
WORKERS = 2


def mass_hist(a: ak.Array) -> hist.Hist:
    """The dimuon analysis on uproot's flat arrays (the peers' version of ``process``)."""
    two = a[a.nMuon == 2]
    opposite = ak.sum(two.Muon_charge, axis=1) == 0
    two = two[opposite]
    pt, eta, phi, m = two.Muon_pt, two.Muon_eta, two.Muon_phi, two.Muon_mass
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    m2 = (ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2 - ak.sum(py, axis=1) ** 2
          - ak.sum(pz, axis=1) ** 2)
    return hist.Hist(MASS_AXIS, storage=hist.storage.Double()).fill(
        np.sqrt(np.maximum(ak.to_numpy(m2), 0.0)))


def chunk_task(path: str, start: int, stop: int) -> hist.Hist:
    with uproot.open(path) as f:
        return mass_hist(f["Events"].arrays(BRANCHES, entry_start=start, entry_stop=stop))


def job_task(path: str, start: int, stop: int) -> hist.Hist:
    """Exactly what a panda-lab analysis job runs on a chunk: the same reading code and the
    same processor, so (d) minus (f) is the control plane alone."""
    from panda_lab.analysis.runner import run_chunks

    chunk = {"file_index": 0, "path": path, "tree": "Events", "start": start, "stop": stop}
    return run_chunks(process, BRANCHES, [chunk]).result["mass"]


def read_only(path: str, start: int, stop: int) -> int:
    with uproot.open(path) as f:
        arrays = f["Events"].arrays(BRANCHES, entry_start=start, entry_stop=stop)
        return len(arrays)


def chunks(paths: list[Path], events: int, step: int) -> list[tuple[str, int, int]]:
    return [(str(p), s, min(s + step, events)) for p in paths for s in range(0, events, step)]


# ---- the configurations -----------------------------------------------------------------

def run_one_process(paths, events, step):
    h = None
    for arrays in uproot.iterate([f"{p}:Events" for p in paths], BRANCHES, step_size=step):
        part = mass_hist(arrays)
        h = part if h is None else h + part
    return h


def run_pool(pool, task, work):
    futs = [pool.submit(task, *w) for w in work]
    out = None
    for f in futs:
        r = f.result()
        out = r if out is None else out + r
    return out


def run_dask(client, work):
    from distributed import wait

    futs = client.map(chunk_task, *zip(*work, strict=True), pure=False)
    wait(futs)
    return client.submit(sum_hists, futs).result()


def sum_hists(hs):
    out = hs[0]
    for h in hs[1:]:
        out = out + h
    return out


def make_coffea_processor():
    from coffea import processor

    class Dimuon(processor.ProcessorABC):
        def process(self, events):
            # NanoAODSchema turns the counter nMuon into the Muon collection's length.
            mu = events.Muon[ak.num(events.Muon) == 2]
            mu = mu[ak.sum(mu.charge, axis=1) == 0]
            px = mu.pt * np.cos(mu.phi)
            py = mu.pt * np.sin(mu.phi)
            pz = mu.pt * np.sinh(mu.eta)
            e = np.sqrt(px**2 + py**2 + pz**2 + mu.mass**2)
            m2 = (ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2
                  - ak.sum(py, axis=1) ** 2 - ak.sum(pz, axis=1) ** 2)
            h = hist.Hist(MASS_AXIS, storage=hist.storage.Double()).fill(
                np.sqrt(np.maximum(ak.to_numpy(m2), 0.0)))
            return {"mass": h}

        def postprocess(self, accumulator):
            return accumulator

    return Dimuon()


def run_coffea(paths, step, pool=None):
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    executor = (processor.FuturesExecutor(pool=pool, status=False) if pool is not None
                else processor.FuturesExecutor(workers=WORKERS, status=False))
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=step,
                              savemetrics=False)
    out = runner({"dimuon": {"files": {str(p): "Events" for p in paths}}},
                 processor_instance=make_coffea_processor(), treename="Events")
    return out["mass"]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, help="reuse a generated dataset here")
    ap.add_argument("--skip", default="", help="comma-separated configurations to skip")
    args = ap.parse_args()
    if args.quick:
        args.files, args.events, args.chunk, args.repeats = 2, 500_000, 125_000, 1
    skip = set(filter(None, args.skip.split(",")))
    data = args.data or Path(tempfile.mkdtemp(prefix="panda-bench-data-"))
    paths = sorted(data.glob("dimuon_*.root"))
    if len(paths) != args.files:
        print(f"writing {args.files} x {args.events:,} events to {data} ...", flush=True)
        paths = make_sample(data, files=args.files, events=args.events,
                            basket_events=args.chunk)
    total = args.files * args.events
    size = sum(p.stat().st_size for p in paths)
    work = chunks(paths, args.events, args.chunk)
    print(f"{total:,} events, {size / 1e6:.0f} MB, {len(work)} chunks of {args.chunk:,}; "
          f"{args.repeats} repeat(s), medians", flush=True)
    res: dict[str, dict] = {}

    def record(key, label, seconds, h, ref=None, **extra):
        same = ref is None or bool((h.values() == ref.values()).all())
        res[key] = {"label": label, "seconds": seconds, "mevps": total / seconds / 1e6,
                    "identical": same, **extra}
        print(f"  {key:<14} {label:<52} {total / seconds / 1e6:6.2f} M ev/s"
              f"{'' if same else '  RESULT DIFFERS'}", flush=True)

    t_a, ref = timed(lambda: run_one_process(paths, args.events, args.chunk), args.repeats)
    record("a", "one process, uproot.iterate", t_a, ref)

    with ProcessPoolExecutor(WORKERS) as pool:
        run_pool(pool, read_only, work[:WORKERS])  # warm the workers
        t, _ = timed(lambda: run_pool(pool, read_only, work), args.repeats)
        res["e"] = {"label": "raw read limit (uproot, 2 processes)", "seconds": t,
                    "mevps": total / t / 1e6, "identical": True}
        print(f"  {'e':<14} {res['e']['label']:<52} {total / t / 1e6:6.2f} M ev/s", flush=True)
        run_pool(pool, job_task, work[:WORKERS])
        t, h = timed(lambda: run_pool(pool, job_task, work), args.repeats)
        record("d", "ProcessPoolExecutor(2), panda-lab's job function", t, h, ref)
        run_pool(pool, chunk_task, work[:WORKERS])
        t, h = timed(lambda: run_pool(pool, chunk_task, work), args.repeats)
        record("d_plain", "ProcessPoolExecutor(2), plain uproot chunk tasks", t, h, ref)
        if "c" not in skip:
            t, h = timed(lambda: run_coffea(paths, args.chunk, pool), args.repeats)
            record("c", "coffea Runner + FuturesExecutor, reused pool", t, h, ref)
    if "c" not in skip:
        t, h = timed(lambda: run_coffea(paths, args.chunk), args.repeats)
        record("c_default", "coffea Runner + FuturesExecutor, default (new pool)", t, h, ref)

    if "b" not in skip:
        import dask
        from distributed import Client, LocalCluster

        for key in ("b_default", "b_no_trim"):
            saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
            environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
            if key == "b_no_trim":  # the nanny sets it before a worker starts: drop it there
                environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                    LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster, Client(cluster) as c:
                seen = c.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
                run_dask(c, work[:WORKERS])
                t, h = timed(lambda c=c: run_dask(c, work), args.repeats)
            label = ("Dask LocalCluster(2), defaults" if key == "b_default"
                     else "Dask LocalCluster(2), MALLOC_TRIM_THRESHOLD_ unset")
            record(key, label, t, h, ref, worker_malloc_trim=sorted(set(map(str, seen.values()))))
            if saved is None:
                os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # distributed leaks it to us
            else:
                os.environ["MALLOC_TRIM_THRESHOLD_"] = saved

    if "f" not in skip:
        run_panda(paths, args, ref, record, res, total)

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    d = res["d"]["mevps"]
    for v in res.values():
        v["vs_d"] = v["mevps"] / d
    (out / "analysis.json").write_text(json.dumps(
        {"events": total, "chunk": args.chunk, "repeats": args.repeats, "results": res},
        indent=2))
    print("\nratios to (d), the hardware reference:")
    for k, v in res.items():
        print(f"  {k:<14} {v['vs_d']:5.2f}")
    ok = all(v["identical"] for v in res.values())
    return 0 if ok else 1


def run_panda(paths, args, ref, record, res, total) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from harness import ServerProcess

    home = Path(tempfile.mkdtemp(prefix="panda-bench-home-"))
    sites = home / "sites.toml"
    sites.write_text('[sites.LOCAL]\nkind = "local"\npilots = 2\n')
    for key, extra, label in (
            ("f", [], "panda-lab, 3 local sites x 1 pilot"),
            ("f_2pilots", ["--sites", str(sites)], "panda-lab, 1 local site x 2 pilots")):
        h_ = home / key
        h_.mkdir()
        server = ServerProcess(h_, extra=["--heartbeat-timeout", "60", *extra]).start()
        try:
            lab = server.lab()
            ds = lab.datasets.register("bench", [str(p) for p in paths], tree="Events")
            cols = BRANCHES

            def once(lab=lab, ds=ds, cols=cols):
                t0 = time.perf_counter()
                task = lab.analyze(process, ds, events_per_job=args.chunk, columns=cols,
                                   name="bench")
                first = None
                while first is None:
                    if task.partial().events > 0:
                        first = time.perf_counter() - t0
                    else:
                        time.sleep(0.005)
                r = task.result(timeout=600)
                return r, first

            once()  # warm: pilots' workers import uproot/awkward, caches fill
            times, firsts, h = [], [], None
            for _ in range(args.repeats):
                t = time.perf_counter()
                r, first = once()
                times.append(time.perf_counter() - t)
                firsts.append(first)
                h = r["mass"]
            record(key, label, statistics.median(times), h, ref,
                   first_partial_s=statistics.median(firsts))
            print(f"  {'':<14} time to first partial result: "
                  f"{statistics.median(firsts) * 1000:.0f} ms", flush=True)
            lab.close()
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
