"""Dimuon mass analysis over the generated dataset: panda-lab against its peers, one run.

(a) one process, ``uproot.iterate``; (b) Dask ``distributed`` LocalCluster mapping chunks
and summing histograms, with its defaults and with ``MALLOC_TRIM_THRESHOLD_`` unset in
the workers; (c) coffea's ``processor.Runner`` with a futures executor (a pool of its own
per repeat, and coffea's default of a new pool per run); (d) the same chunk tasks on a
fresh ``ProcessPoolExecutor(2)``: the hardware reference, running panda-lab's own job
function (as ``d_malloc``, the same with workers started as panda-lab's payload workers
start, ``panda_lab.pilot.worker.prepare_memory``: its allocator settings, and the read
cache's memory faulted in at their start, so that (d_malloc) minus (f) is the control
plane and the cache's upkeep; and, as ``d_plain``, the peers' plain uproot function);
(e) the raw read limit (uproot reading the branches, no computation); (f) panda-lab,
``lab.analyze`` over its local sites.  Every configuration fills the same histogram; each
must equal (a) bin for bin.

Method: the configurations run interleaved, each repeat every one of them once (the
order turned by one each repeat), so that the machine's drift falls on all alike. Every
repeat of every configuration starts new processes (a new pool, cluster or server with
its pilots), warms their imports on a separate small file (in every worker process:
panda-lab's warm run is repeated until each pilot has run a job), then runs twice over
the dataset. The *first run* reads data those processes have never read: it is what a
user waits for the first time a notebook cell runs over a dataset. The *re-run* is the
same analysis again in the same processes: what re-running an edited cell costs, where
whatever a configuration keeps between runs (open files, uproot's array cache,
panda-lab's read cache and its dispatch to the pilot that read a chunk) counts. Ratios
are to (d)'s first run, the fresh pool. The operating system's page cache holds the
files for every configuration alike (they are written just before).

    python benchmarks/bench_analysis.py            # 4 x 2M events, 3 repeats
    python benchmarks/bench_analysis.py --quick    # 2 x 500k events, 1 repeat
    python benchmarks/bench_analysis.py --rounds 5 # (d), (d_malloc), (f), (f_2pilots)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import uproot

from panda_lab.analysis.dimuon import MASS_AXIS, process
from panda_lab.analysis.sample import make_sample
from panda_lab.pilot.worker import prepare_memory

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
    same processor, so (d_malloc) minus (f) is the control plane alone."""
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


def dask_map(client, work):
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


