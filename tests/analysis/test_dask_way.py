"""The Dask way: a graph built as current HEP analyses build it (uproot.dask ->
dask-awkward selections -> hist.dask) computed through panda-lab, equal to Dask's own,
over TTrees and over RNTuples (uproot's writer's and ROOT's, see test_rntuple.py).

dask-awkward needs dask < 2025.4, older than the rest of the suite uses, so this runs in
its own environment: scripts/test builds .venv-dask-awkward and runs ``-m dask_awkward``
there (the main run deselects it)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.dask_awkward


def dimuon_mass_graph(files):
    # imported here, not at module level: the main run deselects this module's tests
    # by their marker, which an import-time skip would pre-empt
    dak = pytest.importorskip("dask_awkward", reason="runs in .venv-dask-awkward (scripts/test)")
    import hist.dask as hda
    import uproot

    events = uproot.dask({str(f): "Events" for f in files}, step_size=10_000)
    two = events[events.nMuon == 2]
    pt, eta, phi, m = two.Muon_pt, two.Muon_eta, two.Muon_phi, two.Muon_mass
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    m2 = dak.sum(e, axis=1) ** 2 - dak.sum(px, axis=1) ** 2 - dak.sum(py, axis=1) ** 2 \
        - dak.sum(pz, axis=1) ** 2
    mass = np.sqrt(m2)
    h = hda.Hist.new.Reg(60, 60.0, 120.0, name="mass").Double().fill(mass)
    return events, h, dak.num(two, axis=0)


def test_a_dask_awkward_graph_computes_through_panda_lab_as_through_dask(lab, sample_files,
                                                                         tmp_path, request):
    import dask

    events, h, n_two = dimuon_mass_graph(sample_files)
    assert events.npartitions == 4                        # 2 files x 2 steps of 10,000
    ref_h, ref_n = dask.compute(h, n_two, scheduler="sync")   # Dask's own scheduler
    assert ref_h.sum() > 1000

    with lab.executor(name="dask-way-ex") as ex:          # one job per graph task
        got_h, got_n = dask.compute(h, n_two, scheduler=ex)
    assert np.array_equal(got_h.values(), ref_h.values()) and got_n == ref_n
    jobs_ex = len(lab.jobs("dask-way-ex"))

    # groups of graph tasks (partitions with their selections) packed into fewer jobs
    got_h2, got_n2 = dask.compute(h, n_two, scheduler=lab.get, chunksize=4)
    assert np.array_equal(got_h2.values(), ref_h.values()) and got_n2 == ref_n
    packed = [t for t in lab.list_tasks() if t["id"] != lab.task_info("dask-way-ex")["id"]]
    assert packed and 0 < packed[0]["n_jobs"] < jobs_ex
    # the sites did the work: several of them, every job finished
    sites = {j["site"] for j in lab.jobs("dask-way-ex")}
    assert len(sites) >= 2 and {j["state"] for j in lab.jobs("dask-way-ex")} == {"finished"}
    rntuples_compute_through_panda_lab_as_through_dask(lab, tmp_path, request)


def rntuple_graph(files):
    """The dimuon graph over RNTuples as uproot writes them: the collection ``Muon`` of
    records, counted by ``nMuon``."""
    dak = pytest.importorskip("dask_awkward", reason="runs in .venv-dask-awkward (scripts/test)")
    import hist.dask as hda
    import uproot

    events = uproot.dask({str(f): "Events" for f in files}, step_size=10_000)
    mu = events[events.nMuon == 2].Muon
    px, py, pz = mu.pt * np.cos(mu.phi), mu.pt * np.sin(mu.phi), mu.pt * np.sinh(mu.eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mu.mass**2)
    m2 = dak.sum(e, axis=1) ** 2 - dak.sum(px, axis=1) ** 2 - dak.sum(py, axis=1) ** 2 \
        - dak.sum(pz, axis=1) ** 2
    h = hda.Hist.new.Reg(60, 60.0, 120.0, name="mass").Double().fill(np.sqrt(m2))
    return events, h, dak.num(mu, axis=0)


def rntuples_compute_through_panda_lab_as_through_dask(lab, tmp_path, request):
    """The same over RNTuples (on the same server: a server costs seconds): uproot's
    writer's, and ROOT's (``../shared/data``, see ``test_rntuple.py``)."""
    import dask
    import dask_awkward as dak
    import uproot

    from panda_lab.analysis.sample import make_sample

    files = make_sample(tmp_path, files=2, events=20_000, basket_events=3_000,
                        format="rntuple")
    events, h, n_two = rntuple_graph(files)
    assert events.npartitions == 4
    ref_h, ref_n = dask.compute(h, n_two, scheduler="sync")
    direct = 0
    for f in files:                                       # uproot alone, no Dask
        with uproot.open(f) as rf:
            direct += int(np.sum(np.asarray(rf["Events"]["nMuon"].array()) == 2))
    assert ref_n == direct and ref_h.sum() > 1000
    with lab.executor(name="rntuple-dask-ex") as ex:
        got_h, got_n = dask.compute(h, n_two, scheduler=ex)
    assert np.array_equal(got_h.values(), ref_h.values()) and got_n == ref_n
    assert {j["state"] for j in lab.jobs("rntuple-dask-ex")} == {"finished"}

    # ROOT's RNTuple (CMS Open Data muons): NanoAOD's flat names
    shared_data = request.getfixturevalue("shared_data")    # skipped only where absent
    path = shared_data / "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple.root"
    real = uproot.dask({str(path): "Events"})
    hard = dak.sum(dak.sum(real.Muon_pt > 20, axis=1))
    with uproot.open(path) as rf:
        expected = int(np.sum(rf["Events"]["Muon_pt"].array() > 20))
    assert dask.compute(hard, scheduler=lab.get)[0] == expected > 0
