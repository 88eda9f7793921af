"""The store's side of network-aware brokerage: links learned in the report's transaction,
declared links as the starting point, site statistics, the network term per task or
server, the inputs kept for retries, the task's filter summary.  Both backends.

The kind of fault: a measurement lost or counted twice, or a decision made without what
was learned.  Members: a report's reads (several per report, an endpoint ``""`` meaning
the site's own), the declared value before any measurement, the site's rate and failure
rate, a retry weighed without its input, a task's network term ignored, the summary,
and a site's first, cold jobs (imports and first opens in their time) taken for its
speed long after warm ones measured it.
"""

from __future__ import annotations

import pytest

from panda_lab.store.rows import sites as site_rows
from panda_lab.store.rows.datasets import input_request

SITES = [{"name": "NEAR", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2,
          "endpoint": "disk"},
         {"name": "FAR", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 2}]

MB = 1_000_000


def chunks(n_mb: int = 100) -> list[dict]:
    return [{"file_index": 0, "path": "f.root", "tree": "Events", "start": 0, "stop": 10_000,
             "bytes": n_mb * MB, "replicas": [{"endpoint": "disk", "url": "http://d/f.root"}]}]


def finish(store, site: str, job_id: int, **fields):
    job = store.get_job(job_id)
    p = job["pilot_id"]
    if p is None:
        p = store.register_pilot(site, "h", 1, 2, {})
        got, _ = store.acquire(p, site, 10)
        assert job_id in [j["id"] for j in got]
    store.apply_updates(p, [{"id": job_id, "attempt": job["attempt"], "state": "running"}])
    return store.apply_updates(p, [{"id": job_id, "attempt": job["attempt"],
                                    "state": fields.pop("state", "finished"),
                                    "result": b"r", **fields}])


def test_reads_reported_with_a_job_smooth_its_links(store):
    store.declare_links([{"endpoint": "disk", "site": "FAR", "mbps": 50.0, "latency_ms": 5.0}])
    [before] = store.links()
    assert (before["source"], before["mbps"], before["observations"]) == ("declared", 50.0, 0)
    _, [job], _ = store.create_task("t", [{"payload": b"x"}], site="FAR")
    finish(store, "FAR", job, reads=[
        {"endpoint": "disk", "bytes": 10 * MB, "seconds": 1.0, "requests": 1},
        {"endpoint": "", "bytes": 5 * MB, "seconds": 0.1, "requests": 1}])  # FAR has none
    [link] = store.links()
    assert link["observations"] == 1 and link["source"] == "learned"
    assert link["bytes"] == 10 * MB and link["mbps"] == pytest.approx(10 / (1 - 0.005), rel=1e-3)
    assert link["declared_mbps"] == 50.0 and link["age_s"] >= 0
    _, [job2], _ = store.create_task("t2", [{"payload": b"x"}], site="FAR")
    finish(store, "FAR", job2, reads=[
        {"endpoint": "disk", "bytes": 20 * MB, "seconds": 1.0, "requests": 1}])
    [link] = store.links()
    assert link["observations"] == 2 and link["bytes"] == 30 * MB
    # FTS's alpha: 0.9 of the old estimate, 0.1 of the new sample
    assert link["learned_mbps"] == pytest.approx(0.9 * 10.05 + 0.1 * 20.1, rel=1e-2)


def test_a_local_read_counts_for_the_sites_own_endpoint(store):
    _, [job], _ = store.create_task("t", [{"payload": b"x"}], site="NEAR")
    finish(store, "NEAR", job, reads=[{"endpoint": "", "bytes": MB, "seconds": 0.01,
                                        "requests": 2}])
    assert [(x["endpoint"], x["site"]) for x in store.links()] == [("disk", "NEAR")]


def test_finished_and_failed_attempts_measure_their_site(store):
    from panda_lab.store.rows.links import site_statistics

    ids = store.create_task("t", [{"payload": b"x"}] * 2, site="NEAR")[1]
    finish(store, "NEAR", ids[0], events=10_000, seconds=2.0,
           reads=[{"endpoint": "disk", "bytes": MB, "seconds": 1.0, "requests": 1}])
    with store.tx() as conn:
        rate, failure, mean = site_statistics(conn)["NEAR"]
    assert rate == pytest.approx(10_000 / 1.0) and failure == 0.0 and mean == 2.0
    finish(store, "NEAR", ids[1], state="failed",
           error={"category": "system", "message": "worker died"})
    with store.tx() as conn:
        _, failure, _ = site_statistics(conn)["NEAR"]
    assert failure == pytest.approx(0.1)
    with store.tx() as conn:
        load = {s.name: s for s in site_rows.loads_(conn)}["NEAR"]
    assert load.slot_rate == pytest.approx(10_000) and load.failure_rate == pytest.approx(0.1)


