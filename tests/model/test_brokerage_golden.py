"""Brokerage's decisions and explanations are pinned: a digest of what it decided for a
seeded workload, computed once and kept here, must not move when the code that computes
it is made faster or rearranged.

Kind tested: a change meant to keep behaviour (an optimisation, a refactoring of the cost
model) that changes a decision or an explanation.  Members: the simulator's placements
(site and the replica read, every attempt, every policy, a workload big enough that loads,
readers, learned links, measured rates and failures all move between placements), and
the full explanation a live placement records (every candidate's filter, factors,
estimates, access and link, the weights, the rejections, the notes) over a snapshot with
caches, stage-in, declared, learned, unmeasured and unusable links, an offline site,
avoided sites and a task restricted to some sites.

If a digest changes because a decision was meant to change, say why in the commit and
replace it; never to make an accidental change pass.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from panda_lab.model.brokerage import Policy, Request, SiteLoad, choose
from panda_lab.model.network import Link, LinkEstimate
from panda_lab.sim import parse
from panda_lab.sim.engine import Simulation

#: A scaled-down ``scenarios/hundred-thousand.toml`` (3,000 jobs over 10 sites), with a
#: declared slow link, an unusable one, and a task restricted to some sites.
SCENARIO = {
    "seed": 23,
    "network": {"default_mbps": 100.0, "default_latency_ms": 25.0, "local_mbps": 1000.0},
    "sites": {
        "T1": {"count": 3, "slots": 40, "speed": 20000, "endpoint": "T1-{i}-SE"},
        "T2": {"count": 7, "slots": 10, "speed": 15000, "endpoint": "T2-{i}-SE",
               "failure_rate": 0.05, "pilot_delay_s": 60},
    },
    "datasets": {"big": {"files": 500, "file_mb": 500, "events_per_file": 1_000_000,
                         "clusters_per_file": 5,
                         "replicas": {"T1-01-SE": 1.0, "T1-0[23]-SE": 0.5,
                                      "T2-*-SE": 0.1}}},
    "links": [{"endpoint": "T1-01-SE", "site": "T1-02", "mbps": 10.0, "declared": True},
              {"endpoint": "T1-01-SE", "site": "T2-03", "mbps": 0.0, "declared": True},
              {"endpoint": "T1-01-SE", "site": "T2-04", "mbps": 8.0}],
    "tasks": [{"dataset": "big", "split": "events", "events_per_job": 200_000,
               "queue_limit": 300},
              {"dataset": "big", "split": "events", "events_per_job": 1_000_000,
               "submit_at": 120, "sites": ["T1-03", "T2-01", "T2-02", "T2-03"]}],
}

#: sha256 of each policy's placements (see :func:`placements`), computed before the
#: brokerage's inner loop was last rewritten, and again (on purpose) when a bulk's draws
#: were spread evenly (``_Draws``: the weighted random policies moved, the others not).
SIM_DIGESTS = {
    "network": "60c88766f2cb61cfc46ded8acc89e75dc256466e79b9c45876f86a0ce02007b0",
    "passive": "33b66716014efe75ffe14c47f0c101cfd4c3e407084199c259ea5806304c53db",
    "locality": "33b66716014efe75ffe14c47f0c101cfd4c3e407084199c259ea5806304c53db",
    "round-robin": "da4045938b78cb759cb3f4e80df64439fcfcb018636010b89fc6b8dec38ea580",
    "least-loaded": "ba640cffffb65086c2d71cd7a0b752a2f9318ea333114727e5c42c526d013366",
}

#: sha256 of the recorded explanations of :func:`live_bulk` under each policy.
RECORD_DIGESTS = {
    "network": "f6b150278f8a39c9898af2b81fc3a9cab458b5f9acc63a18a3e36221a925a3b2",
    "passive": "ce7b2ebb174519460182f7510151ad65166a69232559b5d9cff2e77f32eabcf4",
    "locality": "cd6e27177a9337fdc7a23fd200f6b82d628d5325aba7d8312a9b78fbaf3336dd",
    "round-robin": "a682dcf6355886bbbe6736826b75dce8a87db8b5593f75c3c9363067b02e4a90",
    "least-loaded": "29fd62cdaa24967e02dfb96f1c982c89f7e3f17dca3254ed75592437eb5311aa",
}


def digest(rows: object) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


class Recording(Simulation):
    """A simulation that keeps every placement: (task, job, attempt, site, replica)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.placed: list[tuple] = []

    def _broker(self, jobs, avoid=None) -> None:
        super()._broker(jobs, avoid)
        self.placed.extend((self.sc.tasks.index(j.task.spec), j.index, j.attempt, j.site,
                            j.read_from) for j in jobs)


def placements(policy: str) -> tuple[int, str]:
    sim = Recording(parse(SCENARIO), policy)
    sim.run()
    return len(sim.placed), digest(sim.placed)


