"""The simulator's per-site stage-in cache follows the pilot's rule and the server's view.

Kinds tested:
* a cache that breaks its bound or its order.  Members: the bytes held never exceed the
  limit, the least recently used file goes first, a hit makes a file recent, a file larger
  than the cache is never kept (nothing evicted for it), a file copied twice is held once;
* what brokerage believes of a cache drifting from the reports.  Members: ``staged`` and
  ``hit`` hold a file, ``evicted`` drops it, the last report of a file wins, and at the
  end of a run the sites' ``cached`` are exactly what their caches hold;
* a cache that does nothing.  Members: jobs told to stage in copy files whole and later
  jobs read them from the cache (bytes metered under the cache), which beats reading
  remotely over a slow-latency link; a cache smaller than the data evicts and stays
  under its bound; a scenario's ``cache_mb`` that is not a size is refused by name.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panda_lab.model.staging import CACHE_ENDPOINT
from panda_lab.sim import ScenarioError, parse
from panda_lab.sim.cache import SimCache, known
from panda_lab.sim.engine import Simulation

MB = 10**6


def test_the_least_recently_used_file_goes_first_and_a_hit_is_recent():
    c, ev = SimCache(300), []
    for name in "abc":
        assert c.stage(name, 100, ev)
    assert c.lookup("a", ev) and not c.lookup("z", ev)
    assert c.stage("d", 100, ev)          # b is now the least recently used
    assert list(c.files) == ["c", "a", "d"] and c.used == 300
    assert ("evicted", "b", 100) in ev and ev[-1] == ("staged", "d", 100)
    assert c.stage("e", 250, ev)          # evicts c, a, d (in that order) to fit
    assert list(c.files) == ["e"] and [x[1] for x in ev[-4:-1]] == ["c", "a", "d"]


def test_a_file_larger_than_the_cache_is_not_kept_and_evicts_nothing():
    c, ev = SimCache(300), []
    c.stage("a", 200, ev)
    assert not c.fits(301) and not c.stage("big", 301, ev)
    assert list(c.files) == ["a"] and ev == [("staged", "a", 200)]
    with pytest.raises(ValueError, match="limit"):
        SimCache(0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stage", "lookup"]), st.integers(0, 7),
                          st.integers(1, 400)), max_size=60))
def test_the_cache_is_an_lru_under_its_bound(ops):
    """Against a plain model: an ordered dict, oldest first."""
    limit = 500
    c, ev = SimCache(limit), []
    model: OrderedDict[str, int] = OrderedDict()
    for op, k, size in ops:
        name = f"f{k}"
        if op == "lookup":
            assert c.lookup(name, ev) == (name in model)
            if name in model:
                model.move_to_end(name)
        elif size <= limit:
            assert c.stage(name, size, ev)
            model.pop(name, None)
            while model and sum(model.values()) + size > limit:
                model.popitem(last=False)
            model[name] = size
        else:
            assert not c.stage(name, size, ev)
        assert c.files == model and c.used == sum(model.values()) <= limit
    held: set[str] = set()
    known(held, ev)
    assert held == set(model)   # the reports, applied in order, give what is held


def test_the_reports_teach_what_a_cache_holds():
    held = {"old"}
    known(held, [("staged", "a", 1), ("evicted", "old", 1), ("hit", "b", 1),
                  ("evicted", "a", 1), ("staged", "a", 1)])
    assert held == {"a", "b"}


def scenario(cache_mb: float, **far) -> dict:
    """All data at HOME-SE; FAR reads it over a link of high latency, known to brokerage,
    with many read requests per file: copying a file whole (one request) is cheaper."""
    return {
        "seed": 4, "policies": ["network"],
        "network": {"default_mbps": 100.0, "default_latency_ms": 200.0},
        "sites": {"HOME": {"slots": 2, "speed": 10_000, "endpoint": "HOME-SE"},
                  "FAR": {"slots": 8, "speed": 10_000, "cache_mb": cache_mb, **far}},
        "datasets": {"d": {"files": 20, "file_mb": 100, "events_per_file": 400_000,
                           "clusters_per_file": 4, "replicas": {"HOME-SE": 1.0}}},
        "links": [{"endpoint": "HOME-SE", "site": "FAR", "mbps": 100.0,
                   "latency_ms": 200.0, "declared": True}],
        "tasks": [{"dataset": "d", "events_per_job": 100_000, "read_requests": 50}],
    }


def test_staged_files_are_read_from_the_cache_by_later_jobs_and_that_pays():
    cached = Simulation(parse(scenario(10_000)), "network")
    with_cache = cached.run()
    without = Simulation(parse(scenario(0)), "network").run()
    assert with_cache.jobs == without.jobs == 80
    far = with_cache.jobs_by_site["FAR"]
    assert far > 40
    from_cache = with_cache.bytes_by_link[f"{CACHE_ENDPOINT} -> FAR"]
    copied = with_cache.bytes_by_link["HOME-SE -> FAR"]
    assert copied % (100 * MB) == 0, "stage-in copies whole files"
    assert from_cache == far * 25 * MB, "every job at FAR read its input from the cache"
    assert copied <= 20 * 100 * MB < far * 100 * MB, \
        "each file copied once at most: later jobs over it (and those waiting for its copy) " \
        "read the copy"
    assert f"{CACHE_ENDPOINT} -> FAR" not in without.bytes_by_link
    assert with_cache.makespan_s < without.makespan_s
    # what brokerage saw at the end is what the cache holds
    assert cached.load["FAR"].cached == frozenset(cached.caches["FAR"].files)
    assert cached.load["FAR"].cache_bytes == 10_000 * MB


class Watched(SimCache):
    """A cache that keeps the bytes it held after each copy, and what it evicted."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.seen: list[int] = []
        self.evicted: list[str] = []

    def stage(self, name, nbytes, events):
        kept = super().stage(name, nbytes, events)
        self.seen.append(self.used)
        self.evicted.extend(n for a, n, _ in events if a == "evicted")
        return kept


