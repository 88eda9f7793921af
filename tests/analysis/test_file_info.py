"""inspect_file: metadata of good files, and a clear DataError for each kind of bad one."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import uproot
from analysis_helpers import SAMPLE_EVENTS

from panda_lab.analysis.errors import DataError
from panda_lab.analysis.files import FileInfo, inspect_file


def test_sample_file_metadata(sample_files):
    info = inspect_file(sample_files[0], "Events")
    assert info.path == str(sample_files[0])
    assert info.tree == "Events"
    assert info.entries == SAMPLE_EVENTS
    assert info.size_bytes == sample_files[0].stat().st_size
    assert info.clusters[0] == 0 and info.clusters[-1] == SAMPLE_EVENTS
    assert info.branches == [
        "run",
        "luminosityBlock",
        "event",
        "nMuon",
        "Muon_pt",
        "Muon_eta",
        "Muon_phi",
        "Muon_mass",
        "Muon_charge",
    ]
    assert FileInfo.from_dict(info.to_dict()) == info
    assert FileInfo.from_dict({**info.to_dict(), "file_index": 0, "replicas": []}) == info


def test_string_path_with_a_colon_is_not_uproot_object_syntax(sample_files, tmp_path):
    odd = tmp_path / "a:b.root"
    odd.write_bytes(sample_files[0].read_bytes())
    assert inspect_file(str(odd), "Events").entries == SAMPLE_EVENTS


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.root"
    with pytest.raises(DataError, match="file not found") as err:
        inspect_file(missing, "Events")
    assert (err.value.file, err.value.tree) == (str(missing), "Events")
    assert err.value.reason == "file not found"


@pytest.mark.parametrize("content", [b"", b"this is not ROOT" * 100], ids=["empty", "garbage"])
def test_not_a_root_file(tmp_path, content):
    bad = tmp_path / "bad.root"
    bad.write_bytes(content)
    with pytest.raises(DataError, match="not a ROOT file or corrupt") as err:
        inspect_file(bad, "Events")
    assert err.value.file == str(bad)


def test_truncated_file(sample_files, tmp_path):
    data = sample_files[0].read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        inspect_file(cut, "Events")
    assert str(len(data)) in err.value.reason


def test_wrong_tree_name_lists_the_trees(sample_files):
    with pytest.raises(DataError, match="tree not found") as err:
        inspect_file(sample_files[0], "events")
    assert err.value.tree == "events"
    assert "'Events'" in err.value.reason


def test_trees_in_directories_and_objects_that_are_not_trees(tmp_path):
    path = tmp_path / "mixed.root"
    with uproot.recreate(path) as f:
        f["hist"] = np.histogram(np.arange(10.0), bins=5)
        tree = f.mktree("dir/inner", {"x": np.float64})
        tree.extend({"x": np.arange(5.0)})
    assert inspect_file(path, "dir/inner").entries == 5
    with pytest.raises(DataError, match="trees in this file: 'dir/inner'"):
        inspect_file(path, "Events")
    with pytest.raises(DataError, match="'hist' is a TH1D, not a TTree or an RNTuple"):
        inspect_file(path, "hist")


def test_data_error_pickles_with_its_attributes():
    err = DataError("f.root", "Events", "bad basket", 10, 20)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DataError
    assert (back.file, back.tree, back.reason, back.entry_start, back.entry_stop) == (
        "f.root",
        "Events",
        "bad basket",
        10,
        20,
    )
    assert str(back) == str(err) == "f.root (tree 'Events', entries 10-20): bad basket"
