"""Degenerate inputs to a dataset analysis get a defined answer, never an internal error.

The kind: input with nothing, or almost nothing, in it, and input the server can check before
it makes a job. An empty dataset analyses to an empty result and a report that says so; input
that cannot work is refused up front with an error that names the problem.

What an empty result is: a dataset whose files hold no entries still has a schema, so one job
runs the processor on no events of the first file and the result is the processor's own output
on zero events (an empty histogram with its axes, a count of 0), postprocessed as usual. A
dataset without any file has no schema: no job runs, the result is ``None``, and
``postprocess`` is not called.

Members tested:

* every file with 0 entries (split by events, by files, and ``"auto"``, which has no scouts to
  run): ``test_all_files_empty_gives_the_processors_zero_event_output``,
  ``test_auto_split_over_an_empty_dataset_runs_no_scouts``;
* a processor that cannot take zero events fails visibly, not as an empty result:
  ``test_a_processor_that_fails_on_no_events_is_not_an_empty_result``;
* zero files: ``test_a_dataset_without_files_analyses_to_none``;
* one entry: ``test_one_entry``;
* a tree with no branches: ``test_a_tree_without_branches``;
* empty and non-empty files mixed, the empty ones reported as 0 entries, done:
  ``test_empty_files_among_full_ones_are_reported_done_with_no_entries``;
* a file of exactly ``events_per_job`` entries and one of ``events_per_job + 1``:
  ``test_files_of_events_per_job_and_one_more_entries``;
* a glob that matches nothing: ``test_a_glob_that_matches_nothing_names_the_pattern``;
* a processor's columns missing from the tree, named (422 before any job) or discovered (a
  user error, not retried and not skipped as a bad file):
  ``test_named_columns_missing_from_every_file_are_refused_before_any_job``,
  ``test_discovered_column_missing_is_a_user_error_even_with_skip_bad_files``;
* RNTuple files with 0 entries: ``test_an_rntuple_with_no_entries_is_an_empty_dataset``;
* bad-but-checkable requests to the analysis endpoints, in the client
  (``test_split_arguments_are_checked_in_the_client``) and the server
  (``tests/server/test_api_errors.py::test_analysis_endpoints_refuse_checkable_input``).
"""

from __future__ import annotations

import awkward as ak
import hist
import numpy as np
import pandas as pd
import pytest
import uproot
from analysis_helpers import dimuon_reference, write_branchless_tree

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.files import missing_columns
from panda_lab.analysis.sample import write_file
from panda_lab.client.analysis import IncompleteResult
from panda_lab.http import ApiError


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


def count(events):
    return {"n": len(events)}


def mean_muons(events):
    return {"mean": int(ak.sum(events.nMuon)) / len(events)}


def uses_jets(events):
    return {"n": len(events.Jet)}


class WithPostprocess:
    """``postprocess`` runs once on the merged result; it would fail on ``None``."""

    def process(self, events):
        return {"n": len(events), "muons": int(ak.sum(events.nMuon))}

    def postprocess(self, result):
        return {**result, "seen": f"{result['n']} events"}


@pytest.fixture
def alab(module_server):
    lab = module_server.lab()
    yield lab
    lab.close()


def rows(task) -> list[tuple]:
    """The report as (job_index, file_index, start, stop, status), missing values as None."""
    rep = task.report()[["job_index", "file_index", "start", "stop", "status"]]
    return [tuple(None if pd.isna(v) else v for v in r)
            for r in rep.astype(object).itertuples(index=False)]


def empty_files(tmp_path, n: int) -> list[str]:
    return [str(write_file(tmp_path / f"empty_{i}.root", i, events=0)) for i in range(n)]


def assert_empty_mass_result(result: dict) -> None:
    assert result["n"] == 0
    assert isinstance(result["mass"], hist.Hist)
    assert result["mass"].axes[0] == MASS_AXIS
    assert result["mass"].sum() == 0 and not result["mass"].values().any()


@pytest.mark.parametrize("split", [{"events_per_job": 500}, {"files_per_job": 2}],
                         ids=["events", "files"])
