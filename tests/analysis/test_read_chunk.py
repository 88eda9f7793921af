"""read_chunk and discover_columns: NanoAOD-style shape, only the branches needed, DataError."""

from __future__ import annotations

import os
from types import SimpleNamespace

import awkward as ak
import numpy as np
import pytest
import uproot
from analysis_helpers import SAMPLE_BASKET, process, split_events

from panda_lab.analysis import events as events_module
from panda_lab.analysis.errors import DataError
from panda_lab.analysis.events import discover_columns, read_chunk
from panda_lab.analysis.files import inspect_file
from panda_lab.analysis.lazy import keyed_form
from panda_lab.analysis.sample import make_sample
from panda_lab.analysis.schema import select, tree_layout
from panda_lab.analysis.trees import TTreeView
from panda_lab.model.splitter import Chunk

MUON_FIELDS = ["pt", "eta", "phi", "mass", "charge"]
DIMUON_BRANCHES = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]


@pytest.fixture(scope="module")
def chunk(sample_files) -> Chunk:
    """The second chunk of the first file: entries 3000-6000, so offsets matter."""
    return split_events([inspect_file(sample_files[0], "Events")], SAMPLE_BASKET)[1]


def test_collections_become_records_and_flat_branches_stay(chunk):
    events = read_chunk(chunk, ["event", "Muon", "nMuon"])
    assert events.fields == ["event", "nMuon", "Muon"]  # in tree order
    assert events.Muon.fields == MUON_FIELDS
    assert str(events.type) == (
        "3000 * {event: uint64, nMuon: int32, Muon: var * {pt: float32, eta: float32, "
        "phi: float32, mass: float32, charge: int32}}"
    )
    with uproot.open(chunk.path) as f:
        direct = f["Events"].arrays(
            ["event", "Muon_pt", "Muon_charge"], entry_start=chunk.start, entry_stop=chunk.stop
        )
    assert ak.array_equal(events.Muon.pt, direct.Muon_pt)
    assert ak.array_equal(events.Muon.charge, direct.Muon_charge)
    assert ak.array_equal(events.event, direct.event)


def test_columns_by_branch_collection_or_field_path(chunk):
    assert read_chunk(chunk, ["Muon_pt"]).Muon.fields == ["pt"]
    assert read_chunk(chunk, ["Muon.eta", "Muon.pt"]).Muon.fields == ["pt", "eta"]
    assert read_chunk(chunk, ["run"]).fields == ["run"]


def test_the_counter_alone_still_gives_the_collection_shape(chunk):
    events = read_chunk(chunk, ["nMuon"])
    assert events.fields == ["nMuon", "Muon"] and events.Muon.fields == []
    assert ak.array_equal(ak.num(events.Muon), events.nMuon, dtype_exact=False)


def test_lazy_array_has_every_branch_and_equals_the_eager_one(chunk, sample_files):
    lazy = read_chunk(chunk)
    eager = read_chunk(chunk, inspect_file(sample_files[0], "Events").branches)
    assert lazy.fields == eager.fields == ["run", "luminosityBlock", "event", "nMuon", "Muon"]
    assert lazy.type == eager.type
    assert ak.array_equal(lazy, eager)


def test_discovery_finds_exactly_the_branches_the_processor_reads(chunk):
    assert discover_columns(process, chunk) == DIMUON_BRANCHES
    assert discover_columns(lambda events: len(events), chunk) == []
    assert discover_columns(lambda events: ak.sum(events.run), chunk) == ["run"]


def test_discovery_counts_lazy_arrays_the_processor_returns(chunk):
    assert discover_columns(lambda events: {"eta": [events.Muon.eta]}, chunk) == [
        "nMuon",
        "Muon_eta",
    ]


def test_discovered_columns_give_the_same_result(chunk):
    columns = discover_columns(process, chunk, max_entries=200)
    eager, lazy = process(read_chunk(chunk, columns)), process(read_chunk(chunk))
    assert eager["pairs"] == lazy["pairs"] > 0
    assert np.array_equal(eager["mass"].values(flow=True), lazy["mass"].values(flow=True))


def test_processor_errors_in_discovery_propagate_with_a_note(chunk):
    def broken(events):
        return events.Muon.pt / events.nope

    with pytest.raises(AttributeError) as err:
        discover_columns(broken, chunk)
    assert any("discovering columns" in note for note in err.value.__notes__)


def test_grouping_rules(tmp_path):
    path = tmp_path / "groups.root"
    with uproot.recreate(path) as f:
        tree = f.mktree(
            "Events",
            {
                "Jet": ak.types.from_datashape(
                    "var * {pt: float32, eta: float32}", highlevel=False
                ),
                "MET_pt": np.float32,
                "Tau": np.int32,
                "Tau_pt": "var * float32",
                "weights": "var * float64",
            },
        )
        tree.extend(
            {
                "Jet": ak.Array(
                    [[{"pt": 1.0, "eta": 0.5}], [], [{"pt": 2, "eta": 1}, {"pt": 3, "eta": 2}]]
                ),
                "MET_pt": np.array([1, 2, 3], np.float32),
                "Tau": np.array([1, 0, 2], np.int32),
                "Tau_pt": ak.Array([[1.0], [], [2.0, 3.0]]),
                "weights": ak.Array([[1.0, 2.0], [], [3.0]]),
            }
        )
    whole = Chunk(0, str(path), "Events", 0, 3)
    for events in (read_chunk(whole), read_chunk(whole, inspect_file(path, "Events").branches)):
        # Jet_* is a collection; a flat MET_pt stays flat; Tau_pt cannot become Tau (a branch
        # has that name); a jagged branch without a prefix stays itself.
        assert events.fields == [
            "nJet",
            "Jet",
            "MET_pt",
            "Tau",
            "nTau_pt",
            "Tau_pt",
            "nweights",
            "weights",
        ]
        assert events.Jet.fields == ["pt", "eta"]
        assert events.Jet.pt.tolist() == [[1.0], [], [2.0, 3.0]]
        assert events.weights.tolist() == [[1.0, 2.0], [], [3.0]]


