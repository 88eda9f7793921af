"""The simulation: a scenario's workload run in virtual time through the model's own
splitter (:mod:`panda_lab.model.splitter`) and brokerage
(:func:`~panda_lab.model.brokerage.choose`), learning links with
:func:`~panda_lab.model.network.observe` as the server does.

A discrete-event loop on SimPy: each slot of a site is a process that waits for its
pilot to start (``pilot_delay_s``), then takes the site's queued jobs in order, reads
their input (its own endpoint's replica if it has one, else the replica whose link is
believed best) and computes (events / the slot's speed, plus the brokerage's
``JOB_START_S``); a job fails at its end with the site's failure rate and is brokered
again avoiding that site, up to ``max_attempts``.

Link contention, simply: a remote read on a link gets its throughput divided by the reads
on it when it starts (itself included), for its whole length.  Later reads do not slow
earlier ones down; that keeps each read one timeout.  Reads of a site's own endpoint are
not shared (``local_mbps`` per job: a site's storage is sized for its slots) and take
one timeout with the compute.

What brokerage sees is what the server would know: the site's slots, its queued and
running jobs, its slot rate and failure rate measured from the jobs it ran (smoothed,
the first job sets them), the mean job time, and the links learned from each read (the
declared links and the prior before that).  Jobs are brokered in bulk when a task is
submitted (``queue_limit = 0``, as the server does today) or in chunks that keep at most
``queue_limit`` of the task's jobs queued (JEDI's job throttle), so later chunks are
placed on what the earlier ones taught.

Speed: 100,000 jobs over 20 sites (``scenarios/hundred-thousand.toml``) take about
8 s per policy here (SimPy, brokerage without records); see ``benchmarks/bench_brokerage.py``.
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass, field, replace

import simpy

from panda_lab.model import splitter
from panda_lab.model.brokerage import JOB_START_S, Policy, Request, SiteLoad, choose
from panda_lab.model.network import WINDOW_S, Link, LinkEstimate, effective, observe
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
    #: (file name, bytes read of it, endpoints holding it)
    reads: list[tuple[str, int, tuple[str, ...]]]
    attempt: int = 1
    site: str = ""
    #: the endpoint brokerage chose for its remote reads (None: all local)
    read_from: str | None = None
    request: Request | None = None
    queued_at: float = 0.0


@dataclass
class TaskRun:
    spec: TaskSpec
    files: list[splitter.SplitFile]
    specs: dict[str, tuple]
    pending: collections.deque = field(default_factory=collections.deque)
    queued: int = 0
    running_jobs: int = 0
    left: int = 0
    scouting: list[dict] | None = None
    done: simpy.Event | None = None


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
        self.env = simpy.Environment()
        self.sites = {s.name: s for s in scenario.sites}
        self.loads = [SiteLoad(s.name, "sim", "online", capacity=s.slots, endpoint=s.endpoint)
                      for s in scenario.sites]
        self.load = {s.name: s for s in self.loads}
        self.queues = {s.name: simpy.Store(self.env) for s in scenario.sites}
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
        now = self.env.now
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
                         now=self.env.now, record=False)
        self.broker_s += time.process_time() - t
        self.brokered += len(jobs)
        now = self.env.now
        for j, c in zip(jobs, choices, strict=True):
            j.site, j.queued_at, j.read_from = c.site, now, c.info.get("read_from")
            j.task.queued += 1
            self.queues[c.site].put(j)   # choose counted it in the site's queued

    def _release(self, task: TaskRun) -> None:
        limit = task.spec.queue_limit
        if not task.pending or (limit and task.queued > limit // 2):
            return
        n = len(task.pending) if not limit else min(len(task.pending), limit - task.queued)
        self._broker([task.pending.popleft() for _ in range(n)])

    # ---- the workload ------------------------------------------------------------------
    def _jobs(self, task: TaskRun, chunks_list: list[list[dict]]) -> list[Job]:
        out = []
        for i, chunks in enumerate(chunks_list):
            input_bytes: dict[str, int] = {}
            reads = []
            for c in chunks:
                name, nbytes, events, replicas = task.specs[c["path"]]
                b = nbytes * (c["stop"] - c["start"]) // max(events, 1)
                reads.append((name, b, replicas))
                for e in replicas:
                    input_bytes[e] = input_bytes.get(e, 0) + b
            events = sum(c["stop"] - c["start"] for c in chunks)
            spec = task.spec
            out.append(Job(task, i, chunks, events, input_bytes, reads, request=Request(
                sites=spec.sites, events=events, input_bytes=input_bytes,
                near=frozenset(input_bytes), read_requests=spec.read_requests * len(reads))))
        return out

    def _task(self, spec: TaskSpec):
        yield self.env.timeout(spec.submit_at)
        files = self.sc.datasets[spec.dataset]
        task = TaskRun(spec, [{"file_index": i, "path": f.name, "tree": "Events",
                               "entries": f.events, "clusters": list(f.clusters)}
                              for i, f in enumerate(files)],
                       {f.name: (f.name, f.nbytes, f.events, f.replicas) for f in files})
        rule = splitter.SplitRule(mode=spec.split, events_per_job=spec.events_per_job,
                                  files_per_job=spec.files_per_job,
                                  target_job_seconds=spec.target_job_seconds)
        if spec.split == "auto":
            scouts = self._jobs(task, splitter.scouts(task.files, rule))
            task.scouting = []
            task.done = self.env.event()
            task.left = len(scouts)
            self._broker(scouts)
            yield task.done
            size = splitter.size_from_scouts(task.scouting, spec.target_job_seconds)
            chunks = splitter.remaining(task.files, [c for j in scouts for c in j.chunks],
                                        size.events_per_job)
            task.scouting = None
        else:
            chunks = splitter.split_all(task.files, rule)
        jobs = self._jobs(task, chunks)
        task.left += len(jobs)
        task.pending.extend(jobs)
        self._release(task)

    # ---- the sites ---------------------------------------------------------------------
    def _plan(self, job: Job, site: SiteSpec) -> tuple[int, dict[str, int]]:
        """Where a job at ``site`` reads its input: ``(local bytes, {endpoint: bytes})``:
        its own endpoint's replica, else the one brokerage chose, else the replica whose
        link is believed best."""
        local, remote = 0, {}
        for _name, b, replicas in job.reads:
            if site.endpoint in replicas:
                local += b
                continue
            if job.read_from in replicas:
                ep = job.read_from
            else:
                view, name = self.view, site.name
                ep = max(replicas, key=lambda e: (view[(e, name)].mbps
                                                  if (e, name) in view else 0.0))
            remote[ep] = remote.get(ep, 0) + b
        return local, remote

    def _read_remote(self, job: Job, site: SiteSpec, remote: dict[str, int]):
        """Read the remote part over the links (timeouts), learning each link."""
        requests = job.task.spec.read_requests * len(job.reads)
        for ep, b in remote.items():
            key = (ep, site.name)
            true = self.true[key]
            self.active[key] += 1
            dur = b / (true.mbps * 1e6 / self.active[key]) + requests * true.latency_ms / 1e3
            yield self.env.timeout(dur)
            self.active[key] -= 1
            self.bytes[key] += b
            self.remote += b
            est = self.estimates.get(key) or LinkEstimate(ep, site.name)
            self.estimates[key] = est = observe(est, b, dur, requests, self.env.now)
            self.view[key] = effective(est, self.declared.get(key), self.env.now)

    def _slot(self, site: SiteSpec):
        env, load, queue = self.env, self.load[site.name], self.queues[site.name]
        own = (site.endpoint, site.name)
        yield env.timeout(site.pilot_delay_s)
        while True:
            job: Job = yield queue.get()
            task = job.task
            load.queued -= 1
            load.running += 1
            task.queued -= 1
            self.waits += env.now - job.queued_at
            self.attempts += 1
            self._release(task)
            start = env.now
            local, remote = self._plan(job, site)
            if remote:
                yield from self._read_remote(job, site, remote)
            if job.read_from is not None:
                load.readers[job.read_from] -= 1
            # local reads are not shared: a site's storage is sized for its slots
            local_s = 0.0
            if local:
                local_s = local / (site.local_mbps * 1e6) + \
                    task.spec.read_requests * len(job.reads) * site.local_latency_ms / 1e3
                self.bytes[own] += local
            compute_s = job.events / site.speed + JOB_START_S
            yield env.timeout(local_s + compute_s)
            load.running -= 1
            took = env.now - start
            self.busy[site.name] += took
            self.by_site[site.name] += 1
            failed = self.fail_rng.random() < site.failure_rate
            a = SITE_ALPHA
            load.failure_rate = (1 - a) * load.failure_rate + a * failed
            if job.events:
                rate = job.events / (compute_s - JOB_START_S)
                load.slot_rate = rate if load.slot_rate is None else \
                    (1 - a) * load.slot_rate + a * rate
            load.mean_job_s = took if load.mean_job_s is None else \
                (1 - a) * load.mean_job_s + a * took
            if failed and job.attempt < task.spec.max_attempts:
                job.attempt += 1
                self._broker([job], avoid=site.name)
                continue
            if task.scouting is not None and not failed:  # a scout's measure, as JEDI's
                task.scouting.append({"events": job.events, "seconds": took,
                                      "rss_mb": None, "site": site.name})
            self.failed += failed
            self.jobs += 1
            task.left -= 1
            if env.now > self.last_end:
                self.last_end = env.now
            if task.done is not None and not task.done.triggered and task.left == 0:
                task.done.succeed()

    def run(self) -> Result:
        for s in self.sc.sites:
            for _ in range(s.slots):
                self.env.process(self._slot(s))
        for t in self.sc.tasks:
            self.env.process(self._task(t))
        self.env.run()
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


def simulate(scenario: Scenario, policies: list[Policy | str] | None = None,
             seed: int | None = None) -> list[Result]:
    """Each policy's :class:`Result` (default: the scenario's ``policies``), in order."""
    return [Simulation(scenario, p, seed).run() for p in (policies or scenario.policies)]
