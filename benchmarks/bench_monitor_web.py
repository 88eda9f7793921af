"""The web monitor with a full store: each JSON view's latency and each page's first
meaningful paint.

- fill: ``--tasks`` tasks of ``--jobs`` jobs in all (default 1,000 and 100,000) submitted
  through the store's own verb (brokered to the three default sites), then given ends
  in one bulk UPDATE each: 80 % finished, 15 % failed (four error categories, a few
  messages), the rest cancelled, with start and end times spread over a day; on
  PostgreSQL then ``VACUUM ANALYZE``, as autovacuum does after a bulk load.
- json: every view (tasks, a task, jobs with facets, a job, errors, sites, and a
  filtered and a deep page) asked ``--repeat`` times through the ASGI app (in process,
  no socket); median and p95 in ms.  Target: under 200 ms each.
- paint (``--browser``, needs Chromium): the server run for real on this store, each
  page opened in headless Chromium, from navigation to the view rendered
  (``#view[data-updated]``); target under 1 s.

    python benchmarks/bench_monitor_web.py                       # SQLite, 100,000 jobs
    python benchmarks/bench_monitor_web.py --db postgresql://...  # PostgreSQL
    python benchmarks/bench_monitor_web.py --quick --browser      # smoke check
    python benchmarks/bench_monitor_web.py --soak [SECONDS]        # memory, pages open

- soak (``--soak``, default 600 s; instead of json and paint): ten tabs of one browser
  open on the real server (sharing one event stream: the server's stream clients are
  reported) while pilots run small tasks; the server's RSS, each page's JS heap and DOM
  nodes sampled every 15 s must stay flat (``monitor_soak.py`` says how flat).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import bindparam, text, update

from panda_lab.server.app import Server, create_app
from panda_lab.server.config import ServerConfig
from panda_lab.store.schema import jobs

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["user", "system", "input", "timeout"]


def fill(server: Server, n_tasks: int, n_jobs: int, seed: int = 1) -> dict:
    """Tasks and jobs in the store, with ends; returns ids to ask views about."""
    rng = random.Random(seed)
    store = server.store
    per = max(1, n_jobs // n_tasks)
    t0 = time.perf_counter()
    tasks = [store.create_task(f"bench-{i:04d}", [{"payload": b"x"}] * per,
                               owner=f"user{i % 7}")[0] for i in range(n_tasks)]
    submitted = time.perf_counter() - t0
    now = time.time()
    rows = []
    for job_id in range(1, n_tasks * per + 1):
        r = rng.random()
        start = now - rng.uniform(0, 86400)
        end = start + rng.expovariate(1 / 60)
        if r < 0.80:
            rows.append({"b_id": job_id, "b_state": "finished", "b_s": start, "b_e": end,
                         "b_c": None, "b_m": None})
        elif r < 0.95:
            cat = rng.choice(CATEGORIES)
            rows.append({"b_id": job_id, "b_state": "failed", "b_s": start, "b_e": end,
                         "b_c": cat, "b_m": f"{cat} trouble number {rng.randint(1, 5)}"})
        else:   # none left queued: the pilots of a real run (--browser) find nothing to do
            rows.append({"b_id": job_id, "b_state": "cancelled", "b_s": None, "b_e": end,
                         "b_c": "killed", "b_m": "cancelled on request"})
    with store.tx() as conn:
        conn.execute(update(jobs).where(jobs.c.id == bindparam("b_id")).values(
            state=bindparam("b_state"), started_at=bindparam("b_s"), ended_at=bindparam("b_e"),
            modified_at=bindparam("b_e"), error_category=bindparam("b_c"),
            error_message=bindparam("b_m")), rows)
    if store.engine.dialect.name == "postgresql":
        # what autovacuum does after a bulk load: statistics for the planner, and the
        # visibility map that lets index-only scans skip the table
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    return {"task": tasks[len(tasks) // 2], "job": n_tasks * per // 2,
            "submit_s": submitted, "jobs": n_tasks * per}


def views(ids: dict) -> dict[str, str]:
    return {"tasks": "/monitor/api/tasks",
            "tasks filtered": "/monitor/api/tasks?owner=user3&name=bench-0*&sort=-duration",
            "task": f"/monitor/api/tasks/{ids['task']}",
            "jobs": "/monitor/api/jobs",
            "jobs deep page": "/monitor/api/jobs?state=failed&page=100&sort=-duration",
            "job": f"/monitor/api/jobs/{ids['job']}",
            "errors": "/monitor/api/errors?days=2",
            "sites": "/monitor/api/sites"}


def json_latency(server: Server, ids: dict, repeat: int) -> dict:
    out = {}
    with TestClient(create_app(server)) as client:
        client.headers["Authorization"] = f"Bearer {server.user_token}"
        for name, url in views(ids).items():
            ts = []
            for _ in range(repeat):
                t = time.perf_counter()
                r = client.get(url)
                ts.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (url, r.text[:300])
            ts.sort()
            out[name] = {"median_ms": round(statistics.median(ts), 1),
                         "p95_ms": round(ts[min(len(ts) - 1, int(0.95 * len(ts)))], 1)}
    return out


def paint(home: Path, db: str | None, ids: dict) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness import CHROMIUM, CHROMIUM_ARGS, ServerProcess
    from playwright.sync_api import sync_playwright

    proc = ServerProcess(home, db_url=db).start()
    pages = {"tasks": "tasks", "task": f"tasks/{ids['task']}", "jobs": "jobs",
             "job": f"jobs/{ids['job']}", "errors": "errors", "sites": "sites"}
    out = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_ARGS)
            page = browser.new_page()
            base = f"{proc.info['url']}/monitor/"
            page.goto(base)
            page.evaluate("t => sessionStorage.setItem('panda-lab-token', t)",
                          proc.info["user_token"])
            for name, path in pages.items():
                t = time.perf_counter()
                page.goto(base + path)
                page.locator("#view[data-updated]").wait_for(timeout=30_000)
                out[name] = {"paint_ms": round((time.perf_counter() - t) * 1000, 1)}
            browser.close()
    finally:
        proc.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--db", default=None, help="a database URL (default: SQLite)")
    ap.add_argument("--browser", action="store_true", help="also time pages in Chromium")
    ap.add_argument("--soak", type=float, nargs="?", const=600.0, default=None,
                    metavar="SECONDS", help="keep ten pages open while work goes on "
                    "(default 600 s) and check memory stays flat")
    ap.add_argument("--quick", action="store_true", help="100 tasks, 10,000 jobs, 5 repeats")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.jobs, args.repeat = 100, 10_000, 5
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = Server(ServerConfig(home=home, db_url=args.db, provision=False))
        ids = fill(server, args.tasks, args.jobs)
        if args.soak is not None:
            from monitor_soak import soak

            db = server.store.engine.dialect.name
            server.close()
            report = {"database": db, "tasks": args.tasks, "jobs": ids["jobs"],
                      "soak": soak(home, args.db, ids, args.soak)}
            print(json.dumps(report, indent=2))
            if not report["soak"]["flat"]:
                print("not flat", file=sys.stderr)
            return 0 if report["soak"]["flat"] else 1
        report = {"database": server.store.engine.dialect.name, "tasks": args.tasks,
                  "jobs": ids["jobs"], "submit_s": round(ids["submit_s"], 1),
                  "json": json_latency(server, ids, args.repeat)}
        server.close()
        if args.browser:
            report["paint"] = paint(home, args.db, ids)
    print(json.dumps(report, indent=2))
    slow = [k for k, v in report["json"].items() if v["p95_ms"] > 200]
    slow += [k for k, v in report.get("paint", {}).items() if v["paint_ms"] > 1000]
    if slow:
        print(f"over target: {', '.join(slow)}", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
