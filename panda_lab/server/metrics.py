"""``/metrics``: the server in Prometheus' text format, made with the Prometheus client
library, metric names in the style of Dask's exporter (``dask_scheduler_tasks{state}``
there, ``panda_lab_jobs{state,site}`` here).

Two sources, by the rule of Prometheus' instrumentation guide: what the store holds
(jobs, tasks, pilots, heartbeats) is read at scrape time by a custom collector, one
grouped SQL query each, never counted beside the store where the two could drift;
what happens (dispatches, reports, brokerage rounds) is counted as it happens, in
counters and a histogram, and Prometheus makes rates of them with ``rate()``.

The thread rule (:mod:`panda_lab.store.base`) holds: a scrape is served on the event
loop, which owns the store; a collection asked from any other thread goes through
``Server.db_from_thread``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Counter_
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from panda_lab.model import JobState, PilotState, TaskState
from panda_lab.model.brokerage import Choice, Request, SiteLoad
from panda_lab.store.base import Broker

if TYPE_CHECKING:
    from panda_lab.server.app import Server
    from panda_lab.store.rows.metrics import MetricCounts

#: Brokerage rounds take from tens of microseconds (one job) to a second (100,000 jobs).
BROKERAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class StoreCollector(Collector):
    """Gauges read from the store at each scrape: ``panda_lab_jobs{state,site}``,
    ``panda_lab_tasks{state}``, ``panda_lab_pilots{site,state}``,
    ``panda_lab_pilot_heartbeat_age_seconds{site}`` and
    ``panda_lab_event_stream_clients``.  Every state of the model is shown for every
    site (0 where none), so a query sees a zero rather than no series."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def _counts(self) -> MetricCounts:
        store = self.server.store
        owner = store.owner
        if owner is None or owner is threading.current_thread():
            return store.metric_counts()
        return self.server.db_from_thread(store.metric_counts, timeout=30)

    def collect(self) -> Iterator[Metric]:
        c = self._counts()
        return iter([*families(c, self.server.bus.subscribers, time.time()),
                     *merge_families(self.server)])


def families(c: MetricCounts, stream_clients: int, now: float) -> list[Metric]:
    """The gauges of :class:`StoreCollector` from counts read from the store (``now``:
    seconds since the epoch, for heartbeat ages)."""
    jobs = GaugeMetricFamily("panda_lab_jobs", "Job attempts in the store, by state and "
                             "site (site empty: not brokered yet)", labels=["state", "site"])
    job_counts = dict(c.jobs)
    for site in c.sites:
        for state in JobState:
            job_counts.setdefault((str(state), site), 0)
    for (state, site), n in sorted(job_counts.items()):
        jobs.add_metric([state, site], n)

    tasks = GaugeMetricFamily("panda_lab_tasks", "Tasks in the store, by state",
                              labels=["state"])
    for state in _all(TaskState, c.tasks):
        tasks.add_metric([state], c.tasks.get(state, 0))

    pilots = GaugeMetricFamily("panda_lab_pilots", "Pilots, by site and state",
                               labels=["site", "state"])
    pilot_counts = dict(c.pilots)
    for site in c.sites:
        for state in PilotState:
            pilot_counts.setdefault((site, str(state)), 0)
    for (site, state), n in sorted(pilot_counts.items()):
        pilots.add_metric([site, state], n)

    age = GaugeMetricFamily("panda_lab_pilot_heartbeat_age_seconds",
                            "Seconds since the running pilot of a site heard from longest "
                            "ago last heartbeat", labels=["site"])
    for site, t in sorted(c.oldest_heartbeat.items()):
        age.add_metric([site], max(0.0, now - t))

    clients = GaugeMetricFamily("panda_lab_event_stream_clients",
                                "Clients connected to the event stream", value=stream_clients)
    return [jobs, tasks, pilots, age, clients]


def merge_families(server: Server) -> list[Metric]:
    """The merged results' memory: ``panda_lab_merge_memory_bytes`` (held now),
    ``panda_lab_merge_memory_peak_bytes`` (the most held after a merge step since the
    start) and ``panda_lab_merge_memory_budget_bytes`` (:mod:`panda_lab.server.merge_budget`)."""
    merger = server.analysis.merger
    return [
        GaugeMetricFamily("panda_lab_merge_memory_bytes", "Bytes the merged results of "
                          "analyses hold in the server now", value=merger.memory()),
        GaugeMetricFamily("panda_lab_merge_memory_peak_bytes", "The most bytes the merged "
                          "results held after a merge step", value=merger.peak),
        GaugeMetricFamily("panda_lab_merge_memory_budget_bytes", "The budget of the merged "
                          "results (--merge-memory, $PANDA_LAB_MERGE_MEMORY)",
                          value=merger.budget or 0),
    ]


def _all(states: Iterable, seen: dict[str, int]) -> list[str]:
    """Every state of an enum, then any other the store holds, in order."""
    names = [str(s) for s in states]
    return names + sorted(set(seen) - set(names))


class TimedBroker:
    """A brokerage that times each round (one ``choose`` over a batch of jobs) into a
    histogram, and otherwise is the one it wraps."""

    def __init__(self, inner: Broker, histogram: Histogram) -> None:
        self.inner = inner
        self.histogram = histogram

    def choose(self, requests: list[Request], loads: list[SiteLoad],
               **context: Any) -> list[Choice]:
        """The wrapped brokerage's ``choose`` with the store's context (``links``,
        ``policy``, ``now``), timed."""
        t = time.perf_counter()
        try:
            return self.inner.choose(requests, loads, **context)
        finally:
            self.histogram.observe(time.perf_counter() - t)


class ServerMetrics:
    """A server's metrics in their own registry (one per server, so that servers in one
    process do not share series): the store collector, and the event counters
    ``panda_lab_jobs_dispatched_total{site}``, ``panda_lab_job_reports_total{state}``,
    ``panda_lab_job_reports_ignored_total`` and the ``panda_lab_brokerage_seconds``
    histogram.  Installs the brokerage timer on the server's store."""

    def __init__(self, server: Server) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(server))
        self.dispatched = Counter("panda_lab_jobs_dispatched", "Jobs sent to pilots",
                                  ["site"], registry=self.registry)
        self.reports = Counter("panda_lab_job_reports", "Job state reports received from "
                               "pilots, by the state reported", ["state"],
                               registry=self.registry)
        self.ignored = Counter("panda_lab_job_reports_ignored", "Job state reports from "
                               "pilots ignored (stale attempt, final job, another pilot's)",
                               registry=self.registry)
        self.brokerage = Histogram("panda_lab_brokerage_seconds", "Seconds of one "
                                   "brokerage round (a batch of jobs placed at once)",
                                   buckets=BROKERAGE_BUCKETS, registry=self.registry)
        server.store.broker = TimedBroker(server.store.broker, self.brokerage)

    def on_dispatch(self, site: str, n: int) -> None:
        """``n`` jobs of ``site`` were sent to a pilot."""
        if n:
            self.dispatched.labels(site).inc(n)

    def on_reports(self, states: list[str], ignored: int) -> None:
        """Reports of ``states`` were received; ``ignored`` of them were not applied."""
        for state, n in Counter_(states).items():
            self.reports.labels(state).inc(n)
        if ignored:
            self.ignored.inc(ignored)
