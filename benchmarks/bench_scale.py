"""Load: many pilots and many jobs against one real server, over the real pilot API.

A real ``panda-lab server run --no-pilots`` process, one or a few sites from a sites file,
and N pilots simulated by coroutines in this one process, each with its own
``httpx.AsyncClient`` and so its own connection, as each real pilot has, speaking the
pilot API as
:mod:`panda_lab.pilot.pilot` does, each with its site's pilot token (the one the server
made for the site: :mod:`panda_lab.server.auth`):

    register -> loop { acquire 1 job (long poll) -> run it (sleep --job-s) -> report it
                       finished with a small result ; heartbeat, with the job it holds,
                       after each heartbeat interval of silence, as the pilot does }

until one task of M jobs, submitted through the client API in one request, is done.

Measured: wall time from the first job dispatched to the last reported, dispatch rate
(jobs/s), p50/p95/p99 of the acquire round trip (only those that brought a job: an empty
long poll waits on purpose) and of the report round trip, HTTP errors and timeouts, the
server's RSS (psutil on its pid: start, max, end) and its CPU seconds.

Checked afterwards from the client API: every logical job has exactly one attempt and it
is finished (no job dispatched to two pilots, no retry), no job id was handed out twice,
the results count is M and each result is the one its pilot reported for that job (no
result lost or mixed up).  The exit code is 1 when a check fails.

    python benchmarks/bench_scale.py                       # 1,000 pilots x 100,000 jobs
    python benchmarks/bench_scale.py --pilots 300 --jobs 20000
    python benchmarks/bench_scale.py --db postgresql       # a throwaway one (tests/pg.py)
    python benchmarks/bench_scale.py --db postgresql+psycopg://USER@HOST/DB   # a fresh DB
    python benchmarks/bench_scale.py --ramp 100,300,1000 --jobs 3000   # where it stops holding
    python benchmarks/bench_scale.py --jobs 2000 --job-s 20   # long jobs: mostly heartbeats

Each job costs one acquire and one report here: the worst case for the server.  A real
pilot with short jobs acquires ahead and reports in bulk (``bench_core.py``'s figures).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import pickle
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from panda_lab.model.states import TASK_FINAL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: The server's defaults (``panda-lab server run``), undoing the test harness's short ones.
REAL = ["--heartbeat-timeout", "60", "--heartbeat-interval", "5", "--watchdog-interval", "2",
        "--task-lease", "60"]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def noop(x):
    return x


@dataclass
class Tally:
    """What the simulated pilots saw, all of them together."""

    acquire_s: list[float] = field(default_factory=list)
    report_s: list[float] = field(default_factory=list)
    heartbeat_s: list[float] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)   # job attempt ids, as handed out
    reported: dict[int, bytes] = field(default_factory=dict)  # attempt id -> result sent
    ignored: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first: float | None = None
    last: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def pilot(url: str, site: str, token: str, n_no: int, tally: Tally,
                done: asyncio.Event, job_s: float, tls: ssl.SSLContext) -> None:
    """One pilot: register, then acquire, run (sleep), report, heartbeat, until ``done``.

    Its own client and connection, as a real pilot: one pool shared by all the pilots
    (httpcore's) scans all its connections on each request, which at 1,000 pilots took
    two thirds of this process's CPU, and the load generator, not the server, set the
    round trips the server's heartbeat timeout then judged.  ``tls``: one context for
    all (a client makes its own otherwise, reading the CA bundle: 1,000 of them took
    minutes to start)."""
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=one, timeout=60, verify=tls) as client:
        await _pilot(client, site, token, n_no, tally, done, job_s)


async def _pilot(client: httpx.AsyncClient, site: str, token: str, n_no: int, tally: Tally,
                 done: asyncio.Event, job_s: float) -> None:
    h = {"Authorization": f"Bearer {token}"}
    r = await client.post("/api/pilot/register", headers=h, json={
        "site": site, "host": "bench-scale", "pid": 100_000 + n_no, "slots": 1,
        "info": {"bench": "scale"}})
    r.raise_for_status()
    reg = r.json()
    pid, interval = reg["pilot"], float(reg["heartbeat_interval"])
    next_beat = time.monotonic() + interval

    async def beat(held: list[int]) -> float:
        """As the pilot does (Pilot._maybe_heartbeat): a heartbeat, with the jobs it
        holds, when nothing else was said to the server for a heartbeat interval;
        returns when the next is due."""
        t = time.perf_counter()
        try:
            r = await client.post("/api/pilot/heartbeat", headers=h,
                                  json={"pilot": pid, "held": held})
            r.raise_for_status()
            tally.heartbeat_s.append(time.perf_counter() - t)
        except httpx.HTTPError as exc:
            tally.error(f"heartbeat {type(exc).__name__}")
        return time.monotonic() + interval
    while not done.is_set():
        if time.monotonic() >= next_beat:
            next_beat = await beat([])
        wait = min(2.0, max(0.0, next_beat - time.monotonic()))
        t = time.perf_counter()
        try:
            r = await client.post("/api/pilot/acquire", headers=h, timeout=wait + 60, json={
                "pilot": pid, "site": site, "n": 1, "wait": wait, "held": []})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            tally.error(f"acquire {type(exc).__name__}")
            await asyncio.sleep(0.5)
            continue
        jobs = r.json()["jobs"]
        next_beat = time.monotonic() + interval
        if not jobs:
            continue
        tally.acquire_s.append(time.perf_counter() - t)
        now = time.monotonic()
        tally.first = tally.first or now
        job = jobs[0]
        tally.dispatched.append(job["id"])
        started = time.time()
        end = time.monotonic() + job_s
        while (left := end - time.monotonic()) > 0:  # the job runs; the pilot heartbeats
            if time.monotonic() >= next_beat:
                next_beat = await beat([job["id"]])
                continue
            await asyncio.sleep(min(left, next_beat - time.monotonic()))
        result = pickle.dumps(("ok", job["index"], job["id"], n_no))
        body = {"pilot": pid, "held": [], "updates": [{
            "id": job["id"], "attempt": job["attempt"], "state": "finished",
            "started_at": started, "result": base64.b64encode(result).decode(),
            "seconds": job_s}]}
        for _ in range(5):  # as the pilot does: a report is retried, not dropped
            t = time.perf_counter()
            try:
                r = await client.post("/api/pilot/update", headers=h, json=body, timeout=120)
                r.raise_for_status()
            except httpx.HTTPError as exc:
                tally.error(f"report {type(exc).__name__}")
                await asyncio.sleep(0.5)
                continue
            tally.report_s.append(time.perf_counter() - t)
            tally.ignored += len(r.json()["ignored"])
            tally.reported[job["id"]] = result
            tally.last = time.monotonic()
            next_beat = tally.last + interval
            break


class RssSampler(threading.Thread):
    """The server's RSS (MB) every ``every`` seconds, and its CPU seconds at the end."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.cpu0 = sum(self.proc.cpu_times()[:2])

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - t0, self.proc.memory_info().rss / 1e6))
            self.stop.wait(self.every)

    def cpu_s(self) -> float:
        return sum(self.proc.cpu_times()[:2]) - self.cpu0


