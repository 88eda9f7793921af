"""Stage-in through a real server: a site with a cache copies its input in when the cost
model says so, keeps the copies under its bound, and the next task over the same files
at that site reads the copies.

The input is served over HTTP on 127.0.0.1 from a storage endpoint no site is next to;
the link to the one site is declared with a high latency (200 ms a request), so that
copying each file whole (one request) is estimated cheaper than reading it in ranges
(two requests a chunk): brokerage says ``stage-in``.  The cache holds two and a half
files: the third copy evicts the least recently used one.  A second task over the two
files still cached is brokered ``cache``, reads only the copies (the read metering says
``(cache)`` and the endpoint sees no request), and gives the same result.

The same over XRootD: a real ``xrootd`` serves the files over root://, the copy is made
through fsspec-xrootd, and the second task reads the copies.  The kind of fault covered
by the pair: a stage-in that works for one protocol only (the copy's opener, its size
check, its read metering are protocol-specific code).
"""

from __future__ import annotations

import hist
import pytest
from harness import RangeFileServer, ServerProcess

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample
from panda_lab.model.staging import CACHE_ENDPOINT

FILES, EVENTS = 3, 2_000


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


def sites_toml(bound: int) -> str:
    return f"""
[endpoints.store]
description = "a storage endpoint no site is next to"

[sites.CACHED]
kind = "grid"
provisioner = "local"
pilots = 1
slots = 1
cache_bytes = {bound}

[[links]]
endpoint = "store"
site = "CACHED"
throughput = 50.0
latency = 200.0
"""


@pytest.mark.slow
def test_a_second_task_over_the_same_files_reads_the_site_cache(tmp_path):
    data = make_sample(tmp_path / "data", files=FILES, events=EVENTS, compression=None)
    size = max(p.stat().st_size for p in data)
    bound = size * 5 // 2
    store = RangeFileServer(data[0].parent)
    (tmp_path / "sites.toml").write_text(sites_toml(bound))
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp_path / "sites.toml")]).start()
    lab = server.lab()
    try:
        urls = [f"{store.url}/{p.name}" for p in data]
        sizes = {u: p.stat().st_size for u, p in zip(urls, data, strict=True)}
        lab.datasets.register("all", urls, endpoint="store")
        first = lab.analyze(process, "all", name="first", files_per_job=1,
                            columns=["nMuon", "Muon"])
        assert first.result(timeout=60)["n"] == FILES * EVENTS
        jobs = sorted(lab.jobs(first.id), key=lambda j: j["started_at"])
        assert [j["access"] for j in jobs] == ["stage-in"] * FILES
        for j in jobs:  # the copy went over the link, whole: one request per file
            assert j["broker_info"]["access"] == "stage-in"
            by = {r["endpoint"]: r for r in j["reads"]}
            assert set(by) == {"store", CACHE_ENDPOINT}, j["reads"]
            (url,) = j["broker_info"]["input"]["files"]
            assert by["store"]["bytes"] == sizes[url] and by["store"]["requests"] == 1, j["reads"]
        # the cache keeps under its bound: the first file copied made room for the third
        cache_dir = home / "site-cache" / "CACHED"
        held = sum(p.stat().st_size for p in cache_dir.glob("*.root"))
        assert 0 < held <= bound
        (site,) = [s for s in lab.sites() if s["name"] == "CACHED"]
        assert site["cache"] == {"files": 2, "bytes": held, "limit": bound}
        evicted = jobs[0]["broker_info"]["input"]["files"]
        kept = [u for u in urls if u not in evicted]

        lab.datasets.register("kept", kept, endpoint="store")  # (reads their metadata)
        hits = store.hits
        second = lab.analyze(process, "kept", name="second", files_per_job=1,
                             columns=["nMuon", "Muon"])
        assert second.result(timeout=60)["n"] == 2 * EVENTS
        again = lab.jobs(second.id)
        assert [j["access"] for j in again] == ["cache", "cache"]
        rows = second.brokerage()
        assert (rows.loc[rows["picked"], "access"] == "cache").all()
        assert (rows.loc[rows["picked"], "read_s"] == 0).all()
        for j in again:  # read from the copies only: nothing over the link
            assert {r["endpoint"] for r in j["reads"]} == {CACHE_ENDPOINT}, j["reads"]
        assert store.hits == hits
        assert sum(p.stat().st_size for p in cache_dir.glob("*.root")) <= bound
    finally:
        server.stop()
        store.stop()


@pytest.mark.slow
def test_stage_in_over_xrootd_then_the_cache(tmp_path, xrootd_server):
    data = make_sample(xrootd_server.export, files=2, events=EVENTS, compression=None)
    size = max(p.stat().st_size for p in data)
    (tmp_path / "sites.toml").write_text(sites_toml(size * 3))  # room for both copies
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, extra=["--sites", str(tmp_path / "sites.toml")]).start()
    lab = server.lab()
    try:
        urls = [xrootd_server.url(p) for p in data]
        lab.datasets.register("xrd", urls, endpoint="store")
        first = lab.analyze(process, "xrd", name="xrd-first", files_per_job=1,
                            columns=["nMuon", "Muon"])
        assert first.result(timeout=60)["n"] == 2 * EVENTS
        jobs = lab.jobs(first.id)
        assert [j["access"] for j in jobs] == ["stage-in"] * 2
        for j in jobs:  # the whole file came over the link
            by = {r["endpoint"]: r for r in j["reads"]}
            (url,) = j["broker_info"]["input"]["files"]
            assert url.startswith("root://")
            assert by["store"]["bytes"] == (xrootd_server.export / url.rsplit("/", 1)[1]
                                            ).stat().st_size, j["reads"]
        copies = sorted((home / "site-cache" / "CACHED").glob("*.root"))
        assert sorted(p.stat().st_size for p in copies) == sorted(p.stat().st_size for p in data)

        second = lab.analyze(process, "xrd", name="xrd-second", files_per_job=1,
                             columns=["nMuon", "Muon"])
        assert second.result(timeout=60) == first.result(timeout=5)
        again = lab.jobs(second.id)
        assert [j["access"] for j in again] == ["cache", "cache"]
        for j in again:
            assert {r["endpoint"] for r in j["reads"]} == {CACHE_ENDPOINT}, j["reads"]
    finally:
        server.stop()
