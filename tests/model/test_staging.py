"""Remote read or stage-in: the choice follows the estimated cost of each, per job.

Kinds tested:
* a choice on the wrong side of the cost model.  Members: latency (many small remote
  requests against one whole-file copy), the share of each file the job reads, the
  link's throughput (it scales both sides alike: never flips the choice alone);
* stage-in where it cannot be done.  Members: a site without a cache, a file larger
  than the cache, sizes unknown;
* brokerage not following the choice.  Members: the record's ``access`` per candidate and
  for the pick, the read estimate it weighs, a cached file read as ``cache``, and the
  readers of a link counting the jobs placed over it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panda_lab.model.brokerage import Request, SiteLoad, choose
from panda_lab.model.network import Link
from panda_lab.model.staging import LOCAL_MBPS, Access, choose_access, stage_in_s

MB = 1_000_000


def link(mbps: float = 10.0, latency_ms: float = 50.0) -> Link:
    return Link("E", "S", mbps, latency_ms, 3, 1.0, "learned")


def test_the_choice_flips_where_remote_reading_costs_as_much_as_a_stage_in():
    # 100 MB file, the job reads 40 MB of it in 200 requests over a 10 MB/s, 50 ms link:
    # remote = 4 s + 10 s = 14 s; stage-in = 10 s + 0.05 s + 40/300 s = 10.18 s
    got = choose_access(link(), 40 * MB, 200, 100 * MB, 1, cache_bytes=1000 * MB)
    assert got.access is Access.STAGE_IN
    assert got.remote_s == pytest.approx(14.0)
    assert got.stage_s == pytest.approx(10.0 + 0.05 + 40 / LOCAL_MBPS)
    # where the two costs meet: the requests whose latency pays for the extra 60 MB
    # (6 s) plus the local read and the copy's own request
    even = (6.0 + 0.05 + 40 / LOCAL_MBPS) / 0.05
    fewer, more = int(even), int(even) + 1
    assert choose_access(link(), 40 * MB, fewer, 100 * MB, 1, 1000 * MB).access \
        is Access.REMOTE
    assert choose_access(link(), 40 * MB, more, 100 * MB, 1, 1000 * MB).access \
        is Access.STAGE_IN


@given(read=st.integers(1, 100), requests=st.integers(1, 1000),
       mbps=st.floats(0.1, 1000), latency=st.floats(0, 300))
def test_property_the_choice_is_the_cheaper_estimate(read, requests, mbps, latency):
    lk = link(mbps, latency)
    got = choose_access(lk, read * MB, requests, 100 * MB, 1, 1000 * MB)
    remote, stage = lk.read_s(read * MB, requests), stage_in_s(lk, 100 * MB, 1, read * MB)
    assert got.remote_s == pytest.approx(remote) and got.stage_s == pytest.approx(stage)
    assert (got.access is Access.STAGE_IN) == (stage < remote)


def test_without_latency_a_partial_read_stays_remote_and_a_whole_read_still_may_not():
    # no latency: a copy moves more bytes than a partial read, never fewer
    assert choose_access(link(latency_ms=0), 40 * MB, 500, 100 * MB, 1, 10**12).access \
        is Access.REMOTE
    # the whole file in one request: the copy costs the same transfer plus a local read
    assert choose_access(link(), 100 * MB, 1, 100 * MB, 1, 10**12).access is Access.REMOTE


@pytest.mark.parametrize("cache_bytes,file_bytes", [(0, 100 * MB), (50 * MB, 100 * MB),
                                                    (10**12, 0)])
def test_no_stage_in_without_a_cache_it_fits_in_or_a_known_size(cache_bytes, file_bytes):
    got = choose_access(link(latency_ms=500), 40 * MB, 1000, file_bytes, 1, cache_bytes)
    assert got.access is Access.REMOTE and got.stage_s is None


def sites(cache: int = 0) -> list[SiteLoad]:
    return [SiteLoad("NEAR", "grid", "online", capacity=4, endpoint="E"),
            SiteLoad("FAR", "grid", "online", capacity=4, endpoint="F", cache_bytes=cache)]


def job(requests: int) -> Request:
    return Request(events=10_000, input_bytes={"E": 40 * MB}, files=("f",),
                   read_requests=requests, file_bytes=100 * MB)


LINKS = {("E", "FAR"): Link("E", "FAR", 10.0, 50.0, 3, 1.0, "learned")}


def candidates(req: Request, loads: list[SiteLoad]) -> dict[str, dict]:
    info = choose([req], loads, random.Random(0), links=LINKS)[0].info
    return {c["site"]: c for c in info["candidates"]}


def test_brokerage_records_the_access_and_weighs_its_cost():
    # many requests: a site with a cache stages the input in, and reads it for less
    staged = candidates(job(400), sites(cache=10**9))["FAR"]
    remote = candidates(job(400), sites(cache=0))["FAR"]
    assert staged["access"] == "stage-in" and remote["access"] == "remote"
    assert staged["est"]["read_s"] == pytest.approx(10.05 + 40 / LOCAL_MBPS, rel=1e-3)
    assert remote["est"]["read_s"] == pytest.approx(24.0, rel=1e-3)
    assert staged["weight"] > remote["weight"]
    # few requests: the same site reads remotely, cache or not
    assert candidates(job(20), sites(cache=10**9))["FAR"]["access"] == "remote"
    assert candidates(job(20), sites())["NEAR"]["access"] == "local"


def test_the_pick_carries_its_access_and_a_cached_file_is_read_from_the_cache():
    loads = sites(cache=10**9)
    loads[0].state = "offline"
    c = choose([job(400)], loads, random.Random(0), links=LINKS)[0]
    assert (c.site, c.info["access"], c.info["read_from"]) == ("FAR", "stage-in", "E")
    loads = sites(cache=10**9)
    loads[1].cached = frozenset({"f"})
    cand = candidates(job(400), loads)["FAR"]
    assert cand["access"] == "cache" and cand["est"]["read_s"] == 0


def test_jobs_placed_over_a_link_count_as_its_readers():
    loads = sites(cache=10**9)
    loads[0].state = "offline"
    choose([job(400)] * 3, loads, random.Random(0), links=LINKS)
    assert loads[1].readers == {"E": 3}


def test_the_sentence_says_how_the_job_reads_its_input():
    from panda_lab.model.explain import explain

    loads = sites(cache=10**9)
    loads[0].state = "offline"
    staged = explain(choose([job(400)], loads, random.Random(0), links=LINKS)[0])
    assert staged.endswith("stages its input in from E to the site's cache"), staged
    loads = sites(cache=10**9)
    loads[0].state, loads[1].cached = "offline", frozenset({"f"})
    assert explain(choose([job(400)], loads, random.Random(0), links=LINKS)[0]).endswith(
        "reads its input from the site's cache")
    loads = sites()
    loads[0].state = "offline"
    assert explain(choose([job(400)], loads, random.Random(0), links=LINKS)[0]).endswith(
        "reads its input remotely from E")
    assert "input" not in explain(choose([job(400)], sites()[:1], random.Random(0))[0])