async def drive(url: str, tokens: dict[str, str], n_pilots: int, task: int, n_jobs: int,
                user_token: str, job_s: float, limit_s: float) -> Tally:
    tally = Tally()
    done = asyncio.Event()
    sites = list(tokens)
    tls = ssl.create_default_context()
    async with httpx.AsyncClient(base_url=url, timeout=60, verify=tls) as client:
        pilots = [asyncio.create_task(pilot(url, sites[i % len(sites)],
                                            tokens[sites[i % len(sites)]], i, tally, done,
                                            job_s, tls))
                  for i in range(n_pilots)]
        uh = {"Authorization": f"Bearer {user_token}"}
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            dead = [p for p in pilots if p.done() and p.exception() is not None]
            if dead:
                raise RuntimeError(f"{len(dead)} pilot(s) died: {dead[0].exception()!r}")
            if len(tally.reported) >= n_jobs:
                info = (await client.get(f"/api/tasks/{task}", headers=uh)).json()
                if info["state"] in TASK_FINAL:  # done, or finished with jobs lost
                    break
        else:
            tally.error("run did not end in time")
        done.set()
        await asyncio.gather(*pilots, return_exceptions=True)
    return tally


def check(lab, task: int, n_jobs: int, tally: Tally, complete: bool) -> list[str]:
    """The correctness checks; what failed, in words (empty: all held).  A run cut short
    (``complete`` false) is checked for what it did: nothing handed out twice, no index
    with two attempts, each stored result the one reported."""
    bad = [] if complete else ["the run did not end within --limit-s"]
    if len(tally.dispatched) != len(set(tally.dispatched)):
        bad.append(f"{len(tally.dispatched) - len(set(tally.dispatched))} job attempt(s) "
                   f"handed out twice")
    attempts = lab.jobs(task, all_attempts=True)
    indices = [a["job_index"] for a in attempts]
    if len(indices) != len(set(indices)):
        bad.append(f"{len(indices) - len(set(indices))} job(s) with a second attempt "
                   f"(a retry: a pilot's job given up on)")
    rows = lab.api.get(f"/api/tasks/{task}/results")
    wrong = [r["job_id"] for r in rows
             if tally.reported.get(r["job_id"]) != base64.b64decode(r["data"])]
    if wrong:
        bad.append(f"{len(wrong)} result(s) differ from what their pilot reported")
    if len(rows) != len(tally.reported):
        bad.append(f"{len(rows)} results stored for {len(tally.reported)} reported")
    if complete:
        if sorted(indices) != list(range(n_jobs)):
            bad.append("the attempts' job indices are not 0..M-1 once each")
        not_finished = [a["id"] for a in attempts if a["state"] != "finished"]
        if not_finished:
            bad.append(f"{len(not_finished)} attempt(s) not finished, e.g. {not_finished[:3]}")
        if len(rows) != n_jobs:
            bad.append(f"{len(rows)} results for {n_jobs} jobs")
    return bad


