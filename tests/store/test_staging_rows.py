"""The store's side of stage-in: what pilots report of their site's cache becomes the
files brokerage counts as local there, and what each attempt read is kept.  Both backends.

Kind tested: the server's view of a cache drifting from the pilots'.  Members: a file
staged, one evicted, a hit on a file whose staging report was lost, the same file staged
and evicted in one report; reads of the cache taken for a link.
"""

from __future__ import annotations

from panda_lab.model.staging import CACHE_ENDPOINT
from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows import staging

SITES = [{"name": "C", "kind": "grid", "provisioner": "local", "pilots": 1, "slots": 2,
          "cache_bytes": 1000},
         {"name": "D", "kind": "grid", "provisioner": "local", "pilots": 1, "slots": 1}]


def cached(store) -> dict[str, frozenset]:
    with store.tx() as conn:
        return {s.name: s.cached for s in site_rows.loads_(conn)}


def test_cache_reports_become_the_files_brokerage_counts_as_local(store):
    """(One test for both parts: a store on PostgreSQL costs seconds to set up.)"""
    with store.tx() as conn:
        loads = {s.name: s for s in site_rows.loads_(conn)}
        assert (loads["C"].cache_bytes, loads["D"].cache_bytes) == (1000, 0)
        staging.apply(conn, [("C", [{"action": "staged", "path": "a", "bytes": 400},
                                    {"action": "staged", "path": "b", "bytes": 400}])], 1.0)
    assert cached(store) == {"C": frozenset({"a", "b"}), "D": frozenset()}
    with store.tx() as conn:
        staging.apply(conn, [("C", [{"action": "evicted", "path": "a", "bytes": 400},
                                    {"action": "staged", "path": "c", "bytes": 400},
                                    {"action": "staged", "path": "x", "bytes": 9},
                                    {"action": "evicted", "path": "x", "bytes": 9}]),
                             ("D", [{"action": "hit", "path": "z", "bytes": 5}])], 2.0)
    assert cached(store) == {"C": frozenset({"b", "c"}), "D": frozenset({"z"})}
    assert [(s["name"], s.get("cache")) for s in store.list_sites()] == [
        ("C", {"files": 2, "bytes": 800, "limit": 1000}), ("D", None)]

    # through a pilot's report: what the attempt read is kept, the cache's reads teach
    # no link, and what it staged is held
    _, [job], _ = store.create_task("t", [{"payload": b"x"}], site="C")
    p = store.register_pilot("C", "h", 1, 2, {})
    store.acquire(p, "C", 1)
    reads = [{"endpoint": CACHE_ENDPOINT, "bytes": 300, "seconds": 0.01, "requests": 3},
             {"endpoint": "far", "bytes": 500, "seconds": 0.5, "requests": 1}]
    store.apply_updates(p, [{"id": job, "attempt": 1, "state": "finished", "result": b"r",
                             "reads": reads,
                             "cache": [{"action": "staged", "path": "f", "bytes": 500}]}])
    assert store.get_job(job)["reads"] == reads
    assert [(x["endpoint"], x["site"]) for x in store.links()] == [("far", "C")]
    assert cached(store)["C"] == frozenset({"b", "c", "f"})
