"""The live monitor: how soon a job's end shows in the widget, and what watching costs.

- latency: tasks of short jobs watched by a ``TaskMonitor`` (its default interval,
  0.25 s); for each job, its end on the server (``ended_at``, server clock) to the first
  widget update whose progress bar counts it (kernel-side clock, same machine); p50 and
  p95.  Target: p95 under 500 ms.  This is the widget model in the kernel; the browser
  adds one comm message (milliseconds on loopback, not measured here).
- overhead: the dimuon analysis (4 files x 1M events, 40 jobs, the default 3 local
  pilots), run alternately with and without a monitor watching it (histogram redrawn as
  chunks merge, in the same process); median wall time of each.  Target: the monitor
  costs under 5 %.

    python benchmarks/bench_monitor.py            # full (about 2 minutes)
    python benchmarks/bench_monitor.py --quick    # smoke check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from harness import ServerProcess  # noqa: E402

from panda_lab.analysis.dimuon import process  # noqa: E402
from panda_lab.analysis.sample import make_sample  # noqa: E402
from panda_lab.jupyter.monitor import TaskMonitor  # noqa: E402


def pct(ts: list[float], q: float) -> float:
    ts = sorted(ts)
    return ts[min(len(ts) - 1, int(q * len(ts)))]


def nap(t: float) -> float:
    time.sleep(t)
    return t


def latency(lab, tasks: int, jobs: int) -> list[float]:
    """Seconds from each job's end on the server to the widget update that counted it."""
    lags: list[float] = []
    for _ in range(tasks):
        task = lab.submit(nap, [(0.2,)] * jobs, name="bench-monitor-latency")
        shown: list[tuple[float, int]] = []
        m = TaskMonitor(lab, task, start=False)
        m.bar.observe(lambda c, shown=shown: shown.append((time.time(), c["new"])),
                      names="value")
        m.start()
        m.wait(120)
        ends = sorted(j["ended_at"] for j in lab.jobs(task))
        for k, end in enumerate(ends, start=1):
            seen = next(t for t, v in shown if v >= k)
            lags.append(max(0.0, seen - end))
        m.close()
    return lags


def analysis_time(lab, dataset: str, watch: bool) -> float:
    start = time.perf_counter()
    task = lab.analyze(process, dataset, events_per_job=100_000, name="bench-monitor-ana")
    m = TaskMonitor(lab, task.id) if watch else None
    task.result(timeout=300)
    took = time.perf_counter() - start
    if m is not None:
        m.wait(30)
        assert m.updates > 1 and m.snapshot.events == m.snapshot.total_events
        m.close()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="panda-bench-monitor-"))
    server = ServerProcess(home, extra=["--heartbeat-timeout", "60"]).start()
    results: dict[str, float] = {}
    try:
        lab = server.lab()
        print("latency: job end on the server -> widget update")
        lags = latency(lab, tasks=2 if args.quick else 10, jobs=12)
        results.update(latency_p50_ms=1000 * statistics.median(lags),
                       latency_p95_ms=1000 * pct(lags, 0.95), latency_n=len(lags))
        print(f"  {len(lags)} jobs: p50 {results['latency_p50_ms']:.0f} ms, "
              f"p95 {results['latency_p95_ms']:.0f} ms (target p95 < 500 ms)")

        events = 200_000 if args.quick else 1_000_000
        files = make_sample(home / "data", files=4, events=events, basket_events=50_000)
        lab.datasets.register("bench-monitor", [str(f) for f in files], tree="Events")
        analysis_time(lab, "bench-monitor", watch=False)  # warm the pilots' workers
        plain, watched = [], []
        for _ in range(1 if args.quick else 5):
            plain.append(analysis_time(lab, "bench-monitor", watch=False))
            watched.append(analysis_time(lab, "bench-monitor", watch=True))
        results.update(plain_s=statistics.median(plain), watched_s=statistics.median(watched))
        results["overhead"] = results["watched_s"] / results["plain_s"] - 1
        print(f"analysis of {4 * events:,} events: {results['plain_s']:.2f} s unwatched, "
              f"{results['watched_s']:.2f} s watched (medians): overhead "
              f"{100 * results['overhead']:+.1f} % (target < 5 %)")
    finally:
        server.stop()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "monitor.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