def run_one(n_pilots: int, n_jobs: int, db: str | None, args) -> dict:
    from harness import ServerProcess

    from panda_lab.server.config import ServerConfig
    from panda_lab.store import Store

    home = Path(tempfile.mkdtemp(prefix="panda-bench-scale-"))
    sites = [f"SCALE-{i}" for i in range(args.sites)]
    (home / "sites.toml").write_text("".join(
        f'[sites.{s}]\nkind = "grid"\nprovisioner = "local"\npilots = 0\n\n' for s in sites))
    server = ServerProcess(home, db_url=db, extra=[
        "--sites", str(home / "sites.toml"), "--no-pilots", *REAL]).start(timeout=120)
    try:
        cfg = ServerConfig(home=home, db_url=db)
        store = Store(cfg.database_url, cfg.result_dir)
        try:
            tokens = store.site_pilot_tokens(sites)
        finally:
            store.close()
        lab = server.lab()
        rss = RssSampler(server.proc.pid)
        rss.start()
        t = time.perf_counter()
        task = lab.submit(noop, [(i,) for i in range(n_jobs)], name="scale", retries=0)
        submit_s = time.perf_counter() - t
        me = psutil.Process()
        cpu_me = sum(me.cpu_times()[:2])
        tally = asyncio.run(drive(server.info["url"], tokens, n_pilots, task, n_jobs,
                                  server.info["user_token"], args.job_s, args.limit_s))
        rss.stop.set()
        rss.join()
        server_cpu = rss.cpu_s()
        cpu_me = sum(me.cpu_times()[:2]) - cpu_me
        bad = check(lab, task, n_jobs, tally, "run did not end in time" not in tally.errors)
        mb = [m for _, m in rss.samples]
        wall = (tally.last - tally.first) if tally.first else float("nan")
        out = {
            "db": "postgresql" if db else "sqlite", "pilots": n_pilots, "jobs": n_jobs,
            "sites": args.sites, "job_s": args.job_s,
            "submit_s": submit_s, "wall_s": wall, "reported": len(tally.reported),
            "dispatch_per_s": len(tally.reported) / wall,
            "acquire_ms": {q: pct(tally.acquire_s, v) * 1e3
                           for q, v in (("p50", .5), ("p95", .95), ("p99", .99))},
            "report_ms": {q: pct(tally.report_s, v) * 1e3
                          for q, v in (("p50", .5), ("p95", .95), ("p99", .99))},
            "heartbeat_ms_p95": pct(tally.heartbeat_s, .95) * 1e3,
            "heartbeats": len(tally.heartbeat_s), "errors": tally.errors,
            # a report sent again after a lost reply is ignored (already finished): shown
            "ignored_reports": tally.ignored,
            "server_rss_mb": {"start": mb[0], "max": max(mb), "end": mb[-1]},
            "server_cpu_s": server_cpu, "bench_cpu_s": cpu_me,
            "rss_series": rss.samples[:: max(1, len(rss.samples) // 20)],
            "failed_checks": bad,
        }
        lab.close()
        return out
    finally:
        server.stop()


def show(r: dict) -> None:
    a, p, m = r["acquire_ms"], r["report_ms"], r["server_rss_mb"]
    print(f"{r['db']:<10} {r['pilots']:>6,} pilots {r['jobs']:>8,} jobs "
          f"({r['reported']:,} reported): "
          f"{r['dispatch_per_s']:7.0f} jobs/s over {r['wall_s']:6.1f} s "
          f"(submit {r['submit_s']:.1f} s)\n"
          f"  acquire p50/p95/p99 {a['p50']:7.0f} {a['p95']:7.0f} {a['p99']:7.0f} ms   "
          f"report p50/p95/p99 {p['p50']:7.0f} {p['p95']:7.0f} {p['p99']:7.0f} ms\n"
          f"  heartbeats {r['heartbeats']} (p95 {r['heartbeat_ms_p95']:.0f} ms)  "
          f"errors {r['errors'] or 'none'}  ignored reports {r['ignored_reports']}\n"
          f"  server RSS start/max/end {m['start']:.0f}/{m['max']:.0f}/{m['end']:.0f} MB  "
          f"server CPU {r['server_cpu_s']:.0f} s  bench CPU {r['bench_cpu_s']:.0f} s\n"
          f"  checks: {'; '.join(r['failed_checks']) or 'all held'}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pilots", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--ramp", help="comma-separated pilot counts, run one after another")
    ap.add_argument("--sites", type=int, default=2, help="sites the pilots are spread over")
    ap.add_argument("--db", help="'postgresql' (a throwaway one, as the tests make) or a "
                                 "database URL; default: SQLite in the server's home")
    ap.add_argument("--job-s", type=float, default=0.001, help="each job's 'run' (a sleep)")
    ap.add_argument("--limit-s", type=float, default=1800, help="give up a run after this")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    pg = None
    db = args.db
    if db == "postgresql":
        from pg import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            print("no PostgreSQL programs (initdb, pg_ctl) on this machine", file=sys.stderr)
            return 2
        pg = PostgresServer(bindir)
        pg.start()
    results = []
    try:
        for n in ([int(x) for x in args.ramp.split(",")] if args.ramp else [args.pilots]):
            url = pg.new_database() if pg is not None else db
            r = run_one(n, args.jobs, url, args)
            show(r)
            results.append(r)
    finally:
        if pg is not None:
            pg.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(r["failed_checks"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