def test_cold_jobs_measure_a_site_only_until_a_warm_one_does(store):
    from panda_lab.store.rows.links import site_statistics

    ids = store.create_task("t", [{"payload": b"x"}] * 5, site="NEAR")[1]

    def rate() -> tuple[float, float]:
        with store.tx() as conn:
            r, _, mean = site_statistics(conn)["NEAR"]
        return r, mean

    finish(store, "NEAR", ids[0], events=1_000, seconds=10.0, cold=True)
    assert rate() == (pytest.approx(100.0), 10.0)  # a cold sample: better than none
    finish(store, "NEAR", ids[1], events=1_000, seconds=5.0, cold=True)
    assert rate()[0] == pytest.approx(0.9 * 100 + 0.1 * 200)  # cold ones smooth together
    finish(store, "NEAR", ids[2], events=1_000, seconds=1.0)
    assert rate() == (pytest.approx(1_000.0), 1.0)  # the first warm one replaces them
    finish(store, "NEAR", ids[3], events=1_000, seconds=20.0, cold=True)
    assert rate() == (pytest.approx(1_000.0), 1.0)  # a cold one no longer counts
    finish(store, "NEAR", ids[4], events=1_000, seconds=0.5)
    assert rate()[0] == pytest.approx(0.9 * 1_000 + 0.1 * 2_000)


def test_a_job_is_weighed_by_its_input_and_its_retry_too(store):
    store.declare_links([{"endpoint": "disk", "site": "FAR", "mbps": 0.0, "latency_ms": 0.0}])
    task, [job], _ = store.create_task("a", [{"payload": b"x"}], job_chunks=[chunks()])
    info = store.get_job(job)["broker_info"]
    assert info["picked"] == "NEAR" and info["network"] == "active"
    assert info["input"] == {"events": 10_000, "bytes": {"disk": 100 * MB},
                             "files": ["f.root"], "requests": 2}
    far = next(c for c in info["candidates"] if c["site"] == "FAR")
    assert far["filter"] == "link" and "unusable" in far["reason"]
    assert store.get_task(task)["brokerage"] == {"link": 1}
    finish(store, "NEAR", job, state="failed", error={"category": "system", "message": "x"})
    [retry] = [j for j in store.list_jobs(task, all_attempts=True) if j["attempt"] == 2]
    # the retry is weighed with the same input: FAR still cannot read it
    assert retry["broker_info"]["input"] == info["input"]
    far = next(c for c in retry["broker_info"]["candidates"] if c["site"] == "FAR")
    assert far["filter"] == "link"
    assert store.get_task(task)["brokerage"]["link"] == 2


def test_the_network_term_is_the_tasks_or_else_the_servers(store):
    _, [a], _ = store.create_task("a", [{"payload": b"x"}], job_chunks=[chunks()],
                                  options={"network": "passive"})
    _, [b], _ = store.create_task("b", [{"payload": b"x"}], job_chunks=[chunks()])
    store.network = "off"
    _, [c], _ = store.create_task("c", [{"payload": b"x"}], job_chunks=[chunks()])
    policy = {j: store.get_job(j)["broker_info"]["policy"] for j in (a, b, c)}
    assert policy == {a: "passive", b: "network", c: "locality"}


def test_input_request_sums_bytes_per_endpoint_over_replicas():
    cs = [{"path": "a", "start": 0, "stop": 10, "bytes": 100,
           "replicas": [{"endpoint": "x", "url": "u"}, {"endpoint": "y", "url": "v"}]},
          {"path": "b", "start": 5, "stop": 10, "bytes": 50,
           "replicas": [{"endpoint": "x", "url": "w"}]},
          {"path": "b", "start": 10, "stop": 20, "bytes": 70}]
    r = input_request(cs, ("ANY",))
    assert (r.events, r.input_bytes, r.files, r.read_requests) == \
        (25, {"x": 150, "y": 100}, ("a", "b"), 6)
    assert r.near == frozenset({"x", "y"})
