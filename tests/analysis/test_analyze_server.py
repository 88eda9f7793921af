"""Dataset analyses through a real server and pilots: exact, complete, and honest on failure."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from harness import ServerProcess, wait_for

from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample
from panda_lab.client.analysis import IncompleteResult

BRANCHES = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"]


def process(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events)}


def slow_process(events):
    time.sleep(0.4)
    return process(events)


def broken_process(events):
    raise ZeroDivisionError("a bug in the processor")


class WithPostprocess:
    def process(self, events):
        return {"n": len(events), "sum_nmuon": int(ak.sum(events.nMuon))}

    def postprocess(self, result):
        return {**result, "mean_nmuon": result["sum_nmuon"] / result["n"]}


def reference(paths) -> hist.Hist:
    """One sequential uproot.iterate pass, without panda-lab's reading code."""
    h = hist.Hist(MASS_AXIS)
    for a in uproot.iterate([f"{p}:Events" for p in paths], BRANCHES, step_size=50_000):
        a = a[a.nMuon == 2]
        a = a[ak.sum(a.Muon_charge, axis=1) == 0]
        px = a.Muon_pt * np.cos(a.Muon_phi)
        py = a.Muon_pt * np.sin(a.Muon_phi)
        pz = a.Muon_pt * np.sinh(a.Muon_eta)
        e = np.sqrt(px**2 + py**2 + pz**2 + a.Muon_mass**2)
        m2 = (ak.sum(e, axis=1) ** 2 - ak.sum(px, axis=1) ** 2 - ak.sum(py, axis=1) ** 2
              - ak.sum(pz, axis=1) ** 2)
        h.fill(np.sqrt(np.maximum(ak.to_numpy(m2), 0)))
    return h


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dimuon")
    return make_sample(d, files=3, events=60_000, basket_events=5_000)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("home")).start()
    yield s
    s.stop()


@pytest.fixture
def alab(srv):
    lab = srv.lab()
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def expected(data):
    return reference(data)


@pytest.mark.parametrize("split", [{"events_per_job": 12_000}, {"files_per_job": 2},
                                   {"events_per_job": "auto", "target_job_seconds": 0.2}])
def test_result_equals_one_pass_bin_for_bin(alab, data, expected, split):
    ds = alab.datasets.register("eq", [str(p) for p in data], replace=True)
    assert ds.n_events == 180_000 and ds.n_files == 3
    task = alab.analyze(process, ds, name=f"eq-{next(iter(split.values()))}", **split)
    result = task.result(timeout=120)
    assert result["n"] == 180_000
    assert (result["mass"].values() == expected.values()).all()
    rep = task.report()
    assert set(rep["status"]) == {"done"}
    covered = sorted((r.file_index, r.start, r.stop) for r in rep.itertuples())
    for f in range(3):  # every entry of every file exactly once
        ranges = [(a, b) for i, a, b in covered if i == f]
        assert ranges[0][0] == 0 and ranges[-1][1] == 60_000
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert task.partial().events == 180_000
    if split.get("events_per_job") == "auto":
        sc = task.scouting
        assert sc["events_per_second"] > 0 and sc["events_per_job"] >= 1000
        assert rep["scout"].sum() == 3
        assert len({s for sites in rep["sites"] for s in sites}) >= 2


def test_pilot_killed_mid_analysis_still_exact(alab, srv, data, expected):
    ds = alab.datasets.register("kill", [str(p) for p in data], replace=True)
    task = alab.analyze(slow_process, ds, events_per_job=10_000, name="kill-mid")

    def a_running_pilot():
        for j in alab.jobs(task.id):
            if j["state"] == "running" and j["pilot_id"]:
                return next(p for p in alab.pilots() if p["id"] == j["pilot_id"])
        return None

    pilot = wait_for(a_running_pilot, 60, what="a running analysis job")
    os.kill(pilot["pid"], signal.SIGKILL)
    result = task.result(timeout=180)
    assert (result["mass"].values() == expected.values()).all()
    assert result["n"] == 180_000
    rep = task.report()
    assert "done after retry" in set(rep["status"])
    assert set(rep["status"]) <= {"done", "done after retry"}


