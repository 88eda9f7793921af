"""Files written by ROOT itself (CMS Open Data, from ../shared/data): chunked == direct uproot.

These are the extra tier: skipped where ``../shared/data`` is absent, required in CI.
"""

from __future__ import annotations

import itertools

import awkward as ak
import hist
import numpy as np
import uproot
from analysis_helpers import split_events

from panda_lab.analysis.accumulate import merge_all
from panda_lab.analysis.events import discover_columns, read_chunk
from panda_lab.analysis.files import inspect_file
from panda_lab.model.splitter import Chunk

ZMUMU = "uproot-Zmumu.root"
NANOAOD = "nanoAOD_2015_CMS_Open_Data_ttbar.root"


def m_hist(events: ak.Array) -> hist.Hist:
    return hist.Hist.new.Reg(60, 0, 120, name="M").Double().fill(ak.to_numpy(events.M))


def muon_pt_hist(events: ak.Array) -> hist.Hist:
    h = hist.Hist.new.Reg(50, 0, 200, name="pt").Double()
    return h.fill(ak.to_numpy(ak.flatten(events.Muon.pt)))


def sub_chunks(info, size: int) -> list[Chunk]:
    """Ranges inside one cluster: read_chunk accepts any range, the splitter only cuts clusters."""
    edges = [*range(0, info.entries, size), info.entries]
    return [Chunk(0, info.path, info.tree, a, b) for a, b in itertools.pairwise(edges)]


def test_zmumu_flat_branches(shared_data):
    path = shared_data / ZMUMU
    info = inspect_file(path, "events")
    assert info.entries == 2304 and "M" in info.branches and "pt1" in info.branches
    with uproot.open(path) as f:
        expected = m_hist(f["events"].arrays(["M"]))
    chunks = split_events([info], 500)
    assert discover_columns(m_hist, chunks[0]) == ["M"]
    for parts in (chunks, sub_chunks(info, 500)):
        merged = merge_all(m_hist(read_chunk(c, ["M"])) for c in parts)
        assert np.array_equal(merged.values(flow=True), expected.values(flow=True))
    events = read_chunk(chunks[0], ["pt1", "Q1", "M"])
    assert events.fields == ["pt1", "Q1", "M"]  # flat file: no grouping


def test_nanoaod_muon_collection(shared_data):
    path = shared_data / NANOAOD
    info = inspect_file(path, "Events")
    assert info.entries == 200 and len(info.branches) == 947
    with uproot.open(path) as f:
        pt = f["Events"]["Muon_pt"].array()
    expected = hist.Hist.new.Reg(50, 0, 200, name="pt").Double().fill(ak.to_numpy(ak.flatten(pt)))
    assert expected.sum() > 0
    chunks = split_events([info], 50)  # one cluster (one basket per branch): one chunk
    assert [(c.start, c.stop) for c in chunks] == [(0, 200)]
    columns = discover_columns(muon_pt_hist, chunks[0])
    assert columns == ["nMuon", "Muon_pt"]
    for parts in (chunks, sub_chunks(info, 70)):
        for cols in (columns, None):
            merged = merge_all(muon_pt_hist(read_chunk(c, cols)) for c in parts)
            assert np.array_equal(merged.values(flow=True), expected.values(flow=True))


def test_nanoaod_collections_and_flat_branches(shared_data):
    info = inspect_file(shared_data / NANOAOD, "Events")
    events = read_chunk(Chunk(0, info.path, info.tree, 0, info.entries))
    assert {"Muon", "Electron", "Jet", "nMuon", "run", "event", "MET_pt"} <= set(events.fields)
    assert "Muon_pt" not in events.fields
    assert {"pt", "eta", "phi", "mass", "charge"} <= set(events.Muon.fields)
    assert ak.array_equal(ak.num(events.Jet), events.nJet, dtype_exact=False)