def test_all_files_empty_gives_the_processors_zero_event_output(alab, tmp_path, split):
    paths = empty_files(tmp_path, 3)
    ds = alab.datasets.register("empty", paths, replace=True)
    assert (ds.n_files, ds.n_events) == (3, 0)
    task = alab.analyze(process, ds, name="empty", **split)
    result = task.result(timeout=120)
    assert_empty_mass_result(result)
    assert task.status == "done" and task.complete
    # one job read the first file's zero entries; the others are files without entries
    assert rows(task) == [(0, 0, 0, 0, "done"), (None, 1, 0, 0, "done"),
                          (None, 2, 0, 0, "done")]
    p = task.partial()
    assert (p.events, p.total_events, p.final) == (0, 0, True)
    assert list(p.per_file["entries"]) == [0, 0, 0]

    post = alab.analyze(WithPostprocess(), ds, name="empty-post", **split)
    assert post.result(timeout=120) == {"n": 0, "muons": 0, "seen": "0 events"}


def test_auto_split_over_an_empty_dataset_runs_no_scouts(alab, tmp_path):
    ds = alab.datasets.register("empty-auto", empty_files(tmp_path, 2), replace=True)
    task = alab.analyze(process, ds, events_per_job="auto", name="empty-auto")
    assert_empty_mass_result(task.result(timeout=120))
    rep = task.report()
    assert not rep["scout"].any() and task.scouting is None
    assert rows(task) == [(0, 0, 0, 0, "done"), (None, 1, 0, 0, "done")]
    assert task.status == "done"


def test_a_processor_that_fails_on_no_events_is_not_an_empty_result(alab, tmp_path):
    ds = alab.datasets.register("empty-div", empty_files(tmp_path, 1), replace=True)
    task = alab.analyze(mean_muons, ds, events_per_job=10, skip_bad_files=True,
                        name="empty-div")
    with pytest.raises(IncompleteResult) as err:
        task.result(timeout=120)
    path = tmp_path / "empty_0.root"
    assert str(err.value) == (f"task {task.id}: 0 of 0 events not processed (1 chunks: "
                              f"failed); first: {path}, entries 0 to 0: ZeroDivisionError: "
                              "division by zero; see .report")
    (row,) = err.value.report.itertuples()
    assert (row.start, row.stop, row.status, row.error_category) == (0, 0, "failed", "user")
    assert "ZeroDivisionError" in row.error


@pytest.mark.parametrize("split", [{"events_per_job": 10}, {"files_per_job": 1},
                                   {"events_per_job": "auto"}], ids=["events", "files", "auto"])
def test_a_dataset_without_files_analyses_to_none(alab, split):
    ds = alab.datasets.register("no-files", [], replace=True)
    assert (ds.n_files, ds.n_events, ds.files) == (0, 0, [])
    assert list(ds.files_frame().columns) == ["file_index", "path", "entries", "size_bytes"]
    task = alab.analyze(WithPostprocess(), ds, name="no-files", **split)
    assert task.result(timeout=60) is None            # no schema, no job, no postprocess
    assert task.status == "done" and task.complete
    assert task.report().empty
    p = task.partial()
    assert (p.events, p.total_events, p.jobs_merged, p.final) == (0, 0, 0, True)


def test_one_entry(alab, tmp_path):
    path = write_file(tmp_path / "one.root", 0, events=1, seed=7)
    ds = alab.datasets.register("one", [str(path)], replace=True)
    assert ds.n_events == 1 and ds.files[0]["clusters"] == [0, 1]
    task = alab.analyze(process, ds, events_per_job="auto", name="one")
    result = task.result(timeout=120)
    assert result["n"] == 1
    assert (result["mass"].values() == dimuon_reference([path]).values()).all()
    assert rows(task) == [(0, 0, 0, 1, "done")]


