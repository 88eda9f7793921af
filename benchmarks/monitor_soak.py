"""The web monitor left open while work goes on: does anything grow?

Ten monitor pages (tasks, a task, jobs, a job, errors, sites and filtered variants),
each logged in with the user token as the monitor's login does (``sessionStorage``), stay
open in one headless Chromium on the real server, as ten tabs of one browser profile
(more than the six HTTP/1.1 connections a browser opens to one host: the tabs share one
event stream, so the server counts one stream client; ``one_context=False`` opens each
page in a profile of its own instead, ten viewers and ten streams), while the server's
local pilots run a
stream of small tasks (one at a time, ``SOAK_JOBS`` jobs each, a few of them failing), so
the event stream keeps every list page refreshing.  Every ``interval`` seconds, after a
forced garbage collection in each page (CDP ``HeapProfiler.collectGarbage``): the server
process's resident memory (psutil), each page's JS heap in use and its DOM node count
(CDP ``Performance.getMetrics``: ``JSHeapUsedSize``, ``Nodes``) and the elements
in its document.

"Flat" is a least-squares slope per minute, fitted after a warm-up (the first
``WARMUP_S`` seconds: the server's statement caches and the pages' first renders fill
then), below these limits:

- server memory of its own, resident and not backed by a file (psutil's ``rss - shared``:
  the heap, Python's objects, SQLite's page cache): 1 MiB/min.  The whole RSS is
  reported too but not held to it: on SQLite it also counts the pages of the database
  file that SQLite has memory-mapped (``PRAGMA mmap_size``, up to 1 GiB, per
  connection), which come and go by the hundred MiB as scans touch the file and the
  mapping is let go (SQLite remaps a file that grew; the kernel may reclaim such pages
  at will): they are the database file, not a leak.  A leak at 1 MiB/min is 1.4 GiB a
  day, which an operator would see; with ~40 samples over 10 minutes the slope's
  noise (Python's allocator returns arenas in steps of a few MiB) is about 0.1-0.2
  MiB/min, so a smaller limit would flag noise.
- each page's JS heap: 100 KiB/min (140 MiB a day).  A view that kept each refresh's
  JSON or nodes would grow by tens of KiB per refresh, i.e. MiB per minute.
- each page's elements in its document (``getElementsByTagName("*")``): 20 a minute.
  A list page is a few hundred to a thousand elements, replaced at each refresh; one
  that appended a row per event would add hundreds a minute.  A facet gaining a new
  value adds a handful, once.  Chromium's own node count (CDP ``Nodes``) is reported
  too but not held to it: it includes the nodes a refresh replaced until Blink's
  collector sweeps them, so it swings between one and two renders' worth.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from panda_lab.model.states import TASK_FINAL

ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 120.0
LIMITS = {"server_anon_mib": 1.0, "server_rss_mib": 1.0,   # per minute
          "js_heap_kib": 100.0, "elements": 20.0, "dom_nodes": 20.0}
SOAK_JOBS = 8


def slope_per_min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against ``ts`` (seconds), per minute; 0 for < 2 points."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx if sxx else 0.0


def summary(ts: list[float], ys: list[float], limit: float, warmup_s: float) -> dict:
    """``start``, ``max``, ``end`` and ``slope_per_min`` (fitted on samples after
    ``warmup_s``) of one series, and whether that slope is under ``limit``."""
    pairs = list(zip(ts, ys, strict=True))
    fit = [(t, y) for t, y in pairs if t >= warmup_s] or pairs
    s = slope_per_min([t for t, _ in fit], [y for _, y in fit])
    return {"start": round(ys[0], 1), "max": round(max(ys), 1), "end": round(ys[-1], 1),
            "slope_per_min": round(s, 2), "limit_per_min": limit, "flat": s < limit}


def pages_for(ids: dict) -> dict[str, str]:
    """The ten pages kept open: name -> path under ``/monitor/``."""
    return {"tasks": "tasks", "tasks running": "tasks?state=running,finished&sort=-id",
            "task": f"tasks/{ids['task']}", "jobs": "jobs",
            "jobs finished": "jobs?state=finished&sort=-duration",
            "jobs failed": "jobs?state=failed", "job": f"jobs/{ids['job']}",
            "errors": "errors", "errors 6 h": "errors?hours=6", "sites": "sites"}


def soak(home: Path, db: str | None, ids: dict, seconds: float,
         interval: float = 15.0, one_context: bool = True) -> dict:
    """Run the soak on the store under ``home`` (filled beforehand) for ``seconds``;
    returns ``{"samples", "tasks_run", "jobs_run", "stream_clients" (the most the server
    counted at a sample), "server_anon_mib", "server_rss_mib", "pages": {name:
    {"js_heap_kib", "elements", "dom_nodes"}}, "flat"}`` (each series a :func:`summary`)."""
    import httpx
    import psutil

    sys.path.insert(0, str(ROOT / "tests"))
    from harness import CHROMIUM, CHROMIUM_ARGS, ServerProcess
    from playwright.sync_api import sync_playwright

    proc = ServerProcess(home, db_url=db).start()
    server_ps = psutil.Process(proc.proc.pid)
    lab = proc.lab()
    paths = pages_for(ids)
    ts: list[float] = []
    rss: list[float] = []
    anon: list[float] = []
    heap: dict[str, list[float]] = {n: [] for n in paths}
    nodes: dict[str, list[float]] = {n: [] for n in paths}
    elements: dict[str, list[float]] = {n: [] for n in paths}
    tasks_run = clients = 0
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_ARGS)
            base = f"{proc.info['url']}/monitor/"
            opened = {}
            shared = browser.new_context() if one_context else None
            for name, path in paths.items():
                context = shared or browser.new_context()
                page = context.new_page()
                print(f"opening {name}", file=sys.stderr, flush=True)
                page.goto(base)
                page.evaluate("t => sessionStorage.setItem('panda-lab-token', t)",
                              proc.info["user_token"])
                page.goto(base + path)
                page.locator("#view[data-updated]").wait_for(timeout=60_000)
                cdp = context.new_cdp_session(page)
                cdp.send("Performance.enable")
                opened[name] = (page, cdp)
            t0 = time.monotonic()
            next_sample = t0
            pending = None
            while True:
                now = time.monotonic()
                if pending is None or lab.task_info(pending)["state"] in TASK_FINAL:
                    # one small task at a time: the work is steady, the queue does not grow
                    args = [(float(i - 1),) for i in range(SOAK_JOBS)]   # sqrt(-1) fails
                    pending = lab.submit(math.sqrt, args, name=f"soak-{tasks_run}",
                                         retries=0)
                    tasks_run += 1
                if now >= next_sample:
                    ts.append(now - t0)
                    mem = server_ps.memory_info()
                    rss.append(mem.rss / 2**20)
                    metrics = httpx.get(f"{proc.info['url']}/metrics", timeout=30, headers={
                        "Authorization": f"Bearer {proc.info['user_token']}"}).text
                    clients = max(clients, int(float(next(
                        x for x in metrics.splitlines()
                        if x.startswith("panda_lab_event_stream_clients ")).split()[1])))
                    anon.append((mem.rss - mem.shared) / 2**20)
                    for name, (page, cdp) in opened.items():
                        cdp.send("HeapProfiler.collectGarbage")
                        m = {x["name"]: x["value"]
                             for x in cdp.send("Performance.getMetrics")["metrics"]}
                        heap[name].append(m["JSHeapUsedSize"] / 1024)
                        nodes[name].append(m["Nodes"])
                        elements[name].append(
                            page.evaluate("document.getElementsByTagName('*').length"))
                    print(f"{ts[-1]:6.0f} s  server {rss[-1]:.1f} MiB, "
                          f"{anon[-1]:.1f} not file-backed  tasks {tasks_run}  "
                          f"heap {max(h[-1] for h in heap.values()):.0f} KiB (max page)  "
                          f"elements {max(n[-1] for n in elements.values()):.0f} (max page)",
                          file=sys.stderr, flush=True)
                    if now - t0 >= seconds:
                        break
                    next_sample += interval
                time.sleep(0.5)
            browser.close()
    finally:
        lab.close()
        proc.stop()
    out = {"samples": len(ts), "seconds": round(ts[-1], 1), "tasks_run": tasks_run,
           "stream_clients": clients,
           "jobs_run": tasks_run * SOAK_JOBS, "warmup_s": WARMUP_S,
           "server_anon_mib": summary(ts, anon, LIMITS["server_anon_mib"], WARMUP_S),
           "server_rss_mib": summary(ts, rss, LIMITS["server_rss_mib"], WARMUP_S),
           "pages": {n: {"js_heap_kib": summary(ts, heap[n], LIMITS["js_heap_kib"], WARMUP_S),
                         "elements": summary(ts, elements[n], LIMITS["elements"], WARMUP_S),
                         "dom_nodes": summary(ts, nodes[n], LIMITS["dom_nodes"], WARMUP_S)}
                     for n in paths}}
    out["flat"] = out["server_anon_mib"]["flat"] and all(
        pg["js_heap_kib"]["flat"] and pg["elements"]["flat"] for pg in out["pages"].values())
    return out
