"""``lab.compare(a, b)``: two analysis runs through a real server, overlaid and summed up.

Kind tested: a plot that misstates what it shows.  Members here: totals or chi2 that are
not those of the two merged results; histograms of different binning overlaid as if
they were the same (must raise, naming the key path and both binnings); a task still
running compared as if final (must raise, saying so); a task without histograms; the
figure missing a run or its event count.
"""

from __future__ import annotations

import sys
import time

import awkward as ak
import cloudpickle
import hist
import numpy as np
import pytest
import uproot

import panda_lab
from panda_lab.analysis.dimuon import MASS_AXIS, dimuon_mass
from panda_lab.analysis.sample import make_sample
from panda_lab.widgets.histplot import find_histograms

PT_AXIS = hist.axis.Regular(20, 0.0, 100.0, name="pt", label="p_T [GeV]")


def wide(events):
    return {"mass": hist.Hist(MASS_AXIS).fill(dimuon_mass(events)), "n": len(events),
            "muons": {"pt": hist.Hist(PT_AXIS).fill(ak.to_numpy(ak.flatten(events.Muon.pt)))}}


def tight(events):
    """The same histograms after a cut at 85 GeV on the pair mass."""
    out = wide(events)
    m = dimuon_mass(events)
    out["mass"] = hist.Hist(MASS_AXIS).fill(m[m > 85.0])
    return out


def coarse(events):
    axis = hist.axis.Regular(60, 60.0, 120.0, name="mass", label="m [GeV]")
    return {"mass": hist.Hist(axis).fill(dimuon_mass(events))}


def nap(t):
    time.sleep(t)
    return t


@pytest.fixture(scope="module")
def runs(module_server, tmp_path_factory):
    """Three finished analyses of one small file (two jobs each): wide, tight, coarse."""
    files = make_sample(tmp_path_factory.mktemp("cmp"), files=1, events=20_000,
                        basket_events=5_000)
    lab = module_server.lab()
    # this fixture runs before the autouse one that ships the module's functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    lab.datasets.register("cmp", [str(f) for f in files], tree="Events")
    tasks = {name: lab.analyze(fn, "cmp", events_per_job=10_000, name=f"cmp-{name}")
             for name, fn in (("wide", wide), ("tight", tight), ("coarse", coarse))}
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    for t in tasks.values():
        t.wait(timeout=120)
    yield lab, tasks, files
    lab.close()


def reference(files) -> np.ndarray:
    """Dimuon masses of the file, read without panda-lab's reading code."""
    events = uproot.open(f"{files[0]}:Events").arrays(
        ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"])
    muons = ak.zip({k: events[f"Muon_{k}"] for k in ("pt", "eta", "phi", "mass", "charge")})
    return dimuon_mass(ak.Array({"nMuon": events.nMuon, "Muon": muons}))


def test_compare_overlays_two_runs_with_their_numbers(runs):
    lab, tasks, files = runs
    c = lab.compare(tasks["wide"], "cmp-tight")        # a handle and a name
    masses = reference(files)
    in_range = masses[(masses >= 60) & (masses < 120)]
    row = c.histograms.loc["mass"]
    assert row.total_a == len(in_range) and row.total_b == int((in_range > 85).sum())
    assert row.ratio == pytest.approx(row.total_b / row.total_a)
    # chi2 of the difference: only the bins below 85 GeV differ, each by its own count
    a = hist.Hist(MASS_AXIS).fill(masses).values()
    b = hist.Hist(MASS_AXIS).fill(masses[masses > 85]).values()
    used = (a + b) > 0
    assert row.chi2 == pytest.approx(np.sum((a - b)[used] ** 2 / (a + b)[used]))
    assert row.ndf == used.sum() and row.chi2_ndf == pytest.approx(row.chi2 / row.ndf)
    same = c.histograms.loc["muons.pt"]                 # nested, untouched by the cut
    assert same.total_a == same.total_b and same.chi2 == 0.0 and same.ratio == 1.0
    assert list(c.tasks.index) == ["a", "b"]
    assert list(c.tasks.id) == [tasks["wide"].id, tasks["tight"].id]
    assert list(c.tasks.events) == [20_000, 20_000]
    assert (c.tasks.wall_s > 0).all() and list(c.tasks.state) == ["done", "done"]
    page = c._repr_html_()
    assert "<svg" in page and "cmp-tight" in page and "20,000 events" in page
    assert "b / a" in page and "Events / 0.5 GeV" in page
    assert len(c.figure.axes) == 4                      # two histograms, each with a ratio


def test_compare_by_ids_from_the_package(runs):
    _, tasks, _ = runs
    c = panda_lab.compare(tasks["wide"], tasks["wide"].id)
    assert (c.histograms.chi2 == 0).all() and (c.histograms.ratio == 1).all()
    assert c.only_in_a == [] and c.only_in_b == []


def test_different_binning_is_refused_naming_the_histogram(runs):
    lab, tasks, _ = runs
    with pytest.raises(ValueError, match=r"histogram 'mass' is binned differently: task "
                       r"\d+ 'cmp-wide' has 120 bins from 60 to 120, task \d+ 'cmp-coarse' "
                       r"60 bins from 60 to 120"):
        lab.compare(tasks["wide"], tasks["coarse"])


def test_a_task_not_finished_is_refused_and_so_is_one_without_histograms(runs):
    lab, tasks, _ = runs
    running = lab.submit(nap, [(20.0,)], name="cmp-running")
    try:
        with pytest.raises(ValueError, match=r"'cmp-running' is still \w+: compare needs "
                                             r"finished tasks; wait for it"):
            lab.compare(tasks["wide"], running)
    finally:
        lab.kill(running)
    lab.wait(running, timeout=30)
    with pytest.raises(ValueError, match="'cmp-running' is not an analysis"):
        lab.compare(running, tasks["wide"])
    with pytest.raises(TypeError, match="needs two tasks"):
        panda_lab.compare(lab, tasks["wide"])


def test_find_histograms_sees_what_compare_compares(runs):
    _, tasks, _ = runs
    assert list(find_histograms(tasks["wide"].result())) == ["mass", "muons.pt"]
