"""Brokerage keeps each request shape's candidates and weights from one placement of a
call to the next, and weighs again only the site whose load the placement changed.

Kind tested: a kept value that goes stale.  Members: the picked site's weight after its
load grew (one placement, or several between two uses of a shape), a shape left unused
while more placements than there are sites came between, the readers of the link a
placement reads over, a job of a shape seen before placed with sites to avoid (weighed
afresh); and the cost the keeping saves (a bulk of like jobs weighs each site once, then
only the picked one).
"""

from __future__ import annotations

import random

import pytest

from panda_lab.model import brokerage
from panda_lab.model.brokerage import Request, SiteLoad, choose

MB = 10**6


def sites(n: int = 12) -> list[SiteLoad]:
    return [SiteLoad(f"S{i:02d}", "grid", "online", 4 + 3 * (i % 5), queued=i % 3,
                     running=i % 4, endpoint=f"ep{i % 4}", slot_rate=10_000.0 + 1_000 * i,
                     failure_rate=0.01 * (i % 3), mean_job_s=30.0 + i if i % 2 else None)
            for i in range(n)]


def shapes() -> list[Request]:
    return [Request(near=frozenset({"ep0"}), events=100_000, input_bytes={"ep0": 300 * MB}),
            Request(near=frozenset({"ep1", "ep2"}), events=400_000,
                    input_bytes={"ep1": 900 * MB, "ep2": 900 * MB}, read_requests=40),
            Request(events=50_000),
            Request(near=frozenset({"ep9"}), events=10_000, input_bytes={"ep9": 50 * MB})]


def bulk(seed: int) -> list[Request]:
    """Shapes in random runs: some short, some longer than there are sites; now and then a
    job that avoids a site."""
    rng = random.Random(seed)
    out: list[Request] = []
    while len(out) < 400:
        req = rng.choice(shapes())
        if rng.random() < 0.05:
            req = Request(near=req.near, events=req.events, input_bytes=req.input_bytes,
                          read_requests=req.read_requests, avoid=frozenset({"S03"}))
        out.extend([req] * rng.choice([1, 1, 2, 5, 30]))
    return out


@pytest.mark.parametrize("policy", ["network", "passive", "locality"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_weights_drawn_from_are_those_weighed_afresh(policy, seed):
    choices = choose(bulk(seed), sites(), random.Random(seed), policy=policy)
    compared = 0
    for c in choices:
        kept = c.info["weights"]   # what the draw used
        assert set(kept) == {x["site"] for x in c.info["candidates"] if x["passed"]}
        for cand in c.info["candidates"]:
            if cand["passed"]:     # the record weighs the candidate again, from scratch
                assert kept[cand["site"]] == cand["weight"], (c.info["picked"], cand)
                compared += 1
    assert compared > 11 * len(choices)
    assert len({c.site for c in choices}) > 6


def test_a_bulk_of_like_jobs_weighs_each_site_once_then_only_the_picked_one(monkeypatch):
    calls = []
    weight = brokerage._weight

    def counted(st, s):
        calls.append(s.name)
        return weight(st, s)

    monkeypatch.setattr(brokerage, "_weight", counted)
    choices = choose([shapes()[1]] * 500, sites(), random.Random(4), record=False)
    assert len(choices) == 500
    assert len(calls) == 12 + 499   # every site for the first job, the picked one after
    assert calls[12:] == [c.site for c in choices[:-1]]
