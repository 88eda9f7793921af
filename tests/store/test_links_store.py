"""The store's side of network-aware brokerage: links learned from reports,
declared links as the starting point, site statistics, the network term per task or
server, the inputs kept for retries, the task's filter summary.  Both backends.

The kind of fault: a measurement lost or counted twice, or a decision made without what
was learned.  Members: a report's reads (several per report, an endpoint ``""`` meaning
the site's own), the declared value before any measurement, the site's rate and failure
rate, a retry weighed without its input, a task's network term ignored, the summary,
and a site's first, cold jobs (imports and first opens in their time) taken for its
speed long after warm ones measured it.  Reports' samples are held in memory and written
together (store/base.py ``_learn_now``); the members of that kind: a read (brokerage, the
links, the sites) that misses a held sample, a sample lost with a rolled-back
transaction or kept from a report that was, smoothing in another order than per report,
samples left unwritten at close, and a retry weighed before the failure its attempt
reported was learned.
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
    store.flush_learning()  # a raw read of the rows: what reports measured, written
    with store.tx() as conn:
        rate, failure, mean = site_statistics(conn)["NEAR"]
    assert rate == pytest.approx(10_000 / 1.0) and failure == 0.0 and mean == 2.0
    finish(store, "NEAR", ids[1], state="failed",
           error={"category": "system", "message": "worker died"})
    store.flush_learning()
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
        store.flush_learning()
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


def _learned(store) -> tuple:
    from panda_lab.store.rows.links import site_statistics

    with store.tx() as conn:
        rows = site_statistics(conn)
    [link] = [x for x in store.links() if x["endpoint"] == "disk" and x["site"] == "FAR"]
    return rows.get("FAR"), (link["learned_mbps"], link["observations"], link["bytes"])


def _three_reports(store, reports: list[tuple[int, float]]) -> list[int]:
    ids = store.create_task("t", [{"payload": b"x"}] * (len(reports) + 1), site="FAR")[1]
    for job, (mb, seconds) in zip(ids, reports, strict=False):
        finish(store, "FAR", job, events=1_000, seconds=seconds + 0.5,
               reads=[{"endpoint": "disk", "bytes": mb * MB, "seconds": seconds,
                       "requests": 1}])
    return ids


REPORTS = [(10, 1.0), (40, 1.0), (5, 2.0)]


def test_held_samples_are_what_every_read_sees(store):
    """Held or written, the views, the rows after a flush and brokerage see the same."""
    _three_reports(store, REPORTS)
    assert store._learning, "the reports' samples are held, not yet written"
    [link] = [x for x in store.links() if x["endpoint"] == "disk"]   # a read writes them
    assert not store._learning
    assert link["observations"] == 3 and link["bytes"] == 55 * MB
    listed = {s["name"]: s for s in store.list_sites()}
    assert "FAR" in listed


def test_samples_written_together_equal_samples_written_per_report(tmp_path):
    """Smoothing is in report order either way: the same estimates to the last digit."""
    from panda_lab.store import Store

    got = []
    for per_report in (True, False):
        store = Store(f"sqlite:///{tmp_path / f'{per_report}.sqlite'}", tmp_path / "r")
        store.upsert_sites(SITES)
        ids = store.create_task("t", [{"payload": b"x"}] * 4, site="FAR")[1]
        for job, (mb, seconds) in zip(ids, REPORTS, strict=False):
            finish(store, "FAR", job, events=1_000, seconds=seconds + 0.5,
                   reads=[{"endpoint": "disk", "bytes": mb * MB, "seconds": seconds,
                           "requests": 1}])
            if per_report:
                store.flush_learning()
        store.flush_learning()
        got.append(_learned(store))
        store.close()
    assert got[0] == got[1]
    (rate, failure, mean), (mbps, n, nbytes) = got[0]
    assert n == 3 and nbytes == 55 * MB and failure == 0.0
    assert rate is not None and mean is not None and mbps > 0


def test_a_rolled_back_write_keeps_the_samples(store):
    _three_reports(store, REPORTS)
    held = list(store._learning)
    with pytest.raises(RuntimeError), store.tx() as conn:
        store._learn_now(conn)
        assert not store._learning
        raise RuntimeError("the database went away mid-transaction")
    assert store._learning == held            # put back, in order, for the next write
    store.flush_learning()
    assert _learned(store)[1][1:] == (3, 55 * MB)


def test_a_rolled_back_report_leaves_no_sample(store, monkeypatch):
    from panda_lab.store.rows import staging

    ids = store.create_task("t", [{"payload": b"x"}] * 2, site="FAR")[1]
    p = store.register_pilot("FAR", "h", 1, 2, {})
    store.acquire(p, "FAR", 10)
    job = store.get_job(ids[0])

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(staging, "record_reads", broken)
    with pytest.raises(RuntimeError):
        store.apply_updates(p, [{"id": ids[0], "attempt": job["attempt"], "state": "finished",
                                 "result": b"r", "events": 1, "seconds": 1.0,
                                 "reads": [{"endpoint": "disk", "bytes": MB, "seconds": 1.0,
                                            "requests": 1}]}])
    assert not store._learning
    assert store.get_job(ids[0])["state"] != "finished"


def test_an_ended_task_and_close_write_what_is_held(store, tmp_path):
    from panda_lab.store import Store

    ids = _three_reports(store, REPORTS)
    assert store._learning
    finish(store, "FAR", ids[-1], events=1_000, seconds=1.0)  # the task's last job: it ends
    assert not store._learning, "an ended task's measurements are written with it"

    path = tmp_path / "closing.sqlite"
    s2 = Store(f"sqlite:///{path}", tmp_path / "r2")
    s2.upsert_sites(SITES)
    _three_reports(s2, REPORTS)
    assert s2._learning
    s2.close()
    s3 = Store(f"sqlite:///{path}", tmp_path / "r2")
    try:
        assert _learned(s3)[1][1:] == (3, 55 * MB)
    finally:
        s3.close()


def test_a_retry_is_weighed_with_the_failure_its_attempt_reported(store):
    """The report that fails an attempt places its retry: the site's failure is learned
    first, held samples or not."""
    task, [job], _ = store.create_task("t", [{"payload": b"x"}], site="NEAR",
                                       options={"max_attempts": 2})
    finish(store, "NEAR", job, state="failed",
           error={"category": "system", "message": "worker died"})
    retry = next(j for j in store.list_jobs(task, all_attempts=True) if j["attempt"] == 2)
    near = next(c for c in retry["broker_info"]["candidates"] if c["site"] == "NEAR")
    assert near["factors"]["reliability"] < 1.0, near


# A sample that cannot be written would fail every later write of the held samples (and
# with them brokerage, the views and the watchdog's sweep): the kind is "one bad value
# stops all learning".  Members: a byte count past 64 bits, an infinite or negative
# time, a count that is not a number; a link's running total past 64 bits; a site whose
# stored rate was lost (NULL); and the API's schema refusing them in the first place.
POISON = [
    {"endpoint": "disk", "bytes": 2**63, "seconds": 1.0, "requests": 1},
    {"endpoint": "disk", "bytes": MB, "seconds": float("inf"), "requests": 1},
    {"endpoint": "disk", "bytes": MB, "seconds": float("nan"), "requests": 1},
    {"endpoint": "disk", "bytes": -5, "seconds": 1.0, "requests": 1},
    {"endpoint": "disk", "bytes": "many", "seconds": 1.0, "requests": 1},
]


def test_a_sample_that_cannot_be_written_never_stops_learning(store):
    ids = store.create_task("t", [{"payload": b"x"}] * 3, site="FAR")[1]
    finish(store, "FAR", ids[0], events=float("inf"), seconds=float("nan"), reads=POISON)
    finish(store, "FAR", ids[1], events=1_000, seconds=1.5, reads=[
        {"endpoint": "disk", "bytes": 10 * MB, "seconds": 1.0, "requests": 1}])
    store.flush_learning()                       # no error: the bad ones were dropped
    [link] = [x for x in store.links() if x["endpoint"] == "disk"]
    assert (link["observations"], link["bytes"]) == (1, 10 * MB)
    sites = {s["name"] for s in store.list_sites()}
    assert "FAR" in sites
    assert store.create_task("after", [{"payload": b"x"}], site="FAR")[1]  # brokerage works


def test_a_links_total_past_64_bits_stays_writable(store):
    from panda_lab.store.rows.links import INT64_MAX, MAX_READ_BYTES
    from panda_lab.store.schema import links

    store.declare_links([{"endpoint": "disk", "site": "FAR", "mbps": 50.0}])
    with store.tx() as conn:
        conn.execute(links.update().values(bytes=INT64_MAX - 10))
    _, [job], _ = store.create_task("t", [{"payload": b"x"}], site="FAR")
    finish(store, "FAR", job, reads=[{"endpoint": "disk", "bytes": MAX_READ_BYTES,
                                      "seconds": 1.0, "requests": 1}])
    store.flush_learning()
    [link] = [x for x in store.links() if x["endpoint"] == "disk"]
    assert link["bytes"] == INT64_MAX and link["observations"] == 1


def test_a_site_whose_rate_was_lost_measures_again(store):
    from panda_lab.store.rows.links import site_statistics
    from panda_lab.store.schema import site_stats

    ids = store.create_task("t", [{"payload": b"x"}] * 2, site="FAR")[1]
    finish(store, "FAR", ids[0], events=1_000, seconds=1.0)
    store.flush_learning()
    with store.tx() as conn:
        conn.execute(site_stats.update().values(slot_rate=None))   # as a NaN stored did
    finish(store, "FAR", ids[1], events=2_000, seconds=1.0)
    store.flush_learning()
    with store.tx() as conn:
        rate, _, _ = site_statistics(conn)["FAR"]
    assert rate == pytest.approx(2_000.0)


def test_the_api_refuses_what_cannot_be_learned():
    from pydantic import ValidationError

    from panda_lab.server.schemas import LinkReads

    LinkReads(endpoint="", bytes=MB, seconds=1.0, requests=1)
    for bad in ({"bytes": 2**63}, {"seconds": float("inf")}, {"seconds": float("nan")},
                {"requests": -1}):
        with pytest.raises(ValidationError):
            LinkReads(**{"endpoint": "", "bytes": MB, "seconds": 1.0, "requests": 1, **bad})