def test_bad_files_are_classified_retried_and_skipped_on_request(alab, data, tmp_path):
    files = [tmp_path / f"f{i}.root" for i in range(3)]
    for src, dst in zip(data, files, strict=True):
        shutil.copy(src, dst)
    ds = alab.datasets.register("bad", [str(p) for p in files], replace=True)
    files[1].unlink()                                  # missing after registration
    files[2].write_bytes(b"not a root file at all" * 1000)  # corrupt
    task = alab.analyze(process, ds, events_per_job=30_000, name="bad-strict")
    with pytest.raises(IncompleteResult) as err:
        task.result(timeout=120)
    rep = err.value.report
    failed = rep[rep["status"] == "failed"]
    assert set(failed["file_index"]) == {1, 2}
    assert set(failed["error_category"]) == {"input"}
    assert (failed["attempts"] == 2).all()                 # input errors retry, elsewhere
    assert all(len(set(s)) == 2 for s in failed["sites"])
    for r in failed.itertuples():  # which file, which entries, why
        assert str(files[r.file_index]) in r.error and f"entries {r.start}-{r.stop}" in r.error
    missing = failed[failed["file_index"] == 1]["error"].iloc[0]
    assert "DataError" in missing

    task = alab.analyze(process, ds, events_per_job=30_000, name="bad-skip",
                        skip_bad_files=True)
    result = task.result(timeout=120)                      # no error: skipped on request
    rep = task.report()
    assert set(rep[rep["status"] == "skipped"]["file_index"]) == {1, 2}
    assert (result["mass"].values() == reference([data[0]]).values()).all()
    assert result["n"] == 60_000
    assert not task.complete


def test_a_notebook_run_twice_reuses_its_data_and_its_dataset(alab, data, tmp_path):
    """Kind tested: a step of a notebook that fails or redoes its work when the notebook
    is run again.  Members: generating the sample, registering the dataset."""
    from panda_lab.http import ApiError

    files = make_sample(tmp_path, files=1, events=1_000, basket_events=500)
    stamp = files[0].stat().st_mtime_ns
    assert make_sample(tmp_path, files=1, events=1_000, basket_events=500) == files
    assert files[0].stat().st_mtime_ns == stamp                  # kept, not written again
    make_sample(tmp_path, files=1, events=1_200, basket_events=500)   # other parameters
    assert files[0].stat().st_mtime_ns != stamp
    first = alab.datasets.register("again", [str(p) for p in data])
    second = alab.datasets.register("again", [str(p) for p in data])  # no HTTP 409
    assert second == first
    with pytest.raises(ApiError, match=r"registered with other files.*replace=True") as taken:
        alab.datasets.register("again", [str(p) for p in data[:1]])
    assert taken.value.status == 409
    assert alab.datasets.register("again", [str(data[0])], replace=True).n_files == 1


def test_wrong_tree_is_refused_at_registration(alab, data):
    from panda_lab.analysis.errors import DataError

    with pytest.raises(DataError, match="Events"):
        alab.datasets.register("wrong-tree", [str(data[0])], tree="Evnts")


def test_processor_bug_is_not_retried_and_stops_scouting(alab, data):
    ds = alab.datasets.register("bug", [str(p) for p in data], replace=True)
    task = alab.analyze(broken_process, ds, events_per_job="auto", name="bug")
    with pytest.raises(IncompleteResult) as raised:
        task.result(timeout=120)
    rep = task.report()
    # the failed input named at the top: the message, and the job's traceback
    first = rep[rep["error"].notna()].iloc[0]
    where = f"{first['path']}, entries {first['start']:,} to {first['stop']:,}"
    assert f"first: {where}: ZeroDivisionError: a bug in the processor" in str(raised.value)
    job = alab.failures(task.id)[0]
    assert job["error_traceback"].startswith("panda-lab: failed on /"), job["error_traceback"]
    assert "internal frame" in job["error_traceback"]  # the runner's frames folded
    assert "in broken_process" in job["error_traceback"]
    assert len(rep) == 3 and rep["scout"].all()            # no job beyond the scouts
    assert set(rep["error_category"]) == {"user"} and (rep["attempts"] == 1).all()
    assert all("ZeroDivisionError: a bug in the processor" in e for e in rep["error"])
    err = task.errors()[rep["job_index"].iloc[0]]
    assert isinstance(err, ZeroDivisionError)


def test_partial_results_grow_and_postprocess_runs_once(alab, data):
    ds = alab.datasets.register("live", [str(p) for p in data], replace=True)
    task = alab.analyze(slow_process, ds, events_per_job=10_000, name="live")
    seen = []
    while task.status not in ("done", "finished", "failed"):
        p = task.partial()
        seen.append(p.events)
        time.sleep(0.2)
    seen.append(task.partial().events)
    assert seen == sorted(seen) and seen[-1] == 180_000
    assert any(0 < s < 180_000 for s in seen)
    per_file = task.partial().per_file
    assert list(per_file["events_done"]) == [60_000] * 3

    proc = WithPostprocess()
    t2 = alab.analyze(proc, ds, events_per_job=20_000, columns=["nMuon"], name="post")
    r = t2.result(timeout=120)
    assert r["n"] == 180_000 and r["mean_nmuon"] == pytest.approx(r["sum_nmuon"] / 180_000)


