"""Brokerage sends jobs to their data: sites near a job's input weigh more."""

from __future__ import annotations

import random
from collections import Counter

from panda_lab.model.brokerage import DATA_NEAR, Request, SiteLoad, choose


def sites() -> list[SiteLoad]:
    return [SiteLoad("NEAR", "hpc", "online", capacity=100, endpoint="UNI-SE"),
            SiteLoad("FAR", "grid", "online", capacity=100),
            SiteLoad("OTHER", "cloud", "online", capacity=100, endpoint="ELSEWHERE")]


def test_a_site_near_the_data_gets_that_much_more_of_the_work():
    picks = choose([Request(near=frozenset({"UNI-SE"}))] * 600, sites(), random.Random(7))
    share = Counter(c.site for c in picks)
    # equal sites, weights rechecked as jobs are placed: sqrt(9) = 3 times each other's share
    assert 0.52 < share["NEAR"] / 600 < 0.68 and share["FAR"] > 80 and share["OTHER"] > 80
    info = picks[0].info
    assert info["near_data"] == ["NEAR"]
    assert info["weights"]["NEAR"] == DATA_NEAR * info["weights"]["FAR"]


def test_without_data_or_near_sites_the_weights_are_the_loads_alone():
    picks = choose([Request()] * 600, sites(), random.Random(7))
    share = Counter(c.site for c in picks)
    assert all(150 < n < 250 for n in share.values())
    assert "near_data" not in picks[0].info
    picks = choose([Request(near=frozenset({"NOWHERE"}))], sites(), random.Random(7))
    assert picks[0].info["near_data"] == []


def test_data_does_not_override_the_sites_a_job_accepts_or_avoids():
    picks = choose([Request(sites=("FAR", "OTHER"), near=frozenset({"UNI-SE"}))] * 50,
                   sites(), random.Random(1))
    assert {c.site for c in picks} <= {"FAR", "OTHER"}
    picks = choose([Request(avoid=frozenset({"NEAR"}), near=frozenset({"UNI-SE"}))] * 50,
                   sites(), random.Random(1))
    assert "NEAR" not in {c.site for c in picks}
