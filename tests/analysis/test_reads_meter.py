"""The meter: what a job read per storage endpoint (bytes, seconds, requests), the
observations the server learns its links from.

The kind of fault: a read path that escapes the meter (so a link looks idle, or fast),
or reads counted for the wrong endpoint.  Members tested: eager reads (``columns=``),
lazy reads (a branch touched later), prefetch, the metadata read when a file opens; a
local file (the site's own endpoint) and a replica served over HTTP (its endpoint); and
a throttled endpoint that must measure slower than a fast one.
"""

from __future__ import annotations

import awkward as ak
import pytest
from harness import RangeFileServer

from panda_lab import reads
from panda_lab.analysis import events as events_mod
from panda_lab.analysis.events import read_chunk
from panda_lab.analysis.sample import make_sample
from panda_lab.model.splitter import Chunk


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("meter"), files=1, events=40_000,
                       basket_events=10_000, compression=None)[0]


@pytest.fixture(autouse=True)
def fresh():
    events_mod._forget_open_trees()  # every test opens its files itself
    reads.take()
    yield
    reads.take()


def test_a_local_read_counts_for_the_sites_own_endpoint(sample, monkeypatch):
    monkeypatch.setenv(reads.LOCAL_ENDPOINT, "HERE")
    arrays = read_chunk(Chunk(0, str(sample), "Events", 0, 20_000), ["Muon"])
    assert len(arrays) == 20_000
    [got] = reads.take()
    assert got["endpoint"] == "HERE"
    # the muon branches of 20,000 events, uncompressed, plus the metadata
    assert got["bytes"] > 20_000 * 4 and got["requests"] >= 2 and got["seconds"] > 0
    assert reads.take() == []  # taken: the next job starts from zero


def test_lazy_and_prefetched_reads_are_counted_too(sample, monkeypatch):
    monkeypatch.setenv(reads.LOCAL_ENDPOINT, "HERE")
    chunk = Chunk(0, str(sample), "Events", 0, 10_000)
    lazy = read_chunk(chunk, prefetch=["nMuon"])
    after_prefetch = reads.take()[0]["bytes"]
    assert after_prefetch > 10_000  # nMuon for 10,000 events, and the metadata
    ak.sum(lazy.Muon.pt)            # a branch read on first touch
    assert reads.take()[0]["bytes"] >= 10_000 * 4


def test_a_replica_counts_for_its_endpoint_and_a_slow_one_measures_slower(sample):
    fast = RangeFileServer(sample.parent)
    slow = RangeFileServer(sample.parent, rate=2e6)  # 2 MB/s
    try:
        urls = {name: f"{web.url}/{sample.name}" for name, web in
                (("FAST", fast), ("SLOW", slow))}
        for name, url in urls.items():
            reads.remember(url, name)
            read_chunk(Chunk(0, url, "Events", 0, 1_000), ["Muon"])  # open: warm up
        reads.take()
        sent = {"FAST": fast.sent, "SLOW": slow.sent}
        for url in urls.values():
            read_chunk(Chunk(0, url, "Events", 10_000, 30_000), ["Muon"])
        got = {r["endpoint"]: r for r in reads.take()}
        assert set(got) == {"FAST", "SLOW"}
        for name, web in (("FAST", fast), ("SLOW", slow)):
            # what the server sent is what was counted (uproot asks for what it reads)
            assert got[name]["bytes"] == web.sent - sent[name], name
        rate = {n: r["bytes"] / r["seconds"] for n, r in got.items()}
        print(f"measured MB/s: fast {rate['FAST'] / 1e6:.1f}, slow {rate['SLOW'] / 1e6:.2f}")
        assert rate["SLOW"] < 2.1e6 and rate["FAST"] > 3 * rate["SLOW"]
    finally:
        fast.stop()
        slow.stop()


def test_reads_that_move_nothing_are_not_reported():
    reads.add("X", 0, 0.5, 1)
    assert reads.take() == []
