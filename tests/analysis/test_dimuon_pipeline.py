"""The whole path on the generated dataset: split, read, process, merge == one direct pass."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from analysis_helpers import SAMPLE_EVENTS, SAMPLE_FILES, process, reference, split, split_events

from panda_lab.analysis.accumulate import merge_all
from panda_lab.analysis.events import discover_columns, read_chunk
from panda_lab.analysis.files import inspect_file
from panda_lab.model.splitter import SplitRule

BRANCHES = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]


@pytest.fixture(scope="module")
def direct(sample_files) -> dict:
    """All events at once from ``tree.arrays``, without panda_lab's reading or merging."""
    parts = []
    for path in sample_files:
        with uproot.open(path) as f:
            parts.append(f["Events"].arrays(BRANCHES))
    return reference(ak.concatenate(parts))


def assert_same(result: dict, expected: dict) -> None:
    assert result["events"] == expected["events"] == SAMPLE_EVENTS * SAMPLE_FILES
    assert result["pairs"] == expected["pairs"] > 0
    assert np.array_equal(result["mass"].values(flow=True), expected["mass"].values(flow=True))


@pytest.mark.parametrize("events_per_job", [3_000, 7_000, 10**6])
def test_chunked_mass_equals_single_pass(sample_files, direct, events_per_job):
    files = [inspect_file(p, "Events") for p in sample_files]
    chunks = split_events(files, events_per_job)
    columns = discover_columns(process, chunks[0])
    assert columns == BRANCHES
    assert_same(merge_all(process(read_chunk(c, columns)) for c in chunks), direct)


def test_lazy_reading_and_split_by_whole_files_agree(sample_files, direct):
    files = [inspect_file(p, "Events") for p in sample_files]
    jobs = split(files, SplitRule("files", files_per_job=1))
    assert len(jobs) == 2
    assert_same(merge_all(process(read_chunk(c)) for job in jobs for c in job), direct)


def test_the_peak_is_the_z(direct):
    h = direct["mass"]
    centers, values = h.axes[0].centers, h.values()
    assert abs(centers[np.argmax(values)] - 91.19) < 1.5
