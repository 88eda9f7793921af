"""A dimuon processor and its independent reference, shared by the analysis tests.

The reference reads NanoAOD branch names straight from uproot (``Muon_pt``, ...), so it does not
go through the grouping of ``read_chunk`` it is compared with.
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
import uproot

from panda_lab.analysis.files import FileInfo
from panda_lab.model.splitter import Chunk, SplitRule, split_all

# The generated dataset of the tests (conftest's ``sample_files``): 7 clusters per file, the
# last one short.
SAMPLE_FILES = 2
SAMPLE_EVENTS = 20_000
SAMPLE_BASKET = 3_000


def split(infos: list[FileInfo], rule: SplitRule) -> list[list[Chunk]]:
    """The server's splitter over inspected files (``file_index`` their place in the list):
    every job's chunks, as :class:`Chunk` s."""
    files = [{**info.to_dict(), "file_index": k} for k, info in enumerate(infos)]
    return [[Chunk.from_dict(c) for c in job] for job in split_all(files, rule)]


def split_events(infos: list[FileInfo], events_per_job: int) -> list[Chunk]:
    """The chunks of mode ``events`` (one per job), in input order."""
    return [c for job in split(infos, SplitRule("events", events_per_job)) for c in job]


def mass_hist() -> hist.Hist:
    return hist.Hist.new.Reg(120, 0.0, 150.0, name="mass", label="m(mu mu) [GeV]").Double()


def pair_mass(pt, eta, phi, mass) -> np.ndarray:
    """Invariant mass of muon pairs from ``(n, 2)`` arrays, in float64 with plain numpy."""
    pt, eta, phi, mass = (np.asarray(x, dtype=np.float64) for x in (pt, eta, phi, mass))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    m2 = energy.sum(1) ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2 - pz.sum(1) ** 2
    return np.sqrt(np.maximum(m2, 0.0))


def process(events: ak.Array) -> dict:
    """Mass of events with exactly two opposite-charge muons: a histogram and a count."""
    muons = events.Muon[ak.num(events.Muon) == 2]
    muons = muons[muons.charge[:, 0] * muons.charge[:, 1] < 0]
    as_pairs = [ak.to_numpy(muons[f]).reshape(-1, 2) for f in ("pt", "eta", "phi", "mass")]
    h = mass_hist()
    h.fill(pair_mass(*as_pairs))
    return {"mass": h, "pairs": len(muons), "events": len(events)}


def reference(arrays: dict) -> dict:
    """What :func:`process` computes, from uproot's flat NanoAOD branch names."""
    two = np.asarray(arrays["nMuon"]) == 2
    cols = {
        k: ak.to_numpy(arrays[f"Muon_{k}"][two]).reshape(-1, 2)
        for k in ("pt", "eta", "phi", "mass", "charge")
    }
    opposite = cols["charge"][:, 0] * cols["charge"][:, 1] < 0
    h = mass_hist()
    h.fill(pair_mass(*(cols[k][opposite] for k in ("pt", "eta", "phi", "mass"))))
    return {"mass": h, "pairs": int(opposite.sum()), "events": len(two)}


def dimuon_reference(paths, tree: str = "Events") -> hist.Hist:
    """The dimuon mass (``panda_lab.analysis.dimuon``'s axis) of whole files, read with plain
    uproot and computed with :func:`pair_mass`: independent of panda-lab's reading and maths."""
    from panda_lab.analysis.dimuon import MASS_AXIS

    h = hist.Hist(MASS_AXIS)
    for path in paths:
        with uproot.open(path) as f:
            arrays = f[tree].arrays(["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass",
                                     "Muon_charge"], how=dict)
        two = np.asarray(arrays["nMuon"]) == 2
        cols = {k: ak.to_numpy(arrays[f"Muon_{k}"][two]).reshape(-1, 2)
                for k in ("pt", "eta", "phi", "mass", "charge")}
        opposite = cols["charge"][:, 0] * cols["charge"][:, 1] < 0
        h.fill(pair_mass(*(cols[k][opposite] for k in ("pt", "eta", "phi", "mass"))))
    return h


class _NoBranches(dict):
    """An empty branch list that uproot's writer takes (it refuses ``len() == 0``)."""

    def __len__(self) -> int:
        return 1


def write_branchless_tree(path, tree: str = "Events"):
    """A TTree with no branch and no entry, as ROOT writes for a tree never filled: uproot
    refuses to write one, so its length check is sidestepped; uproot reads it back as a TTree
    of 0 entries and no branches."""
    with uproot.recreate(path) as f:
        f.mktree(tree, _NoBranches())
    with uproot.open(path) as f:
        assert f[tree].num_entries == 0 and f[tree].keys() == []
    return path
