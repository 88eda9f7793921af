"""A site's own storage is read over a link too: free while nothing is known of it, its
declared or learned throughput once something is.

The kind of fault: a site near the data always winning although its own storage is the
slow path (a throttled door, a busy disk).  Members: unknown own link (free), a slow
learned own link (loses to a fast one), an own link declared unusable (filtered).
"""

from __future__ import annotations

import random

from panda_lab.model.brokerage import Request, SiteLoad, choose
from panda_lab.model.network import Link

MB = 1_000_000


def loads():
    return [SiteLoad("A", "local", "online", 2, endpoint="disk-a"),
            SiteLoad("B", "local", "online", 2, endpoint="disk-b")]


def request():
    return Request(events=10_000, input_bytes={"disk-a": 50 * MB, "disk-b": 50 * MB})


def candidates(links):
    [c] = choose([request()], loads(), random.Random(1), links=links)
    return {x["site"]: x for x in c.info["candidates"]}


def test_an_own_link_nothing_is_known_of_is_free():
    got = candidates({})
    assert got["A"]["est"]["read_s"] == got["B"]["est"]["read_s"] == 0
    assert got["A"]["weight"] == got["B"]["weight"]


def test_a_slow_own_link_weighs_less_than_a_fast_one():
    links = {("disk-a", "A"): Link("disk-a", "A", 100.0, 1.0, 5, 10.0, "learned"),
             ("disk-b", "B"): Link("disk-b", "B", 0.5, 1.0, 5, 10.0, "learned")}
    got = candidates(links)
    assert got["B"]["est"]["read_s"] > 50 * got["A"]["est"]["read_s"] > 0
    assert got["A"]["weight"] > 5 * got["B"]["weight"]
    assert got["B"]["link"] == {"endpoint": "disk-b", "mbps": 0.5, "source": "learned",
                                "observations": 5}
    placed = [c.site for c in choose([request()] * 40, loads(), random.Random(2),
                                     links=links)]
    assert placed.count("A") > 3 * placed.count("B")


def test_an_own_link_declared_unusable_filters_the_site():
    got = candidates({("disk-b", "B"): Link("disk-b", "B", 0.0, 0.0, source="declared")})
    assert got["B"]["filter"] == "link" and got["A"]["picked"]
