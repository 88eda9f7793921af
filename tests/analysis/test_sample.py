"""The synthetic dimuon dataset: TTree layout, basket alignment, determinism, physics."""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot
from analysis_helpers import SAMPLE_BASKET, SAMPLE_EVENTS, pair_mass

from panda_lab.analysis.files import inspect_file
from panda_lab.analysis.sample import make_sample

BRANCH_TYPES = {
    "run": "int32_t",
    "luminosityBlock": "int32_t",
    "event": "uint64_t",
    "nMuon": "int32_t",
    "Muon_pt": "float[]",
    "Muon_eta": "float[]",
    "Muon_phi": "float[]",
    "Muon_mass": "float[]",
    "Muon_charge": "int32_t[]",
}


def _all_arrays(path) -> dict[str, ak.Array]:
    with uproot.open(path) as f:
        return f["Events"].arrays(how=dict)


def test_files_are_ttrees_with_nanoaod_branches(sample_files):
    assert [p.name for p in sample_files] == ["dimuon_000.root", "dimuon_001.root"]
    for path in sample_files:
        with uproot.open(path) as f:
            assert f.classnames() == {"Events;1": "TTree"}
            tree = f["Events"]
            assert tree.num_entries == SAMPLE_EVENTS
            assert tree.typenames() == BRANCH_TYPES
            assert tree["Muon_pt"].count_branch.name == "nMuon"


def test_one_basket_per_block_so_clusters_are_multiples_of_basket_events(sample_files):
    info = inspect_file(sample_files[0], "Events")
    assert info.clusters == [*range(0, SAMPLE_EVENTS, SAMPLE_BASKET), SAMPLE_EVENTS]
    with uproot.open(sample_files[0]) as f:
        for branch in f["Events"].branches:
            assert list(branch.entry_offsets) == info.clusters


def test_same_seed_same_events_whatever_the_basket_size(sample_files, tmp_path):
    again = make_sample(tmp_path / "a", files=2, events=SAMPLE_EVENTS, basket_events=SAMPLE_BASKET)
    relaid = make_sample(tmp_path / "b", files=2, events=SAMPLE_EVENTS, basket_events=777)
    for first, second, third in zip(sample_files, again, relaid, strict=True):
        a, b, c = _all_arrays(first), _all_arrays(second), _all_arrays(third)
        for name in BRANCH_TYPES:
            assert ak.array_equal(a[name], b[name]), name
            assert ak.array_equal(a[name], c[name]), name
    assert inspect_file(relaid[0], "Events").clusters[:3] == [0, 777, 1554]


def test_other_seed_or_file_other_events(sample_files, tmp_path):
    other = make_sample(
        tmp_path, files=1, events=SAMPLE_EVENTS, seed=7, basket_events=SAMPLE_BASKET
    )
    a, b = _all_arrays(sample_files[0]), _all_arrays(other[0])
    c = _all_arrays(sample_files[1])
    assert not ak.array_equal(a["Muon_pt"], b["Muon_pt"])
    assert not ak.array_equal(a["Muon_pt"], c["Muon_pt"])
    assert set(np.unique(c["run"])) == {1001}
    assert np.array_equal(ak.to_numpy(c["event"]), np.arange(1, SAMPLE_EVENTS + 1))


def test_empty_file(tmp_path):
    (path,) = make_sample(tmp_path, files=1, events=0)
    info = inspect_file(path, "Events")
    assert (info.entries, info.clusters) == (0, [0])


def test_muon_multiplicities_and_ordering(sample_files):
    a = _all_arrays(sample_files[0])
    counts = np.bincount(np.asarray(a["nMuon"]), minlength=4)
    assert len(counts) == 4 and (counts > 0).all()
    assert counts[2] / counts.sum() > 0.6
    assert np.array_equal(ak.to_numpy(ak.num(a["Muon_pt"])), ak.to_numpy(a["nMuon"]))
    pt = a["Muon_pt"]
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    assert ak.all(np.abs(a["Muon_charge"]) == 1)


def test_opposite_charge_pairs_peak_at_the_z(sample_files):
    a = _all_arrays(sample_files[0])
    two = np.asarray(a["nMuon"]) == 2
    cols = {k: ak.to_numpy(a[f"Muon_{k}"][two]) for k in ("pt", "eta", "phi", "mass", "charge")}
    mass = pair_mass(cols["pt"], cols["eta"], cols["phi"], cols["mass"])
    opposite = cols["charge"][:, 0] != cols["charge"][:, 1]
    assert 0.03 < (~opposite).mean() < 0.2  # same-sign pairs exist, so the selection matters
    window = mass[opposite & (mass > 81) & (mass < 101)]
    assert len(window) > 0.3 * opposite.sum()
    assert abs(np.median(window) - 91.19) < 0.3
    assert 1.5 < np.subtract(*np.percentile(window, [75, 25])) / 2 < 3.5  # half-IQR ~ width
    below = mass[opposite & (mass > 12) & (mass < 60)]
    counts, _ = np.histogram(below, bins=4, range=(12, 60))
    assert (np.diff(counts) < 0).all()  # a falling continuum under the peak
