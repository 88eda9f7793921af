"""The simulation: a scenario's workload run in virtual time through the model's own
splitter (:mod:`panda_lab.model.splitter`) and brokerage
(:func:`~panda_lab.model.brokerage.choose`), learning links with
:func:`~panda_lab.model.network.observe` as the server does.

Each site's slots start taking its queued jobs, in order, when its pilots start
(``pilot_delay_s``); a job reads its input (its own endpoint's replica if it has one,
else the replica brokerage chose, else the one whose link is believed best) and computes
(events / the slot's speed, plus the site's ``job_start_s``); it fails at its end
with the site's failure rate and is brokered again avoiding that site, up to
``max_attempts``.  A site with a stage-in cache (``cache_mb``) works as the pilot's
(:mod:`panda_lab.sim.cache`): a file the cache holds is read there; a job brokerage told
to stage in copies each file whole over the link first (one request), and a job over a
file another job at the site is copying waits for that copy (the pilot's cache lock;
copies of different files are not serialised here as that lock does); cache reads are
metered as ``(cache) -> SITE``, and brokerage learns what a cache holds from each job's
report at its end.

Link contention, simply: a remote read on a link gets its throughput divided by the reads
on it when it starts (itself included), for its whole length.  Later reads do not slow
earlier ones down; that keeps each read one event.  Reads of a site's own endpoint are
not shared (``local_mbps`` per job: a site's storage is sized for its slots) and take
one event with the compute.

What brokerage sees is what the server would know: the site's slots, its queued and
running jobs, the jobs reading over each link, its slot rate and failure rate measured
from the jobs it ran (smoothed, the first job sets them), the mean job time, and the
links learned from each read (the declared links and the prior before that).  Jobs are
brokered in bulk when a task is submitted (``queue_limit = 0``, as the server does today)
or in chunks that keep at most ``queue_limit`` of the task's jobs queued (JEDI's job
throttle), so later chunks are placed on what the earlier ones taught.

The loop is a plain heap of ``(time, sequence, callback, args)``, not SimPy, because
SimPy was measurably too slow for the 100,000-job scenario over 20 sites
(``scenarios/hundred-thousand.toml``, policy ``network``): the same model as SimPy
processes (a process per slot, a ``Store`` per site queue, a timeout per read and per
compute) took 9.6-12.0 s of CPU per run on this machine, the heap 6.3-6.9 s, of which
brokerage about 3 s (wall time on this shared machine, load average ~12 on 2 cores, was
3-5 times the CPU time).  Since then brokerage weighs again only the site a placement
changed, jobs are made when released and the loop runs with the cyclic garbage collector
off: ``panda-lab simulate`` of that scenario takes 2.7-3.2 s of CPU (it took 6.0-6.3),
brokerage 6 us a placement (28).  Events at the same time run in the order they were
scheduled.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from panda_lab.model import splitter
from panda_lab.model.brokerage import Policy, Request, SiteLoad, choose
from panda_lab.model.network import WINDOW_S, Link, LinkEstimate, effective, observe
from panda_lab.model.staging import CACHE_ENDPOINT, Access
from panda_lab.sim.cache import Event, SimCache, known
from panda_lab.sim.scenario import Scenario, SiteSpec, TaskSpec

#: Smoothing of a site's measured slot rate, failure rate and job time.
SITE_ALPHA = 0.1


@dataclass
class Job:
    task: TaskRun
    index: int
    chunks: list[dict]
    events: int
    #: endpoint -> bytes of the job's input held there
    input_bytes: dict[str, int]
    #: (file name, bytes read of it, endpoints holding it, bytes of the whole file)
    reads: list[tuple[str, int, tuple[str, ...], int]]
    attempt: int = 1
    site: str = ""
    #: the endpoint brokerage chose for its remote reads (None: all local)
    read_from: str | None = None
    request: Request | None = None
    queued_at: float = 0.0
    #: how brokerage said the job reads what is not at its site (an ``Access`` value)
    access: str = ""
    #: what the attempt did to its site's cache, reported at its end
    cache_events: list[Event] = field(default_factory=list)


@dataclass
class TaskRun:
    spec: TaskSpec
    files: list[splitter.SplitFile]
    specs: dict[str, tuple]
    #: jobs split but not yet brokered, as ``(index, chunks)``: each becomes a
    #: :class:`Job` when it is released (a bulk of 100,000 made at once kept the garbage
    #: collector rescanning them: a third of the run's time)
    pending: collections.deque[tuple[int, list[dict]]] = field(
        default_factory=collections.deque)
    queued: int = 0
    running_jobs: int = 0
    left: int = 0
    scouting: list[dict] | None = None
    #: called when ``left`` reaches 0 (the scouts are done)
    on_done: Callable[[], None] | None = None


@dataclass
class Result:
    """One policy's run: ``makespan_s`` (last job's end), ``bytes_by_link``
    (``"ENDPOINT -> SITE"`` -> bytes read), ``utilisation`` (site -> busy slot seconds /
    (slots x makespan)), ``mean_wait_s`` (queued to started, over attempts), ``jobs``,
    ``attempts``, ``failed`` (jobs out of attempts), ``remote_bytes`` (read from another
    site's endpoint), ``jobs_by_site``, ``broker_us_per_job`` (CPU time of
    :func:`~panda_lab.model.brokerage.choose` per placement) and ``learned_links``
    (``"ENDPOINT -> SITE"`` -> MB/s at the end)."""

    policy: str
    makespan_s: float
    bytes_by_link: dict[str, int]
    utilisation: dict[str, float]
    mean_wait_s: float
    jobs: int
    attempts: int
    failed: int
    remote_bytes: int
    jobs_by_site: dict[str, int]
    broker_us_per_job: float
    learned_links: dict[str, float]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Simulation:
    """One run of a scenario under one brokerage policy; :meth:`run` gives the
    :class:`Result`.  The same scenario, policy and seed give the same result."""

    def __init__(self, scenario: Scenario, policy: Policy | str, seed: int | None = None):
        self.sc = scenario
        self.policy = Policy(policy)
        seed = scenario.seed if seed is None else seed
        self.rng = random.Random(seed)
        self.fail_rng = random.Random(seed + 1)
        self.now = 0.0
        self.heap: list[tuple[float, int, Callable, tuple]] = []
        self.seq = 0
        self.sites = {s.name: s for s in scenario.sites}
        self.loads = [SiteLoad(s.name, "sim", "online", capacity=s.slots, endpoint=s.endpoint,
                               cache_bytes=s.cache_bytes) for s in scenario.sites]
        #: the stage-in caches (sites with one), and what the server would believe they
        #: hold (from the jobs' reports)
        self.caches = {s.name: SimCache(s.cache_bytes) for s in scenario.sites
                       if s.cache_bytes}
        self.held: dict[str, set[str]] = {name: set() for name in self.caches}
        #: (site, file) being copied into the site's cache -> the jobs waiting for it
        self.copying: dict[tuple[str, str], list[tuple]] = {}
        self.load = {s.name: s for s in self.loads}
        self.queues: dict[str, collections.deque[Job]] = {
            s.name: collections.deque() for s in scenario.sites}
        #: idle slots of each site (0 until its pilots start)
        self.idle = {s.name: 0 for s in scenario.sites}
        self.declared = {k: Link(v.endpoint, v.site, v.mbps, v.latency_ms, source="declared")
                         for k, v in scenario.links.items() if v.declared}
        self.estimates: dict[tuple[str, str], LinkEstimate] = {}
        self.view: dict[tuple[str, str], Link] = dict(self.declared)
        self.view_at = 0.0
        self.true = {(e, s.name): scenario.link(e, s) for s in scenario.sites
                     for e in scenario.endpoints}
        self.active: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.busy: collections.Counter = collections.Counter()
        self.by_site: collections.Counter = collections.Counter()
        self.waits = 0.0
        self.attempts = self.failed = self.jobs = self.remote = 0
        self.broker_s = 0.0
        self.brokered = 0
        self.last_end = 0.0

    # ---- brokerage -------------------------------------------------------------------
    def _links(self) -> dict[tuple[str, str], Link]:
        now = self.now
        if now - self.view_at > WINDOW_S / 10:  # let old estimates age now and then
            self.view_at = now
            for k, e in self.estimates.items():
                self.view[k] = effective(e, self.declared.get(k), now)
        return self.view

    def _broker(self, jobs: list[Job], avoid: str | None = None) -> None:
        if avoid:
            for j in jobs:
                j.request = replace(j.request, avoid=j.request.avoid | {avoid})
        reqs = [j.request for j in jobs]
        t = time.process_time()
        choices = choose(reqs, self.loads, self.rng, links=self._links(), policy=self.policy,
                         now=self.now, record=False)
        self.broker_s += time.process_time() - t
        self.brokered += len(jobs)
        now = self.now
        for j, c in zip(jobs, choices, strict=True):
            j.site, j.queued_at, j.read_from = c.site, now, c.info.get("read_from")
            j.access = c.info.get("access", "")
            j.task.queued += 1
            self.queues[c.site].append(j)   # choose counted it in the site's queued
            if self.idle[c.site]:
                self.at(now, self._dispatch, self.sites[c.site])

    def _release(self, task: TaskRun) -> None:
        limit = task.spec.queue_limit
        if not task.pending or (limit and task.queued > limit // 2):
            return
        n = len(task.pending) if not limit else min(len(task.pending), limit - task.queued)
        self._broker(self._jobs(task, [task.pending.popleft() for _ in range(n)]))

    # ---- the workload ------------------------------------------------------------------
    def _jobs(self, task: TaskRun, chunks_list: Iterable[tuple[int, list[dict]]]
              ) -> list[Job]:
        """The jobs of ``task`` for ``(index, chunks)`` pairs."""
        out = []
        for i, chunks in chunks_list:
            input_bytes: dict[str, int] = {}
            reads = []
            for c in chunks:
                name, nbytes, events, replicas = task.specs[c["path"]]
                b = nbytes * (c["stop"] - c["start"]) // max(events, 1)
                reads.append((name, b, replicas, nbytes))
                for e in replicas:
                    input_bytes[e] = input_bytes.get(e, 0) + b
            events = sum(c["stop"] - c["start"] for c in chunks)
            spec = task.spec
            out.append(Job(task, i, chunks, events, input_bytes, reads, request=Request(
                sites=spec.sites, events=events, input_bytes=input_bytes,
                near=frozenset(input_bytes), read_requests=spec.read_requests * len(reads),
                files=tuple(dict.fromkeys(r[0] for r in reads)),
                file_bytes=sum({r[0]: r[3] for r in reads}.values()))))
        return out

    def _submit(self, spec: TaskSpec) -> None:
        files = self.sc.datasets[spec.dataset]
        task = TaskRun(spec, [{"file_index": i, "path": f.name, "tree": "Events",
                               "entries": f.events, "clusters": list(f.clusters)}
                              for i, f in enumerate(files)],
                       {f.name: (f.name, f.nbytes, f.events, f.replicas) for f in files})
        rule = splitter.SplitRule(mode=spec.split, events_per_job=spec.events_per_job,
                                  files_per_job=spec.files_per_job,
                                  target_job_seconds=spec.target_job_seconds)
        if spec.split != "auto":
            self._add(task, splitter.split_all(task.files, rule))
            return
        scouts = self._jobs(task, enumerate(splitter.scouts(task.files, rule)))
        task.scouting = []
        task.left = len(scouts)

        def scouted() -> None:  # JEDI: the scouts' measures size the remaining jobs
            size = splitter.size_from_scouts(task.scouting, spec.target_job_seconds)
            task.scouting, task.on_done = None, None
            self._add(task, splitter.remaining(task.files, [c for j in scouts
                                                            for c in j.chunks],
                                               size.events_per_job))

        task.on_done = scouted
        self._broker(scouts)

    def _add(self, task: TaskRun, chunks: list[list[dict]]) -> None:
        task.left += len(chunks)
        task.pending.extend(enumerate(chunks))
        self._release(task)

    # ---- the sites ---------------------------------------------------------------------
    def _plan(self, job: Job, site: SiteSpec
              ) -> tuple[int, int, list[tuple[str, int, str | None]]]:
        """Where a job at ``site`` reads its input: ``(local bytes, cached bytes,
        [(endpoint, bytes, file copied whole into the cache or None)])``: its own
        endpoint's replica, else the site's cache (a hit, or a copy made first where
        brokerage said stage-in and the file fits), else remotely from the replica
        brokerage chose, else from the one whose link is believed best."""
        local = cached = 0
        remote: dict[str, int] = {}
        staged: list[tuple[str, int, str | None]] = []
        cache = self.caches.get(site.name)
        for name, b, replicas, size in job.reads:
            if site.endpoint in replicas:
                local += b
                continue
            if cache is not None and (cache.lookup(name, job.cache_events) or any(
                    f == name for _, _, f in staged)):
                cached += b
                continue
            if job.read_from in replicas:
                ep = job.read_from
            else:
                view, sname = self.view, site.name
                ep = max(replicas, key=lambda e: (view[(e, sname)].mbps
                                                  if (e, sname) in view else 0.0))
            if cache is not None and job.access == Access.STAGE_IN and cache.fits(size):
                staged.append((ep, size, name))
                cached += b
                continue
            remote[ep] = remote.get(ep, 0) + b
        return local, cached, [(ep, b, None) for ep, b in remote.items()] + staged

    def at(self, t: float, fn: Callable, *args) -> None:
        """Call ``fn(*args)`` at virtual time ``t``."""
        heapq.heappush(self.heap, (t, self.seq, fn, args))
        self.seq += 1

    def _open(self, site: SiteSpec) -> None:
        self.idle[site.name] = site.slots
        self._dispatch(site)

    def _dispatch(self, site: SiteSpec) -> None:
        """Start the site's queued jobs on its idle slots."""
        queue, name = self.queues[site.name], site.name
        while self.idle[name] and queue:
            self.idle[name] -= 1
            self._start(queue.popleft(), site)

    def _start(self, job: Job, site: SiteSpec) -> None:
        load, task, now = self.load[site.name], job.task, self.now
        load.queued -= 1
        load.running += 1
        task.queued -= 1
        self.waits += now - job.queued_at
        self.attempts += 1
        self._release(task)
        local, cached, parts = self._plan(job, site)
        self._next_read(job, site, now, (local, cached), parts)

    def _next_read(self, job: Job, site: SiteSpec, start: float, local: tuple[int, int],
                   parts: list[tuple[str, int, str | None]]) -> None:
        """Read the next remote part over its link (or copy the next file whole into the
        site's cache: one request), or go on to the local part and the compute when none
        is left; ``local`` is (bytes read from the site's endpoint, from its cache)."""
        if not parts:
            self._compute(job, site, start, local)
            return
        ep, b, name = parts.pop()
        if name is not None:
            waiting = self.copying.get((site.name, name))
            if waiting is not None:  # another job is copying it: the pilot's cache lock
                waiting.append((job, site, start, local, parts))   # waits for that copy
                return
            if self.caches[site.name].lookup(name, job.cache_events):  # copied meanwhile
                self._next_read(job, site, start, local, parts)
                return
            self.copying[(site.name, name)] = []
        key = (ep, site.name)
        true = self.true[key]
        self.active[key] += 1
        requests = job.task.spec.read_requests * len(job.reads) if name is None else 1
        dur = b / (true.mbps * 1e6 / self.active[key]) + requests * true.latency_ms / 1e3
        self.at(self.now + dur, self._read_done, job, site, start, local, parts, key, b, dur,
                requests, name)

    def _read_done(self, job: Job, site: SiteSpec, start: float, local: tuple[int, int],
                   parts: list, key: tuple[str, str], b: int, dur: float,
                   requests: int, name: str | None) -> None:
        self.active[key] -= 1
        self.bytes[key] += b
        self.remote += b
        est = self.estimates.get(key) or LinkEstimate(key[0], key[1])
        self.estimates[key] = est = observe(est, b, dur, requests, self.now)
        self.view[key] = effective(est, self.declared.get(key), self.now)
        if name is not None:  # the copy is kept (the pilot meters it as the link's read)
            cache = self.caches[site.name]
            cache.stage(name, b, job.cache_events)
            for waiter in self.copying.pop((site.name, name)):
                cache.lookup(name, waiter[0].cache_events)
                self._next_read(*waiter)
        self._next_read(job, site, start, local, parts)

    def _compute(self, job: Job, site: SiteSpec, start: float,
                 reads: tuple[int, int]) -> None:
        if job.read_from is not None:
            self.load[site.name].readers[job.read_from] -= 1
        # local reads (the site's endpoint, its cache) are not shared: a site's storage
        # is sized for its slots
        local, cached = reads
        local_s = 0.0
        if local or cached:
            local_s = (local + cached) / (site.local_mbps * 1e6) + \
                job.task.spec.read_requests * len(job.reads) * site.local_latency_ms / 1e3
            if local:
                self.bytes[(site.endpoint, site.name)] += local
            if cached:
                self.bytes[(CACHE_ENDPOINT, site.name)] += cached
        compute_s = job.events / site.speed + site.job_start_s
        self.at(self.now + local_s + compute_s, self._end, job, site, start, compute_s)

    def _end(self, job: Job, site: SiteSpec, start: float, compute_s: float) -> None:
        load, task, now = self.load[site.name], job.task, self.now
        load.running -= 1
        self.idle[site.name] += 1
        took = now - start
        self.busy[site.name] += took
        self.by_site[site.name] += 1
        failed = self.fail_rng.random() < site.failure_rate
        a = SITE_ALPHA
        load.failure_rate = (1 - a) * load.failure_rate + a * failed
        if job.events:
            rate = job.events / (compute_s - site.job_start_s)
            load.slot_rate = rate if load.slot_rate is None else \
                (1 - a) * load.slot_rate + a * rate
        load.mean_job_s = took if load.mean_job_s is None else \
            (1 - a) * load.mean_job_s + a * took
        if job.cache_events:  # the report tells the server what the cache holds now
            held = self.held[site.name]
            known(held, job.cache_events)
            load.cached = frozenset(held)
            job.cache_events = []
        if failed and job.attempt < task.spec.max_attempts:
            job.attempt += 1
            self._broker([job], avoid=site.name)
        else:
            if task.scouting is not None and not failed:  # a scout's measure, as JEDI's
                task.scouting.append({"events": job.events, "seconds": took,
                                      "rss_mb": None, "site": site.name})
            self.failed += failed
            self.jobs += 1
            task.left -= 1
            if now > self.last_end:
                self.last_end = now
            if task.left == 0 and task.on_done is not None:
                task.on_done()
        self._dispatch(site)

    def run(self) -> Result:
        for s in self.sc.sites:
            self.at(s.pilot_delay_s, self._open, s)
        for t in self.sc.tasks:
            self.at(t.submit_at, self._submit, t)
        heap, pop = self.heap, heapq.heappop
        with _collector_paused():
            while heap:
                self.now, _, fn, args = pop(heap)
                fn(*args)
        span = self.last_end
        return Result(
            str(self.policy), round(span, 1),
            {f"{e} -> {s}": b for (e, s), b in sorted(self.bytes.items())},
            {s.name: round(self.busy[s.name] / (s.slots * span), 3) if span else 0.0
             for s in self.sc.sites},
            round(self.waits / self.attempts, 1) if self.attempts else 0.0,
            self.jobs, self.attempts, self.failed, self.remote, dict(self.by_site),
            round(self.broker_s / max(self.brokered, 1) * 1e6, 1),
            {f"{k[0]} -> {k[1]}": round(v.mbps, 1) for k, v in sorted(self.view.items())
             if v.source == "learned"})


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector off while the loop runs, then as it was.

    Why: the loop allocates some ten objects per job (its chunks, request, events) that
    live until the job ends, and the collector's passes rescan every live one: a third
    of the CPU time of the 100,000-job scenario.  The loop makes no reference cycles
    that outlive their use (jobs point to their task, which lives to the end anyway), so
    reference counting frees what it drops; anything cyclic is collected once the
    collector is back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def simulate(scenario: Scenario, policies: list[Policy | str] | None = None,
             seed: int | None = None) -> list[Result]:
    """Each policy's :class:`Result` (default: the scenario's ``policies``), in order."""
    return [Simulation(scenario, p, seed).run() for p in (policies or scenario.policies)]