def test_a_tree_without_branches(alab, tmp_path):
    path = write_branchless_tree(tmp_path / "nobranches.root")
    ds = alab.datasets.register("no-branches", [str(path)], replace=True)
    assert ds.n_events == 0 and ds.files[0]["branches"] == []
    task = alab.analyze(count, ds, events_per_job=100, name="no-branches")
    assert task.result(timeout=120) == {"n": 0}
    assert rows(task) == [(0, 0, 0, 0, "done")]


def test_empty_files_among_full_ones_are_reported_done_with_no_entries(alab, tmp_path):
    full = write_file(tmp_path / "full.root", 1, events=2_000, seed=11, basket_events=500)
    one = write_file(tmp_path / "one.root", 3, events=1, seed=11)
    paths = [tmp_path / "e0.root", full, tmp_path / "e2.root", one]
    write_file(paths[0], 0, events=0)
    write_file(paths[2], 2, events=0)
    ds = alab.datasets.register("mixed", [str(p) for p in paths], replace=True)
    assert ds.n_events == 2_001
    expected = dimuon_reference([full, one]).values()
    task = alab.analyze(process, ds, name="mixed", events_per_job=1_000)
    result = task.result(timeout=120)
    assert result["n"] == 2_001 and (result["mass"].values() == expected).all()
    assert rows(task) == [(0, 1, 0, 1_000, "done"), (1, 1, 1_000, 2_000, "done"),
                          (2, 3, 0, 1, "done"),
                          (None, 0, 0, 0, "done"), (None, 2, 0, 0, "done")]
    assert list(task.partial().per_file["events_done"]) == [0, 2_000, 0, 1]
    assert list(task.partial().per_file["entries"]) == [0, 2_000, 0, 1]

    task = alab.analyze(process, ds, name="mixed-auto", events_per_job="auto")
    result = task.result(timeout=120)
    assert result["n"] == 2_001 and (result["mass"].values() == expected).all()
    got = rows(task)
    assert got[-2:] == [(None, 0, 0, 0, "done"), (None, 2, 0, 0, "done")]
    read = sorted((f, a, b) for _, f, a, b, status in got[:-2] if status == "done")
    assert len(read) == len(got) - 2 and {f for f, _, _ in read} == {1, 3}
    assert sum(b - a for _, a, b in read) == 2_001     # every entry once


def test_files_of_events_per_job_and_one_more_entries(alab, tmp_path):
    exact = write_file(tmp_path / "exact.root", 0, events=1_000, seed=3, basket_events=500)
    more = write_file(tmp_path / "more.root", 1, events=1_001, seed=3, basket_events=500)
    ds = alab.datasets.register("edges", [str(exact), str(more)], replace=True)
    assert [f["clusters"] for f in ds.files] == [[0, 500, 1_000], [0, 500, 1_000, 1_001]]
    task = alab.analyze(process, ds, events_per_job=1_000, name="edges")
    result = task.result(timeout=120)
    assert result["n"] == 2_001
    assert (result["mass"].values() == dimuon_reference([exact, more]).values()).all()
    # one job per file: the lone entry after the last full cluster joins its neighbour
    assert rows(task) == [(0, 0, 0, 1_000, "done"), (1, 1, 0, 1_001, "done")]


def test_a_glob_that_matches_nothing_names_the_pattern(alab, tmp_path):
    write_file(tmp_path / "run1.root", 0, events=10)
    with pytest.raises(FileNotFoundError) as err:
        alab.datasets.register("glob", str(tmp_path / "skim_*.root"))
    assert str(err.value) == f"no file matches {str(tmp_path / 'skim_*.root')!r}"
    with pytest.raises(FileNotFoundError) as err:        # every such pattern, not the first
        alab.datasets.register("glob", [str(tmp_path / "run*.root"), str(tmp_path / "a*.root"),
                                        str(tmp_path / "b*.root")])
    assert "a*.root" in str(err.value) and "b*.root" in str(err.value)
    assert "run*.root" not in str(err.value)
    with pytest.raises(ApiError) as missing:
        alab.datasets.get("glob")
    assert missing.value.status == 404