def test_unknown_column(chunk):
    with pytest.raises(DataError, match="no branch or collection 'Muon_ptt'; did you mean") as e:
        read_chunk(chunk, ["Muon_ptt"])
    assert (e.value.entry_start, e.value.entry_stop) == (chunk.start, chunk.stop)


def test_entry_range_outside_the_tree(chunk):
    beyond = Chunk(0, chunk.path, chunk.tree, 19_000, 25_000)
    with pytest.raises(DataError, match="outside the tree, which has 20000 entries"):
        read_chunk(beyond, ["run"])


def test_missing_file_and_wrong_tree(tmp_path, chunk):
    with pytest.raises(DataError, match="file not found"):
        read_chunk(Chunk(0, str(tmp_path / "gone.root"), "Events", 0, 10))
    with pytest.raises(DataError, match="tree not found; trees in this file: 'Events'"):
        read_chunk(Chunk(0, chunk.path, "Evts", 0, 10), ["run"])


@pytest.fixture
def corrupt_copy(sample_files, tmp_path):
    """The first file with the compressed data of Muon_pt's second basket overwritten."""
    data = bytearray(sample_files[0].read_bytes())
    with uproot.open(sample_files[0]) as f:
        branch = f["Events"]["Muon_pt"]
        seek = int(branch.member("fBasketSeek")[1])
        size = int(branch.member("fBasketBytes")[1])
    data[seek + size // 2 : seek + size // 2 + 64] = b"\xff" * 64
    path = tmp_path / "corrupt.root"
    path.write_bytes(bytes(data))
    return path


def test_corrupt_basket_eager_and_lazy(corrupt_copy, chunk):
    bad = Chunk(0, str(corrupt_copy), chunk.tree, chunk.start, chunk.stop)
    with pytest.raises(DataError, match="cannot read") as err:
        read_chunk(bad, ["Muon_pt"])
    assert (err.value.file, err.value.entry_start, err.value.entry_stop) == (
        str(corrupt_copy),
        3000,
        6000,
    )
    lazy = read_chunk(bad)
    assert ak.sum(lazy.run) > 0  # other branches still read fine
    with pytest.raises(DataError, match="cannot read 'Muon_pt'"):
        ak.sum(lazy.Muon.pt)


def test_a_rewritten_file_is_read_again(tmp_path):
    (path,) = make_sample(tmp_path, files=1, events=500, seed=1, basket_events=100)
    whole = Chunk(0, str(path), "Events", 0, 500)
    first = read_chunk(whole, ["Muon_pt"])
    make_sample(tmp_path, files=1, events=500, seed=2, basket_events=100)
    assert not ak.array_equal(read_chunk(whole, ["Muon_pt"]).Muon.pt, first.Muon.pt)


@pytest.mark.parametrize(
    "form",
    [
        ak.forms.NumpyForm("float32"),
        ak.forms.NumpyForm("bool"),
        ak.forms.ListOffsetForm("i64", ak.forms.NumpyForm("int32")),
    ],
)
def test_direct_form_keys_are_those_of_to_buffers(form):
    keyed, keys = keyed_form("Muon_pt", form)
    generic, _, buffers = ak.to_buffers(form.length_zero_array(), form_key="Muon_pt#{id}")
    assert keyed == generic and keys == list(buffers)


class _Branch:
    def __init__(self, name: str, form=None) -> None:
        self.name, self._form, self.count_branch = name, form, None

    @property
    def interpretation(self):
        if self._form is None:
            raise ValueError("unknown class MyObject")
        return SimpleNamespace(awkward_form=lambda file: self._form)


def test_a_branch_uproot_cannot_interpret_only_fails_when_asked_for(chunk):
    branches = [_Branch("x", ak.forms.NumpyForm("float64")), _Branch("obj")]
    layout = tree_layout(TTreeView(SimpleNamespace(branches=branches, file=None)))
    assert layout.field_names() == ["x"]
    assert select(layout, ["x"], chunk).field_names() == ["x"]
    with pytest.raises(DataError, match="uproot cannot read 'obj': unknown class MyObject"):
        select(layout, ["obj"], chunk)


def test_a_forked_child_opens_its_own_files(chunk):
    read_chunk(chunk, ["run"])  # cached in this process
    pid = os.fork()
    if pid == 0:  # the child must not reuse the parent's file object
        ok = False
        try:
            ok = not events_module._open_trees and read_chunk(chunk, ["run"]).run[0] == 1000
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