def warm_sample(data: Path, chunk: int) -> list[Path]:
    """A small file of the same structure, not part of the dataset, in 8 chunks of a
    quarter of ``chunk`` (every worker gets some): new processes import uproot, awkward and
    the processor on it, so no first run pays for imports."""
    warm = data / "warm"
    paths = sorted(warm.glob("dimuon_*.root"))
    return paths or make_sample(warm, files=1, events=2 * chunk, seed=7,
                                basket_events=chunk // 4)


def pool_cpu(pool: ProcessPoolExecutor) -> tuple[float, float]:
    """CPU seconds so far of the pool's worker processes: ``(user + system, system)``."""
    import psutil

    times = [psutil.Process(pid).cpu_times() for pid in pool._processes]
    return sum(t.user + t.system for t in times), sum(t.system for t in times)


def fresh_pool_runs(task, work, warm_work, repeats: int, cpu: list | None = None,
                    initializer=None):
    """``[(first_s, rerun_s, hist)]``: a new ``ProcessPoolExecutor(2)`` per repeat; the
    workers' CPU seconds over each first run are appended to ``cpu`` when given.
    ``initializer``: run in each worker at its start (``d_malloc``: what panda-lab's
    payload workers do with their memory at their start, ``prepare_memory``)."""
    out = []
    for _ in range(repeats):
        with ProcessPoolExecutor(WORKERS, initializer=initializer) as pool:
            run_pool(pool, task, warm_work)
            c0, s0 = pool_cpu(pool)
            t = time.perf_counter()
            h = run_pool(pool, task, work)
            first = time.perf_counter() - t
            if cpu is not None:
                c1, s1 = pool_cpu(pool)
                cpu.append((c1 - c0, s1 - s0))
            t = time.perf_counter()
            run_pool(pool, task, work)
            out.append((first, time.perf_counter() - t, h))
    return out


def medians(runs) -> tuple[float, float | None, object]:
    firsts = [r[0] for r in runs]
    reruns = [r[1] for r in runs if r[1] is not None]
    return (statistics.median(firsts), statistics.median(reruns) if reruns else None,
            runs[-1][2])


#: The configurations of the one-run table, in the order of its first repeat.
LABELS = {
    "a": "one process, uproot.iterate",
    "d": "fresh ProcessPoolExecutor(2), panda-lab's job function",
    "d_malloc": "the same, workers' memory as panda-lab's (allocator, reserve)",
    "d_plain": "fresh ProcessPoolExecutor(2), plain uproot function",
    "e": "raw read limit (uproot, 2 processes)",
    "c": "coffea Runner + FuturesExecutor, its own pool",
    "c_default": "coffea Runner + FuturesExecutor, default (new pool)",
    "b_default": "Dask LocalCluster(2), defaults",
    "b_no_trim": "Dask LocalCluster(2), MALLOC_TRIM_THRESHOLD_ unset",
    "f": "panda-lab, the embedded default",
    "f_2pilots": "panda-lab, 1 local site x 2 pilots",
}


def run_once(key: str, args, paths, warm_paths, work, warm_work, ref):
    """One repeat of configuration ``key``: ``(first_s, rerun_s or None, hist, extra)``,
    ``extra`` what the table keeps besides (a dict)."""
    if key == "a":  # uproot.iterate opens the files anew each call: no re-run figure
        t = time.perf_counter()
        h = run_one_process(paths, args.events, args.chunk)
        return time.perf_counter() - t, None, h, {}
    pools = {"d": (job_task, None), "d_malloc": (job_task, prepare_memory),
             "d_plain": (chunk_task, None), "e": (read_only, None)}
    if key in pools:
        task, init = pools[key]
        first, rerun, h = fresh_pool_runs(task, work, warm_work, 1, initializer=init)[0]
        return first, rerun, ref if key == "e" else h, {}  # (e) reads, it fills nothing
    if key == "c":
        with ProcessPoolExecutor(WORKERS) as pool:
            run_coffea(warm_paths, args.chunk, pool)
            t = time.perf_counter()
            h = run_coffea(paths, args.chunk, pool)
            first = time.perf_counter() - t
            t = time.perf_counter()
            run_coffea(paths, args.chunk, pool)
            return first, time.perf_counter() - t, h, {}
    if key == "c_default":  # a new pool per run: every run is a first run
        t = time.perf_counter()
        h = run_coffea(paths, args.chunk)
        return time.perf_counter() - t, None, h, {}
    if key in ("b_default", "b_no_trim"):
        (_, first, rerun, h), extra = run_dask(key, work, warm_work, 1)
        return first, rerun, h, extra
    got: dict = {}

    def keep(key, label, first, rerun, h, **extra):
        got.update(first=first, rerun=rerun, h=h, extra=extra)

    run_panda(key, paths, warm_paths, argparse.Namespace(**{**vars(args), "repeats": 1}),
              keep)
    return got["first"], got["rerun"], got["h"], got["extra"]


def merged(extras: list[dict]) -> dict:
    """The repeats' extra figures as the table keeps them: the time to the first partial
    result a median, the largest worker's memory the largest, the rest as lists."""
    out: dict = {}
    for k in {k for e in extras for k in e}:
        values = [e[k] for e in extras if k in e]
        if k == "first_partial_s":
            out[k] = statistics.median(values)
        elif k == "worker_rss_mb":
            out[k] = max(values)
        elif k == "first_cpu":
            out[k] = [c for v in values for c in v]
        else:
            out[k] = values[-1]
    return out


def interleaved(args, paths, warm_paths, work, warm_work, total: int, ref) -> int:
    """``--rounds N``: N rounds of one fresh pool (d), one whose workers' memory is as
    panda-lab's (d_malloc), one embedded default (f) and one 1 site x 2 pilots (f_2pilots)
    run, in that order; each round's ratios to its own (d) and (d_malloc), and their
    medians.  Returns 1 if any result differs from (a)'s."""
    one = argparse.Namespace(**{**vars(args), "repeats": 1})
    ratios: dict[str, list[tuple[float, float]]] = {"f": [], "f_2pilots": []}
    #: each round's (d_malloc) first run over its (d)'s, and (f)'s over (d_malloc)'s
    malloc: dict[str, list[float]] = {"d_malloc": [], "f": [], "f_2pilots": []}
    same = True
    for i in range(args.rounds):
        cpu: list[tuple[float, float]] = []
        first_d, _, h = fresh_pool_runs(job_task, work, warm_work, 1, cpu)[0]
        same &= bool((h.values() == ref.values()).all())
        first_dm, _, h = fresh_pool_runs(job_task, work, warm_work, 1, cpu,
                                         initializer=prepare_memory)[0]
        same &= bool((h.values() == ref.values()).all())
        malloc["d_malloc"].append(first_d / first_dm)
        line = [f"round {i + 1}: d {total / first_d / 1e6:.2f} M ev/s, workers' CPU "
                f"{cpu[0][0]:.2f} s, of it system {cpu[0][1]:.2f} s; d_malloc "
                f"{total / first_dm / 1e6:.2f} M ev/s, workers' CPU {cpu[1][0]:.2f} s, of "
                f"it system {cpu[1][1]:.2f} s"]
        for key in ratios:
            got = {}

            def keep(key, label, first, rerun, h, got=got, **extra):
                got.update(first=first, rerun=rerun, h=h, **extra)

            run_panda(key, paths, warm_paths, one, keep, quiet=True)
            same &= bool((got["h"].values() == ref.values()).all())
            ratios[key].append((first_d / got["first"], first_d / got["rerun"]))
            malloc[key].append(first_dm / got["first"])
            c = got["first_cpu"][0]
            line.append(f"{key} first/d {ratios[key][-1][0]:.2f} "
                        f"re-run/d {ratios[key][-1][1]:.2f} (CPU: server "
                        f"{c['server']:.2f}, pilots {c['pilots']:.2f}, workers "
                        f"{c['workers']:.2f} s, of it system {c['workers_sys']:.2f} s)")
        print("  " + "; ".join(line), flush=True)
    print("\nmedians over the rounds of each round's ratio to its own (d):  first   re-run")
    for key, rs in ratios.items():
        print(f"  {key:<10} {statistics.median(r[0] for r in rs):47.2f}"
              f"{statistics.median(r[1] for r in rs):8.2f}")
    print("\nthe allocator's share, medians: (d_malloc) first / (d) first "
          f"{statistics.median(malloc['d_malloc']):.2f}; first / (d_malloc) first: "
          + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in malloc.items()
                      if k != "d_malloc"))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "analysis_rounds.json").write_text(json.dumps(
        {"events": total, "chunk": args.chunk, "rounds": args.rounds,
         "load": os.getloadavg(), "ratios": ratios, "vs_d_malloc": malloc}, indent=2))
    return 0 if same else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--chunk", type=int, default=250_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, help="reuse a generated dataset here")
    ap.add_argument("--skip", default="", help="comma-separated configurations to skip")
    ap.add_argument("--only", default="", help="comma-separated configurations to run")
    ap.add_argument("--rounds", type=int, default=0,
                    help="interleaved rounds of (d), (f) and (f_2pilots), one run of each "
                         "per round, ratios per round (the machine's speed drifts between "
                         "blocks of repeats; within a round the three share it)")
    args = ap.parse_args()
    # coffea's NanoAODSchema warns of every cross-reference this flat sample lacks: here,
    # and in the processes coffea's own pools start (they read PYTHONWARNINGS).
    warnings.filterwarnings("ignore", message="Missing cross-reference")
    os.environ["PYTHONWARNINGS"] = "ignore:Missing cross-reference:RuntimeWarning"
    if args.quick:
        args.files, args.events, args.chunk, args.repeats = 2, 500_000, 125_000, 1
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))

    def wanted(key: str) -> bool:
        return key not in skip and (not only or key in only or key == "d")

    data = args.data or Path(tempfile.mkdtemp(prefix="panda-bench-data-"))
    paths = sorted(data.glob("dimuon_*.root"))
    if len(paths) != args.files:
        print(f"writing {args.files} x {args.events:,} events to {data} ...", flush=True)
        paths = make_sample(data, files=args.files, events=args.events,
                            basket_events=args.chunk)
    warm_paths = warm_sample(data, args.chunk)
    total = args.files * args.events
    size = sum(p.stat().st_size for p in paths)
    work = chunks(paths, args.events, args.chunk)
    warm_work = chunks(warm_paths, 2 * args.chunk, args.chunk // 4)
    print(f"{total:,} events, {size / 1e6:.0f} MB, {len(work)} chunks of {args.chunk:,}; "
          f"{args.repeats} repeat(s), medians; load {os.getloadavg()[0]:.1f}", flush=True)
    res: dict[str, dict] = {}
    ref = run_one_process(paths, args.events, args.chunk)
    if args.rounds:
        return interleaved(args, paths, warm_paths, work, warm_work, total, ref)

    def record(key, label, first, rerun, h, **extra):
        same = bool((h.values() == ref.values()).all())
        res[key] = {"label": label, "first_s": first, "rerun_s": rerun,
                    "first_mevps": total / first / 1e6,
                    "rerun_mevps": None if rerun is None else total / rerun / 1e6,
                    "identical": same, **extra}
        again = "" if rerun is None else f"   re-run {total / rerun / 1e6:6.2f}"
        print(f"  {key:<10} {label:<50} first {total / first / 1e6:6.2f}{again} M ev/s"
              f"{'' if same else '  RESULT DIFFERS'}", flush=True)

    # Interleaved by repeat: each repeat runs every configuration once, in an order turned
    # by one each repeat, so the machine's drift (its speed moves by 10-20 % over minutes)
    # falls on every configuration alike; blocks of repeats minutes apart favoured
    # whichever ran on a fast minute.
    keys = [k for k in LABELS if wanted(k)]
    runs: dict[str, list] = {k: [] for k in keys}
    extras: dict[str, list[dict]] = {k: [] for k in keys}
    for r in range(args.repeats):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        print(f"repeat {r + 1} of {args.repeats}: {', '.join(order)}", flush=True)
        for key in order:
            first, rerun, h, extra = run_once(key, args, paths, warm_paths, work, warm_work,
                                              ref)
            runs[key].append((first, rerun, h))
            extras[key].append(extra)
    print("\nmedians over the repeats:", flush=True)
    for key in keys:
        record(key, LABELS[key], *medians(runs[key]), **merged(extras[key]))

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    d = res["d"]["first_mevps"]
    for v in res.values():
        v["first_vs_d"] = v["first_mevps"] / d
        v["rerun_vs_d"] = None if v["rerun_mevps"] is None else v["rerun_mevps"] / d
    (out / "analysis.json").write_text(json.dumps(
        {"events": total, "chunk": args.chunk, "repeats": args.repeats,
         "load": os.getloadavg(), "results": res}, indent=2))
    print("\nratios to (d)'s first run, the fresh pool:  first   re-run")
    for k, v in res.items():
        again = "" if v["rerun_vs_d"] is None else f"{v['rerun_vs_d']:8.2f}"
        print(f"  {k:<10} {v['first_vs_d']:29.2f}{again}")
    return 0 if all(v["identical"] for v in res.values()) else 1


def run_dask(key, work, warm_work, repeats):
    import dask
    from distributed import Client, LocalCluster

    runs = []
    for _ in range(repeats):
        saved = os.environ.get("MALLOC_TRIM_THRESHOLD_")
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        if key == "b_no_trim":  # the nanny sets it before a worker starts: drop it there
            environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster) as c:
            seen = c.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
            dask_map(c, warm_work)
            t = time.perf_counter()
            h = dask_map(c, work)
            first = time.perf_counter() - t
            t = time.perf_counter()
            dask_map(c, work)
            runs.append((first, time.perf_counter() - t, h))
        if saved is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # distributed leaks it to us
        else:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved
    label = ("Dask LocalCluster(2), defaults" if key == "b_default"
             else "Dask LocalCluster(2), MALLOC_TRIM_THRESHOLD_ unset")
    return (label, *medians(runs)), {"worker_malloc_trim": sorted(set(map(str, seen.values())))}