def test_named_columns_missing_from_every_file_are_refused_before_any_job(alab, tmp_path):
    path = write_file(tmp_path / "cols.root", 0, events=100, seed=5)
    ds = alab.datasets.register("cols", [str(path)], replace=True)
    before = len(alab.list_tasks())
    with pytest.raises(ApiError) as err:
        alab.analyze(count, ds, columns=["nMuon", "Jet_pt", "Muon_ptt"], events_per_job=50)
    assert err.value.status == 422
    assert err.value.detail == ("no file of dataset 'cols' (tree 'Events') has the columns "
                                "'Jet_pt', 'Muon_ptt' (did you mean 'Muon_pt', 'Muon_phi', "
                                "'Muon_eta'?)")
    assert len(alab.list_tasks()) == before
    # branches, collections and field paths that exist all pass
    ok = alab.analyze(count, ds, columns=["nMuon", "Muon", "Muon.pt", "Muon_eta"],
                      events_per_job=50, name="cols-ok")
    assert ok.result(timeout=120) == {"n": 100}


def test_missing_columns_rule():
    branches = ["nMuon", "Muon_pt", "Muon_eta", "run"]
    assert missing_columns(branches, ["nMuon", "Muon", "Muon.pt", "run"]) == []
    assert missing_columns(branches, ["Jet", "Muon.phi", "Jet", "pt"]) == ["Jet", "Muon.phi",
                                                                           "pt"]


def test_discovered_column_missing_is_a_user_error_even_with_skip_bad_files(alab, tmp_path):
    path = write_file(tmp_path / "nojets.root", 0, events=100, seed=5)
    ds = alab.datasets.register("no-jets", [str(path)], replace=True)
    task = alab.analyze(uses_jets, ds, events_per_job=50, skip_bad_files=True, name="jets")
    with pytest.raises(IncompleteResult) as err:
        task.result(timeout=120)
    rep = err.value.report
    assert set(rep["status"]) == {"failed"} and set(rep["error_category"]) == {"user"}
    assert (rep["attempts"] == 1).all()                  # a processor's error: not retried
    assert all("no field named 'Jet'" in e for e in rep["error"])


def test_an_rntuple_with_no_entries_is_an_empty_dataset(alab, tmp_path):
    path = tmp_path / "empty_rntuple.root"
    with uproot.recreate(path) as f:
        f["Events"] = {"x": np.zeros(0, np.float64)}     # plain assignment: an RNTuple
    with uproot.open(path) as f:
        assert f.classnames() == {"Events;1": "ROOT::RNTuple"}
    ds = alab.datasets.register("rntuple", [str(path)], replace=True)
    assert ds.n_events == 0                              # read: like any empty dataset
    assert alab.analyze(count, ds, events_per_job=10).result(timeout=120) == {"n": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"events_per_job": 0}, "events_per_job must be a positive int or 'auto', not 0"),
    ({"events_per_job": -5}, "events_per_job must be a positive int or 'auto', not -5"),
    ({"events_per_job": True}, "events_per_job must be a positive int or 'auto', not True"),
    ({"events_per_job": 2.5}, "events_per_job must be a positive int or 'auto', not 2.5"),
    ({"events_per_job": "fast"}, "events_per_job must be a positive int or 'auto', not 'fast'"),
    ({"files_per_job": 0}, "files_per_job must be a positive int, not 0"),
    ({"files_per_job": -1}, "files_per_job must be a positive int, not -1"),
])
def test_split_arguments_are_checked_in_the_client(alab, kwargs, message):
    before = len(alab.list_tasks())
    with pytest.raises(ValueError) as err:
        alab.analyze(count, "any", **kwargs)
    assert str(err.value) == message
    assert len(alab.list_tasks()) == before


def test_numpy_integers_split_as_ints(alab, tmp_path):
    path = write_file(tmp_path / "np.root", 0, events=100, seed=5, basket_events=50)
    ds = alab.datasets.register("np-int", [str(path)], replace=True)
    task = alab.analyze(count, ds, events_per_job=np.int64(50), name="np-int")
    assert task.result(timeout=120) == {"n": 100}
    assert rows(task) == [(0, 0, 0, 50, "done"), (1, 0, 50, 100, "done")]