def test_a_cache_smaller_than_the_data_evicts_and_stays_under_its_bound():
    sim = Simulation(parse(scenario(300)), "network")   # three files of the twenty
    sim.caches["FAR"] = cache = Watched(300 * MB)
    result = sim.run()
    assert result.jobs == 80 and len(cache.seen) > 3 and cache.evicted
    assert max(cache.seen) <= 300 * MB and len(cache.files) <= 3
    assert sim.load["FAR"].cached == frozenset(sim.caches["FAR"].files)


def test_a_site_without_a_cache_never_stages():
    sim = Simulation(parse(scenario(0)), "network")
    result = sim.run()
    assert not sim.caches and result.bytes_by_link["HOME-SE -> FAR"] % (25 * MB) == 0
    assert all(not s.cached for s in sim.loads)


@pytest.mark.parametrize("value,message", [(-5, "must not be negative"),
                                           ("big", "expected int or float")])
def test_a_cache_size_that_is_not_one_is_refused_by_name(value, message):
    with pytest.raises(ScenarioError, match=f"sites.FAR.cache_mb: {message}"):
        parse(scenario(value))


class Reporting(Simulation):
    """A simulation that keeps each attempt's cache report, as a pilot sends it."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.reports: list[tuple[str, list[dict]]] = []

    def _end(self, job, site, start, compute_s) -> None:
        if job.cache_events:
            self.reports.append((site.name, [{"action": a, "path": p, "bytes": b}
                                             for a, p, b in job.cache_events]))
        super()._end(job, site, start, compute_s)


def test_the_server_fed_the_same_reports_holds_what_the_simulator_believes(db_url, tmp_path):
    from panda_lab.store import Store
    from panda_lab.store.rows import staging

    sim = Reporting(parse(scenario(300)), "network")
    sim.run()
    actions = {a["action"] for _, r in sim.reports for a in r}
    assert actions == {"staged", "hit", "evicted"}
    live = Store(db_url, tmp_path / "results")
    try:
        with live.tx() as conn:
            for k, report in enumerate(sim.reports):   # one report at a time, in order
                staging.apply(conn, [report], float(k))
            assert staging.held(conn).get("FAR", frozenset()) == sim.load["FAR"].cached
    finally:
        live.close()
    assert sim.load["FAR"].cached