def run_panda(key, paths, warm_paths, args, record, quiet: bool = False) -> None:
    """A new server (new pilots) per repeat: warmed by an analysis of the small file, then
    the first run and the re-run over the dataset.  Also the pilots' workers' memory after
    the re-run and where the first run's wall time went (:func:`timeline`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import psutil
    from harness import ServerProcess

    root = Path(tempfile.mkdtemp(prefix="panda-bench-home-"))
    sites = root / "sites.toml"
    sites.write_text('[sites.LOCAL]\nkind = "local"\npilots = 2\n')
    extra = [] if key == "f" else ["--sites", str(sites)]
    label = ("panda-lab, the embedded default" if key == "f"
             else "panda-lab, 1 local site x 2 pilots")
    runs, firsts, rss, lines, cpus = [], [], [], [], []
    for i in range(args.repeats):
        home = root / f"{key}-{i}"
        home.mkdir()
        # the server's defaults, what a user runs (not the tests' short timeouts: a
        # watchdog sweep every 0.3 s, a heartbeat every 0.5 s)
        server = ServerProcess(home, extra=extra, fast=False).start()
        try:
            lab = server.lab()
            ds = lab.datasets.register("bench", [str(p) for p in paths], tree="Events")
            warm = lab.datasets.register("warm", [str(p) for p in warm_paths], tree="Events")

            def once(ds, step=args.chunk, lab=lab):
                # The first result's time is read from the jobs' records afterwards: a
                # client polling task.partial() every few ms while the run goes would
                # take the cores the run is timed on (the pool's run has no such poller).
                t0, wall0 = time.perf_counter(), time.time()
                task = lab.analyze(process, ds, events_per_job=step, columns=BRANCHES,
                                   name="bench")
                r = task.result(timeout=600)
                elapsed = time.perf_counter() - t0
                first = min(j["ended_at"] for j in lab.jobs(task.id)
                            if j["state"] == "finished") - wall0
                return r, first, elapsed, task

            # every pilot's worker warmed, as every pool worker is: three pilots taking
            # turns on two cores may leave one without a job of the first warm run
            for _ in range(10):
                once(warm, args.chunk // 4)
                pilots = [p for p in lab.pilots() if p["state"] == "running"]
                if all(p["jobs_done"] for p in pilots):
                    break
            cpu0 = cpu_by_role(server.proc.pid)
            r, first_partial, t_first, task = once(ds)
            cpu1 = cpu_by_role(server.proc.pid)
            cpus.append({k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0)
                         for k in ("server", "pilots", "workers", "workers_sys")})
            lines.append(timeline(lab, task.id) + "; first run's CPU: " + ", ".join(
                f"{k} {cpu1.get(k, 0.0) - cpu0.get(k, 0.0):.2f} s"
                for k in ("server", "pilots", "workers")))
            _, _, t_again, task2 = once(ds)
            lines.append("re-run: " + timeline(lab, task2.id))
            workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                       if "panda_lab.pilot" not in " ".join(p.cmdline())]
            rss.append(max(p.memory_info().rss for p in workers) / 2**20)
            runs.append((t_first, t_again, r["mass"]))
            firsts.append(first_partial)
            lab.close()
        finally:
            server.stop()
    record(key, label, *medians(runs), first_partial_s=statistics.median(firsts),
           worker_rss_mb=max(rss), first_cpu=cpus)
    if quiet:
        return
    print(f"  {'':<10} time to first result (submit to the first job's result at the "
          f"server): {statistics.median(firsts) * 1000:.0f} ms;"
          f" largest worker RSS after the re-run {max(rss):.0f} MB", flush=True)
    for line in lines:
        print(f"  {'':<10} {line}", flush=True)


def cpu_by_role(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the server process, its pilots and their
    payload workers: ``{"server", "pilots", "workers"}``.  The difference over a run is
    what the control plane (server and pilots) took from the cores the payloads run on."""
    import psutil

    root = psutil.Process(server_pid)
    out = {"server": 0.0, "pilots": 0.0, "workers": 0.0, "workers_sys": 0.0}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            role = "server" if p.pid == server_pid else \
                "pilots" if "panda_lab.pilot" in " ".join(p.cmdline()) else "workers"
        except psutil.Error:
            continue
        out[role] += t.user + t.system
        if role == "workers":
            out["workers_sys"] += t.system
    return out


def timeline(lab, task_id: int) -> str:
    """Where a task's wall time went, from its job records: per pilot, the sum of its
    jobs' run times (start on the worker to the report reaching the server) against the
    span from the first start to the last end."""
    jobs = lab.jobs(task_id)
    span0 = min(j["started_at"] for j in jobs)
    span1 = max(j["ended_at"] for j in jobs)
    per: dict = {}
    for j in jobs:
        per.setdefault(f"{j['site']}/{j['pilot_id']}", []).append(j)
    busy = ", ".join(f"{k}: {len(v)} jobs {sum(j['ended_at'] - j['started_at'] for j in v):.2f} s"
                     for k, v in sorted(per.items(), key=lambda kv: str(kv[0])))
    return f"jobs span {span1 - span0:.2f} s; {busy}"


if __name__ == "__main__":
    sys.exit(main())