@pytest.mark.parametrize("policy", [str(p) for p in Policy])
def test_the_simulator_places_every_job_as_before(policy):
    n, got = placements(policy)
    assert n > 2_500, "every job placed, retries too"
    assert got == SIM_DIGESTS[policy]


def snapshot() -> tuple[list[SiteLoad], dict]:
    """Nine sites: caches, readers, measured rates, failures, one offline."""
    loads = [
        SiteLoad("A", "grid", "online", 40, queued=5, running=30, endpoint="ep-a",
                 slot_rate=18_000.0, failure_rate=0.01, mean_job_s=40.0,
                 readers={"ep-b": 3}),
        SiteLoad("B", "grid", "online", 20, queued=0, running=10, endpoint="ep-b",
                 slot_rate=25_000.0, cached=frozenset({"f1", "f2", "f3"}),
                 cache_bytes=10_000 * 10**6),
        SiteLoad("C", "grid", "online", 8, endpoint="ep-c", failure_rate=0.3,
                 cache_bytes=2_000 * 10**6, cached=frozenset({"f4"})),
        SiteLoad("D", "batch", "online", 16, queued=20, running=16, slot_rate=9_000.0,
                 mean_job_s=90.0, readers={"ep-a": 10, "ep-c": 2}),
        SiteLoad("E", "grid", "offline", 30, reason="pilots lost", endpoint="ep-e"),
        SiteLoad("F", "grid", "online", 1, endpoint="ep-f", failure_rate=0.99),
        SiteLoad("G", "grid", "online", 12, running=3, cache_bytes=50_000 * 10**6),
        SiteLoad("H", "grid", "online", 6, endpoint="ep-h", slot_rate=30_000.0),
        SiteLoad("I", "grid", "online", 0, queued=2),
    ]
    links = {
        ("ep-a", "B"): Link("ep-a", "B", 5.0, 80.0, source="declared"),
        ("ep-a", "C"): Link("ep-a", "C", 0.0, 10.0, source="declared"),
        ("ep-b", "A"): LinkEstimate("ep-b", "A", 40.0, 30.0, observations=7, updated_at=90.0),
        ("ep-c", "D"): LinkEstimate("ep-c", "D", 300.0, 5.0, observations=2, updated_at=0.0),
        ("ep-a", "H"): Link("ep-a", "H", 250.0, 2.0, source="declared"),
        ("ep-h", "H"): Link("ep-h", "H", 20.0, 1.0, source="declared"),
        ("ep-a", "G"): LinkEstimate("ep-a", "G", 2.0, 100.0, observations=30, updated_at=99.0),
    }
    return loads, links


def live_bulk() -> list[Request]:
    """Sixty jobs of a few shapes, as a submission of several tasks would bring."""
    rng = random.Random(5)
    mb = 10**6
    out = []
    for i in range(60):
        shape = i % 6
        files = tuple(f"f{(i + k) % 6}" for k in range(1 + i % 3))
        if shape == 0:    # data at A, read in part
            ib = {"ep-a": 400 * mb}
        elif shape == 1:  # replicas at A and B
            ib = {"ep-a": 900 * mb, "ep-b": 900 * mb}
        elif shape == 2:  # no input: compute only
            ib, files = {}, ()
        elif shape == 3:  # data at C and H
            ib = {"ep-c": 150 * mb, "ep-h": 150 * mb}
        elif shape == 4:  # data nowhere a site stands: every site reads remotely
            ib = {"ep-x": 1_000 * mb}
        else:             # small, many requests, whole files worth staging
            ib = {"ep-a": 60 * mb}
        events = rng.choice([0, 50_000, 400_000, 2_000_000])
        sites = ("ANY",) if i % 7 else ("B", "C", "D", "E")
        avoid = frozenset({"A", "B"} if i % 11 == 0 else {"D"} if i % 13 == 0 else set())
        out.append(Request(sites=sites, avoid=avoid, near=frozenset(ib), events=events,
                           input_bytes=ib, files=files, read_requests=1 + 20 * (i % 4),
                           file_bytes=sum(ib.values()) * (1 + i % 2)))
    return out


@pytest.mark.parametrize("policy", [str(p) for p in Policy])
def test_a_live_placement_records_the_same_explanation(policy):
    loads, links = snapshot()
    choices = choose(live_bulk(), loads, random.Random(3), links=links, policy=policy,
                     now=100.0)
    rows = [c.info for c in choices]
    kinds = {r.get("access") for r in rows}
    assert {"picked"} <= set(rows[0]) and len({r["picked"] for r in rows}) > 1
    if policy == "network":  # the snapshot exercises every way of reading
        assert {"local", "remote", "stage-in", "cache"} <= kinds | {
            c["access"] for r in rows for c in r["candidates"]}
    assert digest([rows, [(s.name, s.queued, s.readers) for s in loads]]) == \
        RECORD_DIGESTS[policy]
