"""Bad files at registration are all named, with their reasons, and can be skipped.

The kind: a file given to ``lab.datasets.register`` that cannot be used. Registration inspects
every file before it decides, then raises one ``BadFilesError`` whose ``bad_files`` maps each
bad file to its reason (a ``DataError``, as one bad file always was), and registers nothing.
With ``skip_bad_files=True`` it registers the good files and keeps the bad ones with their
reasons; every analysis of the dataset then reports them with the words ``skip_bad_files``
uses for files found bad while running: status "skipped", ``error_category`` "input", and the
reason in ``error``. Only a glob that matches nothing stays an error of its own (see
``test_degenerate_datasets.py``): it is a wrong pattern, not a bad file.

Members tested, every reason a file can be bad at registration: missing, unreadable
(permissions), not ROOT, a truncated ROOT file, the tree missing, an object of that name that
is not a tree, a URL that does not answer, a URL whose server answers with an error:

* ``test_one_error_names_every_bad_file_and_registers_nothing`` (the issue's example: five
  ``run*.root``, one without the tree and one not ROOT);
* ``test_every_reason_is_collected``;
* ``test_skipped_at_registration_are_reported_as_skipped_with_the_reason``;
* ``test_all_files_bad_and_skipped_gives_an_empty_dataset``;
* ``test_replicas_stay_with_their_files_when_some_are_skipped``;
* ``test_skipped_and_empty_files_stay_in_the_report_after_a_server_restart``;
* ``test_bad_files_error_pickles_and_is_a_data_error``.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import warnings

import numpy as np
import pandas as pd
import pytest
import uproot
from analysis_helpers import dimuon_reference
from harness import RangeFileServer, ServerProcess

from panda_lab.analysis import files as files_module
from panda_lab.analysis.errors import BadFilesError, DataError
from panda_lab.analysis.sample import write_file
from panda_lab.http import ApiError


def count(events):
    return {"n": len(events)}


def process(events):
    import hist

    from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass

    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


@pytest.fixture
def alab(module_server):
    lab = module_server.lab()
    yield lab
    lab.close()


def good(path, index: int, events: int = 1_000):
    return write_file(path, index, events=events, seed=21, basket_events=500)


def runs(tmp_path):
    """run1..run5.root: run2 has no tree "Events", run4 is not ROOT, the others are good."""
    paths = [tmp_path / f"run{i}.root" for i in range(1, 6)]
    for i in (0, 2, 4):
        good(paths[i], i)
    with uproot.recreate(paths[1]) as f:
        f.mktree("Other", {"x": np.float32}).extend({"x": np.arange(3, dtype=np.float32)})
    paths[3].write_bytes(b"this is a text file, not ROOT\n" * 50)
    return paths


def test_one_error_names_every_bad_file_and_registers_nothing(alab, tmp_path):
    paths = runs(tmp_path)
    with pytest.raises(BadFilesError) as err:
        alab.datasets.register("runs", str(tmp_path / "run*.root"))
    e = err.value
    assert list(e.bad_files) == [str(paths[1]), str(paths[3])]
    assert e.bad_files[str(paths[1])] == "tree not found; trees in this file: 'Other'"
    assert e.bad_files[str(paths[3])].startswith("not a ROOT file or corrupt: ")
    assert (e.n_files, e.tree, e.file) == (5, "Events", str(paths[1]))
    lines = str(e).splitlines()
    assert lines[0] == ("2 of 5 files cannot be used (tree 'Events'); pass skip_bad_files=True"
                        " to register the others and record these as skipped:")
    assert lines[1] == f"  {paths[1]}: tree not found; trees in this file: 'Other'"
    assert lines[2].startswith(f"  {paths[3]}: not a ROOT file or corrupt: ")
    with pytest.raises(ApiError) as missing:
        alab.datasets.get("runs")
    assert missing.value.status == 404


@pytest.fixture
def every_kind_of_bad(tmp_path, monkeypatch):
    """One good file, then one bad file for each reason, with the reason it must get."""
    ok = good(tmp_path / "ok.root", 0)
    bad: dict[str, str] = {}

    bad[str(tmp_path / "missing.root")] = "file not found"

    locked = shutil.copy(ok, tmp_path / "locked.root")
    (tmp_path / "locked.root").chmod(0)
    bad[str(locked)] = "permission denied"
    real_open = uproot.open

    def open_as_a_user(path, *args, **kwargs):
        # root reads any file: give it what the system gives everyone else
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(uproot, "open", open_as_a_user)

    (tmp_path / "text.root").write_text("not ROOT\n" * 100)
    bad[str(tmp_path / "text.root")] = "not a ROOT file or corrupt: "

    data = ok.read_bytes()
    (tmp_path / "cut.root").write_bytes(data[: len(data) // 2])
    bad[str(tmp_path / "cut.root")] = (f"truncated: the header says {len(data)} bytes, "
                                       f"the file has {len(data) // 2}")

    with uproot.recreate(tmp_path / "othertree.root") as f:
        f.mktree("Other", {"x": np.int32}).extend({"x": np.arange(2, dtype=np.int32)})
    bad[str(tmp_path / "othertree.root")] = "tree not found; trees in this file: 'Other'"

    with uproot.recreate(tmp_path / "histogram.root") as f:
        f["Events"] = np.histogram(np.arange(10.0), bins=5)
    bad[str(tmp_path / "histogram.root")] = "'Events' is a TH1D, not a TTree or an RNTuple"

    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad[f"http://127.0.0.1:{port}/silent.root"] = "cannot open: "

    web = RangeFileServer(tmp_path)
    web.down = True                                  # answers every request with 503
    bad[f"{web.url}/ok.root"] = "cannot open: "
    yield ok, bad
    web.stop()


def test_every_reason_is_collected(alab, every_kind_of_bad):
    ok, bad = every_kind_of_bad
    given = [str(ok), *bad]
    with pytest.raises(BadFilesError) as err:
        alab.datasets.register("all-kinds", given)
    got = err.value.bad_files
    assert list(got) == list(bad)                   # every bad file, in the order given
    for path, reason in bad.items():
        if reason.endswith(": "):                   # the library's own words follow
            assert got[path].startswith(reason) and len(got[path]) > len(reason), path
        else:
            assert got[path] == reason, path
    assert "503" in got[given[-1]]
    assert err.value.n_files == len(given)
    assert str(err.value).startswith(f"{len(bad)} of {len(given)} files cannot be used")

    ds = alab.datasets.register("all-kinds", given, skip_bad_files=True, replace=True)
    assert (ds.n_files, ds.n_events) == (1, 1_000)
    assert ds.bad_files == got
    assert f"{len(bad)} bad files skipped" in repr(ds)


def test_skipped_at_registration_are_reported_as_skipped_with_the_reason(alab, tmp_path):
    paths = runs(tmp_path)
    ds = alab.datasets.register("runs-skip", str(tmp_path / "run*.root"), skip_bad_files=True)
    assert (ds.n_files, ds.n_events) == (3, 3_000)
    assert [f["file_index"] for f in ds.files] == [0, 2, 4]   # places in the list given
    assert list(ds.bad_files) == [str(paths[1]), str(paths[3])]

    task = alab.analyze(process, ds, events_per_job=1_000, name="runs-skip")
    with pytest.warns(UserWarning, match="2 file\\(s\\) of dataset 'runs-skip' were skipped "
                                         "at registration as bad; see .report"):
        result = task.result(timeout=120)
    good_files = [paths[0], paths[2], paths[4]]
    assert result["n"] == 3_000
    assert (result["mass"].values() == dimuon_reference(good_files).values()).all()
    assert not task.complete

    rep = task.report()
    done = rep[rep["job_index"].notna()]
    assert list(done["file_index"]) == [0, 2, 4] and set(done["status"]) == {"done"}
    skipped = rep[rep["job_index"].isna()]
    assert list(skipped["file_index"]) == [1, 3]
    assert list(skipped["path"]) == [str(paths[1]), str(paths[3])]
    assert set(skipped["status"]) == {"skipped"} and set(skipped["error_category"]) == {"input"}
    assert skipped["start"].isna().all() and skipped["stop"].isna().all()
    assert (skipped["attempts"] == 0).all()
    assert skipped["error"].iloc[0] == ("skipped at registration: tree not found; "
                                        "trees in this file: 'Other'")
    assert skipped["error"].iloc[1].startswith("skipped at registration: not a ROOT file or "
                                               "corrupt: ")
    assert dict(zip(skipped["path"], skipped["error"], strict=True)) == {
        p: f"skipped at registration: {r}" for p, r in ds.bad_files.items()}


def test_all_files_bad_and_skipped_gives_an_empty_dataset(alab, tmp_path):
    (tmp_path / "a.root").write_text("nope")
    ds = alab.datasets.register("all-bad", [str(tmp_path / "a.root"), str(tmp_path / "b.root")],
                                skip_bad_files=True, replace=True)
    assert (ds.n_files, ds.n_events, ds.files) == (0, 0, [])
    assert ds.bad_files[str(tmp_path / "b.root")] == "file not found"
    task = alab.analyze(count, ds, events_per_job="auto", name="all-bad")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert task.result(timeout=60) is None
    assert [str(w.message) for w in seen] == [
        f"task {task.id}: 2 file(s) of dataset 'all-bad' were skipped at registration as bad;"
        " see .report"]
    rep = task.report()
    assert list(rep["status"]) == ["skipped", "skipped"]
    assert list(rep["file_index"]) == [0, 1]
    assert rep["error"].iloc[1] == "skipped at registration: file not found"


def test_replicas_stay_with_their_files_when_some_are_skipped(alab, tmp_path):
    paths = [good(tmp_path / "r0.root", 0), tmp_path / "r1.root", good(tmp_path / "r2.root", 2)]
    far = [f"root://far.example//data/r{i}.root" for i in range(3)]
    ds = alab.datasets.register("replicated", [str(p) for p in paths], replicas={"far": far},
                                skip_bad_files=True, replace=True)
    assert [f["path"] for f in ds.files] == [str(paths[0]), str(paths[2])]
    assert [[r["url"] for r in f["replicas"]] for f in ds.files] == [
        [str(paths[0]), far[0]], [str(paths[2]), far[2]]]
    assert ds.bad_files == {str(paths[1]): "file not found"}


def test_skipped_and_empty_files_stay_in_the_report_after_a_server_restart(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    paths = [good(tmp_path / "g.root", 0), tmp_path / "gone.root", tmp_path / "e.root"]
    write_file(paths[2], 2, events=0)
    server = ServerProcess(home).start()
    try:
        lab = server.lab()
        ds = lab.datasets.register("kept", [str(p) for p in paths], skip_bad_files=True)
        task = lab.analyze(count, ds, events_per_job=1_000, name="kept")
        with pytest.warns(UserWarning, match="skipped at registration"):
            assert task.result(timeout=120) == {"n": 1_000}
        expected = [(0, 0, "done", None), (None, 1, "skipped",
                                           "skipped at registration: file not found"),
                    (None, 2, "done", None)]

        def summary(t):
            rep = t.report()[["job_index", "file_index", "status", "error"]].astype(object)
            return [tuple(None if pd.isna(v) else v for v in r)
                    for r in rep.itertuples(index=False)]

        assert summary(task) == expected
        server.kill()
        server.start()
        lab = server.lab()
        assert summary(lab.task(task.id)) == expected
        assert lab.datasets.get("kept").bad_files == {str(paths[1]): "file not found"}
    finally:
        server.stop()


def test_bad_files_error_pickles_and_is_a_data_error(tmp_path):
    err = BadFilesError({"/a.root": "file not found", "/b.root": "permission denied"}, "Events",
                        4)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, DataError) and str(again) == str(err)
    assert (again.bad_files, again.tree, again.n_files) == (err.bad_files, "Events", 4)
    # what a caller of the single-file API still gets for one bad file
    with pytest.raises(DataError, match="file not found"):
        files_module.inspect_file(tmp_path / "nope.root", "Events")
