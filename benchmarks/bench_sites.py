"""Each kind of site, on this machine: how soon a job starts, and how many jobs per second.

For each site (local pilots, a Dask LocalCluster, Slurm batch jobs, a dask-gateway
cluster), a fresh server with that site alone:

- cold: a one-job task submitted as the server starts (local, Dask) or to an idle elastic
  site with no pilot (Slurm, gateway): submission to the job's start on a pilot;
- warm: one-job tasks one after another while the site's pilot waits for work: the job's
  activation (status history, server clock) to its start (pilot clock, same machine);
  p50 and p95; the target is under 100 ms (pilots reused);
- throughput: one task of no-op jobs, submission to the last result, with the site's one
  single-slot pilot.

Slurm needs root (``scripts/start-slurm`` starts a one-node cluster); without it that site
is left out and said so.

    python benchmarks/bench_sites.py            # full (about 3 minutes)
    python benchmarks/bench_sites.py --quick    # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import payloads
from payloads import noop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from harness import GatewayServer, ServerProcess  # noqa: E402


def pct(ts: list[float], q: float) -> float:
    ts = sorted(ts)
    return ts[min(len(ts) - 1, int(q * len(ts)))]


def site_bodies(gateway_url: str | None, slurm: bool) -> dict[str, str]:
    bodies = {
        "local": 'kind = "local"\nprovisioner = "local"\npilots = 1',
        "dask": 'kind = "grid"\nprovisioner = "dask"\ncluster = "distributed.LocalCluster"\n'
                '[sites.S.cluster_options]\nn_workers = 1\nthreads_per_worker = 1\n'
                'dashboard_address = ":0"',
    }
    if slurm:
        bodies["slurm"] = ('kind = "hpc"\nprovisioner = "slurm"\npartition = "debug"\n'
                           'max_jobs = 1\nwalltime = "00:30:00"\nidle_exit = 600')
    if gateway_url:
        bodies["gateway"] = (f'kind = "cloud"\nprovisioner = "gateway"\naddress = '
                             f'"{gateway_url}"\nmax_workers = 1\nidle_timeout = 600')
    return bodies


def start_of(lab, task: int) -> tuple[float, float]:
    """(activation time, start time) of a one-job task's job."""
    job = lab.jobs(task)[0]
    detail = lab.api.get(f"/api/jobs/{job['id']}")
    activated = next(h["time"] for h in detail["history"] if h["state"] == "activated")
    return activated, job["started_at"]


def measure(kind: str, body: str, args: argparse.Namespace) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix=f"panda-bench-sites-{kind}-"))
    path = home / "sites.toml"
    path.write_text(f"[sites.S]\n{body}\n")
    server = ServerProcess(home, extra=["--sites", str(path), "--heartbeat-timeout", "60"])
    out: dict[str, float] = {}
    try:
        t0 = time.time()
        server.start()
        lab = server.lab()
        task = lab.submit(noop, [()], name="cold")
        lab.wait(task, timeout=300)
        _, started = start_of(lab, task)
        out["cold_s"] = started - t0
        warm = []
        for i in range(args.warm):
            task = lab.submit(noop, [()], name=f"warm-{i}")
            lab.wait(task, timeout=60)
            activated, started = start_of(lab, task)
            warm.append(started - activated)
        out["warm_p50_ms"] = statistics.median(warm) * 1e3
        out["warm_p95_ms"] = pct(warm, 0.95) * 1e3
        t = time.perf_counter()
        task = lab.submit(noop, [() for _ in range(args.jobs)], name="throughput")
        info = lab.wait(task, timeout=600)
        assert info["state"] == "done", info
        out["jobs_per_s"] = args.jobs / (time.perf_counter() - t)
        lab.close()
    finally:
        server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--warm", type=int, default=50, help="one-job tasks on a warm site")
    ap.add_argument("--jobs", type=int, default=2_000, help="no-op jobs for throughput")
    args = ap.parse_args()
    if args.quick:
        args.warm, args.jobs = 10, 200
    cloudpickle.register_pickle_by_value(payloads)  # pilots cannot import benchmarks/

    slurm = False
    if os.geteuid() == 0:
        r = subprocess.run([str(ROOT / "scripts" / "start-slurm")], capture_output=True,
                           text=True, timeout=300)
        if r.returncode == 0:
            os.environ["SLURM_CONF"] = r.stdout.strip().splitlines()[-1]
            slurm = True
        else:
            print(f"Slurm did not start, leaving it out: {r.stderr[-500:]}")
    else:
        print("not root: the Slurm site is left out (scripts/start-slurm needs root)")
    gw = GatewayServer(Path(tempfile.mkdtemp(prefix="panda-bench-gateway-"))).start()
    results: dict[str, dict[str, float]] = {}
    try:
        for kind, body in site_bodies(gw.url, slurm).items():
            print(f"{kind}: measuring", flush=True)
            results[kind] = measure(kind, body, args)
            r = results[kind]
            print(f"  cold start {r['cold_s']:6.2f} s   warm activation->start p50 "
                  f"{r['warm_p50_ms']:6.1f} ms p95 {r['warm_p95_ms']:6.1f} ms   "
                  f"{r['jobs_per_s']:7.1f} jobs/s", flush=True)
    finally:
        gw.stop()
    print("\n| site kind | cold start (s) | warm start p50 (ms) | warm p95 (ms) | jobs/s |")
    print("|---|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['cold_s']:.2f} | {r['warm_p50_ms']:.1f} | "
              f"{r['warm_p95_ms']:.1f} | {r['jobs_per_s']:.0f} |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "sites.json").write_text(json.dumps(results, indent=2))
    slow = [k for k, r in results.items() if r["warm_p50_ms"] >= 100]
    if slow:
        print(f"warm start target (< 100 ms) missed by: {', '.join(slow)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
