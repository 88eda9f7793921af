"""``panda-lab demo``: the embedded default at work.

Starts (or finds) the local server with its three local sites, submits a task of a few
hundred small Monte Carlo jobs, shows their progress, and checks every result.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from panda_lab import runtime
from panda_lab.cli.main import EXIT_FAIL, EXIT_OK
from panda_lab.client.session import connect
from panda_lab.model import TASK_FINAL, TaskState

POINTS = 200_000


def count_inside(seed: int, points: int = POINTS) -> int:
    """How many random points of the unit square fall inside the quarter circle."""
    rng = np.random.default_rng(seed)
    xy = rng.random((points, 2))
    return int(np.count_nonzero((xy * xy).sum(axis=1) <= 1.0))


def run(args: argparse.Namespace) -> int:
    from panda_lab.server.main import server_alive, stop_detached

    console = Console()
    home = runtime.home(args.home)
    started = not server_alive(runtime.read_connection(home))
    t0 = time.monotonic()
    lab = connect(home=home)
    console.print(f"[bold]panda-lab demo[/] server {lab.url} "
                  f"({'started' if started else 'already running'}, "
                  f"{time.monotonic() - t0:.1f} s)")
    for s in lab.sites():
        console.print(f"  site {s['name']:12} kind={s['kind']:5} {s['description']}")
    try:
        rc = _demo(lab, args.jobs, console)
        return _analysis(lab, args.events, home, console) or rc
    finally:
        lab.close()
        if started and not args.keep_server:
            stop_detached(home)
            console.print("server stopped (use --keep-server to leave it running)")


def _demo(lab, n_jobs: int, console: Console) -> int:
    t0 = time.monotonic()
    task = lab.submit(count_inside, [(seed,) for seed in range(n_jobs)], name="demo-pi",
                      retries=2)
    with Progress(TextColumn("[bold]task {task.fields[tid]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[states]}"), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("jobs", total=n_jobs, tid=task, states="")
        while True:
            info = lab.task_info(task)
            counts = info["attempts_by_state"]
            states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            progress.update(bar, completed=info["n_done"], states=states)
            if info["state"] in TASK_FINAL:
                break
            time.sleep(0.2)
    wall = time.monotonic() - t0
    info = lab.task_info(task)
    table = Table("site", "state", "jobs", title=f"task {task} ({info['state']}): "
                                                 f"latest attempt of each job")
    for site, by_state in sorted(info["jobs_by_site"].items()):
        for state, n in sorted(by_state.items()):
            table.add_row(site, state, str(n))
    console.print(table)
    results = lab.results(task)
    inside = sum(results.values())
    pi = 4.0 * inside / (len(results) * POINTS) if results else float("nan")
    sample = random.Random(0).sample(range(n_jobs), min(5, n_jobs))
    exact = all(results.get(i) == count_inside(i) for i in sample)
    ok = (info["state"] == TaskState.DONE and len(results) == n_jobs and exact
          and abs(pi - np.pi) < 0.01)
    console.print(f"wall time {wall:.2f} s, {n_jobs / wall:.0f} jobs/s; "
                  f"pi = {pi:.5f} from {len(results)} results; "
                  f"{len(sample)} results recomputed here: {'identical' if exact else 'DIFFERENT'}")
    console.print("[green]result check passed[/]" if ok else "[red]result check FAILED[/]")
    return EXIT_OK if ok else EXIT_FAIL


def _analysis(lab, events: int, home, console: Console) -> int:
    """Part two: a dimuon analysis over a generated dataset, watched as it fills."""
    import uproot

    from panda_lab.analysis.dimuon import peak, process
    from panda_lab.analysis.events import read_chunk
    from panda_lab.analysis.sample import make_sample
    from panda_lab.model.splitter import Chunk

    outdir = home / "demo-data"
    console.print(f"\n[bold]dimuon analysis[/] over 4 generated files of {events:,} events")
    paths = make_sample(outdir, files=4, events=events, basket_events=max(1, events // 10))
    ds = lab.datasets.register("demo.dimuon", [str(p) for p in paths], tree="Events",
                               replace=True)
    t0 = time.monotonic()
    task = lab.analyze(process, ds, events_per_job="auto", target_job_seconds=0.5,
                       name="demo-dimuon")
    with Progress(TextColumn("[bold]task {task.fields[tid]}"), BarColumn(),
                  TextColumn("{task.completed:,.0f}/{task.total:,.0f} events merged"),
                  TextColumn("{task.fields[peak]}"), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("events", total=ds.n_events, tid=task.id, peak="")
        while True:
            p = task.partial()
            label = f"peak {peak(p.result['mass']):.1f} GeV" if p.result else ""
            progress.update(bar, completed=p.events, peak=label)
            if task.status in TASK_FINAL and \
                    p.events >= ds.n_events:
                break
            time.sleep(0.2)
    result = task.result(timeout=300)
    wall = time.monotonic() - t0
    # The same analysis in this process, in one pass, for the check.
    expected = None
    for path in paths:
        with uproot.open(path) as f:
            from panda_lab.analysis.events import read_chunk
            from panda_lab.model.splitter import Chunk

            n = f["Events"].num_entries
            r = process(read_chunk(Chunk(0, str(path), "Events", 0, n),
                                   ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass",
                                    "Muon_charge"]))
            expected = r if expected is None else {"mass": expected["mass"] + r["mass"],
                                                   "events": expected["events"] + r["events"]}
    same = result["events"] == expected["events"] and \
        (result["mass"].values() == expected["mass"].values()).all()
    sc = task.scouting or {}
    console.print(f"{ds.n_events:,} events in {wall:.1f} s ({ds.n_events / wall / 1e6:.2f} M "
                  f"events/s), {task.info()['n_jobs']} jobs; scouts measured "
                  f"{(sc.get('events_per_second') or 0) / 1e6:.2f} M events/s per job")
    console.print(f"Z peak at {peak(result['mass']):.1f} GeV; histogram "
                  f"{'identical to' if same else 'DIFFERENT from'} a one-process pass")
    console.print("[green]analysis check passed[/]" if same else "[red]analysis check FAILED[/]")
    return EXIT_OK if same else EXIT_FAIL