def test_real_root_files_through_the_server(alab, shared_data):
    z = shared_data / "uproot-Zmumu.root"
    ds = alab.datasets.register("zmumu", [str(z)], tree="events", replace=True)
    t = alab.analyze(zmumu_mass, ds, events_per_job=500, name="zmumu")
    got = t.result(timeout=120)
    with uproot.open(z) as f:
        direct = hist.Hist(hist.axis.Regular(60, 60, 120)).fill(f["events"]["M"].array())
    assert (got.values() == direct.values()).all() and got.sum() > 1000

    n = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    ds = alab.datasets.register("ttbar", [str(n)], tree="Events", replace=True)
    t = alab.analyze(muon_pt, ds, events_per_job=50, name="ttbar")
    got = t.result(timeout=120)
    with uproot.open(n) as f:
        pts = ak.flatten(f["Events"]["Muon_pt"].array())
    direct = hist.Hist(hist.axis.Regular(50, 0, 200)).fill(ak.to_numpy(pts))
    assert (got.values() == direct.values()).all() and got.sum() > 0


def zmumu_mass(events):
    return hist.Hist(hist.axis.Regular(60, 60, 120)).fill(ak.to_numpy(events.M))


def muon_pt(events):
    return hist.Hist(hist.axis.Regular(50, 0, 200)).fill(ak.to_numpy(ak.flatten(events.Muon.pt)))


def leading_pt(events):
    """An awkward array per event: its concatenation must follow the input order."""
    return {"pt": ak.firsts(events.Muon.pt), "event": events.event}


def test_awkward_results_are_concatenated_in_input_order(alab, data):
    ds = alab.datasets.register("order", [str(p) for p in data], replace=True)
    task = alab.analyze(leading_pt, ds, events_per_job=5_000, name="order")
    result = task.result(timeout=120)
    events = []
    for p in data:
        with uproot.open(p) as f:
            events.append(f["Events"]["event"].array())
    assert ak.to_list(result["event"]) == ak.to_list(ak.concatenate(events))
    assert len(result["pt"]) == 180_000


def test_partial_results_flow_through_the_event_stream(alab, data):
    import threading

    ds = alab.datasets.register("stream", [str(p) for p in data], replace=True)
    seen: list[dict] = []
    task_id: list[int] = []
    started = threading.Event()

    def listen():
        started.wait(30)
        for msg in alab.api.events(tasks=task_id, ping=0.5):
            if "partial" in msg:
                seen.append(msg["partial"])
                if msg["partial"]["events"] == 180_000:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    task = alab.analyze(slow_process, ds, events_per_job=10_000, name="stream")
    task_id.append(task.id)
    started.set()
    task.result(timeout=120)
    t.join(30)
    assert seen and seen[-1]["events"] == 180_000 and seen[-1]["task"] == task.id
    events = [m["events"] for m in seen]
    assert events == sorted(events)


def test_files_read_over_http_give_the_same_result(alab, data, expected):
    """Files registered by URL (an HTTP endpoint with byte ranges): registration reads
    their metadata, and the pilots read the chunks over HTTP."""
    from harness import RangeFileServer

    web = RangeFileServer(data[0].parent)
    try:
        urls = [f"{web.url}/{p.name}" for p in data]
        ds = alab.datasets.register("over-http", urls, replace=True, endpoint="web")
        assert ds.n_events == 180_000
        files = ds.files_frame()
        assert list(files["path"]) == urls
        hits = web.hits
        task = alab.analyze(process, ds, name="over-http", events_per_job=30_000)
        result = task.result(timeout=120)
        assert (result["mass"].values() == expected.values()).all()
        assert web.hits > hits + 6          # the jobs read from the endpoint, not from disk
        assert set(task.report()["status"]) == {"done"}
    finally:
        web.stop()


def test_files_read_over_xrootd_give_the_same_result(alab, xrootd_server):
    """root:// URLs, as grid datasets have them: registered and read through xrootd."""
    files = make_sample(xrootd_server.export, files=2, events=20_000, basket_events=5_000)
    ds = alab.datasets.register("over-xrootd", [xrootd_server.url(p) for p in files],
                                replace=True, endpoint="XRD")
    assert ds.n_events == 40_000
    task = alab.analyze(process, ds, name="over-xrootd", events_per_job=10_000)
    result = task.result(timeout=120)
    assert (result["mass"].values() == reference(files).values()).all()
    assert set(task.report()["status"]) == {"done"}
    assert all(p.startswith("root://") for p in ds.files_frame()["path"])
